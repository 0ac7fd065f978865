import math

import pytest
import torch

from lightning_bet import BNN, BinaryBlock, BinaryConv2d, BinaryLinear, build_model
from lightning_bet.functional.binarize import sign


@pytest.mark.parametrize(
    ("arch", "shape", "hidden", "n_binary"),
    [
        ("fcnn", (1, 8, 8), (256, 256), 3),
        ("fcnn", (1, 28, 28), (2048, 2048), 3),
        ("vgg3", (1, 28, 28), (2048,), 4),
        ("vgg7", (3, 32, 32), (1024,), 8),
        ("cnn", (1, 8, 8), (), 3),
        ("cnn", (3, 16, 16), (32, 16), 5),
    ],
)
def test_reference_models_shapes(arch, shape, hidden, n_binary):
    model = build_model(arch, shape, 10, hidden)
    model.eval()
    out = model(torch.rand(2, *shape))
    assert out.shape == (2, 10)
    layers = [m for m in model.modules() if isinstance(m, BinaryLinear | BinaryConv2d)]
    assert len(layers) == n_binary
    assert layers[0].binarize_input is False
    assert all(layer.binarize_input for layer in layers[1:])


def test_fcnn_sizes_follow_method():
    model = build_model("fcnn", (1, 28, 28), 10, (2048, 2048))
    sizes = [(b.layer.in_features, b.layer.out_features) for b in model.blocks]
    assert sizes == [(784, 2048), (2048, 2048)]
    assert (model.head.layer.in_features, model.head.layer.out_features) == (2048, 10)


def test_forward_equals_block_reference():
    torch.manual_seed(0)
    model = build_model("fcnn", (1, 8, 8), 10, (16, 16)).eval()
    x = torch.rand(4, 1, 8, 8)
    h = x.flatten(1)
    for block in model.blocks:
        bn = block.bn
        a = h @ sign(block.layer.weight).T
        y = (a - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        h = sign(y)
    logits = model.head.scale * (h @ sign(model.head.layer.weight).T)
    torch.testing.assert_close(model(x), logits)


def test_output_scale_is_positive_and_argmax_free():
    model = build_model("fcnn", (1, 8, 8), 10, (16,))
    with torch.no_grad():
        model.head.log_scale.fill_(-50.0)
    assert model.head.scale > 0
    assert math.isclose(
        build_model("fcnn", (64,), 10, (16,)).head.scale.item(), 16**-0.5, rel_tol=1e-6
    )


def test_blocks_structure():
    model = build_model("vgg3", (1, 28, 28), 10, (64,))
    assert isinstance(model, BNN)
    assert all(isinstance(b, BinaryBlock) for b in model.blocks)
    assert model.blocks[1].pool is not None and model.blocks[2].flatten


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"arch": "resnet"},
            "Expected `arch` to be one of \\['fcnn', 'cnn', 'vgg3', 'vgg7'\\], but got 'resnet'",
        ),
        (
            {"hidden": []},
            "Expected `hidden` to be a non-empty list of positive ints, but got \\[\\]",
        ),
        (
            {"hidden": [0]},
            "Expected `hidden` to be a non-empty list of positive ints, but got \\[0\\]",
        ),
        ({"num_classes": 1}, "Expected `num_classes` to be an int >= 2, but got 1"),
        (
            {"arch": "vgg3", "input_shape": (64,)},
            "Expected `input_shape` to be \\(channels, height, width\\)",
        ),
        ({"arch": "vgg7", "input_shape": (3, 20, 20)}, "divisible by 8"),
        (
            {"arch": "cnn", "channels": []},
            "Expected `channels` to be a non-empty list of positive ints, but got \\[\\]",
        ),
        ({"arch": "cnn", "channels": [8, 8, 8, 8]}, "divisible by 16"),
    ],
)
def test_bad_model_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


def test_wrong_input_shape_message():
    model = build_model()
    with pytest.raises(
        ValueError,
        match=r"Expected input of shape \(N, 1, 8, 8\) or \(N, 64\), but got \(2, 3, 32, 32\)",
    ):
        model(torch.zeros(2, 3, 32, 32))


def test_digits_cnn_is_c32_mp_c64_mp_fc10():
    net = build_model("cnn", (1, 8, 8), 10, hidden=(), channels=(32, 64))
    convs = [block.layer for block in net.blocks]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 32), (32, 64)]
    assert all(block.pool is not None for block in net.blocks)
    assert net.head.layer.in_features == 64 * 2 * 2 and net.head.flatten
