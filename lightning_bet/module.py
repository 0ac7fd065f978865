"""``BNNClassifier``: the LightningModule that trains a reference binarized network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_bet._validation import check_positive_int
from lightning_bet.functional.losses import LOSSES, resolve_loss
from lightning_bet.layers import clip_latent_weights_
from lightning_bet.models import build_model

__all__ = ["BNNClassifier", "LossPenalty"]


@runtime_checkable
class LossPenalty(Protocol):
    """A callback that adds a term to the training loss (e.g. ``MarginRegularization``).

    ``BNNClassifier.training_step`` adds ``loss_penalty(pl_module)`` of every such callback in
    ``trainer.callbacks`` to the task loss; ``None`` means "nothing this step".
    """

    def loss_penalty(self, pl_module: L.LightningModule) -> Tensor | None:
        """Return the scalar term to add to this step's loss, or ``None``."""
        ...


class BNNClassifier(L.LightningModule):
    """Image classifier around a reference BNN (:func:`~lightning_bet.models.build_model`).

    Latent weights are clipped to [-1, 1] in place after every optimizer step.

    Args:
        arch: ``"fcnn"``, ``"cnn"``, ``"vgg3"`` or ``"vgg7"``.
        input_shape: shape of one sample, e.g. ``[1, 8, 8]``.
        num_classes: number of classes.
        hidden: hidden dense widths (``"vgg*"`` use ``hidden[0]``; ``"cnn"`` may have none).
        binarize_input: binarize the first layer's input (default: real-valued pixels).
        loss: ``"cross_entropy"``, ``"mhl"`` (modified hinge loss) or ``"mcel"`` (margin
            cross-entropy).
        mhl_b: the MHL hinge target ``b``.
        mcel_margin: the margin ``m`` of the margin cross-entropy.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        lr_step_size: StepLR period in epochs.
        lr_gamma: StepLR factor.
        channels: ``"cnn"`` only: output channels of its ``conv 3x3 -> max-pool 2`` stages.

    """

    def __init__(
        self,
        arch: Literal["fcnn", "cnn", "vgg3", "vgg7"] = "fcnn",
        input_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 10,
        hidden: Sequence[int] = (256, 256),
        binarize_input: bool = False,
        loss: Literal["cross_entropy", "mhl", "mcel"] = "cross_entropy",
        mhl_b: float = 128.0,
        mcel_margin: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_step_size: int = 25,
        lr_gamma: float = 0.5,
        channels: Sequence[int] = (32, 64),
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"Expected `loss` to be one of {list(LOSSES)}, but got {loss!r}")
        for name, value in (("lr", lr), ("lr_gamma", lr_gamma)):
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"Expected `{name}` to be a float > 0, but got {value!r}")
        check_positive_int("lr_step_size", lr_step_size)
        self.save_hyperparameters()
        self.net = build_model(arch, input_shape, num_classes, hidden, binarize_input, channels)
        self.criterion = resolve_loss(loss, mhl_b=mhl_b, mcel_margin=mcel_margin)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` for inputs ``(N, *input_shape)``."""
        return self.net(x)

    def _penalties(self) -> Tensor | None:
        total = None
        trainer = self._trainer
        for callback in trainer.callbacks if trainer is not None else []:
            if isinstance(callback, LossPenalty):
                term = callback.loss_penalty(self)
                if term is not None:
                    total = term if total is None else total + term
        return total

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:  # noqa: D102
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        penalty = self._penalties()
        if penalty is not None:
            loss = loss + penalty
        self.train_acc(logits, y)
        self.log("train/acc", self.train_acc, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        metric = self.val_acc if stage == "val" else self.test_acc
        metric(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}/acc", metric, prog_bar=stage == "val")
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:  # noqa: D102
        return self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:  # noqa: D102
        return self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:  # noqa: D102
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x).argmax(dim=1)

    def configure_optimizers(self) -> dict[str, Any]:  # noqa: D102
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=hp.lr_step_size, gamma=hp.lr_gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimizer, then clip latent weights to [-1, 1] in place."""
        super().optimizer_step(*args, **kwargs)
        clip_latent_weights_(self.net)
