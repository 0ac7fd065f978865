"""Deploy mode for convolutional BNNs: conv, zero padding, max-pool before BatchNorm, flatten."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_bet.deploy.fold import DeployModule, deploy_forward, to_deploy
from lightning_bet.deploy.model import DeployConv, DeployLayer, DeployModel
from lightning_bet.functional.binarize import sign
from lightning_bet.layers import BinaryConv2d, BinaryLinear
from lightning_bet.models import BNN, BinaryBlock, OutputLayer, build_model
from tests.test_deploy_fold import randomize_batchnorm_


def conv_net(
    input_shape=(2, 8, 8),
    convs=((5, 3, 1, 1, 1), (6, 3, 1, 1, 2)),
    dense=(7,),
    num_classes=4,
) -> BNN:
    """A CNN of conv blocks ``(C_out, k, stride, padding, pool)``, dense blocks, an output layer."""
    channels, height, width = input_shape
    blocks = []
    for i, (out, k, s, p, pool) in enumerate(convs):
        conv = BinaryConv2d(channels, out, k, stride=s, padding=p, bias=False, binarize_input=i > 0)
        blocks.append(BinaryBlock(conv, pool=nn.MaxPool2d(pool) if pool > 1 else None))
        height = ((height + 2 * p - k) // s + 1) // pool
        width = ((width + 2 * p - k) // s + 1) // pool
        channels = out
    features = channels * height * width
    for i, out in enumerate(dense):
        blocks.append(BinaryBlock(BinaryLinear(features, out, bias=False), flatten=i == 0))
        features = out
    return BNN(input_shape, blocks, OutputLayer(features, num_classes, flatten=not dense)).eval()


def _float_hidden_outputs(net, x):
    outputs, h = [], x
    for block in net.blocks:
        y = block.bn(block.preactivation(h))
        outputs.append(y)
        h = sign(y)
    return outputs


NETS = {
    "padded_pooled": dict(),
    "strided_unpadded": dict(convs=((4, 3, 2, 0, 1), (5, 2, 1, 1, 2)), input_shape=(1, 11, 11)),
    "kernel5_no_dense": dict(convs=((3, 5, 1, 2, 3),), dense=(), input_shape=(3, 6, 6)),
    "vgg3_digits": None,
}


@pytest.mark.parametrize("levels", [16, 255])
@pytest.mark.parametrize("name", sorted(NETS))
def test_conv_deploy_equals_float_network_layer_by_layer(name, levels):
    torch.manual_seed(3)
    net = (
        build_model("vgg3", (1, 8, 8), 10, (16,)).eval()
        if name == "vgg3_digits"
        else conv_net(**NETS[name])
    )
    generator = torch.Generator().manual_seed(levels)
    randomize_batchnorm_(net, generator)
    with torch.no_grad():  # a gamma = 0 channel: a constant output
        net.blocks[0].bn.weight[0] = 0.0
    model = to_deploy(net, input_levels=levels)
    q = torch.randint(0, levels + 1, (64, *net.input_shape), generator=generator)
    x = (q.double() / levels).float()
    with torch.no_grad():
        ys = _float_hidden_outputs(net, x)
    module = DeployModule(model)
    v = q.double().reshape(len(q), -1)
    for i, y in enumerate(ys):
        a = module.preactivation(i, v)
        shape = (-1, 1, 1) if a.dim() == 4 else (-1,)
        t = getattr(module, f"threshold{i}").double().reshape(shape)
        d = getattr(module, f"direction{i}").double().reshape(shape)
        out = torch.where(d * (a - t) >= 0, 1.0, -1.0)
        assert out.shape == y.shape
        differ = out.float() != sign(y)
        # float32 BatchNorm may round differently only within rounding distance of its zero
        assert (y[differ].abs() < 1e-4).all(), f"layer {i}: {int(differ.sum())} differ"
        v = sign(y).double().reshape(len(q), -1)  # continue from the float net's signs
    logits = deploy_forward(model, q)
    with torch.no_grad():
        float_logits = net(x)
    assert (float_logits.argmax(1) == logits.argmax(1)).float().mean().item() >= 0.98
    scale = float(net.head.scale.detach())
    close = torch.isclose(float_logits.double(), scale * logits.double(), atol=1e-4)
    assert close.all(dim=1).float().mean().item() >= 0.98


def test_zero_padding_contributes_zero_not_minus_one():
    """A border output sums only the positions inside the input: all-ones kernels count them."""
    conv = DeployConv(
        weight=np.ones((1, 1, 3, 3), np.int8),
        threshold=np.array([100], np.int64),
        direction=np.array([1], np.int8),
        in_shape=(1, 4, 4),
        padding=1,
        binary_input=False,
    )
    out = DeployLayer(np.ones((2, 16), np.int8), None, None, True)
    module = DeployModule(DeployModel((conv, out), 1, 1.0))
    a = module.preactivation(0, torch.ones(1, 16, dtype=torch.float64))
    expected = [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]
    assert a[0, 0].tolist() == expected


@pytest.mark.parametrize("gamma_sign", [1.0, -1.0])
def test_max_pool_then_threshold_is_or_for_positive_and_and_for_negative_direction(gamma_sign):
    """sign(BN(max_w a)) is an OR of per-position threshold bits for d = +1, an AND for d = -1."""
    torch.manual_seed(0)
    net = conv_net(input_shape=(1, 6, 6), convs=((8, 3, 1, 1, 2),), dense=())
    generator = torch.Generator().manual_seed(1)
    randomize_batchnorm_(net, generator)
    with torch.no_grad():
        net.blocks[0].bn.weight.abs_().mul_(gamma_sign)
    model = to_deploy(net, input_levels=16)
    conv = model.layers[0]
    assert (conv.direction == gamma_sign).all()
    q = torch.randint(0, 17, (50, 1, 6, 6), generator=generator)
    weight = torch.from_numpy(conv.weight.astype(np.float64))
    a = F.conv2d(q.double(), weight, padding=1)  # (N, 8, 6, 6) before pooling
    t = torch.from_numpy(conv.threshold).double().view(-1, 1, 1)
    d = torch.from_numpy(conv.direction).double().view(-1, 1, 1)
    bits = (d * (a - t) >= 0).double()
    windows = F.unfold(bits.reshape(-1, 1, 6, 6), 2, stride=2).reshape(50, 8, 4, 9)
    rule = windows.amax(2) if gamma_sign > 0 else windows.amin(2)  # OR / AND
    expected = (2 * rule - 1).reshape(50, 8, 3, 3)
    with torch.no_grad():
        y = net.blocks[0](q.float() / 16)
    module = DeployModule(model)
    pooled = module.preactivation(0, q.double().reshape(50, -1))
    deployed = torch.where(d * (pooled - t) >= 0, 1.0, -1.0)
    assert torch.equal(deployed, expected)
    assert torch.equal(sign(y).double(), expected)


def test_flatten_follows_pytorch_channel_height_width_order():
    """The dense layer after the last conv block sees the map flattened as (C, H, W)."""
    conv = DeployConv(
        weight=np.ones((2, 1, 1, 1), np.int8),
        threshold=np.array([1, 3], np.int64),
        direction=np.array([1, 1], np.int8),
        in_shape=(1, 2, 2),
        binary_input=False,
    )
    # output layer: class c reads exactly the flattened element c (others cancel out in pairs)
    weight = -np.ones((8, 8), np.int8)
    np.fill_diagonal(weight, 1)
    out = DeployLayer(weight, None, None, True)
    q = torch.tensor([[0, 1, 2, 3]])
    logits = deploy_forward(DeployModel((conv, out), 3, 1.0), q)
    signs = [-1, 1, 1, 1, -1, -1, -1, 1]  # channel 0 (q >= 1) then channel 1 (q >= 3)
    assert torch.equal(logits[0], torch.tensor(signs) * 2 - torch.tensor(signs).sum())


def test_to_deploy_refuses_what_it_cannot_export_exactly():
    def refuse(net, pattern):
        with pytest.raises(ValueError, match=pattern):
            to_deploy(net, 16)

    net = conv_net()
    net.blocks[0].layer = BinaryConv2d(2, 5, 3, padding=1, groups=1, dilation=2, bias=False)
    refuse(net, r"dilation 1 in hidden block 0 \(BinaryConv2d\), but got dilation=\(2, 2\)")
    net = conv_net(convs=((4, 3, 1, 1, 1), (6, 3, 1, 1, 2)))
    net.blocks[1].layer = BinaryConv2d(4, 6, 3, padding=1, groups=2, bias=False)
    refuse(net, r"groups=1 in hidden block 1 \(BinaryConv2d\), but got groups=2")
    net = conv_net()
    net.blocks[0].layer = BinaryConv2d(
        2, 5, (3, 1), padding=(1, 0), bias=False, binarize_input=False
    )
    refuse(net, r"kernel size of hidden block 0 to be the same on both axes, but got \(3, 1\)")
    net = conv_net()
    net.blocks[1].pool = nn.AvgPool2d(2)
    refuse(net, r"`blocks.1.pool` \(AvgPool2d\) breaks the pattern: only max-pooling")
    net = conv_net()
    net.blocks[1].pool = nn.MaxPool2d(3, stride=2)
    refuse(net, "max-pool of hidden block 1 to have stride equal to its window")
    net = conv_net(input_shape=(2, 9, 9), convs=((5, 3, 1, 1, 1), (6, 3, 1, 1, 1)), dense=())
    net.blocks[1].pool = nn.MaxPool2d(2)  # 9x9 is not tiled by 2x2 windows
    refuse(net, r"hidden block 1: Expected the 2x2 max-pool windows to tile the 9x9 convolution")
    net = conv_net()
    net.blocks[0].bn = nn.Identity()
    refuse(net, r"`blocks.0.bn` \(Identity\) breaks the pattern: expected a BatchNorm2d")
    net = conv_net()
    net.blocks[0].layer = BinaryConv2d(2, 5, 3, padding=1, bias=True, binarize_input=False)
    refuse(net, "BinaryConv2d of hidden block 0 to have no bias")
    net = conv_net()
    net.blocks[0].layer.padding_mode = "reflect"
    refuse(net, "padding_mode='zeros' in hidden block 0")
    dense_first = conv_net()
    dense_first.blocks = nn.ModuleList([dense_first.blocks[2], dense_first.blocks[0]])
    refuse(dense_first, r"`blocks.1` \(BinaryBlock\) breaks .* no convolution after a dense layer")


def test_deploy_conv_validation_messages():
    good = dict(
        weight=np.ones((2, 1, 3, 3), np.int8),
        threshold=np.zeros(2, np.int64),
        direction=np.ones(2, np.int8),
        in_shape=(1, 4, 4),
        binary_input=False,
    )
    DeployConv(**good)
    cases = [
        (dict(weight=np.ones((2, 1, 3, 2))), r"\(C_out, C_in, k, k\) of -1/\+1 values with square"),
        (
            dict(threshold=np.zeros(3, np.int64)),
            r"`threshold` to be an integer array of shape \(2,\)",
        ),
        (dict(direction=np.zeros(2)), r"`direction` to be an array of shape \(2,\) of -1/\+1"),
        (dict(in_shape=(2, 4, 4)), "`in_shape` to have 1 channels"),
        (dict(in_shape=(1, 4)), r"`in_shape` to be \(C_in, H, W\)"),
        (dict(stride=0), "`stride` to be an int >= 1, but got 0"),
        (dict(padding=3), "`padding` to be smaller than the kernel size 3, but got 3"),
        (dict(padding=-1), "`padding` to be an int >= 0, but got -1"),
        (dict(in_shape=(1, 2, 2)), "kernel .* to fit the input"),
        (dict(pool=3), "3x3 max-pool windows to tile the 2x2 convolution output"),
    ]
    for change, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            DeployConv(**{**good, **change})
    conv = DeployConv(**good)
    out = DeployLayer(np.ones((3, 8), np.int8), None, None, True)
    assert DeployModel((conv, out), 16, 1.0).input_shape == (1, 4, 4)
    with pytest.raises(ValueError, match=r"`input_shape` \(4, 4\) to equal the `in_shape`"):
        DeployModel((conv, out), 16, 1.0, (4, 4))
    dense = DeployLayer(np.ones((16, 16), np.int8), np.zeros(16, np.int64), np.ones(16), False)
    late = DeployConv(**{**good, "binary_input": True})
    with pytest.raises(ValueError, match="convolutional layers before dense ones"):
        DeployModel((dense, late, out), 16, 1.0)
    with pytest.raises(ValueError, match="output layer .* to be a dense DeployLayer"):
        DeployModel((conv,), 16, 1.0)
