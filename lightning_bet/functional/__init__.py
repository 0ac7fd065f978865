"""Pure tensor functions: binarization, fault models, BatchNorm folding, margins, penalties, losses.

No state, no Lightning: the callbacks and the metric are thin wrappers around these.
"""

from lightning_bet.functional.binarize import binarize_activation, binarize_weight, sign
from lightning_bet.functional.faults import (
    FaultModel,
    derive_seed,
    make_generator,
    sample_fault_indices,
    sample_positions,
)
from lightning_bet.functional.flips import SignFlips, binarize_weight_flipped
from lightning_bet.functional.fold import fold_batchnorm, fold_integer, fold_thresholds
from lightning_bet.functional.losses import margin_cross_entropy, modified_hinge_loss
from lightning_bet.functional.margins import (
    binary_preactivation,
    decision_side,
    flip_probability,
    neuron_margins,
    output_margin,
    tolerated_flips,
    tolerated_flips_real,
)
from lightning_bet.functional.penalties import margin_penalty
from lightning_bet.functional.propagation import (
    network_layers,
    predict_correct,
    read_error_rates,
)

__all__ = [
    "FaultModel",
    "SignFlips",
    "binarize_activation",
    "binarize_weight",
    "binarize_weight_flipped",
    "binary_preactivation",
    "decision_side",
    "derive_seed",
    "flip_probability",
    "fold_batchnorm",
    "fold_integer",
    "fold_thresholds",
    "make_generator",
    "margin_cross_entropy",
    "margin_penalty",
    "modified_hinge_loss",
    "network_layers",
    "neuron_margins",
    "output_margin",
    "predict_correct",
    "read_error_rates",
    "sample_fault_indices",
    "sample_positions",
    "sign",
    "tolerated_flips",
    "tolerated_flips_real",
]
