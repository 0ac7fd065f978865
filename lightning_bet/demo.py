"""``make demo``: train, measure and export on the embedded digits data.

Writes ``runs/demo/summary.json`` and prints a short summary. Every step uses the public
recipes and commands a user would use; the recipes are the ones shipped with the package, so
the demo runs from any folder: ``python -m lightning_bet.demo`` or ``lightning-bet demo``
(``--out DIR``, ``--max-epochs N`` for a quick run).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lightning_bet._arguments import make_parser, parse
from lightning_bet._validation import check_positive_int
from lightning_bet.recipe import make_cli
from lightning_bet.resources import recipe_path

__all__ = ["cli_main", "main", "train_recipe"]


def train_recipe(recipe: str | Path, out_dir: Path, *overrides: str) -> dict[str, Any]:
    """Fit and test a recipe; save ``<out_dir>/model.ckpt``; return test metrics and paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "--config",
        str(recipe),
        "--trainer.default_root_dir",
        str(out_dir),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *overrides,
    ]
    cli = make_cli(args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    ckpt = out_dir / "model.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    (metrics,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return {
        "test_accuracy": float(metrics["test/acc"]),
        "fit_seconds": round(seconds, 2),
        "ckpt": str(ckpt),
        "config": str(recipe),
        "cli": cli,
    }


def main(out: str = "runs/demo", max_epochs: int | None = None) -> dict[str, Any]:
    """Run the demo and write ``<out>/summary.json``.

    Steps: train the plain digits FCNN; train it again with straight-through flip training at
    ``p = 0.05``; measure ``val/bet`` and a small fault-injection sweep of both; export the
    flip-trained model (bitstream, C, TFLite), check every backend against deploy mode and
    emulate RRAM faults on the bitstream; train the digits CNN and export it the same way.

    Args:
        out: output folder.
        max_epochs: training epochs of every model (default: each recipe's own).

    Raises:
        ValueError: if ``max_epochs`` is not a positive int.
    """
    from lightning_bet.deploy.cli import export_demo
    from lightning_bet.sweeps import demo_measure

    overrides = () if max_epochs is None else ("--trainer.max_epochs", str(max_epochs))
    if max_epochs is not None:
        check_positive_int("max_epochs", max_epochs)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The demo networks are small: one thread avoids oversubscribing a busy 2-core machine.
    torch.set_num_threads(1)
    steps = tqdm(total=7, desc="demo", unit="step")
    start = time.perf_counter()

    steps.set_postfix_str("train plain")
    plain = train_recipe(recipe_path("digits_fcnn"), out_dir / "plain", *overrides)
    steps.update()
    steps.set_postfix_str("train flip (straight-through, p=0.05)")
    flip = train_recipe(recipe_path("digits_fcnn_flip_st"), out_dir / "flip", *overrides)
    steps.update()
    steps.set_postfix_str("measure plain")
    measured_plain = demo_measure(plain["cli"].model, plain["cli"].datamodule, out_dir / "plain")
    steps.update()
    steps.set_postfix_str("measure flip")
    measured_flip = demo_measure(flip["cli"].model, flip["cli"].datamodule, out_dir / "flip")
    steps.update()
    steps.set_postfix_str("export flip-trained model")
    exported = export_demo(flip["ckpt"], flip["config"], out_dir / "export")
    steps.update()
    steps.set_postfix_str("train digits CNN")
    cnn = train_recipe(recipe_path("digits_cnn"), out_dir / "cnn", *overrides)
    steps.update()
    steps.set_postfix_str("export digits CNN")
    exported_cnn = export_demo(cnn["ckpt"], cnn["config"], out_dir / "export_cnn")
    steps.update()
    steps.close()

    summary: dict[str, Any] = {
        "test_accuracy": plain["test_accuracy"],
        "flip_test_accuracy": flip["test_accuracy"],
        "bet": measured_plain["bet"],
        "flip_bet": measured_flip["bet"],
        "sweep": measured_plain["sweep"],
        "flip_sweep": measured_flip["sweep"],
        "export": exported,
        "cnn_test_accuracy": cnn["test_accuracy"],
        "export_cnn": {
            key: exported_cnn[key]
            for key in ("bitstream_bytes", "agree_numpy", "agree_c", "agree_tflite")
        },
        "fit_seconds": {
            "plain": plain["fit_seconds"],
            "flip": flip["fit_seconds"],
            "cnn": cnn["fit_seconds"],
        },
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    _print_summary(summary, out_dir)
    print(f"summary written to {path}")
    return summary


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    print("lightning-bet demo: digits, FCNN 64-256-256-10")
    print(
        f"  test accuracy             plain {summary['test_accuracy']:.4f}"
        f"   flip-trained (p=0.05) {summary['flip_test_accuracy']:.4f}"
    )
    print(
        f"  val/bet                   plain {summary['bet']:.4f}"
        f"   flip-trained {summary['flip_bet']:.4f}"
    )
    for name in ("sweep", "flip_sweep"):
        sweep = summary[name]
        rates = sweep.get("error_rates", [])
        means = sweep.get("mean", [])
        curve = "  ".join(f"{p:g}:{m:.3f}" for p, m in zip(rates, means, strict=True))
        print(f"  {name:<25} {curve}   BET area {sweep.get('bet_area', float('nan')):.4f}")
    exported = summary["export"]
    emulated = exported["emulated"]
    print(
        f"  export                    {exported['bitstream_bytes']} bytes; agreement with deploy "
        f"mode: numpy {exported['agree_numpy']}, C {exported['agree_c']}, "
        f"TFLite {exported['agree_tflite']}"
    )
    print(
        f"  emulated RRAM faults      p={emulated['p']}: accuracy {emulated['mean']:.4f} "
        f"± {emulated['std']:.4f}"
    )
    cnn = summary["export_cnn"]
    print(
        f"  digits CNN C32-MP-C64-MP-FC10: test accuracy {summary['cnn_test_accuracy']:.4f}; "
        f"export {cnn['bitstream_bytes']} bytes; agreement numpy {cnn['agree_numpy']}, "
        f"C {cnn['agree_c']}, TFLite {cnn['agree_tflite']}"
    )
    print(f"  plots: {out_dir}/plain/sweep.png, {out_dir}/flip/sweep.png")


def cli_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``lightning-bet demo [--out DIR] [--max-epochs N]`` (or ``python -m lightning_bet.demo``)."""
    parser = make_parser(
        "demo",
        "Train, measure and export two digits FCNNs and the digits CNN with the shipped recipes.",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument(
        "--max-epochs", type=int, default=None, help="training epochs (default: each recipe's)"
    )
    args = parse(parser, argv)
    return main(args.out, args.max_epochs)


if __name__ == "__main__":
    import sys

    from lightning_bet.cli import main as command_line

    # the command line's error path and quiet output, as `lightning-bet demo`
    sys.exit(command_line(["demo", *sys.argv[1:]]))
