"""``lightning-bet bench [NAME ...] [--out DIR]``: run benchmarks and print one table of ratios."""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from typing import Any

from lightning_bet._arguments import make_parser, parse
from lightning_bet.bench import BENCHMARKS, OPTIONAL_BENCHMARKS, update_results

__all__ = ["HEADLINES", "headline_rows", "main", "run_benchmarks"]

#: The headline figures of each benchmark: (key inside its result, how to read it, target).
HEADLINES: dict[str, list[tuple[str, str, str]]] = {
    "flip_overhead": [
        ("ratio_p0.01", "flip-training step / plain step, p=0.01", "<= 1.03"),
        ("ratio_p0.1", "flip-training step / plain step, p=0.1", "<= 1.08"),
    ],
    "metric_cost": [
        ("ratio", "validation epoch with the metric / without", "<= 1.10"),
        ("hook_share", "time inside the metric's hooks / epoch without", ""),
    ],
    "sweep_speedup": [
        ("speedup", "fast sweep / naive loop throughput, FCNN on q/16", ">= 8"),
        ("identical", "FCNN q/16: same predictions as deploy mode (exact)", "== true"),
        ("speedup_q255", "fast sweep / naive loop throughput, FCNN on q/255", ">= 8"),
        ("identical_q255", "FCNN q/255: same predictions as deploy mode (exact)", "== true"),
        ("naive_differs_q255", "FCNN q/255: (sample, map) pairs where float32 differs", ""),
        ("speedup_conv", "fast sweep / naive loop throughput, VGG3 on q/255", ">= 5"),
        ("identical_conv", "VGG3 q/255: same predictions as deploy mode (exact)", "== true"),
        ("naive_differs_conv", "VGG3 q/255: (sample, map) pairs where float32 differs", ""),
    ],
    "bitstream_size": [
        ("vs_float32_state_dict", "float32 state_dict bytes / bitstream bytes", ">= 30"),
        ("vs_information_bound", "bitstream payload / information bound", "<= 1.01"),
        ("digits_cnn_vs_information_bound", "digits CNN payload / information bound", "<= 1.01"),
        ("vgg3_fashion_mnist_vs_information_bound", "VGG3 payload / information bound", "<= 1.01"),
    ],
    "c_kernel": [("fraction_of_peak", "C kernel / popcount peak", ">= 0.50")],
    "peers": [
        ("lce_over_ours_c_min", "LCE time / our C runtime, worst of models and batches", ">= 1.0"),
        ("sweep_speedup_vs_pytorchfi_layer", "our sweep / PyTorchFI layer injection", ">= 8"),
    ],
}


def _met(value: Any, target: str) -> str:
    """``"yes"``/``"no"`` for a target such as ``"<= 1.08"``, ``">= 8"`` or ``"== true"``."""
    if not target:
        return ""
    op, _, bound = target.partition(" ")
    if op == "==":
        return "yes" if json.dumps(value) == bound else "no"
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "no"
    ok = value <= float(bound) if op == "<=" else value >= float(bound)
    return "yes" if ok else "no"


def headline_rows(name: str, result: dict[str, Any]) -> list[str]:
    """Markdown rows ``| benchmark | figure | value | target | met |`` of one result."""
    rows = []
    for key, meaning, target in HEADLINES.get(name, [("", "", "")]):
        value = result.get(key) if isinstance(result, dict) else None
        shown = f"{value:.3f}" if isinstance(value, float) else json.dumps(value)
        rows.append(f"| {name} | {meaning} | {shown} | {target} | {_met(value, target)} |")
    return rows


def run_benchmarks(names: Sequence[str], out_dir: str) -> dict[str, Any]:
    """Run the named benchmarks (all default ones when empty), merge results into ``out_dir``."""
    known = {**BENCHMARKS, **OPTIONAL_BENCHMARKS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"Expected benchmark names among {sorted(known)}, but got {unknown}")
    results: dict[str, Any] = {}
    for name in names or list(BENCHMARKS):
        module, _, function = known[name].partition(":")
        result = getattr(importlib.import_module(module), function)(out_dir=out_dir)
        results[name] = result
        update_results(out_dir, {name: result})
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and run the benchmarks."""
    parser = make_parser("bench", "Run benchmarks and print one table of ratios.")
    parser.add_argument(
        "names",
        nargs="*",
        default=[],
        help=f"benchmarks to run, any of {', '.join(BENCHMARKS)} (default: all), or "
        f"{', '.join(OPTIONAL_BENCHMARKS)} (named only: needs `make peers`)",
    )
    parser.add_argument("--out", default="runs/bench", help="directory of results.json")
    args = parse(parser, argv)
    results = run_benchmarks(args.names, args.out)
    print("| benchmark | figure | value | target | met |\n|---|---|---:|---|---|")
    for name, result in results.items():
        print("\n".join(headline_rows(name, result)))
    print(f"results merged into {args.out}/results.json")
