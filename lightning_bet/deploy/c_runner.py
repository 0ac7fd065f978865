"""Build and drive the portable C runtime (``export/runtime/``) from Python.

The host harness ``bet_host`` is the C runtime linked with a small command line driver
(``bet_host_main.c``). :func:`build_host` compiles it once per source/compiler/flags hash into a
cache folder; :func:`run_c` classifies samples with it, :func:`evaluate_bitstreams_c` measures the
accuracy of many (e.g. fault-emulated) bitstreams in one process call, and :func:`check_bitstream_c`
returns the runtime's verdict on a file. :func:`footprint` reports flash and RAM of a model on a
device.

The runtime sources are located by :func:`runtime_dir` (``export/runtime``, shipped with the
package, or the folder named by the ``LIGHTNING_BET_RUNTIME_DIR`` environment variable).
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lightning_bet.deploy.model import DeployModel
from lightning_bet.resources import resource_dir

if TYPE_CHECKING:
    from lightning_bet.deploy.bitstream import PackedModel

__all__ = [
    "HOST_CFLAGS",
    "ILP32_CFLAGS",
    "MCU_MACHINES",
    "REFERENCE_CNNS",
    "REFERENCE_FCNNS",
    "RUNTIME_SOURCES",
    "BetRuntimeError",
    "BetStatus",
    "build_cached",
    "build_host",
    "check_bitstream_c",
    "compiler",
    "evaluate_bitstreams_c",
    "footprint",
    "footprint_markdown",
    "mcu_toolchain",
    "reference_footprints",
    "run_c",
    "run_mcu_emulated",
    "runtime_dir",
]

#: The files of the device runtime (what a firmware project compiles).
RUNTIME_SOURCES = ("bet_runtime.h", "bet_runtime.c")
#: The host harness's own source.
HOST_SOURCES = (*RUNTIME_SOURCES, "bet_host_main.c")
#: Flags of the host build: strict C99, every warning an error.
HOST_CFLAGS = ("-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-O2")

_HEADER_BYTES = 48
#: layer-table entry bytes per format version (FORMAT.md); a reader rejects other versions
_ENTRY_BYTES = {1: 32, 2: 48}


class BetStatus(enum.IntEnum):
    """Result codes of ``bet_model_init`` (``enum bet_status`` in ``bet_runtime.h``)."""

    OK = 0
    ERR_NULL = 1
    ERR_TRUNCATED = 2
    ERR_TRAILING = 3
    ERR_MAGIC = 4
    ERR_VERSION = 5
    ERR_HEADER_CRC = 6
    ERR_FLAGS = 7
    ERR_VALUE = 8
    ERR_TOO_MANY_LAYERS = 9
    ERR_TABLE_CRC = 10
    ERR_LAYOUT = 11
    ERR_SECTION_CRC = 12
    ERR_FILE_CRC = 13
    ERR_PADDING = 14


class BetRuntimeError(RuntimeError):
    """The C runtime rejected a bitstream (``status`` says why) or the harness failed."""

    def __init__(self, message: str, status: BetStatus | None = None) -> None:
        super().__init__(message)
        self.status = status


def runtime_dir() -> Path:
    """The folder holding the C runtime sources.

    Searched in order: the ``LIGHTNING_BET_RUNTIME_DIR`` environment variable, and
    ``export/runtime`` of the package data (:func:`lightning_bet.resources.resource_dir`: in an
    installed wheel or in the source tree).

    Returns:
        The folder; it holds every file of :data:`HOST_SOURCES`.

    Raises:
        FileNotFoundError: if no candidate holds the sources.

    """
    candidates = []
    if os.environ.get("LIGHTNING_BET_RUNTIME_DIR"):
        candidates.append(Path(os.environ["LIGHTNING_BET_RUNTIME_DIR"]))
    candidates.append(resource_dir("export") / "runtime")
    for candidate in candidates:
        if all((candidate / name).is_file() for name in HOST_SOURCES):
            return candidate
    raise FileNotFoundError(
        "Expected the C runtime sources "
        + ", ".join(HOST_SOURCES)
        + " in one of "
        + ", ".join(str(c) for c in candidates)
        + "; set LIGHTNING_BET_RUNTIME_DIR to the folder holding them"
    )


def compiler() -> str:
    """The C compiler: ``$CC`` if set, else the first of ``cc``, ``gcc``, ``clang`` on the PATH.

    Raises:
        RuntimeError: if there is none.

    """
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(f"Expected a C compiler ({' or '.join(names)}) on the PATH, but found none")


def _default_cache_dir() -> Path:
    root = os.environ.get("LIGHTNING_BET_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(root) / "lightning-bet" if root else Path.home() / ".cache" / "lightning-bet"


def _compile(args: Sequence[str], what: str) -> None:
    result = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"Compiling {what} failed ({' '.join(args)}):\n{result.stdout}{result.stderr}"
        )


def build_host(
    cache_dir: str | os.PathLike | None = None, cflags: Sequence[str] = HOST_CFLAGS
) -> Path:
    """Compile the host harness ``bet_host`` (once per sources, compiler and flags).

    Args:
        cache_dir: folder for the executable; default ``$LIGHTNING_BET_CACHE/lightning-bet``,
            else ``$XDG_CACHE_HOME/lightning-bet``, else ``~/.cache/lightning-bet``.
        cflags: compiler flags (default :data:`HOST_CFLAGS`: C99, ``-Wall -Wextra -Werror``).

    Returns:
        Path of the executable, named by a hash of sources, compiler and flags, so a changed
        source is rebuilt and concurrent builds never see a half-written file.

    Raises:
        RuntimeError: without a C compiler, or when compilation fails (the message holds the
            compiler output).

    """
    return build_cached(HOST_SOURCES, cflags, "bet_host", "the C runtime host harness", cache_dir)


def build_cached(
    sources: Sequence[str],
    cflags: Sequence[str],
    name: str,
    what: str,
    cache_dir: str | os.PathLike | None = None,
    suffix: str = "",
) -> Path:
    """Compile the runtime files ``sources`` into ``<cache>/<name>-<hash><suffix>`` once.

    The hash covers the compiler, the flags and every source (headers included), so a changed
    source is rebuilt; the output is written in a temporary folder and renamed into place, so
    concurrent builds never see a half-written file.

    Args:
        sources: file names in :func:`runtime_dir` (the ``.c`` ones are compiled).
        cflags: compiler flags.
        name: stem of the output file.
        what: how a compiler error names what was being built.
        cache_dir: see :func:`build_host`.
        suffix: file name suffix (e.g. ``".so"``).

    Returns:
        The path of the built file.

    """
    cc = compiler()
    source_dir = runtime_dir()
    digest = hashlib.sha256()
    for part in (cc, *cflags):
        digest.update(part.encode() + b"\0")
    for source in sources:
        digest.update((source_dir / source).read_bytes())
    folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}-{digest.hexdigest()[:16]}{suffix}"
    if target.is_file() and os.access(target, os.R_OK):
        return target
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        out = Path(tmp) / f"{name}{suffix}"
        files = [str(source_dir / source) for source in sources if source.endswith(".c")]
        _compile([cc, *cflags, "-o", str(out), *files], what)
        os.replace(out, target)
    return target


def _as_bytes(name: str, data: object) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"Expected `{name}` to be bytes, but got {type(data).__name__}")
    return bytes(data)


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little")


def _entry_bytes(bitstream: bytes) -> int:
    """Layer-table entry size of the bitstream's version (v1's for unknown versions)."""
    version = int.from_bytes(bitstream[4:6], "little") if len(bitstream) >= 6 else 1
    return _ENTRY_BYTES.get(version, _ENTRY_BYTES[1])


def _declared_inputs(bitstream: bytes) -> int | None:
    """in_features of layer 0 as the layer table states it (None if the file is too short)."""
    if len(bitstream) < _HEADER_BYTES + _entry_bytes(bitstream):
        return None
    return _u32(bitstream, _HEADER_BYTES + 12)


def _declared_classes(bitstream: bytes) -> int:
    """out_features of the output layer of a bitstream the C runtime accepted."""
    last = _u32(bitstream, 12) - 1
    return _u32(bitstream, _HEADER_BYTES + _entry_bytes(bitstream) * last + 8)


def _as_pixels(q: object, features: int | None) -> np.ndarray:
    """Validate integer pixels ``q`` and return them as C-contiguous uint8 ``(N, features)``."""
    if hasattr(q, "detach"):
        q = q.detach().cpu().numpy()
    array = np.asarray(q)
    if array.ndim < 2:
        raise ValueError(
            f"Expected `q` to have shape (N, features) or (N, *input_shape), but got {array.shape}"
        )
    flat = array.reshape(array.shape[0], int(np.prod(array.shape[1:])))
    if features is not None and flat.shape[1] != features:
        raise ValueError(
            f"Expected `q` to have {features} features per sample (the bitstream's layer 0), but "
            f"got shape {array.shape}"
        )
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(f"Expected `q` to hold integer pixels, but got dtype {array.dtype}")
    if np.issubdtype(flat.dtype, np.floating) and (flat != np.round(flat)).any():
        raise ValueError("Expected `q` to hold integer pixels, but got non-integer values")
    if flat.size and (flat.min() < 0 or flat.max() > 255):
        raise ValueError(
            f"Expected `q` to hold pixels in [0, 255] (uint8), but got values in "
            f"[{flat.min()}, {flat.max()}]"
        )
    return np.ascontiguousarray(flat, dtype=np.uint8)


def _rejected(stderr: str) -> BetRuntimeError:
    match = re.search(r"rejected: (\d+) (.*)", stderr)
    if match:
        status = BetStatus(int(match.group(1)))
        return BetRuntimeError(
            f"The C runtime rejected the bitstream: {status.name} ({match.group(2).strip()})",
            status,
        )
    return BetRuntimeError(f"The C runtime harness failed: {stderr.strip()}")


def run_c(
    bitstream: bytes,
    q: np.ndarray,
    *,
    check_crc: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Classify samples with the C runtime.

    Args:
        bitstream: a bitstream (format v1 or v2).
        q: ``(N, in_features)`` or ``(N, *input_shape)`` integer pixels in ``[0, 255]`` (numpy
            array or tensor; the bitstream's ``input_levels`` bounds meaningful values).
        check_crc: verify every CRC (``False`` runs a deliberately faulted file as stored).
        cache_dir: where the harness is built (see :func:`build_host`).

    Returns:
        ``(preds, logits)``: int64 ``(N,)`` predicted classes and int64 ``(N, num_classes)``
        integer logits.

    Raises:
        BetRuntimeError: the runtime rejected the bitstream (``.status`` is the
            :class:`BetStatus`).

    Example:
        >>> preds, logits = run_c(write_bitstream(model), q)  # doctest: +SKIP

    """
    bitstream = _as_bytes("bitstream", bitstream)
    pixels = _as_pixels(q, _declared_inputs(bitstream))
    host = build_host(cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "model.bet").write_bytes(bitstream)
        pixels.tofile(folder / "input.u8")
        args = [str(host), "predict", "model.bet", "input.u8", "preds.i32", "logits.i32"]
        if not check_crc:
            args.append("--no-crc")
        result = subprocess.run(args, cwd=folder, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise _rejected(result.stderr)
        preds = np.fromfile(folder / "preds.i32", dtype="<i4").astype(np.int64)
        logits = np.fromfile(folder / "logits.i32", dtype="<i4").astype(np.int64)
    return preds, logits.reshape(len(pixels), _declared_classes(bitstream))


def evaluate_bitstreams_c(
    bitstreams: Sequence[bytes],
    q: np.ndarray,
    y: np.ndarray,
    *,
    check_crc: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Accuracy of each of many bitstreams on the same samples, in one harness process.

    Meant for fault emulation: faulted copies of one model (e.g. from
    ``lightning_bet.deploy.emulate``) are all evaluated by one ``bet_host accuracy`` call.

    Args:
        bitstreams: bitstreams (format v1 or v2) with the same input size.
        q: ``(N, in_features)`` or ``(N, *input_shape)`` integer pixels in ``[0, 255]``.
        y: ``(N,)`` integer labels in ``[0, 255]``.
        check_crc: verify every CRC; pass ``False`` for files whose bits were faulted without
            refreshing their checksums.
        cache_dir: where the harness is built (see :func:`build_host`).

    Returns:
        float64 ``(len(bitstreams),)`` accuracies in ``[0, 1]``.

    Raises:
        BetRuntimeError: if the runtime rejects one of the bitstreams (the message names it).

    """
    if isinstance(bitstreams, bytes | bytearray | memoryview) or not isinstance(
        bitstreams, Sequence
    ):
        raise TypeError(
            f"Expected `bitstreams` to be a sequence of bytes, but got {type(bitstreams).__name__}"
        )
    blobs = [_as_bytes(f"bitstreams[{i}]", b) for i, b in enumerate(bitstreams)]
    if not blobs:
        return np.zeros(0, dtype=np.float64)
    pixels = _as_pixels(q, _declared_inputs(blobs[0]))
    labels = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y)
    if labels.shape != (len(pixels),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Expected `y` to be integer labels of shape ({len(pixels)},), but got shape "
            f"{labels.shape} and dtype {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(
            f"Expected `y` in [0, 255], but got values in [{labels.min()}, {labels.max()}]"
        )
    host = build_host(cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pixels.tofile(folder / "input.u8")
        labels.astype(np.uint8).tofile(folder / "labels.u8")
        names = []
        for i, blob in enumerate(blobs):
            names.append(f"m{i}.bet")
            (folder / names[-1]).write_bytes(blob)
        args = [str(host), "accuracy", "input.u8", "labels.u8", *names]
        if not check_crc:
            args.append("--no-crc")
        result = subprocess.run(args, cwd=folder, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BetRuntimeError(f"The C runtime harness failed: {result.stderr.strip()}")
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    if len(rows) != len(blobs):
        raise BetRuntimeError(f"Expected {len(blobs)} result lines, but got {result.stdout!r}")
    accuracies = np.zeros(len(blobs), dtype=np.float64)
    for i, (status, correct, total) in enumerate(rows):
        if int(status) != BetStatus.OK:
            raise BetRuntimeError(
                f"The C runtime rejected bitstreams[{i}]: {BetStatus(int(status)).name}",
                BetStatus(int(status)),
            )
        accuracies[i] = int(correct) / int(total) if int(total) else float("nan")
    return accuracies


def check_bitstream_c(
    bitstream: bytes, *, check_crc: bool = True, cache_dir: str | os.PathLike | None = None
) -> BetStatus:
    """The C runtime's verdict on a bitstream (``bet_model_init``).

    Args:
        bitstream: the bytes to validate.
        check_crc: verify every CRC.
        cache_dir: where the harness is built (see :func:`build_host`).

    Returns:
        :attr:`BetStatus.OK` or the error code.

    """
    bitstream = _as_bytes("bitstream", bitstream)
    host = build_host(cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.bet"
        path.write_bytes(bitstream)
        args = [str(host), "info", str(path)] + ([] if check_crc else ["--no-crc"])
        result = subprocess.run(args, capture_output=True, text=True, check=False)
    match = re.match(r"status (\d+) ", result.stdout)
    if not match:
        raise BetRuntimeError(f"The C runtime harness failed: {result.stderr.strip()}")
    return BetStatus(int(match.group(1)))


def _object_sizes(cc: str, cflags: Sequence[str], cache_dir: Path) -> dict[str, int]:
    """Code size of ``bet_runtime.o`` and ``sizeof(bet_model)`` as built by ``cc cflags``.

    Both are read from object files (``size`` and ``nm -S``), so a cross compiler gives the
    target's numbers without running anything.
    """
    tools = {}
    for tool in ("size", "nm"):
        found = shutil.which(os.environ.get(tool.upper(), tool))
        if found is None:
            raise RuntimeError(f"Expected the binutils `{tool}` tool on the PATH, but found none")
        tools[tool] = found
    source_dir = runtime_dir()
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        folder = Path(tmp)
        obj = folder / "bet_runtime.o"
        source = str(source_dir / "bet_runtime.c")
        try:  # -fstack-usage writes bet_runtime.su next to the object (GCC, recent Clang)
            _compile([cc, *cflags, "-fstack-usage", "-c", source, "-o", str(obj)], "")
        except RuntimeError:
            _compile([cc, *cflags, "-c", source, "-o", str(obj)], "the C runtime")
        su = obj.with_suffix(".su")
        frames = su.read_text().splitlines() if su.is_file() else []
        stack = sum(int(line.split("\t")[1]) for line in frames) if frames else -1
        probe = folder / "probe.c"
        probe.write_text('#include "bet_runtime.h"\nbet_model bet_footprint_model;\n')
        _compile(
            [
                cc,
                *cflags,
                "-fno-common",
                "-I",
                str(source_dir),
                "-c",
                str(probe),
                "-o",
                str(folder / "probe.o"),
            ],
            "the footprint probe",
        )
        sizes = subprocess.run(
            [tools["size"], str(obj)], capture_output=True, text=True, check=True
        ).stdout
        symbols = subprocess.run(
            [tools["nm"], "-S", str(folder / "probe.o")], capture_output=True, text=True, check=True
        ).stdout
    text, data, bss = (int(v) for v in sizes.splitlines()[1].split()[:3])
    match = re.search(r"^[0-9a-fA-F]+ ([0-9a-fA-F]+) \w bet_footprint_model$", symbols, re.M)
    if match is None:
        raise RuntimeError(f"Could not read sizeof(bet_model) from nm output: {symbols!r}")
    return {
        "text": text,
        "data": data,
        "bss": bss,
        "model_struct": int(match.group(1), 16),
        "stack": stack,
    }


def _packed(model: DeployModel | bytes) -> tuple[PackedModel, int]:
    """The packed model (as stored) and its bitstream's size, from a model or its bitstream."""
    from lightning_bet.deploy.bitstream import parse_bitstream, write_bitstream

    data = write_bitstream(model) if isinstance(model, DeployModel) else _as_bytes("model", model)
    return parse_bitstream(data), len(data)


def footprint(
    model: DeployModel | bytes,
    *,
    cflags: Sequence[str] = ("-std=c99", "-Os"),
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, int | str]:
    """Flash and RAM a model needs with the C runtime on a device.

    Flash is the bitstream (read in place: weights, thresholds, directions, header, table and
    CRCs) plus the runtime's code, measured with ``size`` on ``bet_runtime.o`` compiled with
    ``cflags``. RAM is the scratch buffers, the logits and the parsed ``bet_model`` struct
    (``sizeof`` read from an object file built with the same flags); the stack and the input
    pixels are reported apart. The tools are ``$CC`` (see :func:`compiler`), ``$SIZE`` and ``$NM``
    (default ``size``, ``nm``). The host compiler gives host numbers (``-m32`` approximates a
    32-bit core); ``CC=arm-none-eabi-gcc`` with ``cflags=("-std=c99", "-mcpu=cortex-m4",
    "-mthumb", "-Os")`` gives a Cortex-M4's.

    Args:
        model: a :class:`DeployModel` or its bitstream.
        cflags: flags for the code-size build.
        cache_dir: scratch folder for the object files (default: the harness cache).

    Returns:
        Byte counts: ``weights``, ``thresholds`` (thresholds + directions), ``format_overhead``
        (header, layer table, CRCs), ``bitstream``, ``code`` (text + data of the object),
        ``flash`` (bitstream + code), ``scratch``, ``logits``, ``model_struct``, ``ram`` (the
        three summed), ``stack`` (sum of the stack frames of every runtime function: a bound,
        as nothing recurses; -1 where the compiler lacks ``-fstack-usage``), ``input`` (pixels
        of one sample); and ``compiler`` and ``cflags``.

    Example:
        >>> footprint(model)["flash"]  # doctest: +SKIP
        107204

    """
    from lightning_bet.deploy.c_header import scratch_layout

    packed, bitstream_bytes = _packed(model)
    weights = sum(layer.weight_words.nbytes for layer in packed.layers)
    thresholds = sum(
        layer.threshold.nbytes + layer.direction_words.nbytes for layer in packed.layers[:-1]
    )
    scratch = 4 * scratch_layout(packed)["scratch_words"]
    logits = 4 * packed.layers[-1].out_features
    cc = compiler()
    folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    sizes = _object_sizes(cc, cflags, folder)
    code = sizes["text"] + sizes["data"]
    return {
        "weights": weights,
        "thresholds": thresholds,
        "format_overhead": bitstream_bytes - weights - thresholds,
        "bitstream": bitstream_bytes,
        "code": code,
        "flash": bitstream_bytes + code,
        "scratch": scratch,
        "logits": logits,
        "model_struct": sizes["model_struct"],
        "ram": scratch + logits + sizes["model_struct"] + sizes["bss"],
        "stack": sizes["stack"],
        "input": packed.layers[0].in_features,
        "compiler": Path(cc).name,
        "cflags": " ".join(cflags),
    }


#: The reference fully connected networks of METHOD §1: (input shape, hidden widths, levels).
REFERENCE_FCNNS: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]] = {
    "digits FCNN 64-256-256-10": ((1, 8, 8), (256, 256), 16),
    "FashionMNIST FCNN 784-2048-2048-10": ((1, 28, 28), (2048, 2048), 255),
}

