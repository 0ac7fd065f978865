"""Host-side high-performance binary dense kernel (C, loaded with ctypes).

Bit convention (shared with the microcontroller runtime): bit 1 encodes -1 and
bit 0 encodes +1; the n signs of a vector are packed LSB-first into little-endian
``uint32`` words (sign ``i`` is bit ``i % 32`` of word ``i // 32``) and padded
with 0-bits to ``words = ceil(n / 32)`` words. For inputs ``x`` and weight rows
``w_j`` in ``{-1, +1}^n``::

    a_j = sum_i w_ji x_i = n - 2 * popcount(x XOR w_j)

Typical use::

    xp = pack_signs(x)            # (batch, n) +-1 floats -> (batch, words) uint32
    wp = pack_signs(w)            # (rows, n)             -> (rows, words) uint32
    a = binary_dense(xp, wp, n)   # (batch, rows) int32 pre-activations

A hidden layer's output signs can come out packed for the next layer straight away:
``get_library().binary_dense_sign(xp, wp, n, t)`` gives the bits ``a < t`` (bit 1 = -1)
without writing ``a`` to memory, and ``sign_pack(a, t)`` packs existing pre-activations.

``conv_sign`` evaluates one convolutional block (zero padding, max-pool, threshold) on
packed HWC maps (``bconv.c``, used by the fast sweep for CNNs).

The library also draws the fault maps of ``lightning_bet.functional.faults``
(``BinaryDenseLibrary.bernoulli_positions``; the stream is defined there).

The C library is compiled with gcc on first use (see ``lightning_bet.native.build``
for the cache location and keying) with ``-O3 -march=native``; where the CPU has
AVX512-VPOPCNTDQ the kernel uses 512-bit ``VPOPCNTQ``, else a portable
``__builtin_popcountll`` path. If the ``-march=native`` build fails the portable
build is used with a warning.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_bet.native.build import (
    COMMON_FLAGS,
    DEFAULT_COMPILER,
    NATIVE_FLAGS,
    PORTABLE_FLAGS,
    build_library,
    cache_dir,
    load_cdll,
)

__all__ = [
    "COMMON_FLAGS",
    "NATIVE_FLAGS",
    "PORTABLE_FLAGS",
    "BinaryDenseLibrary",
    "binary_dense",
    "build_library",
    "cache_dir",
    "cpu_seconds_clock",
    "default_threads",
    "get_library",
    "load_library",
    "pack_signs",
    "popcount_peak",
    "unpack_signs",
]

_INT_MAX = 2**31 - 1
_DEFAULT_PEAK_ITERS = 10_000_000


def default_threads() -> int:
    """Number of CPUs this process may run on (its affinity mask where available).

    Returns:
        At least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cpu_seconds_clock(threads: int) -> Callable[[], float]:
    """Clock of CPU seconds per thread for work running on ``threads`` threads.

    Args:
        threads: Threads doing the work (the calling thread included).

    Returns:
        ``time.thread_time`` for one thread, else ``time.process_time`` divided
        by ``threads``.
    """
    if threads == 1:
        return time.thread_time
    return lambda: time.process_time() / threads


def _check_threads(threads: int | None) -> int:
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return int(threads)


