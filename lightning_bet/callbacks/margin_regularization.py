"""``MarginRegularization``: push hidden neurons away from their thresholds (METHOD §5).

Adds ``lambda * R`` to the training loss of any LightningModule made of the project's binary
layers, where ``R`` is :func:`~lightning_bet.functional.penalties.margin_penalty` of the hidden
blocks' pre-activations (found by :func:`lightning_bet.network.blocks`; captured by forward
pre-hooks on each block's BatchNorm during training batches). ``R`` itself is logged as
``train/margin_reg``.

How the penalty reaches the loss. The loss that receives gradients is the one
``training_step`` returns, so that is where ``lambda * R`` goes:

- A module that asks for it (the ``LossPenalty`` protocol: ``BNNClassifier`` adds
  ``callback.loss_penalty(self)`` to its loss, as may a user's ``training_step``) gets it there.
- Otherwise, under automatic optimization, the callback wraps the module's ``training_step``
  for the duration of ``fit`` (an instance attribute, removed at teardown): the wrapper adds
  ``lambda * R`` to the returned loss (a tensor, or the ``"loss"`` of a dict). Gradient
  accumulation, precision plugins and DDP then treat it exactly like the task loss.
  ``on_before_backward`` cannot do this (it sees the loss but cannot replace it), and a second
  ``backward`` of ``R`` would run DDP's gradient reduction twice and miss loss scaling.
- Under manual optimization, ``training_step`` must add ``callback.loss_penalty(self)`` to the
  loss it backpropagates.

It never silently does nothing: a training batch whose forward pass did not run through every
hidden block, a ``training_step`` output without a loss, or a manual-optimization step that did
not ask for the penalty raises a ``RuntimeError`` saying what to change.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_bet.functional.penalties import STATISTICS, margin_penalty
from lightning_bet.network import Block
from lightning_bet.network import blocks as network_blocks

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


class _PenalizedTrainingStep:
    """``training_step`` that adds the callback's ``lambda * R`` to the returned loss.

    Set as an instance attribute of the LightningModule (which Lightning looks up before the
    class's method, also through its DDP wrapper). A deep copy of the module (e.g. by a weight
    averaging callback) gets a wrapper bound to the copy that shares the callback.
    """

    def __init__(self, callback: MarginRegularization, step: Callable[..., Any]) -> None:
        self.callback = callback
        self.step = step
        self.__wrapped__ = step  # signature inspection sees the user's training_step

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = self.step(*args, **kwargs)
        return self.callback._add_penalty(self.step.__self__, output)

    def __deepcopy__(self, memo: dict[int, Any]) -> _PenalizedTrainingStep:
        return type(self)(self.callback, copy.deepcopy(self.step, memo))


class MarginRegularization(Callback):
    """Margin regularizer ``lambda * R`` on the hidden blocks of any binarized LightningModule.

    ``R = mean over hidden layers, samples, neurons of relu(delta - |a - tau| / sqrt(n))``
    (see :mod:`lightning_bet.functional.penalties` for ``gamma < 0``, ``gamma = 0`` and dtypes).
    The blocks are found by :func:`lightning_bet.network.blocks` (a ``BNN``, or the user's own
    ``nn.Sequential`` of binary layers, BatchNorms and signs); how ``lambda * R`` reaches the
    loss is described in :mod:`lightning_bet.callbacks.margin_regularization`.

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
        self._blocks: list[Block] = []
        self._handles: list[RemovableHandle] = []
        self._captured: dict[int, Tensor] = {}
        self._capturing = False
        self._applied = False
        self._wrapped: L.LightningModule | None = None

    def weight(self, epoch: int) -> float:
        """``lambda`` at ``epoch`` (validated)."""
        if not callable(self.lam):
            return float(self.lam)
        return _check_nonnegative("lam", self.lam(epoch), f" from the schedule at epoch {epoch}")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # noqa: D102
        self._remove_hooks()
        view = network_blocks(pl_module, argument="pl_module")
        self._blocks = list(view.blocks)
        if not self._blocks:
            raise ValueError(
                f"Expected the model to have hidden blocks (binary layer -> BatchNorm -> sign) to "
                f"regularize, but {type(pl_module).__name__} has none"
            )
        for i, block in enumerate(self._blocks):
            self._handles.append(block.bn.register_forward_pre_hook(self._capture_hook(i)))
        if stage == "fit" and pl_module.automatic_optimization:
            step = pl_module.training_step
            if isinstance(step, _PenalizedTrainingStep) and step.callback is not self:
                raise ValueError(
                    f"Expected one MarginRegularization callback per module, but "
                    f"{type(pl_module).__name__} already has another one: use a single callback"
                )
            if not isinstance(step, _PenalizedTrainingStep):
                pl_module.training_step = _PenalizedTrainingStep(self, step)
                self._wrapped = pl_module

    def _capture_hook(self, i: int) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            if self._capturing:
                self._captured[i] = args[0]

        return hook

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        module, self._wrapped = self._wrapped, None
        if module is not None and isinstance(
            module.__dict__.get("training_step"), _PenalizedTrainingStep
        ):
            del module.training_step

    def _reset(self, capturing: bool) -> None:
        self._captured = {}
        self._capturing = capturing
        self._applied = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # noqa: D102
        self._remove_hooks()
        self._reset(False)

    def on_train_batch_start(  # noqa: D102
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._reset(True)

    def on_train_batch_end(  # noqa: D102
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        applied = self._applied
        self._reset(False)
        if not pl_module.automatic_optimization and not applied:
            raise RuntimeError(
                f"MarginRegularization did not reach the loss of {type(pl_module).__name__}: under "
                "manual optimization, add `callback.loss_penalty(self)` to the loss that "
                "training_step backpropagates"
            )

    def on_exception(  # noqa: D102
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._reset(False)

    def penalty(self) -> Tensor | None:
        """``R`` of the last captured forward pass, or ``None`` if nothing was captured."""
        if not self._blocks or len(self._captured) != len(self._blocks):
            return None
        blocks = self._blocks
        return margin_penalty(
            [self._captured[i] for i in range(len(blocks))],
            [b.bn for b in blocks],
            [b.fan_in for b in blocks],
            delta=self.delta,
            statistics=self.statistics,
        )

    def loss_penalty(self, pl_module: L.LightningModule) -> Tensor | None:
        """``lambda * R`` for this training step (``LossPenalty`` protocol); logs ``R``.

        Returns ``None`` when no forward pass ran through the hidden blocks since the training
        batch started; after a call, nothing more is captured until the next training batch.
        """
        reg = self.penalty()
        self._captured = {}
        self._capturing = False
        if reg is None:
            return None
        self._applied = True
        pl_module.log("train/margin_reg", reg.detach(), on_step=True, on_epoch=True)
        return self.weight(pl_module.current_epoch) * reg

    def _add_penalty(self, pl_module: L.LightningModule, output: Any) -> Any:
        """Add ``lambda * R`` to a ``training_step`` output unless the module already did."""
        if self._applied or output is None:  # None: the module skips this batch
            return output
        captured = len(self._captured)
        term = self.loss_penalty(pl_module)
        if term is None:
            raise RuntimeError(
                f"MarginRegularization captured the pre-activations of {captured} of "
                f"{len(self._blocks)} hidden blocks during training_step of "
                f"{type(pl_module).__name__}: the training forward pass must run through every "
                "hidden block's BatchNorm"
            )
        if isinstance(output, Tensor):
            return output + term
        if isinstance(output, Mapping) and isinstance(output.get("loss"), Tensor):
            return {**output, "loss": output["loss"] + term}
        raise RuntimeError(
            f"Expected training_step of {type(pl_module).__name__} to return the loss as a tensor "
            f"or as the 'loss' of a dict, so that MarginRegularization can add to it, but got "
            f"{type(output).__name__}"
        )
