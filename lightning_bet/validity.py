"""Does the logged metric predict bit error tolerance (METHOD §4, §4b, claim C4)?

``lightning-bet validity --dataset digits`` trains a set of differently trained models
(training methods x training error rates x margin-regularizer strengths x seeds, in four
families: 2- and 3-hidden-layer FCNNs, a ``vgg3``-style CNN, and 2-hidden-layer FCNNs under an
asymmetric fault model), measures each with :class:`~lightning_bet.metrics.BitErrorTolerance`
on the validation split and with a fault-injection sweep on the test split (every model on the
*same* fault maps), and reports the Spearman rank correlation between every metric variant (the
scalar ``bet``, the predicted BET area, first) and the BET area: across all models, and within
training methods (each method's mean removed from both the metric and the area before
ranking). Variants that take only a few distinct values over the model set are flagged (their
rank correlation rests on ties). For the predicted accuracy curve it also reports, per family,
the mean absolute error against the sweep on the same (test) samples at p = 0.01, 0.05, 0.1
(:func:`~lightning_bet.sweeps.predicted_sweep`), and the variant ``bet_logged_default``: the
predicted area from only the rows ``BetLogging`` predicts by default (1 row of every second
validation batch).

Outputs in ``--out`` (default ``runs/validity``): ``validity.md`` (the tables),
``validity.png`` (scatter of ``bet`` against the BET area, one colour per method) and
``validity.json`` (every model's values and every correlation).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_bet._arguments import make_parser, parse
from lightning_bet._plotting import pyplot
from lightning_bet._threads import single_torch_thread
from lightning_bet._validation import check_positive_int

__all__ = ["ModelSpec", "cli_main", "default_model_set", "run_validity", "spearman"]


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study.

    Attributes:
        method: ``"plain"``, ``"straight_through"`` or ``"hirtzlin"``.
        p_train: training error rate (0 for plain).
        lam: margin regularizer weight (0: none).
        seed: training seed.
        arch: ``"fcnn"`` or ``"vgg3"`` (:func:`~lightning_bet.models.build_model` on 8x8).
        hidden: hidden widths (``vgg3``: the dense layer's width).
        fault: fault family of the sweep and the metric (:func:`~lightning_bet.sweeps.fault_family`
            names, e.g. ``"asymmetric:0.25"``); training flips stay symmetric.
    """

    method: str
    p_train: float
    lam: float
    seed: int
    arch: str = "fcnn"
    hidden: tuple[int, ...] = (256, 256)
    fault: str = "symmetric"

    @property
    def family(self) -> str:
        """Architecture and fault family, e.g. ``"fcnn2"``, ``"fcnn3"``, ``"vgg3"``."""
        base = f"fcnn{len(self.hidden)}" if self.arch == "fcnn" else self.arch
        return base if self.fault == "symmetric" else f"{base}-{self.fault}"

    @property
    def name(self) -> str:
        """Short readable name (the original 2-hidden-layer symmetric models keep theirs)."""
        name = f"{self.method}-p{self.p_train:g}-lam{self.lam:g}-s{self.seed}"
        return name if self.family == "fcnn2" else f"{self.family}-{name}"

    def training_key(self) -> tuple:
        """What the trained weights depend on (models evaluated under two faults share them)."""
        return (self.method, self.p_train, self.lam, self.seed, self.arch, self.hidden)


