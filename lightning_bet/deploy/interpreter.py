"""numpy reference interpreter of bitstreams (formats v1 and v2), working on the packed words.

It never unpacks the weights to ``{-1, +1}``: binary layers use ``a = n - 2 popcount(x XOR w)``
on 32-bit words, and the integer-pixel first layer uses bit planes of ``q``
(``q = sum_b 2^b q_b`` with ``q_b`` in ``{0, 1}``), each a popcount:
``sum_i w_i q_bi = popcount(q_b) - 2 popcount(q_b AND w)`` (a set weight bit is ``-1``).

Convolutional layers (v2) take each kernel out of the layer's bit vector by word shifts (kernel
``o`` starts at bit ``o * C_in * k * k``), pack every input window in the kernel's ``(c, i, j)``
order, and drop the zero padding by counting, per output position, the kernel bits that lie
over it (``a = n_valid - 2 (popcount(x XOR w) - popcount(w AND NOT valid))``). Max-pool then
threshold is computed as METHOD §7 states it: an OR of the window's threshold bits for direction
``+1``, an AND for ``-1``. So it checks the packing and the pooling rule independently of
:func:`~lightning_bet.deploy.fold.deploy_forward`, which convolves unpacked weights in float64
and pools the pre-activation.
"""

from __future__ import annotations

import numpy as np

from lightning_bet.deploy.bitstream import PackedLayer, PackedModel, pack_model, parse_bitstream
from lightning_bet.deploy.model import DeployModel

__all__ = ["popcount", "predict_bitstream", "run_bitstream"]

#: upper bound on the uint32 words of one ``(chunk, out, words)`` intermediate
_CHUNK_WORDS = 1 << 22


def _bit_counts(words: np.ndarray, in_place: bool = False) -> np.ndarray:
    """uint32 set-bit counts of uint32 ``words`` (SWAR: pairs, nibbles, bytes, then a multiply).

    ``in_place``: overwrite ``words`` (a uint32 array the caller owns) instead of copying it.
    """
    w = words if in_place else np.array(words, dtype=np.uint32)
    w -= (w >> 1) & np.uint32(0x55555555)
    w = (w & np.uint32(0x33333333)) + ((w >> 2) & np.uint32(0x33333333))
    w += w >> 4
    w &= np.uint32(0x0F0F0F0F)
    w *= np.uint32(0x01010101)
    w >>= 24
    return w


def popcount(words: np.ndarray) -> np.ndarray:
    """Number of set bits of every uint32 in ``words`` (shape kept), as int64."""
    return _bit_counts(words).astype(np.int64)


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """``(N, n)`` 0/1 -> uint32 ``(N, ceil(n / 32))``, LSB first, 0-padded."""
    count, n = bits.shape
    words = (n + 31) // 32
    padded = np.zeros((count, words * 32), dtype=np.uint8)
    padded[:, :n] = bits
    packed = np.packbits(padded.reshape(count, words, 4, 8), axis=-1, bitorder="little")
    return packed.reshape(count, words * 4).view("<u4").astype(np.uint32)


