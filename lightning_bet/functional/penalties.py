"""The margin regularizer ``R`` (METHOD §5), a pure function of pre-activations and BatchNorms.

``R = mean over hidden layers of [ mean over samples, (positions,) neurons of
relu(delta - m_j(x) / sqrt(n)) ]`` with the margin ``m_j(x) = |a_j(x) - tau_j|`` between the
pre-activation ``a`` (the input of BatchNorm) and the folded threshold ``tau``
(:func:`~lightning_bet.functional.margins.fold_batchnorm`). Each hidden layer weighs the same.

- ``gamma < 0`` needs no special case: the margin is the distance ``|a - tau|`` whatever the
  direction ``d = sign(gamma)``.
- ``gamma = 0`` channels output the constant ``sign(beta)`` whatever ``a``: no weight flip can
  change them, so they are excluded (their threshold is infinite) and the mean runs over the other
  channels. A layer without any such channel contributes 0.
- The statistics: ``"batch"`` uses the mean and biased variance of ``a`` over the batch (and
  spatial positions), exactly the thresholds BatchNorm applies in a training forward pass;
  ``"running"`` uses the BatchNorm's running statistics (the thresholds of the deployed model).
- Computed in at least float32 with autocast disabled, so a bf16 forward pass gives the same
  ``R`` (up to the bf16 rounding of ``a`` itself).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_bet.functional.margins import fold_batchnorm

__all__ = ["STATISTICS", "batch_statistics", "margin_hinge", "margin_penalty"]

STATISTICS = ("batch", "running")


def _upcast(a: Tensor) -> Tensor:
    return a if a.dtype in (torch.float32, torch.float64) else a.float()


def batch_statistics(a: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``a`` over all dimensions but dimension 1.

    Args:
        a: ``(N, C)`` or ``(N, C, *spatial)``.

    Returns:
        ``(mean, var)``, each ``(C,)``: what a training-mode BatchNorm normalizes with.

    """
    dims = [0, *range(2, a.dim())]
    var, mean = torch.var_mean(a, dim=dims, correction=0)
    return mean, var


def margin_hinge(a: Tensor, tau: Tensor, fan_in: int, delta: float) -> Tensor:
    """``mean relu(delta - |a - tau| / sqrt(fan_in))`` over samples, positions, finite-tau channels.

    Args:
        a: ``(N, C)`` or ``(N, C, *spatial)`` pre-activations.
        tau: ``(C,)`` thresholds; channels with infinite ``tau`` (``gamma = 0``) are excluded.
        fan_in: ``n``, the number of binary inputs of one neuron.
        delta: the target normalized margin.

    Returns:
        Scalar; ``0`` when no channel has a finite threshold.

    """
    valid = torch.isfinite(tau)
    shape = (1, -1) + (1,) * (a.dim() - 2)
    safe_tau = torch.where(valid, tau, torch.zeros_like(tau)).reshape(shape)
    hinge = F.relu(delta - (a - safe_tau).abs() / math.sqrt(fan_in))
    hinge = hinge * valid.reshape(shape).to(hinge.dtype)
    count = valid.sum() * (a.numel() // max(a.shape[1], 1))
    return hinge.sum() / count.clamp(min=1).to(hinge.dtype)


def margin_penalty(
    preactivations: Sequence[Tensor],
    batchnorms: Sequence[_BatchNorm],
    fan_ins: Sequence[int],
    delta: float = 1.0,
    statistics: Literal["batch", "running"] = "batch",
) -> Tensor:
    """The margin regularizer ``R``: :func:`margin_hinge` averaged over the hidden layers.

    Args:
        preactivations: per hidden layer, ``a`` of shape ``(N, C)`` or ``(N, C, H, W)``: the
            input of that layer's BatchNorm (after pooling, if any).
        batchnorms: the BatchNorm of each layer (``C`` channels).
        fan_ins: ``n`` of each layer (``in_features``, or ``in_channels / groups * kh * kw``).
        delta: target normalized margin ``m / sqrt(n)``, > 0.
        statistics: ``"batch"`` (the thresholds of this training forward pass) or ``"running"``.

    Returns:
        Scalar ``R >= 0`` in float32 (float64 if the inputs are float64), differentiable with
        respect to ``a`` and the BatchNorm's affine parameters.

    Example:
        >>> bn = torch.nn.BatchNorm1d(3)
        >>> a = torch.tensor([[-3.0, 0.0, 5.0], [1.0, 2.0, -5.0]])
        >>> round(margin_penalty([a], [bn], [4], delta=1.0).item(), 4)  # batch stats: tau = mean
        0.1667

    """
    if not len(preactivations) == len(batchnorms) == len(fan_ins):
        raise ValueError(
            "Expected `preactivations`, `batchnorms` and `fan_ins` of the same length, but got "
            f"{len(preactivations)}, {len(batchnorms)} and {len(fan_ins)}"
        )
    if not preactivations:
        raise ValueError("Expected at least one hidden layer in `preactivations`, but got none")
    if statistics not in STATISTICS:
        raise ValueError(
            f"Expected `statistics` to be one of {list(STATISTICS)}, but got {statistics!r}"
        )
    device_type = preactivations[0].device.type
    with torch.autocast(device_type=device_type, enabled=False):
        terms = []
        for a, bn, n in zip(preactivations, batchnorms, fan_ins, strict=True):
            a = _upcast(a)
            if statistics == "batch":
                mean, var = batch_statistics(a)
                tau, _ = fold_batchnorm(bn, mean, var)
            else:
                tau, _ = fold_batchnorm(bn)
            terms.append(margin_hinge(a, tau.to(a.dtype), n, delta))
        return torch.stack(terms).mean()
