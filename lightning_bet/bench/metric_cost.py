"""Cost of the ``BitErrorTolerance`` metric during validation (target: at most 10% extra).

Setup: FCNN 784-2048-2048-10 (the FashionMNIST reference network, real-valued first layer) with
trained-like BatchNorm statistics, on a validation epoch the size of FashionMNIST's test split:
10,000 random "binary-ish" images (each pixel 0 or 1 with a few grey levels in between,
quantized to 1/16), batch 256, i.e. 40 validation steps. Two trainers, one with
:class:`~lightning_bet.callbacks.bet_logging.BetLogging` and one without, run
``trainer.validate`` in adjacent pairs whose order alternates (one process). The headline ratio
is the median over the pairs of (epoch time with the metric / epoch time without): on a shared
machine whose speed drifts by several percent between runs, adjacent pairs cancel the drift that
a ratio of two medians keeps. Reported next to it: the ratio of the medians and ``hook_share``
(median time spent inside the callback's hooks over the median epoch without the metric; the
rest of the cost is the activations kept during the forward pass and Lightning's handling of the
logged values).

Run: ``python -m lightning_bet.bench.metric_cost`` or ``lightning-bet bench metric_cost``.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch

from lightning_bet.bench import update_results

__all__ = ["run"]


def _data(samples: int, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    ink = (torch.rand(samples, 1, 28, 28, generator=g) < 0.2).float()
    grey = torch.randint(0, 17, (samples, 1, 28, 28), generator=g).float() / 16
    edge = torch.rand(samples, 1, 28, 28, generator=g) < 0.05
    x = torch.where(edge, grey, ink)
    y = torch.randint(0, 10, (samples,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def run(
    out_dir: str | os.PathLike = "runs/bench",
    repeats: int = 9,
    samples: int = 10_000,
    batch_size: int = 256,
    hidden: tuple[int, ...] = (2048, 2048),
) -> dict[str, Any]:
    """Measure validation time with and without the metric; write ``{"metric_cost": ...}``.

    Args:
        out_dir: where ``results.json`` is updated.
        repeats: (with, without) pairs of validation epochs (medians are reported).
        samples: validation samples.
        batch_size: validation batch size.
        hidden: hidden widths of the FCNN.

    Returns:
        ``{"ratio": ..., "seconds_with": ..., "seconds_without": ..., ...}``.

    """
    import lightning as L

    from lightning_bet.callbacks.bet_logging import BetLogging
    from lightning_bet.module import BNNClassifier

    torch.manual_seed(0)
    module = BNNClassifier(input_shape=(1, 28, 28), hidden=hidden)
    with torch.no_grad():  # trained-like BatchNorm statistics so margins are realistic
        for block in module.net.blocks:
            n = block.layer.in_features
            block.bn.running_mean.normal_(0, n**0.5 / 4)
            block.bn.running_var.uniform_(n / 4, n)
    loader = torch.utils.data.DataLoader(_data(samples, 0), batch_size=batch_size)

    def trainer(callbacks: list) -> L.Trainer:
        return L.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            callbacks=callbacks,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )

    class TimedBetLogging(BetLogging):
        """BetLogging that also adds up the time spent in its own hooks."""

        seconds = 0.0

        def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            super().on_validation_batch_end(*args, **kwargs)
            TimedBetLogging.seconds += time.perf_counter() - start

        def on_validation_epoch_end(self, *args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            super().on_validation_epoch_end(*args, **kwargs)
            TimedBetLogging.seconds += time.perf_counter() - start

    with_metric, without = trainer([TimedBetLogging()]), trainer([])
    times: dict[str, list[float]] = {"with": [], "without": []}
    hook_seconds: list[float] = []
    for i in range(repeats + 1):  # the first pair warms up and is dropped
        order = [("with", with_metric), ("without", without)]
        for name, tr in order if i % 2 == 0 else order[::-1]:
            TimedBetLogging.seconds = 0.0
            start = time.perf_counter()
            tr.validate(module, loader, verbose=False)
            if i > 0:
                times[name].append(time.perf_counter() - start)
                if name == "with":
                    hook_seconds.append(TimedBetLogging.seconds)
    t_with, t_without = statistics.median(times["with"]), statistics.median(times["without"])
    paired = [a / b for a, b in zip(times["with"], times["without"], strict=True)]
    result = {
        "ratio": statistics.median(paired),
        "ratio_of_medians": t_with / t_without,
        # time inside the metric's hooks over the epoch without them
        "hook_share": statistics.median(hook_seconds) / t_without,
        "seconds_with": t_with,
        "seconds_without": t_without,
        "repeats": repeats,
        "setup": f"FCNN 784-{'-'.join(map(str, hidden))}-10, {samples} samples, batch {batch_size}",
        "torch_threads": torch.get_num_threads(),
    }
    update_results(out_dir, {"metric_cost": result})
    return result


if __name__ == "__main__":
    print(run())
