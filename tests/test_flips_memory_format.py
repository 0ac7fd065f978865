"""Flipped binarization (METHOD §3) on every memory layout of weights and gradients.

Both variants are compared with the analytic rule: forward ``M ⊙ sign(W)``; backward
``dL/dW = (M ⊙)? dL/dWe · 1{|W| <= 1}`` (``M ⊙`` for Hirtzlin's variant only), where the fault
positions are flat indices in the weight's logical (row-major) order whatever its strides.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_bet.functional.flips import SignFlips, binarize_weight_flipped
from lightning_bet.layers import BinaryConv2d

SHAPE = (4, 3, 3, 3)  # (out, in, kh, kw): a conv weight, so channels_last is a real layout
LAYOUTS = ("contiguous", "channels_last", "strided")


def _values(seed: int) -> torch.Tensor:
    """Weights with exact zeros of both signs, the ±1 boundaries and clipped-out values."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(SHAPE, generator=generator) * 3.0 - 1.5
    flat = x.view(-1)
    flat[:8] = torch.tensor([0.0, -0.0, 1.0, -1.0, 1.5, -1.5, 1e-30, -1e-30])
    return x


def _in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x``'s values with the strides of ``layout`` (``strided``: every other element)."""
    if layout == "contiguous":
        out = x.contiguous()
    elif layout == "channels_last":
        out = x.contiguous(memory_format=torch.channels_last)
        assert not out.is_contiguous()
    else:
        out = torch.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype)[..., ::2]
        out.copy_(x)
        assert not out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, x)
    return out


def _reference(w: np.ndarray, upstream: np.ndarray, index: np.ndarray, negate: bool):
    """``(We, dL/dW)`` by METHOD §3 with a dense mask, in float64."""
    m = np.ones(w.size)
    m[index] = -1.0
    m = m.reshape(w.shape)
    sign = np.where(w >= 0, 1.0, -1.0)  # sign(±0) = +1
    grad = upstream * (np.abs(w) <= 1)
    return m * sign, (m * grad if negate else grad)


@pytest.mark.parametrize("negate_gradient", [True, False], ids=["hirtzlin", "straight_through"])
@pytest.mark.parametrize("grad_layout", LAYOUTS)
@pytest.mark.parametrize("weight_layout", LAYOUTS)
def test_flipped_binarization_on_every_layout(weight_layout, grad_layout, negate_gradient):
    values = _values(seed=0)
    w = _in_layout(values, weight_layout).detach().requires_grad_()
    upstream = _in_layout(
        torch.arange(values.numel(), dtype=torch.float32).view(SHAPE) - 50, grad_layout
    )
    # positions 0-7 hit the boundary values; the others are spread over every dimension
    index = torch.tensor([0, 1, 2, 3, 4, 6, 13, 29, 54, 80, 107])
    wb = binarize_weight_flipped(w, SignFlips(index, negate_gradient))
    wb.backward(upstream)
    expected_wb, expected_grad = _reference(
        values.double().numpy(), upstream.double().numpy(), index.numpy(), negate_gradient
    )
    np.testing.assert_array_equal(wb.detach().double().numpy(), expected_wb)
    np.testing.assert_array_equal(w.grad.double().numpy(), expected_grad)
    assert torch.equal(w.detach(), values)  # the latent weights are never written


def test_hirtzlin_and_straight_through_differ_exactly_at_the_flips_of_a_channels_last_conv():
    """The defect this guards: a channels_last BinaryConv2d trained as straight-through."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    index = torch.tensor([0, 5, 17, 40, 77, 100])
    grads = {}
    for negate in (True, False):
        torch.manual_seed(1)
        layer = BinaryConv2d(3, 4, 3, bias=False, binarize_input=False)
        layer = layer.to(memory_format=torch.channels_last)
        assert layer.weight.is_contiguous(memory_format=torch.channels_last)
        layer.sign_flips = SignFlips(index, negate_gradient=negate)
        layer(x).square().sum().backward()
        grads[negate] = layer.weight.grad.reshape(-1).clone()
    differ = (grads[True] != grads[False]).nonzero().flatten()
    nonzero = index[grads[False][index] != 0]  # a zero gradient reads the same negated
    assert torch.equal(differ, nonzero) and nonzero.numel() > 0
    torch.testing.assert_close(grads[True][index], -grads[False][index], rtol=0, atol=0)
