"""``MarginRegularization``: push hidden neurons away from their thresholds (METHOD §5).

Adds ``lambda * R`` to the training loss through the ``LossPenalty`` protocol of
:class:`~lightning_bet.module.BNNClassifier`, where ``R`` is
:func:`~lightning_bet.functional.penalties.margin_penalty` of the hidden layers'
pre-activations (captured by forward pre-hooks on each block's BatchNorm during training
batches). ``R`` itself is logged as ``train/margin_reg``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_bet.functional.penalties import STATISTICS, margin_penalty
from lightning_bet.models import BinaryBlock

__all__ = ["MarginRegularization"]


def _check_nonnegative(name: str, value: Any, where: str = "") -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"Expected `{name}` to be a finite float >= 0{where}, but got {value!r}")
    return float(value)


class MarginRegularization(Callback):
    """Margin regularizer ``lambda * R`` on the hidden layers of a ``BNNClassifier``.

    ``R = mean over hidden layers, samples, neurons of relu(delta - |a - tau| / sqrt(n))``
    (see :mod:`lightning_bet.functional.penalties` for ``gamma < 0``, ``gamma = 0`` and dtypes).

    Args:
        lam: the weight ``lambda >= 0`` of ``R`` in the loss (the accuracy/tolerance trade-off), or
            a schedule ``epoch -> lambda`` (resolved at every training batch).
        delta: the target normalized margin ``m / sqrt(n)``, > 0; margins above it cost nothing.
        statistics: thresholds from ``"batch"`` statistics (default: those the training forward
            pass really applies; gradients flow through them as through BatchNorm) or
            ``"running"`` statistics (those of the deployed model; no gradient through them).

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[MarginRegularization(lam=0.1, delta=1.0)])

    """

    def __init__(
        self,
        lam: float | Callable[[int], float] = 0.1,
        delta: float = 1.0,
        statistics: Literal["batch", "running"] = "batch",
    ) -> None:
        if not callable(lam):
            _check_nonnegative("lam", lam)
        if (
            isinstance(delta, bool)
            or not isinstance(delta, int | float)
            or not math.isfinite(delta)
            or delta <= 0
        ):
            raise ValueError(f"Expected `delta` to be a finite float > 0, but got {delta!r}")
        if statistics not in STATISTICS:
            raise ValueError(
                f"Expected `statistics` to be one of {list(STATISTICS)}, but got {statistics!r}"
            )
        self.lam = lam
        self.delta = float(delta)
        self.statistics = statistics
        self._blocks: list[BinaryBlock] = []
        self._handles: list[RemovableHandle] = []
        self._captured: dict[int, Tensor] = {}
        self._capturing = False

    def weight(self, epoch: int) -> float:
        """``lambda`` at ``epoch`` (validated)."""
        if not callable(self.lam):
            return float(self.lam)
        return _check_nonnegative("lam", self.lam(epoch), f" from the schedule at epoch {epoch}")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # noqa: D102
        self._remove_hooks()
        self._blocks = [m for m in pl_module.modules() if isinstance(m, BinaryBlock)]
        if not self._blocks:
            raise ValueError(
                f"Expected the model to contain hidden BinaryBlocks to regularize, but "
                f"{type(pl_module).__name__} has none"
            )
        for i, block in enumerate(self._blocks):
            self._handles.append(block.bn.register_forward_pre_hook(self._capture_hook(i)))

    def _capture_hook(self, i: int) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            if self._capturing:
                self._captured[i] = args[0]

        return hook

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # noqa: D102
        self._remove_hooks()
        self._captured = {}
        self._capturing = False

    def on_train_batch_start(  # noqa: D102
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._captured = {}
        self._capturing = True

    def on_train_batch_end(  # noqa: D102
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._captured = {}
        self._capturing = False

    def on_exception(  # noqa: D102
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._captured = {}
        self._capturing = False

    def penalty(self) -> Tensor | None:
        """``R`` of the last captured forward pass, or ``None`` if nothing was captured."""
        if len(self._captured) != len(self._blocks):
            return None
        blocks = self._blocks
        return margin_penalty(
            [self._captured[i] for i in range(len(blocks))],
            [b.bn for b in blocks],
            [b.layer.weight[0].numel() for b in blocks],
            delta=self.delta,
            statistics=self.statistics,
        )

    def loss_penalty(self, pl_module: L.LightningModule) -> Tensor | None:
        """``lambda * R`` for this training step (``LossPenalty`` protocol); logs ``R``."""
        reg = self.penalty()
        self._captured = {}
        self._capturing = False
        if reg is None:
            return None
        pl_module.log("train/margin_reg", reg.detach(), on_step=True, on_epoch=True)
        return self.weight(pl_module.current_epoch) * reg
