"""Train, sweep and measure every model of the set; resumable (METHOD §8).

For each :class:`~lightning_bet.reproduce.models.ModelSpec` the run writes, under
``DIR/models/<name>/``:

- ``model.ckpt``: the trained weights (written right after training);
- ``train.json``: training time and the per-epoch mean training objective (loss + penalty);
- ``result.json``: the fault-injection sweep on the test split (accuracy per error rate and fault
  map), the BET area and the :class:`~lightning_bet.metrics.BitErrorTolerance` statistics on the
  validation split.

A second invocation skips models whose ``result.json`` matches the requested evaluation (error
rates, realizations, sweep seed) and re-evaluates from ``model.ckpt`` when only the training is
done; only models with neither are trained.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lightning_bet._threads import torch_threads
from lightning_bet.reproduce.models import DatasetConfig, ModelSpec

__all__ = [
    "BET_AREA_GRID",
    "DEFAULT_ERROR_RATES",
    "EpochLoss",
    "bet_area",
    "evaluate_model",
    "run_model_set",
    "sweep_accuracy",
    "train_model",
]

#: The METHOD §6 grid: the BET area is the normalized trapezoid area over these error rates.
BET_AREA_GRID = (0.0, 0.001, 0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1)

#: The sweep grid of the report: the METHOD §6 grid plus the points the claims need
#: (1e-4 for C1, 0.04 for C2, the training rates 0.15, 0.2, 0.3 for the dips of C2/C3).
DEFAULT_ERROR_RATES = tuple(sorted({*BET_AREA_GRID, 1e-4, 0.04, 0.15, 0.2, 0.3}))

#: Version of the result files; a change re-evaluates every model.
RESULT_VERSION = 1


class EpochLoss(Callback):
    """Record the mean training objective (loss plus penalties) of every training epoch."""

    def __init__(self) -> None:
        self.history: list[float] = []
        self._sum = 0.0
        self._count = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._sum, self._count = 0.0, 0

    def on_train_batch_end(  # noqa: D102
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):
            self._sum += float(loss.detach())
            self._count += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        if self._count:
            self.history.append(self._sum / self._count)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning's per-fit banners and data-loader hints while the set trains."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    argv = sys.argv
    sys.argv = argv[:1]  # LightningCLI must not see the reproduce command's own arguments
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*GPU available but not used.*")
            warnings.filterwarnings("ignore", ".*LeafSpec.*")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        sys.argv = argv


def _cli_args(spec: ModelSpec, dataset: DatasetConfig, root: Path, data_dir: str | None) -> list:
    step = max(1, round(dataset.lr_step_size * spec.epochs / dataset.epochs))
    args = [
        "--config",
        str(dataset.recipe),
        *dataset.overrides,
        "--seed_everything",
        str(spec.seed),
        "--trainer.max_epochs",
        str(spec.epochs),
        "--model.lr_step_size",
        str(step),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.num_sanity_val_steps",
        "0",
    ]
    if spec.method == "mhl":
        args += ["--model.loss", "mhl"]
    if data_dir is not None and dataset.needs_data_dir:
        args += ["--data.init_args.data_dir", str(data_dir)]
    return args


def _build(spec: ModelSpec, dataset: DatasetConfig, root: Path, data_dir: str | None) -> Any:
    from lightning_bet.recipe import make_cli

    return make_cli(_cli_args(spec, dataset, root, data_dir), run=False)


def _training_callbacks(spec: ModelSpec) -> list[Callback]:
    from lightning_bet.callbacks import BitFlipTraining, MarginRegularization

    if spec.p_train is not None:
        return [
            BitFlipTraining(p=spec.p_train, variant=spec.method, seed=spec.seed, log_rate=False)
        ]
    if spec.lam is not None:
        return [MarginRegularization(lam=spec.lam, delta=spec.delta)]
    return []


def train_model(
    spec: ModelSpec, dataset: DatasetConfig, model_dir: Path, data_dir: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """Train one model; write ``model.ckpt`` and ``train.json`` into ``model_dir``.

    Returns:
        ``(cli, train_info)``: the instantiated LightningCLI (model, datamodule, trainer) and
        the content of ``train.json``.

    """
    model_dir.mkdir(parents=True, exist_ok=True)
    with _quiet():
        cli = _build(spec, dataset, model_dir, data_dir)
        history = EpochLoss()
        cli.trainer.callbacks.extend([*_training_callbacks(spec), history])
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        seconds = time.perf_counter() - start
    torch.save({"state_dict": cli.model.state_dict()}, model_dir / "model.ckpt")
    tail = history.history[-max(1, len(history.history) // 10) :]
    info = {
        "spec": spec.to_dict(),
        "train_seconds": round(seconds, 2),
        "epochs": len(history.history),
        "final_train_loss": history.history[-1] if history.history else math.nan,
        "last_tenth_train_loss": float(np.mean(tail)) if tail else math.nan,
        "loss_history": history.history,
    }
    (model_dir / "train.json").write_text(json.dumps(info, indent=1) + "\n")
    return cli, info


def _load(
    spec: ModelSpec, dataset: DatasetConfig, model_dir: Path, data_dir: str | None
) -> tuple[Any, dict[str, Any]]:
    with _quiet():
        cli = _build(spec, dataset, model_dir, data_dir)
    state = torch.load(model_dir / "model.ckpt", map_location="cpu", weights_only=True)
    cli.model.load_state_dict(state["state_dict"])
    info = json.loads((model_dir / "train.json").read_text())
    return cli, info


def _split(datamodule: L.LightningDataModule, stage: str) -> tuple[Tensor, Tensor]:
    """All ``(x, y)`` of the validation (``stage="validate"``) or test split, concatenated."""
    datamodule.setup(stage)
    loader = datamodule.val_dataloader() if stage == "validate" else datamodule.test_dataloader()
    xs, ys = zip(*((x, y) for x, y in loader), strict=True)
    return torch.cat(xs), torch.cat(ys)


def sweep_accuracy(
    module: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    error_rates: Sequence[float],
    realizations: int,
    seed: int,
) -> np.ndarray:
    """Accuracy under ``fixed`` symmetric weight flips of every binary layer.

    Calls :func:`lightning_bet.sweeps.sweep`: the fault map of layer ``l`` and realization ``r``
    at error rate ``p`` comes from ``make_generator(seed, p, r, l)``, so every model with the same
    layer shapes is evaluated on the same fault maps.

    Returns:
        ``(len(error_rates), realizations)`` float64 accuracies.

    """
    from lightning_bet.sweeps import sweep

    result = sweep(
        module, (x, y), error_rates=list(error_rates), realizations=realizations, seed=seed
    )
    return np.asarray(result.accuracy, dtype=np.float64)


def bet_area(error_rates: Sequence[float], accuracy: Sequence[float]) -> float:
    """BET area (:func:`lightning_bet.sweeps.bet_area`) over the points of :data:`BET_AREA_GRID`.

    The report's grid is finer than METHOD §6's; the area uses the METHOD grid only, so that it is
    the same number a default ``lightning-bet sweep`` reports.

    Args:
        error_rates: the swept error rates (must contain every point of the grid).
        accuracy: mean accuracy at each swept error rate.

    """
    from lightning_bet.sweeps import bet_area as area

    lookup = {float(p): float(a) for p, a in zip(error_rates, accuracy, strict=True)}
    missing = [p for p in BET_AREA_GRID if p not in lookup]
    if missing:
        raise ValueError(
            f"Expected `error_rates` to contain the BET-area grid {list(BET_AREA_GRID)}, but "
            f"{missing} are missing"
        )
    return area(BET_AREA_GRID, [lookup[p] for p in BET_AREA_GRID])


def evaluate_model(
    cli: Any,
    error_rates: Sequence[float],
    realizations: int,
    sweep_seed: int,
) -> dict[str, Any]:
    """Sweep on the test split and compute the metric on the validation split.

    Returns:
        JSON-able results: ``accuracy`` ``(rates, realizations)``, ``accuracy_mean``,
        ``clean_accuracy``, ``bet_area``, ``metric`` (all scalars of
        :class:`~lightning_bet.metrics.BitErrorTolerance`, ``"bet"`` included), split sizes.

    """
    from lightning_bet.metrics import BitErrorTolerance

    module = cli.model
    module.eval()
    x_test, y_test = _split(cli.datamodule, "test")
    x_val, y_val = _split(cli.datamodule, "validate")
    device = next(module.parameters()).device
    with torch.no_grad():
        clean = float((module(x_test.to(device)).argmax(1).cpu() == y_test).double().mean())
    accuracy = sweep_accuracy(module, x_test, y_test, error_rates, realizations, sweep_seed)
    metric = BitErrorTolerance(module).to(device)
    for start in range(0, len(y_val), 1024):
        metric.update(
            x_val[start : start + 1024].to(device), y_val[start : start + 1024].to(device)
        )
    values = {key: float(value) for key, value in metric.compute().items()}
    mean = accuracy.mean(axis=1)
    return {
        "error_rates": [float(p) for p in error_rates],
        "realizations": realizations,
        "sweep_seed": sweep_seed,
        "n_test": len(y_test),
        "n_val": len(y_val),
        "clean_accuracy": clean,
        "accuracy": accuracy.tolist(),
        "accuracy_mean": mean.tolist(),
        "accuracy_std": accuracy.std(axis=1, ddof=1).tolist() if realizations > 1 else None,
        "bet_area": bet_area(error_rates, mean),
        "metric": values,
    }


def _evaluation_key(
    spec: ModelSpec, error_rates: Sequence[float], realizations: int, sweep_seed: int
) -> dict[str, Any]:
    return {
        "version": RESULT_VERSION,
        "spec": spec.to_dict(),
        "error_rates": [float(p) for p in error_rates],
        "realizations": realizations,
        "sweep_seed": sweep_seed,
    }


def run_model_set(
    specs: Sequence[ModelSpec],
    dataset: DatasetConfig,
    out: Path,
    error_rates: Sequence[float] = DEFAULT_ERROR_RATES,
    realizations: int = 10,
    sweep_seed: int = 0,
    data_dir: str | None = None,
    threads: int | None = 1,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train (or resume) and evaluate every model; return one record per model.

    Args:
        specs: the model set.
        dataset: what to train on.
        out: output folder (models go to ``out/models/<name>/``).
        error_rates: the sweep grid (must contain :data:`BET_AREA_GRID`).
        realizations: fault maps per error rate.
        sweep_seed: seed of the fault maps, the same for every model.
        data_dir: folder of the dataset files (MNIST, FashionMNIST).
        threads: torch intra-op threads while the set runs (``None``: leave as is). One thread is
            the default: the reference models are small, and on a shared 2-core machine two
            threads measured about 10x slower than one.
        progress: show a tqdm bar over the models.

    Returns:
        One record per model, ``{"spec", "train", "result", "status"}``, where ``status`` says
        what this call did: ``"trained"``, ``"evaluated"`` (checkpoint reused) or ``"skipped"``
        (checkpoint and results reused).

    """
    with torch_threads(threads):
        return _run(specs, dataset, out, error_rates, realizations, sweep_seed, data_dir, progress)


