"""Bitstream format v1: packing, round trip, golden file, corruption handling, numpy interpreter."""

from __future__ import annotations

import importlib.util
import json
import struct
import time
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
    pack_rows,
    parse_bitstream,
    read_bitstream,
    refresh_checksums,
    unpack_rows,
    write_bitstream,
)
from lightning_bet.deploy.fold import deploy_forward, to_deploy
from lightning_bet.deploy.interpreter import popcount, predict_bitstream, run_bitstream
from lightning_bet.deploy.model import DeployConv, DeployLayer, DeployModel
from lightning_bet.models import build_model
from tests.test_deploy_fold import digits_test_pixels, randomize_batchnorm_, trained_digits

GOLDEN = Path(__file__).parent / "golden"


def _golden_module():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_model(rng: np.random.Generator, sizes: list[int], levels: int = 16) -> DeployModel:
    layers = []
    for i, (n, m) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        hidden = i < len(sizes) - 2
        bound = n * (levels if i == 0 else 1)
        layers.append(
            DeployLayer(
                weight=np.where(rng.random((m, n)) < 0.5, -1, 1).astype(np.int8),
                threshold=rng.integers(-bound // 3, bound // 3 + 1, m) if hidden else None,
                direction=np.where(rng.random(m) < 0.3, -1, 1) if hidden else None,
                binary_input=i > 0,
            )
        )
    return DeployModel(tuple(layers), levels, float(np.float32(rng.uniform(0.01, 2))))


def assert_models_equal(a: DeployModel, b: DeployModel) -> None:
    """Layer by layer: weights, thresholds, directions, input kind and conv geometry."""
    assert len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers, strict=True):
        assert type(x) is type(y)
        assert np.array_equal(x.weight, y.weight) and x.weight.dtype == y.weight.dtype
        assert (x.threshold is None) == (y.threshold is None)
        if x.threshold is not None:
            assert np.array_equal(x.threshold, y.threshold)
            assert np.array_equal(x.direction, y.direction)
        assert x.binary_input == y.binary_input
        if isinstance(x, DeployConv):
            geometry = ("in_shape", "stride", "padding", "pool")
            assert [getattr(x, g) for g in geometry] == [getattr(y, g) for g in geometry]
    assert (a.input_levels, a.scale, a.input_shape) == (b.input_levels, b.scale, b.input_shape)


# --- packing -----------------------------------------------------------------------------