#: The reference CNNs: (input shape, channels of the ``C-MP`` stages, dense widths, levels); 3x3
#: convolutions with padding 1, 2x2 max-pool before BatchNorm (``lightning_bet.models``).
REFERENCE_CNNS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]] = {
    "digits CNN C32-MP-C64-MP-FC10": ((1, 8, 8), (32, 64), (), 16),
    "FashionMNIST VGG3 C64-MP-C64-MP-FC2048-FC10": ((1, 28, 28), (64, 64), (2048,), 255),
}

#: Flags approximating a 32-bit microcontroller build with the host compiler.
ILP32_CFLAGS = ("-std=c99", "-Os", "-m32", "-ffreestanding")


def reference_footprints(
    cflags: Sequence[str] = ILP32_CFLAGS, cache_dir: str | os.PathLike | None = None
) -> dict[str, dict[str, int | str]]:
    """:func:`footprint` of each network of :data:`REFERENCE_FCNNS` and :data:`REFERENCE_CNNS`.

    Sizes depend on the shapes only (the networks are untrained).

    Args:
        cflags: flags of the code-size build (default :data:`ILP32_CFLAGS`).
        cache_dir: scratch folder for object files.

    Returns:
        ``{network name: footprint dict}``.

    """
    from lightning_bet.deploy.fold import to_deploy
    from lightning_bet.models import build_model

    networks = {
        name: (build_model("fcnn", shape, 10, hidden), levels)
        for name, (shape, hidden, levels) in REFERENCE_FCNNS.items()
    }
    networks.update(
        (name, (build_model("cnn", shape, 10, hidden=dense, channels=channels), levels))
        for name, (shape, channels, dense, levels) in REFERENCE_CNNS.items()
    )
    return {
        name: footprint(to_deploy(net, levels), cflags=cflags, cache_dir=cache_dir)
        for name, (net, levels) in networks.items()
    }


