"""Bitstream format v1: writer and reader (the byte-level definition is ``export/FORMAT.md``).

Two levels:

- :func:`write_bitstream` / :func:`read_bitstream` convert between bytes and a
  :class:`~lightning_bet.deploy.model.DeployModel` (round trip exact; the output scale is stored
  as float32).
- :func:`parse_bitstream` returns a :class:`PackedModel`: the packed 32-bit words exactly as
  stored, with their byte offsets, for code that works on the packed bits (the numpy interpreter,
  fault emulation).

The reader validates everything (magic, version, reserved fields, sizes and offsets, every CRC,
padding bits) and raises :class:`BitstreamError` (a ``ValueError``) with the reason; it never
returns a model from a damaged file.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from lightning_bet._validation import check_positive_int
from lightning_bet.deploy.model import DeployLayer, DeployModel

__all__ = [
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "MAGIC",
    "BitstreamError",
    "PackedLayer",
    "PackedModel",
    "pack_model",
    "pack_rows",
    "parse_bitstream",
    "read_bitstream",
    "refresh_checksums",
    "unpack_model",
    "unpack_rows",
    "write_bitstream",
]

MAGIC = b"LBET"
FORMAT_VERSION = 1
KIND_HIDDEN = 1
KIND_OUTPUT = 2
FLAG_BINARY_INPUT = 1
MAX_INPUT_NDIM = 4

_HEADER = struct.Struct("<4sHHIIIfI4II")
_ENTRY = struct.Struct("<8I")
_U32 = struct.Struct("<I")
HEADER_BYTES = _HEADER.size  # 48
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_U32_MAX = 2**32 - 1


class BitstreamError(ValueError):
    """A bitstream that is not a valid format-v1 file (the message says why)."""


def _words(n: int) -> int:
    return (n + 31) // 32


def pack_rows(signs: np.ndarray) -> np.ndarray:
    """Pack ``{-1, +1}`` rows into LSB-first 32-bit words (bit 1 = -1), rows padded with 0-bits.

    Args:
        signs: ``(out, in)`` array of -1/+1 values (any integer or float dtype), or ``(in,)`` for
            a single row.

    Returns:
        uint32 ``(out, ceil(in / 32))`` (``(ceil(in / 32),)`` for a 1-D input). Element ``i`` of
        a row is bit ``i % 32`` of word ``i // 32``.

    Example:
        >>> pack_rows(np.array([[-1, 1, -1] + [1] * 30]))
        array([[5, 0]], dtype=uint32)

    """
    array = np.asarray(signs)
    if array.ndim not in (1, 2) or not np.all((array == 1) | (array == -1)):
        raise ValueError(
            "Expected `signs` to be a 1-D or 2-D array of -1/+1 values, but got shape "
            f"{array.shape} and dtype {array.dtype}"
        )
    rows = array.reshape(-1, array.shape[-1]) if array.ndim == 2 else array[None, :]
    out, n = rows.shape
    words = _words(n)
    bits = np.zeros((out, words * 32), dtype=np.uint8)
    bits[:, :n] = rows < 0
    packed = np.packbits(bits.reshape(out, words, 4, 8), axis=-1, bitorder="little")
    result = packed.reshape(out, words * 4).view("<u4").astype(np.uint32)
    return result if array.ndim == 2 else result[0]


def _unpack_bits(words: np.ndarray, n: int) -> np.ndarray:
    """``(..., words)`` uint32 -> ``(..., n)`` uint8 bits (LSB-first)."""
    words = np.ascontiguousarray(words, dtype="<u4")
    bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    return bits[..., :n]


def unpack_rows(words: np.ndarray, in_features: int) -> np.ndarray:
    """Inverse of :func:`pack_rows`.

    Args:
        words: uint32 ``(out, ceil(in_features / 32))`` (or 1-D for one row).
        in_features: ``n``, the number of signs per row.

    Returns:
        int8 ``(out, n)`` in ``{-1, +1}`` (1-D for a 1-D input).

    Raises:
        ValueError: when the word count does not match ``n`` or a padding bit is set.

    """
    array = np.asarray(words)
    check_positive_int("in_features", in_features, "an int >= 1")
    if array.ndim not in (1, 2) or array.shape[-1] != _words(in_features):
        raise ValueError(
            f"Expected `words` of shape (out, {_words(in_features)}) for in_features="
            f"{in_features}, but got {array.shape}"
        )
    if array.dtype != np.uint32:
        raise ValueError(f"Expected `words` to be uint32, but got dtype {array.dtype}")
    if not _padding_is_zero(array, in_features):
        raise ValueError(f"Expected the padding bits beyond in_features={in_features} to be 0")
    bits = _unpack_bits(array, in_features)
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


def _padding_is_zero(words: np.ndarray, n: int) -> bool:
    used = n % 32
    if used == 0:
        return True
    mask = np.uint32((_U32_MAX << used) & _U32_MAX)
    return not bool(np.any(words[..., -1] & mask))


@dataclass(frozen=True)
class PackedLayer:
    """One layer as stored: packed words and the byte offsets of its parts in the file.

    Attributes:
        out_features: ``m``.
        in_features: ``n``.
        binary_input: whether the input is in ``{-1, +1}``.
        weight_words: uint32 ``(m, ceil(n / 32))``.
        threshold: int32 ``(m,)`` or ``None`` (output layer).
        direction_words: uint32 ``(ceil(m / 32),)`` (bit 1: ``d = -1``) or ``None``.
        weight_offset: byte offset of ``weight_words`` in the file.
        section_offset: byte offset of the layer's section.
        section_size: bytes of the section, its CRC included.
    """

    out_features: int
    in_features: int
    binary_input: bool
    weight_words: np.ndarray
    threshold: np.ndarray | None
    direction_words: np.ndarray | None
    weight_offset: int = 0
    section_offset: int = 0
    section_size: int = 0

    @property
    def is_output(self) -> bool:
        """True for the output layer (no thresholds)."""
        return self.threshold is None

    @property
    def words_per_row(self) -> int:
        """``ceil(in_features / 32)``."""
        return _words(self.in_features)


@dataclass(frozen=True)
class PackedModel:
    """A bitstream's content in packed form (see ``export/FORMAT.md``)."""

    layers: tuple[PackedLayer, ...]
    input_levels: int
    scale: float
    input_shape: tuple[int, ...]


