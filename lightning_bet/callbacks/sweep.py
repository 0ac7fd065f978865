"""``SweepCallback``: fault-injection sweep (METHOD §6) at the end of fit or every N epochs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lightning_bet._validation import check_positive_int
from lightning_bet.functional.faults import FaultModel
from lightning_bet.sweeps import DEFAULT_ERROR_RATES, SEMANTICS, SweepResult, _check_grid, sweep

__all__ = ["SweepCallback"]


class SweepCallback(Callback):
    """Run :func:`lightning_bet.sweeps.sweep` on the validation (or a given) data and log it.

    Logs ``{prefix}/area`` (the BET area) and ``{prefix}/acc_p{p}`` (mean accuracy per error
    rate) through the LightningModule's logger, and keeps the last result in ``self.result``.
    With ``out_dir`` it also writes the CSV, PNG, Markdown and JSON files there.

    Under DDP with the default data every rank sweeps its shard of the validation loader and
    the per-rank correct counts and sample counts are summed over ranks (all-reduce), so every
    rank holds the accuracy over the whole split, as one process would compute it (when the
    sampler does not pad: the split size divisible by the world size). With ``data`` given
    every rank sweeps those same samples and nothing is reduced. Rank 0 logs and writes.

    Args:
        error_rates: the grid (default: METHOD §6).
        realizations: fault maps per error rate.
        seed: sweep seed.
        semantics: ``"fixed"`` or ``"per_batch"``.
        fault_model: ``p -> FaultModel`` (default symmetric).
        every_n_epochs: also sweep after every this many validation epochs (``None``: only at
            the end of fit).
        data: ``(x, y)`` or an iterable of batches; default: the trainer's validation loader.
        prefix: logging prefix.
        out_dir: where to write the sweep files (``None``: no files).

    """

    def __init__(
        self,
        error_rates: Sequence[float] = DEFAULT_ERROR_RATES,
        realizations: int = 4,
        seed: int = 0,
        semantics: str = "fixed",
        fault_model: Callable[[float], FaultModel] | None = None,
        every_n_epochs: int | None = None,
        data: Any = None,
        prefix: str = "sweep",
        out_dir: str | None = None,
    ) -> None:
        self.error_rates = _check_grid(error_rates)
        check_positive_int("realizations", realizations, "an int >= 1")
        if semantics not in SEMANTICS:
            raise ValueError(
                f"Expected `semantics` to be one of {list(SEMANTICS)}, but got {semantics!r}"
            )
        if every_n_epochs is not None:
            check_positive_int("every_n_epochs", every_n_epochs, "a positive int or None")
        self.realizations = realizations
        self.seed = seed
        self.semantics = semantics
        self.fault_model = fault_model
        self.every_n_epochs = every_n_epochs
        self.data = data
        self.prefix = prefix
        self.out_dir = out_dir
        self.result: SweepResult | None = None

    def _data(self, trainer: L.Trainer) -> Any:
        if self.data is not None:
            return self.data
        loaders = trainer.val_dataloaders
        if loaders is None:
            raise ValueError(
                "Expected `data` or a validation dataloader for SweepCallback, but got neither"
            )
        return loaders[0] if isinstance(loaders, list | tuple) else loaders

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, log: bool) -> SweepResult:
        result = sweep(
            pl_module,
            self._data(trainer),
            error_rates=self.error_rates,
            realizations=self.realizations,
            seed=self.seed,
            semantics=self.semantics,
            fault_model=self.fault_model,
        )
        if self.data is None and trainer.world_size > 1:
            result = self._all_reduce(trainer, pl_module, result)
        self.result = result
        if log:
            pl_module.log(f"{self.prefix}/area", float(result.area))
            for p, acc in zip(result.error_rates, result.mean, strict=True):
                pl_module.log(f"{self.prefix}/acc_p{p:g}", float(acc))
        else:  # after fit, logging through the module is closed: go to the loggers directly
            self._log_direct(trainer, result)
        rank_zero_info(f"{self.prefix}: BET area {result.area:.4f}")
        if self.out_dir is not None:
            self._write(result, trainer.current_epoch)
        return result

    @staticmethod
    def _all_reduce(
        trainer: L.Trainer, pl_module: L.LightningModule, result: SweepResult
    ) -> SweepResult:
        """Sum the correct counts ``(P, R)`` and the sample counts of all ranks."""
        samples = int(result.config["samples"])
        correct = np.rint(result.accuracy * samples)
        stacked = torch.from_numpy(np.append(correct.reshape(-1), samples)).to(
            device=pl_module.device, dtype=torch.float64
        )
        total = trainer.strategy.reduce(stacked, reduce_op="sum").cpu().numpy()
        config = dict(result.config, samples=int(total[-1]), world_size=trainer.world_size)
        accuracy = total[:-1].reshape(correct.shape) / total[-1]
        return SweepResult(result.error_rates, accuracy, config)

    @rank_zero_only
    def _log_direct(self, trainer: L.Trainer, result: SweepResult) -> None:
        metrics = {f"{self.prefix}/area": float(result.area)}
        for p, acc in zip(result.error_rates, result.mean, strict=True):
            metrics[f"{self.prefix}/acc_p{p:g}"] = float(acc)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @rank_zero_only
    def _write(self, result: SweepResult, epoch: int) -> None:
        from lightning_bet.sweeps import write_outputs

        write_outputs(result, Path(self.out_dir), name=f"sweep_epoch{epoch}")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        if self.every_n_epochs is None or trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._run(trainer, pl_module, log=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._run(trainer, pl_module, log=False)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"last": self.result.to_dict() if self.result is not None else None}
