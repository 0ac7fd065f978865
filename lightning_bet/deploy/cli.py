"""``lightning-bet export`` and ``lightning-bet emulate`` (dispatched by ``lightning_bet.cli``).

``export``: checkpoint + recipe -> ``model.bet`` (bitstream v1; v2 for a CNN), ``model.h`` + C
runtime sources (when ``lightning_bet.deploy.c_header`` is available), ``model.tflite`` (when
``lightning_bet.deploy.tflite_export`` is available) and ``manifest.json`` (shapes, sizes,
sha256 of every file, deploy-mode test accuracy and how often each backend agrees with deploy
mode on the test set).

``emulate``: accuracy mean ± std of a bitstream under RRAM faults injected into its packed bits.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_bet._arguments import add_checkpoint_arguments, int_list, make_parser, parse
from lightning_bet._validation import check_positive_int, is_positive_int
from lightning_bet.checkpoints import load_checkpoint
from lightning_bet.deploy.bitstream import format_version, read_bitstream, write_bitstream
from lightning_bet.deploy.emulate import emulate
from lightning_bet.deploy.fold import deploy_forward, to_deploy
from lightning_bet.deploy.interpreter import run_bitstream
from lightning_bet.functional.faults import FaultModel
from lightning_bet.recipe import make_cli_quietly

__all__ = [
    "emulate_main",
    "export_demo",
    "export_main",
    "export_model",
    "load_checkpoint",
    "integer_test_split",
]


def _optional(module: str, name: str) -> Any | None:
    """``module.name`` if that module exists, else ``None``."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def integer_test_split(datamodule: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(x, q, y, input_levels)`` of a datamodule's test split, ``q`` the integer pixels.

    Raises:
        ValueError: if the datamodule has no ``input_levels`` or its inputs are not
            ``q / input_levels`` for integer ``q``.

    """
    levels = getattr(datamodule, "input_levels", None)
    if not is_positive_int(levels):
        raise ValueError(
            f"Expected the datamodule {type(datamodule).__name__} to define an int "
            f"`input_levels` >= 1 (inputs q / input_levels), but got {levels!r}"
        )
    datamodule.setup("test")
    xs, ys = [], []
    for x, y in datamodule.test_dataloader():
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    scaled = x.double() * levels
    q = scaled.round()
    if (scaled - q).abs().max() > 1e-3 or q.min() < 0 or q.max() > levels:
        raise ValueError(
            f"Expected the test inputs of {type(datamodule).__name__} to be q / {levels} with "
            f"integer q in [0, {levels}] (deploy mode needs integer pixels), but they are not"
        )
    return x, q.to(torch.int64), y, levels


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _agreement(logits: np.ndarray | None, reference: np.ndarray) -> float | None:
    """Fraction of samples whose integer logits equal the reference's (``None``: no backend)."""
    if logits is None:
        return None
    return float(np.mean(np.all(np.asarray(logits) == reference, axis=1)))