def pack_signs(x: np.ndarray) -> np.ndarray:
    """Pack signs (or bits) along the last axis into LSB-first ``uint32`` words.

    Numeric inputs map ``x < 0`` to bit 1 (-1) and everything else, including
    ``0`` and ``-0.0``, to bit 0 (+1), i.e. ``sign(0) = +1``. Boolean inputs are
    taken as the bits themselves (``True`` = bit 1 = -1). Each row is padded
    with 0-bits to a multiple of 32.

    Args:
        x: Array of shape ``(..., n)``: +-1 (or any real) values, or bools.

    Returns:
        ``uint32`` array of shape ``(..., ceil(n / 32))``.

    Raises:
        TypeError: If ``x`` is not a numpy array of bool, integer or float dtype.
        ValueError: If ``x`` is 0-dimensional or contains NaN.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension (..., n), got a 0-d array")
    if x.dtype == np.bool_:
        bits = x
    elif np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating):
        if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any():
            raise ValueError("x contains NaN; its sign is undefined")
        bits = x < 0
    else:
        raise TypeError(f"x must have a bool, integer or float dtype, got {x.dtype}")
    n = bits.shape[-1]
    words = -(-n // 32)
    if words * 32 != n:
        pad = [(0, 0)] * (bits.ndim - 1) + [(0, words * 32 - n)]
        bits = np.pad(bits, pad)
    packed = np.packbits(bits, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u4").astype(np.uint32, copy=False)


def unpack_signs(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of ``pack_signs`` for numeric inputs: words back to +-1 values.

    Args:
        packed: ``uint32`` array of shape ``(..., words)``.
        n: Number of signs per row, ``0 <= n <= 32 * words``.

    Returns:
        ``int8`` array of shape ``(..., n)`` with values in ``{-1, +1}``.

    Raises:
        TypeError: If ``packed`` is not a ``uint32`` numpy array or ``n`` not an int.
        ValueError: If ``packed`` is 0-dimensional or ``n`` is out of range.
    """
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint32:
        raise TypeError(f"packed must be a numpy uint32 array, got {_describe(packed)}")
    if packed.ndim == 0:
        raise ValueError("packed must have at least one dimension (..., words)")
    n = _check_n(n, packed.shape[-1])
    as_bytes = np.ascontiguousarray(packed).astype("<u4", copy=False).view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, count=n, bitorder="little")
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"ndarray(dtype={a.dtype}, shape={a.shape})"
    return type(a).__name__


def _check_n(n: int, words: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if not 0 <= n <= 32 * words:
        raise ValueError(f"n must satisfy 0 <= n <= 32 * words = {32 * words}, got n={n}")
    return int(n)


def _padding_is_zero(packed: np.ndarray, n: int) -> bool:
    """Whether every bit at index >= n of every row is 0."""
    full, rem = divmod(n, 32)
    if rem:
        mask = np.uint32((0xFFFFFFFF << rem) & 0xFFFFFFFF)
        if np.any(packed[..., full] & mask):
            return False
        full += 1
    return not np.any(packed[..., full:])


def _check_packed(
    xpacked: np.ndarray, wpacked: np.ndarray, n: int
) -> tuple[np.ndarray, int, int, int, int]:
    """Validate packed inputs ``(batch, words)`` or ``(words,)`` and weights ``(rows, words)``.

    Returns:
        ``(xpacked as 2-D, batch, rows, words, n)``.
    """
    for name, a in (("xpacked", xpacked), ("wpacked", wpacked)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint32:
            raise TypeError(f"{name} must be a numpy uint32 array, got {_describe(a)}")
    if xpacked.ndim not in (1, 2):
        raise ValueError(f"xpacked must have shape (batch, words) or (words,), got {xpacked.shape}")
    if wpacked.ndim != 2:
        raise ValueError(f"wpacked must have shape (rows, words), got {wpacked.shape}")
    x2 = xpacked[None, :] if xpacked.ndim == 1 else xpacked
    batch, words = x2.shape
    rows, wwords = wpacked.shape
    if wwords != words:
        raise ValueError(
            f"xpacked and wpacked must have the same number of words, got {words} and {wwords}"
        )
    n = _check_n(n, words)
    if max(batch, rows) > _INT_MAX or words > _INT_MAX // 32:
        raise ValueError(f"sizes too large: batch={batch}, rows={rows}, words={words}")
    return x2, batch, rows, words, n


def _check_rc(rc: int, function: str, **sizes: int) -> None:
    """Turn a kernel's return code into ``MemoryError`` (-2) or ``ValueError`` (other != 0)."""
    if rc == -2:
        raise MemoryError(f"{function} could not allocate its work buffers")
    if rc != 0:
        described = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ValueError(f"{function} rejected {described}")


def _check_thresholding(
    a: np.ndarray | None, thresholds: np.ndarray, source: str, rows: int
) -> tuple[np.ndarray | None, np.ndarray]:
    """Validate ``int32`` pre-activations ``(batch, rows)`` and thresholds ``(rows,)``."""
    for name, x in (("a", a), ("thresholds", thresholds)):
        if x is not None and (not isinstance(x, np.ndarray) or x.dtype != np.int32):
            raise TypeError(f"{name} must be a numpy int32 array, got {_describe(x)}")
    if a is not None and a.ndim != 2:
        raise ValueError(f"a must have shape (batch, rows), got {a.shape}")
    if thresholds.shape != (rows,):
        raise ValueError(
            f"thresholds must have shape ({rows},) to match the rows of {source}, got "
            f"{thresholds.shape}"
        )
    return (None if a is None else np.ascontiguousarray(a)), np.ascontiguousarray(thresholds)


def _as_u32_ptr(a: np.ndarray) -> ctypes._Pointer:
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))


