"""Throughput of the fast sweep evaluator against the naive loop, and its exactness.

Three cases, each with random latent weights and trained-like BatchNorm statistics (both signs
of gamma), R = 32 fault maps per error rate on a grid of non-zero rates (the clean point p = 0
is left out: the fast path would get it for free):

- ``fcnn_q16``: FCNN 784-1024-1024-10, 10,000 "binary-ish" 28x28 images quantized to 1/16
  (target >= 8x);
- ``fcnn_q255``: the same network on such images quantized to 1/255, the format of the MNIST
  and FashionMNIST data modules (target >= 8x);
- ``vgg3_q255``: VGG3 for FashionMNIST (``build_model("vgg3", (1, 28, 28), 10, (2048,))``,
  C64-MP-C64-MP-FC2048-FC10), 10,000 uniformly random 28x28 images quantized to 1/255
  (target >= 5x).

For every fault map, in one process and interleaved (alternating which goes first), the naive
loop (deep-copy the model, flip the weights, float32 forward in batches of 1,000) and the fast
evaluator (:class:`~lightning_bet.fast_sweep.FastEvaluator`, its one-time preparation included
in its time) classify the same samples under the same map. The naive loop of the conv case is
slow, so it is timed on every ``naive_every``-th map only and its total is extrapolated from the
mean time per map (``naive_maps_timed`` says how many; ``median_per_map_speedup`` compares the
maps timed side by side).

Exactness: the fast path computes deploy mode's exact integer semantics. Per map, deploy mode
(:func:`~lightning_bet.deploy.fold.deploy_forward` of the flipped network, float64) is evaluated
on ``check_samples`` random samples plus every sample where the naive float32 loop disagrees
with the fast path; ``identical`` is true when the fast predictions equal deploy mode's on all
of them. ``naive_differs`` is the fraction of (sample, map) pairs where the float32 loop
disagrees with the exact semantics: float32 sums of ``q_i / 255`` round, so a pre-activation
within a rounding error of a threshold can land on the other side (on ``q / 16`` data every
float32 sum is exact).

Run: ``lightning-bet bench sweep_speedup`` (all cases, full size) or
``python -m lightning_bet.bench.sweep_speedup --cases vgg3_q255 --conv-samples 2000`` (smaller).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lightning_bet.bench import update_results

__all__ = ["CASES", "run"]

#: Benchmark cases: name -> (architecture, hidden widths, input levels, input kind, target).
CASES: dict[str, tuple[str, tuple[int, ...], int, str, float]] = {
    "fcnn_q16": ("fcnn", (1024, 1024), 16, "binaryish", 8.0),
    "fcnn_q255": ("fcnn", (1024, 1024), 255, "binaryish", 8.0),
    "vgg3_q255": ("vgg3", (2048,), 255, "uniform", 5.0),
}


def _model(arch: str, hidden: tuple[int, ...], seed: int) -> torch.nn.Module:
    from lightning_bet.models import build_model

    torch.manual_seed(seed)
    net = build_model(arch, (1, 28, 28), 10, hidden)
    with torch.no_grad():
        for block in net.blocks:
            n = block.layer.weight[0].numel()
            block.layer.weight.uniform_(-1, 1)
            block.bn.running_mean.normal_(0, n**0.5 / 4)
            block.bn.running_var.uniform_(n / 4, n)
            block.bn.weight.uniform_(-0.2, 1.0)  # some negative gammas
            block.bn.bias.normal_(0, 0.5)
        net.head.layer.weight.uniform_(-1, 1)
    return net.eval()


def _inputs(samples: int, levels: int, kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    shape = (samples, 1, 28, 28)
    if kind == "binaryish":
        q = torch.where(
            torch.rand(shape, generator=g) < 0.8,
            (torch.rand(shape, generator=g) < 0.25).long() * levels,
            torch.randint(0, levels + 1, shape, generator=g),
        )
    else:
        q = torch.randint(0, levels + 1, shape, generator=g)
    return q.float() / levels, torch.randint(0, 10, (samples,), generator=g)


def _deploy_predictions(
    faulty: torch.nn.Module, q: torch.Tensor, levels: int, idx: np.ndarray
) -> np.ndarray:
    from lightning_bet.deploy.fold import deploy_forward, to_deploy

    if idx.size == 0:
        return np.empty(0, dtype=np.int64)
    return deploy_forward(to_deploy(faulty, levels), q[torch.from_numpy(idx)]).argmax(1).numpy()


def run_case(
    name: str,
    samples: int = 10_000,
    realizations: int = 32,
    error_rates: Sequence[float] = (0.001, 0.01, 0.05, 0.1),
    naive_every: int = 1,
    check_samples: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure one case of :data:`CASES` (see the module docstring).

    Args:
        name: the case.
        samples: evaluation samples.
        realizations: fault maps per error rate.
        error_rates: the grid.
        naive_every: time the naive loop on every this-many-th map (1: all).
        check_samples: random samples per map checked against deploy mode.
        seed: model, data and fault-map seed.

    Returns:
        The case's figures (``speedup``, ``identical``, ``naive_differs``, times, setup).

    """
    from tqdm.auto import tqdm

    from lightning_bet.fast_sweep import FastEvaluator
    from lightning_bet.functional.faults import FaultModel
    from lightning_bet.layers import binary_layers
    from lightning_bet.sweeps import _flipped_copy, fault_maps

    arch, hidden, levels, kind, target = CASES[name]
    net = _model(arch, hidden, seed)
    x, y = _inputs(samples, levels, kind, seed)
    q = torch.round(x * levels).long()
    layers = [layer for _, layer in binary_layers(net)]
    rng = np.random.default_rng(seed)

    start = time.perf_counter()
    evaluator = FastEvaluator(net, x, y)
    prepare = time.perf_counter() - start

    naive_times, fast_times, paired = [], [], []
    checked = mismatches = naive_pairs = naive_diff = 0
    accuracies = []
    total = len(error_rates) * realizations
    with torch.no_grad(), tqdm(total=total, desc=f"sweep_speedup {name}", leave=False) as bar:
        for m, (p, r) in enumerate((p, r) for p in error_rates for r in range(realizations)):
            maps = fault_maps(layers, FaultModel(p=p), seed, p, r)
            timed = m % naive_every == 0
            order = ("naive", "fast") if m % 2 == 0 else ("fast", "naive")
            naive_pred = None
            for which in order:
                t0 = time.perf_counter()
                if which == "fast":
                    fast_pred = evaluator.predictions(maps)
                    fast_times.append(time.perf_counter() - t0)
                elif timed:
                    faulty = _flipped_copy(net, maps)
                    naive_pred = torch.cat([faulty(xb).argmax(1) for xb in x.split(1000)]).numpy()
                    naive_times.append(time.perf_counter() - t0)
            if naive_pred is not None:
                paired.append(naive_times[-1] / fast_times[-1])
                differs = np.flatnonzero(naive_pred != fast_pred)
                naive_pairs += samples
                naive_diff += differs.size
            else:
                faulty, differs = _flipped_copy(net, maps), np.empty(0, dtype=np.int64)
            idx = np.union1d(
                rng.choice(samples, min(check_samples, samples), replace=False), differs
            )
            exact = _deploy_predictions(faulty, q, levels, idx)
            checked += idx.size
            mismatches += int((exact != fast_pred[idx]).sum())
            accuracies.append(float((fast_pred == y.numpy()).mean()))
            bar.update(1)
    naive_total = statistics.fmean(naive_times) * total
    fast_total = sum(fast_times) + prepare
    return {
        "speedup": naive_total / fast_total,
        "target": target,
        "median_per_map_speedup": statistics.median(paired),
        "identical": mismatches == 0,
        "deploy_checked_pairs": checked,
        "deploy_mismatches": mismatches,
        "naive_differs": naive_diff / naive_pairs,
        "naive_differing_pairs": naive_diff,
        "naive_seconds": naive_total,
        "naive_seconds_per_map": statistics.median(naive_times),
        "naive_maps_timed": len(naive_times),
        "naive_extrapolated": len(naive_times) < total,
        "fast_seconds": fast_total,
        "fast_seconds_per_map": statistics.median(fast_times),
        "fast_prepare_seconds": prepare,
        "first_layer_kernel": evaluator.first_kernel,
        "popcount_backend": evaluator.kernels.name,
        "input_levels": evaluator.input_levels,
        "maps": total,
        "mean_accuracy": float(np.mean(accuracies)),
        "setup": (
            f"{arch} {'-'.join(map(str, hidden))}, {samples} samples of q/{levels} "
            f"({kind}), R={realizations}, error rates {list(error_rates)}"
        ),
        "torch_threads": torch.get_num_threads(),
    }


