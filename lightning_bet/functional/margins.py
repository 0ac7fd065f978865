"""BatchNorm folding and neuron margins (METHOD §4)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_bet._validation import check_probability
from lightning_bet.functional.fold import fold_batchnorm

__all__ = [
    "binary_preactivation",
    "decision_side",
    "flip_probability",
    "fold_batchnorm",
    "neuron_margins",
    "output_margin",
    "tolerated_flips",
    "tolerated_flips_real",
]


def binary_preactivation(x: Tensor, weight: Tensor) -> Tensor:
    """Exact integer pre-activation ``a = x @ sign(weight).T`` for binary inputs.

    Args:
        x: ``(N, n)`` inputs in ``{-1, +1}`` (any floating or integer dtype).
        weight: ``(out, n)`` weights; only their sign is used (``sign(0) = +1``).

    Returns:
        int64 ``(N, out)``. Exact: sums of ``n < 2**24`` terms ``+-1`` are exact in float32
        whatever the summation order, and larger layers are summed in float64.

    Example:
        >>> binary_preactivation(torch.tensor([[1.0, -1.0, 1.0]]), torch.tensor([[0.3, 0.0, -2.0]]))
        tensor([[-1]])

    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            "Expected `x` of shape (N, n) and `weight` of shape (out, n), but got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if not bool(((x == 1) | (x == -1)).all()):
        raise ValueError("Expected `x` to hold only -1 and +1 (binary inputs)")
    dtype = torch.float32 if x.shape[1] < 2**24 else torch.float64
    w = torch.where(weight >= 0, 1.0, -1.0).to(dtype)
    return (x.to(dtype) @ w.T).round().to(torch.int64)


def decision_side(a: Tensor, tau: Tensor, d: Tensor) -> Tensor:
    """``s = d (a - tau)``: the neuron outputs ``+1`` iff ``s >= 0``.

    Args:
        a: pre-activations ``(N, C)`` or ``(N, C, *spatial)``.
        tau: ``(C,)`` thresholds from :func:`fold_batchnorm`.
        d: ``(C,)`` directions in ``{-1, +1}``.

    Returns:
        float64 tensor shaped like ``a`` (``+-inf`` for constant channels).

    """
    shape = (1, -1) + (1,) * (a.dim() - 2)
    a64 = a.to(torch.float64)
    return d.to(torch.float64).view(shape) * (a64 - tau.to(torch.float64).view(shape))


def neuron_margins(a: Tensor, tau: Tensor) -> Tensor:
    """Margin ``m = |a - tau|`` (METHOD §4), float64, shaped like ``a`` (``tau`` is ``(C,)``)."""
    shape = (1, -1) + (1,) * (a.dim() - 2)
    return (a.to(torch.float64) - tau.to(torch.float64).view(shape)).abs()


def tolerated_flips(a: Tensor, tau: Tensor, d: Tensor, n: int) -> Tensor:
    """Exact number of weight flips a neuron with binary inputs tolerates (METHOD §4).

    One flip in row ``j`` moves ``a_j`` by exactly ``+-2``. With ``s = d (a - tau)`` the output
    is ``+1`` iff ``s >= 0``, so it survives any ``k`` flips iff ``2k <= s`` (``s >= 0``) or
    ``2k < -s`` (``s < 0``): ``t = floor(s / 2)`` or ``ceil(m / 2) - 1``. A neuron whose output is
    the same for every reachable ``a`` in ``[-n, n]`` (threshold out of range, ``gamma = 0``)
    tolerates all ``n`` flips. The result is the largest ``k`` such that *no* pattern of at most
    ``k`` flips in the neuron's row changes its output.

    Args:
        a: integer pre-activations ``(N, C)`` or ``(N, C, *spatial)`` for binary inputs.
        tau: ``(C,)`` thresholds.
        d: ``(C,)`` directions.
        n: fan-in (number of weights per neuron).

    Returns:
        int64 tensor shaped like ``a``, in ``[0, n]``.

    """
    s = decision_side(a, tau, d)
    t = torch.where(s >= 0, torch.floor(s / 2), torch.ceil(-s / 2) - 1)
    shape = (1, -1) + (1,) * (a.dim() - 2)
    d64 = d.to(torch.float64).view(shape)
    tau64 = tau.to(torch.float64).view(shape)
    low = d64 * (-float(n) - tau64) >= 0  # output at a = -n
    high = d64 * (float(n) - tau64) >= 0  # output at a = +n
    constant = (low == high).expand_as(t)
    t = torch.where(constant | ~torch.isfinite(t), torch.full_like(t, float(n)), t)
    return t.clamp(0, n).to(torch.int64)


