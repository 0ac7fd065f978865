"""The portable C runtime (export/runtime) against the deploy-mode reference.

Every agreement test compares integer logits AND predictions of the C code with
``lightning_bet.deploy.fold.deploy_forward`` (and an int64 numpy reference written here).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_bet import BNNClassifier, DigitsDataModule
from lightning_bet.data.digits import load_digits_splits
from lightning_bet.deploy.bitstream import BitstreamError, parse_bitstream, write_bitstream
from lightning_bet.deploy.c_header import c_array, render_header, write_c_package
from lightning_bet.deploy.c_runner import (
    HOST_CFLAGS,
    RUNTIME_SOURCES,
    BetRuntimeError,
    BetStatus,
    build_host,
    check_bitstream_c,
    compiler,
    evaluate_bitstreams_c,
    footprint,
    footprint_markdown,
    mcu_toolchain,
    run_c,
    run_mcu_emulated,
    runtime_dir,
)
from lightning_bet.deploy.fold import deploy_forward, to_deploy
from lightning_bet.deploy.model import DeployLayer, DeployModel
from tests.deploy_models import random_deploy_model

needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler"
)
pytestmark = needs_cc

STRICT = ("-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror")


# ----------------------------------------------------------------------------------------------
# references and model builders


def reference_logits(model: DeployModel, q: np.ndarray) -> np.ndarray:
    """Deploy mode from the contract, in int64 numpy (independent of fold.py and the C code)."""
    v = np.asarray(q).reshape(len(q), -1).astype(np.int64)
    for layer in model.layers:
        a = v @ layer.weight.astype(np.int64).T
        if layer.threshold is None:
            return a
        v = np.where(
            np.where(layer.direction == 1, a >= layer.threshold, a <= layer.threshold), 1, -1
        )
    raise AssertionError("no output layer")


def first_argmax(logits: np.ndarray) -> np.ndarray:
    """First index of the maximum, written without np.argmax."""
    return (logits == logits.max(axis=1, keepdims=True)).astype(np.int8).argmax(axis=1)


def random_model(sizes, levels, rng, q, scale=0.25, input_shape=None) -> DeployModel:
    """Random network (tests.deploy_models) whose first two neurons per hidden layer have
    thresholds just outside the reachable range (the bitstream holds int32 thresholds)."""

    def constants(i: int, n_in: int) -> list[int]:
        bound = n_in * (levels if i == 0 else 1) + 1
        return [bound, -bound]

    return random_deploy_model(sizes, levels, rng, q, constants, scale, input_shape)


def assert_agrees(model: DeployModel, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    expected = deploy_forward(model, torch.from_numpy(q.astype(np.int64))).numpy()
    np.testing.assert_array_equal(expected, reference_logits(model, q))
    preds, logits = run_c(write_bitstream(model), q)
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(preds, first_argmax(expected))
    return preds, logits


@pytest.fixture(scope="module")
def small_case():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 17, size=(16, 40), dtype=np.int64)
    return random_model((40, 33, 7), 16, rng, q), q


# ----------------------------------------------------------------------------------------------
# agreement with deploy mode


def _train_digits() -> BNNClassifier:
    L.seed_everything(0, verbose=False)
    module = BNNClassifier(hidden=[256, 256])
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,  # validation is not what this test checks
        num_sanity_val_steps=0,
    )
    trainer.fit(module, DigitsDataModule(batch_size=64))
    return module


@pytest.fixture(scope="module")
def digits_case():
    """A digits FCNN 64-256-256-10 trained for 3 epochs, in deploy mode, and the test split."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine, 2 threads spin: 0.4 s instead of 12 s
    try:
        module = _train_digits()
    finally:
        torch.set_num_threads(threads)
    x, y = load_digits_splits()["test"]
    q = torch.round(x * DigitsDataModule.input_levels).to(torch.int64).numpy()
    return to_deploy(module.net, DigitsDataModule.input_levels), q, y.numpy()


def test_trained_digits_model_agrees_on_every_test_sample(digits_case):
    model, q, y = digits_case
    preds, _ = assert_agrees(model, q)
    assert len(q) == 360 and (preds == y).mean() > 0.8  # a trained model, not noise
    accuracy = evaluate_bitstreams_c([write_bitstream(model)], q, y)
    assert accuracy[0] == pytest.approx((preds == y).mean())


def test_fashion_format_random_model_agrees():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, size=(64, 784), dtype=np.int64)
    q[0] = 0  # an all-zero image
    q[1] = 255  # a saturated one
    model = random_model((784, 2048, 2048, 10), 255, rng, q, input_shape=(1, 28, 28))
    assert_agrees(model, q.reshape(64, 1, 28, 28))


