"""numpy reference interpreter of format-v1 bitstreams, working on the packed words.

It never unpacks the weights to ``{-1, +1}``: binary layers use ``a = n - 2 popcount(x XOR w)``
on 32-bit words, and the integer-pixel first layer uses bit planes of ``q``
(``q = sum_b 2^b q_b`` with ``q_b`` in ``{0, 1}``), each a popcount:
``sum_i w_i q_bi = popcount(q_b) - 2 popcount(q_b AND w)`` (a set weight bit is ``-1``).
So it checks the packing independently of :func:`~lightning_bet.deploy.fold.deploy_forward`,
which multiplies unpacked weights.
"""

from __future__ import annotations

import numpy as np

from lightning_bet.deploy.bitstream import PackedLayer, PackedModel, pack_model, parse_bitstream
from lightning_bet.deploy.model import DeployModel

__all__ = ["popcount", "predict_bitstream", "run_bitstream"]

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
#: upper bound on the uint32 words of one ``(chunk, out, words)`` intermediate
_CHUNK_WORDS = 1 << 22


def popcount(words: np.ndarray) -> np.ndarray:
    """Number of set bits of every uint32 in ``words`` (shape kept), as int64."""
    words = np.ascontiguousarray(words, dtype=np.uint32)
    counts = _POPCOUNT8[words.view(np.uint8)].reshape(*words.shape, 4)
    return counts.sum(axis=-1, dtype=np.int64)


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
        out[start : start + chunk] = popcount(combined).sum(axis=-1)
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
    bits = np.unpackbits(
        np.ascontiguousarray(layer.direction_words, dtype="<u4").view(np.uint8),
        bitorder="little",
    )[: layer.out_features]
    return 1 - 2 * bits.astype(np.int64)


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
