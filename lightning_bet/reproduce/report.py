"""Markdown report and PNG plots of a ``lightning-bet reproduce`` run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_bet._plotting import pyplot
from lightning_bet.reproduce.claims import ClaimResult, ModelRecord
from lightning_bet.reproduce.models import METHODS, DatasetConfig
from lightning_bet.reproduce.stats import binomial_se

__all__ = ["expected_runtime", "write_report"]

#: Error rates shown as columns of the model table.
TABLE_RATES = (1e-4, 1e-3, 0.01, 0.04, 0.1, 0.3)
#: How the seconds per epoch of :data:`~.models.DATASETS` were obtained.
RUNTIME_NOTE = (
    "Seconds per epoch: digits measured (one thread of a shared 2-core CPU, Lightning overhead "
    "included). MNIST and FashionMNIST (FCNN 784-2048-2048-10, 215 steps of 256 samples per "
    "epoch): 2 s per plain epoch is an assumption for one GPU, not a measurement, and the flip "
    "term comes from the measured CPU cost of drawing the fault maps; on one thread of "
    "the shared 2-core CPU one training step measured 0.54 s, about 115 s per epoch, which "
    "would make the default set take over 200 hours there: run those on a GPU (the recipes "
    "use `accelerator: auto`; pass `--threads 0` to let torch use all CPU cores)."
)
_COLORS = {
    "plain": "black",
    "hirtzlin": "tab:red",
    "straight_through": "tab:blue",
    "margin": "tab:green",
    "mhl": "tab:purple",
}


def _groups(records: Sequence[ModelRecord]) -> dict[str, list[ModelRecord]]:
    order = {m: i for i, m in enumerate(METHODS)}
    keyed = sorted(records, key=lambda r: (order[r.method], r.p_train or 0.0, r.lam or 0.0, r.seed))
    out: dict[str, list[ModelRecord]] = {}
    for r in keyed:
        out.setdefault(r.group, []).append(r)
    return out


def _mean_sd(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    values = np.asarray(values, dtype=np.float64) * scale
    if values.size > 1:
        return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"
    return f"{values.mean():.{digits}f}"


def expected_runtime(specs: Sequence[Any], dataset: DatasetConfig) -> float:
    """Rough training time in seconds of a model set.

    ``epochs x (seconds_per_epoch + p_train x flip_seconds_per_p)`` summed over the models
    (see :class:`~lightning_bet.reproduce.models.DatasetConfig` for where the numbers come from).
    """
    total = 0.0
    for spec in specs:
        extra = (spec.p_train or 0.0) * dataset.flip_seconds_per_p
        total += spec.epochs * (dataset.seconds_per_epoch + extra)
    return total


def _save(fig: Any, path: Path) -> None:
    """Lay out, write and close a report figure (legends outside the axes included)."""
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    pyplot().close(fig)


def _legend_beside(ax: Any, **kwargs: Any) -> None:
    """A legend to the right of ``ax``, where it cannot cover a curve or a point."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def _plot_curves(records: Sequence[ModelRecord], path: Path) -> None:
    plt = pyplot()
    from matplotlib.lines import Line2D

    groups = _groups(records)
    seeds = len({r.seed for r in records})
    fig, axes = plt.subplots(2, 1, figsize=(8, 7.5), sharex=True)
    for ax, methods in zip(
        axes, (("plain", "hirtzlin"), ("plain", "straight_through")), strict=True
    ):
        for models in groups.values():
            method = models[0].method
            if method not in methods:
                continue
            rates = np.asarray(models[0].error_rates)
            acc = np.mean([m.accuracy for m in models], axis=0)
            p = models[0].p_train
            alpha = 1.0 if p is None else 0.4 + 0.6 * min(1.0, p / 0.3)
            label = "plain (no flip training)" if p is None else f"{method}, trained at p={p:g}"
            ax.plot(rates, 100 * acc, marker=".", color=_COLORS[method], alpha=alpha, label=label)
            if p is not None:
                ax.axvline(p, color=_COLORS[method], alpha=alpha * 0.5, linestyle=":")
        handles, _ = ax.get_legend_handles_labels()
        handles.append(
            Line2D([], [], color="gray", linestyle=":", label="dotted: the training error rate")
        )
        ax.set_xscale("symlog", linthresh=1e-4)
        ax.set_xlim(left=0)
        ax.set_ylabel(f"test accuracy (%),\nmean over {seeds} seed{'s' * (seeds > 1)}")
        ax.grid(alpha=0.3)
        _legend_beside(ax, handles=handles, fontsize=8)
    axes[1].set_xlabel("weight bit error rate p at test time (symlog: linear below 1e-4)")
    axes[0].set_title("Hirtzlin flip training (C1, C2): accuracy under weight bit errors")
    axes[1].set_title("straight-through flip training (C3): accuracy under weight bit errors")
    _save(fig, path)