@pytest.mark.parametrize(
    "sizes",
    [(1, 2), (31, 3), (32, 5), (33, 2), (65, 64, 3), (7, 1, 2), (64, 31, 33, 65, 4), (100, 96, 10)],
)
def test_odd_shapes_agree(sizes):
    rng = np.random.default_rng(sum(sizes))
    q = rng.integers(0, 4, size=(20, sizes[0]), dtype=np.int64)
    assert_agrees(random_model(sizes, 3, rng, q), q)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 70), min_size=2, max_size=5),
    levels=st.integers(1, 255),
    samples=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_shapes_and_levels_agree(sizes, levels, samples, seed):
    rng = np.random.default_rng(seed)
    q = rng.integers(0, levels + 1, size=(samples, sizes[0]), dtype=np.int64)
    model = random_model(tuple(sizes), levels, rng, q)
    preds, logits = run_c(write_bitstream(model), q)
    expected = reference_logits(model, q)
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(preds, first_argmax(expected))


def test_threshold_boundaries_and_both_directions():
    # one input pixel of value 2 or 3: a = +-q; thresholds straddle it for both directions
    w = np.ones((6, 1), np.int8)
    t = np.array([2, 3, 4, 2, 3, 4], np.int64)
    d = np.array([1, 1, 1, -1, -1, -1], np.int8)
    head = DeployLayer(np.eye(6, dtype=np.int8) * 2 - 1, None, None, True)
    model = DeployModel((DeployLayer(w, t, d, False), head), 4, 1.0)
    q = np.array([[2], [3], [4]], np.int64)
    _, logits = assert_agrees(model, q)
    # outputs +1 iff d (a - T) >= 0: check the hidden signs through the identity-like head
    signs = np.where(np.where(d == 1, q >= t, q <= t), 1, -1)
    np.testing.assert_array_equal(logits, signs @ (np.eye(6) * 2 - 1).T)


def test_logit_ties_give_the_first_index():
    rng = np.random.default_rng(3)
    w = rng.choice(np.array([-1, 1], np.int8), size=(5, 9))
    head = w[[2, 2, 0, 2, 1]]  # classes 0, 1 and 3 always tie
    model = DeployModel((DeployLayer(head, None, None, False),), 8, 1.0)
    q = rng.integers(0, 9, size=(50, 9), dtype=np.int64)
    preds, logits = assert_agrees(model, q)
    assert (logits[:, 0] == logits[:, 1]).all() and 1 not in preds and 3 not in preds
    same = DeployModel((DeployLayer(np.ones((4, 9), np.int8), None, None, False),), 8, 1.0)
    preds, _ = run_c(write_bitstream(same), q)
    assert (preds == 0).all()


def test_golden_bitstream_agrees():
    from lightning_bet.deploy.bitstream import read_bitstream

    blob = (Path(__file__).parent / "golden" / "tiny.bet").read_bytes()
    assert check_bitstream_c(blob) == BetStatus.OK
    model = read_bitstream(blob)
    q = np.random.default_rng(4).integers(0, 17, size=(100, 13), dtype=np.int64)
    assert_agrees(model, q)


def test_uint8_inputs_and_empty_batch(small_case):
    model, q = small_case
    preds, logits = run_c(write_bitstream(model), q.astype(np.uint8))
    np.testing.assert_array_equal(logits, reference_logits(model, q))
    preds, logits = run_c(write_bitstream(model), np.zeros((0, 40), np.uint8))
    assert preds.shape == (0,) and logits.shape == (0, 7)


def test_swar_popcount_build_agrees(small_case, tmp_path):
    model, q = small_case
    swar = build_host(tmp_path, cflags=(*HOST_CFLAGS, "-DBET_SWAR_POPCOUNT"))
    assert swar != build_host(tmp_path)
    blob = tmp_path / "m.bet"
    blob.write_bytes(write_bitstream(model))
    q.astype(np.uint8).tofile(tmp_path / "q.u8")
    subprocess.run(
        [swar, "predict", blob, tmp_path / "q.u8", tmp_path / "p.i32", tmp_path / "l.i32"],
        check=True,
    )
    logits = np.fromfile(tmp_path / "l.i32", "<i4").reshape(len(q), -1)
    np.testing.assert_array_equal(logits, reference_logits(model, q))


# Skipped without the toolchain, except under CI=true (.ci/run installs it): there a missing
# toolchain fails the tests (run_mcu_emulated raises) instead of hiding them.
needs_mcu = pytest.mark.skipif(
    mcu_toolchain() is None and os.environ.get("CI") != "true",
    reason="needs arm-none-eabi-gcc and qemu-system-arm",
)


@needs_mcu
def test_emulated_cortex_m_agrees_on_every_digits_test_sample(digits_case):
    model, q, _ = digits_case
    expected = reference_logits(model, q)
    blob = write_bitstream(model)
    for cpu, cflags in (("cortex-m4", ("-Os", "-DBET_SWAR_POPCOUNT")), ("cortex-m3", ("-O2",))):
        preds, logits = run_mcu_emulated(blob, q, cpu=cpu, cflags=cflags)
        np.testing.assert_array_equal(logits, expected)
        np.testing.assert_array_equal(preds, first_argmax(expected))


