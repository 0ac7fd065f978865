"""The C runtime on convolutional networks (bitstream v2) against deploy mode.

Every agreement test compares the C runtime's integer logits AND predictions with
``lightning_bet.deploy.fold.deploy_forward``; thresholds are drawn from real (pooled)
pre-activations so that ``a == T`` occurs for both directions.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import subprocess

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_bet.data.digits import load_digits_splits
from lightning_bet.deploy.bitstream import BitstreamError, parse_bitstream, write_bitstream
from lightning_bet.deploy.c_header import scratch_layout, write_c_package
from lightning_bet.deploy.c_runner import (
    HOST_CFLAGS,
    BetStatus,
    build_host,
    check_bitstream_c,
    compiler,
    evaluate_bitstreams_c,
    footprint,
    run_c,
    run_mcu_emulated,
    runtime_dir,
)
from lightning_bet.deploy.emulate import emulate, faulty_bitstreams
from lightning_bet.deploy.fold import DeployModule, deploy_forward, to_deploy
from lightning_bet.deploy.model import DeployConv, DeployLayer, DeployModel
from lightning_bet.functional.faults import FaultModel
from lightning_bet.models import build_model
from tests.test_c_runtime import (
    STRICT,
    _flip,
    _refreshed,
    _with_entry,
    _with_header,
    _with_table,
    first_argmax,
    fuzz_under_sanitizers,
    needs_cc,
    needs_mcu,
    package_main_output,
)
from tests.test_deploy_conv import conv_net
from tests.test_deploy_fold import randomize_batchnorm_
from tests.training import fit_plain

pytestmark = needs_cc

#: conv blocks (C_out, k, stride, padding, pool), dense widths, input shape
GEOMETRIES = {
    "padded_pooled": dict(),
    "strided_unpadded": dict(convs=((4, 3, 2, 0, 1), (5, 2, 1, 1, 2)), input_shape=(1, 11, 11)),
    "kernel5_no_dense": dict(convs=((3, 5, 1, 2, 3),), dense=(), input_shape=(3, 6, 6)),
    # 33 channels (two direction words), a 2-channel 7x7 pixel kernel (98 > 64 bits), a
    # non-square input, a pool of 3 and a stride-2 padded layer
    "wide_odd": dict(
        convs=((33, 7, 1, 3, 1), (35, 3, 2, 1, 3)), dense=(9, 5), input_shape=(2, 6, 11)
    ),
    "one_by_one": dict(convs=((40, 1, 1, 0, 2), (3, 1, 1, 0, 1)), dense=(), input_shape=(5, 4, 4)),
}


def agrees(model: DeployModel, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C logits and predictions equal deploy mode's; returns them."""
    expected = deploy_forward(model, torch.from_numpy(q)).numpy()
    preds, logits = run_c(write_bitstream(model), q)
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(preds, first_argmax(expected))
    return preds, logits


def with_hit_thresholds(model: DeployModel, q: np.ndarray, rng) -> DeployModel:
    """Each hidden layer's thresholds taken from real pooled pre-activations of ``q`` (so that
    ``max == T`` occurs), random directions, and a constant channel per layer."""
    module = DeployModule(model)
    v = torch.from_numpy(q.reshape(len(q), -1)).double()
    layers = list(model.layers)
    for i, layer in enumerate(layers[:-1]):
        a = module.preactivation(i, v).numpy().astype(np.int64)
        out = a.shape[1]
        picks = a[rng.integers(0, len(a), out), np.arange(out)].reshape(out, -1)
        threshold = picks[np.arange(out), rng.integers(0, picks.shape[1], out)]
        threshold[0] = np.abs(a).max() + 1  # never reached: a constant -1 (d = +1) or +1
        direction = rng.choice(np.array([-1, 1], np.int8), size=out)
        layers[i] = dataclasses.replace(layer, threshold=threshold, direction=direction)
        shape = (1, -1, 1, 1) if a.ndim == 4 else (1, -1)
        t, d = threshold.reshape(shape), direction.reshape(shape)
        v = torch.from_numpy(np.where(d * (a - t) >= 0, 1.0, -1.0).reshape(len(q), -1))
        module = DeployModule(dataclasses.replace(model, layers=tuple(layers)))
    return dataclasses.replace(model, layers=tuple(layers))


