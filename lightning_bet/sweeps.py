"""Accuracy over weight error rate by fault injection (METHOD §6), and the BET area.

Fault maps (the key scheme other backends reproduce): for error rate ``p`` (the grid value, a
Python float), realization ``r`` (0-based int) and binary layer ``l`` (0-based, in forward order:
hidden blocks then the output layer, as :func:`lightning_bet.layers.binary_layers` yields them),
the flipped weights are::

    sample_fault_indices(sign(W_l) viewed as (out, in) row-major,    # conv: (out, in*kh*kw)
                         fault_model(p),
                         make_generator(seed, p, r, l))

with ``semantics="fixed"`` (one map per realization for the whole evaluation, the default).
With ``semantics="per_batch"`` batch ``b`` (0-based, of ``batch_size`` samples in data order)
uses ``make_generator(seed, p, r, l, "batch", b)``. A flipped weight reads ``-sign(W)``.

Two evaluators: the fast path of :mod:`lightning_bet.fast_sweep` (dense and convolutional BNNs
that deploy mode supports, on inputs ``q / L`` with integer ``q``) computes deploy mode's exact
integer semantics; the reference path (copy the model, flip, float forward) runs everything else.
They agree on every sample except where float32 rounding of the reference moves a pre-activation
across a threshold (a tiny fraction on ``q / 255`` data, none on ``q / 16``); see that module.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_bet._arguments import add_checkpoint_arguments, float_list, make_parser, parse
from lightning_bet._plotting import pyplot
from lightning_bet._validation import is_probability
from lightning_bet.checkpoints import load_checkpoint
from lightning_bet.functional.binarize import sign
from lightning_bet.functional.faults import FaultModel, make_generator, sample_fault_indices
from lightning_bet.layers import binary_layers
from lightning_bet.metrics import resolve_bnn

__all__ = [
    "DEFAULT_ERROR_RATES",
    "SweepResult",
    "bet_area",
    "cli_main",
    "demo_measure",
    "fault_family",
    "fault_maps",
    "naive_accuracy",
    "predicted_sweep",
    "sweep",
]

#: METHOD §6 default grid: 0, 0.1%, 0.5%, 1%, 2%, 3.3%, 5%, 7.5%, 10%.
DEFAULT_ERROR_RATES = (0.0, 0.001, 0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1)
SEMANTICS = ("fixed", "per_batch")


def _symmetric(p: float) -> FaultModel:
    return FaultModel(p=p)


def bet_area(error_rates: Sequence[float], accuracy: Sequence[float]) -> float:
    """Trapezoid area under accuracy over error rate, divided by the grid width.

    A one-point grid has width 0; its area is defined as that accuracy.
    """
    rates = np.asarray(error_rates, dtype=np.float64)
    acc = np.asarray(accuracy, dtype=np.float64)
    order = np.argsort(rates, kind="stable")
    rates, acc = rates[order], acc[order]
    width = rates[-1] - rates[0]
    if width == 0:
        return float(acc.mean())
    return float(np.sum((acc[1:] + acc[:-1]) / 2 * np.diff(rates)) / width)


#: How the figures word each time semantics (METHOD §2).
_SEMANTICS_WORDS = {
    "fixed": "one fault map held per realization",
    "per_batch": "a fresh fault map per batch",
}


@dataclass
class SweepResult:
    """Accuracies of a sweep.

    Attributes:
        error_rates: the grid, ``(P,)``.
        accuracy: ``(P, R)`` accuracy of every realization.
        config: how the sweep was run (seed, semantics, fault model, evaluator, ...).
    """

    error_rates: list[float]
    accuracy: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        """Mean accuracy per error rate, ``(P,)``."""
        return self.accuracy.mean(axis=1)

    @property
    def std(self) -> np.ndarray:
        """Sample standard deviation per error rate (0 for one realization), ``(P,)``."""
        if self.accuracy.shape[1] < 2:
            return np.zeros(len(self.error_rates))
        return self.accuracy.std(axis=1, ddof=1)

    @property
    def area(self) -> float:
        """BET area of the mean curve (:func:`bet_area`)."""
        return bet_area(self.error_rates, self.mean)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "error_rates": list(self.error_rates),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "accuracy": self.accuracy.tolist(),
            "bet_area": self.area,
            "config": self.config,
        }

    def to_csv(self, path: str | os.PathLike) -> Path:
        """One row per error rate: ``error_rate, mean, std, acc_r0, ..., acc_r{R-1}``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            r = self.accuracy.shape[1]
            writer.writerow(["error_rate", "mean", "std"] + [f"acc_r{i}" for i in range(r)])
            for p, m, s, row in zip(
                self.error_rates, self.mean, self.std, self.accuracy, strict=True
            ):
                writer.writerow([repr(p), f"{m:.6f}", f"{s:.6f}"] + [f"{a:.6f}" for a in row])
        return path

    def to_markdown(self) -> str:
        """A Markdown table of mean ± std per error rate, and the BET area."""
        lines = ["| error rate | accuracy (mean ± std) |", "|---:|---:|"]
        for p, m, s in zip(self.error_rates, self.mean, self.std, strict=True):
            lines.append(f"| {p:g} | {m:.4f} ± {s:.4f} |")
        lines.append("")
        lines.append(
            f"BET area (trapezoid / grid width): **{self.area:.4f}**; "
            f"R = {self.accuracy.shape[1]} realizations, semantics `{self.config.get('semantics')}`"
        )
        return "\n".join(lines) + "\n"

    def plot(
        self,
        path: str | os.PathLike | None = None,
        ax: Any = None,
        label: str = "",
        name: str | None = None,
    ) -> Any:
        """Accuracy (%) over error rate with a ±1 std band; saved as PNG when ``path`` is given.

        The figure explains itself: the title names the model, the legend says what the band is
        (spread over the fault maps) and over which grid the BET area in the legend is taken.

        Args:
            path: where to save the PNG (``None``: do not save).
            ax: draw into these axes (e.g. to overlay several models); a new figure otherwise.
            label: legend entry of the curve (default: the model's name and BET area).
            name: the model's name (default: the stem of ``config["config"]``, the recipe the
                model was trained with, else ``"model"``).

        Returns:
            The matplotlib figure.

        """
        plt = pyplot()

        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 4))
        else:
            fig = ax.get_figure()
        name = name or (Path(str(self.config["config"])).stem if "config" in self.config else "")
        name = name or "model"
        rates, mean, std = np.asarray(self.error_rates), 100 * self.mean, 100 * self.std
        realizations = self.accuracy.shape[1]
        (line,) = ax.plot(
            rates, mean, marker="o", label=label or f"{name}: BET area {100 * self.area:.2f}%"
        )
        ax.fill_between(
            rates,
            mean - std,
            mean + std,
            alpha=0.25,
            color=line.get_color(),
            label=f"±1 std over {realizations} fault map{'s' * (realizations > 1)} per rate",
        )
        ax.set_xlabel("weight bit error rate p")
        split = self.config.get("split", "test")
        ax.set_ylabel(f"{split} accuracy (%)")
        semantics = _SEMANTICS_WORDS.get(self.config.get("semantics"), "")
        fault = self.config.get("fault", "symmetric")
        ax.set_title(
            f"{name}: accuracy over weight bit error rate\n"
            f"({fault} faults{f'; {semantics}' if semantics else ''})",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
        ax.legend(
            title=f"BET area: mean accuracy over p in [{min(rates):g}, {max(rates):g}]\n"
            f"(trapezoid under the mean curve / grid width, {len(rates)} rates)",
            title_fontsize=8,
            fontsize=8,
            loc="upper left",
            bbox_to_anchor=(0.0, -0.18),
            frameon=False,
        )
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=120, bbox_inches="tight")
            plt.close(fig)
        return fig


