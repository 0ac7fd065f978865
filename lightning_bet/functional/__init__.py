"""Pure tensor functions: binarization, fault models, margins, losses. No state, no Lightning."""

from lightning_bet.functional.binarize import binarize_activation, binarize_weight, sign
from lightning_bet.functional.losses import margin_cross_entropy, modified_hinge_loss
from lightning_bet.functional.margins import fold_batchnorm

__all__ = [
    "binarize_activation",
    "binarize_weight",
    "fold_batchnorm",
    "margin_cross_entropy",
    "modified_hinge_loss",
    "sign",
]