def run(
    out_dir: str | os.PathLike = "runs/bench",
    cases: Sequence[str] = tuple(CASES),
    samples: int = 10_000,
    conv_samples: int = 10_000,
    realizations: int = 32,
    error_rates: tuple[float, ...] = (0.001, 0.01, 0.05, 0.1),
    conv_naive_every: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure the cases; write ``{"sweep_speedup": ...}`` into ``results.json``.

    Args:
        out_dir: where ``results.json`` is updated.
        cases: which of :data:`CASES` to run.
        samples: evaluation samples of the FCNN cases.
        conv_samples: evaluation samples of the conv case.
        realizations: fault maps per error rate.
        error_rates: the grid.
        conv_naive_every: the conv case times the naive loop on every this-many-th map.
        seed: model, data and fault-map seed.

    Returns:
        ``{"cases": {name: figures}, "speedup", "identical"`` (``fcnn_q16``, as before),
        ``"speedup_q255", "identical_q255", "naive_differs_q255"`` (``fcnn_q255``) and
        ``"speedup_conv", "identical_conv", "naive_differs_conv"`` (``vgg3_q255``)}``.

    """
    unknown = [name for name in cases if name not in CASES]
    if unknown:
        raise ValueError(f"Expected cases among {sorted(CASES)}, but got {unknown}")
    figures: dict[str, Any] = {}
    for name in cases:
        conv = CASES[name][0] != "fcnn"
        figures[name] = run_case(
            name,
            samples=conv_samples if conv else samples,
            realizations=realizations,
            error_rates=error_rates,
            naive_every=conv_naive_every if conv else 1,
            seed=seed,
        )
    result: dict[str, Any] = {"cases": figures}
    for name, suffix in (("fcnn_q16", ""), ("fcnn_q255", "_q255"), ("vgg3_q255", "_conv")):
        if name in figures:
            result[f"speedup{suffix}"] = figures[name]["speedup"]
            result[f"identical{suffix}"] = figures[name]["identical"]
            result[f"naive_differs{suffix}"] = figures[name]["naive_differs"]
    update_results(out_dir, {"sweep_speedup": result})
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m lightning_bet.bench.sweep_speedup [--cases ...] [sizes]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--conv-samples", type=int, default=10_000)
    parser.add_argument("--realizations", "-R", type=int, default=32)
    parser.add_argument("--conv-naive-every", type=int, default=8)
    args = parser.parse_args(list(argv) if argv is not None else None)
    result = run(
        args.out,
        args.cases,
        args.samples,
        args.conv_samples,
        args.realizations,
        conv_naive_every=args.conv_naive_every,
    )
    for name, figures in result["cases"].items():
        print(
            f"{name}: speedup {figures['speedup']:.2f} (target >= {figures['target']:g}), "
            f"median per map {figures['median_per_map_speedup']:.2f}, identical to deploy mode "
            f"{figures['identical']}, naive float32 differs on {figures['naive_differs']:.2e} "
            f"of (sample, map) pairs"
        )
    return result


if __name__ == "__main__":
    main()
