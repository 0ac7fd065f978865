"""Benchmark of the host binary dense kernel against this CPU's popcount peak.

Workload: a 2048 x 2048 binary dense layer at batch 1024 (random bits, fixed
seed), i.e. 2048 * 2048 * 1024 binary MACs per call, with the library built
``-O3 -march=native``. The kernel time is the median over ``repeats`` calls
through ``BinaryDenseLibrary.binary_dense`` (argument checks and weight
repacking included, output buffer reused).

* ``gmacs``: binary MACs per second / 1e9.
* ``peak_gbitops``: popcount peak in popcount'd bits per second / 1e9, measured
  with the same number of threads as the kernel: 512-bit ``VPOPCNTQ`` where the
  AVX512-VPOPCNTDQ path is compiled in, else 64-bit ``POPCNT`` (best of short
  runs of independent popcounts on register data before and after the timed
  kernel calls).
* ``fraction_of_peak``: ``gmacs / peak_gbitops``. The kernel needs an XOR and an
  add per popcount, so on a CPU that issues two 512-bit integer ops per cycle
  and one ``VPOPCNTQ`` per cycle (AMD Zen 4) its ceiling is 2/3.
* ``gmacs_cpu``, ``peak_gbitops_cpu``, ``fraction_of_peak_cpu``: the same per
  CPU-second (thread CPU time for one thread, process CPU time / threads
  otherwise). They match the wall-clock figures on an idle machine and stay
  meaningful when other processes share the cores (``load_avg_1m`` records the
  load at the end of the run).

The default is one thread for both kernel and peak, a per-core figure that is
less exposed to other load on the machine than an all-core one; ``threads=N``
runs both on N threads.

Run: ``python -m lightning_bet.bench.c_kernel [--out-dir runs/bench] [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lightning_bet.native import (
    NATIVE_FLAGS,
    BinaryDenseLibrary,
    cpu_seconds_clock,
    load_library,
)

BATCH = 1024
ROWS = 2048
FAN_IN = 2048
SEED = 0
CHECK_INPUTS = 32  # inputs checked against the numpy reference


def _reference(xpacked: np.ndarray, wpacked: np.ndarray, n: int) -> np.ndarray:
    """Numpy reference ``x @ w.T`` on +-1 values.

    Args:
        xpacked: ``(batch, words)`` uint32.
        wpacked: ``(rows, words)`` uint32.
        n: Fan-in.

    Returns:
        ``(batch, rows)`` int32.
    """

    def signs(p: np.ndarray) -> np.ndarray:
        bits = np.unpackbits(p.astype("<u4").view(np.uint8), axis=-1, count=n, bitorder="little")
        return 1.0 - 2.0 * bits.astype(np.float64)

    return np.rint(signs(xpacked) @ signs(wpacked).T).astype(np.int32)


def _merge_results(path: Path, key: str, value: dict) -> dict:
    """Read-modify-write ``path`` (a JSON object) under an exclusive file lock.

    Args:
        path: ``results.json``.
        key: Top-level key to set.
        value: Its value.

    Returns:
        The merged JSON object.

    Raises:
        ValueError: If the existing file is not a JSON object.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data: dict = {}
            if path.exists() and path.stat().st_size > 0:
                data = json.loads(path.read_text())
                if not isinstance(data, dict):
                    raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
            data[key] = value
            fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".json", dir=path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.write("\n")
            os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return data


