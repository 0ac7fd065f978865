"""Bitstream formats v1 and v2: writer and reader (byte-level definition: ``export/FORMAT.md``).

Two levels:

- :func:`write_bitstream` / :func:`read_bitstream` convert between bytes and a
  :class:`~lightning_bet.deploy.model.DeployModel` (round trip exact; the output scale is stored
  as float32). A network without convolutional layers is written as version 1 (byte for byte
  what earlier releases wrote), one with them as version 2; ``version=2`` forces v2.
- :func:`parse_bitstream` returns a :class:`PackedModel`: the packed 32-bit words exactly as
  stored, with their byte offsets and each convolutional layer's geometry, for code that works
  on the packed bits (the numpy interpreter, fault emulation).

The reader validates everything (magic, version, reserved fields, sizes and offsets, every CRC,
padding bits, convolution geometry) and raises :class:`BitstreamError` (a ``ValueError``) with
the reason; it never returns a model from a damaged file.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from lightning_bet._validation import check_positive_int
from lightning_bet.deploy.model import DeployConv, DeployLayer, DeployModel

__all__ = [
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "HEADER_BYTES",
    "MAGIC",
    "BitstreamError",
    "PackedLayer",
    "PackedModel",
    "format_version",
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
#: the version of a network without convolutional layers (v1 readers keep working)
FORMAT_VERSION = 1
#: the versions this module reads and writes (2: convolutional layers)
FORMAT_VERSIONS = (1, 2)
KIND_HIDDEN = 1
KIND_OUTPUT = 2
KIND_CONV = 3
FLAG_BINARY_INPUT = 1
MAX_INPUT_NDIM = 4

_HEADER = struct.Struct("<4sHHIIIfI4II")
_ENTRY = struct.Struct("<8I")  # v1: kind, flags, out, in, words, offset, size, reserved
_ENTRY_V2 = struct.Struct("<7I4I4B")  # v2: + C_out, C_in, H, W, k, s, p, P (C_out at byte 28)
_ENTRIES = {1: _ENTRY, 2: _ENTRY_V2}
_U32 = struct.Struct("<I")
HEADER_BYTES = _HEADER.size  # 48
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_U32_MAX = 2**32 - 1
_U8_MAX = 255


class BitstreamError(ValueError):
    """A bitstream that is not a valid format-v1 or v2 file (the message says why)."""


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


def _conv_output(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class PackedLayer:
    """One layer as stored: packed words, the byte offsets of its parts, conv geometry.

    A dense layer stores one padded row of words per neuron; a convolutional layer (format v2,
    kind 3) stores its ``C_out x C_in x k x k`` kernels as ONE bit vector in PyTorch's element
    order, only the last word padded.

    Attributes:
        out_features: ``m`` (conv: ``C_out * H_out * W_out``, after pooling).
        in_features: ``n`` (conv: ``C_in * H * W``).
        binary_input: whether the input is in ``{-1, +1}``.
        weight_words: uint32 ``(m, ceil(n / 32))`` (dense) or
            ``(ceil(C_out * C_in * k * k / 32),)`` (conv).
        threshold: int32 ``(m,)`` (conv: ``(C_out,)``) or ``None`` (output layer).
        direction_words: uint32 ``(ceil(m / 32),)`` (conv: ``(ceil(C_out / 32),)``; bit 1:
            ``d = -1``) or ``None``.
        weight_offset: byte offset of ``weight_words`` in the file.
        section_offset: byte offset of the layer's section.
        section_size: bytes of the section, its CRC included.
        in_shape: conv: ``(C_in, H, W)``; ``None`` for a dense layer.
        out_channels: conv: ``C_out``; 0 for a dense layer.
        kernel: conv: ``k`` (square kernels); 0 for a dense layer.
        stride: conv: ``s``; 0 for a dense layer.
        padding: conv: zero padding ``p`` on every side; 0 for a dense layer.
        pool: conv: max-pool window and stride ``P`` (1: none); 0 for a dense layer.
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
    in_shape: tuple[int, int, int] | None = None
    out_channels: int = 0
    kernel: int = 0
    stride: int = 0
    padding: int = 0
    pool: int = 0

    @property
    def is_output(self) -> bool:
        """True for the output layer (no thresholds)."""
        return self.threshold is None

    @property
    def is_conv(self) -> bool:
        """True for a convolutional layer (format v2, kind 3)."""
        return self.in_shape is not None

    @property
    def words_per_row(self) -> int:
        """``ceil(in_features / 32)``: the words of one row of a dense layer."""
        return _words(self.in_features)

    @property
    def table_words(self) -> int:
        """The layer table's ``weight_words``: words per row (dense) or of the layer (conv)."""
        return _words(self.weight_count) if self.is_conv else self.words_per_row

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the logical signs: ``(m, n)`` or ``(C_out, C_in, k, k)``."""
        if self.is_conv:
            return (self.out_channels, self.in_shape[0], self.kernel, self.kernel)
        return (self.out_features, self.in_features)

    @property
    def weight_count(self) -> int:
        """Number of stored weights (cells), padding excluded."""
        return math.prod(self.weight_shape)

    @property
    def conv_shape(self) -> tuple[int, int, int]:
        """Conv: ``(C_out, H_c, W_c)``, the convolution's output before pooling."""
        _, height, width = self._require_conv("conv_shape")
        k, s, p = self.kernel, self.stride, self.padding
        return (
            self.out_channels,
            _conv_output(height, k, s, p),
            _conv_output(width, k, s, p),
        )

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """Conv: ``(C_out, H_c / P, W_c / P)``, the layer's output after pooling."""
        channels, height, width = self.conv_shape
        return channels, height // self.pool, width // self.pool

    def _require_conv(self, name: str) -> tuple[int, int, int]:
        if self.in_shape is None:
            raise ValueError(f"Expected a convolutional layer for `{name}`, but this one is dense")
        return self.in_shape

    def bit_positions(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where logical weights are stored: flat index -> (word of ``weight_words.ravel()``, bit).

        Args:
            flat: int64 indices into the weights flattened in PyTorch order (row-major ``(m,
                n)`` or ``(C_out, C_in, k, k)``), each in ``[0, weight_count)``.

        Returns:
            ``(word, bit)`` int64 arrays of ``flat``'s shape; the byte offset in the file is
            ``weight_offset + 4 * word + bit // 8``, bit ``bit % 8`` of it. Padding bits are
            never returned.

        """
        flat = np.asarray(flat, dtype=np.int64)
        if self.is_conv:
            return flat // 32, flat % 32
        row, col = np.divmod(flat, self.in_features)
        return row * self.words_per_row + col // 32, col % 32

    def signs(self) -> np.ndarray:
        """The stored weights as int8 ``{-1, +1}`` of shape :attr:`weight_shape`."""
        if self.is_conv:
            return unpack_rows(self.weight_words, self.weight_count).reshape(self.weight_shape)
        return unpack_rows(self.weight_words, self.in_features)


@dataclass(frozen=True)
class PackedModel:
    """A bitstream's content in packed form (see ``export/FORMAT.md``).

    Attributes:
        layers: the layers in forward order.
        input_levels: ``Lq``: pixels are ``q / Lq``.
        scale: the float32 output scale, as a float.
        input_shape: shape of one sample (``()``: not recorded).
        version: the format version (1, or 2 with convolutional layers or when forced).
    """

    layers: tuple[PackedLayer, ...]
    input_levels: int
    scale: float
    input_shape: tuple[int, ...]
    version: int = FORMAT_VERSION

    @property
    def has_conv(self) -> bool:
        """Whether the network has convolutional layers."""
        return self.layers[0].is_conv


def _section_size(out: int, words: int, hidden: bool) -> int:
    """Bytes of a section with ``words`` weight words and ``out`` thresholds (hidden layers)."""
    size = 4 * words
    if hidden:
        size += 4 * out + 4 * _words(out)
    return size + 4


def format_version(model: DeployModel) -> int:
    """The version :func:`write_bitstream` writes by default: 2 with conv layers, else 1."""
    return 2 if model.has_conv else FORMAT_VERSION


def _check_version(model: DeployModel, version: int | None) -> int:
    if version is None:
        return format_version(model)
    if isinstance(version, bool) or version not in FORMAT_VERSIONS:
        raise ValueError(f"Expected `version` to be None, 1 or 2, but got {version!r}")
    if version == 1 and model.has_conv:
        raise ValueError(
            "Expected `version` 2 (or None) for a network with convolutional layers, but got 1: "
            "format v1 stores dense layers only"
        )
    return version


def _threshold_words(i: int, layer: DeployConv | DeployLayer) -> tuple[np.ndarray, np.ndarray]:
    low, high = int(layer.threshold.min()), int(layer.threshold.max())
    if low < _INT32_MIN or high > _INT32_MAX:
        raise ValueError(
            f"Expected the thresholds of layer {i} to fit int32, but got values in [{low}, {high}]"
        )
    return layer.threshold.astype(np.int32), pack_rows(layer.direction)


def _pack_conv(i: int, layer: DeployConv, offset: int) -> PackedLayer:
    geometry = {
        "kernel": layer.kernel_size,
        "stride": layer.stride,
        "padding": layer.padding,
        "pool": layer.pool,
    }
    too_big = {name: value for name, value in geometry.items() if value > _U8_MAX}
    if too_big or max(*layer.weight.shape, *layer.in_shape) > _U32_MAX:
        raise ValueError(
            f"Expected layer {i} to have kernel, stride, padding and pool <= {_U8_MAX} and "
            f"channels and sizes below 2^32, but got {geometry} with kernels "
            f"{layer.weight.shape} on {layer.in_shape}"
        )
    threshold, direction_words = _threshold_words(i, layer)
    words = pack_rows(layer.weight.reshape(-1))
    out_channels = layer.weight.shape[0]
    return PackedLayer(
        out_features=layer.out_features,
        in_features=layer.in_features,
        binary_input=layer.binary_input,
        weight_words=words,
        threshold=threshold,
        direction_words=direction_words,
        weight_offset=offset,
        section_offset=offset,
        section_size=_section_size(out_channels, words.size, True),
        in_shape=layer.in_shape,
        out_channels=out_channels,
        **geometry,
    )


def _pack_dense(i: int, layer: DeployLayer, offset: int) -> PackedLayer:
    out, n = layer.shape
    if max(out, n) > _U32_MAX:
        raise ValueError(f"Expected layer {i} dimensions below 2^32, but got {layer.shape}")
    threshold = direction_words = None
    if layer.threshold is not None:
        threshold, direction_words = _threshold_words(i, layer)
    return PackedLayer(
        out_features=out,
        in_features=n,
        binary_input=layer.binary_input,
        weight_words=pack_rows(layer.weight),
        threshold=threshold,
        direction_words=direction_words,
        weight_offset=offset,
        section_offset=offset,
        section_size=_section_size(out, out * _words(n), layer.threshold is not None),
    )


def pack_model(model: DeployModel, version: int | None = None) -> PackedModel:
    """Pack a :class:`DeployModel` (validating that it fits the format).

    Args:
        model: the deploy-mode network.
        version: format version; ``None``: :func:`format_version` (2 with conv layers, else 1).

    Returns:
        The :class:`PackedModel` with the byte offsets the file of that version has.

    """
    if not isinstance(model, DeployModel):
        raise TypeError(f"Expected `model` to be a DeployModel, but got {type(model).__name__}")
    version = _check_version(model, version)
    if len(model.input_shape) > MAX_INPUT_NDIM or any(s > _U32_MAX for s in model.input_shape):
        raise ValueError(
            f"Expected `input_shape` with at most {MAX_INPUT_NDIM} dimensions below 2^32, but got "
            f"{model.input_shape}"
        )
    first = model.layers[0]
    fan_in = first.fan_in if isinstance(first, DeployConv) else first.in_features
    if fan_in * model.input_levels + 1 > _INT32_MAX:
        raise ValueError(
            "Expected `fan_in * input_levels + 1` of layer 0 to fit int32, but got "
            f"{fan_in} * {model.input_levels} + 1"
        )
    scale32 = np.float32(model.scale)
    if not np.isfinite(scale32) or scale32 <= 0:
        raise ValueError(
            f"Expected `scale` to be a finite float32 > 0, but got {model.scale!r} "
            f"(float32: {scale32!r})"
        )
    offset = HEADER_BYTES + _ENTRIES[version].size * len(model.layers) + 4
    layers = []
    for i, layer in enumerate(model.layers):
        pack = _pack_conv if isinstance(layer, DeployConv) else _pack_dense
        layers.append(pack(i, layer, offset))
        offset += layers[-1].section_size
    if offset + 4 > _U32_MAX:
        raise ValueError(f"Expected a bitstream below 4 GiB, but it would take {offset + 4} bytes")
    return PackedModel(
        tuple(layers), model.input_levels, float(scale32), model.input_shape, version
    )


def _kind(layer: PackedLayer) -> int:
    if layer.is_conv:
        return KIND_CONV
    return KIND_OUTPUT if layer.is_output else KIND_HIDDEN


def _table_entry(layer: PackedLayer, version: int) -> bytes:
    fields = (
        _kind(layer),
        FLAG_BINARY_INPUT if layer.binary_input else 0,
        layer.out_features,
        layer.in_features,
        layer.table_words,
        layer.section_offset,
        layer.section_size,
    )
    if version == 1:
        return _ENTRY.pack(*fields, 0)
    channels, height, width = layer.in_shape or (0, 0, 0)
    conv = (layer.out_channels, channels, height, width)
    return _ENTRY_V2.pack(*fields, *conv, layer.kernel, layer.stride, layer.padding, layer.pool)


def write_bitstream(model: DeployModel, version: int | None = None) -> bytes:
    """Serialize a deploy-mode model to bitstream bytes.

    Args:
        model: the deploy-mode network.
        version: ``None`` (default): v1 for a network without convolutional layers, v2 with
            them; ``2`` forces v2 for a dense network; ``1`` refuses a network with conv layers.

    Returns:
        The bitstream; ``read_bitstream(write_bitstream(m))`` equals ``m`` (scale as float32).

    Raises:
        ValueError: for a bad ``version`` or a model the format cannot hold (thresholds beyond
            int32, a kernel, stride, padding or pool above 255, ...).

    Example:
        >>> layer = DeployLayer(np.ones((2, 3), np.int8), None, None, False)
        >>> data = write_bitstream(DeployModel((layer,), input_levels=16, scale=1.0))
        >>> data[:4], len(data)
        (b'LBET', 100)

    """
    packed = pack_model(model, version)
    file_size = packed.layers[-1].section_offset + packed.layers[-1].section_size + 4
    shape = list(packed.input_shape) + [0] * (MAX_INPUT_NDIM - len(packed.input_shape))
    header = _HEADER.pack(
        MAGIC,
        packed.version,
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
    table = b"".join(_table_entry(layer, packed.version) for layer in packed.layers)
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


def _check_kind(where: str, kind: int, last: bool, version: int, previous: int | None) -> None:
    """The kind rules of the layer table (``previous``: the kind of the layer before)."""
    if version == 1:
        expected = KIND_OUTPUT if last else KIND_HIDDEN
        if kind != expected:
            raise BitstreamError(
                f"Invalid layer table: {where} has kind {kind}, expected {expected} (hidden "
                "layers 1, then one output layer 2)"
            )
        return
    if kind not in (KIND_HIDDEN, KIND_OUTPUT, KIND_CONV):
        raise BitstreamError(
            f"Invalid layer table: {where} has unknown kind {kind} (1 hidden dense, 2 output "
            "dense, 3 hidden convolutional)"
        )
    if last and kind == KIND_CONV:
        raise BitstreamError(
            f"Invalid layer table: {where} is the output layer but has kind 3 (convolutional); "
            "the output layer is dense (kind 2)"
        )
    if last != (kind == KIND_OUTPUT):
        raise BitstreamError(
            f"Invalid layer table: {where} has kind {kind}, but exactly the last layer has kind "
            "2 (output)"
        )
    if kind == KIND_CONV and previous == KIND_HIDDEN:
        raise BitstreamError(
            f"Invalid layer table: {where} has kind 3 (convolutional) after a dense layer of kind "
            "1; convolutional layers come first"
        )


def _conv_geometry(
    where: str,
    fields: tuple[int, ...],
    out: int,
    n: int,
    words: int,
    previous: PackedLayer | None,
) -> dict[str, object]:
    """Validate a kind-3 entry's geometry; the PackedLayer fields it defines."""
    out_channels, in_channels, height, width, kernel, stride, padding, pool = fields
    named = dict(
        C_out=out_channels, C_in=in_channels, H=height, W=width, k=kernel, s=stride, P=pool
    )
    if not all(named.values()):
        listed = ", ".join(f"{key}={value}" for key, value in named.items())
        raise BitstreamError(
            f"Invalid layer table: {where} (convolutional) has a zero channel, size, kernel, "
            f"stride or pool: {listed}"
        )
    if padding >= kernel:
        raise BitstreamError(
            f"Invalid layer table: {where} has padding {padding}, not smaller than its kernel "
            f"size {kernel}"
        )
    conv_h = _conv_output(height, kernel, stride, padding)
    conv_w = _conv_output(width, kernel, stride, padding)
    if conv_h < 1 or conv_w < 1:
        raise BitstreamError(
            f"Invalid layer table: {where} has a {kernel}x{kernel} kernel (stride {stride}, "
            f"padding {padding}) that does not fit its {height}x{width} input"
        )
    if conv_h % pool or conv_w % pool:
        raise BitstreamError(
            f"Invalid layer table: {where} has {pool}x{pool} pool windows that do not tile its "
            f"{conv_h}x{conv_w} convolution output"
        )
    in_shape = (in_channels, height, width)
    if previous is not None and in_shape != previous.out_shape:
        raise BitstreamError(
            f"Invalid layer table: {where} takes a {in_shape} input, but the convolutional layer "
            f"before it outputs {previous.out_shape}"
        )
    expected = (
        out_channels * (conv_h // pool) * (conv_w // pool),
        in_channels * height * width,
        _words(out_channels * in_channels * kernel * kernel),
    )
    if (out, n, words) != expected:
        raise BitstreamError(
            f"Invalid layer table: {where} has out_features={out}, in_features={n}, "
            f"weight_words={words}, but its geometry gives {expected[0]}, {expected[1]}, "
            f"{expected[2]}"
        )
    return dict(
        in_shape=in_shape,
        out_channels=out_channels,
        kernel=kernel,
        stride=stride,
        padding=padding,
        pool=pool,
    )


def parse_bitstream(data: bytes | bytearray | memoryview) -> PackedModel:
    """Validate a format-v1 or v2 bitstream and return its packed content.

    Args:
        data: the file's bytes.

    Returns:
        The :class:`PackedModel` (words exactly as stored, with their byte offsets).

    Raises:
        BitstreamError: wrong magic or version, truncation or trailing bytes, any CRC mismatch,
            an inconsistent layer table or convolution geometry, non-zero padding or reserved
            bits, a bad scale or input levels (every error of ``export/FORMAT.md``).

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
    if version not in FORMAT_VERSIONS:
        raise BitstreamError(
            f"Unsupported bitstream version {version}; this reader supports versions 1 and 2"
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
        raise BitstreamError(
            f"Unsupported header flags {flags:#06x}; version {version} defines none"
        )
    if num_layers < 1:
        raise BitstreamError("Invalid layer table: num_layers is 0")
    if levels < 1:
        raise BitstreamError("Invalid header: input_levels is 0")
    if not math.isfinite(scale) or scale <= 0:
        raise BitstreamError(f"Invalid header: output_scale {scale!r} is not finite and > 0")
    if ndim > MAX_INPUT_NDIM or any(shape[ndim:]) or not all(shape[:ndim]):
        raise BitstreamError(f"Invalid header: input_ndim {ndim} with input_shape {shape}")
    entry = _ENTRIES[version]
    table_end = HEADER_BYTES + entry.size * num_layers
    if table_end + 4 > len(data):
        raise BitstreamError(f"Invalid layer table: {num_layers} layers do not fit the file")
    if zlib.crc32(data[HEADER_BYTES:table_end]) != _u32_at(data, table_end):
        raise BitstreamError("Layer table CRC mismatch: the layer table is corrupted")
    offset = table_end + 4
    layers: list[PackedLayer] = []
    kinds: list[int] = []
    for i in range(num_layers):
        fields = entry.unpack_from(data, HEADER_BYTES + entry.size * i)
        kind, lflags, out, n, words, sec_offset, sec_size = fields[:7]
        extra = fields[7:]  # v1: (reserved,); v2: the eight conv fields
        where = f"layer {i}"
        _check_kind(where, kind, i == num_layers - 1, version, kinds[-1] if kinds else None)
        expected_flags = FLAG_BINARY_INPUT if i > 0 else 0
        if version == 1 and (lflags != expected_flags or extra[0] != 0):
            raise BitstreamError(
                f"Invalid layer table: {where} has flags {lflags:#x} / reserved {extra[0]:#x}"
            )
        if lflags != expected_flags:
            raise BitstreamError(
                f"Invalid layer table: {where} has flags {lflags:#x}, expected {expected_flags:#x}"
            )
        geometry: dict[str, object] = {}
        if kind == KIND_CONV:
            previous = layers[-1] if layers else None
            geometry = _conv_geometry(where, extra, out, n, words, previous)
            if i == 0 and (ndim != 3 or tuple(shape[:3]) != geometry["in_shape"]):
                raise BitstreamError(
                    f"Invalid header: layer 0 is convolutional on {geometry['in_shape']}, but "
                    f"input_ndim is {ndim} with input_shape {tuple(shape)}"
                )
        elif any(extra):
            raise BitstreamError(
                f"Invalid layer table: {where} (kind {kind}) has non-zero convolutional fields "
                f"{extra}"
            )
        elif out < 1 or n < 1 or words != _words(n):
            raise BitstreamError(
                f"Invalid layer table: {where} has out={out}, in={n}, words_per_row={words}"
            )
        if i > 0 and n != layers[-1].out_features:
            raise BitstreamError(
                f"Invalid layer table: {where} has {n} inputs but layer {i - 1} has "
                f"{layers[-1].out_features} outputs"
            )
        hidden = kind != KIND_OUTPUT
        units = geometry["out_channels"] if geometry else out  # thresholds stored
        weight_shape = (words,) if geometry else (out, words)
        expected_size = _section_size(units, math.prod(weight_shape), hidden)
        if sec_offset != offset or sec_size != expected_size:
            raise BitstreamError(
                f"Invalid layer table: {where} section at {sec_offset} ({sec_size} bytes), "
                f"expected {offset} ({expected_size} bytes)"
            )
        end = offset + sec_size
        if end > len(data) - 4:
            raise BitstreamError(f"Invalid layer table: {where} section ends past the file")
        if zlib.crc32(data[offset : end - 4]) != _u32_at(data, end - 4):
            raise BitstreamError(f"Section CRC mismatch: {where} is corrupted")
        weights = np.frombuffer(data, "<u4", math.prod(weight_shape), offset)
        weights = weights.reshape(weight_shape)
        # bits in the (last) word: the layer's C_out C_in k k kernel bits, or a row's n weights
        row_bits = units * extra[1] * extra[4] ** 2 if geometry else n
        if not _padding_is_zero(weights, row_bits):
            raise BitstreamError(f"Invalid weights: {where} has non-zero padding bits")
        threshold = direction = None
        if hidden:
            pos = offset + 4 * weights.size
            threshold = np.frombuffer(data, "<i4", units, pos).astype(np.int32)
            direction = np.frombuffer(data, "<u4", _words(units), pos + 4 * units)
            direction = direction.astype(np.uint32)
            if not _padding_is_zero(direction, units):
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
                **geometry,
            )
        )
        kinds.append(kind)
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
    first = layers[0]
    fan_in = first.weight_count // first.out_channels if first.is_conv else first.in_features
    if fan_in * levels + 1 > _INT32_MAX:
        raise BitstreamError(
            f"Invalid header: fan_in * input_levels + 1 = {fan_in} * {levels} + 1 of layer 0 does "
            "not fit int32"
        )
    return PackedModel(tuple(layers), int(levels), float(scale), tuple(shape[:ndim]), version)


def unpack_model(packed: PackedModel) -> DeployModel:
    """The :class:`DeployModel` of a :class:`PackedModel`."""
    layers: list[DeployConv | DeployLayer] = []
    for layer in packed.layers:
        if layer.is_conv:
            layers.append(
                DeployConv(
                    weight=layer.signs(),
                    threshold=layer.threshold.astype(np.int64),
                    direction=unpack_rows(layer.direction_words, layer.out_channels),
                    in_shape=layer.in_shape,
                    stride=layer.stride,
                    padding=layer.padding,
                    pool=layer.pool,
                    binary_input=layer.binary_input,
                )
            )
            continue
        threshold = direction = None
        if not layer.is_output:
            threshold = layer.threshold.astype(np.int64)
            direction = unpack_rows(layer.direction_words, layer.out_features)
        layers.append(
            DeployLayer(
                weight=layer.signs(),
                threshold=threshold,
                direction=direction,
                binary_input=layer.binary_input,
            )
        )
    return DeployModel(tuple(layers), packed.input_levels, packed.scale, packed.input_shape)


def read_bitstream(data: bytes | bytearray | memoryview) -> DeployModel:
    """Parse and validate a format-v1 or v2 bitstream into a :class:`DeployModel`.

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
    version = struct.unpack_from("<H", buffer, 4)[0]
    if version not in FORMAT_VERSIONS:
        raise BitstreamError(f"Unsupported bitstream version {version}: cannot refresh checksums")
    entry = _ENTRIES[version]
    num_layers = _u32_at(buffer, 12)
    table_end = HEADER_BYTES + entry.size * num_layers
    if table_end + 4 > len(buffer) or zlib.crc32(buffer[HEADER_BYTES:table_end]) != _u32_at(
        buffer, table_end
    ):
        raise BitstreamError("Layer table CRC mismatch: cannot refresh the checksums")
    for i in range(num_layers):
        offset, size = entry.unpack_from(buffer, HEADER_BYTES + entry.size * i)[5:7]
        if offset + size > len(buffer) - 4 or size < 4:
            raise BitstreamError(f"Invalid layer table: layer {i} section ends past the file")
        _U32.pack_into(buffer, offset + size - 4, zlib.crc32(buffer[offset : offset + size - 4]))
    _U32.pack_into(buffer, len(buffer) - 4, zlib.crc32(buffer[:-4]))
    return bytes(buffer)