def default_model_set() -> list[ModelSpec]:
    """The default study: 30 models in four families.

    - ``fcnn2`` (18, 64-256-256-10): plain training (3 regularizer strengths x 2 seeds) and
      both flip-training variants at training error rates 0.02, 0.1, 0.3, with and without the
      regularizer.
    - ``fcnn3`` (6, 64-256-256-256-10): plain (2 seeds) and both variants at 0.1 and 0.3.
    - ``vgg3`` (3, C64-MP-C64-MP-FC64-10 on 8x8): plain and both variants at 0.1.
    - ``fcnn2-asymmetric:0.25`` (3): three ``fcnn2`` models (the same weights) measured under
      asymmetric faults ``p01 = p``, ``p10 = p / 4``.
    """
    specs = [ModelSpec("plain", 0.0, lam, seed) for lam in (0.0, 0.5, 2.0) for seed in (0, 1)]
    for method in ("straight_through", "hirtzlin"):
        for p in (0.02, 0.1, 0.3):
            for lam in (0.0, 2.0):
                specs.append(ModelSpec(method, p, lam, 0))
    deep = (256, 256, 256)
    specs += [ModelSpec("plain", 0.0, 0.0, seed, hidden=deep) for seed in (0, 1)]
    for method in ("straight_through", "hirtzlin"):
        specs += [ModelSpec(method, p, 0.0, 0, hidden=deep) for p in (0.1, 0.3)]
    trio = [("plain", 0.0), ("straight_through", 0.1), ("hirtzlin", 0.1)]
    specs += [ModelSpec(m, p, 0.0, 0, arch="vgg3", hidden=(64,)) for m, p in trio]
    specs += [ModelSpec(m, p, 0.0, 0, fault="asymmetric:0.25") for m, p in trio]
    return specs


#: Error rates of the predicted-accuracy MAE against the sweep.
MAE_RATES = (0.01, 0.05, 0.1)
#: Rows per validation batch that ``BetLogging`` predicts by default (``predict_rows``).
LOGGED_ROWS = 1
#: ``BetLogging`` predicts rows of every this many-th batch by default (``predict_every``).
LOGGED_EVERY = 2


