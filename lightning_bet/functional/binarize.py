"""Zero-free sign and straight-through estimators (METHOD §1).

The layering follows larq: a zero-free :func:`sign`, autograd functions that add a
pseudo-gradient on top of it, and layers (``lightning_bet.layers``) with no math of their own.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "binarize_activation",
    "binarize_weight",
    "plus_minus_one",
    "sign",
    "ste_gradient",
]


def sign(x: Tensor) -> Tensor:
    """Zero-free sign: ``+1`` where ``x >= 0`` and ``-1`` elsewhere, in the dtype of ``x``.

    ``sign(0) = +1`` (also for ``-0.0``), as in larq and larq-compute-engine, so that every value
    maps to one stored bit (bit 0 = +1, bit 1 = -1).

    Args:
        x: any shape, floating point.

    Returns:
        Tensor of the same shape and dtype as ``x`` with entries in ``{-1, +1}``.

    Example:
        >>> sign(torch.tensor([-0.5, 0.0, 2.0]))
        tensor([-1.,  1.,  1.])

    """
    return plus_minus_one(x >= 0, x.dtype)


def plus_minus_one(positive: Tensor, dtype: torch.dtype) -> Tensor:
    """``+1`` where ``positive`` and ``-1`` elsewhere, in ``dtype`` (the sign of stored bits).

    Args:
        positive: bool, any shape.
        dtype: floating point dtype of the result.

    Returns:
        Tensor of ``positive``'s shape and device with entries in ``{-1, +1}``.

    """
    one = torch.ones((), dtype=dtype, device=positive.device)
    return torch.where(positive, one, -one)


def ste_gradient(x: Tensor, grad: Tensor) -> Tensor:
    """The straight-through pseudo-gradient of ``sign``: ``grad * 1{|x| <= 1}`` (a new tensor).

    Args:
        x: the input of ``sign``, any shape.
        grad: ``dL/dsign(x)``, same shape as ``x``.

    Returns:
        ``dL/dx``, same shape and dtype as ``grad``.

    """
    return grad * (x.abs() <= 1).to(grad.dtype)


class _SignSTE(torch.autograd.Function):
    """``y = sign(x)``; ``dL/dx = dL/dy * 1{|x| <= 1}``.

    The same pseudo-gradient serves weights (the weight STE of Courbariaux et al., 2016) and
    activations (the gradient of hardtanh).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        (x,) = ctx.saved_tensors
        return ste_gradient(x, grad)


def binarize_weight(w: Tensor) -> Tensor:
    """Binarize latent weights with the weight straight-through estimator.

    Forward: ``sign(w)``. Pseudo-gradient: ``dL/dw = dL/dsign(w) * 1{|w| <= 1}``.

    Args:
        w: latent float weights, any shape.

    Returns:
        ``sign(w)``, same shape and dtype.

    """
    return _SignSTE.apply(w)


def binarize_activation(x: Tensor) -> Tensor:
    """Binarize activations with the hardtanh straight-through estimator.

    Forward: ``sign(x)``. Pseudo-gradient: ``dL/dx = dL/dsign(x) * 1{|x| <= 1}``.

    Args:
        x: real activations, any shape.

    Returns:
        ``sign(x)``, same shape and dtype.

    """
    return _SignSTE.apply(x)
