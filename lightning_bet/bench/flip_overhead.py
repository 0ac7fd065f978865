"""Benchmark: training-step overhead of ``BitFlipTraining`` on the FCNN 784-2048-2048-10.

One training step is what Lightning runs per batch: zero the gradients, the callback's
``on_train_batch_start`` work (draw the fault map, hand it to the layers), forward (signs negated
at the fault positions), loss, backward (for Hirtzlin also negated there), the callback's
``on_after_backward`` work (clear the maps), Adam step and the in-place clip of the latent weights
(``BNNClassifier.optimizer_step``). The callback's methods are driven directly (no ``Trainer``,
no logging), so the flipped work is exactly the callback's (including the background draw of the
next fault map, which every flipped step waits for before it ends). Every configuration gets
its own model and optimizer; configurations are measured side by side in one process with
interleaved repetitions: adjacent (baseline, flip) step pairs in alternating order. The headline
ratio is the median over the pairs of (step time with flips / baseline step time); the ratio of
the median step times is reported next to it.

Run: ``lightning-bet bench flip_overhead`` or
``python -c "from lightning_bet.bench.flip_overhead import run; run()"``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from lightning_bet.bench import update_results
from lightning_bet.callbacks.bitflip import BitFlipTraining
from lightning_bet.layers import clip_latent_weights_
from lightning_bet.module import BNNClassifier

__all__ = ["make_step", "run"]


def make_step(
    hidden: int, p: float | None, variant: str = "straight_through", batch_size: int = 256
) -> Callable[[], None]:
    """One training step of the FCNN ``784-hidden-hidden-10`` (with flips unless ``p is None``)."""
    torch.manual_seed(0)
    module = BNNClassifier(arch="fcnn", input_shape=(1, 28, 28), hidden=(hidden, hidden))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch_size, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (batch_size,), generator=generator)
    callback = None
    if p is not None:
        callback = BitFlipTraining(p=p, variant=variant, seed=0, log_rate=False)
        callback.setup(SimpleNamespace(strategy=None), module, "fit")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if callback is not None:
            callback.flip(epoch=0, rank=0)  # on_train_batch_start
        loss = module.criterion(module(x), y)
        loss.backward()
        if callback is not None:
            callback.restore()  # on_after_backward
        optimizer.step()
        clip_latent_weights_(module.net)
        if callback is not None:
            # the next fault map is drawn in the background during this step: charge it here
            callback.wait_for_prefetch()

    return step


def _interleaved(
    steps: dict[str, Callable[[], None]], repeats: int, warmup: int = 2
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Median wall time per configuration, and median paired wall and CPU-time ratios.

    Every repetition runs, for each configuration in a rotating order, an adjacent pair
    (baseline, configuration) whose order alternates between repetitions; the ratio of the two
    adjacent steps is robust to the load of a shared machine changing over time. The CPU time of
    the process (all threads) is measured too: on a machine shared with other jobs it is much
    less disturbed than the wall time.

    Returns:
        ``(median wall seconds per name, median paired wall ratio per non-baseline name,
        median paired CPU-time ratio per non-baseline name)``.

    """
    names = list(steps)
    base_name, others = names[0], names[1:]
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in others}
    cpu: dict[str, list[float]] = {name: [] for name in others}

    def timed(name: str) -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), time.process_time()
        steps[name]()
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        times[name].append(elapsed)
        return elapsed, elapsed_cpu

    for rep in range(repeats):
        shift = rep % len(others)
        for name in others[shift:] + others[:shift]:
            if rep % 2:
                other, base = timed(name), timed(base_name)
            else:
                base, other = timed(base_name), timed(name)
            wall[name].append(other[0] / base[0])
            cpu[name].append(other[1] / base[1])
    medians = {name: statistics.median(values) for name, values in times.items()}
    return (
        medians,
        {name: statistics.median(values) for name, values in wall.items()},
        {name: statistics.median(values) for name, values in cpu.items()},
    )


def run(
    out_dir: str | os.PathLike = "runs/bench",
    repeats: int = 30,
    widths: Sequence[int] = (2048, 1024, 512),
    rates: Sequence[float] = (0.01, 0.1),
    variants: Sequence[str] = ("straight_through", "hirtzlin"),
) -> dict[str, Any]:
    """Measure median step-time ratios (with flips / without) and merge them into results.json.

    Args:
        out_dir: where ``results.json`` lives.
        repeats: interleaved repetitions per configuration (medians are reported).
        widths: hidden widths of the FCNN; the first is the headline (2048).
        rates: training error rates ``p``.
        variants: flip-training variants; the first gives the headline ratios.

    Returns:
        ``{"ratio_p0.01": ..., "ratio_p0.1": ..., "by_width": {width: {...}}, ...}``: headline
        (median paired) ratios at ``widths[0]`` and ``variants[0]``; per width the baseline median
        step time in ms, and for every variant and rate the median paired wall ratio, the ratio of
        the medians and the median paired CPU-time ratio (``cpu_ratio_*``).

    """
    from tqdm.auto import tqdm

    by_width: dict[str, dict[str, float]] = {}
    rows = []
    for width in tqdm(widths, desc="flip_overhead widths"):
        steps = {"baseline": make_step(width, None)}
        for variant in variants:
            for p in rates:
                steps[f"{variant}_p{p:g}"] = make_step(width, p, variant)
        medians, paired, cpu = _interleaved(steps, repeats)
        base = medians["baseline"]
        entry = {"baseline_ms": round(base * 1e3, 3)}
        for name, ratio in paired.items():
            entry[f"ratio_{name}"] = round(ratio, 4)
            entry[f"ratio_of_medians_{name}"] = round(medians[name] / base, 4)
            entry[f"cpu_ratio_{name}"] = round(cpu[name], 4)
            rows.append(
                (
                    width,
                    name,
                    base * 1e3,
                    medians[name] * 1e3,
                    medians[name] / base,
                    ratio,
                    cpu[name],
                )
            )
        by_width[str(width)] = entry
    head = by_width[str(widths[0])]
    result: dict[str, Any] = {f"ratio_p{p:g}": head[f"ratio_{variants[0]}_p{p:g}"] for p in rates}
    result.update(
        {
            "variant": variants[0],
            "width": widths[0],
            "batch_size": 256,
            "repeats": repeats,
            "threads": torch.get_num_threads(),
            "by_width": by_width,
        }
    )
    print(
        f"{'width':>6} {'configuration':<24} {'base ms':>9} {'flip ms':>9} "
        f"{'ratio of medians':>17} {'paired ratio':>13} {'paired CPU ratio':>17}"
    )
    for width, name, base_ms, flip_ms, of_medians, ratio, cpu_ratio in rows:
        print(
            f"{width:>6} {name:<24} {base_ms:>9.2f} {flip_ms:>9.2f} {of_medians:>17.3f} "
            f"{ratio:>13.3f} {cpu_ratio:>17.3f}"
        )
    update_results(out_dir, {"flip_overhead": result})
    return result