def _check_batch_and_faults(
    batch_size: Any, fault_model: Callable[[float], FaultModel] | None
) -> Callable[[float], FaultModel]:
    """Check ``batch_size`` and ``fault_model``; the fault family (default: symmetric flips)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be a positive int, but got {batch_size!r}")
    make_model = fault_model if fault_model is not None else _symmetric
    if not callable(make_model):
        raise TypeError(
            f"Expected `fault_model` to be a callable p -> FaultModel, but got {make_model!r}"
        )
    return make_model


def _check_grid(error_rates: Sequence[float]) -> list[float]:
    if isinstance(error_rates, int | float):
        error_rates = [error_rates]
    rates = list(error_rates)
    if not rates:
        raise ValueError("Expected `error_rates` to be a non-empty list, but got []")
    for p in rates:
        if not is_probability(p):
            raise ValueError(
                f"Expected every error rate in `error_rates` to be a float in [0, 1], but got {p!r}"
            )
    return [float(p) for p in rates]


def fault_maps(
    layers: Sequence[nn.Module],
    fault_model: FaultModel,
    seed: int,
    p: float,
    realization: int,
    batch: int | None = None,
) -> list[Tensor]:
    """Flat flipped-weight indices for each binary layer (the documented key scheme).

    Args:
        layers: the binary layers in forward order.
        fault_model: the fault model at error rate ``p``.
        seed: sweep seed.
        p: the grid value (keys the generator by its exact float bits).
        realization: realization index.
        batch: batch index for ``per_batch`` semantics, else ``None``.

    Returns:
        One int64 ``(K_l,)`` tensor per layer, on the CPU.

    """
    maps = []
    for index, layer in enumerate(layers):
        keys: tuple[Any, ...] = (float(p), int(realization), index)
        if batch is not None:
            keys = keys + ("batch", int(batch))
        stored = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        maps.append(sample_fault_indices(stored, fault_model, make_generator(seed, *keys)).cpu())
    return maps


@torch.no_grad()
def _flipped_copy(net: nn.Module, flips: Sequence[Tensor]) -> nn.Module:
    faulty = copy.deepcopy(net)
    for (_, layer), idx in zip(binary_layers(faulty), flips, strict=True):
        flat = layer.weight.data.view(-1)
        idx = idx.to(flat.device)
        flat[idx] = -sign(flat[idx])
    return faulty.eval()


@torch.no_grad()
def naive_accuracy(
    net: nn.Module, x: Tensor, y: Tensor, flips: Sequence[Tensor], batch_size: int = 1000
) -> float:
    """Reference evaluation: copy the network, flip the weights, float forward, accuracy.

    Args:
        net: a BNN.
        x: ``(N, ...)`` inputs.
        y: ``(N,)`` labels.
        flips: flat flipped indices per binary layer (see :func:`fault_maps`).
        batch_size: forward batch size.

    Returns:
        The accuracy in [0, 1].

    """
    return _naive_correct(net, x, y, flips, batch_size) / x.shape[0]


@torch.no_grad()
def _naive_correct(
    net: nn.Module, x: Tensor, y: Tensor, flips: Sequence[Tensor], batch_size: int
) -> int:
    faulty = _flipped_copy(net, flips)
    device = next(faulty.parameters()).device
    correct = 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
        pred = faulty(xb.to(device)).argmax(1)
        correct += int((pred.cpu() == yb.cpu()).sum())
    return correct


def _collect(data: Any) -> tuple[Tensor, Tensor]:
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = data
    elif isinstance(data, torch.utils.data.DataLoader | Sequence) or hasattr(data, "__iter__"):
        xs, ys = [], []
        for batch in data:
            xs.append(batch[0])
            ys.append(batch[1])
        if not xs:
            raise ValueError("Expected `data` to hold at least one batch, but it is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise TypeError(
            "Expected `data` to be an (x, y) tuple of tensors or an iterable of (x, y) batches, "
            f"but got {type(data).__name__}"
        )
    if not isinstance(y, Tensor) or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            "Expected `x` of shape (N, ...) and `y` of shape (N,) with the same N, but got "
            f"{tuple(x.shape)} and {tuple(getattr(y, 'shape', ()))}"
        )
    return x, y


def sweep(
    model: nn.Module,
    data: Any,
    error_rates: Sequence[float] = DEFAULT_ERROR_RATES,
    realizations: int = 8,
    seed: int = 0,
    semantics: str = "fixed",
    fault_model: Callable[[float], FaultModel] | None = None,
    batch_size: int = 1000,
    evaluator: str = "auto",
    progress: bool = False,
) -> SweepResult:
    """Accuracy over weight error rate with ``realizations`` fault maps per rate.

    Args:
        model: a BNN or a module holding one as ``.net`` (e.g. ``BNNClassifier``).
        data: ``(x, y)`` tensors or an iterable of ``(x, y)`` batches (e.g. a test DataLoader).
        error_rates: the grid, each in [0, 1] (default: METHOD §6).
        realizations: fault maps per error rate (``R >= 1``).
        seed: sweep seed (see the module docstring for the key scheme).
        semantics: ``"fixed"`` (one map per realization) or ``"per_batch"`` (a fresh map for
            every batch of ``batch_size`` samples).
        fault_model: ``p -> FaultModel`` (default: symmetric flips ``FaultModel(p=p)``), e.g.
            ``lambda p: FaultModel(p01=p, p10=p / 2)``.
        batch_size: samples per batch (the unit of ``per_batch`` semantics).
        evaluator: ``"auto"`` (the fast exact path where it applies, else the reference
            loop; ``config["why_naive"]`` says why), ``"fast"`` (a ``ValueError`` where it does
            not apply) or ``"naive"``.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`SweepResult`.

    Example:
        >>> from lightning_bet.models import build_model
        >>> net = build_model(hidden=(32,)).eval()
        >>> x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
        >>> sweep(net, (x, y), error_rates=[0.0, 0.1], realizations=2).accuracy.shape
        (2, 2)

    """
    from lightning_bet.fast_sweep import fast_evaluator

    net = resolve_bnn(model)
    rates = _check_grid(error_rates)
    if isinstance(realizations, bool) or not isinstance(realizations, int) or realizations < 1:
        raise ValueError(f"Expected `realizations` to be an int >= 1, but got {realizations!r}")
    if semantics not in SEMANTICS:
        raise ValueError(
            f"Expected `semantics` to be one of {list(SEMANTICS)}, but got {semantics!r}"
        )
    if evaluator not in ("auto", "fast", "naive"):
        raise ValueError(
            f"Expected `evaluator` to be 'auto', 'fast' or 'naive', but got {evaluator!r}"
        )
    make_model = _check_batch_and_faults(batch_size, fault_model)
    x, y = _collect(data)
    layers = [layer for _, layer in binary_layers(net)]
    was_training = net.training
    net.eval()
    try:
        ev, why_naive = (
            (None, "evaluator='naive'")
            if evaluator == "naive"
            else fast_evaluator(net, x, y, required=evaluator == "fast")
        )
        fast = ev is not None
        n = x.shape[0]
        batches = [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
        acc = np.zeros((len(rates), realizations))
        total = len(rates) * realizations
        bar = _progress(total, progress)
        try:
            for i, p in enumerate(rates):
                fm = make_model(p)
                if not isinstance(fm, FaultModel):
                    raise TypeError(
                        f"Expected `fault_model({p!r})` to return a FaultModel, but got "
                        f"{type(fm).__name__}"
                    )
                for r in range(realizations):
                    if semantics == "fixed":
                        maps = fault_maps(layers, fm, seed, p, r)
                        if ev is not None:
                            correct = ev.correct(maps)
                        else:
                            correct = _naive_correct(net, x, y, maps, batch_size)
                    else:
                        correct = 0
                        for b, cols in enumerate(batches):
                            maps = fault_maps(layers, fm, seed, p, r, batch=b)
                            if ev is not None:
                                correct += ev.correct(maps, cols)
                            else:
                                correct += _naive_correct(net, x[cols], y[cols], maps, batch_size)
                    acc[i, r] = correct / n
                    bar.update(1)
        finally:
            bar.close()
    finally:
        net.train(was_training)
    fm0 = make_model(rates[0])
    config = {
        "seed": seed,
        "realizations": realizations,
        "semantics": semantics,
        "fault_model_at_first_rate": fm0.to_dict(),
        "evaluator": "fast" if fast else "naive",
        "input_levels": ev.input_levels if ev is not None else None,
        "why_naive": why_naive,
        "samples": int(x.shape[0]),
        "batch_size": batch_size,
    }
    return SweepResult(rates, acc, config)


@torch.no_grad()
def predicted_sweep(
    model: nn.Module,
    data: Any,
    error_rates: Sequence[float] = DEFAULT_ERROR_RATES,
    fault_model: Callable[[float], FaultModel] | None = None,
    batch_size: int = 1000,
) -> SweepResult:
    """Predicted accuracy over weight error rate, without fault injection (METHOD §4b).

    The same result type as :func:`sweep`, with one "realization" per error rate: the
    accuracy predicted by :func:`~lightning_bet.functional.propagation.predict_correct` on
    every sample, ``clean accuracy + mean(P - correct)``. ``result.area`` is the predicted BET
    area (the value ``val/bet`` logs, here on all of ``data``).

    Args:
        model: a BNN or a module holding one as ``.net`` (e.g. ``BNNClassifier``).
        data: ``(x, y)`` tensors or an iterable of ``(x, y)`` batches.
        error_rates: the grid, each in [0, 1] (default: METHOD §6).
        fault_model: ``p -> FaultModel`` (default: symmetric flips ``FaultModel(p=p)``).
        batch_size: samples per call of the propagation (memory: about ``2 R`` times a
            forward pass of that many samples).

    Returns:
        A :class:`SweepResult` with ``accuracy`` of shape ``(P, 1)`` and
        ``config["evaluator"] == "predicted"``.

    Example:
        >>> from lightning_bet.models import build_model
        >>> net = build_model(hidden=(32,)).eval()
        >>> x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
        >>> predicted_sweep(net, (x, y), error_rates=[0.0, 0.1]).accuracy.shape
        (2, 1)

    """
    from lightning_bet.functional.propagation import (
        network_layers,
        predict_correct,
        read_error_rates,
    )

    net = resolve_bnn(model)
    rates = _check_grid(error_rates)
    make_model = _check_batch_and_faults(batch_size, fault_model)
    read = []
    for p in rates:
        fm = make_model(p)
        if not isinstance(fm, FaultModel):
            raise TypeError(
                f"Expected `fault_model({p!r})` to return a FaultModel, but got {type(fm).__name__}"
            )
        read.append(read_error_rates(fm))
    x, y = _collect(data)
    was_training = net.training
    net.eval()
    try:
        device = next(net.parameters()).device
        layers = network_layers(net.blocks, net.head)
        read_rates = torch.tensor(read, dtype=torch.float64)
        gap = torch.zeros(len(rates), dtype=torch.float64)
        clean = 0
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            xb, yb = xb.to(device), yb.to(device)
            clean += int((net(xb).argmax(1) == yb).sum())
            prob, correct = predict_correct(layers, xb, yb, read_rates)
            gap += (prob.double() - correct.double()).sum(1).cpu()
    finally:
        net.train(was_training)
    n = x.shape[0]
    acc = np.clip(clean / n + gap.numpy() / n, 0.0, 1.0)
    config = {
        "evaluator": "predicted",
        "semantics": "predicted, no fault injection",
        "realizations": 1,
        "fault_model_at_first_rate": make_model(rates[0]).to_dict(),
        "samples": int(n),
        "batch_size": batch_size,
    }
    return SweepResult(rates, acc.reshape(-1, 1), config)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep", unit="map", disable=not enabled, leave=False)


def write_outputs(result: SweepResult, out_dir: str | os.PathLike, name: str = "sweep") -> dict:
    """Write ``<name>.csv``, ``<name>.png``, ``<name>.md`` and ``<name>.json`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": str(result.to_csv(out / f"{name}.csv")),
        "md": str(out / f"{name}.md"),
        "png": str(out / f"{name}.png"),
        "json": str(out / f"{name}.json"),
    }
    Path(paths["md"]).write_text(result.to_markdown())
    Path(paths["json"]).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    result.plot(paths["png"])
    return paths


def demo_measure(model_module: nn.Module, datamodule: Any, out_dir: str | os.PathLike) -> dict:
    """Measure a trained model for the demo: the BET metric and a small sweep.

    Runs :class:`~lightning_bet.metrics.BitErrorTolerance` on the validation split (the value
    logged as ``val/bet``) and a 5-point sweep (``0, 0.01, 0.02, 0.05, 0.1``, R = 5) on the
    test split, and writes ``sweep.csv``/``.png``/``.md``/``.json`` and ``bet.png`` to
    ``out_dir``.

    Args:
        model_module: a ``BNNClassifier`` (or a BNN).
        datamodule: a LightningDataModule with ``val_dataloader`` and ``test_dataloader``.
        out_dir: output folder.

    Returns:
        ``{"bet": float, "metric": {name: float}, "sweep": SweepResult.to_dict(),
        "files": {...}}``.

    """
    from lightning_bet.metrics import BitErrorTolerance

    if hasattr(datamodule, "setup"):
        datamodule.setup("test")
    metric = BitErrorTolerance(model_module)
    for xb, yb in datamodule.val_dataloader():
        metric.update(xb, yb)
    values = {k: float(v) for k, v in metric.compute().items()}
    result = sweep(
        model_module,
        datamodule.test_dataloader(),
        error_rates=(0.0, 0.01, 0.02, 0.05, 0.1),
        realizations=5,
    )
    files = write_outputs(result, out_dir)
    fig, _ = metric.plot()
    fig.savefig(Path(out_dir) / "bet.png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    files["bet_png"] = str(Path(out_dir) / "bet.png")
    return {"bet": values["bet"], "metric": values, "sweep": result.to_dict(), "files": files}


def fault_family(spec: str) -> Callable[[float], FaultModel]:
    """A ``p -> FaultModel`` family from its command-line name.

    - ``"symmetric"``: every bit flips with probability ``p``;
    - ``"asymmetric:R"``: a stored 0 (+1) reads 1 with probability ``p``, a stored 1 reads 0
      with ``R * p`` (``R * p`` capped at 1);
    - ``"stuck_at_0"`` / ``"stuck_at_1"``: a fraction ``p`` of the cells reads a fixed bit.

    Raises:
        ValueError: unknown name or a bad ratio.

    """
    if spec == "symmetric":
        return _symmetric
    if spec in ("stuck_at_0", "stuck_at_1"):
        return lambda p: FaultModel(**{spec: p})
    if spec.startswith("asymmetric:"):
        try:
            ratio = float(spec.split(":", 1)[1])
        except ValueError:
            ratio = float("nan")
        if not ratio >= 0 or math.isinf(ratio):
            raise ValueError(
                f"Expected `--fault asymmetric:R` with a finite ratio R >= 0, but got {spec!r}"
            )
        return lambda p: FaultModel(p01=p, p10=min(ratio * p, 1.0))
    raise ValueError(
        "Expected `--fault` to be 'symmetric', 'asymmetric:R', 'stuck_at_0' or 'stuck_at_1', "
        f"but got {spec!r}"
    )


def cli_main(argv: Sequence[str] | None = None) -> dict:
    """``lightning-bet sweep --ckpt CKPT --config RECIPE [--out DIR] ...``.

    Writes ``sweep.csv``, ``sweep.png`` (accuracy over error rate with std bands),
    ``sweep.md`` and ``sweep.json`` into ``--out`` and prints the Markdown table.
    """
    parser = make_parser("sweep", "Accuracy over weight error rate by fault injection (METHOD §6).")
    add_checkpoint_arguments(parser, "checkpoint of the trained model")
    parser.add_argument("--out", default="runs/sweep", help="output folder")
    parser.add_argument(
        "--error-rates",
        type=float_list,
        default=list(DEFAULT_ERROR_RATES),
        help="comma-separated error-rate grid (METHOD §6)",
    )
    parser.add_argument(
        "--realizations", "-R", type=int, default=8, help="fault maps per error rate"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed of the fault maps")
    parser.add_argument(
        "--semantics",
        choices=SEMANTICS,
        default="fixed",
        help="fixed: one map per realization (programming errors); per_batch: a fresh map "
        "per batch (read errors)",
    )
    parser.add_argument(
        "--fault",
        default="symmetric",
        help="fault family: symmetric | asymmetric:R (p10 = R p01) | stuck_at_0 | stuck_at_1",
    )
    parser.add_argument(
        "--split", choices=("test", "val"), default="test", help="which split to evaluate"
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size")
    parser.add_argument(
        "--predict",
        action="store_true",
        help="also predict the curve without fault injection (METHOD §4b) and draw both",
    )
    args = parse(parser, argv)
    family = fault_family(args.fault)
    module, datamodule = load_checkpoint(
        args.ckpt, args.config, ("--ckpt", "--config"), trust=args.trust_checkpoint
    )
    datamodule.setup("test")
    loader = datamodule.test_dataloader() if args.split == "test" else datamodule.val_dataloader()
    result = sweep(
        module,
        loader,
        error_rates=args.error_rates,
        realizations=args.realizations,
        seed=args.seed,
        semantics=args.semantics,
        fault_model=family,
        batch_size=args.batch_size,
        progress=True,
    )
    result.config.update(
        {"ckpt": args.ckpt, "config": args.config, "split": args.split, "fault": args.fault}
    )
    files = write_outputs(result, args.out)
    print(result.to_markdown())
    output = {"result": result.to_dict(), "files": files}
    if args.predict:
        predicted = predicted_sweep(
            module, loader, error_rates=args.error_rates, fault_model=family
        )
        files["predicted_json"] = str(Path(args.out) / "predicted.json")
        Path(files["predicted_json"]).write_text(json.dumps(predicted.to_dict(), indent=2) + "\n")
        fig = result.plot(label=f"measured, area {result.area:.4f}")
        predicted.plot(files["png"], ax=fig.axes[0], label=f"predicted, area {predicted.area:.4f}")
        print(f"predicted (no fault injection): BET area **{predicted.area:.4f}**")
        print(predicted.to_markdown())
        output["predicted"] = predicted.to_dict()
    print(f"wrote {', '.join(files.values())}")
    return output
