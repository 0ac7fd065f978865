"""Sign flips of binary weights at fault positions (METHOD §3), in O(number of flips).

Weight-sign-flip training runs the forward pass on ``We = M ⊙ sign(W)``, where the fault map
``M`` is ``-1`` at a few flat positions and ``+1`` elsewhere. :func:`binarize_weight_flipped`
computes it without a dense mask and without touching the latent weights ``W``: the zero-free
sign of ``W`` is negated at the positions (:class:`SignFlips`). Its backward pass applies the
weight STE ``1{|W| <= 1}`` and, for Hirtzlin's variant, the chain rule through ``M`` (the
gradient is negated at the positions); the straight-through variant treats ``M`` as the identity.

:func:`scale_fault_model` turns a relative fault model into the one used at error rate ``p``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lightning_bet.functional.binarize import plus_minus_one, ste_gradient
from lightning_bet.functional.faults import FaultModel

__all__ = ["SignFlips", "binarize_weight_flipped", "negate_at_", "scale_fault_model"]


class SignFlips(NamedTuple):
    """A fault map to apply to binary weights: the flat positions whose sign reads negated.

    Attributes:
        index: ``(K,)`` int64 unique flat positions, on the weights' device.
        negate_gradient: ``True`` for Hirtzlin's chain rule ``dL/dWb = M ⊙ dL/dWe``;
            ``False`` for the straight-through variant ``dL/dWb = dL/dWe``.

    """

    index: Tensor
    negate_gradient: bool = False


class _FlippedSignSTE(torch.autograd.Function):
    """``y = M ⊙ sign(w)``; ``dL/dw = (M ⊙)? dL/dy * 1{|w| <= 1}``."""

    @staticmethod
    def forward(ctx, w: Tensor, index: Tensor, negate_gradient: bool) -> Tensor:  # noqa: D102
        ctx.save_for_backward(w, index)
        ctx.negate_gradient = negate_gradient
        # negate the (1-byte) sign bits rather than the float signs: a quarter of the memory
        # traffic of scattering into sign(w)
        positive = (w >= 0).contiguous()
        bits = positive.view(-1)
        bits.scatter_(0, index, bits.index_select(0, index).logical_not_())
        return plus_minus_one(positive, w.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: D102
        w, index = ctx.saved_tensors
        grad_w = ste_gradient(w, grad)  # fresh: negating it in place touches nothing else
        if ctx.negate_gradient:
            grad_w = negate_at_(grad_w, index)  # a copy when grad_w is not contiguous
        return grad_w, None, None


def binarize_weight_flipped(w: Tensor, flips: SignFlips) -> Tensor:
    """``M ⊙ sign(w)`` with the weight STE, ``M`` being ``-1`` exactly at ``flips.index``.

    The latent weights ``w`` are read, never written. Cost over :func:`binarize_weight`: one
    gather and one scatter of ``K`` sign bits (and a scatter of ``K`` gradient values in the
    backward pass of Hirtzlin's variant).

    Args:
        w: latent float weights, any shape.
        flips: the positions (flat indices into ``w``) and the backward rule.

    Returns:
        ``(*w.shape)`` in ``{-1, +1}``: ``sign(w)`` negated at ``flips.index``.

    Raises:
        ValueError: if ``flips.index`` is not a 1-D int64 tensor on ``w``'s device.

    Example:
        >>> w = torch.tensor([0.5, 0.0, -0.25, -0.0], requires_grad=True)
        >>> wb = binarize_weight_flipped(w, SignFlips(torch.tensor([1, 2]), negate_gradient=True))
        >>> wb.tolist()
        [1.0, -1.0, 1.0, 1.0]
        >>> wb.sum().backward(); w.grad.tolist()
        [1.0, -1.0, -1.0, 1.0]

    """
    index = flips.index
    if index.dtype != torch.long or index.dim() != 1 or index.device != w.device:
        raise ValueError(
            "Expected `flips.index` to be a 1-D int64 tensor on the weights' device "
            f"{w.device}, but got dtype {index.dtype}, shape {tuple(index.shape)} on "
            f"{index.device}"
        )
    return _FlippedSignSTE.apply(w, index, bool(flips.negate_gradient))


def negate_at_(grad: Tensor, index: Tensor) -> Tensor:
    """Negate ``grad`` at flat positions ``index`` in place and return it.

    A non-contiguous ``grad`` is copied first (the copy is returned).

    Args:
        grad: gradient of any shape.
        index: ``(K,)`` int64 flat positions.

    Returns:
        ``grad`` (or its contiguous copy) with ``grad.flatten()[index]`` negated.

    """
    if not grad.is_contiguous():
        grad = grad.contiguous()
    flat = grad.view(-1)
    flat.scatter_(0, index, -1.0, reduce="multiply")  # in place: no gathered copy
    return grad


def scale_fault_model(relative: FaultModel, p: float) -> FaultModel:
    """The fault model at error rate ``p``: every rate and fraction of ``relative`` times ``p``.

    ``relative`` gives proportions: ``FaultModel(p=1.0)`` (symmetric flips with probability
    ``p``), ``FaultModel(p01=1.0, p10=0.25)`` (a stored ``+1`` reads ``-1`` with probability
    ``p``, a stored ``-1`` reads ``+1`` with ``p/4``), ``FaultModel(p=1.0, stuck_at_1=0.1)``
    (flips with ``p`` plus a fraction ``0.1 p`` of cells stuck at bit 1), ...

    Args:
        relative: the relative fault model.
        p: the error rate, in [0, 1].

    Returns:
        The scaled :class:`FaultModel` (validated as usual).

    Example:
        >>> scale_fault_model(FaultModel(p01=1.0, p10=0.5), 0.02).flip_rates
        (0.02, 0.01)

    """
    data = relative.to_dict()
    scaled = {k: (None if v is None else v * p) for k, v in data.items()}
    return FaultModel.from_dict(scaled)
