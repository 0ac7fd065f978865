import inspect

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lightning_bet.functional.binarize import sign
from lightning_bet.layers import BinaryConv2d, BinaryLinear, binary_layers, clip_latent_weights_


def _with_edges(t: torch.Tensor) -> torch.Tensor:
    flat = t.view(-1)
    flat[:4] = torch.tensor([0.0, -0.0, 1.0, -1.0])
    return t


@pytest.mark.parametrize(
    ("binary", "reference"), [(BinaryLinear, nn.Linear), (BinaryConv2d, nn.Conv2d)]
)
def test_signature_extends_torch_layer(binary, reference):
    ref = inspect.signature(reference.__init__).parameters
    ours = inspect.signature(binary.__init__).parameters
    for name, param in ref.items():
        assert name in ours, name
        assert ours[name].default == param.default, name
    assert list(ours)[: len(ref)] == list(ref)
    assert set(ours) - set(ref) == {"binarize_input"}


def test_binary_linear_equals_float_linear_on_signs():
    torch.manual_seed(0)
    layer = BinaryLinear(7, 5, bias=True)
    with torch.no_grad():
        _with_edges(layer.weight)
    x = _with_edges(torch.randn(6, 7))
    expected = F.linear(sign(x), sign(layer.weight), layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_binary_linear_real_input_first_layer():
    torch.manual_seed(0)
    layer = BinaryLinear(7, 5, bias=False, binarize_input=False)
    x = _with_edges(torch.rand(3, 7))
    torch.testing.assert_close(layer(x), x @ sign(layer.weight).T, rtol=0, atol=0)


def test_binary_conv_equals_float_conv_on_signs():
    torch.manual_seed(0)
    layer = BinaryConv2d(3, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        _with_edges(layer.weight)
    x = _with_edges(torch.randn(2, 3, 6, 5))
    expected = F.conv2d(sign(x), sign(layer.weight), padding=1)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_weight_gradient_has_ste_mask():
    layer = BinaryLinear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.0, 1.5, -2.0]]))
    layer(torch.ones(1, 4)).sum().backward()
    assert layer.weight.grad.tolist() == [[1.0, 1.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: BinaryLinear(0, 3), "Expected `in_features` to be a positive int, but got 0"),
        (lambda: BinaryLinear(3, -1), "Expected `out_features` to be a positive int, but got -1"),
        (lambda: BinaryConv2d(0, 3, 3), "Expected `in_channels` to be a positive int, but got 0"),
    ],
)
def test_impossible_sizes_are_rejected(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_wrong_input_shapes_are_rejected():
    with pytest.raises(
        ValueError, match=r"to have 4 features in its last dimension, but got shape \(2, 3\)"
    ):
        BinaryLinear(4, 2)(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"shape \(N, 3, H, W\), but got shape \(2, 1, 5, 5\)"):
        BinaryConv2d(3, 2, 3)(torch.zeros(2, 1, 5, 5))


def test_clipping_is_in_place_and_seen_by_the_optimizer():
    model = nn.Sequential(BinaryLinear(4, 3), nn.ReLU(), BinaryLinear(3, 2))
    weight = model[0].weight
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    clip_latent_weights_(model)
    assert model[0].weight is weight  # the very tensor the optimizer holds
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.dim() == 2:
                assert p.abs().max() <= 1.0
    assert [name for name, _ in binary_layers(model)] == ["0", "2"]