def _plot_metric(records: Sequence[ModelRecord], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in METHODS:
        models = [r for r in records if r.method == method]
        if models:
            ax.scatter(
                [m.metric for m in models],
                [100 * m.bet_area for m in models],
                color=_COLORS[method],
                label=method,
                s=18,
            )
    ax.set_xlabel("BitErrorTolerance scalar `bet` (validation split)")
    ax.set_ylabel("BET area (%), test split\n(mean accuracy over the error-rate grid)")
    ax.set_title("C4: metric vs fault-injection tolerance (one point per model)")
    ax.grid(alpha=0.3)
    _legend_beside(ax, fontsize=8, title="training method", title_fontsize=8)
    _save(fig, path)


def _plot_lambda(records: Sequence[ModelRecord], path: Path) -> bool:
    plt = pyplot()
    models = [r for r in records if r.method in ("plain", "margin")]
    if not any(r.method == "margin" for r in models):
        return False
    lams = sorted({r.lam or 0.0 for r in models})
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for lam in lams:
        group = [r for r in models if (r.lam or 0.0) == lam]
        ax.scatter(
            [100 * r.at(0.0) for r in group],
            [100 * r.bet_area for r in group],
            label=f"λ={lam:g}",
            s=20,
        )
    ax.set_xlabel("clean test accuracy (%)")
    ax.set_ylabel("BET area (%)\n(mean accuracy over the error-rate grid)")
    ax.set_title("C5: margin regularizer, one point per model")
    ax.grid(alpha=0.3)
    _legend_beside(ax, fontsize=8, title="weight λ\n(λ=0: plain)", title_fontsize=8)
    _save(fig, path)
    return True


def _plot_losses(histories: dict[str, list[list[float]]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    styles: dict[str, int] = {}
    for name, runs in histories.items():
        method = name.split()[0]
        length = min(len(h) for h in runs)
        if length == 0:
            continue
        mean = np.mean([h[:length] for h in runs], axis=0)
        style = ("-", "--", ":", "-.")[styles.setdefault(method, 0) % 4]
        styles[method] += 1
        ax.plot(np.arange(1, length + 1), mean, style, color=_COLORS[method], alpha=0.8, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training objective (mean over seeds)")
    ax.set_title("Convergence (line style: the setting within a method)")
    ax.grid(alpha=0.3)
    _legend_beside(ax, fontsize=8)
    _save(fig, path)


def _acc_cell(models: Sequence[ModelRecord], p: float) -> str:
    if not models[0].has(p):
        return "–"
    return _mean_sd([m.at(p) for m in models])


def _model_table(
    records: Sequence[ModelRecord], histories: dict[str, list[list[float]]]
) -> list[str]:
    rates = [p for p in TABLE_RATES if records and records[0].has(p)]
    head = (
        "| model group | seeds | epochs | train s | final train loss | last-10% change "
        "| clean acc | " + " | ".join(f"acc@{p:g}" for p in rates) + " | BET area | metric `bet` |"
    )
    lines = [head, "|" + "---|" * (9 + len(rates))]
    for name, models in _groups(records).items():
        change = []
        for h in histories.get(name, []):
            k = max(1, len(h) // 10)
            if len(h) >= 2 * k:
                before, last = float(np.mean(h[-2 * k : -k])), float(np.mean(h[-k:]))
                change.append((last - before) / max(abs(before), 1e-12))
        change_text = f"{100 * np.mean(change):+.1f}%" if change else "–"
        lines.append(
            f"| {name} | {len(models)} | {models[0].epochs} | "
            f"{np.mean([m.train_seconds for m in models]):.1f} | "
            f"{_mean_sd([m.final_train_loss for m in models], 1.0, 3)} | {change_text} | "
            f"{_acc_cell(models, 0.0)} | "
            + " | ".join(_acc_cell(models, p) for p in rates)
            + f" | {_mean_sd([m.bet_area for m in models])} | "
            f"{_mean_sd([m.metric for m in models], 1.0, 3)} |"
        )
    return lines


def _runtime_section(dataset: DatasetConfig, settings: dict[str, Any]) -> list[str]:
    from lightning_bet.reproduce.models import DATASETS, build_model_set

    lines = [
        "## Runtime",
        "",
        f"This invocation: {settings['wall_seconds']:.0f} s wall "
        f"({settings['wall_seconds'] / 60:.1f} min); model training summed over the models: "
        f"{settings['train_seconds']:.0f} s.",
        "",
    ]
    if settings.get("invocations"):
        lines += ["| invocation finished | wall | models |", "|---|---|---|"]
        for entry in settings["invocations"]:
            models = ", ".join(f"{v} {k}" for k, v in sorted(entry["models"].items()))
            lines.append(f"| {entry['finished']} | {entry['wall_seconds']:.0f} s | {models} |")
        lines.append("")
    lines += [
        "Expected training time of the default model set (3 seeds, 33 models) per dataset: "
        "epochs x (s per plain epoch + p_train x extra s per flip epoch per unit p); sweeps and "
        "the metric add minutes:",
        "",
        "| dataset | plain / flip epochs | s per plain epoch | extra flip s per unit p | "
        "expected training |",
        "|---|---|---|---|---|",
    ]
    for config in DATASETS.values():
        specs = build_model_set(epochs=config.epochs, flip_epochs=config.flip_epochs)
        hours = expected_runtime(specs, config) / 3600
        lines.append(
            f"| {config.name} | {config.epochs} / {config.flip_epochs} | "
            f"{config.seconds_per_epoch:g} | {config.flip_seconds_per_p:g} | {hours:.1f} h |"
        )
    lines += ["", RUNTIME_NOTE, ""]
    return lines


def write_report(
    out: Path,
    dataset: DatasetConfig,
    records: Sequence[ModelRecord],
    claims: Sequence[ClaimResult],
    histories: dict[str, list[list[float]]],
    settings: dict[str, Any],
) -> Path:
    """Write ``out/report.md`` and its PNGs; return the report's path.

    Args:
        out: output folder.
        dataset: the dataset configuration.
        records: one record per model.
        claims: C1-C5 as measured by :func:`~lightning_bet.reproduce.claims.analyze`.
        histories: ``{model group: [per-epoch training objective of each seed]}``.
        settings: how the run was made: ``command``, ``n_test``, ``n_val``, ``realizations``,
            ``sweep_seed``, ``error_rates``, ``wall_seconds`` (of this invocation),
            ``train_seconds`` (sum over models, also those trained by earlier invocations),
            ``invocations`` (optional: the log of every invocation on this folder).

    """
    out.mkdir(parents=True, exist_ok=True)
    _plot_curves(records, out / "accuracy_vs_error_rate.png")
    _plot_metric(records, out / "metric_vs_bet_area.png")
    has_lambda = _plot_lambda(records, out / "lambda_tradeoff.png")
    _plot_losses(histories, out / "training_loss.png")

    n_test = settings["n_test"]
    clean = float(np.mean([r.at(0.0) for r in records if r.method == "plain"] or [0.9]))
    resolution = binomial_se(clean, n_test)
    seeds = sorted({r.seed for r in records})
    lines = [
        f"# lightning-bet reproduce: {dataset.name}",
        "",
        "Measured, not assumed: the claims C1-C5 of METHOD §8 on a freshly trained model set.",
        "",
        f"Command: `{settings['command']}`",
        "",
        "## Summary",
        "",
        "| claim | verdict | key measurement |",
        "|---|---|---|",
    ]
    for c in claims:
        lines.append(f"| {c.key} | **{c.verdict}** | {c.summary or '; '.join(c.notes) or '–'} |")
    lines += [
        "",
        "## Setup",
        "",
        f"- Data: `{dataset.name}`, test split {n_test} samples (sweeps, BET area), validation "
        f"split {settings['n_val']} samples (metric). Test-set resolution (binomial standard "
        f"error at the plain models' clean accuracy {100 * clean:.1f}%): "
        f"**{100 * resolution:.2f} accuracy points**; effects below it are judged "
        "inconclusive.",
        f"- Recipe: `{dataset.recipe.name}` (+ {' '.join(dataset.overrides) or 'no overrides'}); "
        f"training seeds {seeds} (`seed_everything` and the flip-map seed).",
        f"- Models: {len(records)}. Plain, margin and MHL models train {dataset.epochs} epochs; "
        f"flip-trained models {max((r.epochs for r in records if r.p_train), default='–')} "
        "epochs (flip training converges more slowly); the StepLR period scales with the "
        "epochs. Convergence: the final training objective and its relative change over the "
        "last tenth of training are in the table.",
        f"- Fault injection: symmetric weight flips in every binary layer (first and last "
        f"included), `fixed` semantics, {settings['realizations']} fault maps per error rate, "
        f"sweep seed {settings['sweep_seed']} for every model (the maps depend only on the seed, "
        "the error rate, the map index and the layer, so all models see the same maps), grid "
        f"{[float(f'{p:g}') for p in settings['error_rates']]}. BET area: normalized trapezoid "
        "area over the METHOD §6 grid (0 ... 0.1).",
        "- Metric: `BitErrorTolerance` scalar `bet` (`val/bet`) = predicted BET area (METHOD §4b): "
        "the accuracy predicted by propagating flip probabilities through the network at every "
        "point of the METHOD §6 grid, integrated like the BET area (no fault injection). The "
        "METHOD §4 neuron survival rate is in each model's `metric.survival`.",
        "- Time: see [Runtime](#runtime).",
        "",
        "## Models",
        "",
        "Mean ± sd over seeds; accuracies in %, mean over fault maps.",
        "",
        *_model_table(records, histories),
        "",
        "![accuracy over error rate](accuracy_vs_error_rate.png)",
        "",
        "![training objective](training_loss.png)",
        "",
        "## How the claims are judged",
        "",
        "- Every model is swept on the same fault maps; differences are paired by training "
        "seed (a flip-trained model and the plain model of the same seed, or the same model at "
        "two error rates), averaged over the fault maps, with a Student-t 95% interval over "
        "seeds (`lightning_bet.reproduce.stats.compare_paired`).",
        "- An effect whose mean is below the test set's resolution is **inconclusive**, never "
        "supported, whatever its interval; with a handful of seeds the intervals are wide.",
        "- A claim of *small* loss (C1) is judged against a bound (1 point or the resolution, "
        "whichever is larger): supported only when the whole interval lies below it.",
        "- Where one claim is tested at several training rates (the dips of C2, C3), intervals "
        "are Bonferroni-corrected and one supported rate suffices.",
        "",
    ]
    for c in claims:
        lines += [f"## {c.key}: {c.verdict}", "", f"*Claim.* {c.claim}", "", f"*How.* {c.how}", ""]
        if c.rows:
            lines += [
                "| quantity | paired difference [95% CI] or value | verdict |",
                "|---|---|---|",
            ]
            lines += [f"| {r['quantity']} | {r['value']} | {r['verdict']} |" for r in c.rows]
            lines.append("")
        if c.key == "C4":
            lines += ["![metric vs BET area](metric_vs_bet_area.png)", ""]
        if c.key == "C5" and has_lambda:
            lines += ["![lambda trade-off](lambda_tradeoff.png)", ""]
        lines += [f"- {note}" for note in c.notes]
        lines += [f"**Verdict: {c.verdict}.**", ""]
    lines += _runtime_section(dataset, settings)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
