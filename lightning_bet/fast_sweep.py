"""Fast, exact evaluation of a dense BNN under many weight fault maps (METHOD §6).

A fault-injection sweep evaluates the same network on the same data under hundreds of fault
maps. :class:`FastDenseEvaluator` prepares everything that does not depend on the faults once,
then evaluates one fault map with much less arithmetic than a float forward pass:

- **Real-valued first layer**: the clean product ``A = X W^T`` is computed once; under faults
  only the flipped weights change it, ``A' = A - 2 sum_{flipped (j, i)} w_ji x_i``, a sparse
  update whose cost grows with the number of flips (a CSR sparse-dense product).
- **Layers with binary inputs**: XNOR/popcount on packed sign bits (the native C kernel of
  :mod:`lightning_bet.native` when it compiles, else an exact float matmul of +-1 values); the
  native kernel compares hidden pre-activations with their thresholds in registers and writes
  only the packed signs of the next layer's input.
- **Thresholds**: every hidden layer's ``sign(BatchNorm(a))`` is folded into one comparison per
  neuron that is *derived from the network's own BatchNorm module*, so it reproduces the float
  forward exactly (see :func:`exact_integer_thresholds` and :func:`exact_float_thresholds`).

Reference semantics (what "identical" means): the network in eval mode run in float32, with
the first-layer pre-activation equal to the exact sum of the products, rounded once to float32.
When the inputs lie on a grid ``q / 2^k`` whose sums fit float32's mantissa (digits ``q/16``,
binary inputs, ``q/256`` images) every float32 summation order gives that exact value, so the
plain float32 forward of the copied, flipped model agrees on every sample. For other inputs
(``q/255``) the evaluator computes the exact sum in float64; a BLAS float32 sum can then differ
by rounding, which matters only when a pre-activation lies within one float32 ulp of a threshold.
Predictions are ``argmax`` of the integer logits, first index on ties (as ``torch.argmax``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from lightning_bet._threads import single_torch_thread
from lightning_bet.layers import BinaryLinear
from lightning_bet.models import BNN

__all__ = [
    "FastDenseEvaluator",
    "exact_float_thresholds",
    "exact_integer_thresholds",
    "supports_fast_path",
]


def supports_fast_path(net: BNN) -> bool:
    """Whether ``net`` is a fully connected BNN (dense blocks without pooling)."""
    return all(
        isinstance(block.layer, BinaryLinear) and block.pool is None for block in net.blocks
    ) and isinstance(net.head.layer, BinaryLinear)


@torch.no_grad()
def _bn_positive(bn: torch.nn.Module, values: Tensor) -> Tensor:
    """``bn(values) >= 0`` with the module in eval mode, for ``values`` of shape ``(K, C)``."""
    training = bn.training
    try:
        bn.eval()
        return bn(values) >= 0
    finally:
        bn.train(training)


@torch.no_grad()
def exact_integer_thresholds(bn: torch.nn.Module, n: int) -> tuple[Tensor, Tensor]:
    """Fold ``sign(bn(a))`` for integer ``a`` in ``[-n, n]`` into ``d a >= T`` exactly.

    ``bn`` (eval mode, float32) is evaluated on every integer in ``[-n, n]``; ``sign`` of an
    affine map is monotone, so its output is ``+1`` exactly on ``{a >= T}`` (``gamma >= 0``)
    or ``{a <= U}`` (``gamma < 0``). The result reproduces the module bit for bit.

    Args:
        bn: the BatchNorm of a hidden block with ``C`` channels.
        n: fan-in (``|a| <= n``).

    Returns:
        ``(d, T)``: int64 ``(C,)`` directions in ``{-1, +1}`` and thresholds, with output
        ``+1`` iff ``d * a >= T``.

    """
    param = next(bn.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = bn.running_mean.device
    values = torch.arange(-n, n + 1, dtype=dtype, device=device)
    channels = bn.num_features
    table = _bn_positive(
        bn, values.view(-1, 1).expand(-1, channels).contiguous()
    ).cpu()  # (2n+1, C)
    gamma = bn.weight.detach().cpu() if bn.affine else torch.ones(channels)
    d = torch.where(gamma < 0, -1, 1).to(torch.int64)
    # gamma >= 0: first a with +1 (n + 1 when none); gamma < 0: -(last a with +1) (n + 1 when none)
    ints = torch.arange(-n, n + 1, dtype=torch.int64).view(-1, 1)
    big = torch.full_like(ints, n + 1)
    first = torch.where(table, ints, big).min(0).values
    last = torch.where(table, ints, -big).max(0).values
    T = torch.where(d > 0, first, -last)
    rebuilt = (d.view(1, -1) * ints) >= T.view(1, -1)
    if not torch.equal(rebuilt, table):
        raise RuntimeError("BatchNorm output is not monotone in its input; cannot fold it")
    return d, T


def _ordered(bits: Tensor) -> Tensor:
    """Map float32 bit patterns (int64) to integers ordered like the floats."""
    return torch.where(bits >= 0, bits, -(bits & 0x7FFFFFFF))


def _unordered(keys: Tensor) -> Tensor:
    return torch.where(keys >= 0, keys, (-keys) | -0x80000000)


@torch.no_grad()
def exact_float_thresholds(bn: torch.nn.Module) -> tuple[Tensor, Tensor]:
    """Fold ``sign(bn(a))`` for float32 ``a`` into ``d a >= T`` exactly (bisection on floats).

    The smallest (``gamma >= 0``) or largest (``gamma < 0``) float32 ``a`` with
    ``bn(a) >= 0`` is found by bisection over the float32 values in their order, evaluating the
    module itself, so ``d a >= T`` reproduces ``bn(a) >= 0`` for every float32 ``a``.

    Returns:
        ``(d, T)``: float32 ``(C,)`` directions and thresholds (``T = +inf`` when no finite
        ``a`` gives ``+1``; ``-inf`` when every one does).

    """
    channels = bn.num_features
    device = bn.running_mean.device
    gamma = bn.weight.detach() if bn.affine else torch.ones(channels, device=device)
    d = torch.where(gamma < 0, -1.0, 1.0).to(torch.float32)
    big = torch.finfo(torch.float32).max
    lo_key = torch.full((channels,), int(_ordered(torch.tensor([-big]).view(torch.int32).long())))
    hi_key = torch.full((channels,), int(_ordered(torch.tensor([big]).view(torch.int32).long())))

    def positive(keys: Tensor) -> Tensor:
        """d-oriented predicate, monotone non-decreasing in the key: +1 at a = d * float(key)."""
        a = _unordered(keys).to(torch.int32).view(torch.float32).to(device) * d
        return _bn_positive(bn, a.view(1, -1).expand(2, -1).contiguous())[0].cpu()

    d_cpu = d.cpu()
    all_pos = positive(lo_key)
    none_pos = ~positive(hi_key)
    lo, hi = lo_key.clone(), hi_key.clone()  # invariant: positive(hi) (when not none_pos)
    # 64-ary search over the float32 order: ~6 evaluations of the module on (63, C) candidates
    steps = torch.arange(1, _FANOUT, dtype=torch.long).view(-1, 1)
    for _ in range(40):
        if bool((hi - lo <= 1).all()):
            break
        keys = lo.view(1, -1) + ((hi - lo).view(1, -1) * steps) // _FANOUT  # (63, C)
        values = _unordered(keys).to(torch.int32).view(torch.float32).to(device) * d.view(1, -1)
        pos = _bn_positive(bn, values.contiguous()).cpu()
        pos = torch.cat([pos, torch.ones(1, channels, dtype=torch.bool)])  # hi is positive
        first = pos.long().argmax(0)  # first positive candidate (monotone along rows)
        bounds = torch.cat([keys, hi.view(1, -1)])
        new_hi = bounds.gather(0, first.view(1, -1)).view(-1)
        below = torch.cat([lo.view(1, -1), keys])
        new_lo = below.gather(0, first.view(1, -1)).view(-1)
        hi, lo = new_hi, new_lo
    t = _unordered(hi).to(torch.int32).view(torch.float32)
    t = torch.where(all_pos, torch.tensor(-math.inf), t)
    t = torch.where(none_pos, torch.tensor(math.inf), t)
    return d_cpu, t


#: Popcount products below this many word pairs run single-threaded.
_SMALL_WORK = 1 << 22

#: Sparse first-layer correction when ``flips * _SPARSE_COST < out * in`` (dense int8 matmul
#: otherwise): measured crossover for 784x1024 weights and 10,000 samples at ~2,000 flips.
_SPARSE_COST = 400

#: Fewest samples per thread of the split first-layer matmul (a thread hand-off costs ~50 us).
_MIN_ROWS_PER_THREAD = 512

#: Candidates per step of the search for float thresholds.
_FANOUT = 64


def _pack_rows(bits: np.ndarray) -> np.ndarray:
    """Pack bool ``(rows, n)`` (True = -1) LSB-first into uint32 ``(rows, ceil(n / 32))``."""
    rows, n = bits.shape
    words = -(-n // 32)
    if words * 32 != n:
        bits = np.pad(bits, ((0, 0), (0, words * 32 - n)))
    return np.packbits(bits, axis=-1, bitorder="little").view("<u4").astype(np.uint32, copy=False)


def _pack_columns(bits: np.ndarray) -> np.ndarray:
    """Pack bool ``(n, N)`` (feature-major, True = -1) into uint32 ``(N, ceil(n / 32))``."""
    n, cols = bits.shape
    words = -(-n // 32)
    if words * 32 != n:
        bits = np.pad(bits, ((0, words * 32 - n), (0, 0)))
    packed = np.packbits(bits, axis=0, bitorder="little")  # (4 * words, N) bytes
    return np.ascontiguousarray(packed.T).view("<u4").astype(np.uint32, copy=False)


class _Popcount:
    """``a = x @ w.T`` for packed signs: native kernel when available, else exact torch matmul."""

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
        if self.lib is not None:
            # small products run on one thread: waking a pool costs more than the work
            work = xpacked.shape[0] * wpacked.shape[0] * wpacked.shape[1]
            threads = 1 if work < _SMALL_WORK else None
            return self.lib.binary_dense(xpacked, wpacked, n, threads=threads, check_padding=False)
        x = _unpack(xpacked, n)
        w = _unpack(wpacked, n)
        return (x @ w.T).to(torch.int32).numpy()

    def signs(self, xpacked: np.ndarray, wpacked: np.ndarray, n: int, t: np.ndarray) -> np.ndarray:
        """Packed next-layer input bits ``a < t`` (True = -1) of ``a = x @ w.T``."""
        if self.lib is not None:
            work = xpacked.shape[0] * wpacked.shape[0] * wpacked.shape[1]
            threads = 1 if work < _SMALL_WORK else None
            return self.lib.binary_dense_sign(xpacked, wpacked, n, t.reshape(-1), threads=threads)
        return _pack_rows(self(xpacked, wpacked, n) < t)

    def threshold(self, a: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Packed bits ``a < t`` (True = -1) of int32 pre-activations ``(N, C)``."""
        if self.lib is not None:
            # one thread: it follows a torch matmul, and its own threads then compete with
            # torch's OpenMP pool (measured 2.6 ms with 2 threads, 1.75 ms with 1)
            return self.lib.sign_pack(a, t.reshape(-1).astype(np.int32, copy=False), threads=1)
        return _pack_rows(a < t)


