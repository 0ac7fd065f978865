"""The one BatchNorm fold (METHOD §4, §7): real thresholds and exact integer thresholds.

``sign(BatchNorm(a))`` in eval mode is ``+1`` iff ``d (a - tau) >= 0`` (:func:`fold_batchnorm`).
A layer whose float pre-activation is ``a / L`` for an exact integer ``a`` (the first layer on
pixels ``x = q / L``; ``L = 1`` for layers with ``{-1, +1}`` inputs) compares integers instead:
``d (a - T) >= 0`` with ``T`` from :func:`fold_thresholds`. The margin metric and the
regularizer use ``tau``; deploy mode, the exports and the fast sweep use ``T``, so every path
folds BatchNorm the same way.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["fold_batchnorm", "fold_integer", "fold_thresholds"]

_INT32_MAX = 2**31 - 1


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


def fold_thresholds(
    tau: np.ndarray | Tensor, d: np.ndarray | Tensor, levels: int, fan_in: int
) -> np.ndarray:
    """Integer thresholds ``T`` for pre-activations ``a`` with ``a_float = a / levels``.

    Args:
        tau: ``(C,)`` real thresholds (``+-inf`` allowed) from ``fold_batchnorm``.
        d: ``(C,)`` directions in ``{-1, +1}``.
        levels: ``L``: the layer's float pre-activation is ``a / L`` (1 for binary inputs).
        fan_in: ``n``; ``|a| <= n * L``.

    Returns:
        int64 ``(C,)``: ``ceil(L tau)`` where ``d = +1``, ``floor(L tau)`` where ``d = -1``
        (exact for the float64 value of ``tau``), clamped to ``[-n L - 1, n L + 1]``.

    Example:
        >>> fold_thresholds(np.array([0.3, 0.3, -np.inf]), np.array([1, -1, 1]), 16, 4)
        array([  5,   4, -65])

    """
    tau64 = np.asarray(tau.detach().cpu() if isinstance(tau, Tensor) else tau, dtype=np.float64)
    d64 = np.asarray(d.detach().cpu() if isinstance(d, Tensor) else d, dtype=np.float64)
    if tau64.ndim != 1 or tau64.shape != d64.shape:
        raise ValueError(
            f"Expected `tau` and `d` of the same shape (C,), but got {tau64.shape} and {d64.shape}"
        )
    bound = fan_in * levels + 1
    if bound > _INT32_MAX:
        raise ValueError(
            f"Expected `fan_in * levels + 1` to fit int32, but got {fan_in} * {levels} + 1"
        )
    if np.isnan(tau64).any():
        raise ValueError("Expected `tau` to contain no NaN (a BatchNorm with NaN statistics?)")
    # exact rational ceil/floor of L * tau for the float64 tau: a float64 product could round
    # onto an integer (e.g. 3 * float(-14/3) == -14.0) and move the threshold by one
    folded = np.array(
        [
            t if math.isinf(t) else (math.ceil if dj > 0 else math.floor)(Fraction(t) * levels)
            for t, dj in zip(tau64.tolist(), d64.tolist(), strict=True)
        ],
        dtype=np.float64,
    )
    return np.clip(folded, -bound, bound).astype(np.int64)


@torch.no_grad()
def fold_integer(
    bn: nn.modules.batchnorm._BatchNorm, levels: int, fan_in: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deploy mode's fold of one hidden block: integer thresholds and directions.

    ``tau`` is computed in float64 from the running statistics (whatever the module's dtype),
    then rounded exactly by :func:`fold_thresholds`.

    Args:
        bn: the block's BatchNorm (eval-mode semantics: running statistics).
        levels: ``L``: the layer's float pre-activation is ``a / L`` (1 for binary inputs).
        fan_in: ``n``: the most terms one pre-activation sums.

    Returns:
        ``(T, d)``: int64 ``(C,)`` thresholds and int8 ``(C,)`` directions; the block outputs
        ``+1`` iff ``d (a - T) >= 0``.

    Example:
        >>> bn = nn.BatchNorm1d(2).eval()
        >>> fold_integer(bn, levels=16, fan_in=4)
        (array([0, 0]), array([1, 1], dtype=int8))

    """
    tau, d = fold_batchnorm(bn, mean=bn.running_mean.double(), var=bn.running_var.double())
    return fold_thresholds(tau, d, levels, fan_in), d.cpu().numpy().astype(np.int8)
