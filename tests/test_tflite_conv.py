"""TFLite export of convolutional BNNs: agreement with deploy mode, border geometries, graph."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_bet.deploy.fold import DeployModule, deploy_forward, to_deploy
from lightning_bet.deploy.model import DeployConv, DeployLayer, DeployModel
from lightning_bet.deploy.tflite_export import (
    read_tflite_metadata,
    run_tflite,
    tflite_op_names,
    tflite_size_report,
    write_tflite,
)
from lightning_bet.models import build_model
from tests.test_deploy_conv import conv_net
from tests.test_deploy_fold import digits_test_pixels, randomize_batchnorm_
from tests.test_tflite_export import (
    RESOLVERS,
    _forced,
    _forced_layer,
    describe_tflite,
    first_argmax,
    needs_runtime,
)

WEIGHTS = ["float32", "int8"]
#: The digits CNN C32-MP-C64-MP-FC-10 on the 8x8 images.
DIGITS_CNN = dict(
    input_shape=(1, 8, 8), convs=((32, 3, 1, 1, 2), (64, 3, 1, 1, 2)), dense=(), num_classes=10
)
BUILTIN_OPS = {
    "RESHAPE",
    "TRANSPOSE",
    "PAD",
    "CONV_2D",
    "MAX_POOL_2D",
    "MUL",
    "GREATER_EQUAL",
    "SELECT_V2",
    "FULLY_CONNECTED",
    "ARG_MAX",
    "DEQUANTIZE",
}


def random_deploy_cnn(seed: int, levels: int, net=None, **geometry) -> DeployModel:
    """``conv_net(**geometry)`` (or ``net``) with random weights and random BatchNorm statistics
    and affine parameters (negative gammas included), folded into deploy mode."""
    torch.manual_seed(seed)
    net = conv_net(**geometry) if net is None else net
    randomize_batchnorm_(net, torch.Generator().manual_seed(seed))
    return to_deploy(net.eval(), levels)


def thresholds_on_preactivations(model: DeployModel, q, rng, far=(2**40, -(2**40))) -> DeployModel:
    """``model`` with every hidden threshold set to a real (pooled) pre-activation of ``q``, so
    that ``a == T`` occurs after the pool too, and the first channels' thresholds ``far`` beyond
    any reachable value (constant outputs: the clamping of the exporter is exercised)."""
    layers = list(model.layers)
    v = torch.as_tensor(np.asarray(q)).reshape(len(q), -1).double()
    for i, layer in enumerate(layers[:-1]):
        a = DeployModule(replace(model, layers=tuple(layers))).preactivation(i, v)
        flat = a.reshape(len(a), a.shape[1], -1)  # (N, C, positions)
        channels = flat.shape[1]
        picked = flat[
            torch.from_numpy(rng.integers(0, len(a), channels)),
            torch.arange(channels),
            torch.from_numpy(rng.integers(0, flat.shape[2], channels)),
        ]
        threshold = picked.numpy().astype(np.int64)
        fixed = list(far)[: max(channels - 2, 0)]
        threshold[: len(fixed)] = fixed
        layers[i] = replace(layer, threshold=threshold)
        shape = (1, -1, 1, 1) if a.dim() == 4 else (1, -1)
        t = torch.from_numpy(threshold.astype(np.float64)).reshape(shape)
        d = torch.from_numpy(layer.direction.astype(np.float64)).reshape(shape)
        v = torch.where(d * (a - t) >= 0, 1.0, -1.0).double().reshape(len(a), -1)
    return replace(model, layers=tuple(layers))


def random_pixels(rng, n: int, shape, levels: int) -> np.ndarray:
    """Integer pixels with blank, saturated and half-blank images among them."""
    q = rng.integers(0, levels + 1, size=(n, *shape))
    q[:3] = 0
    q[3:6] = levels
    q[6:12, ..., : shape[-1] // 2] = 0
    return q


def assert_matches_deploy_mode(model, q, **kwargs) -> np.ndarray:
    expected = deploy_forward(model, torch.as_tensor(q)).numpy()
    preds, logits = run_tflite(
        write_tflite(model, weights=kwargs.pop("weights", "float32")), q, **kwargs
    )
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(preds, first_argmax(expected))
    return expected


def both_directions(model: DeployModel) -> bool:
    return all(
        (layer.direction == 1).any() and (layer.direction == -1).any()
        for layer in model.layers[:-1]
    )


# --- agreement with deploy mode on the networks the issue names -----------------------------


@needs_runtime
@pytest.mark.parametrize("weights", WEIGHTS)
def test_digits_cnn_matches_deploy_mode_on_every_test_sample(weights):
    model = random_deploy_cnn(0, 16, **DIGITS_CNN)
    assert [type(layer) for layer in model.layers] == [DeployConv, DeployConv, DeployLayer]
    assert both_directions(model)  # gamma < 0: the pool is an AND there, an OR elsewhere
    _, q, _ = digits_test_pixels()
    assert q.shape == (360, 1, 8, 8)
    expected = assert_matches_deploy_mode(model, q.numpy(), weights=weights)
    assert len(np.unique(expected.argmax(1))) > 3  # not a constant network


@pytest.fixture(scope="module")
def vgg3_fashion():
    """VGG3 on the FashionMNIST shape (C64-MP-C64-MP-FC2048-FC10), random q/255 inputs."""
    torch.manual_seed(1)
    net = build_model("vgg3", (1, 28, 28), 10, (2048,))
    model = random_deploy_cnn(1, 255, net=net)
    q = random_pixels(np.random.default_rng(1), 256, (1, 28, 28), 255)
    return model, q, deploy_forward(model, torch.from_numpy(q)).numpy()


@needs_runtime
@pytest.mark.parametrize("weights", WEIGHTS)
def test_vgg3_fashion_shape_matches_deploy_mode_on_random_inputs(vgg3_fashion, weights):
    model, q, expected = vgg3_fashion
    assert [layer.shape for layer in model.layers] == [
        (64 * 14 * 14, 784),
        (64 * 7 * 7, 64 * 14 * 14),
        (2048, 3136),
        (10, 2048),
    ]
    assert both_directions(model)
    flat = q.reshape(len(q), -1) if weights == "int8" else q  # both input layouts are accepted
    preds, logits = run_tflite(write_tflite(model, weights=weights), flat)
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(preds, first_argmax(expected))
    assert len(np.unique(preds)) > 3


# --- border geometries ------------------------------------------------------------------------

#: name -> (conv_net geometry, input levels, whether the export needs an explicit PAD)
GEOMETRIES = {
    "k1_p0_pool3": (dict(input_shape=(2, 6, 6), convs=((3, 1, 1, 0, 3),), dense=(5,)), 16, False),
    "k3_p1_same_then_pool2": (
        dict(input_shape=(2, 8, 8), convs=((4, 3, 1, 1, 1), (3, 3, 1, 1, 2)), dense=()),
        255,
        False,
    ),
    "k5_p2_same_pool2": (
        dict(input_shape=(1, 8, 8), convs=((3, 5, 1, 2, 2),), dense=(4,)),
        16,
        False,
    ),
    "k5_p1_pad_then_k3_p0_pool5": (
        dict(input_shape=(2, 9, 9), convs=((3, 5, 1, 1, 1), (4, 3, 1, 0, 5)), dense=()),
        255,
        True,
    ),
    "k3_s2_p1_pad_pool2": (
        dict(input_shape=(2, 8, 8), convs=((4, 3, 2, 1, 2),), dense=(6,)),
        16,
        True,
    ),
    "k3_s2_p1_same_odd_size": (
        dict(input_shape=(1, 7, 7), convs=((4, 3, 2, 1, 1),), dense=()),
        255,
        False,
    ),
    "k3_s2_p0_pool2": (
        dict(input_shape=(3, 9, 9), convs=((4, 3, 2, 0, 2),), dense=(5,)),
        16,
        False,
    ),
    "k2_p1_pad_pool3": (dict(input_shape=(1, 5, 5), convs=((3, 2, 1, 1, 3),), dense=()), 255, True),
    "k5_s3_p0_unread_border": (
        dict(input_shape=(2, 12, 12), convs=((3, 5, 3, 0, 1),), dense=(4,)),
        16,
        False,
    ),
}


@needs_runtime
@pytest.mark.parametrize("resolver", RESOLVERS)
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_border_geometries_match_deploy_mode(name, resolver):
    geometry, levels, needs_pad = GEOMETRIES[name]
    rng = np.random.default_rng(sorted(GEOMETRIES).index(name))
    model = random_deploy_cnn(2, levels, num_classes=4, **geometry)
    q = random_pixels(rng, 64, geometry["input_shape"], levels)
    model = thresholds_on_preactivations(model, q, rng)
    for weights in WEIGHTS:
        data = write_tflite(model, weights=weights)
        ops = tflite_op_names(data)
        assert ("PAD" in ops) == needs_pad
        assert set(ops) <= BUILTIN_OPS
        assert ops.count("MAX_POOL_2D") == sum(
            isinstance(layer, DeployConv) and layer.pool > 1 for layer in model.layers
        )
        assert_matches_deploy_mode(model, q, weights=weights, op_resolver=resolver, batch_size=29)


def test_thresholds_on_preactivations_hit_equalities_in_both_directions():
    geometry, levels, _ = GEOMETRIES["k3_p1_same_then_pool2"]
    rng = np.random.default_rng(7)
    q = random_pixels(rng, 64, geometry["input_shape"], levels)
    model = thresholds_on_preactivations(random_deploy_cnn(2, levels, **geometry), q, rng)
    layer = model.layers[1]  # pooled: equality on the pooled pre-activation
    v = torch.from_numpy(q).reshape(len(q), -1).double()
    module = DeployModule(model)
    t0, d0 = model.layers[0].threshold, model.layers[0].direction
    a0 = module.preactivation(0, v).numpy()
    h = np.where(d0[None, :, None, None] * (a0 - t0[None, :, None, None]) >= 0, 1.0, -1.0)
    a1 = module.preactivation(1, torch.from_numpy(h.reshape(len(q), -1))).numpy()
    hit = (a1 == layer.threshold[None, :, None, None]).any(axis=(0, 2, 3))
    assert hit[layer.direction == 1].any() and hit[layer.direction == -1].any()
    assert model.layers[0].threshold[0] == 2**40  # beyond reach: clamped by the exporter


# --- the rules, against oracles written without deploy mode ----------------------------------


def _pool_model() -> DeployModel:
    """1x1 kernels +1 on one pixel channel: a = q; pool 2; T = 2 for both channels; directions
    (+1, -1); the output layer gives logits (h0 + h1, h0 - h1)."""
    conv = DeployConv(
        np.ones((2, 1, 1, 1), np.int8),
        np.array([2, 2]),
        np.array([1, -1]),
        in_shape=(1, 2, 2),
        pool=2,
        binary_input=False,
    )
    out = DeployLayer(np.array([[1, 1], [1, -1]], np.int8), None, None, True)
    return DeployModel((conv, out), 4, 1.0)


@needs_runtime
@pytest.mark.parametrize("resolver", RESOLVERS)
def test_max_pool_then_threshold_is_or_for_positive_and_and_for_negative_direction(resolver):
    q = np.array(np.meshgrid(*[range(5)] * 4)).reshape(4, -1).T  # every 2x2 image, levels 4
    _, logits = run_tflite(write_tflite(_pool_model()), q, op_resolver=resolver)
    h0, h1 = (logits[:, 0] + logits[:, 1]) // 2, (logits[:, 0] - logits[:, 1]) // 2
    np.testing.assert_array_equal(h0, np.where((q >= 2).any(1), 1, -1))  # d = +1: an OR
    np.testing.assert_array_equal(h1, np.where((q <= 2).all(1), 1, -1))  # d = -1: an AND
    assert (h0 != h1).any() and ((q == 2).any(1) & (h0 == 1) & (h1 == 1)).any()


def _hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1), np.int8)
    while len(h) < n:
        h = np.block([[h, h], [h, -h]])
    return h


@needs_runtime
def test_input_layout_and_flatten_follow_pytorch_channel_height_width_order():
    # Two pixel channels, 1x1 kernels (+1, +1) and (+1, -1), thresholds 0 and directions +1:
    # h[0] = [q0 + q1 >= 0] = +1, h[1] = [q0 - q1 >= 0]; an orthogonal +-1 output layer decodes
    # the 8 flattened values exactly, so any other element order would show.
    weight = np.array([[1, 1], [1, -1]], np.int8).reshape(2, 2, 1, 1)
    conv = DeployConv(weight, np.zeros(2, np.int64), np.ones(2), (2, 2, 2), binary_input=False)
    h8 = _hadamard(8)
    model = DeployModel((conv, DeployLayer(h8, None, None, True)), 3, 1.0)
    q = np.random.default_rng(5).integers(0, 4, size=(50, 2, 2, 2))
    _, logits = run_tflite(write_tflite(model), q)
    decoded = logits @ h8 // 8  # H^T H = 8 I
    hidden = np.stack([q[:, 0] + q[:, 1] >= 0, q[:, 0] - q[:, 1] >= 0], axis=1)  # (N, C, H, W)
    np.testing.assert_array_equal(decoded, np.where(hidden, 1, -1).reshape(50, 8))
    assert "TRANSPOSE" in tflite_op_names(write_tflite(model))


@needs_runtime
def test_zero_padding_contributes_zero_not_minus_one():
    # A 3x3 kernel of +1 with padding 1 after a layer whose outputs are all -1: interior sums
    # are -9, edges -6, corners -4 (padding adds 0). Thresholds -6 and -5 separate them.
    first = DeployConv(
        np.ones((1, 1, 1, 1), np.int8), np.array([1]), np.array([1]), (1, 4, 4), binary_input=False
    )  # q = 0 < 1: all -1
    second = DeployConv(
        np.ones((2, 1, 3, 3), np.int8), np.array([-6, -5]), np.array([1, 1]), (1, 4, 4), padding=1
    )
    out = DeployLayer(_hadamard(32), None, None, True)
    model = DeployModel((first, second, out), 1, 1.0)
    _, logits = run_tflite(write_tflite(model), np.zeros((1, 16)))
    decoded = (logits @ _hadamard(32) // 32).reshape(2, 4, 4)
    corner, edge = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    corner[[0, 0, 3, 3], [0, 3, 0, 3]] = True
    edge[[0, 0, 1, 2, 3, 3, 1, 2], [1, 2, 0, 0, 1, 2, 3, 3]] = True
    np.testing.assert_array_equal(decoded[0], np.where(corner | edge, 1, -1))  # a >= -6
    np.testing.assert_array_equal(decoded[1], np.where(corner, 1, -1))  # a >= -5


# --- graph, sizes, metadata -------------------------------------------------------------------


@pytest.mark.parametrize("weights", WEIGHTS)
def test_digits_cnn_graph_is_builtin_ops_in_the_documented_order(weights):
    import tflite

    data = write_tflite(random_deploy_cnn(0, 16, **DIGITS_CNN), weights=weights)
    ops = tflite_op_names(data)
    weight_op = ["DEQUANTIZE"] if weights == "int8" else []
    block = [*weight_op, "CONV_2D", "MAX_POOL_2D", "MUL", "GREATER_EQUAL", "SELECT_V2"]
    assert ops == [
        "RESHAPE",  # (N, 64) -> (N, 8, 8, 1): one channel needs no TRANSPOSE
        *block,
        *block,
        "TRANSPOSE",  # (N, 2, 2, 64) -> (N, 64, 2, 2): PyTorch's flatten order
        "RESHAPE",
        *weight_op,
        "FULLY_CONNECTED",
        "ARG_MAX",
    ]
    parsed = tflite.Model.GetRootAsModel(data, 0)
    assert all(
        parsed.OperatorCodes(i).CustomCode() is None
        and parsed.OperatorCodes(i).BuiltinCode() != tflite.BuiltinOperator.CUSTOM
        for i in range(parsed.OperatorCodesLength())
    )
    graph = parsed.Subgraphs(0)
    x = graph.Tensors(graph.Inputs(0))
    assert x.ShapeSignatureAsNumpy().tolist() == [-1, 64]


def test_size_report_counts_conv_kernels_as_one_packed_vector():
    model = random_deploy_cnn(0, 16, **DIGITS_CNN)
    report = tflite_size_report(model)
    count = 32 * 9 + 64 * 32 * 9 + 10 * 256
    assert report["weight_count"] == count
    # conv layers: the whole kernel tensor padded once to a word; dense rows each padded
    assert report["weight_bits_bytes"] == 4 * (288 // 32) + 4 * (18432 // 32) + 10 * 4 * 8
    assert 4 * count < report["tflite_float32_bytes"] < 4 * count + 20_000
    assert count < report["tflite_int8_bytes"] < count + 20_000
    assert report["int8_over_bits"] == report["tflite_int8_bytes"] / report["weight_bits_bytes"]
    small = random_deploy_cnn(0, 16, input_shape=(2, 6, 6), convs=((3, 3, 1, 1, 2),), dense=())
    # 3 * 2 * 3 * 3 = 54 kernel bits -> 2 words; output layer 4 rows of 27 -> 1 word each
    assert tflite_size_report(small)["weight_bits_bytes"] == 8 + 16


def test_metadata_describes_the_convolutions_and_bytes_are_deterministic():
    model = random_deploy_cnn(3, 16, **GEOMETRIES["k3_s2_p1_pad_pool2"][0], num_classes=4)
    data = write_tflite(model, weights="int8")
    assert data == write_tflite(model, weights="int8")
    meta = read_tflite_metadata(data)
    assert meta["input_shape"] == [2, 8, 8] and meta["weights"] == "int8"
    assert meta["layers"] == [[4 * 2 * 2, 128], [6, 16], [4, 6]]
    assert meta["convolutions"] == [
        {
            "in_shape": [2, 8, 8],
            "out_shape": [4, 2, 2],
            "kernel": 3,
            "stride": 2,
            "padding": 1,
            "pool": 2,
        }
    ]


@needs_runtime
def test_signature_runner_and_input_layouts():
    from lightning_bet.deploy.tflite_export import _interpreter_api

    model = random_deploy_cnn(4, 16, **GEOMETRIES["k3_p1_same_then_pool2"][0])
    q = random_pixels(np.random.default_rng(4), 20, (2, 8, 8), 16)
    expected = deploy_forward(model, torch.from_numpy(q)).numpy()
    interpreter_cls, _ = _interpreter_api()
    runner = interpreter_cls(model_content=write_tflite(model)).get_signature_runner()
    out = runner(q=q.reshape(20, -1).astype(np.float32))  # flat (C, H, W)-order pixels
    np.testing.assert_array_equal(out["logits"], expected)
    np.testing.assert_array_equal(out["prediction"], first_argmax(expected))
    with pytest.raises(
        ValueError, match=r"`q` to have shape \(N, 128\) .* but got \(20, 2, 8, 9\)"
    ):
        run_tflite(write_tflite(model), np.zeros((20, 2, 8, 9)))


# --- validation -------------------------------------------------------------------------------


def _small_cnn() -> DeployModel:
    return random_deploy_cnn(5, 16, **GEOMETRIES["k3_p1_same_then_pool2"][0], num_classes=3)


def _dense_then_conv(model):
    dense = DeployLayer(np.ones((128, 128), np.int8), np.zeros(128, np.int64), np.ones(128), False)
    conv = _forced(model.layers[0], binary_input=True)
    return _forced(model, layers=(dense, conv, *model.layers[1:]), input_shape=(128,))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda m: _forced(m, layers=(m.layers[0],)),
            r"output layer `model.layers\[0\]` to be a dense DeployLayer, but got a DeployConv",
        ),
        (_dense_then_conv, r"convolutional layers before dense ones, but `model.layers\[1\]`"),
        (
            lambda m: _forced_layer(m, 1, weight=np.ones((3, 4, 9), np.int8)),
            r"`model.layers\[1\].weight` to be a non-empty 4-D numpy array \(C_out, C_in, k, k\), "
            r"but got \(3, 4, 9\)",
        ),
        (
            lambda m: _forced_layer(m, 1, in_shape=(4, 4, 4)),
            r"`model.layers\[1\].in_shape` to be \(4, 8, 8\) \(the output of model.layers\[0\]\), "
            r"but got \(4, 4, 4\)",
        ),
        (
            lambda m: _forced_layer(m, 1, pool=3),
            r"`model.layers\[1\]` to be a valid convolution: Expected the 3x3 max-pool windows to "
            r"tile the 8x8 convolution output exactly",
        ),
        (
            lambda m: _forced_layer(m, 0, padding=3),
            r"`model.layers\[0\]` to be a valid convolution: Expected `padding` to be smaller than "
            r"the kernel size 3, but got 3",
        ),
        (
            lambda m: _forced(m, input_shape=(2, 4, 16)),
            r"`model.layers\[0\].weight` to have 128 inputs \(`model.input_shape` \(2, 4, 16\)\), "
            r"but got a convolution of `in_shape` \(2, 8, 8\)",
        ),
        (
            lambda m: _forced_layer(m, 0, threshold=np.zeros(4)),
            r"`model.layers\[0\].threshold` to have an integer dtype, but got float64",
        ),
        (
            lambda m: _forced_layer(m, 2, weight=np.ones((3, 5), np.int8)),
            r"`model.layers\[2\].weight` to have 48 inputs \(the outputs of model.layers\[1\]\)",
        ),
    ],
)
def test_invalid_conv_models_are_rejected(change, match):
    with pytest.raises(ValueError, match=match):
        write_tflite(change(_small_cnn()))


def test_conv_weights_corrupted_in_place_are_rejected():
    model = _small_cnn()
    model.layers[1].weight[2, 1, 0, 2] = 0
    with pytest.raises(
        ValueError,
        match=r"`model.layers\[1\].weight` to hold only -1 and \+1, but got 0 at index "
        r"\(2, 1, 0, 2\)",
    ):
        write_tflite(model)


def test_conv_sums_that_could_leave_exact_float32_are_rejected():
    # 3656 pixel channels x 3 x 3 at 255 levels: fan-in 32 904 > 32 896
    def model(channels):
        conv = DeployConv(
            np.ones((1, channels, 3, 3), np.int8),
            np.zeros(1, np.int64),
            np.ones(1),
            (channels, 3, 3),
            binary_input=False,
        )
        return DeployModel(
            (conv, DeployLayer(np.ones((2, 1), np.int8), None, None, True)), 255, 1.0
        )

    with pytest.raises(ValueError, match=r"but got fan-in 32904 with inputs up to 255"):
        write_tflite(model(3656))
    assert write_tflite(model(3655))[4:8] == b"TFL3"  # fan-in 32 895


# --- golden file ------------------------------------------------------------------------------

GOLDEN = Path(__file__).parent / "golden" / "tflite_conv_small.json"


def _golden_model() -> DeployModel:
    """Two channels of 3x3 pixels; a 2x2 conv with padding 1 (an explicit PAD) and a 2x2 pool,
    then a 1x1 conv without pool (direction folded), then 3 classes."""
    w0 = np.array([1, -1, -1, 1, 1, 1, -1, 1, -1, -1, 1, 1, 1, -1, 1, -1], np.int8).reshape(
        2, 2, 2, 2
    )
    first = DeployConv(
        w0,
        np.array([3, -(2**40)]),
        np.array([-1, 1]),
        (2, 3, 3),
        padding=1,
        pool=2,
        binary_input=False,
    )
    w1 = np.array([[1, -1], [-1, -1]], np.int8).reshape(2, 2, 1, 1)
    second = DeployConv(w1, np.array([0, 1]), np.array([1, -1]), (2, 2, 2))
    w2 = np.array(
        [[1, -1, 1, 1, -1, 1, -1, -1], [-1, 1, 1, -1, 1, 1, 1, -1], [1, 1, -1, 1, 1, -1, -1, 1]],
        np.int8,
    )
    return DeployModel((first, second, DeployLayer(w2, None, None, True)), 4, 0.5)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_graph_of_a_tiny_cnn_matches_the_golden_file(weights):
    # Regenerate after a deliberate change: python -m tests.test_tflite_conv
    golden = json.loads(GOLDEN.read_text())[weights]
    assert describe_tflite(write_tflite(_golden_model(), weights=weights)) == golden
    tensors = {t["name"]: t for t in golden["tensors"]}
    # pooled layer: bias -T with T clamped to +-(2 * 2 * 2 * 4 + 1) = 33; d applied by the MUL
    assert tensors["layer0/bias"]["data"] == [-3.0, 33.0]
    assert tensors["layer0/direction"]["data"] == [-1.0, 1.0]
    # unpooled layer: d folded into kernels (OHWI) and bias -d * T
    assert tensors["layer1/bias"]["data"] == [0.0, 1.0]
    stored = tensors["layer1/weight" if weights == "float32" else "layer1/weight/int8"]
    assert stored["data"] == [1, -1, 1, 1]


@needs_runtime
def test_golden_model_runs_as_deploy_mode():
    q = np.array(np.meshgrid(*[range(0, 5, 2)] * 9)).reshape(9, -1).T
    q = np.concatenate([q, q[:, ::-1]], axis=1).reshape(-1, 2, 3, 3)  # 3**9 images
    assert_matches_deploy_mode(_golden_model(), q)


if __name__ == "__main__":
    dumps = {w: describe_tflite(write_tflite(_golden_model(), weights=w)) for w in WEIGHTS}
    text = json.dumps(dumps, indent=1)
    text = re.sub(r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + " ".join(m[1].split()) + "]", text)
    GOLDEN.write_text(text + "\n")
