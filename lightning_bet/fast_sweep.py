"""Fast, exact evaluation of a BNN under many weight fault maps (METHOD §6, §7).

A fault-injection sweep evaluates the same network on the same data under hundreds of fault
maps. :class:`FastEvaluator` folds the network into deploy mode once
(:func:`~lightning_bet.deploy.fold.to_deploy`, BatchNorm folded by
:func:`~lightning_bet.functional.fold.fold_integer`, the fold the exports use), prepares
everything that does not depend on the faults, then evaluates one fault map with integer
arithmetic only:

- **Real-valued first layer** on the integer pixels ``q`` (inputs ``x = q / L``): dense, an
  exact int8 matmul ``q @ W^T`` (``q - 128`` with a per-row correction for ``L <= 255``, so
  ``q / 255`` data runs on int8 too) or, with few flips, the cached clean product plus a sparse
  update over the flipped weights; convolutional, the native integer convolution kernel.
- **Layers with binary inputs**: XNOR/popcount on packed sign bits (:mod:`lightning_bet.native`;
  convolutions on packed HWC maps, a kernel bit shared by every position), thresholds compared
  in registers, only the packed signs of the next layer's input written.
- Outputs of layers that no flip reaches (at small error rates) are reused from the clean pass.

Semantics (what "exact" means): predictions equal deploy mode's
(:func:`~lightning_bet.deploy.fold.deploy_forward`) on the fault-flipped network, i.e. integer
pre-activations, max-pool before the threshold, zero padding contributing 0, ``argmax`` of the
integer logits with the first index on ties. This is the float network's own semantics computed
exactly. The float32 reference loop (copy, flip, float forward) agrees except where float32
rounding moves a pre-activation across its threshold: on ``q / 16`` data and binary layers its
sums are exact, and it differs only where the float32 BatchNorm rounds differently from the
float64 fold (not seen in practice); on ``q / 255`` data its first-layer sums of ``q_i / 255``
round, so a sample whose exact pre-activation lies within a float32 rounding error of a
threshold can differ (a tiny fraction, reported by ``bench sweep_speedup``).

Inputs must be ``q / L`` for integers ``q`` in ``[0, L]`` (within ``1e-3 / L``, as the export
checks): ``L`` is found as the smallest such ``L <= 4096`` (:func:`detect_input_levels`) unless
given. On other inputs (e.g. standardized ones) :func:`fast_evaluator` reports the reason and
:func:`~lightning_bet.sweeps.sweep` falls back to the float loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_bet._threads import single_torch_thread
from lightning_bet.deploy.fold import to_deploy
from lightning_bet.deploy.model import DeployConv, DeployLayer, DeployModel
from lightning_bet.native import pack_signs, unpack_signs

__all__ = [
    "FastEvaluator",
    "detect_input_levels",
    "fast_evaluator",
    "integer_pixels",
]

#: Popcount products below this many word pairs run single-threaded.
_SMALL_WORK = 1 << 22

#: Sparse first-layer correction when ``flips * _SPARSE_COST < out * in`` (dense int8 matmul
#: otherwise): measured crossover for 784x1024 weights and 10,000 samples at ~2,000 flips.
_SPARSE_COST = 400

#: Fewest samples per thread of the split first-layer matmul (a thread hand-off costs ~50 us).
_MIN_ROWS_PER_THREAD = 512

#: Largest number of input levels :func:`detect_input_levels` tries.
MAX_LEVELS = 4096

#: How far ``x * L`` may lie from an integer (the export's check of integer pixels).
_LEVEL_TOLERANCE = 1e-3


def detect_input_levels(x: Tensor, max_levels: int = MAX_LEVELS) -> int | None:
    """The smallest ``L <= max_levels`` with every input ``q / L`` for an integer ``q`` in [0, L].

    Args:
        x: inputs of any shape (e.g. ``(N, 1, 28, 28)``).
        max_levels: the largest ``L`` tried.

    Returns:
        ``L``, or ``None`` when the inputs lie on no such grid (``|x L - q| <= 1e-3`` for all).

    Example:
        >>> detect_input_levels(torch.tensor([0.0, 2 / 255, 1.0]))
        255
        >>> detect_input_levels(torch.tensor([-0.42, 0.5])) is None
        True

    """
    values = torch.unique(x.detach().cpu().to(torch.float64).reshape(-1))
    if values.numel() == 0:
        return 1
    if values.numel() > max_levels + 1 or values[0] < -_LEVEL_TOLERANCE:
        return None
    if values[-1] > 1 + _LEVEL_TOLERANCE:
        return None
    for start in range(1, max_levels + 1, 256):
        levels = torch.arange(start, min(start + 256, max_levels + 1), dtype=torch.float64)
        scaled = values.view(-1, 1) * levels.view(1, -1)  # (U, candidates)
        fits = ((scaled - scaled.round()).abs() <= _LEVEL_TOLERANCE).all(0)
        if bool(fits.any()):
            return int(levels[fits.nonzero()[0, 0]])
    return None


def integer_pixels(x: Tensor, levels: int) -> Tensor:
    """The integer pixels ``q = round(x L)`` of inputs ``x = q / L``, checked.

    Args:
        x: ``(N, ...)`` inputs.
        levels: ``L``.

    Returns:
        int64 ``q`` of ``x``'s shape, on the CPU.

    Raises:
        ValueError: if some ``x L`` is not within ``1e-3`` of an integer in ``[0, L]``.

    """
    scaled = x.detach().cpu().to(torch.float64) * levels
    q = scaled.round()
    if q.numel() and (
        float((scaled - q).abs().max()) > _LEVEL_TOLERANCE or q.min() < 0 or q.max() > levels
    ):
        raise ValueError(
            f"Expected the inputs to be q / {levels} with integer q in [0, {levels}], but they "
            f"span [{float(x.min())}, {float(x.max())}] and are not all on that grid"
        )
    return q.to(torch.int64)


def _pack_rows(bits: np.ndarray) -> np.ndarray:
    """Pack bool ``(rows, n)`` (True = -1) LSB-first into uint32 ``(rows, ceil(n / 32))``."""
    return pack_signs(bits)


def _pack_hwc(bits: np.ndarray) -> np.ndarray:
    """Pack bool ``(..., C)`` (True = -1) into uint64 ``(..., ceil(C / 64))`` (padding bits 0)."""
    channels = bits.shape[-1]
    words = -(-channels // 64)
    if words * 64 != channels:
        bits = np.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, words * 64 - channels)])
    return pack_signs(bits).view("<u8").astype(np.uint64, copy=False)


def _unpack(packed: np.ndarray, n: int) -> np.ndarray:
    """uint32/uint64 ``(..., words)`` -> bool ``(..., n)`` (True = -1)."""
    return unpack_signs(np.ascontiguousarray(packed).view(np.uint32), n) < 0


def _conv_torch(
    x: np.ndarray,
    weight: np.ndarray,
    t: np.ndarray,
    d: np.ndarray,
    channels: int,
    stride: int,
    padding: int,
    pool: int,
) -> np.ndarray:
    """Fallback of the native ``conv_sign``: float64 torch (exact), same layouts."""
    if x.dtype == np.uint64:  # packed HWC signs
        v = np.where(_unpack(x, channels), -1.0, 1.0).transpose(0, 3, 1, 2)
    else:  # integer NCHW pixels
        v = x.astype(np.float64)
    v = torch.from_numpy(np.ascontiguousarray(v))
    a = F.conv2d(v, torch.from_numpy(weight.astype(np.float64)), None, stride, padding)
    if pool > 1:
        a = F.max_pool2d(a, pool)
    shape = (-1, 1, 1)
    d64 = torch.from_numpy(d.astype(np.float64)).view(shape)
    negative = d64 * (a - torch.from_numpy(t.astype(np.float64)).view(shape)) < 0
    return _pack_hwc(negative.permute(0, 2, 3, 1).numpy())


class _Kernels:
    """Binary products and convolutions: the native library when available, else exact torch."""

    def __init__(self, backend: str = "auto") -> None:
        self.lib = None
        if backend not in ("auto", "native", "torch"):
            raise ValueError(
                f"Expected `backend` to be 'auto', 'native' or 'torch', but got {backend!r}"
            )
        if backend != "torch":
            try:
                from lightning_bet.native import get_library

                self.lib = get_library()
            except Exception as exc:  # noqa: BLE001 - any build failure means: use the fallback
                if backend == "native":
                    raise RuntimeError(f"the native popcount kernel is unavailable: {exc}") from exc
        self.name = "native" if self.lib is not None else "torch"

    def __call__(self, xpacked: np.ndarray, wpacked: np.ndarray, n: int) -> np.ndarray:
        """int32 ``a = x @ w.T`` of packed ``(N, words)`` and ``(rows, words)`` uint32 signs."""
        if self.lib is not None:
            # small products run on one thread: waking a pool costs more than the work
            work = xpacked.shape[0] * wpacked.shape[0] * wpacked.shape[1]
            threads = 1 if work < _SMALL_WORK else None
            return self.lib.binary_dense(xpacked, wpacked, n, threads=threads, check_padding=False)
        # every bit of the words: padding bits (0 in both, +1 * +1) add the padding count
        total = 32 * xpacked.shape[1]
        x = torch.from_numpy(np.where(_unpack(xpacked, total), -1.0, 1.0))
        w = torch.from_numpy(np.where(_unpack(wpacked, total), -1.0, 1.0))
        return ((x @ w.T) - (total - n)).to(torch.int32).numpy()

    def signs(self, xpacked: np.ndarray, wpacked: np.ndarray, n: int, t: np.ndarray) -> np.ndarray:
        """Packed next-layer input bits ``a < t`` (True = -1) of ``a = x @ w.T``."""
        if self.lib is not None:
            work = xpacked.shape[0] * wpacked.shape[0] * wpacked.shape[1]
            threads = 1 if work < _SMALL_WORK else None
            return self.lib.binary_dense_sign(xpacked, wpacked, n, t.reshape(-1), threads=threads)
        return _pack_rows(self(xpacked, wpacked, n) < t.reshape(1, -1))

    def threshold(self, a: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Packed bits ``a < t`` (True = -1) of int32 pre-activations ``(N, C)``."""
        t = np.ascontiguousarray(t.reshape(-1), dtype=np.int32)
        if self.lib is not None:
            # one thread: it follows a torch matmul, and its own threads then compete with
            # torch's OpenMP pool (measured 2.6 ms with 2 threads, 1.75 ms with 1)
            return self.lib.sign_pack(a, t, threads=1)
        return _pack_rows(a < t)

    def conv(
        self,
        x: np.ndarray,
        layer: DeployConv,
        weight: np.ndarray,
        channels: np.ndarray | None = None,
        base: np.ndarray | None = None,
    ) -> np.ndarray:
        """Packed HWC output signs of the block ``layer`` with int8 kernels ``weight``.

        With ``channels`` (sorted output channels, ``weight`` holding only theirs), only those
        channels are computed and the other bits are taken from ``base``.
        """
        t, d = layer.threshold.astype(np.int32), layer.direction
        if channels is not None:
            t, d = t[channels], d[channels]
        geometry = (layer.in_shape[0], layer.stride, layer.padding, layer.pool)
        if self.lib is None:
            bits = _conv_torch(x, weight, t, d, *geometry)
            if channels is None:
                return bits
            merged = _unpack(base, 64 * base.shape[-1])
            merged[..., channels] = _unpack(bits, len(channels))
            return _pack_hwc(merged)
        if x.dtype == np.uint64:  # binary input: packed kernels (C_out, k, k, words)
            weight = _pack_hwc(weight.transpose(0, 2, 3, 1) < 0)
        in_channels, stride, padding, pool = geometry
        return self.lib.conv_sign(
            x, weight, t, d, channels=in_channels, stride=stride, padding=padding, pool=pool,
            channel_index=channels, base=base,
        )  # fmt: skip


