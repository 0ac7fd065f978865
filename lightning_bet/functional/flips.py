"""Sparse sign flips of latent weights (METHOD §3), in O(number of flips).

Weight-sign-flip training runs the unchanged binary layer on latent weights whose signs were
negated at the sampled fault positions, so that the forward pass computes exactly
``M ⊙ sign(W)`` without a dense mask:

- :func:`flip_signs_` writes ``-W`` at the positions (an exact ``0`` or ``-0.0``, whose sign is
  ``+1``, becomes ``-tiny`` so that its sign really flips) and returns the original values;
  ``|W|`` is unchanged (up to ``tiny`` for zeros), so the weight STE mask ``1{|W| <= 1}`` is too;
- :func:`restore_` writes the saved originals back, bit for bit;
- :func:`negate_at_` negates a gradient at the positions (the Hirtzlin chain rule
  ``dL/dWb = M ⊙ dL/dWe``).

:func:`scale_fault_model` turns a relative fault model into the one used at error rate ``p``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_bet.functional.faults import FaultModel

__all__ = ["flip_signs_", "negate_at_", "restore_", "scale_fault_model"]


def _flat_view(tensor: Tensor, name: str) -> Tensor:
    if not tensor.is_contiguous():
        raise ValueError(f"Expected `{name}` to be contiguous, but got strides {tensor.stride()}")
    return tensor.view(-1)


@torch.no_grad()
def flip_signs_(weight: Tensor, index: Tensor) -> Tensor:
    """Negate the signs of ``weight`` at flat positions ``index`` in place.

    Args:
        weight: contiguous latent weights, any shape, floating point.
        index: ``(K,)`` int64 flat positions on ``weight.device`` (unique).

    Returns:
        ``(K,)`` the original values at ``index`` (pass them to :func:`restore_`).

    Example:
        >>> w = torch.tensor([0.5, 0.0, -0.25, -0.0])
        >>> saved = flip_signs_(w, torch.tensor([0, 1, 2, 3]))
        >>> (w < 0).tolist()
        [True, True, False, True]
        >>> restore_(w, torch.tensor([0, 1, 2, 3]), saved); w.tolist()
        [0.5, 0.0, -0.25, -0.0]

    """
    flat = _flat_view(weight, "weight")
    original = flat.index_select(0, index)
    flipped = torch.where(original == 0, -torch.finfo(weight.dtype).tiny, original.neg())
    # scatter_ with unique indices is a plain copy, and about 1.6x faster than index_copy_ on CPU
    flat.scatter_(0, index, flipped)
    return original


@torch.no_grad()
def restore_(weight: Tensor, index: Tensor, original: Tensor) -> None:
    """Write ``original`` back into ``weight`` at positions ``index`` (undo :func:`flip_signs_`).

    Args:
        weight: contiguous latent weights, any shape.
        index: ``(K,)`` int64 flat positions.
        original: ``(K,)`` values returned by :func:`flip_signs_`.

    """
    _flat_view(weight, "weight").scatter_(0, index, original)


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
    flat.scatter_(0, index, flat.index_select(0, index).neg_())
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
