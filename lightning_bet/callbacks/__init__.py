"""Lightning callbacks: fault-injection training and margin regularization."""

from lightning_bet.callbacks.bitflip import BitFlipTraining
from lightning_bet.callbacks.margin_regularization import MarginRegularization

__all__ = [
    "BitFlipTraining",
    "MarginRegularization",
]