def _section_size(out: int, n: int, hidden: bool) -> int:
    size = 4 * out * _words(n)
    if hidden:
        size += 4 * out + 4 * _words(out)
    return size + 4


def pack_model(model: DeployModel) -> PackedModel:
    """Pack a :class:`DeployModel` (validating that it fits the format)."""
    if not isinstance(model, DeployModel):
        raise TypeError(f"Expected `model` to be a DeployModel, but got {type(model).__name__}")
    if len(model.input_shape) > MAX_INPUT_NDIM or any(s > _U32_MAX for s in model.input_shape):
        raise ValueError(
            f"Expected `input_shape` with at most {MAX_INPUT_NDIM} dimensions below 2^32, but got "
            f"{model.input_shape}"
        )
    if model.in_features * model.input_levels + 1 > _INT32_MAX:
        raise ValueError(
            "Expected `in_features * input_levels + 1` of layer 0 to fit int32, but got "
            f"{model.in_features} * {model.input_levels} + 1"
        )
    scale32 = np.float32(model.scale)
    if not np.isfinite(scale32) or scale32 <= 0:
        raise ValueError(
            f"Expected `scale` to be a finite float32 > 0, but got {model.scale!r} "
            f"(float32: {scale32!r})"
        )
    offset = HEADER_BYTES + _ENTRY.size * len(model.layers) + 4
    layers = []
    for i, layer in enumerate(model.layers):
        out, n = layer.shape
        if max(out, n) > _U32_MAX:
            raise ValueError(f"Expected layer {i} dimensions below 2^32, but got {layer.shape}")
        threshold = direction_words = None
        if layer.threshold is not None:
            low, high = int(layer.threshold.min()), int(layer.threshold.max())
            if low < _INT32_MIN or high > _INT32_MAX:
                raise ValueError(
                    f"Expected the thresholds of layer {i} to fit int32, but got values in "
                    f"[{low}, {high}]"
                )
            threshold = layer.threshold.astype(np.int32)
            direction_words = pack_rows(layer.direction)
        size = _section_size(out, n, layer.threshold is not None)
        layers.append(
            PackedLayer(
                out_features=out,
                in_features=n,
                binary_input=layer.binary_input,
                weight_words=pack_rows(layer.weight),
                threshold=threshold,
                direction_words=direction_words,
                weight_offset=offset,
                section_offset=offset,
                section_size=size,
            )
        )
        offset += size
    if offset + 4 > _U32_MAX:
        raise ValueError(f"Expected a bitstream below 4 GiB, but it would take {offset + 4} bytes")
    return PackedModel(tuple(layers), model.input_levels, float(scale32), model.input_shape)


