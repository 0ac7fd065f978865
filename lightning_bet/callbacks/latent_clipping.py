"""``LatentClipping``: keep the latent weights of every binary layer in [-1, 1] (METHOD §1)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lightning_bet.layers import binary_layers, clip_latent_weights_

__all__ = ["LatentClipping"]


class LatentClipping(Callback):
    """Clip the latent weights of every binary layer to ``[-bound, bound]`` after optimizer steps.

    With the weight STE ``1{|W| <= 1}``, a latent weight that leaves ``[-1, 1]`` stops receiving
    gradient and its sign freezes; clipping after every step keeps every sign trainable. The clip
    is :func:`~lightning_bet.layers.clip_latent_weights_` (in place, so the optimizer keeps
    updating the tensors the model uses) over every ``BinaryLinear`` / ``BinaryConv2d`` of the
    LightningModule, whatever its structure.

    When: at the end of every training batch in which an optimizer stepped (``global_step``
    moved), i.e. after the step and before the next forward pass; with gradient accumulation,
    batches that only accumulate are left alone. ``BNNClassifier`` already clips in its own
    ``optimizer_step``; adding this callback to it is harmless (clipping twice gives the same
    weights).

    Args:
        bound: the clipping bound, a finite float > 0 (1.0: the STE's window).

    Example:
        >>> trainer = L.Trainer(callbacks=[LatentClipping()])

    """

    def __init__(self, bound: float = 1.0) -> None:
        if (
            isinstance(bound, bool)
            or not isinstance(bound, int | float)
            or not math.isfinite(bound)
            or bound <= 0
        ):
            raise ValueError(f"Expected `bound` to be a finite float > 0, but got {bound!r}")
        self.bound = float(bound)
        self._step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # noqa: D102
        if next(binary_layers(pl_module), None) is None:
            raise ValueError(
                f"Expected `pl_module` to contain binary layers (BinaryLinear/BinaryConv2d) to "
                f"clip, but {type(pl_module).__name__} has none"
            )

    def on_train_batch_start(  # noqa: D102
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(  # noqa: D102
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step != self._step:
            clip_latent_weights_(pl_module, self.bound)