def export_model(
    ckpt: str | os.PathLike,
    config: str | os.PathLike,
    out_dir: str | os.PathLike,
    tflite_weights: str = "float32",
    trust: bool = False,
    arg_names: tuple[str, str] = ("ckpt", "config"),
) -> dict[str, Any]:
    """Export a trained BNN (dense or convolutional) and check every backend against deploy mode.

    Everything is written into a temporary folder next to ``out_dir`` and moved into place only
    when complete: after an error (an unsupported model, a bad checkpoint, a full disk) nothing
    new is left in ``out_dir``. A new ``out_dir`` is created by one rename; into an existing one
    each file is moved (atomically replacing an older export's file of the same name).

    Args:
        ckpt: the checkpoint.
        config: its recipe.
        out_dir: destination folder (created).
        tflite_weights: ``"float32"`` or ``"int8"``: how ``model.tflite`` stores its weights
            (int8 is 4x smaller, behind a builtin ``DEQUANTIZE``; both are exact).
        trust: load a checkpoint needing types outside the safe allow-list
            (:func:`~lightning_bet.checkpoints.read_checkpoint`).
        arg_names: how error messages name ``ckpt`` and ``config``.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    """
    if tflite_weights not in ("float32", "int8"):
        raise ValueError(
            f"Expected `tflite_weights` to be 'float32' or 'int8', but got {tflite_weights!r}"
        )
    module, datamodule = load_checkpoint(ckpt, config, arg_names, trust=trust)
    x, q, y, levels = integer_test_split(datamodule)
    model = to_deploy(module.net, levels)
    with _staging(Path(out_dir)) as staging:
        manifest = _write_export(module.net, model, x, q, y, levels, staging, tflite_weights)
        manifest.update({"checkpoint": str(ckpt), "config": str(config)})
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary folder next to ``out``, moved into ``out`` when the block succeeds."""
    missing = out.parent
    while not missing.parent.exists() and missing.parent != missing:
        missing = missing.parent
    created = None if missing.exists() else missing
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            if not out.is_dir():
                raise NotADirectoryError(
                    f"Expected `out` to be a folder, but {str(out)!r} is a file"
                )
            for path in sorted(staging.iterdir()):
                os.replace(path, out / path.name)
        else:
            os.replace(staging, out)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _native_stderr_hidden() -> Iterator[None]:
    """Hide what native code writes to file descriptor 2 (Python exceptions still propagate)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _write_export(
    net: torch.nn.Module,
    model: Any,
    x: torch.Tensor,
    q: torch.Tensor,
    y: torch.Tensor,
    levels: int,
    out: Path,
    tflite_weights: str,
) -> dict[str, Any]:
    """Write bitstream, C package and TFLite into ``out``; the manifest (not yet written)."""
    data = write_bitstream(model)
    (out / "model.bet").write_bytes(data)
    files = [out / "model.bet"]

    with torch.no_grad():
        float_pred = net(x).argmax(1).numpy()
    reference = deploy_forward(model, q).numpy()
    q8 = q.numpy().astype(np.uint8) if levels <= 255 else q.numpy()
    numpy_logits = run_bitstream(data, q8)
    c_logits = tflite_logits = None

    write_c_package = _optional("lightning_bet.deploy.c_header", "write_c_package")
    if write_c_package is None:
        warnings.warn("lightning_bet.deploy.c_header is not available: no C export", stacklevel=2)
    else:
        info = write_c_package(data, out)
        files += [Path(info["header"]), *map(Path, info["sources"])]
        run_c = _optional("lightning_bet.deploy.c_runner", "run_c")
        if run_c is not None and levels <= 255:
            try:
                _, c_logits = run_c(data, q8)
            except (RuntimeError, OSError) as error:  # no compiler on this machine
                warnings.warn(f"C runtime not evaluated: {error}", stacklevel=2)

    write_tflite = _optional("lightning_bet.deploy.tflite_export", "write_tflite")
    if write_tflite is None:
        warnings.warn(
            "lightning_bet.deploy.tflite_export is not available: no TFLite", stacklevel=2
        )
    else:
        write_tflite(model, out / "model.tflite", weights=tflite_weights)
        files.append(out / "model.tflite")
        run_tflite = _optional("lightning_bet.deploy.tflite_export", "run_tflite")
        if run_tflite is not None:
            try:
                with _native_stderr_hidden():  # the runtime's "INFO: Created ... delegate"
                    _, tflite_logits = run_tflite((out / "model.tflite").read_bytes(), q.numpy())
            except (ImportError, RuntimeError, OSError) as error:  # no TFLite runtime
                warnings.warn(f"TFLite model not evaluated: {error}", stacklevel=2)

    labels = y.numpy()
    deploy_pred = reference.argmax(1)
    return {
        "format_version": format_version(model),
        "checkpoint": None,
        "config": None,
        "input_shape": list(model.input_shape),
        "input_levels": model.input_levels,
        "scale": model.scale,
        "tflite_weights": tflite_weights,
        "layers": [list(layer.shape) for layer in model.layers],
        "files": {
            path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
            for path in sorted(set(files))
        },
        "test_samples": int(labels.size),
        "accuracy": {
            "float": float(np.mean(float_pred == labels)),
            "deploy": float(np.mean(deploy_pred == labels)),
        },
        "agreement": {
            "deploy_vs_float_predictions": float(np.mean(deploy_pred == float_pred)),
            "numpy": _agreement(numpy_logits, reference),
            "c": _agreement(c_logits, reference),
            "tflite": _agreement(tflite_logits, reference),
        },
    }


