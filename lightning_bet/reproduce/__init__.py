"""``lightning-bet reproduce``: measure the papers' claims end to end (METHOD §8).

Trains the model set (:mod:`.models`), sweeps every model on the same fault maps and computes the
margin metric (:mod:`.run`, resumable), judges the claims C1-C5 from paired differences
(:mod:`.claims`, :mod:`.stats`) and writes ``DIR/report.md`` with plots (:mod:`.report`)::

    lightning-bet reproduce --dataset digits --out runs/reproduce_digits
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_bet._arguments import float_list, make_parser, parse

__all__ = ["cli_main", "reproduce"]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected `{name}` to be an int >= 1, but got {value!r}")
    return value


def reproduce(
    dataset: str,
    out: str | Path,
    seeds: int = 3,
    methods: Sequence[str] | None = None,
    train_rates: Sequence[float] = (0.05, 0.15, 0.3),
    lambdas: Sequence[float] = (0.3, 1.0, 3.0),
    epochs: int | None = None,
    flip_epochs: int | None = None,
    error_rates: Sequence[float] | None = None,
    realizations: int = 10,
    sweep_seed: int = 0,
    data_dir: str | None = "data",
    threads: int | None = 1,
    progress: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Train, measure and report; resumes a run already in ``out``.

    Args:
        dataset: ``"digits"``, ``"mnist"`` or ``"fashion_mnist"``.
        out: output folder (``report.md``, PNGs, ``claims.json``, ``models/``).
        seeds: training seeds per model setting, >= 1 (paired differences need >= 2).
        methods: subset of :data:`~.models.METHODS` (default: all).
        train_rates: training error rates of both flip-training variants.
        lambdas: ``λ`` values of the margin regularizer (``λ = 0`` is the plain model).
        epochs: epochs of plain, margin and MHL models (default: the dataset's).
        flip_epochs: epochs of flip-trained models (default: the dataset's, twice ``epochs``).
        error_rates: sweep grid (default: :data:`~.run.DEFAULT_ERROR_RATES`); the METHOD §6 grid
            of the BET area is always added.
        realizations: fault maps per error rate, >= 1.
        sweep_seed: the fault-map seed shared by all models.
        data_dir: folder of the MNIST/FashionMNIST files.
        threads: torch intra-op threads during the run (``None``: torch's default).
        progress: tqdm bar over the models.
        command: the command line, for the report.

    Returns:
        ``{"report": path, "claims": [...], "wall_seconds": ..., "statuses": {name: status}}``.

    """
    from lightning_bet.reproduce.claims import analyze, to_records
    from lightning_bet.reproduce.models import DATASETS, METHODS, build_model_set
    from lightning_bet.reproduce.report import write_report
    from lightning_bet.reproduce.run import BET_AREA_GRID, DEFAULT_ERROR_RATES, run_model_set

    start = time.perf_counter()
    command = command or f"lightning-bet reproduce --dataset {dataset} --out {out}"
    if dataset not in DATASETS:
        raise ValueError(f"Expected `dataset` to be one of {list(DATASETS)}, but got {dataset!r}")
    config = DATASETS[dataset]
    _positive_int("realizations", realizations)
    if isinstance(sweep_seed, bool) or not isinstance(sweep_seed, int):
        raise ValueError(f"Expected `sweep_seed` to be an int, but got {sweep_seed!r}")
    if threads is not None:
        _positive_int("threads", threads)
    rates = DEFAULT_ERROR_RATES if error_rates is None else tuple(error_rates)
    for p in rates:
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise ValueError(
                f"Expected `error_rates` to hold floats in [0, 1], but got {list(rates)!r}"
            )
    rates = tuple(sorted({float(p) for p in rates} | set(BET_AREA_GRID)))
    specs = build_model_set(
        seeds=seeds,
        methods=METHODS if methods is None else methods,
        train_rates=train_rates,
        lambdas=lambdas,
        epochs=config.epochs if epochs is None else epochs,
        flip_epochs=config.flip_epochs if flip_epochs is None else flip_epochs,
    )
    out = Path(out)
    runs = run_model_set(
        specs,
        config,
        out,
        error_rates=rates,
        realizations=realizations,
        sweep_seed=sweep_seed,
        data_dir=data_dir,
        threads=threads,
        progress=progress,
    )
    records = to_records(runs)
    n_test = runs[0]["result"]["n_test"]
    claims = analyze(records, n_test)
    histories: dict[str, list[list[float]]] = {}
    for run in runs:
        histories.setdefault(run["spec"].group, []).append(run["train"]["loss_history"])
    wall = time.perf_counter() - start
    log_path = out / "invocations.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else []
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["status"]] = counts.get(run["status"], 0) + 1
    log.append(
        {
            "command": command,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "wall_seconds": round(wall, 1),
            "models": counts,
        }
    )
    log_path.write_text(json.dumps(log, indent=1) + "\n")
    settings = {
        "command": command,
        "n_test": n_test,
        "n_val": runs[0]["result"]["n_val"],
        "realizations": realizations,
        "sweep_seed": sweep_seed,
        "error_rates": rates,
        "wall_seconds": wall,
        "train_seconds": sum(r.train_seconds for r in records),
        "invocations": log,
    }
    path = write_report(out, config, records, claims, histories, settings)
    summary = {
        "dataset": dataset,
        "models": len(records),
        "wall_seconds": round(wall, 1),
        "train_seconds": round(settings["train_seconds"], 1),
        "claims": [
            {"key": c.key, "verdict": c.verdict, "rows": c.rows, "notes": c.notes} for c in claims
        ],
    }
    (out / "claims.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return {
        "report": path,
        "claims": claims,
        "wall_seconds": wall,
        "statuses": {run["spec"].name: run["status"] for run in runs},
    }