def _popcount_and(x: np.ndarray, w: np.ndarray, xor: bool) -> np.ndarray:
    """``(N, words) x (m, words) -> (N, m)`` popcounts of ``x XOR w`` (or ``x AND w``)."""
    count, words = x.shape
    rows = w.shape[0]
    chunk = max(1, _CHUNK_WORDS // max(1, rows * words))
    out = np.empty((count, rows), dtype=np.int64)
    for start in range(0, count, chunk):
        block = x[start : start + chunk, None, :]
        combined = (block ^ w[None]) if xor else (block & w[None])
        counts = _bit_counts(combined, in_place=True)
        out[start : start + chunk] = counts[..., 0] if words == 1 else counts.sum(axis=-1)
    return out


def _layer_preactivation(layer: PackedLayer, v: np.ndarray, planes: int) -> np.ndarray:
    """Integer pre-activations ``(N, m)`` of one layer on the packed weights."""
    n = layer.in_features
    if layer.binary_input:
        x = _pack_bits((v < 0).astype(np.uint8))
        return n - 2 * _popcount_and(x, layer.weight_words, xor=True)
    a = np.zeros((v.shape[0], layer.out_features), dtype=np.int64)
    for b in range(planes):
        plane = ((v >> b) & 1).astype(np.uint8)
        x = _pack_bits(plane)
        ones = popcount(x).sum(axis=-1)[:, None]
        a += (ones - 2 * _popcount_and(x, layer.weight_words, xor=False)) << b
    return a


def _direction_signs(layer: PackedLayer) -> np.ndarray:
    units = layer.out_channels if layer.is_conv else layer.out_features
    bits = np.unpackbits(
        np.ascontiguousarray(layer.direction_words, dtype="<u4").view(np.uint8),
        bitorder="little",
    )[:units]
    return 1 - 2 * bits.astype(np.int64)


def _kernel_rows(layer: PackedLayer) -> np.ndarray:
    """The conv layer's bit vector cut into one 0-padded row of words per kernel, by shifts.

    Returns:
        uint32 ``(C_out, ceil(F / 32))`` with ``F = C_in * k * k``: bit ``e`` of row ``o`` is bit
        ``o * F + e`` of the stored vector.

    """
    fan_in = layer.weight_count // layer.out_channels
    words = (fan_in + 31) // 32
    vector = np.append(layer.weight_words, 0).astype(np.uint64)  # a zero word past the end
    start = np.arange(layer.out_channels)[:, None] * fan_in + 32 * np.arange(words)[None, :]
    shift = (start % 32).astype(np.uint64)
    low = vector[start // 32] >> shift
    high = vector[start // 32 + 1] << (np.uint64(32) - shift)  # shift 32: all beyond bit 31
    rows = (low | high) & np.uint64(0xFFFFFFFF)
    if fan_in % 32:
        rows[:, -1] &= np.uint64((1 << (fan_in % 32)) - 1)  # the next kernel's bits
    return rows.astype(np.uint32)


def _windows(maps: np.ndarray, layer: PackedLayer) -> np.ndarray:
    """``(N, C, H, W)`` -> ``(N H_c W_c, C k k)``: each window in (c, i, j) order, zero padded."""
    k, s, p = layer.kernel, layer.stride, layer.padding
    padded = np.pad(maps, ((0, 0), (0, 0), (p, p), (p, p)))
    view = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
    _, height, width = layer.conv_shape
    view = view[:, :, : s * (height - 1) + 1 : s, : s * (width - 1) + 1 : s]
    return view.transpose(0, 2, 3, 1, 4, 5).reshape(-1, layer.weight_count // layer.out_channels)


def _conv_preactivation(layer: PackedLayer, v: np.ndarray, planes: int) -> np.ndarray:
    """Integer pre-activations ``(N, H_c, W_c, C_out)`` (channels last) of a conv layer."""
    maps = v.reshape(-1, *layer.in_shape)
    count = maps.shape[0]
    _, height, width = layer.conv_shape
    kernels = _kernel_rows(layer)
    if layer.binary_input:
        x = _pack_bits(_windows((maps < 0).astype(np.uint8), layer))  # padding: bit 0
        valid = _windows(np.ones((1, *layer.in_shape), np.uint8), layer)  # (H_c W_c, F)
        # kernel bits over the padding: popcount(w AND NOT valid), per position and channel
        outside = _popcount_and(_pack_bits(1 - valid), kernels, xor=False)
        differ = _popcount_and(x, kernels, xor=True).reshape(count, *outside.shape)
        differ -= outside
        a = valid.sum(axis=1, dtype=np.int64)[:, None] - 2 * differ
    else:  # sum_b 2^b (popcount(q_b) - 2 popcount(q_b AND w)), padding pixels are 0
        ones = np.zeros((count * height * width, 1), np.int64)
        negative = np.zeros((count * height * width, layer.out_channels), np.int64)
        for b in range(planes):
            x = _pack_bits(_windows(((maps >> b) & 1).astype(np.uint8), layer))
            ones += popcount(x).sum(axis=-1)[:, None] << b
            counts = _popcount_and(x, kernels, xor=False)
            counts <<= b
            negative += counts
        a = ones - 2 * negative
    return a.reshape(count, height, width, layer.out_channels)


def _conv_layer(layer: PackedLayer, v: np.ndarray, planes: int) -> np.ndarray:
    """``(N, C_in H W)`` -> ``(N, C_out H_out W_out)`` signs: threshold bits, then OR / AND pool."""
    a = _conv_preactivation(layer, v, planes)
    positive = _direction_signs(layer) > 0
    threshold = layer.threshold.astype(np.int64)
    bits = np.where(positive, a >= threshold, a <= threshold)  # d (a - T) >= 0
    channels, height, width = layer.out_shape
    pool = layer.pool
    windows = bits.reshape(len(a), height, pool, width, pool, channels)
    pooled = np.where(positive, windows.any(axis=(2, 4)), windows.all(axis=(2, 4)))
    signs = np.where(pooled, 1, -1).transpose(0, 3, 1, 2)  # (N, C_out, H_out, W_out)
    return signs.reshape(len(a), -1).astype(np.int64)


def _as_packed(model_or_bytes: PackedModel | DeployModel | bytes | bytearray) -> PackedModel:
    if isinstance(model_or_bytes, PackedModel):
        return model_or_bytes
    if isinstance(model_or_bytes, DeployModel):
        return pack_model(model_or_bytes)
    if isinstance(model_or_bytes, bytes | bytearray | memoryview):
        return parse_bitstream(model_or_bytes)
    raise TypeError(
        "Expected `model_or_bytes` to be bitstream bytes, a DeployModel or a PackedModel, but got "
        f"{type(model_or_bytes).__name__}"
    )


def _check_pixels(q: np.ndarray, packed: PackedModel) -> np.ndarray:
    q = np.asarray(q)
    n = packed.layers[0].in_features
    shapes = [f"(N, {n})"] + (
        [f"(N, {', '.join(map(str, packed.input_shape))})"] if packed.input_shape else []
    )
    fits = (q.ndim == 2 and q.shape[1] == n) or (
        bool(packed.input_shape) and tuple(q.shape[1:]) == packed.input_shape and q.ndim >= 2
    )
    if not fits:
        raise ValueError(f"Expected `q` of shape {' or '.join(shapes)}, but got {q.shape}")
    if not np.issubdtype(q.dtype, np.integer) or q.dtype == np.bool_:
        raise TypeError(f"Expected `q` to be an integer array (e.g. uint8), but got {q.dtype}")
    flat = q.reshape(q.shape[0], -1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() > packed.input_levels):
        raise ValueError(
            f"Expected `q` to hold pixels in [0, {packed.input_levels}], but got values in "
            f"[{flat.min()}, {flat.max()}]"
        )
    return flat


def run_bitstream(
    model_or_bytes: PackedModel | DeployModel | bytes | bytearray, q: np.ndarray
) -> np.ndarray:
    """Integer logits of a bitstream (or model) for integer pixels, on packed words.

    Args:
        model_or_bytes: bitstream bytes (validated with
            :func:`~lightning_bet.deploy.bitstream.parse_bitstream`), a ``DeployModel`` (packed
            first) or a ``PackedModel``.
        q: integer array ``(N, in_features)`` or ``(N, *input_shape)`` of pixels in
            ``[0, input_levels]`` (uint8 for 8-bit images).

    Returns:
        int64 ``(N, num_classes)`` integer logits; they equal
        :func:`~lightning_bet.deploy.fold.deploy_forward` on every sample.

    Example:
        >>> from lightning_bet.deploy.bitstream import write_bitstream
        >>> from lightning_bet.deploy.fold import to_deploy
        >>> from lightning_bet.models import build_model
        >>> data = write_bitstream(to_deploy(build_model("fcnn", (1, 8, 8), 10, (16,)), 16))
        >>> run_bitstream(data, np.zeros((2, 64), np.uint8)).shape
        (2, 10)

    """
    packed = _as_packed(model_or_bytes)
    v = _check_pixels(q, packed)
    planes = max(1, int(packed.input_levels).bit_length())
    for layer in packed.layers:
        if layer.is_conv:
            v = _conv_layer(layer, v, planes)
            continue
        a = _layer_preactivation(layer, v, planes)
        if layer.is_output:
            return a
        d = _direction_signs(layer)
        v = np.where(d * (a - layer.threshold.astype(np.int64)) >= 0, 1, -1).astype(np.int64)
    raise ValueError("Expected a model whose last layer is an output layer")  # pragma: no cover


def predict_bitstream(
    model_or_bytes: PackedModel | DeployModel | bytes | bytearray, q: np.ndarray
) -> np.ndarray:
    """Predicted classes ``(N,)`` int64: ``argmax`` of :func:`run_bitstream` (lowest on ties)."""
    return run_bitstream(model_or_bytes, q).argmax(axis=1)
