"""Bitstream format v2 (convolutional layers): round trip, golden file, every reader error."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_bet.deploy.bitstream import (
    HEADER_BYTES,
    BitstreamError,
    format_version,
    pack_model,
    pack_rows,
    parse_bitstream,
    read_bitstream,
    refresh_checksums,
    write_bitstream,
)
from lightning_bet.deploy.fold import to_deploy
from lightning_bet.deploy.model import DeployConv, DeployLayer, DeployModel
from lightning_bet.models import build_model
from tests.test_bitstream import (
    _golden_module,
    assert_models_equal,
    fuzz_rejections,
    random_model,
    reference_pack,
)
from tests.test_deploy_conv import conv_net
from tests.test_deploy_fold import randomize_batchnorm_

GOLDEN = Path(__file__).parent / "golden"
ENTRY = 48


def folded_conv_model(levels: int = 16, seed: int = 0, **geometry) -> DeployModel:
    """``conv_net(**geometry)`` with random BatchNorm folded to deploy mode; in every block,
    channel 0 has gamma < 0 and the last channel gamma > 0 (both directions, whatever the seed).
    """
    torch.manual_seed(seed)
    net = conv_net(**geometry)
    randomize_batchnorm_(net, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for block in net.blocks:
            block.bn.weight[0] = -block.bn.weight[0].abs()
            block.bn.weight[-1] = block.bn.weight[-1].abs()
    return to_deploy(net, levels)


GEOMETRIES = {
    "padded_pooled": dict(),
    "strided_unpadded": dict(convs=((4, 3, 2, 0, 1), (5, 2, 1, 1, 2)), input_shape=(1, 11, 11)),
    "kernel5_no_dense": dict(convs=((3, 5, 1, 2, 3),), dense=(), input_shape=(3, 6, 6)),
    "digits_cnn": dict(
        input_shape=(1, 8, 8), convs=((32, 3, 1, 1, 2), (64, 3, 1, 1, 2)), dense=(), num_classes=10
    ),
}


# --- round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_conv_roundtrip_exact(name):
    model = folded_conv_model(**GEOMETRIES[name])
    data = write_bitstream(model)
    assert struct.unpack_from("<H", data, 4)[0] == 2 and format_version(model) == 2
    assert_models_equal(read_bitstream(data), model)
    assert write_bitstream(read_bitstream(data)) == data
    assert len(data) % 4 == 0
    packed = parse_bitstream(data)
    assert packed.version == 2 and packed.has_conv
    for layer, stored in zip(model.layers, packed.layers, strict=True):
        assert stored.is_conv == isinstance(layer, DeployConv)
        if stored.is_conv:
            assert stored.in_shape == layer.in_shape
            assert stored.conv_shape == layer.conv_shape and stored.out_shape == layer.out_shape
            assert (stored.kernel, stored.stride, stored.padding, stored.pool) == (
                layer.kernel_size,
                layer.stride,
                layer.padding,
                layer.pool,
            )
            assert stored.weight_words.shape == ((layer.weight.size + 31) // 32,)
        assert stored.weight_shape == layer.weight.shape
        assert np.array_equal(stored.signs(), layer.weight)


def test_vgg3_model_roundtrip_exact():
    torch.manual_seed(1)
    net = build_model("vgg3", (1, 8, 8), 10, (16,)).eval()
    randomize_batchnorm_(net, torch.Generator().manual_seed(1))
    model = to_deploy(net, 255)
    data = write_bitstream(model)
    assert_models_equal(read_bitstream(data), model)
    assert write_bitstream(read_bitstream(data)) == data


def test_dense_network_is_written_as_v1_unless_v2_is_forced():
    model = random_model(np.random.default_rng(4), [13, 37, 33, 3])
    v1 = write_bitstream(model)
    assert v1 == write_bitstream(model, version=1) and format_version(model) == 1
    v2 = write_bitstream(model, version=2)
    assert struct.unpack_from("<H", v1, 4)[0] == 1 and struct.unpack_from("<H", v2, 4)[0] == 2
    assert len(v2) == len(v1) + 16 * len(model.layers)  # 48-byte instead of 32-byte entries
    assert_models_equal(read_bitstream(v2), model)
    assert write_bitstream(read_bitstream(v2), version=2) == v2
    # the v1 fields of each entry mean the same; the conv fields of dense entries are zero
    for i in range(len(model.layers)):
        first = struct.unpack_from("<5I", v1, HEADER_BYTES + 32 * i)
        assert struct.unpack_from("<5I", v2, HEADER_BYTES + ENTRY * i) == first
        assert v2[HEADER_BYTES + ENTRY * i + 28 : HEADER_BYTES + ENTRY * (i + 1)] == bytes(20)
    sections = len(v1) - (HEADER_BYTES + 32 * 3 + 4)
    assert v2[-sections - 0 : -4] != b"" and v1[-sections:-4] == v2[-sections:-4][: -0 or None]


def test_writer_version_argument_and_conv_limits():
    conv = folded_conv_model()
    with pytest.raises(ValueError, match="`version` 2 \\(or None\\) for a network with conv"):
        write_bitstream(conv, version=1)
    for bad in (3, 0, True, "2"):
        with pytest.raises(ValueError, match=f"`version` to be None, 1 or 2, but got {bad!r}"):
            write_bitstream(conv, version=bad)
    wide = DeployConv(
        weight=np.ones((1, 1, 1, 1), np.int8),
        threshold=np.zeros(1, np.int64),
        direction=np.ones(1, np.int8),
        in_shape=(1, 1, 1),
        stride=256,
        binary_input=False,
    )
    out = DeployLayer(np.ones((2, 1), np.int8), None, None, True)
    with pytest.raises(
        ValueError, match=r"kernel, stride, padding and pool <= 255 .*'stride': 256"
    ):
        write_bitstream(DeployModel((wide, out), 16, 1.0))
    big = DeployConv(
        **{**_conv_kwargs(wide), "stride": 1, "threshold": np.array([2**31], np.int64)}
    )
    with pytest.raises(ValueError, match=r"thresholds of layer 0 to fit int32"):
        write_bitstream(DeployModel((big, out), 16, 1.0))
    deep = DeployConv(**{**_conv_kwargs(wide), "stride": 1, "weight": np.ones((1, 1, 1, 1))})
    with pytest.raises(ValueError, match=r"`fan_in \* input_levels \+ 1` of layer 0 to fit int32"):
        write_bitstream(DeployModel((deep, out), 2**31 - 1, 1.0))


def _conv_kwargs(conv: DeployConv) -> dict:
    names = ("weight", "threshold", "direction", "in_shape", "stride", "padding", "pool")
    return {name: getattr(conv, name) for name in names} | {"binary_input": conv.binary_input}


@settings(max_examples=40, deadline=None)
@given(
    c_out=st.integers(1, 5),
    c_in=st.integers(1, 4),
    k=st.integers(1, 4),
    size=st.integers(4, 7),
    seed=st.integers(0, 2**32 - 1),
)
def test_conv_kernels_pack_as_one_bit_vector_for_odd_shapes(c_out, c_in, k, size, seed):
    rng = np.random.default_rng(seed)
    weight = np.where(rng.random((c_out, c_in, k, k)) < 0.5, -1, 1).astype(np.int8)
    conv = DeployConv(
        weight=weight,
        threshold=rng.integers(-5, 6, c_out),
        direction=np.where(rng.random(c_out) < 0.5, -1, 1),
        in_shape=(c_in, size, size),
        padding=int(rng.integers(0, k)),
        binary_input=False,
    )
    out = DeployLayer(np.ones((2, conv.out_features), np.int8), None, None, True)
    model = DeployModel((conv, out), 16, 1.0)
    stored = pack_model(model).layers[0]
    flat = weight.reshape(1, -1)
    assert np.array_equal(stored.weight_words, reference_pack(flat)[0])  # element e: word e//32
    assert np.array_equal(stored.signs(), weight)  # unpack(pack(w)) == w
    e = np.arange(weight.size)
    word, bit = stored.bit_positions(e)
    assert np.array_equal((stored.weight_words[word] >> bit.astype(np.uint32)) & 1, flat[0] < 0)
    assert_models_equal(read_bitstream(write_bitstream(model)), model)


# --- golden file --------------------------------------------------------------------------


def test_golden_v2_fields_by_hand():
    data = (GOLDEN / "tiny_conv.bet").read_bytes()
    version, flags, size, layers, levels = struct.unpack_from("<HHIII", data, 4)
    assert (version, flags, size, layers, levels) == (2, 0, len(data), 3, 16)
    assert struct.unpack_from("<5I", data, 24) == (3, 1, 6, 6, 0)
    table_end = HEADER_BYTES + ENTRY * 3
    assert struct.unpack_from("<I", data, table_end)[0] == zlib.crc32(data[HEADER_BYTES:table_end])
    sections = table_end + 4  # 196
    # conv 0: 3x1x3x3 = 27 bits in 1 word; 3 thresholds; 1 direction word; CRC
    entry = struct.unpack_from("<7I4I4B", data, HEADER_BYTES)
    assert entry == (3, 0, 27, 36, 1, sections, 4 + 12 + 4 + 4, 3, 1, 6, 6, 3, 1, 1, 2)
    # conv 1: 2x3x2x2 = 24 bits; output (2, 2, 2); binary input
    entry = struct.unpack_from("<7I4I4B", data, HEADER_BYTES + ENTRY)
    assert entry == (3, 1, 8, 27, 1, sections + 24, 4 + 8 + 4 + 4, 2, 3, 3, 3, 2, 2, 1, 1)
    entry = struct.unpack_from("<7I4I4B", data, HEADER_BYTES + 2 * ENTRY)
    assert entry == (2, 1, 3, 8, 1, sections + 44, 12 + 4, 0, 0, 0, 0, 0, 0, 0, 0)
    assert len(data) == sections + 44 + 16 + 4
    model = _golden_module().tiny_conv_model()
    word = struct.unpack_from("<I", data, sections)[0]
    assert word == int(reference_pack(model.layers[0].weight.reshape(1, -1))[0, 0])
    assert word >> 27 == 0  # 5 padding bits after the 27 kernel bits
    direction = struct.unpack_from("<I", data, sections + 4 + 12)[0]
    assert direction == 0b010  # d = (+1, -1, +1)


# --- every reader error of FORMAT.md's v2 section ------------------------------------------


def _golden() -> bytes:
    return (GOLDEN / "tiny_conv.bet").read_bytes()


def _with_entry(data: bytes, layer: int, **changes) -> bytes:
    """Rewrite fields of a v2 table entry and fix the table and file CRCs."""
    names = "kind flags out n words offset size c_out c_in h w k s p pool".split()
    buffer = bytearray(data)
    at = HEADER_BYTES + ENTRY * layer
    fields = dict(zip(names, struct.unpack_from("<7I4I4B", buffer, at), strict=True))
    fields.update(changes)
    struct.pack_into("<7I4I4B", buffer, at, *(fields[name] for name in names))
    table_end = HEADER_BYTES + ENTRY * struct.unpack_from("<I", buffer, 12)[0]
    struct.pack_into("<I", buffer, table_end, zlib.crc32(bytes(buffer[HEADER_BYTES:table_end])))
    return _fix_file(buffer)


def _with_header(data: bytes, fmt: str, offset: int, *values) -> bytes:
    buffer = bytearray(data)
    struct.pack_into(fmt, buffer, offset, *values)
    struct.pack_into("<I", buffer, 44, zlib.crc32(bytes(buffer[:44])))
    return _fix_file(buffer)


def _fix_file(buffer: bytearray) -> bytes:
    struct.pack_into("<I", buffer, len(buffer) - 4, zlib.crc32(bytes(buffer[:-4])))
    return bytes(buffer)


def _dense_v2() -> bytes:
    return write_bitstream(random_model(np.random.default_rng(5), [13, 37, 3]), version=2)


def test_reader_v2_errors_are_specific():
    data = _golden()
    dense = _dense_v2()
    cases = [
        # kinds
        (_with_entry(dense, 0, kind=3), "layer 0 .* zero channel, size, kernel, stride or pool"),
        (_with_entry(data, 1, kind=4), "layer 1 has unknown kind 4"),
        (_with_entry(data, 2, kind=3), "layer 2 is the output layer but has kind 3"),
        (_with_entry(data, 1, kind=2), "layer 1 has kind 2, but exactly the last layer has kind 2"),
        (_with_entry(data, 2, kind=1), "layer 2 has kind 1, but exactly the last layer"),
        (_conv_after_dense(), "layer 1 has kind 3 \\(convolutional\\) after a dense layer"),
        # zero fields, kernel, padding, fit, tiling
        (_with_entry(data, 0, c_out=0), r"layer 0 \(convolutional\) has a zero .*C_out=0"),
        (_with_entry(data, 0, c_in=0), r"zero channel.*C_in=0"),
        (_with_entry(data, 0, h=0), r"zero channel.*H=0"),
        (_with_entry(data, 0, w=0), r"zero channel.*W=0"),
        (_with_entry(data, 0, k=0), r"zero channel.*k=0"),
        (_with_entry(data, 0, s=0), r"zero channel.*s=0"),
        (_with_entry(data, 0, pool=0), r"zero channel.*P=0"),
        (_with_entry(data, 0, p=3), "layer 0 has padding 3, not smaller than its kernel size 3"),
        (_with_entry(data, 1, k=6, p=1), r"layer 1 has a 6x6 kernel .* does not fit its 3x3"),
        (_with_entry(data, 0, pool=4), "layer 0 has 4x4 pool windows that do not tile its 6x6"),
        # geometry against out_features / in_features / weight_words
        (_with_entry(data, 0, pool=3), r"out_features=27, in_features=36, weight_words=1, .* 12"),
        (_with_entry(data, 0, words=2), r"weight_words=2, but its geometry gives 27, 36, 1"),
        (_with_entry(data, 0, out=26), r"out_features=26"),
        (_with_entry(data, 1, n=26), r"in_features=26"),
        # chaining of consecutive conv layers, input shape of layer 0
        (_with_entry(data, 1, h=1, w=9), r"layer 1 takes a \(3, 1, 9\) input, but .* \(3, 3, 3\)"),
        (_with_header(data, "<4I", 28, 1, 36, 1, 0), "layer 0 is convolutional on \\(1, 6, 6\\)"),
        (_with_header(data, "<5I", 24, *[0] * 5), r"input_ndim is 0 with input_shape \(0, 0, 0, 0"),
        # conv fields of dense entries, flags
        (_with_entry(data, 2, c_in=1), r"layer 2 \(kind 2\) has non-zero convolutional fields"),
        (_with_entry(dense, 0, pool=1), r"layer 0 \(kind 1\) has non-zero convolutional fields"),
        (_with_entry(data, 1, flags=0), "layer 1 has flags 0x0, expected 0x1"),
        (_with_entry(data, 0, flags=3), "layer 0 has flags 0x3, expected 0x0"),
        # section offsets and sizes of a conv layer
        (_with_entry(data, 0, size=28), r"layer 0 section at 196 \(28 bytes\), expected 196 \(24"),
        (_with_entry(data, 1, offset=224), r"layer 1 section at 224 .* expected 220"),
        # a v1 file knows no kind 3
        (_v1_with_conv_kind(), "layer 0 has kind 3, expected 1"),
    ]
    padded = bytearray(data)
    padded[196 + 3] |= 0x08  # bit 27 of layer 0's only weight word: the first padding bit
    cases.append((refresh_checksums(padded), "Invalid weights: layer 0 has non-zero padding"))
    padded = bytearray(data)
    padded[196 + 4 + 12 + 1] |= 0x01  # bit 8 of the direction word: 3 channels, 29 padding
    cases.append((refresh_checksums(padded), "Invalid directions: layer 0 has non-zero padding"))
    flipped = bytearray(data)
    flipped[200] ^= 1  # a threshold bit of layer 0
    cases.append((_fix_file(flipped), "Section CRC mismatch: layer 0"))
    for corrupted, message in cases:
        with pytest.raises(BitstreamError, match=message):
            read_bitstream(corrupted)


def _conv_after_dense() -> bytes:
    """A v2 file whose layer 1 says kind 3 after the dense layer 0."""
    model = random_model(np.random.default_rng(5), [13, 37, 9, 3])
    return _with_entry(write_bitstream(model, version=2), 1, kind=3)


def _v1_with_conv_kind() -> bytes:
    buffer = bytearray(write_bitstream(random_model(np.random.default_rng(5), [13, 37, 3])))
    struct.pack_into("<I", buffer, HEADER_BYTES, 3)
    struct.pack_into("<I", buffer, HEADER_BYTES + 64, zlib.crc32(bytes(buffer[48:112])))
    return _fix_file(buffer)


def test_fuzz_reader_never_accepts_a_corrupted_v2_file():
    originals = [_golden(), write_bitstream(folded_conv_model(seed=2)), _dense_v2()]
    assert fuzz_rejections(originals, np.random.default_rng(2027), 3_000) >= 2_950


def test_refresh_checksums_and_pack_rows_agree_on_v2():
    data = _golden()
    buffer = bytearray(data)
    buffer[196] ^= 1  # weight 0 of layer 0
    fixed = refresh_checksums(buffer)
    model = read_bitstream(fixed)
    expected = _golden_module().tiny_conv_model().layers[0].weight.copy()
    expected[0, 0, 0, 0] *= -1
    assert np.array_equal(model.layers[0].weight, expected)
    assert np.array_equal(
        pack_rows(expected.reshape(-1)), parse_bitstream(fixed).layers[0].weight_words
    )
    with pytest.raises(BitstreamError, match="Unsupported bitstream version 9"):
        refresh_checksums(_with_header(data, "<H", 4, 9))