def export_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``lightning-bet export --ckpt CKPT --config RECIPE --out DIR [--tflite-weights int8]``."""
    parser = make_parser(
        "export",
        "Export a trained BNN (dense or convolutional): bitstream, C header, TFLite, manifest. "
        "The files appear in --out only when all of them are written.",
    )
    add_checkpoint_arguments(parser, "checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--tflite-weights",
        choices=("float32", "int8"),
        default="float32",
        help="weights of model.tflite: float32, or int8 (4x smaller, behind DEQUANTIZE; exact)",
    )
    args = parse(parser, argv)
    manifest = export_model(
        args.ckpt,
        args.config,
        args.out,
        args.tflite_weights,
        args.trust_checkpoint,
        ("--ckpt", "--config"),
    )
    agreement = ", ".join(
        f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in manifest["agreement"].items()
    )
    print(
        f"wrote {args.out}: model.bet {manifest['files']['model.bet']['bytes']} bytes; deploy "
        f"accuracy {manifest['accuracy']['deploy']:.4f}; agreement with deploy mode: {agreement}"
    )
    return manifest


def _emulation_data(data: str) -> tuple[np.ndarray, np.ndarray, int]:
    if data == "digits":
        from lightning_bet.data.digits import DIGITS_LEVELS, load_digits_splits

        x, y = load_digits_splits()["test"]
        return (x * DIGITS_LEVELS).round().to(torch.int64).numpy(), y.numpy(), DIGITS_LEVELS
    if not Path(data).is_file():
        raise ValueError(
            f"Expected `data` to be 'digits' or a recipe/datamodule config file, but got {data!r}"
        )
    datamodule = make_cli_quietly(data).datamodule
    _, q, y, levels = integer_test_split(datamodule)
    return q.numpy(), y.numpy(), levels


def emulate_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``lightning-bet emulate DIR/model.bet --p 0.01 --realizations R --data digits|CONFIG``."""
    parser = make_parser(
        "emulate", "Accuracy of a bitstream under RRAM bit errors injected into its packed bits."
    )
    parser.add_argument("bitstream", help="a model.bet file")
    parser.add_argument("--p", type=float, default=0.01, help="symmetric bit error rate")
    parser.add_argument(
        "--p01", type=float, default=None, help="asymmetric: rate of +1 -> -1 (stored 0 -> 1)"
    )
    parser.add_argument(
        "--p10", type=float, default=None, help="asymmetric: rate of -1 -> +1 (stored 1 -> 0)"
    )
    parser.add_argument(
        "--stuck-at-0", type=float, default=0.0, help="fraction of cells stuck at bit 0 (+1)"
    )
    parser.add_argument(
        "--stuck-at-1", type=float, default=0.0, help="fraction of cells stuck at bit 1 (-1)"
    )
    parser.add_argument(
        "--realizations", "-R", type=int, default=10, help="fault maps (fixed semantics)"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed of the fault maps")
    parser.add_argument(
        "--key",
        type=float,
        default=None,
        help="seed key (default: p for symmetric flips; give the sweep's p for other models)",
    )
    parser.add_argument(
        "--layers", type=int_list, default=None, help="comma list of layer indices (default: all)"
    )
    parser.add_argument("--data", default="digits", help="'digits' or a recipe YAML")
    parser.add_argument(
        "--backend", choices=("numpy", "c"), default="numpy", help="who runs the bitstream"
    )
    args = parse(
        parser, argv, renamed={"--stuck_at_0": "--stuck-at-0", "--stuck_at_1": "--stuck-at-1"}
    )
    check_positive_int("realizations", args.realizations, "an int >= 1")
    asymmetric = args.p01 is not None or args.p10 is not None
    fault_model = FaultModel(
        p=0.0 if asymmetric else args.p,
        p01=args.p01,
        p10=args.p10,
        stuck_at_0=args.stuck_at_0,
        stuck_at_1=args.stuck_at_1,
    )
    path = Path(args.bitstream)
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected `bitstream` to be an existing file, but got {str(path)!r}"
        )
    data = path.read_bytes()
    model = read_bitstream(data)
    q, y, levels = _emulation_data(args.data)
    if levels != model.input_levels or q.reshape(len(q), -1).shape[1] != model.in_features:
        raise ValueError(
            f"Expected data with {model.in_features} pixels of {model.input_levels} levels for "
            f"{str(path)!r}, but {args.data!r} has {q.reshape(len(q), -1).shape[1]} pixels of "
            f"{levels} levels"
        )
    if args.backend == "c":
        from lightning_bet.deploy.c_runner import evaluate_bitstreams_c
        from lightning_bet.deploy.emulate import faulty_bitstreams

        streams = list(
            faulty_bitstreams(
                data, fault_model, args.realizations, args.seed, args.key, layers=args.layers
            )
        )
        accuracies = evaluate_bitstreams_c(streams, q, y)
        std = float(accuracies.std(ddof=1)) if accuracies.size > 1 else 0.0
        mean = float(accuracies.mean())
    else:
        result = emulate(
            data,
            q,
            y,
            fault_model,
            args.realizations,
            args.seed,
            args.key,
            layers=args.layers,
            progress=True,
        )
        accuracies, mean, std = result.accuracies, result.mean, result.std
    rates = f"p={args.p}" if not asymmetric else f"p01={args.p01}, p10={args.p10}"
    print(
        f"accuracy at {rates} over {args.realizations} realizations ({args.backend}): "
        f"{mean:.4f} ± {std:.4f}"
    )
    return {"mean": mean, "std": std, "accuracies": accuracies.tolist()}


