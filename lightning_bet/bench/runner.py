"""``lightning-bet bench [NAME ...] [--out DIR]``: run benchmarks and print one table of ratios."""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from typing import Any

from jsonargparse import ArgumentParser

from lightning_bet.bench import BENCHMARKS, update_results

__all__ = ["main", "run_benchmarks"]

#: The headline figure of each benchmark: (key inside its result, how to read it).
HEADLINES: dict[str, tuple[str, str]] = {
    "flip_overhead": ("ratio_p0.01", "flip-training step / plain step, p=0.01 (target <= 1.03)"),
    "metric_cost": ("ratio", "validation with metric / without (target <= 1.10)"),
    "sweep_speedup": ("speedup", "fast sweep / naive loop throughput (target >= 8)"),
    "bitstream_size": ("vs_float32_state_dict", "float32 state_dict / bitstream bytes (>= 30)"),
    "c_kernel": ("fraction_of_peak", "C kernel / popcount peak (target >= 0.50)"),
}


def run_benchmarks(names: Sequence[str], out_dir: str) -> dict[str, Any]:
    """Run the named benchmarks (all when empty), merge their results into ``out_dir``."""
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"Expected benchmark names among {sorted(BENCHMARKS)}, but got {unknown}")
    results: dict[str, Any] = {}
    for name in names or list(BENCHMARKS):
        module, _, function = BENCHMARKS[name].partition(":")
        result = getattr(importlib.import_module(module), function)(out_dir=out_dir)
        results[name] = result
        update_results(out_dir, {name: result})
    return results


def _headline(name: str, result: dict[str, Any]) -> str:
    key, meaning = HEADLINES.get(name, ("", ""))
    value = result.get(key) if isinstance(result, dict) else None
    shown = f"{value:.3f}" if isinstance(value, int | float) else json.dumps(value)
    return f"| {name} | {shown} | {meaning} |"


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and run the benchmarks."""
    parser = ArgumentParser(prog="lightning-bet bench", description=__doc__)
    parser.add_argument("names", nargs="*", default=[], help=f"any of {sorted(BENCHMARKS)}")
    parser.add_argument("--out", default="runs/bench", help="directory of results.json")
    args = parser.parse_args(list(argv) if argv is not None else None)
    results = run_benchmarks(args.names, args.out)
    print("| benchmark | value | meaning |\n|---|---|---|")
    for name, result in results.items():
        print(_headline(name, result))
    print(f"results merged into {args.out}/results.json")
