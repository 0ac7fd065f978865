"""Benchmark against the peers users would pick: Larq Compute Engine and PyTorchFI, side by side.

Needs the separate peers venv (``make peers``: larq, larq-compute-engine 0.16, TensorFlow 2.16,
tf_keras, pytorchfi 0.6.0 in ``.venv-peers``; never part of the product's dependencies). This
process (the product's venv) measures our side and drives ``peers_worker.py`` in the peers venv
over a pipe, both pinned to the same CPU and one thread, alternating in pairs; every ratio is the
median of per-pair ratios.

Inference, for the digits FCNN 64-256-256-10 and the FCNN 784-2048-2048-10 at batch 1 and 256:

- ours: the exported C runtime's host batch path (``bet_predict_batch`` through ctypes,
  :class:`~lightning_bet.deploy.c_batch.BatchRuntime`) and our TFLite export (float32 and
  int8 weights) in tflite-runtime;
- LCE: the same layer sizes as larq ``QuantDense`` (LCE keeps them float ``FULLY_CONNECTED``)
  and as 1x1 ``QuantConv2D`` (LCE's binary ``LceBconv2d``), converted by LCE for the batch size
  and run by LCE's interpreter;
- ``lce_over_ours``: LCE's best variant's time / ours (target >= 1.0), and file sizes.

Sweeps, FCNN 784-1024-1024-10 on random ``q / 255`` inputs labelled by the clean network: our
``sweep`` (fast exact path) against PyTorchFI weight injection of the same float network at
p = 0.01, 0.05, 0.1 (seconds per fault map: copy, inject, forward; whole-layer custom function,
and per-location injection at p = 0.01), with the accuracies compared (difference of means in
units of its standard error). Target: ours >= 8x PyTorchFI's whole-layer injection.

Run: ``lightning-bet bench peers`` (``--quick`` for a short smoke run).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_bet.bench import update_results

__all__ = ["PeersWorker", "peers_python", "run"]

WORKER = Path(__file__).with_name("peers_worker.py")
INFERENCE_MODELS = {
    "digits_fcnn_64-256-256-10": ((1, 8, 8), (256, 256), 16),
    "fcnn_784-2048-2048-10": ((1, 28, 28), (2048, 2048), 255),
}
SWEEP_MODEL = ((1, 28, 28), (1024, 1024), 255)


def peers_python() -> Path:
    """The peers venv's interpreter: ``$LIGHTNING_BET_PEERS_PYTHON``, else ``.venv-peers``.

    Raises:
        FileNotFoundError: naming ``make peers`` when there is none.

    """
    named = os.environ.get("LIGHTNING_BET_PEERS_PYTHON")
    path = Path(named) if named else Path(".venv-peers") / "bin" / "python"
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected the peers venv's Python at {path}, but it does not exist; run `make peers` "
            "(or set LIGHTNING_BET_PEERS_PYTHON)"
        )
    return path


class PeersWorker:
    """``peers_worker.py`` running in the peers venv; :meth:`call` sends one command."""

    def __init__(self, python: Path, cpu: int | None) -> None:
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        if cpu is not None:
            env["LIGHTNING_BET_PEERS_CPU"] = str(cpu)
        self._process = subprocess.Popen(  # noqa: S603 - our own worker script
            [str(python), "-u", str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    def call(self, cmd: str, **kwargs: Any) -> dict[str, Any]:
        """Send one command and return its answer; raise ``RuntimeError`` on a peer error."""
        stdin, stdout = self._process.stdin, self._process.stdout
        if stdin is None or stdout is None:
            raise RuntimeError("The peers worker has no pipes")
        stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"The peers worker exited during {cmd!r}")
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise RuntimeError(f"The peers worker failed on {cmd!r}: {answer['error']}")
        return answer

    def close(self) -> None:
        """Ask the worker to quit and wait for it."""
        stdin = self._process.stdin
        try:
            if stdin is not None and not stdin.closed:
                stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                stdin.close()
        finally:
            self._process.wait(timeout=60)


def _random_net(input_shape: tuple[int, ...], hidden: tuple[int, ...]) -> torch.nn.Module:
    from lightning_bet.models import build_model

    torch.manual_seed(0)
    net = build_model("fcnn", input_shape, 10, hidden).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(0.0, 2.0, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.normal_(0.0, 1.0, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
    return net


def _tflite_timer(model_bytes: bytes, batch: int, features: int) -> Any:
    """A closure timing one invoke of our TFLite model at ``batch`` on one thread."""
    from lightning_bet.deploy.tflite_export import _interpreter_api

    interpreter_cls, resolver = _interpreter_api()
    interpreter = interpreter_cls(
        model_content=model_bytes,
        num_threads=1,
        experimental_op_resolver_type=resolver.AUTO,
    )
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, [batch, features], strict=True)
    interpreter.allocate_tensors()
    x = np.random.default_rng(0).integers(0, 256, (batch, features)).astype(np.float32)

    def once() -> None:
        interpreter.set_tensor(index, x)
        interpreter.invoke()

    return once


def _c_timer(runtime: Any, q: np.ndarray) -> Any:
    """A call classifying the batch ``q`` with the C runtime's batch path (buffers bound once)."""
    q = np.ascontiguousarray(q, dtype=np.uint8)
    classes = np.empty(q.shape[0], np.int32)
    logits = np.empty((q.shape[0], runtime.num_classes), np.int32)
    return runtime.bound(q, classes, logits)


