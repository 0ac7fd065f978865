"""Throughput of the fast sweep evaluator against the naive loop (target: >= 8x, identical).

Setup: FCNN 784-1024-1024-10 with random latent weights and trained-like BatchNorm statistics,
10,000 random "binary-ish" 28x28 images quantized to 1/16, R = 32 fault maps per error rate on
a grid of non-zero error rates (the clean point p = 0 is left out: the fast path would get it
for free). For every fault map, in one process and interleaved, the naive loop (deep-copy the
model, flip the weights, float32 forward in batches of 1,000) and the fast exact evaluator
(:class:`~lightning_bet.fast_sweep.FastDenseEvaluator`, its one-time preparation
included in its time) classify the same samples under the same map; their predictions must be
identical on every sample. Reported: total naive time over total fast time (= throughput ratio),
and whether every realization agreed.

Run: ``python -m lightning_bet.bench.sweep_speedup`` or ``lightning-bet bench sweep_speedup``.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from lightning_bet.bench import update_results

__all__ = ["run"]


def _model(hidden: tuple[int, ...], seed: int) -> torch.nn.Module:
    from lightning_bet.models import build_model

    torch.manual_seed(seed)
    net = build_model("fcnn", (1, 28, 28), 10, hidden)
    with torch.no_grad():
        for block in net.blocks:
            n = block.layer.in_features
            block.layer.weight.uniform_(-1, 1)
            block.bn.running_mean.normal_(0, n**0.5 / 4)
            block.bn.running_var.uniform_(n / 4, n)
            block.bn.weight.uniform_(-0.2, 1.0)  # some negative gammas
            block.bn.bias.normal_(0, 0.5)
        net.head.layer.weight.uniform_(-1, 1)
    return net.eval()


def run(
    out_dir: str | os.PathLike = "runs/bench",
    samples: int = 10_000,
    realizations: int = 32,
    error_rates: tuple[float, ...] = (0.001, 0.01, 0.05, 0.1),
    hidden: tuple[int, ...] = (1024, 1024),
    seed: int = 0,
) -> dict[str, Any]:
    """Measure naive vs fast sweep throughput; write ``{"sweep_speedup": ...}``.

    Args:
        out_dir: where ``results.json`` is updated.
        samples: evaluation samples.
        realizations: fault maps per error rate.
        error_rates: the grid.
        hidden: hidden widths of the FCNN.
        seed: model, data and fault-map seed.

    Returns:
        ``{"speedup": ..., "identical": bool, "naive_seconds": ..., "fast_seconds": ...}``.

    """
    from tqdm.auto import tqdm

    from lightning_bet.fast_sweep import FastDenseEvaluator
    from lightning_bet.functional.faults import FaultModel
    from lightning_bet.layers import binary_layers
    from lightning_bet.sweep import _flipped_copy, fault_maps

    net = _model(hidden, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.where(
        torch.rand(samples, 1, 28, 28, generator=g) < 0.8,
        (torch.rand(samples, 1, 28, 28, generator=g) < 0.25).float(),
        torch.randint(0, 17, (samples, 1, 28, 28), generator=g).float() / 16,
    )
    y = torch.randint(0, 10, (samples,), generator=g)
    layers = [layer for _, layer in binary_layers(net)]

    start = time.perf_counter()
    evaluator = FastDenseEvaluator(net, x, y)
    prepare = time.perf_counter() - start

    naive_times, fast_times = [], []
    identical = True
    accuracies = []
    total = len(error_rates) * realizations
    with torch.no_grad(), tqdm(total=total, desc="sweep_speedup", leave=False) as bar:
        for p in error_rates:
            for r in range(realizations):
                maps = fault_maps(layers, FaultModel(p=p), seed, p, r)
                order = ("naive", "fast") if r % 2 == 0 else ("fast", "naive")
                for which in order:
                    t0 = time.perf_counter()
                    if which == "naive":
                        faulty = _flipped_copy(net, maps)
                        naive_pred = torch.cat(
                            [faulty(xb).argmax(1) for xb in x.split(1000)]
                        ).numpy()
                        naive_times.append(time.perf_counter() - t0)
                    else:
                        fast_pred = evaluator.predictions(maps)
                        fast_times.append(time.perf_counter() - t0)
                identical &= bool(np.array_equal(naive_pred, fast_pred))
                accuracies.append(float((fast_pred == y.numpy()).mean()))
                bar.update(1)
    naive_total, fast_total = sum(naive_times), sum(fast_times) + prepare
    result = {
        "speedup": naive_total / fast_total,
        "median_per_map_speedup": statistics.median(
            n / f for n, f in zip(naive_times, fast_times, strict=True)
        ),
        "identical": identical,
        "naive_seconds": naive_total,
        "fast_seconds": fast_total,
        "fast_prepare_seconds": prepare,
        "first_layer_kernel": evaluator.first_kernel,
        "popcount_backend": evaluator.popcount.name,
        "maps": total,
        "mean_accuracy": float(np.mean(accuracies)),
        "setup": (
            f"FCNN 784-{'-'.join(map(str, hidden))}-10, {samples} samples, R={realizations}, "
            f"error rates {list(error_rates)}"
        ),
        "torch_threads": torch.get_num_threads(),
    }
    update_results(out_dir, {"sweep_speedup": result})
    return result


if __name__ == "__main__":
    print(run())
