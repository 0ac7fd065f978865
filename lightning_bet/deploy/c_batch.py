"""The exported C runtime's host batch path (``bet_batch.c``), loaded in-process with ctypes.

:class:`BatchRuntime` compiles ``bet_runtime.c`` + ``bet_batch.c`` into a shared library (once
per sources, compiler and flags, in the same cache as the host harness), parses a bitstream
with ``bet_model_init``, repacks it with ``bet_batch_init`` and classifies batches with
``bet_predict_batch``: the integer-pixel first layer as uint8 x int8 dot products and the binary
layers as XOR/popcount on 64-bit words, with the SIMD the compiler targets (``-march=native`` by
default). It is bit-identical to ``bet_predict`` (the portable per-sample path a microcontroller
runs) and to deploy mode; ``tests/test_c_batch.py`` checks both.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lightning_bet.deploy.c_runner import build_cached

__all__ = ["BATCH_CFLAGS", "BATCH_SOURCES", "BatchRuntime", "build_batch_library"]

#: Sources of the shared library (the portable runtime plus the host batch path).
BATCH_SOURCES = ("bet_runtime.h", "bet_runtime.c", "bet_batch.h", "bet_batch.c")
#: Flags of the host build: strict C99 with intrinsics, tuned for this CPU.
BATCH_CFLAGS = (
    "-std=c99",
    "-pedantic",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-O3",
    "-march=native",
    "-fPIC",
    "-shared",
)
_MODEL_BYTES = 8192  # >= sizeof(bet_model) for BET_MAX_LAYERS = 16 on 64-bit hosts
_BATCH_BYTES = 8192  # >= sizeof(bet_batch)


def build_batch_library(
    cache_dir: str | os.PathLike | None = None, cflags: Sequence[str] = BATCH_CFLAGS
) -> Path:
    """Compile ``libbet_batch`` (once per sources, compiler and flags) and return its path.

    Raises:
        RuntimeError: without a C compiler, or when compilation fails (with its output).

    """
    return build_cached(
        BATCH_SOURCES, cflags, "libbet_batch", "the C runtime batch library", cache_dir, ".so"
    )


class BatchRuntime:
    """One bitstream loaded into the C runtime's host batch path.

    Args:
        bitstream: the ``.bet`` bytes (format v1 or v2, dense layers).
        cflags: compiler flags of the library (default :data:`BATCH_CFLAGS`).

    Raises:
        ValueError: if ``bet_model_init`` or ``bet_batch_init`` rejects the bitstream (the
            message names the runtime's status).

    Example:
        >>> from lightning_bet.deploy.bitstream import write_bitstream
        >>> from lightning_bet.deploy.fold import to_deploy
        >>> from lightning_bet.models import build_model
        >>> model = to_deploy(build_model("fcnn", (1, 8, 8), 10, (32,)), 16)
        >>> runtime = BatchRuntime(write_bitstream(model))
        >>> runtime.predict(np.zeros((3, 64), np.uint8))[0].shape
        (3,)

    """

    def __init__(self, bitstream: bytes, cflags: Sequence[str] = BATCH_CFLAGS) -> None:
        if not isinstance(bitstream, bytes | bytearray | memoryview):
            raise TypeError(f"Expected `bitstream` to be bytes, but got {type(bitstream).__name__}")
        lib = ctypes.CDLL(str(build_batch_library(cflags=cflags)))
        lib.bet_model_init.restype = ctypes.c_int
        lib.bet_model_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.bet_batch_workspace_bytes.restype = ctypes.c_size_t
        lib.bet_batch_workspace_bytes.argtypes = [ctypes.c_void_p]
        lib.bet_batch_init.restype = ctypes.c_int
        lib.bet_batch_init.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_size_t]
        lib.bet_batch_scratch_bytes.restype = ctypes.c_size_t
        lib.bet_batch_scratch_bytes.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.bet_predict_batch.restype = ctypes.c_int32
        lib.bet_predict_batch.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.bet_batch_simd.restype = ctypes.c_char_p
        lib.bet_status_str.restype = ctypes.c_char_p
        lib.bet_status_str.argtypes = [ctypes.c_int]
        self._lib = lib
        self._blob = ctypes.create_string_buffer(bytes(bitstream), len(bitstream))
        self._model = ctypes.create_string_buffer(_MODEL_BYTES)
        status = lib.bet_model_init(self._model, self._blob, len(bitstream))
        if status != 0:
            raise ValueError(
                f"Expected a bitstream the C runtime accepts, but bet_model_init returned "
                f"{status} ({lib.bet_status_str(status).decode()})"
            )
        self._workspace = ctypes.create_string_buffer(lib.bet_batch_workspace_bytes(self._model))
        self._batch = ctypes.create_string_buffer(_BATCH_BYTES)
        status = lib.bet_batch_init(self._batch, self._model, self._workspace, len(self._workspace))
        if status != 0:
            raise ValueError(
                "Expected a dense model for the batch path, but bet_batch_init returned "
                f"{status} ({lib.bet_status_str(status).decode()}); use run_c for this model"
            )
        # bet_model fields: version, flags, num_layers, num_inputs, num_classes (uint32 each)
        fields = np.frombuffer(self._model.raw[:20], dtype="<u4")
        self.num_inputs = int(fields[3])
        self.num_classes = int(fields[4])
        self.simd = lib.bet_batch_simd().decode()
        self._scratch = ctypes.create_string_buffer(1)
        self._scratch_count = 0

    def _ensure_scratch(self, count: int) -> None:
        if count > self._scratch_count:
            size = self._lib.bet_batch_scratch_bytes(self._batch, count)
            self._scratch = ctypes.create_string_buffer(size)
            self._scratch_count = count

    def bound(
        self, q: np.ndarray, classes: np.ndarray, logits: np.ndarray | None
    ) -> Callable[[], None]:
        """A call of ``bet_predict_batch`` on fixed C-contiguous buffers, for timing loops.

        Args:
            q: uint8 ``(N, num_inputs)`` pixels.
            classes: int32 ``(N,)`` output.
            logits: int32 ``(N, num_classes)`` output, or ``None``.

        Returns:
            A function of no arguments that classifies ``q`` into the outputs; it holds the
            buffers' addresses (computed once) and references (kept alive).

        """
        arrays = [q, classes] + ([] if logits is None else [logits])
        dtypes = [np.uint8, np.int32, np.int32]
        for array, dtype in zip(arrays, dtypes, strict=False):
            if array.dtype != dtype or not array.flags.c_contiguous:
                raise ValueError(
                    f"Expected C-contiguous {np.dtype(dtype).name} buffers, but got "
                    f"{array.dtype} (contiguous: {array.flags.c_contiguous})"
                )
        count = q.shape[0]
        self._ensure_scratch(count)
        function = self._lib.bet_predict_batch
        args = (
            self._batch,
            q.ctypes.data,
            count,
            None if logits is None else logits.ctypes.data,
            classes.ctypes.data,
            self._scratch,
        )

        def call() -> None:
            function(*args)

        call.buffers = arrays  # type: ignore[attr-defined]  # the addresses stay valid
        return call

    def predict(self, q: np.ndarray, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Classify integer pixels.

        Args:
            q: ``(N, num_inputs)`` or ``(N, *input_shape)`` integer pixels in ``[0, 255]``.
            batch: samples per ``bet_predict_batch`` call (default: all at once).

        Returns:
            ``(classes, logits)``: int32 ``(N,)`` and int32 ``(N, num_classes)``.

        """
        array = np.asarray(q)
        if array.ndim < 1 or array.shape[0] < 1:
            raise ValueError(f"Expected `q` with at least one sample, but got shape {array.shape}")
        flat = array.reshape(array.shape[0], -1)
        if flat.shape[1] != self.num_inputs:
            raise ValueError(
                f"Expected `q` with {self.num_inputs} pixels per sample, but got shape "
                f"{array.shape}"
            )
        if flat.size and (flat.min() < 0 or flat.max() > 255 or (flat != np.round(flat)).any()):
            raise ValueError("Expected `q` to hold integer pixels in [0, 255]")
        flat = np.ascontiguousarray(flat, dtype=np.uint8)
        count = flat.shape[0]
        step = count if batch is None else int(batch)
        if step < 1:
            raise ValueError(f"Expected `batch` to be a positive int, but got {batch!r}")
        classes = np.empty(count, dtype=np.int32)
        logits = np.empty((count, self.num_classes), dtype=np.int32)
        for start in range(0, count, step):
            stop = min(count, start + step)
            self.bound(flat[start:stop], classes[start:stop], logits[start:stop])()
        return classes, logits