def cli_main(argv: list[str] | None = None) -> dict[str, Any]:
    """``lightning-bet reproduce --dataset digits|mnist|fashion_mnist --out DIR [options]``."""
    parser = make_parser(
        "reproduce",
        "Train the model set, sweep it on shared fault maps, compute the margin metric and "
        "judge the claims C1-C5 (METHOD §8) in DIR/report.md. Resumable.",
    )
    parser.add_argument("--dataset", required=True, help="digits, mnist or fashion_mnist")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds")
    parser.add_argument(
        "--methods",
        default=None,
        help="comma list of plain,hirtzlin,straight_through,margin,mhl (default: all)",
    )
    parser.add_argument(
        "--train-rates", type=float_list, default="0.05,0.15,0.3", help="flip-training rates"
    )
    parser.add_argument(
        "--lambdas", type=float_list, default="0.3,1,3", help="margin regularizer weights"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="plain/margin/MHL epochs (default: the dataset's)"
    )
    parser.add_argument(
        "--flip-epochs",
        type=int,
        default=None,
        help="flip-training epochs (default: the dataset's)",
    )
    parser.add_argument(
        "--error-rates",
        type=float_list,
        default=None,
        help="sweep grid, comma list (default: the dataset's)",
    )
    parser.add_argument("--realizations", type=int, default=10, help="fault maps per rate")
    parser.add_argument("--sweep-seed", type=int, default=0, help="fault-map seed (all models)")
    parser.add_argument("--data-dir", default="data", help="MNIST/FashionMNIST files")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default; 1 is fastest for the small digits models on "
        "a shared CPU)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    argv = list(argv) if argv is not None else None
    args = parse(parser, argv)
    result = reproduce(
        dataset=args.dataset,
        out=args.out,
        seeds=args.seeds,
        methods=None if args.methods is None else [m.strip() for m in args.methods.split(",")],
        train_rates=args.train_rates,
        lambdas=args.lambdas,
        epochs=args.epochs,
        flip_epochs=args.flip_epochs,
        error_rates=args.error_rates,
        realizations=args.realizations,
        sweep_seed=args.sweep_seed,
        data_dir=args.data_dir,
        threads=None if args.threads == 0 else args.threads,
        progress=not args.no_progress,
        command="lightning-bet reproduce " + " ".join(argv or []),
    )
    print(f"wrote {result['report']} in {result['wall_seconds']:.0f} s")
    for claim in result["claims"]:
        print(f"  {claim.key}: {claim.verdict}")
    return result