@dataclass(frozen=True)
class BinaryDenseLibrary:
    """A compiled and loaded build of the kernel.

    Attributes:
        path: Shared library file.
        flags: Optimisation/ISA flags it was built with.
        has_avx512: Whether the AVX512-VPOPCNTDQ path was compiled in.
    """

    cdll: ctypes.CDLL
    path: Path
    flags: tuple[str, ...]
    has_avx512: bool

    @property
    def kernel_path(self) -> str:
        """Name of the compiled kernel path: ``avx512-vpopcntdq`` or ``portable``."""
        return "avx512-vpopcntdq" if self.has_avx512 else "portable"

    def binary_dense(
        self,
        xpacked: np.ndarray,
        wpacked: np.ndarray,
        n: int,
        *,
        threads: int | None = None,
        out: np.ndarray | None = None,
        check_padding: bool = True,
    ) -> np.ndarray:
        """Integer pre-activations ``n - 2 * popcount(x_b XOR w_j)``.

        Args:
            xpacked: Packed inputs, ``uint32`` of shape ``(batch, words)`` or
                ``(words,)``.
            wpacked: Packed weights, ``uint32`` of shape ``(rows, words)``.
            n: True fan-in, ``0 <= n <= 32 * words``.
            threads: Worker threads; ``None`` uses all CPUs of this process.
            out: Optional C-contiguous ``int32`` output of shape ``(batch, rows)``
                (``(rows,)`` for 1-D ``xpacked``) to write into, e.g. to reuse
                one buffer across calls.
            check_padding: Verify that the padding bits (index >= n) are 0.

        Returns:
            ``int32`` array of shape ``(batch, rows)`` (``(rows,)`` for 1-D
            ``xpacked``): ``out`` itself when given.

        Raises:
            TypeError: On non-array or non-``uint32`` packed inputs, a non-int
                ``n``/``threads`` or an ``out`` of the wrong dtype.
            ValueError: On mismatched shapes, ``n`` out of range, non-zero
                padding bits, sizes beyond ``int32`` or a bad ``out`` shape.
            MemoryError: If the kernel cannot allocate its work buffers.
        """
        x2, batch, rows, words, n = _check_packed(xpacked, wpacked, n)
        single = xpacked.ndim == 1
        if check_padding:
            for name, a in (("xpacked", x2), ("wpacked", wpacked)):
                if not _padding_is_zero(a, n):
                    raise ValueError(f"{name} has non-zero padding bits at index >= n={n}")
        nthreads = _check_threads(threads)
        shape = (rows,) if single else (batch, rows)
        if out is None:
            out = np.empty(shape, dtype=np.int32)
        else:
            if not isinstance(out, np.ndarray) or out.dtype != np.int32:
                raise TypeError(f"out must be a numpy int32 array, got {_describe(out)}")
            if out.shape != shape or not out.flags.c_contiguous or not out.flags.writeable:
                raise ValueError(
                    f"out must be a writeable C-contiguous array of shape {shape}, got "
                    f"shape {out.shape}"
                )
        x2 = np.ascontiguousarray(x2)
        w2 = np.ascontiguousarray(wpacked)
        rc = self.cdll.bdense_popcount_threads(
            _as_u32_ptr(x2),
            _as_u32_ptr(w2),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            batch,
            rows,
            words,
            n,
            nthreads,
        )
        _check_rc(rc, "bdense_popcount", batch=batch, rows=rows, words=words, n=n)
        return out

    def sign_pack(
        self, a: np.ndarray, thresholds: np.ndarray, *, threads: int | None = None
    ) -> np.ndarray:
        """Packed signs ``a < t``: bit ``j`` of row ``b`` is ``a[b, j] < t[j]``.

        The bits use the packing of :func:`pack_signs` (bit 1 = -1), so the result is the
        packed input of the next binary layer.

        Args:
            a: ``int32`` pre-activations of shape ``(batch, rows)``.
            thresholds: ``int32`` thresholds of shape ``(rows,)``.
            threads: Worker threads; ``None`` uses all CPUs of this process.

        Returns:
            ``uint32`` array of shape ``(batch, ceil(rows / 32))``.

        Raises:
            TypeError: On non-``int32`` arrays.
            ValueError: On mismatched shapes.
        """
        a, thresholds = _check_thresholding(a, thresholds, "a", a.shape[-1] if a.ndim else 0)
        batch, rows = a.shape
        bits = np.empty((batch, -(-rows // 32)), dtype=np.uint32)
        rc = self.cdll.bdense_sign_pack_threads(
            a.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            thresholds.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            _as_u32_ptr(bits),
            batch,
            rows,
            _check_threads(threads),
        )
        _check_rc(rc, "bdense_sign_pack", batch=batch, rows=rows)
        return bits

    def binary_dense_sign(
        self,
        xpacked: np.ndarray,
        wpacked: np.ndarray,
        n: int,
        thresholds: np.ndarray,
        *,
        threads: int | None = None,
    ) -> np.ndarray:
        """``sign_pack(binary_dense(xpacked, wpacked, n), thresholds)`` in one pass.

        The AVX-512 path compares each register tile of pre-activations with the thresholds
        and never writes the ``int32`` pre-activations to memory.

        Args:
            xpacked: Packed inputs, ``uint32`` of shape ``(batch, words)`` (zero padding).
            wpacked: Packed weights, ``uint32`` of shape ``(rows, words)`` (zero padding).
            n: True fan-in, ``0 <= n <= 32 * words``.
            thresholds: ``int32`` thresholds of shape ``(rows,)``.
            threads: Worker threads; ``None`` uses all CPUs of this process.

        Returns:
            ``uint32`` array of shape ``(batch, ceil(rows / 32))``.

        Raises:
            TypeError: On arrays of the wrong dtype.
            ValueError: On mismatched shapes or ``n`` out of range.
            MemoryError: If the kernel cannot allocate its work buffers.
        """
        if xpacked.ndim != 2:
            raise ValueError(f"xpacked must have shape (batch, words), got {xpacked.shape}")
        x2, batch, rows, words, n = _check_packed(xpacked, wpacked, n)
        _, thresholds = _check_thresholding(None, thresholds, "wpacked", rows)
        bits = np.empty((batch, -(-rows // 32)), dtype=np.uint32)
        x2, w2 = np.ascontiguousarray(x2), np.ascontiguousarray(wpacked)
        rc = self.cdll.bdense_popcount_sign_threads(
            _as_u32_ptr(x2),
            _as_u32_ptr(w2),
            thresholds.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            _as_u32_ptr(bits),
            batch,
            rows,
            words,
            n,
            _check_threads(threads),
        )
        _check_rc(rc, "bdense_popcount_sign", batch=batch, rows=rows, words=words, n=n)
        return bits

    def conv_sign(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        thresholds: np.ndarray,
        directions: np.ndarray,
        *,
        channels: int,
        stride: int = 1,
        padding: int = 0,
        pool: int = 1,
        channel_index: np.ndarray | None = None,
        base: np.ndarray | None = None,
        threads: int | None = None,
    ) -> np.ndarray:
        """One convolutional block in deploy mode, packed output signs (see ``bconv.h``).

        Convolution with zero padding (padded positions contribute 0), max-pool (window and
        stride ``pool``) on the integer pre-activation ``a``, then the output is +1 iff
        ``d (max a - t) >= 0``. Binary maps are HWC: one position's channels are whole words.

        Args:
            x: binary inputs, ``uint64 (batch, H, W, ceil(channels / 64))`` packed signs (bit 1
                = -1, padding bits 0), or integer inputs ``int16 (batch, channels, H, W)``.
            weight: for binary inputs ``uint64 (C_out, k, k, ceil(channels / 64))`` packed
                kernels (padding bits 0); for integer inputs ``int8 (C_out, channels, k, k)``
                in {-1, +1} (PyTorch order).
            thresholds: ``int32 (C_out,)`` thresholds ``t``.
            directions: ``int8 (C_out,)`` directions ``d`` in {-1, +1}.
            channels: ``C_in``, the input channels.
            stride: convolution stride.
            padding: zero padding on every side.
            pool: max-pool window (1: none); it must tile the convolution's output.
            channel_index: compute only some output channels: ``int32 (C,)`` the output
                channel of each of the ``C`` kernels in ``weight`` (and of ``thresholds``,
                ``directions``); the other output bits come from ``base``.
            base: with ``channel_index``, the packed output ``(batch, H_out, W_out, words)``
                whose other channels' bits are kept (e.g. a clean pass).
            threads: Worker threads; ``None`` uses all CPUs of this process.

        Returns:
            ``uint64 (batch, H_out, W_out, ceil(C_out / 64))`` packed output signs
            (``base``'s shape with ``channel_index``).

        Raises:
            TypeError: On arrays of the wrong dtype.
            ValueError: On mismatched shapes or a geometry that does not fit.
            MemoryError: If the kernel cannot allocate its work buffers.
        """
        binary = isinstance(x, np.ndarray) and x.dtype == np.uint64
        if not isinstance(x, np.ndarray) or x.dtype not in (np.uint64, np.int16) or x.ndim != 4:
            raise TypeError(f"x must be a 4-D numpy uint64 or int16 array, got {_describe(x)}")
        wdtype = np.uint64 if binary else np.int8
        if not isinstance(weight, np.ndarray) or weight.dtype != wdtype or weight.ndim != 4:
            raise TypeError(
                f"weight must be a 4-D numpy {np.dtype(wdtype)} array for {x.dtype} inputs, "
                f"got {_describe(weight)}"
            )
        if binary:
            batch, height, width, last = x.shape
        else:
            batch, last, height, width = x.shape
        cout = weight.shape[0]
        k = weight.shape[1] if binary else weight.shape[2]
        words = -(-channels // 64)
        expected_w = (cout, k, k, words) if binary else (cout, channels, k, k)
        if last != (words if binary else channels) or weight.shape != expected_w:
            raise ValueError(
                f"x {x.shape} and weight {weight.shape} do not fit channels={channels}: expected "
                f"x {f'(batch, H, W, {words})' if binary else f'(batch, {channels}, H, W)'} and "
                f"weight {expected_w}"
            )
        if not isinstance(directions, np.ndarray) or directions.dtype != np.int8:
            raise TypeError(f"directions must be a numpy int8 array, got {_describe(directions)}")
        _, thresholds = _check_thresholding(None, thresholds, "weight", cout)
        if directions.shape != (cout,):
            raise ValueError(f"directions must have shape ({cout},), got {directions.shape}")
        conv_h = (height + 2 * padding - k) // stride + 1
        conv_w = (width + 2 * padding - k) // stride + 1
        if min(conv_h, conv_w) < 1 or conv_h % pool or conv_w % pool:
            raise ValueError(
                f"a {k}x{k} kernel with stride {stride}, padding {padding} and pool {pool} does "
                f"not fit {height}x{width} inputs"
            )
        shape = (batch, conv_h // pool, conv_w // pool)
        cout_total = cout
        if channel_index is not None:
            if base is None or base.dtype != np.uint64 or base.shape[:3] != shape:
                raise ValueError(
                    f"base must be a numpy uint64 array of shape {shape + ('words',)} with "
                    f"channel_index, got {_describe(base)}"
                )
            cout_total = 64 * base.shape[3]
            channel_index = np.ascontiguousarray(channel_index, dtype=np.int32)
            if (
                channel_index.shape != (cout,)
                or not ((channel_index >= 0) & (channel_index < cout_total)).all()
            ):
                raise ValueError(
                    f"channel_index must hold {cout} output channels in [0, {cout_total}), got "
                    f"{channel_index!r}"
                )
            base = np.ascontiguousarray(base)
        elif base is not None:
            raise ValueError("base is only used with channel_index")
        bits = np.empty((*shape, -(-cout_total // 64)), dtype=np.uint64)
        x, weight = np.ascontiguousarray(x), np.ascontiguousarray(weight)
        directions = np.ascontiguousarray(directions)
        entry = self.cdll.bconv_binary_sign_threads if binary else self.cdll.bconv_int_sign_threads
        rc = entry(
            x.ctypes.data,
            weight.ctypes.data,
            thresholds.ctypes.data,
            directions.ctypes.data,
            None if channel_index is None else channel_index.ctypes.data,
            None if base is None else base.ctypes.data,
            bits.ctypes.data,
            batch,
            channels,
            height,
            width,
            cout,
            cout_total,
            k,
            stride,
            padding,
            pool,
            _check_threads(threads),
        )
        _check_rc(rc, "bconv_sign", batch=batch, channels=channels, k=k, stride=stride)
        return bits

    def bernoulli_positions(
        self,
        seed: int,
        numel: int,
        thresholds: np.ndarray,
        guide: np.ndarray,
        *,
        segment: int,
        guide_bits: int,
        slot: int,
        threads: int | None = None,
    ) -> np.ndarray:
        """Sorted positions of the fault-map stream (``lightning_bet.functional.faults``).

        Args:
            seed: 63-bit seed of the stream.
            numel: Number of positions, ``>= 0``.
            thresholds: ``uint64`` gap thresholds ``(K,)``, decreasing.
            guide: ``uint32`` ``(2**guide_bits,)``: the gap of the largest word of each bucket.
            segment: Positions per segment, ``>= 1``.
            guide_bits: Top bits of a draw that index ``guide``.
            slot: Room for positions per segment to start with (grown when a segment needs
                more; the result does not depend on it).
            threads: Worker threads; ``None`` uses all CPUs of this process. The result does
                not depend on it.

        Returns:
            ``int64`` array ``(count,)`` of sorted positions (a view of a buffer of
            ``ceil(numel / segment) * slot`` entries).

        Raises:
            TypeError: If ``thresholds`` or ``guide`` has the wrong dtype.
            ValueError: If the library rejects the arguments.
        """
        for name, a, dtype in (("thresholds", thresholds, np.uint64), ("guide", guide, np.uint32)):
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != 1:
                raise TypeError(
                    f"{name} must be a 1-D numpy {dtype.__name__} array, got {_describe(a)}"
                )
        if guide.size != 1 << guide_bits:
            raise ValueError(
                f"guide must have 2**guide_bits={1 << guide_bits} entries, got {guide.size}"
            )
        nthreads = _check_threads(threads)
        thresholds = np.ascontiguousarray(thresholds)
        guide = np.ascontiguousarray(guide)
        nseg = -(-numel // segment) if numel > 0 else 0
        counts = np.empty(max(nseg, 1), dtype=np.int64)
        i64p = ctypes.POINTER(ctypes.c_longlong)
        while True:
            out = np.empty(max(nseg * slot, 1), dtype=np.int64)
            rc = self.cdll.bdense_bernoulli_positions(
                seed,
                numel,
                segment,
                thresholds.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64)),
                thresholds.size,
                _as_u32_ptr(guide),
                guide_bits,
                out.ctypes.data_as(i64p),
                slot,
                counts.ctypes.data_as(i64p),
                nthreads,
            )
            if rc >= 0:
                return out[:rc]
            if rc == -1:
                raise ValueError(
                    f"bdense_bernoulli_positions rejected numel={numel}, segment={segment}, "
                    f"K={thresholds.size}, guide_bits={guide_bits}, slot={slot}"
                )
            slot = -2 - rc

    def popcount_peak(self, threads: int = 1, iters: int | None = None, trials: int = 3) -> dict:
        """Measure this CPU's popcount peak in popcount'd bits per second.

        Each thread runs ``iters`` iterations of 16 independent popcount
        instructions on register data, after a short warm-up run; the best of
        ``trials`` runs is kept. The vector peak counts 512 bits per
        ``VPOPCNTQ``, the scalar peak 64 bits per ``POPCNT``. One popcount'd bit
        is one binary MAC once paired with the XOR, so a kernel's binary-MAC/s
        over ``peak_gbitops * 1e9`` is its fraction of peak.

        Besides wall-clock rates, the peak is also reported per CPU-second
        (``peak_gbitops_cpu``: this thread's CPU time for one thread, the
        process CPU time divided by ``threads`` otherwise). On an idle machine
        both agree; when other processes share the cores the CPU-time figure
        excludes the time this process was descheduled.

        Args:
            threads: Threads running the loop at the same time (use the kernel's
                thread count for an honest fraction).
            iters: Loop iterations per thread; default 10 million.
            trials: Measurements to take the best of.

        Returns:
            Dict with ``vector_gbitops`` (``None`` without AVX512-VPOPCNTDQ),
            ``scalar_gbitops``, ``peak_gbitops`` (vector where compiled in,
            else scalar), ``peak_gbitops_cpu`` (the same per CPU-second),
            ``peak_kind`` (``"vpopcntq-512"`` or ``"popcnt-64"``), ``threads``
            and ``kernel_path``.

        Raises:
            TypeError: If ``threads``, ``iters`` or ``trials`` is not an int.
            ValueError: If any of them is < 1.
            RuntimeError: If a measurement thread cannot be started.
        """
        nthreads = _check_threads(threads)
        if iters is None:
            iters = _DEFAULT_PEAK_ITERS
        for name, v in (("iters", iters), ("trials", trials)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        cpu_clock = cpu_seconds_clock(nthreads)

        def measure(fn: ctypes._CFuncPtr, bits: int, n_iters: int) -> tuple[float, float]:
            if fn(nthreads, max(1, n_iters // 8)) < 0:  # warm-up
                raise RuntimeError(f"could not start {nthreads} threads for the peak loop")
            wall, cpu = [], []
            for _ in range(int(trials)):
                c0 = cpu_clock()
                rate = fn(nthreads, n_iters)
                cpu_dt = cpu_clock() - c0
                if rate < 0:
                    raise RuntimeError(f"could not start {nthreads} threads for the peak loop")
                wall.append(rate)
                total = float(nthreads) * n_iters * 16 * bits
                cpu.append(total / cpu_dt if cpu_dt > 0 else rate)
            return max(wall) / 1e9, max(cpu) / 1e9

        vector = vector_cpu = None
        if self.has_avx512:
            vector, vector_cpu = measure(self.cdll.bdense_peak_vector, 512, int(iters))
        # POPCNT moves 8x fewer bits per instruction and issues several per cycle:
        # run more iterations for a comparable measurement time.
        scalar, scalar_cpu = measure(self.cdll.bdense_peak_scalar, 64, 2 * int(iters))
        return {
            "vector_gbitops": vector,
            "scalar_gbitops": scalar,
            "peak_gbitops": vector if vector is not None else scalar,
            "peak_gbitops_cpu": vector_cpu if vector_cpu is not None else scalar_cpu,
            "peak_kind": "vpopcntq-512" if vector is not None else "popcnt-64",
            "threads": nthreads,
            "kernel_path": self.kernel_path,
        }


_DEFAULT_LOCK = threading.Lock()
_DEFAULT: BinaryDenseLibrary | None = None


def load_library(
    flags: tuple[str, ...] = NATIVE_FLAGS,
    *,
    compiler: str = DEFAULT_COMPILER,
    directory: str | os.PathLike[str] | None = None,
) -> BinaryDenseLibrary:
    """Build (if needed) and load one flavour of the kernel.

    Args:
        flags: Optimisation/ISA flags, e.g. ``NATIVE_FLAGS`` (default) or
            ``PORTABLE_FLAGS`` for the ``__builtin_popcountll`` path.
        compiler: Compiler command.
        directory: Cache directory; default ``cache_dir()``.

    Returns:
        The loaded library.

    Raises:
        RuntimeError: If the compiler is missing or compilation fails.
    """
    cdll, path = load_cdll(tuple(flags), compiler=compiler, directory=directory)
    return BinaryDenseLibrary(
        cdll=cdll, path=path, flags=tuple(flags), has_avx512=bool(cdll.bdense_has_avx512())
    )


def get_library() -> BinaryDenseLibrary:
    """The default library: the ``-O3 -march=native`` build, loaded once per process.

    Falls back to the portable build (with a ``RuntimeWarning``) when the
    native build fails to compile.

    Returns:
        The loaded library.

    Raises:
        RuntimeError: If gcc is missing or neither build compiles.
    """
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            try:
                _DEFAULT = load_library(NATIVE_FLAGS)
            except RuntimeError as exc:
                if "not found" in str(exc):
                    raise
                warnings.warn(
                    f"native build failed, using the portable build instead: {exc}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _DEFAULT = load_library(PORTABLE_FLAGS)
        return _DEFAULT


def binary_dense(
    xpacked: np.ndarray,
    wpacked: np.ndarray,
    n: int,
    *,
    threads: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Binary dense layer on packed signs with the default (native) library.

    Args:
        xpacked: Packed inputs, ``uint32`` of shape ``(batch, words)`` or ``(words,)``.
        wpacked: Packed weights, ``uint32`` of shape ``(rows, words)``.
        n: True fan-in, ``0 <= n <= 32 * words``.
        threads: Worker threads; ``None`` uses all CPUs of this process.
        out: Optional ``int32`` output buffer of the result's shape.

    Returns:
        ``int32`` pre-activations ``n - 2 * popcount(x XOR w)`` of shape
        ``(batch, rows)`` (``(rows,)`` for 1-D ``xpacked``).

    Raises:
        TypeError: See ``BinaryDenseLibrary.binary_dense``.
        ValueError: See ``BinaryDenseLibrary.binary_dense``.
        RuntimeError: If the library cannot be built.
    """
    return get_library().binary_dense(xpacked, wpacked, n, threads=threads, out=out)


def popcount_peak(threads: int = 1, iters: int | None = None, trials: int = 3) -> dict:
    """Popcount peak of this CPU with the default library.

    Args:
        threads: Threads running the peak loop at the same time.
        iters: Loop iterations per thread; default 10 million.
        trials: Measurements to take the best of.

    Returns:
        See ``BinaryDenseLibrary.popcount_peak``.
    """
    return get_library().popcount_peak(threads=threads, iters=iters, trials=trials)