def _correlate(vals: np.ndarray, area: np.ndarray, methods: np.ndarray) -> dict[str, float]:
    """Spearman with the area across all models and within methods (method means removed)."""
    resid_v, resid_a = vals.astype(np.float64), area.astype(np.float64)
    for method in set(methods):
        mask = methods == method
        resid_v[mask] -= vals[mask].mean()
        resid_a[mask] -= area[mask].mean()
    return {
        "spearman_all": spearman(vals, area),
        "spearman_within_method": spearman(resid_v, resid_a),
    }


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _train(spec: ModelSpec, epochs: int) -> Any:
    import lightning as L

    from lightning_bet.callbacks.bitflip import BitFlipTraining
    from lightning_bet.callbacks.margin_regularization import MarginRegularization
    from lightning_bet.data.digits import DigitsDataModule
    from lightning_bet.module import BNNClassifier

    L.seed_everything(spec.seed, verbose=False)
    data = DigitsDataModule(batch_size=64, seed=0)
    module = BNNClassifier(
        arch=spec.arch, hidden=spec.hidden, lr=1e-3, lr_step_size=max(epochs // 3, 1)
    )
    callbacks: list = []
    if spec.method != "plain":
        callbacks.append(BitFlipTraining(p=spec.p_train, variant=spec.method, seed=spec.seed))
    if spec.lam > 0:
        callbacks.append(MarginRegularization(lam=spec.lam, delta=1.0))
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="auto",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    return module.eval(), data


def _metric_variants(values: dict[str, float]) -> dict[str, float]:
    """The metric's own outputs plus layer-aggregated variants."""
    out = dict(values)
    layers = sorted({k.split("/")[0] for k in values if k.startswith("layer")})
    stats = sorted({k.split("/", 1)[1] for k in values if k.startswith("layer")})
    for stat in stats:
        vals = [values[f"{layer}/{stat}"] for layer in layers if f"{layer}/{stat}" in values]
        if len(vals) == len(layers):
            out[f"mean_layers/{stat}"] = float(np.mean(vals))
            if "margin" in stat or "tolerated" in stat:
                out[f"min_layers/{stat}"] = float(np.min(vals))
    return out


def run_validity(
    dataset: str = "digits",
    out_dir: str = "runs/validity",
    epochs: int = 40,
    realizations: int = 16,
    seed: int = 0,
    specs: Sequence[ModelSpec] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, measure and correlate; write the table, the scatter plot and the JSON.

    Args:
        dataset: only ``"digits"`` (embedded, trains in seconds) is supported.
        out_dir: output folder.
        epochs: training epochs per model.
        realizations: fault maps per error rate in the sweeps.
        seed: sweep seed (the same fault maps for every model).
        specs: the model set (default: :func:`default_model_set`).
        progress: show a progress bar over the models.

    Returns:
        ``{"models": [...], "correlations": {variant: {...}}, "seconds": ...}``. Runs with one
        intra-op thread (restored after): the models are tiny.

    """
    if dataset != "digits":
        raise ValueError(
            f"Expected `dataset` to be 'digits' (the embedded dataset), but got {dataset!r}"
        )
    check_positive_int("epochs", epochs)
    check_positive_int("realizations", realizations, "an int >= 1")
    specs = list(specs) if specs is not None else default_model_set()
    if len(specs) < 3:
        raise ValueError(f"Expected at least 3 models to rank, but got {len(specs)}")
    with single_torch_thread():  # tiny models: thread wake-ups cost more than the arithmetic
        return _run(specs, dataset, out_dir, epochs, realizations, seed, progress)


def _run(
    specs: list[ModelSpec],
    dataset: str,
    out_dir: str,
    epochs: int,
    realizations: int,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from lightning_bet.metrics import BitErrorTolerance
    from lightning_bet.sweeps import DEFAULT_ERROR_RATES, fault_family, predicted_sweep, sweep

    start = time.perf_counter()
    models = []
    trained: dict[tuple, Any] = {}
    for spec in tqdm(specs, desc="validity", disable=not progress):
        key = spec.training_key()
        if key not in trained:
            trained[key] = _train(spec, epochs)  # small models: keep them all
        module, data = trained[key]
        data.setup("test")
        family = fault_family(spec.fault)
        metric = BitErrorTolerance(module, fault_model=family)
        logged = BitErrorTolerance(module, fault_model=family, predict_rows=LOGGED_ROWS)
        for b, (xb, yb) in enumerate(data.val_dataloader()):
            metric.update(xb, yb)
            logged.update(xb, yb, predict=b % LOGGED_EVERY == 0)
        values = _metric_variants({k: float(v) for k, v in metric.compute().items()})
        values["bet_logged_default"] = float(logged.compute()["bet_pred"])
        test = data.test_dataloader()
        result = sweep(module, test, DEFAULT_ERROR_RATES, realizations, seed, fault_model=family)
        predicted = predicted_sweep(module, test, DEFAULT_ERROR_RATES, fault_model=family)
        models.append(
            {
                "name": spec.name,
                "family": spec.family,
                "method": spec.method,
                "p_train": spec.p_train,
                "lam": spec.lam,
                "seed": spec.seed,
                "clean_accuracy": float(result.mean[0]),
                "bet_area": result.area,
                "predicted_bet_area": predicted.area,
                "sweep_mean": result.mean.tolist(),
                "predicted_mean": predicted.mean.tolist(),
                "metric": values,
            }
        )
    area = np.array([m["bet_area"] for m in models])
    methods = np.array([m["method"] for m in models])
    correlations: dict[str, dict[str, Any]] = {}
    shared = [v for v in models[0]["metric"] if all(v in m["metric"] for m in models)]
    for variant in shared:
        vals = np.array([m["metric"][variant] for m in models])
        distinct = len(np.unique(np.round(vals, 12)))
        correlations[variant] = {
            **_correlate(vals, area, methods),
            "distinct_values": distinct,
            "few_levels": distinct <= max(3, len(models) // 2),
        }
    families: dict[str, dict[str, Any]] = {}
    rates = list(DEFAULT_ERROR_RATES)
    for family in dict.fromkeys(m["family"] for m in models):
        sel = [m for m in models if m["family"] == family]
        errors = [
            abs(m["predicted_mean"][rates.index(p)] - m["sweep_mean"][rates.index(p)])
            for m in sel
            for p in MAE_RATES
        ]
        vals = np.array([m["metric"]["bet"] for m in sel])
        families[family] = {
            "models": len(sel),
            "mae": float(np.mean(errors)),
            "max_error": float(np.max(errors)),
            **_correlate(
                vals,
                np.array([m["bet_area"] for m in sel]),
                methods[[models.index(m) for m in sel]],
            ),
        }
    seconds = time.perf_counter() - start
    report = {
        "dataset": dataset,
        "epochs": epochs,
        "realizations": realizations,
        "error_rates": list(DEFAULT_ERROR_RATES),
        "models": models,
        "correlations": correlations,
        "families": families,
        "mae_error_rates": list(MAE_RATES),
        "seconds": seconds,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validity.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "validity.md").write_text(markdown_table(report))
    _scatter(models, out / "validity.png")
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """The Spearman table (``bet`` first, then by absolute correlation across all models)."""
    corr = report["correlations"]

    def key(name: str) -> tuple[int, float]:
        rho = corr[name]["spearman_all"]
        return (name != "bet", -abs(rho) if np.isfinite(rho) else 0.0)

    n = len(report["models"])
    methods = sorted({m["method"] for m in report["models"]})
    families = sorted({m.get("family", "fcnn2") for m in report["models"]})
    lines = [
        f"Spearman correlation with the BET area over {n} models ({', '.join(methods)}; "
        f"digits, families {', '.join(families)}, {report['epochs']} epochs, sweeps with R = "
        f'{report["realizations"]} shared fault maps per error rate). "within": each training '
        "method's mean removed from both sides. `bet` is the predicted BET area (`val/bet`), "
        "`survival` the METHOD §4 neuron survival rate (the scalar before the predictor). Flip "
        "rates are lower-is-better, so a good flip-rate variant correlates negatively.",
        "",
        "| variant | Spearman (all) | Spearman (within method) | distinct values |",
        "|---|---:|---:|---:|",
    ]
    for name in sorted(corr, key=key):
        c = corr[name]
        flag = " (few levels)" if c["few_levels"] else ""
        lines.append(
            f"| `{name}` | {_fmt(c['spearman_all'])} | {_fmt(c['spearman_within_method'])} | "
            f"{c['distinct_values']}{flag} |"
        )
    if report.get("families"):
        rates = ", ".join(f"{p:g}" for p in report["mae_error_rates"])
        lines += [
            "",
            f"Per family: `bet` Spearman with the BET area, and the mean (max) absolute error of "
            f"the predicted accuracy against the sweep on the same test samples at p = {rates} "
            "(`predicted_sweep`).",
            "",
            "| family | models | Spearman (all) | Spearman (within method) | MAE | max error |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for family, f in report["families"].items():
            lines.append(
                f"| {family} | {f['models']} | {_fmt(f['spearman_all'])} | "
                f"{_fmt(f['spearman_within_method'])} | {f['mae']:.4f} | {f['max_error']:.4f} |"
            )
    lines += [
        "",
        "| model | clean acc | BET area | predicted area (test) | bet (val) |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in report["models"]:
        lines.append(
            f"| {m['name']} | {m['clean_accuracy']:.4f} | {m['bet_area']:.4f} | "
            f"{m.get('predicted_bet_area', float('nan')):.4f} | {m['metric']['bet']:.4f} |"
        )
    lines += ["", f"Total time: {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def _fmt(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:+.3f}"


def _scatter(models: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in sorted({m["method"] for m in models}):
        sel = [m for m in models if m["method"] == method]
        ax.scatter([m["metric"]["bet"] for m in sel], [m["bet_area"] for m in sel], label=method)
    ax.set_xlabel("bet (predicted BET area, validation split)")
    ax.set_ylabel("BET area (fault injection)")
    ax.set_title("Margin metric vs measured bit error tolerance")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def cli_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``lightning-bet validity --dataset digits [--out DIR] [--epochs E] [-R R]``."""
    parser = make_parser(
        "validity",
        "Spearman correlation between the margin metric and the fault-injection BET area over "
        "a set of differently trained models.",
    )
    parser.add_argument("--dataset", default="digits", choices=("digits",), help="data set")
    parser.add_argument("--out", default="runs/validity", help="output folder")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs per model")
    parser.add_argument(
        "--realizations", "-R", type=int, default=16, help="fault maps per error rate"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of training and fault maps")
    args = parse(parser, argv)
    report = run_validity(args.dataset, args.out, args.epochs, args.realizations, args.seed)
    print(markdown_table(report))
    print(f"wrote {args.out}/validity.md, validity.png, validity.json")
    return report
