"""numpy interpreter on v2 bitstreams: conv + max-pool from the packed words equals deploy mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_bet.deploy.bitstream import pack_model, pack_rows, parse_bitstream, write_bitstream
from lightning_bet.deploy.fold import deploy_forward, to_deploy
from lightning_bet.deploy.interpreter import (
    _kernel_rows,
    popcount,
    predict_bitstream,
    run_bitstream,
)
from lightning_bet.deploy.model import DeployConv, DeployLayer, DeployModel
from lightning_bet.models import build_model
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