def _unpack(packed: np.ndarray, n: int) -> Tensor:
    bits = np.unpackbits(packed.view(np.uint8), axis=-1, bitorder="little")[..., :n]
    return torch.from_numpy(1.0 - 2.0 * bits.astype(np.float32))


def _dyadic_exponent(x: Tensor) -> int | None:
    """Smallest ``k <= 12`` with ``x * 2^k`` integral (every sum then exact), else ``None``."""
    x = x.to(torch.float32)
    for k in range(0, 13):
        scaled = x * 2.0**k  # exact: a power-of-two scale
        if not bool(torch.frac(scaled).any()):
            return k if float(scaled.abs().sum(1, dtype=torch.float64).max()) < 2.0**24 else None
    return None


def _int8_matmul_available() -> bool:
    """Whether ``torch._int_mm`` runs (and is exact) on this build."""
    try:
        a = torch.tensor([[1, -2, 3, 4, 5, 6, 7, 8]] * 17, dtype=torch.int8)
        b = torch.ones(8, 8, dtype=torch.int8)
        return bool(torch.equal(torch._int_mm(a, b), a.int() @ b.int()))
    except (RuntimeError, AttributeError):
        return False


def _exact_float32(x: Tensor) -> bool:
    """Whether every float32 sum of ``+-x_i`` per row is exact (inputs on a dyadic grid)."""
    for k in range(0, 13):
        scaled = x.double() * 2.0**k
        if torch.equal(scaled, scaled.round()):
            return float(scaled.abs().sum(1).max()) < 2.0**24
    return False