def _trained_as(model_dir: Path, spec: ModelSpec) -> bool:
    """Whether ``model_dir`` holds a checkpoint trained for exactly this spec (epochs included)."""
    if not (model_dir / "model.ckpt").exists() or not (model_dir / "train.json").exists():
        return False
    return json.loads((model_dir / "train.json").read_text()).get("spec") == spec.to_dict()


def _run(
    specs: Sequence[ModelSpec],
    dataset: DatasetConfig,
    out: Path,
    error_rates: Sequence[float],
    realizations: int,
    sweep_seed: int,
    data_dir: str | None,
    progress: bool,
) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    records = []
    bar = tqdm(specs, desc=f"reproduce {dataset.name}", unit="model", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        model_dir = out / "models" / spec.name
        key = _evaluation_key(spec, error_rates, realizations, sweep_seed)
        result_path = model_dir / "result.json"
        if result_path.exists() and _trained_as(model_dir, spec):
            stored = json.loads(result_path.read_text())
            if stored.get("key") == key:
                train = json.loads((model_dir / "train.json").read_text())
                records.append(
                    {"spec": spec, "train": train, "result": stored, "status": "skipped"}
                )
                continue
        if _trained_as(model_dir, spec):
            cli, train = _load(spec, dataset, model_dir, data_dir)
            status = "evaluated"
        else:
            bar.set_postfix_str(f"{spec.name}: training {spec.epochs} epochs")
            cli, train = train_model(spec, dataset, model_dir, data_dir)
            status = "trained"
        bar.set_postfix_str(f"{spec.name}: sweep + metric")
        result = {"key": key, **evaluate_model(cli, error_rates, realizations, sweep_seed)}
        result_path.write_text(json.dumps(result, indent=1) + "\n")
        records.append({"spec": spec, "train": train, "result": result, "status": status})
    return records