def reference_pack(signs: np.ndarray) -> np.ndarray:
    """Bit-by-bit reference: element i -> bit i % 32 of word i // 32, bit 1 = -1."""
    out, n = signs.shape
    words = np.zeros((out, (n + 31) // 32), dtype=np.uint64)
    for r in range(out):
        for i in range(n):
            if signs[r, i] < 0:
                words[r, i // 32] |= np.uint64(1 << (i % 32))
    return words.astype(np.uint32)


@settings(max_examples=60, deadline=None)
@given(
    out=st.integers(1, 6),
    n=st.integers(1, 100),
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_unpack_roundtrip_odd_shapes(out, n, seed):
    signs = np.where(np.random.default_rng(seed).random((out, n)) < 0.5, -1, 1).astype(np.int8)
    words = pack_rows(signs)
    assert words.dtype == np.uint32 and words.shape == (out, (n + 31) // 32)
    assert np.array_equal(words, reference_pack(signs))
    assert np.array_equal(unpack_rows(words, n), signs)
    assert np.array_equal(pack_rows(signs[0]), words[0])  # 1-D rows too


def test_pack_rows_bit_and_byte_order():
    signs = np.ones(40, np.int8)
    signs[[0, 2, 33]] = -1
    words = pack_rows(signs)
    assert words.tolist() == [0b101, 0b10]
    assert words.astype("<u4").tobytes() == bytes([5, 0, 0, 0, 2, 0, 0, 0])


def test_unpack_rows_rejects_bad_words():
    with pytest.raises(ValueError, match="padding bits beyond in_features=5 to be 0"):
        unpack_rows(np.array([[1 << 5]], np.uint32), 5)
    with pytest.raises(ValueError, match=r"shape \(out, 1\) for in_features=5, but got \(1, 2\)"):
        unpack_rows(np.zeros((1, 2), np.uint32), 5)
    with pytest.raises(ValueError, match="to be uint32"):
        unpack_rows(np.zeros((1, 1), np.int64), 5)
    with pytest.raises(ValueError, match="-1/\\+1 values"):
        pack_rows(np.zeros((2, 3)))


def test_popcount_matches_python():
    words = np.random.default_rng(0).integers(0, 2**32, 200, dtype=np.uint64).astype(np.uint32)
    assert popcount(words).tolist() == [bin(int(w)).count("1") for w in words]


# --- round trip and golden file ----------------------------------------------------------


@pytest.mark.parametrize("sizes", [[13, 37, 3], [1, 1, 2], [64, 32, 33, 10], [100, 2]])
def test_roundtrip_exact(sizes):
    model = random_model(np.random.default_rng(len(sizes)), sizes)
    data = write_bitstream(model)
    assert_models_equal(read_bitstream(data), model)
    assert write_bitstream(read_bitstream(data)) == data
    assert len(data) % 4 == 0


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 70), min_size=2, max_size=4),
    levels=st.sampled_from([1, 16, 255, 1000]),
    seed=st.integers(0, 2**32 - 1),
)
def test_roundtrip_and_interpreter_property(sizes, levels, seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng, sizes, levels)
    data = write_bitstream(model)
    assert_models_equal(read_bitstream(data), model)
    q = rng.integers(0, levels + 1, (5, sizes[0]))
    expected = deploy_forward(model, torch.from_numpy(q)).numpy()
    assert np.array_equal(run_bitstream(data, q), expected)


def test_roundtrip_of_folded_network_keeps_float32_scale():
    net = build_model("fcnn", (1, 8, 8), 10, (24,))
    randomize_batchnorm_(net, torch.Generator().manual_seed(3))
    model = to_deploy(net, 16)
    assert_models_equal(read_bitstream(write_bitstream(model)), model)


@pytest.mark.parametrize("name", ["tiny", "tiny_conv"])  # format v1, format v2
def test_golden_file_regenerates_identically(name):
    make_golden = _golden_module()
    model = getattr(make_golden, f"{name}_model")()
    data = write_bitstream(model)
    assert data == (GOLDEN / f"{name}.bet").read_bytes()
    assert make_golden.hex_dump(data) == (GOLDEN / f"{name}.hex").read_text()
    assert_models_equal(read_bitstream(data), model)


def test_golden_header_fields_by_hand():
    data = (GOLDEN / "tiny.bet").read_bytes()
    assert data[:4] == b"LBET"
    version, flags, size, layers, levels = struct.unpack_from("<HHIII", data, 4)
    assert (version, flags, size, layers, levels) == (1, 0, len(data), 2, 16)
    assert struct.unpack_from("<f", data, 20)[0] == 0.25
    assert struct.unpack_from("<5I", data, 24) == (2, 1, 13, 0, 0)
    assert struct.unpack_from("<I", data, 44)[0] == zlib.crc32(data[:44])
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4])
    # first table entry: hidden, integer input, 37 x 13, 1 word per row, section right after
    entry = struct.unpack_from("<8I", data, HEADER_BYTES)
    assert entry == (1, 0, 37, 13, 1, 48 + 64 + 4, 37 * 4 + 37 * 4 + 8 + 4, 0)


# --- corruption ---------------------------------------------------------------------------


def _tiny() -> bytes:
    return (GOLDEN / "tiny.bet").read_bytes()


def _patch(data: bytes, offset: int, fmt: str, *values) -> bytearray:
    buffer = bytearray(data)
    struct.pack_into(fmt, buffer, offset, *values)
    return buffer


def _fix_header_crc(buffer: bytearray) -> bytes:
    struct.pack_into("<I", buffer, 44, zlib.crc32(bytes(buffer[:44])))
    struct.pack_into("<I", buffer, len(buffer) - 4, zlib.crc32(bytes(buffer[:-4])))
    return bytes(buffer)


def test_reader_errors_are_specific():
    data = _tiny()
    cases = [
        (b"XBET" + data[4:], "magic b'XBET'"),
        (bytes(_patch(data, 4, "<H", 3)), "Unsupported bitstream version 3"),
        (data[:20], "shorter than the 48-byte header"),
        (data[:-1], "header says 456 bytes, but got 455"),
        (data + b"\0", "Trailing data"),
        (bytes(_patch(data, 16, "<I", 17)), "Header CRC mismatch"),
        (_fix_header_crc(_patch(data, 6, "<H", 1)), "Unsupported header flags"),
        (_fix_header_crc(_patch(data, 20, "<f", -1.0)), "output_scale -1.0"),
        (_fix_header_crc(_patch(data, 20, "<f", float("nan"))), "output_scale nan"),
        (_fix_header_crc(_patch(data, 24, "<I", 5)), "input_ndim 5"),
        (_fix_header_crc(_patch(data, 28, "<I", 2)), r"input_shape \(2, 13\) does not have 13"),
        (_fix_header_crc(_patch(data, 16, "<I", 0)), "input_levels is 0"),
        (bytes(_patch(data, len(data) - 8, "<I", 0)), "File CRC mismatch"),
    ]
    flipped = bytearray(data)
    flipped[HEADER_BYTES + 10] ^= 1
    cases.append((_fix_header_crc(flipped), "Layer table CRC mismatch"))
    flipped = bytearray(data)
    flipped[130] ^= 4  # a weight bit of layer 0
    cases.append((_fix_header_crc(flipped), "Section CRC mismatch: layer 0"))
    padded = bytearray(data)
    padded[116 + 3] |= 0x80  # bit 31 of row 0 of layer 0: a padding bit (13 inputs)
    cases.append((refresh_checksums(padded), "layer 0 has non-zero padding bits"))
    padded = bytearray(data)
    padded[116 + 148 + 148 + 4 + 3] |= 0x80  # bit 31 of direction word 1: 37 neurons, 27 pad
    cases.append((refresh_checksums(padded), "Invalid directions: layer 0 has non-zero padding"))
    for corrupted, message in cases:
        with pytest.raises(BitstreamError, match=message):
            read_bitstream(corrupted)
    with pytest.raises(TypeError, match="to be bytes"):
        read_bitstream("LBET")