def footprint_markdown(reports: dict[str, dict[str, int | str]]) -> str:
    """A Markdown table (bytes) of :func:`footprint` results, one row per network."""
    columns = [
        ("weights", "weights"),
        ("thresholds", "thresholds + directions"),
        ("format_overhead", "header/table/CRCs"),
        ("code", "code"),
        ("flash", "**flash**"),
        ("scratch", "scratch"),
        ("logits", "logits"),
        ("model_struct", "bet_model"),
        ("ram", "**RAM**"),
        ("stack", "stack bound"),
        ("input", "input pixels"),
    ]
    lines = [
        "| network | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, report in reports.items():
        lines.append(f"| {name} | " + " | ".join(f"{report[key]:,}" for key, _ in columns) + " |")
    return "\n".join(lines)


#: QEMU machines with 4 MiB of code memory at 0 and 4 MiB of RAM at 0x20000000 (``mcu/mps2.ld``).
MCU_MACHINES: dict[str, str] = {
    "cortex-m3": "mps2-an385",
    "cortex-m4": "mps2-an386",
    "cortex-m7": "mps2-an500",
}


def mcu_toolchain() -> tuple[str, str] | None:
    """``(arm-none-eabi-gcc, qemu-system-arm)`` paths, or ``None`` if either is missing."""
    cc = shutil.which(os.environ.get("ARM_CC", "arm-none-eabi-gcc"))
    qemu = shutil.which(os.environ.get("QEMU_ARM", "qemu-system-arm"))
    return (cc, qemu) if cc and qemu else None


def run_mcu_emulated(
    bitstream: bytes,
    q: np.ndarray,
    *,
    cpu: str = "cortex-m4",
    cflags: Sequence[str] = ("-Os", "-DBET_SWAR_POPCOUNT"),
    timeout: float = 120.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Classify samples on an emulated Cortex-M: cross-compiled firmware run in QEMU.

    The firmware is ``export/runtime/mcu`` (bare-metal startup, no libc, semihosting output)
    plus the package of :func:`~lightning_bet.deploy.c_header.write_c_package` and the samples
    as a constant array; it runs on the QEMU MPS2 board of ``cpu``.

    Args:
        bitstream: a bitstream, v1 or v2 (at most a few MiB: it is linked into code memory).
        q: ``(N, in_features)`` or ``(N, *input_shape)`` integer pixels in ``[0, 255]``.
        cpu: a key of :data:`MCU_MACHINES`.
        cflags: extra flags for ``arm-none-eabi-gcc`` (after ``-mcpu=<cpu> -mthumb``).
        timeout: seconds QEMU may run.

    Returns:
        ``(preds, logits)`` as :func:`run_c`.

    Raises:
        RuntimeError: without ``arm-none-eabi-gcc`` and ``qemu-system-arm`` (see
            :func:`mcu_toolchain`), or if building or running the firmware fails.
        BitstreamError: for an invalid bitstream (the header generator validates it).
        BetRuntimeError: the runtime on the device rejected the bitstream.

    """
    from lightning_bet.deploy.c_header import c_array, write_c_package

    if cpu not in MCU_MACHINES:
        raise ValueError(f"Expected `cpu` to be one of {list(MCU_MACHINES)}, but got {cpu!r}")
    tools = mcu_toolchain()
    if tools is None:
        raise RuntimeError(
            "Expected arm-none-eabi-gcc and qemu-system-arm on the PATH (Debian packages "
            "gcc-arm-none-eabi and qemu-system-arm), but at least one is missing"
        )
    cc, qemu = tools
    bitstream = _as_bytes("bitstream", bitstream)
    pixels = _as_pixels(q, _declared_inputs(bitstream))
    mcu = runtime_dir() / "mcu"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_c_package(bitstream, folder, name="model")
        count = len(pixels)
        body = c_array(pixels.tobytes()) if count else "    0"
        (folder / "samples.h").write_text(
            f"#define SAMPLES_COUNT {count}u\n"
            f"static const uint8_t samples[{max(pixels.size, 1)}] = {{\n{body}\n}};\n"
        )
        elf = folder / "demo.elf"
        _compile(
            [
                cc,
                "-std=c99",
                "-Wall",
                "-Wextra",
                "-Werror",
                f"-mcpu={cpu}",
                "-mthumb",
                *cflags,
                "-ffreestanding",
                "-nostdlib",
                "-T",
                str(mcu / "mps2.ld"),
                "-I",
                str(folder),
                "-I",
                str(mcu),
                str(mcu / "startup.c"),
                str(mcu / "demo_main.c"),
                str(folder / "bet_runtime.c"),
                "-lgcc",
                "-o",
                str(elf),
            ],
            "the Cortex-M firmware",
        )
        output = folder / "semihosting.txt"
        args = [qemu, "-M", MCU_MACHINES[cpu], "-nographic", "-monitor", "none", "-serial", "none"]
        args += ["-chardev", f"file,id=semihosting,path={output}"]
        args += ["-semihosting-config", "enable=on,target=native,chardev=semihosting"]
        args += ["-kernel", str(elf)]
        try:
            result = subprocess.run(
                args, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"The emulated {cpu} did not finish in {timeout} s") from error
        text = output.read_text() if output.is_file() else ""
    lines = text.splitlines()
    match = re.match(r"status (\d+)$", lines[0]) if lines else None
    if match is None:
        raise RuntimeError(f"The emulated {cpu} failed: {text[-500:]!r} {result.stderr[-500:]!r}")
    status = BetStatus(int(match.group(1)))
    if status != BetStatus.OK:
        raise BetRuntimeError(f"The C runtime rejected the bitstream: {status.name}", status)
    if result.returncode != 0 or len(lines) != count + 1:
        raise RuntimeError(f"The emulated {cpu} failed: {text[-500:]!r} {result.stderr[-500:]!r}")
    classes = _declared_classes(bitstream)
    rows = np.array([line.split() for line in lines[1:]], dtype=np.int64).reshape(
        count, 1 + classes
    )
    return rows[:, 0].copy(), rows[:, 1:].copy()