class FastDenseEvaluator:
    """Exact accuracy of a fully connected BNN under weight fault maps, fast.

    Args:
        net: a :class:`~lightning_bet.models.BNN` whose blocks are dense without pooling.
        x: ``(N, *input_shape)`` or ``(N, features)`` inputs.
        y: ``(N,)`` labels.
        backend: popcount backend, ``"auto"`` (native C kernel if it compiles), ``"native"``
            or ``"torch"``.

    Example:
        >>> from lightning_bet.models import build_model
        >>> net = build_model(hidden=(32,)).eval()
        >>> x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
        >>> ev = FastDenseEvaluator(net, x, y)
        >>> ev.correct([torch.empty(0, dtype=torch.long)] * 2) == int((net(x).argmax(1) == y).sum())
        True

    """

    @torch.no_grad()
    def __init__(self, net: BNN, x: Tensor, y: Tensor, backend: str = "auto") -> None:
        if not supports_fast_path(net):
            raise ValueError(
                "Expected a fully connected BNN (dense blocks without pooling) for the fast "
                "path, but got convolution or pooling layers"
            )
        self.popcount = _Popcount(backend)
        self._pool: ThreadPoolExecutor | None = None  # split first-layer matmuls
        self.layers = [block.layer for block in net.blocks] + [net.head.layer]
        self.signs = [
            (layer.weight.detach().cpu() < 0).numpy() for layer in self.layers
        ]  # True = -1
        self.y = y.detach().cpu().numpy()
        x = x.detach().cpu().flatten(1).to(torch.float32)
        if x.shape[1] != self.layers[0].in_features:
            raise ValueError(
                f"Expected inputs with {self.layers[0].in_features} features, but got "
                f"{tuple(x.shape)}"
            )
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"Expected `x` and `y` with the same number of samples, but got {x.shape[0]} "
                f"and {y.shape[0]}"
            )
        self.samples = x.shape[0]
        first = self.layers[0]
        self.real_first = not first.binarize_input and len(net.blocks) > 0
        self.thresholds: list[tuple[np.ndarray, np.ndarray]] = []
        for i, block in enumerate(net.blocks):
            if i == 0 and self.real_first:
                d, t = exact_float_thresholds(block.bn)
                self.first_d = d.view(-1, 1)
                self.first_t = t.view(-1, 1)
            else:
                d, t = exact_integer_thresholds(block.bn, block.layer.in_features)
                # fold d into the weights: negating row j turns ``d a >= T`` into ``a >= T``
                self.signs[i] = self.signs[i] ^ (d < 0).numpy()[:, None]
                self.thresholds.append(t.numpy().astype(np.int32))
        if self.real_first:
            self._prepare_first(x, first)
        else:
            self.input_bits = _pack_rows((x < 0).numpy())  # sign(0) = +1
        self.packed_clean = [_pack_rows(s) for s in self.signs]

    def _prepare_first(self, x: Tensor, first: BinaryLinear) -> None:
        """Choose the first-layer kernel and cache its clean output bits.

        ``"int8"``: inputs are ``q / 2^k`` with integers ``|q| <= 127`` (digits, 4-bit images):
        an exact int8 matmul ``q @ W'^T`` per fault map, compared with the float thresholds
        scaled to integers (``d a >= T  <=>  d (q W'^T) >= ceil(T 2^k)``, exact); with few
        flips (``flips * _SPARSE_COST < out * in``) the cached clean product plus a CSR update
        of the touched neurons instead (:meth:`_first_bits_sparse_int`).
        ``"sparse"``: otherwise, the clean product (exact, float32 or float64) plus a CSR update
        over the flipped weights only.
        """
        w_sign = torch.where(first.weight.detach().cpu() >= 0, 1.0, -1.0)
        self.first_kernel = "sparse"
        k = _dyadic_exponent(x)
        if k is not None:
            q = x.double() * 2.0**k
            if float(q.abs().max()) <= 127 and _int8_matmul_available():
                self.first_kernel = "int8"
                self.q = q.round().to(torch.int8).contiguous()  # (N, in)
                # fold the directions into the weights: row j negated where d_j = -1
                self.w0_int8 = (w_sign * self.first_d.view(-1, 1)).to(torch.int8)
                self.w0_int8_np = self.w0_int8.numpy()
                scaled = self.first_t.view(-1).double() * 2.0**k
                limit = 2.0**31 - 1
                self.first_t_int = (
                    torch.ceil(scaled).clamp(-limit, limit).to(torch.int32).view(1, -1).numpy()
                )
                clean = torch._int_mm(self.q, self.w0_int8.T)  # (N, out) int32, exact
                self.clean_first_bits = _pack_rows(clean.numpy() < self.first_t_int)
                # sparse correction state: float32 is exact (|sums| <= 127 * in < 2^24)
                self.q_t_np = self.q.T.to(torch.float32).contiguous().numpy()  # (in, N)
                self.clean_first_np = clean.T.to(torch.float32).contiguous().numpy()  # (out, N)
                return
        self.dtype = torch.float32 if _exact_float32(x) else torch.float64
        self.xt = x.T.contiguous().to(self.dtype)  # (in, N)
        w0 = w_sign.to(self.dtype)
        self.clean_first = (w0 @ self.xt).contiguous()  # (out, N), exact
        self.w0_flat = w0.flatten()
        self.clean_first_bits = self._first_bits(self.clean_first)

    def _first_bits_int(self, w_int8: Tensor, cols: slice = slice(None)) -> np.ndarray:
        """Packed first-layer output bits from one exact int8 matmul ``q @ w^T``.

        The samples are split over as many Python threads as torch has intra-op threads, each
        running a one-thread matmul and thresholding its rows, instead of one matmul on torch's
        OpenMP pool followed by the native kernels on threads of their own (FCNN
        784-1024-1024-10, 10,000 samples, 2 cores: 44-51 ms per fault map through the pool,
        28-30 ms split).
        """
        q = self.q[cols]

        def part(rows: slice) -> np.ndarray:
            if torch.get_num_threads() != 1:  # a pool thread's first torch op fixes it at 1
                torch.set_num_threads(1)
            a = torch._int_mm(q[rows], w_int8.T).numpy()  # (rows, out) int32, exact
            return self.popcount.threshold(a, self.first_t_int)

        with single_torch_thread() as threads:
            size = -(-q.shape[0] // threads)
            if threads == 1 or size < _MIN_ROWS_PER_THREAD:
                return part(slice(None))
            if self._pool is None:
                self._pool = ThreadPoolExecutor(threads, thread_name_prefix="fast-forward")
            chunks = [slice(lo, lo + size) for lo in range(0, q.shape[0], size)]
            futures = [self._pool.submit(part, chunk) for chunk in chunks]
            return np.concatenate([future.result() for future in futures])

    def _first_bits(self, a: Tensor) -> np.ndarray:
        """Packed output bits (True = -1) of the first layer from its ``(out, N)`` product."""
        a32 = a.to(torch.float32) if a.dtype != torch.float32 else a
        negative = (a32 * self.first_d) < self.first_t
        return _pack_columns(negative.numpy())

    def _weights(self, layer: int, flips: Tensor) -> np.ndarray:
        if flips.numel() == 0:
            return self.packed_clean[layer]
        bits = self.signs[layer].copy()
        flat = bits.reshape(-1)
        idx = flips.cpu().numpy()
        flat[idx] = ~flat[idx]
        return _pack_rows(bits)

    @torch.no_grad()
    def _first_layer(self, flips: Tensor, cols: slice) -> np.ndarray:
        if flips.numel() == 0:
            return self.clean_first_bits[cols]
        if self.first_kernel == "int8":
            out_f, in_f = self.w0_int8.shape
            if flips.numel() * _SPARSE_COST < out_f * in_f:
                return self._first_bits_sparse_int(flips.cpu(), cols)
            # numpy fancy indexing: a torch ``flat[idx] *= -1`` costs ~0.5 us per flip
            idx = flips.cpu().numpy()
            w = self.w0_int8_np.copy()
            flat = w.reshape(-1)
            flat[idx] = -flat[idx]
            return self._first_bits_int(torch.from_numpy(w), cols)
        out_f, in_f = self.layers[0].weight.shape
        flips = flips.cpu()
        rows, col_idx = flips // in_f, flips % in_f
        values = -2.0 * self.w0_flat[flips]
        crow = torch.zeros(out_f + 1, dtype=torch.long)
        crow[1:] = torch.bincount(rows, minlength=out_f).cumsum(0)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            delta = torch.sparse_csr_tensor(
                crow, col_idx, values, (out_f, in_f), check_invariants=False
            )
        xt = self.xt[:, cols]
        a = torch.addmm(self.clean_first[:, cols], delta, xt)
        return self._first_bits(a)

    def _first_bits_sparse_int(self, flips: Tensor, cols: slice) -> np.ndarray:
        """First-layer bits from the clean product and a correction over the flipped weights.

        ``a'_j = a_j - 2 sum_{flipped (j, i)} w_ji q_i``, evaluated only for the rows ``j`` with
        at least one flip as a CSR ``(rows, in) @ (in, N)`` product (exact in float32).
        """
        import scipy.sparse

        # numpy/scipy on purpose: torch's OpenMP pool would still be spinning when the native
        # popcount kernel starts its threads right after (measured: 4x slower popcount)
        in_f = self.w0_int8.shape[1]
        idx = flips.numpy()
        rows, counts = np.unique(idx // in_f, return_counts=True)
        crow = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(counts, out=crow[1:])
        values = -2.0 * self.w0_int8_np.reshape(-1)[idx].astype(np.float32)
        delta = scipy.sparse.csr_matrix((values, idx % in_f, crow), shape=(rows.size, in_f))
        a = self.clean_first_np[rows][:, cols] + delta @ self.q_t_np[:, cols]  # (rows, len(cols))
        negative = (a < self.first_t_int.reshape(-1)[rows, None]).astype(np.uint8)
        # OR the new bits of the touched neurons into their packed bytes (LSB-first)
        byte, shift = rows // 8, rows % 8
        clean = self.clean_first_bits[cols].view(np.uint8)  # (len(cols), 4 * words)
        new_bits = np.zeros((clean.shape[1], clean.shape[0]), dtype=np.uint8)
        mask = np.zeros(clean.shape[1], dtype=np.uint8)
        for bit in range(8):  # rows with the same bit position lie in distinct bytes
            sel = shift == bit
            new_bits[byte[sel]] |= negative[sel] << np.uint8(bit)
            mask[byte[sel]] |= np.uint8(1 << bit)
        merged = (clean & ~mask) | new_bits.T
        return np.ascontiguousarray(merged).view(np.uint32)

    def predictions(self, flips: Sequence[Tensor], cols: slice = slice(None)) -> np.ndarray:
        """Predicted classes of samples ``cols`` under one fault map per layer.

        Args:
            flips: per binary layer (blocks then head), sorted flat indices of flipped weights
                in the ``(out, in)`` row-major layout.
            cols: the samples to evaluate (a slice).

        Returns:
            int64 ``(len(cols),)`` predictions.

        """
        if len(flips) != len(self.layers):
            raise ValueError(
                f"Expected one fault map per binary layer ({len(self.layers)}), but got "
                f"{len(flips)}"
            )
        if self.real_first:
            h = self._first_layer(flips[0], cols)
            start = 1
        else:
            h = self.input_bits[cols]
            start = 0
        for k in range(start, len(self.layers) - 1):
            t = self.thresholds[k - 1 if self.real_first else k]
            w = self._weights(k, flips[k])
            h = self.popcount.signs(np.ascontiguousarray(h), w, self.layers[k].in_features, t)
        head = len(self.layers) - 1
        a = self.popcount(
            np.ascontiguousarray(h), self._weights(head, flips[head]), self.layers[head].in_features
        )
        return a.argmax(axis=1)

    def correct(self, flips: Sequence[Tensor], cols: slice = slice(None)) -> int:
        """Number of correctly classified samples ``cols`` under the fault maps ``flips``."""
        return int((self.predictions(flips, cols) == self.y[cols]).sum())