def run(
    out_dir: str = "runs/bench",
    repeats: int = 7,
    threads: int = 1,
    library: BinaryDenseLibrary | None = None,
) -> dict:
    """Time the kernel, measure the popcount peak and merge both into results.json.

    Args:
        out_dir: Directory of ``results.json``; the ``c_kernel`` key is replaced,
            other keys are kept.
        repeats: Timed kernel calls; the median is reported.
        threads: Threads for the kernel and for the peak measurement.
        library: Library to benchmark; default the ``-O3 -march=native`` build.

    Returns:
        The ``c_kernel`` entry, also merged into ``results.json``: ``gmacs``,
        ``fraction_of_peak``, ``peak_gbitops``, ``threads``, their CPU-time
        counterparts and details (``median_ms``, ``best_ms``, ``repeats``, shapes, ``kernel_path``,
        ``peak_kind``, ``flags``, ``load_avg_1m``).

    Raises:
        TypeError: If ``repeats`` or ``threads`` is not an int.
        ValueError: If ``repeats`` or ``threads`` is < 1.
        RuntimeError: If the kernel disagrees with the numpy reference or the
            library cannot be built.
    """
    for name, v in (("repeats", repeats), ("threads", threads)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    lib = library if library is not None else load_library(NATIVE_FLAGS)

    rng = np.random.default_rng(SEED)
    words = FAN_IN // 32
    xpacked = rng.integers(0, 2**32, size=(BATCH, words), dtype=np.uint32)
    wpacked = rng.integers(0, 2**32, size=(ROWS, words), dtype=np.uint32)
    out = np.empty((BATCH, ROWS), dtype=np.int32)

    lib.binary_dense(xpacked, wpacked, FAN_IN, threads=threads, out=out)
    want = _reference(xpacked[:CHECK_INPUTS], wpacked, FAN_IN)
    if not np.array_equal(out[:CHECK_INPUTS], want):
        bad = int(np.count_nonzero(out[:CHECK_INPUTS] != want))
        raise RuntimeError(f"kernel disagrees with the numpy reference on {bad} outputs")
    del want

    # Peak measured before and after the timed calls, best kept: a transient
    # slowdown of the machine can lower the fraction but never inflate it.
    peak_before = lib.popcount_peak(threads=threads, iters=4_000_000, trials=3)
    for _ in range(2):  # warm caches after the reference and the peak loop
        lib.binary_dense(xpacked, wpacked, FAN_IN, threads=threads, out=out)

    cpu_clock = cpu_seconds_clock(threads)
    times, cpu_times = [], []
    for _ in range(repeats):
        c0 = cpu_clock()
        t0 = time.perf_counter()
        lib.binary_dense(xpacked, wpacked, FAN_IN, threads=threads, out=out)
        times.append(time.perf_counter() - t0)
        cpu_times.append(cpu_clock() - c0)
    median = statistics.median(times)
    median_cpu = statistics.median(cpu_times)
    macs = float(BATCH) * ROWS * FAN_IN
    gmacs = macs / median / 1e9
    gmacs_cpu = macs / median_cpu / 1e9 if median_cpu > 0 else gmacs

    peak_after = lib.popcount_peak(threads=threads, iters=4_000_000, trials=3)
    peak = max(peak_before, peak_after, key=lambda p: p["peak_gbitops"])
    peak_cpu = max(peak_before["peak_gbitops_cpu"], peak_after["peak_gbitops_cpu"])
    entry = {
        "gmacs": round(gmacs, 2),
        "fraction_of_peak": round(gmacs / peak["peak_gbitops"], 4),
        "peak_gbitops": round(peak["peak_gbitops"], 2),
        "threads": threads,
        "gmacs_cpu": round(gmacs_cpu, 2),
        "fraction_of_peak_cpu": round(gmacs_cpu / peak_cpu, 4),
        "peak_gbitops_cpu": round(peak_cpu, 2),
        "median_ms": round(median * 1e3, 4),
        "best_ms": round(min(times) * 1e3, 4),
        "repeats": repeats,
        "batch": BATCH,
        "rows": ROWS,
        "fan_in": FAN_IN,
        "kernel_path": lib.kernel_path,
        "peak_kind": peak["peak_kind"],
        "scalar_peak_gbitops": round(peak["scalar_gbitops"], 2),
        "flags": " ".join(lib.flags),
        "verified_inputs": CHECK_INPUTS,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    _merge_results(Path(out_dir) / "results.json", "c_kernel", entry)

    print(f"c_kernel: {BATCH}x{FAN_IN} @ {ROWS}x{FAN_IN} binary dense ({lib.kernel_path})")
    table = [
        ("threads", f"{threads}"),
        ("median time", f"{median * 1e3:.3f} ms (best {min(times) * 1e3:.3f} ms, n={repeats})"),
        ("throughput", f"{gmacs:.1f} G binary-MAC/s"),
        ("popcount peak", f"{peak['peak_gbitops']:.1f} Gbit-op/s ({peak['peak_kind']})"),
        ("fraction of peak", f"{gmacs / peak['peak_gbitops']:.3f}"),
        ("per CPU-second", f"{gmacs_cpu:.1f} G/s of {peak_cpu:.1f} -> {gmacs_cpu / peak_cpu:.3f}"),
        ("load average", f"{os.getloadavg()[0]:.2f} (1 min, {os.cpu_count()} CPUs)"),
    ]
    width = max(len(k) for k, _ in table)
    for k, v in table:
        print(f"  {k:<{width}}  {v}")
    return entry


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="runs/bench")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    run(out_dir=args.out_dir, repeats=args.repeats, threads=args.threads)


if __name__ == "__main__":
    main()