def _seconds_per_sample(call: Any, calls: int, samples: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / (calls * samples)


def _inference(worker: PeersWorker, repeats: int, quick: bool) -> dict[str, Any]:
    from lightning_bet.deploy.bitstream import write_bitstream
    from lightning_bet.deploy.c_batch import BatchRuntime
    from lightning_bet.deploy.fold import to_deploy
    from lightning_bet.deploy.tflite_export import write_tflite

    results: dict[str, Any] = {}
    for name, (shape, hidden, levels) in INFERENCE_MODELS.items():
        model = to_deploy(_random_net(shape, hidden), levels)
        bitstream = write_bitstream(model)
        runtime = BatchRuntime(bitstream)
        features = model.in_features
        sizes = [features, *hidden, 10]
        ours_tflite = {w: write_tflite(model, weights=w) for w in ("float32", "int8")}
        row: dict[str, Any] = {
            "bitstream_bytes": len(bitstream),
            "ours_tflite_bytes": {w: len(b) for w, b in ours_tflite.items()},
            "c_simd": runtime.simd,
        }
        for batch in (1, 256):
            lce = {}
            for variant in ("dense", "conv1x1"):
                key = f"{name}/{variant}/{batch}"
                built = worker.call(
                    "lce_build", name=key, sizes=sizes, variant=variant, batch=batch
                )
                lce[variant] = key
                row[f"lce_{variant}_bytes"] = built["bytes"]
                row[f"lce_{variant}_ops"] = built["ops"]
            q = np.random.default_rng(1).integers(0, levels + 1, (batch, features))
            ours_c = _c_timer(runtime, q.astype(np.uint8))
            timers = {w: _tflite_timer(b, batch, features) for w, b in ours_tflite.items()}
            budget = 0.05 if quick else 0.4  # seconds per measurement
            calls = max(1, int(budget / max(_seconds_per_sample(ours_c, 1, 1), 1e-6)))
            peer_calls = max(1, calls // (20 if quick else 8))  # the peers are slower
            samples: dict[str, list[float]] = {}
            for _ in range(repeats):
                times = {"ours_c": _seconds_per_sample(ours_c, calls, batch)}
                for variant, key in lce.items():
                    answer = worker.call("lce_time", name=key, calls=peer_calls)
                    times[f"lce_{variant}"] = answer["seconds_per_sample"]
                for w, timer in timers.items():
                    times[f"ours_tflite_{w}"] = _seconds_per_sample(timer, peer_calls, batch)
                for key, value in times.items():
                    samples.setdefault(key, []).append(value)
            best_lce = [
                min(a, b) for a, b in zip(samples["lce_dense"], samples["lce_conv1x1"], strict=True)
            ]
            ratios = [lce_t / ours for lce_t, ours in zip(best_lce, samples["ours_c"], strict=True)]
            tflite_ratios = [
                lce_t / ours
                for lce_t, ours in zip(best_lce, samples["ours_tflite_float32"], strict=True)
            ]
            row[f"batch{batch}"] = {
                "us_per_sample": {k: 1e6 * statistics.median(v) for k, v in samples.items()},
                "lce_over_ours_c": statistics.median(ratios),
                "lce_over_ours_c_range": [min(ratios), max(ratios)],
                "lce_over_ours_tflite_float32": statistics.median(tflite_ratios),
            }
        results[name] = row
    return results


def _float_weights(net: torch.nn.Module, path: Path) -> None:
    """The network as the float Linear/BatchNorm/sign stack the worker rebuilds (npz)."""
    arrays: dict[str, np.ndarray] = {}
    layers = [block.layer for block in net.blocks] + [net.head.layer]
    for i, layer in enumerate(layers):
        arrays[f"w{i}"] = layer.binary_weight().detach().numpy().astype(np.float32)
    for i, block in enumerate(net.blocks):
        for key in ("weight", "bias", "running_mean", "running_var"):
            arrays[f"bn{i}_{key}"] = getattr(block.bn, key).detach().numpy().astype(np.float32)
    np.savez(path, **arrays)


def _sweeps(worker: PeersWorker, samples: int, maps: int, quick: bool) -> dict[str, Any]:
    from lightning_bet.sweeps import sweep

    shape, hidden, levels = SWEEP_MODEL
    net = _random_net(shape, hidden)
    rng = np.random.default_rng(2)
    q = rng.integers(0, levels + 1, (samples, math.prod(shape))).astype(np.uint8)
    x = torch.from_numpy(q.astype(np.float32)) / levels
    with torch.no_grad():
        y = net(x).argmax(1)  # clean accuracy 1: the curve shows what faults cost
    results: dict[str, Any] = {"samples": samples, "maps": maps, "input": "q / 255"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _float_weights(net, folder / "weights.npz")
        np.save(folder / "x.npy", q)
        np.save(folder / "y.npy", y.numpy())
        files = {
            key: str(folder / f"{key}.{ext}")
            for key, ext in (("weights", "npz"), ("x", "npy"), ("y", "npy"))
        }
        for p in (0.01, 0.05, 0.1):
            start = time.perf_counter()
            ours = sweep(net, (x, y), error_rates=[p], realizations=maps, seed=7)
            ours_seconds = (time.perf_counter() - start) / maps
            peer = worker.call("pytorchfi", **files, p=p, maps=maps, seed=7, mode="layer")
            peer_acc = np.asarray(peer["accuracies"])
            ours_acc = np.asarray(ours.accuracy[0])
            spread = math.sqrt(
                (ours_acc.var(ddof=1) + peer_acc.var(ddof=1)) / maps if maps > 1 else 0.0
            )
            entry = {
                "ours_seconds_per_map": ours_seconds,
                "pytorchfi_layer_seconds_per_map": statistics.median(peer["seconds_per_map"]),
                "ours_accuracy_mean": float(ours_acc.mean()),
                "pytorchfi_accuracy_mean": float(peer_acc.mean()),
                "accuracy_difference_in_se": (
                    float(abs(ours_acc.mean() - peer_acc.mean()) / spread) if spread else 0.0
                ),
            }
            entry["speedup_vs_pytorchfi_layer"] = (
                entry["pytorchfi_layer_seconds_per_map"] / ours_seconds
            )
            if p == 0.01:
                located = worker.call("pytorchfi", **files, p=p, maps=1, seed=7, mode="location")
                entry["pytorchfi_location_seconds_per_map"] = located["seconds_per_map"][0]
                entry["speedup_vs_pytorchfi_location"] = (
                    located["seconds_per_map"][0] / ours_seconds
                )
            results[f"p{p:g}"] = entry
    results["speedup_vs_pytorchfi_layer"] = min(
        results[f"p{p:g}"]["speedup_vs_pytorchfi_layer"] for p in (0.01, 0.05, 0.1)
    )
    return results


def run(
    out_dir: str | os.PathLike = "runs/bench",
    repeats: int = 7,
    samples: int = 10_000,
    maps: int = 8,
    quick: bool = False,
) -> dict[str, Any]:
    """Measure ours against LCE and PyTorchFI; merge into ``<out_dir>/results.json``.

    Args:
        out_dir: results folder.
        repeats: alternating pairs per inference figure (medians are reported).
        samples: inputs of the sweep comparison.
        maps: fault maps per error rate in the sweep comparison.
        quick: short timings (a smoke run; the figures are not meant to be quoted).

    Returns:
        ``{"inference": {...}, "sweep": {...}, "lce_over_ours_c_min": ..., ...}``.

    """
    python = peers_python()
    cpu = None
    if hasattr(os, "sched_getaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    worker = PeersWorker(python, cpu)
    try:
        inference = _inference(worker, repeats, quick)
        sweeps = _sweeps(worker, samples, maps, quick)
    finally:
        worker.close()
        torch.set_num_threads(threads)
    result = {
        "inference": inference,
        "sweep": sweeps,
        "lce_over_ours_c_min": min(
            row[f"batch{b}"]["lce_over_ours_c"] for row in inference.values() for b in (1, 256)
        ),
        "sweep_speedup_vs_pytorchfi_layer": sweeps["speedup_vs_pytorchfi_layer"],
        "targets": {"lce_over_ours_c_min": ">= 1.0", "sweep_speedup_vs_pytorchfi_layer": ">= 8"},
    }
    result["meets_targets"] = bool(
        result["lce_over_ours_c_min"] >= 1.0 and result["sweep_speedup_vs_pytorchfi_layer"] >= 8
    )
    update_results(out_dir, {"peers": result})
    return result


if __name__ == "__main__":
    outcome = run(quick="--quick" in sys.argv)
    print(json.dumps(outcome, indent=2))