def tolerated_flips_real(a: Tensor, tau: Tensor, d: Tensor, x: Tensor) -> Tensor:
    """Worst-case tolerated weight flips for a neuron with real-valued inputs.

    Flipping weight ``i`` moves ``a`` by ``2 |x_i|`` at most. The neuron survives ``k`` flips
    whatever their positions and weight signs iff twice the sum of the ``k`` largest ``|x_i|``
    keeps ``s = d (a - tau)`` on its side. This ignores which weight signs push toward the
    threshold, so it is a lower bound on the true count; for binary inputs it equals
    :func:`tolerated_flips` except for neurons whose threshold is out of reach.

    Args:
        a: pre-activations ``(N, C)`` or ``(N, C, *spatial)``.
        tau: ``(C,)`` thresholds.
        d: ``(C,)`` directions.
        x: the layer input, ``(N, ...)``; for convolutions the whole sample is used (a further
            lower bound: one kernel window sees a subset of it).

    Returns:
        int64 tensor shaped like ``a``.

    """
    s = decision_side(a, tau, d)
    mags = x.detach().flatten(1).abs().to(torch.float64).sort(dim=1, descending=True).values
    reach = 2 * mags.cumsum(1)  # (N, n): largest move of a with k = 1..n flips
    flat = s.flatten(1)
    m = flat.abs()
    keep_pos = torch.searchsorted(reach, m.clamp(max=torch.finfo(torch.float64).max), right=True)
    keep_neg = torch.searchsorted(reach, m.clamp(max=torch.finfo(torch.float64).max), right=False)
    t = torch.where(flat >= 0, keep_pos, keep_neg)
    return t.view_as(s)


def output_margin(logits: Tensor, target: Tensor) -> Tensor:
    """Output-layer margin ``a_y - max_{c != y} a_c`` (METHOD §4).

    The prediction survives ``k`` output-layer flips if ``2k < margin``.

    Args:
        logits: ``(N, C)`` (integer, unscaled) logits.
        target: ``(N,)`` class indices.

    Returns:
        float64 ``(N,)``; negative for misclassified samples.

    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            "Expected `logits` of shape (N, C) and `target` of shape (N,), but got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    z = logits.to(torch.float64)
    own = z.gather(1, target.view(-1, 1)).squeeze(1)
    others = z.scatter(1, target.view(-1, 1), float("-inf"))
    return own - others.max(dim=1).values


def flip_probability(
    a: Tensor,
    tau: Tensor,
    d: Tensor,
    p: float,
    sum_sq: Tensor | float,
    n: int | None = None,
) -> Tensor:
    """Analytic probability that a neuron's output changes at weight error rate ``p``.

    Gaussian approximation (METHOD §4), no fault injection and ignoring errors propagated from
    earlier layers: flipping each weight with probability ``p`` gives ``E[a'] = (1 - 2p) a`` and
    ``Var[a'] = 4 p (1 - p) sum_i x_i^2``; ``P = Phi(-g ((1 - 2p) a - tau) / sqrt(Var[a']))`` with
    ``g = +1`` when lowering ``a`` changes the output and ``-1`` when raising it does.

    With ``n`` given (binary inputs) ``a'`` lives on the lattice ``a + 2Z`` and the output changes
    iff the net move toward the threshold is at least ``t + 1`` flips (``t`` from
    :func:`tolerated_flips`); the probability then uses that lattice boundary with a continuity
    correction, ``P = Phi((g p a - (t + 1/2)) / sqrt(p (1 - p) n))``. Without ``n`` the
    continuous METHOD formula is used, which equals the same expression with ``m / 2`` in place
    of ``t + 1/2``.

    Args:
        a: pre-activations ``(N, C)`` or ``(N, C, *spatial)``.
        tau: ``(C,)`` thresholds.
        d: ``(C,)`` directions.
        p: symmetric weight error rate in [0, 1].
        sum_sq: ``sum_i x_i^2`` of each neuron's inputs: a float, or a tensor broadcastable to
            ``a`` (``n`` for binary inputs).
        n: fan-in for binary inputs (lattice and continuity correction), else ``None``.

    Returns:
        float64 tensor shaped like ``a`` with probabilities in [0, 1].

    """
    p = check_probability("p", p)
    s = decision_side(a, tau, d)
    shape = (1, -1) + (1,) * (a.dim() - 2)
    sigma = torch.where(s >= 0, 1.0, -1.0).to(torch.float64)
    g = d.to(torch.float64).view(shape) * sigma
    a64 = a.to(torch.float64)
    if p == 0.0:
        return torch.zeros_like(a64)
    if n is not None:
        t = tolerated_flips(a, tau, d, n).to(torch.float64)
        sd = math.sqrt(p * (1 - p) * n)
        prob = torch.special.ndtr((g * p * a64 - (t + 0.5)) / sd)
        return torch.where(t >= n, torch.zeros_like(prob), prob)
    var = 4 * p * (1 - p) * torch.as_tensor(sum_sq, dtype=torch.float64, device=a.device)
    tau64 = tau.to(torch.float64).view(shape)
    z = -g * ((1 - 2 * p) * a64 - tau64) / var.clamp_min(1e-300).sqrt()
    prob = torch.special.ndtr(z)
    return torch.where(torch.isfinite(tau64).expand_as(prob), prob, torch.zeros_like(prob))