@needs_mcu
def test_emulated_cortex_m4_runs_the_fashion_format_fcnn():
    rng = np.random.default_rng(8)
    q = rng.integers(0, 256, size=(6, 784), dtype=np.int64)
    model = random_model((784, 2048, 2048, 10), 255, rng, q)
    preds, logits = run_mcu_emulated(write_bitstream(model), q)
    expected = reference_logits(model, q)
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(preds, first_argmax(expected))
    with pytest.raises(BitstreamError, match="CRC mismatch"):  # validated before building
        run_mcu_emulated(_flip(write_bitstream(model), 1000), q[:1])
    with pytest.raises(ValueError, match="Expected `cpu` to be one of"):
        run_mcu_emulated(write_bitstream(model), q, cpu="cortex-a53")


# ----------------------------------------------------------------------------------------------
# strict, portable builds


def test_runtime_builds_strict_freestanding_and_32_bit(tmp_path):
    cc = compiler()
    source = runtime_dir() / "bet_runtime.c"
    for flags in (("-O2",), ("-Os", "-ffreestanding"), ("-O0", "-DBET_SWAR_POPCOUNT")):
        subprocess.run([cc, *STRICT, *flags, "-c", source, "-o", tmp_path / "r.o"], check=True)
    probe = subprocess.run(
        [cc, "-m32", "-ffreestanding", "-x", "c", "-c", "-", "-o", tmp_path / "p.o"],
        input=b"int x;\n",
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("the compiler cannot target -m32")
    subprocess.run(
        [cc, *STRICT, "-m32", "-ffreestanding", "-O2", "-c", source, "-o", tmp_path / "r32.o"],
        check=True,
    )


def test_runtime_needs_no_libc_or_allocator(tmp_path):
    cc = compiler()
    obj = tmp_path / "r.o"
    flags = ("-O2", "-ffreestanding", "-DBET_SWAR_POPCOUNT")
    subprocess.run(
        [cc, *STRICT, *flags, "-c", runtime_dir() / "bet_runtime.c", "-o", obj], check=True
    )
    nm = subprocess.run(["nm", "-u", obj], capture_output=True, text=True, check=True).stdout
    undefined = {line.split()[-1] for line in nm.splitlines() if line.strip()}
    # a compiler may still emit memset/memcpy for struct copies; nothing else
    assert undefined <= {"memset", "memcpy"}, undefined
    source = (runtime_dir() / "bet_runtime.c").read_text()
    assert "malloc(" not in source and "#include <string.h>" not in source


def _shared_runtime(tmp_path) -> ctypes.CDLL:
    lib = tmp_path / "libbet.so"
    subprocess.run(
        [
            compiler(),
            *STRICT,
            "-O2",
            "-shared",
            "-fPIC",
            runtime_dir() / "bet_runtime.c",
            "-o",
            lib,
        ],
        check=True,
    )
    runtime = ctypes.CDLL(str(lib))
    runtime.bet_crc32.restype = ctypes.c_uint32
    runtime.bet_crc32.argtypes = [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t]
    runtime.bet_predict.restype = ctypes.c_int32
    runtime.bet_predict.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    runtime.bet_model_init.restype = ctypes.c_int
    runtime.bet_model_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    runtime.bet_scratch_words.restype = ctypes.c_uint32
    runtime.bet_scratch_words.argtypes = [ctypes.c_void_p]
    return runtime


def test_crc32_matches_zlib_and_null_arguments_are_safe(tmp_path, small_case):
    runtime = _shared_runtime(tmp_path)
    rng = np.random.default_rng(5)
    for size in (0, 1, 3, 4, 5, 63, 1000):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert runtime.bet_crc32(0, data, len(data)) == zlib.crc32(data)
        # chaining like zlib.crc32(b, crc)
        head, tail = data[: size // 2], data[size // 2 :]
        chained = runtime.bet_crc32(runtime.bet_crc32(0, head, len(head)), tail, len(tail))
        assert chained == zlib.crc32(data)
    assert runtime.bet_crc32(0, b"123456789", 9) == 0xCBF43926  # the CRC-32 check value
    assert runtime.bet_model_init(None, b"LBET", 4) == BetStatus.ERR_NULL
    model_buffer = ctypes.create_string_buffer(4096)
    assert runtime.bet_model_init(model_buffer, None, 0) == BetStatus.ERR_NULL
    scratch = (ctypes.c_uint32 * 64)()
    assert runtime.bet_predict(None, b"\0" * 40, None, scratch) == -1
    assert runtime.bet_scratch_words(None) == 0
    # a valid model through the C API: bet_predict with logits_out = NULL
    model, q = small_case
    blob = write_bitstream(model)
    assert runtime.bet_model_init(model_buffer, blob, len(blob)) == BetStatus.OK
    assert runtime.bet_scratch_words(model_buffer) == 2 * 2 + 1
    expected = first_argmax(reference_logits(model, q))
    for sample, label in zip(q.astype(np.uint8), expected, strict=True):
        assert runtime.bet_predict(model_buffer, sample.tobytes(), None, scratch) == label


def test_status_enum_matches_the_c_header():
    header = (runtime_dir() / "bet_runtime.h").read_text()
    codes = dict(re.findall(r"BET_(OK|ERR_[A-Z_]+) = (\d+)", header))
    assert {name: int(code) for name, code in codes.items()} == {s.name: s.value for s in BetStatus}


# ----------------------------------------------------------------------------------------------
# corrupted and truncated bitstreams


def _with_header(blob: bytes, offset: int, fmt: str, value) -> bytes:
    """Set a header field and refresh the header, section and file CRCs."""
    data = bytearray(blob)
    struct.pack_into(fmt, data, offset, value)
    struct.pack_into("<I", data, 44, zlib.crc32(bytes(data[:44])))
    struct.pack_into("<I", data, len(data) - 4, zlib.crc32(bytes(data[:-4])))
    return bytes(data)


def _entry_size(data: bytes | bytearray) -> int:
    """Layer-table entry bytes: 48 in a version-2 file, else 32."""
    return 48 if len(data) >= 6 and struct.unpack_from("<H", data, 4)[0] == 2 else 32


def _with_table(blob: bytes, offset: int, fmt: str, value: int) -> bytes:
    """Set a field at ``offset`` bytes into the layer table; refresh the table and file CRCs."""
    data = bytearray(blob)
    struct.pack_into(fmt, data, 48 + offset, value)
    end = 48 + _entry_size(data) * struct.unpack_from("<I", data, 12)[0]
    struct.pack_into("<I", data, end, zlib.crc32(bytes(data[48:end])))
    struct.pack_into("<I", data, len(data) - 4, zlib.crc32(bytes(data[:-4])))
    return bytes(data)


def _with_entry(blob: bytes, layer: int, field: int, value: int) -> bytes:
    """Set u32 field ``field`` of a layer table entry; refresh the table and file CRCs."""
    return _with_table(blob, _entry_size(blob) * layer + 4 * field, "<I", value)


def _refreshed(data: bytearray) -> bytes:
    """Recompute every section CRC and the file CRC."""
    num_layers = struct.unpack_from("<I", data, 12)[0]
    for i in range(num_layers):
        offset, size = struct.unpack_from("<II", data, 48 + _entry_size(data) * i + 20)
        struct.pack_into(
            "<I", data, offset + size - 4, zlib.crc32(bytes(data[offset : offset + size - 4]))
        )
    struct.pack_into("<I", data, len(data) - 4, zlib.crc32(bytes(data[:-4])))
    return bytes(data)


def _flip(blob: bytes, offset: int, mask: int = 0x01) -> bytes:
    data = bytearray(blob)
    data[offset] ^= mask
    return bytes(data)


def _corruptions(blob: bytes) -> dict[str, tuple[bytes, BetStatus]]:
    first_section = struct.unpack_from("<I", blob, 48 + 20)[0]
    padded = bytearray(blob)
    # layer 0 has 40 inputs: 2 words per row, bits 8..31 of the second word are padding
    padded[first_section + 4 + 3] |= 0x80
    dir_offset = first_section + 4 * 33 * 2 + 4 * 33  # layer 0: 33 neurons, directions after T
    padded_dir = bytearray(blob)
    padded_dir[dir_offset + 4 + 3] |= 0x40  # bit 30 of word 1: past neuron 32
    return {
        "empty": (b"", BetStatus.ERR_TRUNCATED),
        "short header": (blob[:47], BetStatus.ERR_TRUNCATED),
        "header only": (blob[:48], BetStatus.ERR_TRUNCATED),
        "one byte short": (blob[:-1], BetStatus.ERR_TRUNCATED),
        "half": (blob[: len(blob) // 2], BetStatus.ERR_TRUNCATED),
        "trailing byte": (blob + b"\0", BetStatus.ERR_TRAILING),
        "magic": (b"XBET" + blob[4:], BetStatus.ERR_MAGIC),
        "version": (_with_header(blob, 4, "<H", 3), BetStatus.ERR_VERSION),
        "v1 read as v2": (_with_header(blob, 4, "<H", 2), BetStatus.ERR_TABLE_CRC),
        "header bit": (_flip(blob, 17), BetStatus.ERR_HEADER_CRC),
        "header crc": (_flip(blob, 44), BetStatus.ERR_HEADER_CRC),
        "flags": (_with_header(blob, 6, "<H", 1), BetStatus.ERR_FLAGS),
        "input levels 0": (_with_header(blob, 16, "<I", 0), BetStatus.ERR_VALUE),
        "scale 0": (_with_header(blob, 20, "<f", 0.0), BetStatus.ERR_VALUE),
        "scale -1": (_with_header(blob, 20, "<f", -1.0), BetStatus.ERR_VALUE),
        "scale inf": (_with_header(blob, 20, "<f", float("inf")), BetStatus.ERR_VALUE),
        "scale nan": (_with_header(blob, 20, "<f", float("nan")), BetStatus.ERR_VALUE),
        "levels overflow": (_with_header(blob, 16, "<I", 2**31 // 40 + 1), BetStatus.ERR_VALUE),
        "too many layers": (_with_header(blob, 12, "<I", 17), BetStatus.ERR_TOO_MANY_LAYERS),
        "zero layers": (_with_header(blob, 12, "<I", 0), BetStatus.ERR_LAYOUT),
        "ndim 5": (_with_header(blob, 24, "<I", 5), BetStatus.ERR_LAYOUT),
        "shape product": (_with_header(blob, 28, "<I", 41), BetStatus.ERR_LAYOUT),
        "unused shape entry": (_with_header(blob, 32, "<I", 1), BetStatus.ERR_FLAGS),
        "table bit": (_flip(blob, 48 + 8), BetStatus.ERR_TABLE_CRC),
        "kind": (_with_entry(blob, 0, 0, 2), BetStatus.ERR_LAYOUT),
        "binary input flag": (_with_entry(blob, 0, 1, 1), BetStatus.ERR_LAYOUT),
        "layer flag bit": (_with_entry(blob, 1, 1, 3), BetStatus.ERR_FLAGS),
        "reserved": (_with_entry(blob, 1, 7, 1), BetStatus.ERR_FLAGS),
        "out features": (_with_entry(blob, 0, 2, 32), BetStatus.ERR_LAYOUT),
        "huge out features": (_with_entry(blob, 0, 2, 2**32 - 1), BetStatus.ERR_LAYOUT),
        "in features": (_with_entry(blob, 1, 3, 34), BetStatus.ERR_LAYOUT),
        "huge in features": (_with_entry(blob, 0, 3, 2**32 - 1), BetStatus.ERR_LAYOUT),
        "words per row": (_with_entry(blob, 0, 4, 3), BetStatus.ERR_LAYOUT),
        "section offset": (_with_entry(blob, 1, 5, 0), BetStatus.ERR_LAYOUT),
        "section size": (_with_entry(blob, 1, 6, 8), BetStatus.ERR_LAYOUT),
        "weight bit": (_flip(blob, first_section + 1), BetStatus.ERR_SECTION_CRC),
        "threshold bit": (_flip(blob, first_section + 4 * 66 + 2), BetStatus.ERR_SECTION_CRC),
        "file crc": (_flip(blob, len(blob) - 1), BetStatus.ERR_FILE_CRC),
        "weight padding": (_refreshed(padded), BetStatus.ERR_PADDING),
        "direction padding": (_refreshed(padded_dir), BetStatus.ERR_PADDING),
    }


def test_corrupted_bitstreams_are_rejected_with_the_right_code(small_case):
    model, q = small_case
    blob = write_bitstream(model)
    assert check_bitstream_c(blob) == BetStatus.OK
    for name, (data, status) in _corruptions(blob).items():
        assert check_bitstream_c(data) == status, name
        with pytest.raises(BitstreamError):  # the Python reader agrees that it is invalid
            parse_bitstream(data)
    with pytest.raises(BetRuntimeError, match="rejected the bitstream: ERR_SECTION_CRC") as info:
        run_c(_flip(blob, 300), q)
    assert info.value.status == BetStatus.ERR_SECTION_CRC
    with pytest.raises(BetRuntimeError, match=r"rejected bitstreams\[1\]: ERR_MAGIC"):
        evaluate_bitstreams_c([blob, b"XBET" + blob[4:]], q, np.zeros(len(q), np.int64))


def _fix_crcs(data: bytearray) -> bytes:
    """Recompute every CRC that the (possibly damaged) layout still locates."""
    if len(data) >= 48:
        struct.pack_into("<I", data, 44, zlib.crc32(bytes(data[:44])))
        num_layers = struct.unpack_from("<I", data, 12)[0]
        entry = _entry_size(data)
        end = 48 + entry * num_layers
        if num_layers <= 64 and end + 4 <= len(data):
            struct.pack_into("<I", data, end, zlib.crc32(bytes(data[48:end])))
            for i in range(num_layers):
                offset, size = struct.unpack_from("<II", data, 48 + entry * i + 20)
                if size >= 4 and offset + size <= len(data):
                    crc = zlib.crc32(bytes(data[offset : offset + size - 4]))
                    struct.pack_into("<I", data, offset + size - 4, crc)
    if len(data) >= 4:
        struct.pack_into("<I", data, len(data) - 4, zlib.crc32(bytes(data[:-4])))
    return bytes(data)


def _python_accepts(data: bytes) -> bool:
    try:
        parse_bitstream(data)
    except BitstreamError:
        return False
    return True


def fuzz_under_sanitizers(blob: bytes, q: np.ndarray, extra: list[bytes], tmp_path) -> None:
    """Random damage to ``blob`` (and the ``extra`` files), checked or not, run on ``q`` under
    AddressSanitizer + UBSan in one process (the harness allocates exactly bet_scratch_words);
    with the CRCs recomputed after the damage, C and the Python reader accept the same files."""
    try:
        asan = build_host(
            tmp_path,
            cflags=(
                *HOST_CFLAGS,
                "-g",
                "-fsanitize=address,undefined",
                "-fno-sanitize-recover=all",
            ),
        )
    except RuntimeError:
        pytest.skip("the compiler has no AddressSanitizer")
    rng = np.random.default_rng(11)
    files = []
    for i in range(240):
        data = bytearray(blob)
        if i % 3 == 0:  # truncate
            data = data[: rng.integers(0, len(data))]
        if len(data):  # damage a few distinct bytes, often in the header and layer table
            span = min(len(data), 120 if i % 2 else len(data))
            for where in rng.choice(span, size=min(span, rng.integers(1, 4)), replace=False):
                data[where] ^= rng.integers(1, 256)
        files.append(_fix_crcs(data) if i % 4 == 1 else bytes(data))
    files += [blob, *extra]
    names = []
    for i, data in enumerate(files):
        names.append(f"f{i}.bet")
        (tmp_path / names[-1]).write_bytes(data)
    q.astype(np.uint8).tofile(tmp_path / "q.u8")
    np.zeros(len(q), np.uint8).tofile(tmp_path / "y.u8")
    accepted = {}
    for flag in ([], ["--no-crc"]):
        result = subprocess.run(
            [asan, "accuracy", *flag, "q.u8", "y.u8", *names],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0", "PATH": "/usr/bin:/bin"},
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        statuses = [int(line.split()[0]) for line in result.stdout.splitlines()]
        assert len(statuses) == len(names)
        accepted[bool(flag)] = [s == BetStatus.OK for s in statuses]
    python = [_python_accepts(data) for data in files]
    assert accepted[False] == python
    assert any(python) and not all(python)  # the fixed-up files include valid ones
    # skipping CRCs accepts a superset
    assert all(b for a, b in zip(accepted[False], accepted[True], strict=True) if a)


def test_fuzzed_bitstreams_never_read_out_of_bounds(small_case, tmp_path):
    model, q = small_case
    blob = write_bitstream(model)
    fuzz_under_sanitizers(blob, q, [data for data, _ in _corruptions(blob).values()], tmp_path)


def test_no_crc_runs_a_bitstream_with_stale_checksums(small_case):
    model, q = small_case
    blob = bytearray(write_bitstream(model))
    section = struct.unpack_from("<I", blob, 48 + 32 + 20)[0]  # layer 1 (the output layer)
    blob[section] ^= 0x01  # negate weight (0, 0) of the output layer; CRCs left stale
    assert check_bitstream_c(bytes(blob)) == BetStatus.ERR_SECTION_CRC
    assert check_bitstream_c(bytes(blob), check_crc=False) == BetStatus.OK
    head = model.layers[1].weight.copy()
    head[0, 0] *= -1
    faulty = DeployModel((model.layers[0], DeployLayer(head, None, None, True)), 16, 0.25, (40,))
    preds, logits = run_c(bytes(blob), q, check_crc=False)
    np.testing.assert_array_equal(logits, reference_logits(faulty, q))


# ----------------------------------------------------------------------------------------------
# fault emulation: many faulty bitstreams in one call


def _faulty_copies(model: DeployModel, rng, count: int, p: float) -> list[DeployModel]:
    copies = []
    for _ in range(count):
        layers = []
        for layer in model.layers:
            flips = rng.random(layer.weight.shape) < p
            weight = np.where(flips, -layer.weight, layer.weight).astype(np.int8)
            layers.append(DeployLayer(weight, layer.threshold, layer.direction, layer.binary_input))
        copies.append(
            DeployModel(tuple(layers), model.input_levels, model.scale, model.input_shape)
        )
    return copies


def test_evaluate_bitstreams_matches_deploy_mode_on_faulty_models():
    rng = np.random.default_rng(7)
    q = rng.integers(0, 17, size=(200, 64), dtype=np.int64)
    model = random_model((64, 96, 96, 10), 16, rng, q)
    y = first_argmax(reference_logits(model, q))  # the clean model is 100% accurate
    copies = [model, *_faulty_copies(model, rng, 5, 0.05)]
    expected = [
        (first_argmax(deploy_forward(m, torch.from_numpy(q)).numpy()) == y).mean() for m in copies
    ]
    accuracies = evaluate_bitstreams_c([write_bitstream(m) for m in copies], q, y)
    np.testing.assert_array_equal(accuracies, expected)
    assert accuracies[0] == 1.0 and accuracies[1:].min() < 1.0  # the faults do something
    assert evaluate_bitstreams_c([], q, y).shape == (0,)


def test_evaluate_bitstreams_matches_the_emulator():
    """Faulty bitstreams of lightning_bet.deploy.emulate: C and the numpy interpreter agree."""
    from lightning_bet.deploy import emulate
    from lightning_bet.functional.faults import FaultModel

    rng = np.random.default_rng(9)
    q = rng.integers(0, 17, size=(150, 64), dtype=np.int64)
    model = random_model((64, 64, 10), 16, rng, q)
    y = first_argmax(reference_logits(model, q))
    blob = write_bitstream(model)
    for fault_model in (FaultModel(p=0.05), FaultModel(p01=0.1, p10=0.01)):
        faulty = list(emulate.faulty_bitstreams(blob, fault_model, realizations=3, seed=4))
        expected = emulate.emulate(blob, q, y, fault_model, realizations=3, seed=4).accuracies
        np.testing.assert_array_equal(evaluate_bitstreams_c(faulty, q, y), expected)
        assert expected.min() < 1.0  # the faults change predictions


# ----------------------------------------------------------------------------------------------
# C package (header + sources) for firmware


def package_main_output(folder: Path, name: str, q: np.ndarray, check: str) -> np.ndarray:
    """Compile a strict C99 program with the package ``<name>.h`` in ``folder`` that classifies
    ``q`` from a constant array in static buffers; fails to compile unless the C expression
    ``check`` holds. Returns its ``(N, 1 + classes)`` rows: prediction, then integer logits."""
    upper = name.upper()
    samples = "{\n" + c_array(q.astype(np.uint8).tobytes()) + "\n}"
    main = folder / "main.c"
    main.write_text(
        f"""#include <stdio.h>
#include "{name}.h"
static const uint8_t samples[{len(q)} * {upper}_NUM_INPUTS] = {samples};
static bet_model model;
static uint32_t scratch[{upper}_SCRATCH_WORDS];
static int32_t logits[{upper}_NUM_CLASSES];
typedef char scratch_size_check[{check} ? 1 : -1];
int main(void)
{{
    static const uint32_t shapes[{upper}_NUM_LAYERS][2] = {upper}_LAYER_SHAPES;
    size_t i, j;
    bet_status st = bet_model_init(&model, {name}_bet, {name}_bet_len);
    if (st != BET_OK || bet_scratch_words(&model) != {upper}_SCRATCH_WORDS
        || shapes[0][1] != model.num_inputs) {{
        return 1;
    }}
    for (i = 0; i < {len(q)}; ++i) {{
        printf("%ld", (long)bet_predict(&model, samples + i * {upper}_NUM_INPUTS, logits, scratch));
        for (j = 0; j < {upper}_NUM_CLASSES; ++j) {{
            printf(" %ld", (long)logits[j]);
        }}
        printf("\\n");
    }}
    return 0;
}}
"""
    )
    exe = folder / "firmware"
    subprocess.run(
        [compiler(), *STRICT, "-O2", "-o", exe, main, folder / "bet_runtime.c"],
        check=True,
        cwd=folder,
    )
    output = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
    return np.array([line.split() for line in output.splitlines()], dtype=np.int64)


def test_c_package_compiles_strictly_and_agrees(small_case, tmp_path):
    model, q = small_case
    info = write_c_package(model, tmp_path / "pkg", name="net")
    blob = write_bitstream(model)
    assert info["bitstream_bytes"] == len(blob) and info["scratch_words"] == 5
    assert info["layers"] == [(33, 40), (7, 33)]
    assert sorted(p.name for p in info["sources"]) == sorted(RUNTIME_SOURCES)
    for source in info["sources"]:
        assert source.read_bytes() == (runtime_dir() / source.name).read_bytes()
    text = info["header"].read_text()
    assert info["header_bytes"] == info["header"].stat().st_size
    body = text[text.index("net_bet[NET_BET_LEN] BET_ALIGN4 = {") :]
    values = re.findall(r"0x([0-9a-f]{2})", body[: body.index("};")])
    assert bytes(int(v, 16) for v in values) == blob  # the array is the bitstream, byte for byte
    check = "NET_SCRATCH_WORDS == BET_SCRATCH_WORDS(NET_MAX_HIDDEN)"
    rows = package_main_output(tmp_path / "pkg", "net", q, check)
    expected = reference_logits(model, q)
    np.testing.assert_array_equal(rows[:, 1:], expected)
    np.testing.assert_array_equal(rows[:, 0], first_argmax(expected))


def test_c_package_validation(small_case, tmp_path):
    model, _ = small_case
    with pytest.raises(ValueError, match="Expected `name` to be a C identifier, but got '3net'"):
        write_c_package(model, tmp_path, name="3net")
    with pytest.raises(ValueError, match="Expected `name` not to be 'bet_runtime'"):
        write_c_package(model, tmp_path, name="bet_runtime")
    with pytest.raises(TypeError, match="Expected `model` to be a DeployModel or bitstream bytes"):
        write_c_package("model.bet", tmp_path)
    with pytest.raises(BitstreamError):
        render_header(b"LBET" + bytes(60))
    info = write_c_package(write_bitstream(model), tmp_path)  # bytes work too
    assert (
        info["header"].name == "model.h" and "MODEL_SCRATCH_WORDS 5u" in info["header"].read_text()
    )


# ----------------------------------------------------------------------------------------------
# runner validation, caching, footprint


def test_runner_validation(small_case):
    model, q = small_case
    blob = write_bitstream(model)
    with pytest.raises(
        ValueError, match=r"Expected `q` to have 40 features per sample .* \(16, 39\)"
    ):
        run_c(blob, q[:, :39])
    with pytest.raises(ValueError, match=r"Expected `q` to have shape \(N, features\)"):
        run_c(blob, q[0])
    with pytest.raises(
        ValueError, match=r"Expected `q` to hold pixels in \[0, 255\] .* \[-1, 16\]"
    ):
        run_c(blob, np.where(q == 0, -1, q))
    with pytest.raises(
        ValueError, match="Expected `q` to hold integer pixels, but got non-integer"
    ):
        run_c(blob, q + 0.5)
    with pytest.raises(TypeError, match="Expected `q` to hold integer pixels, but got dtype bool"):
        run_c(blob, q > 3)
    with pytest.raises(TypeError, match="Expected `bitstream` to be bytes, but got str"):
        run_c("model.bet", q)
    with pytest.raises(TypeError, match="Expected `bitstreams` to be a sequence of bytes"):
        evaluate_bitstreams_c(blob, q, np.zeros(16, np.int64))
    with pytest.raises(ValueError, match=r"Expected `y` to be integer labels of shape \(16,\)"):
        evaluate_bitstreams_c([blob], q, np.zeros(15, np.int64))
    with pytest.raises(
        ValueError, match=r"Expected `y` in \[0, 255\], but got values in \[-1, 0\]"
    ):
        evaluate_bitstreams_c([blob], q, -np.eye(16, dtype=np.int64)[0])
    # tensors are accepted
    preds, _ = run_c(blob, torch.from_numpy(q))
    np.testing.assert_array_equal(preds, first_argmax(reference_logits(model, q)))


def test_build_is_cached_by_source_hash(tmp_path, monkeypatch):
    first = build_host(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert build_host(tmp_path) == first and first.stat().st_mtime_ns == mtime
    copy = tmp_path / "src"
    shutil.copytree(runtime_dir(), copy, ignore=shutil.ignore_patterns("*.o", "bet_host"))
    (copy / "bet_runtime.c").write_text((copy / "bet_runtime.c").read_text() + "\n/* changed */\n")
    monkeypatch.setenv("LIGHTNING_BET_RUNTIME_DIR", str(copy))
    assert runtime_dir() == copy
    assert build_host(tmp_path) != first
    broken = tmp_path / "broken"
    shutil.copytree(copy, broken)
    (broken / "bet_runtime.c").write_text("int broken(void) { return }\n")
    monkeypatch.setenv("LIGHTNING_BET_RUNTIME_DIR", str(broken))
    with pytest.raises(RuntimeError, match="Compiling the C runtime host harness failed"):
        build_host(tmp_path)


def test_footprint_of_the_reference_fcnns(tmp_path):
    rng = np.random.default_rng(2)
    digits = random_model((64, 256, 256, 10), 16, rng, rng.integers(0, 17, (4, 64)))
    report = footprint(digits, cache_dir=tmp_path)
    blob = write_bitstream(digits)
    assert report["bitstream"] == len(blob)
    assert report["weights"] == 4 * (256 * 2 + 256 * 8 + 10 * 8)
    assert report["thresholds"] == 2 * (4 * 256 + 4 * 8)
    assert report["format_overhead"] == 48 + 3 * 32 + 4 + 3 * 4 + 4
    assert report["flash"] == report["bitstream"] + report["code"] and 500 < report["code"] < 20000
    assert report["scratch"] == 4 * (2 * 8 + 1) and report["logits"] == 40
    assert report["ram"] >= report["scratch"] + report["logits"] + report["model_struct"]
    assert 0 < report["stack"] < 4096
    table = footprint_markdown({"digits": report})
    assert "| digits | 10,560 | 2,112 | 164 |" in table and len(table.splitlines()) == 3
    probe = subprocess.run(
        [compiler(), "-m32", "-ffreestanding", "-x", "c", "-c", "-", "-o", tmp_path / "p.o"],
        input=b"int x;\n",
        capture_output=True,
        check=False,
    )
    if probe.returncode == 0:  # ILP32: 9 u32, f32, u32, u32[4]; 16 layers: 3 u32, 3 u8, 4 pointers
        small = footprint(
            blob, cflags=("-std=c99", "-Os", "-m32", "-ffreestanding"), cache_dir=tmp_path
        )
        assert small["model_struct"] == 60 + 16 * 32
