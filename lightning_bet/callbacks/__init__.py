"""Lightning callbacks: flip training, margin regularization, clipping, logging, fault sweeps."""

from lightning_bet.callbacks.bet_logging import BetLogging
from lightning_bet.callbacks.bitflip import BitFlipTraining
from lightning_bet.callbacks.latent_clipping import LatentClipping
from lightning_bet.callbacks.margin_regularization import MarginRegularization
from lightning_bet.callbacks.sweep import SweepCallback

__all__ = [
    "BetLogging",
    "BitFlipTraining",
    "LatentClipping",
    "MarginRegularization",
    "SweepCallback",
]