def export_demo(
    ckpt_path: str | os.PathLike,
    config_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    p: float = 0.01,
    realizations: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Export, check every backend and emulate faults: the numbers ``make demo`` shows.

    Args:
        ckpt_path: checkpoint.
        config_path: its recipe.
        out_dir: export folder.
        p: symmetric bit error rate for the emulation.
        realizations: fault maps.
        seed: base seed of the fault maps.

    Returns:
        ``{"bitstream_bytes", "agree_numpy", "agree_c", "agree_tflite",
        "emulated": {"p", "mean", "std"}}``; agreements are fractions of test samples whose
        integer logits equal deploy mode's (``None`` where a backend is unavailable).

    """
    manifest = export_model(ckpt_path, config_path, out_dir)
    _, datamodule = load_checkpoint(ckpt_path, config_path)
    _, q, y, _ = integer_test_split(datamodule)
    data = (Path(out_dir) / "model.bet").read_bytes()
    result = emulate(data, q.numpy(), y.numpy(), FaultModel(p=p), realizations, seed)
    agreement = manifest["agreement"]
    return {
        "bitstream_bytes": manifest["files"]["model.bet"]["bytes"],
        "agree_numpy": agreement["numpy"],
        "agree_c": agreement["c"],
        "agree_tflite": agreement["tflite"],
        "emulated": {"p": p, "mean": result.mean, "std": result.std},
    }
