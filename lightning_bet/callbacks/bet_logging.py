"""``BetLogging``: log the :class:`~lightning_bet.metrics.BitErrorTolerance` metric in validation.

The callback records the activations of the validation step's own forward pass (forward hooks,
no second forward) and feeds them to the metric; at the end of the validation epoch it logs the
scalar as ``val/bet`` (the predicted BET area: area under the predicted accuracy over the METHOD
§6 grid 0-10%, divided by the grid width) and the other values as ``val/bet/acc_pred_p0.01``,
``val/bet/survival``, ``val/bet/layer0/margin_mean`` etc. to whatever logger the trainer has.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lightning_bet._validation import check_positive_int
from lightning_bet.metrics import DEFAULT_ERROR_RATES, BitErrorTolerance, capture_activations

__all__ = ["BetLogging"]


class BetLogging(Callback):
    """Log the predicted bit error tolerance of the model during validation.

    ``val/bet`` is the predicted BET area ``bet_pred`` of
    :class:`~lightning_bet.metrics.BitErrorTolerance`: the trapezoid area under the predicted
    accuracy over the METHOD §6 grid (0, 0.1%, 0.5%, 1%, 2%, 3.3%, 5%, 7.5%, 10%) divided by
    the grid width, the fault-injection BET area of ``lightning-bet sweep`` predicted without
    fault injection (higher is better). The METHOD §4 neuron survival rate is logged as
    ``val/bet/survival``.

    Works on any LightningModule made of the project's binary layers: the blocks are found by
    :func:`lightning_bet.network.blocks`, and validation batches are ``(x, y, ...)``.

    Args:
        error_rates: error rates of the predicted neuron flip rate and of the logged predicted
            accuracies ``val/bet/acc_pred_p{p}`` (see ``BitErrorTolerance``).
        quantiles: low quantiles of the normalized margin to log.
        prefix: logging key of the scalar; per-layer keys are ``f"{prefix}/{name}"``.
        per_layer: also log the other values (per-layer statistics, ``survival``,
            ``acc_pred_p{p}``, ``bet_pred``).
        samples_per_batch: feed the hidden layers' statistics with only the first this many
            samples of each validation batch (``None``: all); the output-layer statistics (one
            value per sample) always use every sample. Hidden-layer margin statistics need far
            fewer samples than accuracy does (16 samples x 2048 neurons per batch): on the demo
            models the survival rate moved by 0.001 between 16 and all samples, and the default
            keeps the statistics' cost to a few percent of the validation epoch
            (``lightning-bet bench metric_cost``).
        predict_rows: of those samples, the first this many per batch feed the predicted
            accuracy (``None``: all ``samples_per_batch``). The prediction costs about two
            matrix products per hidden layer, row and error rate; clean accuracy always uses
            every sample, and the same validation rows are used every epoch, so checkpoints are
            compared on the same rows.
        predict_every: predict rows of every this many-th validation batch only (batches 0,
            n, 2n, ...). With ``predict_rows=1`` and ``predict_every=2`` (the defaults, chosen by
            ``bench metric_cost``: the validation epoch of FCNN 784-2048-2048-10 within 10%)
            FashionMNIST's 10,000 validation samples in batches of 256 give 20 predicted rows;
            the README's validity table says what so few rows give up against all of them.

    Example:
        >>> trainer = L.Trainer(callbacks=[BetLogging()])  # doctest: +SKIP

    """

    def __init__(
        self,
        error_rates: Sequence[float] = DEFAULT_ERROR_RATES,
        quantiles: Sequence[float] = (0.01, 0.05, 0.1),
        prefix: str = "val/bet",
        per_layer: bool = True,
        samples_per_batch: int | None = 16,
        predict_rows: int | None = 1,
        predict_every: int = 2,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"Expected `prefix` to be a non-empty string, but got {prefix!r}")
        self.error_rates = tuple(error_rates)
        self.quantiles = tuple(quantiles)
        self.prefix = prefix
        self.per_layer = bool(per_layer)
        if samples_per_batch is not None:
            check_positive_int("samples_per_batch", samples_per_batch, "a positive int or None")
        self.samples_per_batch = samples_per_batch
        if predict_rows is not None:
            check_positive_int("predict_rows", predict_rows, "a positive int or None")
        self.predict_rows = predict_rows
        self.predict_every = check_positive_int("predict_every", predict_every)
        self.metric: BitErrorTolerance | None = None
        self._stack: ExitStack | None = None
        self._records: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # noqa: D102
        self.metric = BitErrorTolerance(
            pl_module,
            error_rates=self.error_rates,
            quantiles=self.quantiles,
            predict_rows=self.predict_rows,
        ).to(pl_module.device)

    def _close(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = None
        self._records = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        if self.metric is None:
            self.setup(trainer, pl_module, "validate")
        self.metric.to(pl_module.device)
        self.metric.reset()
        self._close()
        self._stack = ExitStack()
        self._records = self._stack.enter_context(
            capture_activations(self.metric.net, rows=self.samples_per_batch)
        )

    def on_validation_batch_start(  # noqa: D102
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._records is not None:
            self._records["logits"] = None
            self._records["preacts"].clear()
            self._records["inputs"].clear()

    def on_validation_batch_end(  # noqa: D102
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._records is None or self._records["logits"] is None:
            return
        self.metric.update(self._records, batch[1], predict=batch_idx % self.predict_every == 0)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._close()
        if self.metric is None or not self._has_data():
            return
        values = self.metric.compute()
        pl_module.log(self.prefix, values["bet"].float(), prog_bar=True)
        if self.per_layer:
            for name, value in values.items():
                if name != "bet":
                    pl_module.log(f"{self.prefix}/{name}", value.float())
        self.metric.reset()

    def _has_data(self) -> bool:
        """Whether any rank saw data (every rank takes part in the reduction under DDP)."""
        import torch.distributed as dist

        count = self.metric.out_count.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
        return int(count) > 0

    def on_exception(  # noqa: D102
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:  # noqa: D102
        self._close()