def _mutate(rng: np.random.Generator, data: bytes) -> bytes:
    kind = rng.integers(5)
    buffer = bytearray(data)
    if kind == 0:  # 1-4 bit flips
        for _ in range(rng.integers(1, 5)):
            position = int(rng.integers(len(buffer) * 8))
            buffer[position // 8] ^= 1 << (position % 8)
    elif kind == 1:  # truncation
        return bytes(buffer[: int(rng.integers(len(buffer)))])
    elif kind == 2:  # extension
        return bytes(buffer) + rng.integers(0, 256, int(rng.integers(1, 9)), np.uint8).tobytes()
    elif kind == 3:  # byte overwrites
        for _ in range(rng.integers(1, 4)):
            buffer[int(rng.integers(len(buffer)))] = int(rng.integers(256))
    else:  # a 32-bit word overwritten (e.g. a field or a CRC) with a random value
        offset = 4 * int(rng.integers(len(buffer) // 4))
        struct.pack_into("<I", buffer, offset, int(rng.integers(2**32)))
    return bytes(buffer)


def fuzz_rejections(originals: list[bytes], rng: np.random.Generator, count: int) -> int:
    """Read ``count`` mutated files; how many were rejected (any other outcome fails)."""
    rejected = 0
    for i in range(count):
        original = originals[i % len(originals)]
        mutated = _mutate(rng, original)
        try:
            read_bitstream(mutated)
        except BitstreamError:
            rejected += 1
            continue
        # any exception other than BitstreamError fails the test; acceptance only if unchanged
        assert mutated == original, f"accepted a corrupted file (mutation {i})"
    return rejected


def test_fuzz_reader_never_accepts_a_corrupted_file():
    rng = np.random.default_rng(2026)
    originals = [_tiny(), write_bitstream(random_model(np.random.default_rng(1), [40, 35, 33, 4]))]
    start = time.perf_counter()
    assert fuzz_rejections(originals, rng, 10_000) >= 9_900
    assert time.perf_counter() - start < 20


def test_writer_rejects_what_the_format_cannot_hold():
    rng = np.random.default_rng(0)
    model = random_model(rng, [4, 3, 2])
    layer = model.layers[0]
    big = DeployLayer(layer.weight, np.full(3, 2**31, np.int64), layer.direction, False)
    with pytest.raises(ValueError, match=r"thresholds of layer 0 to fit int32"):
        write_bitstream(DeployModel((big, model.layers[1]), 16, 1.0))
    with pytest.raises(ValueError, match="finite float32 > 0, but got 1e-50"):
        write_bitstream(DeployModel(model.layers, 16, 1e-50))
    with pytest.raises(ValueError, match="at most 4 dimensions"):
        write_bitstream(DeployModel(model.layers, 16, 1.0, (1, 1, 1, 2, 2)))
    with pytest.raises(ValueError, match="fit int32"):
        write_bitstream(DeployModel(model.layers, 2**30, 1.0))
    with pytest.raises(TypeError, match="to be a DeployModel"):
        write_bitstream(b"model")


# --- numpy interpreter on packed words -----------------------------------------------------


def test_interpreter_equals_deploy_mode_on_digits_test_set():
    module, _ = trained_digits()
    model = to_deploy(module.net, 16)
    _, q, _ = digits_test_pixels()
    data = write_bitstream(model)
    logits = run_bitstream(data, q.numpy().astype(np.uint8))
    reference = deploy_forward(model, q).numpy()
    assert np.array_equal(logits, reference)  # every sample, every logit
    assert np.array_equal(predict_bitstream(data, q.numpy()), reference.argmax(1))
    assert np.array_equal(run_bitstream(model, q.numpy().reshape(-1, 1, 8, 8)), reference)


def test_interpreter_equals_deploy_mode_on_fashion_mnist_shapes():
    generator = torch.Generator().manual_seed(7)
    net = build_model("fcnn", (1, 28, 28), 10, (96, 40)).eval()
    randomize_batchnorm_(net, generator)
    # BatchNorm statistics near the real pre-activation scale of 784 pixels in [0, 1]
    net.blocks[0].bn.running_mean.mul_(10)
    net.blocks[0].bn.running_var.mul_(100)
    model = to_deploy(net, input_levels=255)
    q = np.random.default_rng(7).integers(0, 256, (256, 784), dtype=np.uint8)
    logits = run_bitstream(write_bitstream(model), q)
    assert np.array_equal(logits, deploy_forward(model, torch.from_numpy(q)).numpy())
    x = torch.from_numpy(q).float().div(255).view(-1, 1, 28, 28)
    with torch.no_grad():
        agree = (net(x).argmax(1).numpy() == logits.argmax(1)).mean()
    assert agree >= 0.99


def test_interpreter_rejects_bad_input():
    data = _tiny()
    with pytest.raises(ValueError, match=r"shape \(N, 13\) or \(N, 1, 13\), but got \(2, 12\)"):
        run_bitstream(data, np.zeros((2, 12), np.uint8))
    with pytest.raises(ValueError, match=r"pixels in \[0, 16\], but got values in \[17, 17\]"):
        run_bitstream(data, np.full((2, 13), 17))
    with pytest.raises(TypeError, match="integer array"):
        run_bitstream(data, np.zeros((2, 13), np.float32))
    with pytest.raises(BitstreamError, match="File CRC mismatch"):
        run_bitstream(data[:-4] + b"\0\0\0\0", np.zeros((2, 13), np.uint8))
    with pytest.raises(TypeError, match="bitstream bytes, a DeployModel or a PackedModel"):
        run_bitstream("model.bet", np.zeros((2, 13), np.uint8))


def test_parse_bitstream_offsets_point_at_the_weights():
    data = _tiny()
    packed = parse_bitstream(data)
    for layer in packed.layers:
        stored = np.frombuffer(data, "<u4", layer.weight_words.size, layer.weight_offset)
        assert np.array_equal(stored, layer.weight_words.ravel())


def test_bitstream_size_benchmark_meets_targets_and_matches_the_format(tmp_path):
    from lightning_bet.bench.bitstream_size import run

    result = run(tmp_path)
    # FORMAT.md "Size": words per row ceil(n/32), thresholds + direction words, fixed overhead
    layers = [(2048, 784), (2048, 2048), (10, 2048)]
    payload = sum(4 * m * ((n + 31) // 32) for m, n in layers)
    payload += sum(4 * m + 4 * ((m + 31) // 32) for m, _ in layers[:-1])
    assert result["payload_bytes"] == payload
    assert result["bytes"] == payload + 56 + 36 * len(layers)
    assert result["information_bound_bytes"] == (sum(m * n for m, n in layers) + 33 * 4096) // 8
    assert result["vs_information_bound"] <= 1.01
    assert result["vs_float32_state_dict"] >= 30
    assert json.loads((tmp_path / "results.json").read_text())["bitstream_size"] == result
    # CNN rows (format v2, FORMAT.md "Version 2 / Size"): one bit vector of kernels per conv
    # layer, thresholds and direction words per output channel, 48-byte table entries
    cnns = {
        "digits_cnn": ([(32, 1), (64, 32)], [(10, 256)]),
        "vgg3_fashion_mnist": ([(64, 1), (64, 64)], [(2048, 3136), (10, 2048)]),
    }
    for name, (convs, dense) in cnns.items():
        row = result["cnn"][name]
        payload = sum(4 * ((o * c * 9 + 31) // 32) + 4 * o + 4 * ((o + 31) // 32) for o, c in convs)
        payload += sum(4 * m * ((n + 31) // 32) for m, n in dense)
        payload += sum(4 * m + 4 * ((m + 31) // 32) for m, _ in dense[:-1])
        layers = len(convs) + len(dense)
        assert row["format_version"] == 2 and row["payload_bytes"] == payload
        assert row["bytes"] == payload + 56 + 52 * layers  # 48-byte entry + section CRC
        units = sum(o for o, _ in convs) + sum(m for m, _ in dense[:-1])
        weights = sum(o * c * 9 for o, c in convs) + sum(m * n for m, n in dense)
        assert row["information_bound_bytes"] == -(-(weights + 33 * units) // 8)
        assert row["vs_information_bound"] <= 1.01
        assert result[f"{name}_vs_information_bound"] == row["vs_information_bound"]
    assert result["meets_targets"]
