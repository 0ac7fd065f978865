"""numpy interpreter on v2 bitstreams: conv + max-pool from the packed words equals deploy mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lightning_bet.deploy.bitstream import (
    pack_model,
    pack_rows,
    parse_bitstream,
    read_bitstream,
    write_bitstream,
)
from lightning_bet.deploy.fold import deploy_forward, to_deploy
from lightning_bet.deploy.interpreter import (
    _kernel_rows,
    popcount,
    predict_bitstream,
    run_bitstream,
)
from lightning_bet.deploy.model import DeployConv, DeployLayer, DeployModel
from lightning_bet.models import build_model
from tests.test_bitstream import assert_models_equal
from tests.test_bitstream_v2 import GEOMETRIES, folded_conv_model
from tests.test_deploy_fold import digits_test_pixels, randomize_batchnorm_


def _directions(model) -> set[int]:
    return {
        int(d) for layer in model.layers if layer.direction is not None for d in layer.direction
    }


@pytest.mark.parametrize("levels", [1, 16, 255])
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_interpreter_equals_deploy_mode_on_conv_geometries(name, levels):
    """Padding, strides, 5x5 kernels, 3x3 pools, conv -> conv -> dense, both directions."""
    model = folded_conv_model(levels=levels, seed=levels, **GEOMETRIES[name])
    assert _directions(model) == {-1, 1}  # OR and AND pooling both exercised
    q = np.random.default_rng(levels).integers(0, levels + 1, (40, *model.input_shape))
    logits = run_bitstream(write_bitstream(model), q)
    assert np.array_equal(logits, deploy_forward(model, torch.from_numpy(q)).numpy())


@st.composite
def conv_models(draw) -> DeployModel:
    """1-2 conv layers of any geometry (odd sizes, strides, padding, pools), dense layers."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    levels = draw(st.sampled_from([1, 3, 16, 255]))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    layers = []
    for i in range(draw(st.integers(1, 2))):
        k = draw(st.integers(1, 4))
        stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, k - 1))
        height = (shape[1] + 2 * padding - k) // stride + 1
        width = (shape[2] + 2 * padding - k) // stride + 1
        assume(height >= 1 and width >= 1)
        common = [d for d in range(1, 4) if height % d == 0 and width % d == 0]
        out = draw(st.integers(1, 6))
        bound = shape[0] * k * k * (levels if i == 0 else 1)
        layers.append(
            DeployConv(
                weight=np.where(rng.random((out, shape[0], k, k)) < 0.5, -1, 1),
                threshold=rng.integers(-bound // 3, bound // 3 + 1, out),
                direction=np.where(rng.random(out) < 0.5, -1, 1),
                in_shape=shape,
                stride=stride,
                padding=padding,
                pool=draw(st.sampled_from(common)),
                binary_input=i > 0,
            )
        )
        shape = layers[-1].out_shape
    features = math.prod(shape)
    for width in draw(st.lists(st.integers(1, 40), max_size=1)):
        layers.append(
            DeployLayer(
                np.where(rng.random((width, features)) < 0.5, -1, 1),
                rng.integers(-features // 3, features // 3 + 1, width),
                np.where(rng.random(width) < 0.5, -1, 1),
                True,
            )
        )
        features = width
    output = np.where(rng.random((draw(st.integers(1, 5)), features)) < 0.5, -1, 1)
    layers.append(DeployLayer(output, None, None, True))
    return DeployModel(tuple(layers), levels, 0.5)


@settings(max_examples=60, deadline=None)
@given(model=conv_models(), seed=st.integers(0, 2**32 - 1))
def test_roundtrip_and_interpreter_property_on_random_conv_geometries(model, seed):
    data = write_bitstream(model)
    assert_models_equal(read_bitstream(data), model)
    q = np.random.default_rng(seed).integers(0, model.input_levels + 1, (6, *model.input_shape))
    expected = deploy_forward(model, torch.from_numpy(q)).numpy()
    assert np.array_equal(run_bitstream(data, q), expected)


def test_interpreter_equals_deploy_mode_on_digits_cnn_every_test_sample():
    """C32-MP-C64-MP-FC-10 on the 8x8 digits, random weights and BatchNorm (gamma < 0 too)."""
    model = folded_conv_model(levels=16, seed=11, **GEOMETRIES["digits_cnn"])
    _, q, _ = digits_test_pixels()
    images = q.numpy().astype(np.uint8).reshape(-1, 1, 8, 8)
    data = write_bitstream(model)
    reference = deploy_forward(model, q).numpy()
    logits = run_bitstream(data, images)
    assert np.array_equal(logits, reference)  # every sample, every logit
    assert np.array_equal(run_bitstream(data, images.reshape(len(images), -1)), reference)
    assert np.array_equal(predict_bitstream(model, images), reference.argmax(1))
    assert len(np.unique(reference.argmax(1))) > 3  # not a constant network


def test_interpreter_equals_deploy_mode_on_vgg3_fashion_mnist_shape():
    """C64-MP-C64-MP-FC2048-FC10 on 28x28 pixels q in [0, 255]."""
    torch.manual_seed(5)
    net = build_model("vgg3", (1, 28, 28), 10, (2048,)).eval()
    randomize_batchnorm_(net, torch.Generator().manual_seed(5))
    model = to_deploy(net, input_levels=255)
    assert _directions(model) == {-1, 1}
    q = np.random.default_rng(5).integers(0, 256, (200, 1, 28, 28), dtype=np.uint8)
    logits = run_bitstream(write_bitstream(model), q)
    reference = deploy_forward(model, torch.from_numpy(q)).numpy()
    assert np.array_equal(logits, reference)
    assert len(np.unique(reference.argmax(1))) > 1


def test_kernel_rows_cut_the_layer_bit_vector_by_shifts():
    for name in sorted(GEOMETRIES):
        packed = pack_model(folded_conv_model(**GEOMETRIES[name]))
        for layer in packed.layers:
            if layer.is_conv:
                expected = pack_rows(layer.signs().reshape(layer.out_channels, -1))
                assert np.array_equal(_kernel_rows(layer), expected)
    # 7 kernels of 1x3x3 = 9 bits: kernels straddle word boundaries at bits 27..35 and 54..62
    rng = np.random.default_rng(0)
    conv = DeployConv(
        weight=np.where(rng.random((7, 1, 3, 3)) < 0.5, -1, 1),
        threshold=np.zeros(7, np.int64),
        direction=np.ones(7, np.int8),
        in_shape=(1, 3, 3),
        binary_input=False,
    )

    out = DeployLayer(np.ones((2, 7), np.int8), None, None, True)
    layer = parse_bitstream(write_bitstream(DeployModel((conv, out), 16, 1.0))).layers[0]
    assert np.array_equal(_kernel_rows(layer), pack_rows(conv.weight.reshape(7, 9)))


def test_popcount_is_exact_on_edge_words():
    words = np.array([0, 1, 2**31, 2**32 - 1, 0x55555555, 0xAAAAAAAA, 0x0F0F0F0F], np.uint32)
    assert popcount(words).tolist() == [0, 1, 1, 32, 16, 16, 16]
    assert popcount(words).dtype == np.int64