def write_bitstream(model: DeployModel) -> bytes:
    """Serialize a deploy-mode model to format-v1 bytes.

    Args:
        model: the deploy-mode network.

    Returns:
        The bitstream; ``read_bitstream(write_bitstream(m))`` equals ``m`` (scale as float32).

    Example:
        >>> layer = DeployLayer(np.ones((2, 3), np.int8), None, None, False)
        >>> data = write_bitstream(DeployModel((layer,), input_levels=16, scale=1.0))
        >>> data[:4], len(data)
        (b'LBET', 100)

    """
    packed = pack_model(model)
    file_size = packed.layers[-1].section_offset + packed.layers[-1].section_size + 4
    shape = list(packed.input_shape) + [0] * (MAX_INPUT_NDIM - len(packed.input_shape))
    header = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        0,
        file_size,
        len(packed.layers),
        packed.input_levels,
        packed.scale,
        len(packed.input_shape),
        *shape,
        0,
    )
    header = header[:-4] + _U32.pack(zlib.crc32(header[:-4]))
    table = b"".join(
        _ENTRY.pack(
            KIND_OUTPUT if layer.is_output else KIND_HIDDEN,
            FLAG_BINARY_INPUT if layer.binary_input else 0,
            layer.out_features,
            layer.in_features,
            layer.words_per_row,
            layer.section_offset,
            layer.section_size,
            0,
        )
        for layer in packed.layers
    )
    parts = [header, table, _U32.pack(zlib.crc32(table))]
    for layer in packed.layers:
        section = [layer.weight_words.astype("<u4").tobytes()]
        if not layer.is_output:
            section.append(layer.threshold.astype("<i4").tobytes())
            section.append(layer.direction_words.astype("<u4").tobytes())
        body = b"".join(section)
        parts += [body, _U32.pack(zlib.crc32(body))]
    data = b"".join(parts)
    return data + _U32.pack(zlib.crc32(data))


def _u32_at(data: bytes, offset: int) -> int:
    return _U32.unpack_from(data, offset)[0]