def _int8_matmul_available() -> bool:
    """Whether ``torch._int_mm`` runs (and is exact) on this build."""
    try:
        a = torch.tensor([[1, -2, 3, 4, 5, 6, 7, 8]] * 17, dtype=torch.int8)
        b = torch.ones(8, 8, dtype=torch.int8)
        return bool(torch.equal(torch._int_mm(a, b), a.int() @ b.int()))
    except (RuntimeError, AttributeError):
        return False


def _fold_rows(layer: DeployLayer) -> tuple[np.ndarray, np.ndarray]:
    """Bool signs (True = -1) with row j negated where ``d_j = -1``, and int32 ``d T``.

    Negating row j turns ``d (a - T) >= 0`` into ``a' >= d T`` for ``a' = d a``.
    """
    d = layer.direction.astype(np.int64)
    signs = (layer.weight < 0) ^ (d < 0)[:, None]
    return signs, (d * layer.threshold).astype(np.int32)


class FastEvaluator:
    """Exact deploy-mode predictions of a BNN (dense or convolutional) under weight fault maps.

    Args:
        net: a :class:`~lightning_bet.models.BNN` that :func:`~lightning_bet.deploy.fold.to_deploy`
            accepts (real-valued first layer; conv blocks with zero padding and max-pool, then
            dense blocks, then the output layer).
        x: ``(N, *input_shape)`` or ``(N, features)`` inputs ``q / L``.
        y: ``(N,)`` labels.
        input_levels: ``L``; ``None`` detects it (:func:`detect_input_levels`).
        backend: kernels, ``"auto"`` (native C library if it compiles), ``"native"`` or
            ``"torch"`` (exact float64/float32 torch ops).

    Raises:
        ValueError: the inputs are not ``q / L`` for integer ``q`` in ``[0, L]``, or the network
            has a block deploy mode does not support (the message names it).

    Example:
        >>> from lightning_bet.models import build_model
        >>> net = build_model("vgg3", (1, 8, 8), 10, (16,)).eval()
        >>> x, y = torch.randint(0, 17, (16, 1, 8, 8)) / 16, torch.randint(0, 10, (16,))
        >>> ev = FastEvaluator(net, x, y)
        >>> ev.input_levels, ev.correct([torch.empty(0, dtype=torch.long)] * 4) <= 16
        (16, True)

    """

    @torch.no_grad()
    def __init__(
        self,
        net: torch.nn.Module,
        x: Tensor,
        y: Tensor,
        input_levels: int | None = None,
        backend: str = "auto",
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"Expected `x` and `y` with the same number of samples, but got {x.shape[0]} "
                f"and {y.shape[0]}"
            )
        levels = detect_input_levels(x) if input_levels is None else input_levels
        if levels is None:
            raise ValueError(
                "Expected inputs q / L with integer q in [0, L] for some L <= "
                f"{MAX_LEVELS} (the fast path is exact on integer pixels), but got values in "
                f"[{float(x.min())}, {float(x.max())}] on no such grid"
            )
        self.model: DeployModel = to_deploy(net, levels)
        self.input_levels = self.model.input_levels
        q = integer_pixels(x, levels)
        if q.reshape(q.shape[0], -1).shape[1] != self.model.in_features:
            raise ValueError(
                f"Expected inputs with {self.model.in_features} pixels per sample, but got "
                f"{tuple(x.shape)}"
            )
        self.kernels = _Kernels(backend)
        self._pool: ThreadPoolExecutor | None = None  # split first-layer matmuls
        self.y = y.detach().cpu().numpy()
        self.samples = int(x.shape[0])
        layers = self.model.layers
        self.layers = layers
        #: per layer: bool signs (True = -1) in the layout its kernel takes, PyTorch order for
        #: convolutions; dense layers fed by a convolution have columns in the packed HWC order
        self.signs: list[np.ndarray] = []
        #: per dense layer fed by a convolution: packed column of each (C, H, W) input index
        self.columns: list[np.ndarray | None] = []
        self.thresholds: list[np.ndarray | None] = []
        for i, layer in enumerate(layers):
            if isinstance(layer, DeployConv):
                self.signs.append(layer.weight < 0)
                self.columns.append(None)
                self.thresholds.append(None)
                continue
            if layer.threshold is not None:
                signs, t = _fold_rows(layer)
            else:
                signs, t = layer.weight < 0, None
            previous = layers[i - 1] if i > 0 else None
            columns = None
            if isinstance(previous, DeployConv):
                channels, height, width = previous.out_shape
                words = -(-channels // 64)
                c, h, w = np.meshgrid(
                    np.arange(channels), np.arange(height), np.arange(width), indexing="ij"
                )
                columns = ((h * width + w) * words * 64 + c).reshape(-1)  # (C, H, W) order
                placed = np.zeros((signs.shape[0], height * width * words * 64), dtype=bool)
                placed[:, columns] = signs
                signs = placed
            self.signs.append(signs)
            self.columns.append(columns)
            self.thresholds.append(t)
        self.packed_clean = [self._pack(i, self.signs[i]) for i in range(len(layers))]
        self._prepare_first(q)
        # outputs of every hidden layer without faults, reused where no flip reaches
        empty = [torch.empty(0, dtype=torch.long)] * len(layers)
        self.clean: list[np.ndarray] | None = None
        self.clean = self._forward(empty, slice(None), keep=True)

    def _pack(self, i: int, signs: np.ndarray) -> np.ndarray:
        """Packed weights of layer ``i`` (int8 +-1 kernels for convolutions)."""
        if isinstance(self.layers[i], DeployConv):
            return np.where(signs, -1, 1).astype(np.int8)
        return _pack_rows(signs)

    def _prepare_first(self, q: Tensor) -> None:
        """Integer pixels in the first layer's layout; for dense, the int8 kernel's state.

        Dense first layers choose ``"int8"`` (``q <= 255``: ``q`` or ``q - 128`` as int8, an exact
        ``torch._int_mm`` per fault map, or with few flips the cached clean product plus a CSR
        update of the touched rows) or ``"exact"`` (exact float matmul of the integers).
        """
        first = self.layers[0]
        if isinstance(first, DeployConv):
            self.first_kernel = "conv"
            shape = (q.shape[0], *first.in_shape)
            self.q_image = q.reshape(shape).to(torch.int16).numpy()  # (N, C, H, W)
            return
        q = q.reshape(q.shape[0], -1)
        top = int(q.max()) if q.numel() else 0
        self.offset = 128 if top > 127 else 0
        if top <= 255 and _int8_matmul_available():
            self.first_kernel = "int8"
            self.q8 = (q - self.offset).to(torch.int8).contiguous()  # (N, in)
            self.w8_clean = np.where(self.signs[0], -1, 1).astype(np.int8)  # d folded
            clean = torch._int_mm(self.q8, torch.from_numpy(self.w8_clean).T)  # (N, out) exact
            # sparse correction state: float32 is exact (|sums| <= 128 * in < 2^24)
            self.q8_t = self.q8.T.to(torch.float32).contiguous().numpy()  # (in, N)
            self.clean_first = clean.T.to(torch.float32).contiguous().numpy()  # (out, N)
        else:
            self.first_kernel = "exact"
            bound = first.in_features * max(top, 1)
            self.q_float = q.to(torch.float32 if bound < 2**24 else torch.float64)

    def _first_threshold(self, w8: np.ndarray) -> np.ndarray:
        """int32 ``(out,)`` thresholds for the int8 product of ``q - offset`` with ``w8``."""
        t = self.thresholds[0].astype(np.int64)
        if self.offset:
            t = t - self.offset * w8.sum(axis=1, dtype=np.int64)
        return t.astype(np.int32)

    def _first_bits_int(self, w8: np.ndarray, cols: slice) -> np.ndarray:
        """Packed first-layer output bits from one exact int8 matmul.

        The samples are split over as many Python threads as torch has intra-op threads, each
        running a one-thread matmul and thresholding its rows, instead of one matmul on torch's
        OpenMP pool followed by the native kernels on threads of their own (FCNN
        784-1024-1024-10, 10,000 samples, 2 cores: 44-51 ms per fault map through the pool,
        28-30 ms split).
        """
        q = self.q8[cols]
        w = torch.from_numpy(w8)
        t = self._first_threshold(w8)

        def part(rows: slice) -> np.ndarray:
            if torch.get_num_threads() != 1:  # a pool thread's first torch op fixes it at 1
                torch.set_num_threads(1)
            a = torch._int_mm(q[rows], w.T).numpy()  # (rows, out) int32, exact
            return self.kernels.threshold(a, t)

        with single_torch_thread() as threads:
            size = -(-q.shape[0] // threads)
            if threads == 1 or size < _MIN_ROWS_PER_THREAD:
                return part(slice(None))
            if self._pool is None:
                self._pool = ThreadPoolExecutor(threads, thread_name_prefix="fast-sweep")
            chunks = [slice(lo, lo + size) for lo in range(0, q.shape[0], size)]
            futures = [self._pool.submit(part, chunk) for chunk in chunks]
            return np.concatenate([future.result() for future in futures])

    def _first_bits_sparse(self, idx: np.ndarray, cols: slice, clean: np.ndarray) -> np.ndarray:
        """First-layer bits from the clean product and a correction over the flipped weights.

        ``a'_j = a_j - 2 sum_{flipped (j, i)} w_ji q_i``, evaluated only for the rows ``j`` with
        at least one flip as a CSR ``(rows, in) @ (in, N)`` product (exact in float32).
        """
        import scipy.sparse

        # numpy/scipy on purpose: torch's OpenMP pool would still be spinning when the native
        # popcount kernel starts its threads right after (measured: 4x slower popcount)
        out_f, in_f = self.w8_clean.shape
        rows, counts = np.unique(idx // in_f, return_counts=True)
        crow = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(counts, out=crow[1:])
        values = -2.0 * self.w8_clean.reshape(-1)[idx].astype(np.float32)
        delta = scipy.sparse.csr_matrix((values, idx % in_f, crow), shape=(rows.size, in_f))
        a = self.clean_first[rows][:, cols] + delta @ self.q8_t[:, cols]  # (rows, len(cols))
        t = self.thresholds[0][rows].astype(np.int64)
        if self.offset:  # the flipped rows' sums of weights
            flipped_sum = self.w8_clean[rows].sum(axis=1, dtype=np.int64)
            flipped_sum += np.bincount(
                np.searchsorted(rows, idx // in_f), weights=values, minlength=rows.size
            ).astype(np.int64)
            t = t - self.offset * flipped_sum
        negative = (a < t[:, None]).astype(np.uint8)
        # OR the new bits of the touched neurons into their packed bytes (LSB-first)
        byte, shift = rows // 8, rows % 8
        clean_bytes = clean.view(np.uint8)  # (len(cols), 4 * words)
        new_bits = np.zeros((clean_bytes.shape[1], clean_bytes.shape[0]), dtype=np.uint8)
        mask = np.zeros(clean_bytes.shape[1], dtype=np.uint8)
        for bit in range(8):  # rows with the same bit position lie in distinct bytes
            sel = shift == bit
            new_bits[byte[sel]] |= negative[sel] << np.uint8(bit)
            mask[byte[sel]] |= np.uint8(1 << bit)
        merged = (clean_bytes & ~mask) | new_bits.T
        return np.ascontiguousarray(merged).view(np.uint32)

    def _flipped(self, i: int, flips: Tensor) -> np.ndarray:
        """Signs of layer ``i`` (its kernel's layout) with the flat PyTorch indices flipped."""
        idx = flips.cpu().numpy()
        bits = self.signs[i].copy()
        columns = self.columns[i]
        if columns is not None:  # (row, C*H*W index) -> (row, packed column)
            in_f = self.layers[i].in_features
            idx = (idx // in_f) * bits.shape[1] + columns[idx % in_f]
        flat = bits.reshape(-1)
        flat[idx] = ~flat[idx]
        return bits

    def _first(self, flips: Tensor, cols: slice) -> np.ndarray:
        first = self.layers[0]
        if isinstance(first, DeployConv):
            signs = self._flipped(0, flips)
            touched = np.unique(flips.cpu().numpy() // first.fan_in)
            if self.clean is not None and touched.size < first.weight.shape[0]:
                # a kernel bit only moves its own channel: recompute the flipped channels only
                weight = self._pack(0, signs[touched])
                base = self.clean[0][cols]
                return self.kernels.conv(self.q_image[cols], first, weight, touched, base)
            return self.kernels.conv(self.q_image[cols], first, self._pack(0, signs))
        if self.first_kernel == "exact":
            w = torch.from_numpy(np.where(self._flipped(0, flips), -1, 1)).to(self.q_float.dtype)
            a = (self.q_float[cols] @ w.T).round().to(torch.int64).numpy()
            return _pack_rows(a < self.thresholds[0].reshape(1, -1))
        out_f, in_f = self.w8_clean.shape
        if flips.numel() * _SPARSE_COST < out_f * in_f and self.clean is not None:
            return self._first_bits_sparse(flips.cpu().numpy(), cols, self.clean[0][cols])
        # numpy fancy indexing: a torch ``flat[idx] *= -1`` costs ~0.5 us per flip
        idx = flips.cpu().numpy()
        w8 = self.w8_clean.copy()
        flat = w8.reshape(-1)
        flat[idx] = -flat[idx]
        return self._first_bits_int(w8, cols)

    def _forward(self, flips: Sequence[Tensor], cols: slice, keep: bool = False) -> list:
        """Outputs of every layer (hidden: packed signs; last: int32 logits)."""
        outputs = []
        clean = self.clean is not None
        h = None
        for i, layer in enumerate(self.layers):
            clean = clean and flips[i].numel() == 0
            last = i == len(self.layers) - 1
            if clean and not last:
                h = self.clean[i][cols]  # no flip reaches this layer
            elif i == 0:
                h = self._first(flips[0], cols)
            elif isinstance(layer, DeployConv):
                weight = (
                    self.packed_clean[i]
                    if flips[i].numel() == 0
                    else self._pack(i, self._flipped(i, flips[i]))
                )
                h = self.kernels.conv(h, layer, weight)
            else:
                if h.dtype == np.uint64:  # a convolution's (N, H, W, words) map, flattened
                    h = h.reshape(h.shape[0], -1).view(np.uint32)
                w = (
                    self.packed_clean[i]
                    if flips[i].numel() == 0
                    else _pack_rows(self._flipped(i, flips[i]))
                )
                n = layer.in_features
                h = np.ascontiguousarray(h)
                h = (
                    self.kernels(h, w, n)
                    if last
                    else self.kernels.signs(h, w, n, self.thresholds[i])
                )
            if keep:
                outputs.append(h)
        return outputs if keep else [h]

    def predictions(self, flips: Sequence[Tensor], cols: slice = slice(None)) -> np.ndarray:
        """Predicted classes of samples ``cols`` under one fault map per layer.

        Args:
            flips: per binary layer (blocks then head), flat indices of flipped weights in
                PyTorch's weight order (``(out, in)`` or ``(C_out, C_in, k, k)``, row-major).
            cols: the samples to evaluate (a slice).

        Returns:
            int64 ``(len(cols),)`` predictions (first index on ties).

        """
        if len(flips) != len(self.layers):
            raise ValueError(
                f"Expected one fault map per binary layer ({len(self.layers)}), but got "
                f"{len(flips)}"
            )
        return self._forward(flips, cols)[-1].argmax(axis=1)

    def correct(self, flips: Sequence[Tensor], cols: slice = slice(None)) -> int:
        """Number of correctly classified samples ``cols`` under the fault maps ``flips``."""
        return int((self.predictions(flips, cols) == self.y[cols]).sum())


def fast_evaluator(
    net: torch.nn.Module, x: Tensor, y: Tensor, required: bool = False
) -> tuple[FastEvaluator | None, str]:
    """A :class:`FastEvaluator`, or ``None`` and the reason when it does not apply.

    Args:
        net: the BNN.
        x: inputs.
        y: labels.
        required: raise the ``ValueError`` instead of returning ``None``.

    Returns:
        ``(evaluator or None, reason)`` (``reason`` is ``""`` with an evaluator).

    """
    try:
        return FastEvaluator(net, x, y), ""
    except ValueError as error:
        if required:
            raise
        return None, str(error)
