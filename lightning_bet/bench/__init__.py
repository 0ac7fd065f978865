"""Benchmarks. Each reports ratios measured side by side in one process (medians of repetitions).

``lightning-bet bench NAME`` runs one, ``lightning-bet bench`` runs all; results are merged into
``<out>/results.json`` under the benchmark's name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["BENCHMARKS", "OPTIONAL_BENCHMARKS", "update_results"]

#: name -> "module:function"; the function takes ``out_dir`` and returns its result dict.
BENCHMARKS: dict[str, str] = {
    "flip_overhead": "lightning_bet.bench.flip_overhead:run",
    "metric_cost": "lightning_bet.bench.metric_cost:run",
    "sweep_speedup": "lightning_bet.bench.sweep_speedup:run",
    "bitstream_size": "lightning_bet.bench.bitstream_size:run",
    "c_kernel": "lightning_bet.bench.c_kernel:run",
}
#: Benchmarks run only when named: they need the separate peers venv (``make peers``).
OPTIONAL_BENCHMARKS: dict[str, str] = {"peers": "lightning_bet.bench.peers:run"}


def update_results(out_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Merge ``results`` into ``<out_dir>/results.json``, keeping other keys; return its path."""
    path = Path(out_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.exists() else {}
    current.update(results)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