def parse_bitstream(data: bytes | bytearray | memoryview) -> PackedModel:
    """Validate a format-v1 bitstream and return its packed content.

    Args:
        data: the file's bytes.

    Returns:
        The :class:`PackedModel` (words exactly as stored, with their byte offsets).

    Raises:
        BitstreamError: wrong magic or version, truncation or trailing bytes, any CRC mismatch,
            an inconsistent layer table, non-zero padding or reserved bits, a bad scale or
            input levels.

    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"Expected `data` to be bytes, but got {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER_BYTES:
        raise BitstreamError(
            f"Truncated bitstream: {len(data)} bytes, shorter than the {HEADER_BYTES}-byte header"
        )
    (magic, version, flags, file_size, num_layers, levels, scale, ndim, *rest) = (
        _HEADER.unpack_from(data)
    )
    shape, header_crc = rest[:MAX_INPUT_NDIM], rest[MAX_INPUT_NDIM]
    if magic != MAGIC:
        raise BitstreamError(f"Not a lightning-bet bitstream: magic {magic!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise BitstreamError(
            f"Unsupported bitstream version {version}; this reader supports {FORMAT_VERSION}"
        )
    if zlib.crc32(data[: HEADER_BYTES - 4]) != header_crc:
        raise BitstreamError("Header CRC mismatch: the header is corrupted")
    if len(data) < file_size:
        raise BitstreamError(
            f"Truncated bitstream: the header says {file_size} bytes, but got {len(data)}"
        )
    if len(data) > file_size:
        raise BitstreamError(
            f"Trailing data: the header says {file_size} bytes, but got {len(data)}"
        )
    if zlib.crc32(data[:-4]) != _u32_at(data, len(data) - 4):
        raise BitstreamError("File CRC mismatch: the file is corrupted")
    if flags != 0:
        raise BitstreamError(f"Unsupported header flags {flags:#06x}; version 1 defines none")
    if num_layers < 1:
        raise BitstreamError("Invalid layer table: num_layers is 0")
    if levels < 1:
        raise BitstreamError("Invalid header: input_levels is 0")
    if not math.isfinite(scale) or scale <= 0:
        raise BitstreamError(f"Invalid header: output_scale {scale!r} is not finite and > 0")
    if ndim > MAX_INPUT_NDIM or any(shape[ndim:]) or not all(shape[:ndim]):
        raise BitstreamError(f"Invalid header: input_ndim {ndim} with input_shape {shape}")
    table_end = HEADER_BYTES + _ENTRY.size * num_layers
    if table_end + 4 > len(data):
        raise BitstreamError(f"Invalid layer table: {num_layers} layers do not fit the file")
    if zlib.crc32(data[HEADER_BYTES:table_end]) != _u32_at(data, table_end):
        raise BitstreamError("Layer table CRC mismatch: the layer table is corrupted")
    offset = table_end + 4
    layers = []
    for i in range(num_layers):
        kind, lflags, out, n, wpr, sec_offset, sec_size, reserved = _ENTRY.unpack_from(
            data, HEADER_BYTES + _ENTRY.size * i
        )
        where = f"layer {i}"
        expected_kind = KIND_OUTPUT if i == num_layers - 1 else KIND_HIDDEN
        if kind != expected_kind:
            raise BitstreamError(
                f"Invalid layer table: {where} has kind {kind}, expected {expected_kind} (hidden "
                "layers 1, then one output layer 2)"
            )
        if lflags != (FLAG_BINARY_INPUT if i > 0 else 0) or reserved != 0:
            raise BitstreamError(
                f"Invalid layer table: {where} has flags {lflags:#x} / reserved {reserved:#x}"
            )
        if out < 1 or n < 1 or wpr != _words(n):
            raise BitstreamError(
                f"Invalid layer table: {where} has out={out}, in={n}, words_per_row={wpr}"
            )
        if i > 0 and n != layers[-1].out_features:
            raise BitstreamError(
                f"Invalid layer table: {where} has {n} inputs but layer {i - 1} has "
                f"{layers[-1].out_features} outputs"
            )
        hidden = kind == KIND_HIDDEN
        if sec_offset != offset or sec_size != _section_size(out, n, hidden):
            raise BitstreamError(
                f"Invalid layer table: {where} section at {sec_offset} ({sec_size} bytes), "
                f"expected {offset} ({_section_size(out, n, hidden)} bytes)"
            )
        end = offset + sec_size
        if end > len(data) - 4:
            raise BitstreamError(f"Invalid layer table: {where} section ends past the file")
        if zlib.crc32(data[offset : end - 4]) != _u32_at(data, end - 4):
            raise BitstreamError(f"Section CRC mismatch: {where} is corrupted")
        weights = np.frombuffer(data, "<u4", out * wpr, offset).reshape(out, wpr)
        if not _padding_is_zero(weights, n):
            raise BitstreamError(f"Invalid weights: {where} has non-zero padding bits")
        threshold = direction = None
        if hidden:
            pos = offset + 4 * out * wpr
            threshold = np.frombuffer(data, "<i4", out, pos).astype(np.int32)
            direction = np.frombuffer(data, "<u4", _words(out), pos + 4 * out).astype(np.uint32)
            if not _padding_is_zero(direction, out):
                raise BitstreamError(f"Invalid directions: {where} has non-zero padding bits")
        layers.append(
            PackedLayer(
                out_features=out,
                in_features=n,
                binary_input=i > 0,
                weight_words=weights.astype(np.uint32),
                threshold=threshold,
                direction_words=direction,
                weight_offset=offset,
                section_offset=offset,
                section_size=sec_size,
            )
        )
        offset = end
    if offset != len(data) - 4:
        raise BitstreamError(
            f"Invalid layer table: sections end at {offset}, but the file CRC is at {len(data) - 4}"
        )
    if ndim and math.prod(shape[:ndim]) != layers[0].in_features:
        raise BitstreamError(
            f"Invalid header: input_shape {tuple(shape[:ndim])} does not have "
            f"{layers[0].in_features} elements"
        )
    if layers[0].in_features * levels + 1 > _INT32_MAX:
        raise BitstreamError(
            f"Invalid header: in_features * input_levels + 1 = "
            f"{layers[0].in_features} * {levels} + 1 does not fit int32"
        )
    return PackedModel(tuple(layers), int(levels), float(scale), tuple(shape[:ndim]))


def unpack_model(packed: PackedModel) -> DeployModel:
    """The :class:`DeployModel` of a :class:`PackedModel`."""
    layers = []
    for layer in packed.layers:
        threshold = direction = None
        if not layer.is_output:
            threshold = layer.threshold.astype(np.int64)
            direction = unpack_rows(layer.direction_words, layer.out_features)
        layers.append(
            DeployLayer(
                weight=unpack_rows(layer.weight_words, layer.in_features),
                threshold=threshold,
                direction=direction,
                binary_input=layer.binary_input,
            )
        )
    return DeployModel(tuple(layers), packed.input_levels, packed.scale, packed.input_shape)


def read_bitstream(data: bytes | bytearray | memoryview) -> DeployModel:
    """Parse and validate a format-v1 bitstream into a :class:`DeployModel`.

    Args:
        data: the file's bytes.

    Returns:
        The deploy-mode network.

    Raises:
        BitstreamError: for any invalid or corrupted file (see :func:`parse_bitstream`).

    """
    packed = parse_bitstream(data)
    try:
        return unpack_model(packed)
    except ValueError as error:  # defensive: parse_bitstream already checked all of it
        raise BitstreamError(f"Invalid bitstream content: {error}") from error


def refresh_checksums(data: bytes | bytearray) -> bytes:
    """Recompute every section CRC and the file CRC of a bitstream (after editing its bits).

    The header and layer table must be intact (their CRCs are checked, not rewritten).

    Args:
        data: a bitstream whose section contents (e.g. weight bits) were changed.

    Returns:
        The same bytes with valid section and file CRCs.

    """
    buffer = bytearray(data)
    if len(buffer) < HEADER_BYTES or buffer[:4] != MAGIC:
        raise BitstreamError("Not a lightning-bet bitstream: cannot refresh its checksums")
    num_layers = _u32_at(buffer, 12)
    table_end = HEADER_BYTES + _ENTRY.size * num_layers
    if table_end + 4 > len(buffer) or zlib.crc32(buffer[HEADER_BYTES:table_end]) != _u32_at(
        buffer, table_end
    ):
        raise BitstreamError("Layer table CRC mismatch: cannot refresh the checksums")
    for i in range(num_layers):
        _, _, _, _, _, offset, size, _ = _ENTRY.unpack_from(buffer, HEADER_BYTES + _ENTRY.size * i)
        if offset + size > len(buffer) - 4 or size < 4:
            raise BitstreamError(f"Invalid layer table: layer {i} section ends past the file")
        _U32.pack_into(buffer, offset + size - 4, zlib.crc32(buffer[offset : offset + size - 4]))
    _U32.pack_into(buffer, len(buffer) - 4, zlib.crc32(buffer[:-4]))
    return bytes(buffer)
