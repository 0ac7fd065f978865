"""BatchNorm folding and neuron margins (METHOD §4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["fold_batchnorm"]


def fold_batchnorm(
    bn: nn.modules.batchnorm._BatchNorm,
    mean: Tensor | None = None,
    var: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Fold ``sign(BatchNorm(a))`` into a threshold ``tau`` and a direction ``d`` per channel.

    With ``y = gamma (a - mu) / sqrt(var + eps) + beta``, the output ``sign(y)`` is ``+1`` iff
    ``d (a - tau) >= 0`` where ``tau = mu - beta sqrt(var + eps) / gamma`` and ``d = sign(gamma)``.
    A channel with ``gamma = 0`` outputs the constant ``sign(beta)``; it gets ``d = +1`` and
    ``tau = -inf`` (``beta >= 0``, always ``+1``) or ``tau = +inf`` (always ``-1``).

    Args:
        bn: a BatchNorm layer with ``C`` channels (affine or not).
        mean: ``(C,)`` statistics to use instead of ``bn.running_mean`` (e.g. batch statistics).
        var: ``(C,)`` (biased) variances to use instead of ``bn.running_var``.

    Returns:
        ``(tau, d)``, each ``(C,)`` in the dtype of the statistics; ``d`` in ``{-1, +1}``.

    """
    mu = bn.running_mean if mean is None else mean
    sigma2 = bn.running_var if var is None else var
    if mu is None or sigma2 is None:
        raise ValueError(
            "Expected `bn` to track running statistics or `mean` and `var` to be given, but "
            f"{type(bn).__name__} has track_running_stats=False"
        )
    std = torch.sqrt(sigma2 + bn.eps)
    if bn.affine:
        gamma, beta = bn.weight, bn.bias
    else:
        gamma, beta = torch.ones_like(mu), torch.zeros_like(mu)
    zero = gamma == 0
    safe_gamma = torch.where(zero, torch.ones_like(gamma), gamma)
    tau = mu - beta * std / safe_gamma
    inf = torch.full_like(tau, float("inf"))
    tau = torch.where(zero, torch.where(beta >= 0, -inf, inf), tau)
    d = torch.where(gamma < 0, -torch.ones_like(gamma), torch.ones_like(gamma))
    return tau, d