@pytest.mark.parametrize("levels", [16, 255])
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_conv_geometries_agree_at_threshold_equalities(name, levels):
    torch.manual_seed(levels)
    net = conv_net(**GEOMETRIES[name])
    rng = np.random.default_rng(levels)
    q = rng.integers(0, levels + 1, size=(40, *net.input_shape), dtype=np.int64)
    q[0] = 0  # an all-zero image: padding and zero pixels both contribute 0
    q[1] = levels
    model = with_hit_thresholds(to_deploy(net, levels), q, rng)
    assert any(d == -1 for d in model.layers[0].direction)
    agrees(model, q)


def _draw_conv(data, rng, in_shape: tuple[int, int, int], binary: bool) -> DeployConv:
    """A random conv layer of a valid geometry (zero thresholds, +1 directions)."""
    _, height, width = in_shape
    k = data.draw(st.integers(1, 4))
    p = data.draw(st.integers(max(0, (k - min(height, width) + 1) // 2), k - 1))  # kernel fits
    s = data.draw(st.integers(1, 3))
    hc, wc = (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1
    pool = data.draw(st.sampled_from([d for d in (1, 2, 3) if hc % d == 0 and wc % d == 0]))
    out = data.draw(st.integers(1, 40))
    weight = rng.choice(np.array([-1, 1], np.int8), size=(out, in_shape[0], k, k))
    zeros, ones = np.zeros(out, np.int64), np.ones(out, np.int8)
    return DeployConv(weight, zeros, ones, in_shape, s, p, pool, binary)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    depth=st.integers(1, 2),
    levels=st.sampled_from([1, 16, 255]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_conv_geometries_agree(data, shape, depth, levels, seed):
    rng = np.random.default_rng(seed)
    layers = [_draw_conv(data, rng, shape, False)]
    for _ in range(depth - 1):
        layers.append(_draw_conv(data, rng, layers[-1].out_shape, True))
    head = rng.choice(np.array([-1, 1], np.int8), size=(3, layers[-1].out_features))
    model = DeployModel((*layers, DeployLayer(head, None, None, True)), levels, 1.0, shape)
    q = rng.integers(0, levels + 1, size=(8, *shape), dtype=np.int64)
    agrees(with_hit_thresholds(model, q, rng), q)


def test_random_batchnorm_vgg_digits_agrees():
    torch.manual_seed(0)
    net = build_model("vgg3", (1, 8, 8), 10, (16,)).eval()
    generator = torch.Generator().manual_seed(5)
    randomize_batchnorm_(net, generator)  # negative gammas: direction -1 channels
    model = to_deploy(net, 16)
    q = torch.randint(0, 17, (200, 1, 8, 8), generator=generator).numpy()
    agrees(model, q)


@pytest.fixture(scope="module")
def vgg3_fashion():
    """The VGG3 FashionMNIST shape (C64-MP-C64-MP-FC2048-FC10), random BatchNorm, levels 255."""
    torch.manual_seed(1)
    net = build_model("vgg3", (1, 28, 28), 10, (2048,)).eval()
    randomize_batchnorm_(net, torch.Generator().manual_seed(1))
    return to_deploy(net, 255)


def test_vgg3_fashion_shape_agrees_on_random_q255_images(vgg3_fashion):
    rng = np.random.default_rng(2)
    q = rng.integers(0, 256, size=(200, 1, 28, 28), dtype=np.int64)
    q[0], q[1] = 0, 255
    preds, _ = agrees(vgg3_fashion, q)
    assert len(np.unique(preds)) > 3  # not a constant network


@needs_mcu
def test_emulated_cortex_m4_runs_the_vgg3_fashion_shape(vgg3_fashion):
    q = np.random.default_rng(3).integers(0, 256, size=(3, 1, 28, 28), dtype=np.int64)
    preds, logits = run_mcu_emulated(write_bitstream(vgg3_fashion), q)  # 819 KB in code memory
    expected = deploy_forward(vgg3_fashion, torch.from_numpy(q)).numpy()
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(preds, first_argmax(expected))


# ----------------------------------------------------------------------------------------------
# the trained digits CNN C32-MP-C64-MP-FC10: host C and an emulated Cortex-M


def digits_cnn():
    """The digits CNN ``C32-MP-C64-MP-FC10`` (3x3 convolutions, padding 1) on 1x8x8."""
    return conv_net((1, 8, 8), convs=((32, 3, 1, 1, 2), (64, 3, 1, 1, 2)), dense=(), num_classes=10)


@pytest.fixture(scope="module")
def digits_cnn_case():
    """The digits CNN trained for 4 epochs by a plain loop, in deploy mode, and the test split."""
    torch.manual_seed(0)
    x, y = load_digits_splits()["train"]
    net = fit_plain(digits_cnn(), x, y, epochs=4, lr=3e-3)  # one torch thread (conftest)
    x, y = load_digits_splits()["test"]
    q = torch.round(x * 16).to(torch.int64).reshape(len(x), 1, 8, 8).numpy()
    return to_deploy(net.eval(), 16), q, y.numpy()


def test_trained_digits_cnn_agrees_on_every_test_sample(digits_cnn_case):
    model, q, y = digits_cnn_case
    preds, _ = agrees(model, q)
    assert len(q) == 360 and (preds == y).mean() > 0.8  # a trained model, not noise


@needs_mcu
def test_emulated_cortex_m_runs_the_digits_cnn_on_every_test_sample(digits_cnn_case):
    model, q, _ = digits_cnn_case
    expected = deploy_forward(model, torch.from_numpy(q)).numpy()
    blob = write_bitstream(model)
    for cpu, cflags in (("cortex-m4", ("-Os", "-DBET_SWAR_POPCOUNT")), ("cortex-m3", ("-O2",))):
        preds, logits = run_mcu_emulated(blob, q, cpu=cpu, cflags=cflags)
        np.testing.assert_array_equal(logits, expected)
        np.testing.assert_array_equal(preds, first_argmax(expected))


def test_faulty_conv_bitstreams_give_the_emulator_accuracies(digits_cnn_case):
    """Faults on packed conv weights (lightning_bet.deploy.emulate): C and the numpy interpreter
    give the same accuracy for every realization."""
    model, q, y = digits_cnn_case
    blob = write_bitstream(model)
    clean = evaluate_bitstreams_c([blob], q, y)[0]
    for fault_model in (
        FaultModel(p=0.02),
        FaultModel(p01=0.05, p10=0.01),
        FaultModel(p=0.005, stuck_at_0=0.01, stuck_at_1=0.02),
    ):
        faulty = list(faulty_bitstreams(blob, fault_model, realizations=3, seed=4))
        expected = emulate(blob, q, y, fault_model, realizations=3, seed=4).accuracies
        np.testing.assert_array_equal(evaluate_bitstreams_c(faulty, q, y), expected)
        assert expected.min() < clean  # the faults change predictions


# ----------------------------------------------------------------------------------------------
# scratch sizes: exporter (model.h) == runtime, and enough (AddressSanitizer)


def _runtime_scratch_words(blob: bytes, tmp_path) -> int:
    path = tmp_path / "m.bet"
    path.write_bytes(blob)
    info = subprocess.run(
        [build_host(), "info", path], capture_output=True, text=True, check=True
    ).stdout
    return int(re.search(r"^scratch_words (\d+)$", info, re.M).group(1))


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_scratch_layout_equals_the_runtime(name, tmp_path):
    model = to_deploy(conv_net(**GEOMETRIES[name]), 16)
    layout = scratch_layout(model)
    assert _runtime_scratch_words(write_bitstream(model), tmp_path) == layout["scratch_words"]
    convs = [layer for layer in model.layers if isinstance(layer, DeployConv)]
    assert layout["max_hidden"] == max(layer.out_features for layer in model.layers[:-1])
    assert layout["conv_channels"] == max(layer.weight.shape[0] for layer in convs)


def test_digits_cnn_scratch_layout_by_hand(tmp_path):
    layout = scratch_layout(to_deploy(digits_cnn(), 16))
    # conv1 out 32x4x4 = 512 bits = 16 words; conv2 patch 32*9 = 288 bits: 2 * 9 words (bits and
    # mask), conv1's pixel patch 9 bytes = 3 words; 64 int32 maxima
    assert layout == {
        "max_hidden": 512,
        "activation_words": 16,
        "patch_words": 18,
        "conv_channels": 64,
        "scratch_words": 2 * 16 + 18 + 64 + 1,
    }


def test_c_package_of_a_cnn_compiles_strictly_and_agrees(tmp_path):
    torch.manual_seed(4)
    net = conv_net(**GEOMETRIES["wide_odd"])
    model = to_deploy(net, 16)
    q = np.random.default_rng(4).integers(0, 17, size=(12, *net.input_shape), dtype=np.int64)
    info = write_c_package(model, tmp_path / "pkg", name="net")
    text = info["header"].read_text()
    assert "bitstream v2, CNN C33k7p3-C35k3s2p1-MP3-9-5-4, input shape 2x6x11" in text
    for key in ("max_hidden", "patch_words", "conv_channels", "scratch_words"):
        assert f"#define NET_{key.upper()} {info[key]}u" in text
    check = "NET_SCRATCH_WORDS == BET_SCRATCH_WORDS_CONV(NET_MAX_HIDDEN, NET_PATCH_WORDS, "
    rows = package_main_output(tmp_path / "pkg", "net", q, check + "NET_CONV_CHANNELS)")
    expected = deploy_forward(model, torch.from_numpy(q)).numpy()
    np.testing.assert_array_equal(rows[:, 1:], expected)
    np.testing.assert_array_equal(rows[:, 0], first_argmax(expected))


def test_conv_bitstreams_under_sanitizers(tmp_path):
    """Random damage to a v2 file under AddressSanitizer + UBSan (the harness allocates exactly
    bet_scratch_words), and C accepts exactly the files the Python reader accepts."""
    torch.manual_seed(6)
    net = conv_net(**GEOMETRIES["wide_odd"])
    q = np.random.default_rng(6).integers(0, 17, size=(6, *net.input_shape), dtype=np.int64)
    blob = write_bitstream(to_deploy(net, 16))
    fuzz_under_sanitizers(blob, q, [data for data, _ in _conv_corruptions(blob).values()], tmp_path)


# ----------------------------------------------------------------------------------------------
# v2 errors: every one gets its status code, and the Python reader rejects it too


def _field(blob: bytes, layer: int, field: int) -> int:
    """u32 field ``field`` of layer ``layer``'s v2 table entry."""
    return struct.unpack_from("<I", blob, 48 + 48 * layer + 4 * field)[0]


def _conv_corruptions(blob: bytes) -> dict[str, tuple[bytes, BetStatus]]:
    """Damage to the ``wide_odd`` network (conv 2x6x11 -> 33x6x11 with k7 p3, conv -> 35x1x2
    with k3 s2 p1 pool 3, dense 70 -> 9 -> 5, output 5 -> 4), CRCs refreshed after each change."""
    bits = 35 * 33 * 9  # conv 1: one vector of 10395 bits, 27 of them in its last word
    weights = _field(blob, 1, 5)
    padded = bytearray(blob)
    padded[weights + 4 * (bits // 32) + 3] |= 0x80  # bit 31 of the last word
    padded_dir = bytearray(blob)
    padded_dir[weights + 4 * (bits // 32 + 1) + 4 * 35 + 4 + 1] |= 0x01  # channel 40 of 35
    swapped = _with_entry(_with_entry(blob, 1, 9, 11), 1, 10, 6)  # 33x11x6: same size
    shape = _with_header(_with_header(blob, 32, "<I", 11), 36, "<I", 6)
    flat = _with_header(blob, 24, "<I", 1)  # input_shape (132,): the right size, not (C, H, W)
    for offset, value in ((28, 132), (32, 0), (36, 0)):
        flat = _with_header(flat, offset, "<I", value)
    return {
        "version 3": (_with_header(blob, 4, "<H", 3), BetStatus.ERR_VERSION),
        "conv after dense": (_with_entry(blob, 3, 0, 3), BetStatus.ERR_LAYOUT),
        "conv output layer": (_with_entry(blob, 4, 0, 3), BetStatus.ERR_LAYOUT),
        "conv entry marked dense": (_with_entry(blob, 1, 0, 1), BetStatus.ERR_FLAGS),
        "conv field in dense": (_with_entry(blob, 2, 10, 1), BetStatus.ERR_FLAGS),
        "zero out channels": (_with_entry(blob, 0, 7, 0), BetStatus.ERR_LAYOUT),
        "in channels": (_with_entry(blob, 1, 8, 34), BetStatus.ERR_LAYOUT),
        "in height": (_with_entry(blob, 0, 9, 5), BetStatus.ERR_LAYOUT),
        "shapes do not chain": (swapped, BetStatus.ERR_LAYOUT),
        "zero kernel": (_with_table(blob, 48 * 0 + 44, "<B", 0), BetStatus.ERR_LAYOUT),
        "zero stride": (_with_table(blob, 48 * 1 + 45, "<B", 0), BetStatus.ERR_LAYOUT),
        "padding >= kernel": (_with_table(blob, 48 * 1 + 46, "<B", 3), BetStatus.ERR_LAYOUT),
        "zero pool": (_with_table(blob, 48 * 0 + 47, "<B", 0), BetStatus.ERR_LAYOUT),
        "kernel too big": (_with_table(blob, 48 * 0 + 44, "<B", 255), BetStatus.ERR_LAYOUT),
        "pool does not tile": (_with_table(blob, 48 * 1 + 47, "<B", 2), BetStatus.ERR_LAYOUT),
        "out features": (_with_entry(blob, 1, 2, 71), BetStatus.ERR_LAYOUT),
        "weight words": (_with_entry(blob, 0, 4, 13), BetStatus.ERR_LAYOUT),
        "input shape": (shape, BetStatus.ERR_LAYOUT),
        "flat input shape": (flat, BetStatus.ERR_LAYOUT),
        "levels overflow": (_with_header(blob, 16, "<I", 2**31 // 98 + 1), BetStatus.ERR_VALUE),
        "conv weight bit": (_flip(blob, weights + 7), BetStatus.ERR_SECTION_CRC),
        "weight padding": (_refreshed(padded), BetStatus.ERR_PADDING),
        "direction padding": (_refreshed(padded_dir), BetStatus.ERR_PADDING),
    }


def test_conv_bitstream_errors_get_their_status_codes():
    torch.manual_seed(6)
    blob = write_bitstream(to_deploy(conv_net(**GEOMETRIES["wide_odd"]), 16))
    assert check_bitstream_c(blob) == BetStatus.OK
    for name, (data, status) in _conv_corruptions(blob).items():
        assert check_bitstream_c(data) == status, name
        with pytest.raises(BitstreamError):  # the Python reader agrees that it is invalid
            parse_bitstream(data)


def test_footprint_of_the_digits_cnn(tmp_path):
    model = to_deploy(digits_cnn(), 16)
    report = footprint(model, cache_dir=tmp_path)
    # one bit vector per conv layer (9 and 576 words), 10 output rows of 8 words
    assert report["weights"] == 4 * (9 + 576 + 10 * 8)
    assert report["thresholds"] == (4 * 32 + 4) + (4 * 64 + 8)  # per channel, + direction words
    assert report["format_overhead"] == 48 + 3 * 48 + 4 + 3 * 4 + 4
    assert report["bitstream"] == len(write_bitstream(model))
    assert report["scratch"] == 4 * (2 * 16 + 18 + 64 + 1) and report["input"] == 64


def test_dense_only_build_drops_the_conv_code_and_refuses_conv_layers(tmp_path):
    source = runtime_dir() / "bet_runtime.c"
    sizes = []
    for flags in ((), ("-DBET_NO_CONV",)):
        obj = tmp_path / "r.o"
        subprocess.run([compiler(), *STRICT, "-Os", *flags, "-c", source, "-o", obj], check=True)
        table = subprocess.run(["size", obj], capture_output=True, text=True, check=True).stdout
        sizes.append(int(table.splitlines()[1].split()[0]))  # text bytes
    assert sizes[1] < sizes[0] - 1500, sizes  # the convolution path is gone
    host = build_host(tmp_path, cflags=(*HOST_CFLAGS, "-DBET_NO_CONV"))
    torch.manual_seed(7)
    (tmp_path / "conv.bet").write_bytes(write_bitstream(to_deploy(conv_net(), 16)))
    info = subprocess.run([host, "info", tmp_path / "conv.bet"], capture_output=True, text=True)
    assert info.returncode == 1 and info.stdout.startswith(f"status {BetStatus.ERR_LAYOUT.value} ")
    net = build_model("fcnn", (1, 8, 8), 10, (33,)).eval()
    randomize_batchnorm_(net, torch.Generator().manual_seed(7))
    model = to_deploy(net, 16)
    q = np.random.default_rng(7).integers(0, 17, size=(50, 64), dtype=np.uint8)
    q.tofile(tmp_path / "q.u8")
    expected = deploy_forward(model, torch.from_numpy(q.astype(np.int64))).numpy()
    for version in (1, 2):  # a dense network in either format still runs
        (tmp_path / "m.bet").write_bytes(write_bitstream(model, version=version))
        args = [
            host,
            "predict",
            tmp_path / "m.bet",
            tmp_path / "q.u8",
            tmp_path / "p",
            tmp_path / "l",
        ]
        subprocess.run(args, check=True)
        np.testing.assert_array_equal(np.fromfile(tmp_path / "l", "<i4").reshape(50, 10), expected)
