"""Classification losses for binarized networks (METHOD §5)."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor
from torch.nn import functional as F

__all__ = ["LOSSES", "margin_cross_entropy", "modified_hinge_loss", "resolve_loss"]

LOSSES = ("cross_entropy", "mhl", "mcel")


def _check_targets(logits: Tensor, target: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"Expected `logits` of shape (N, C), but got {tuple(logits.shape)}")
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"Expected `target` of shape ({logits.shape[0]},) to match `logits` "
            f"{tuple(logits.shape)}, but got {tuple(target.shape)}"
        )


def _check_finite(name: str, value: float, minimum: float, strict: bool) -> None:
    ok = value > minimum if strict else value >= minimum
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not ok
        or not math.isfinite(value)
    ):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"Expected `{name}` to be a finite float {bound}, but got {value!r}")


def modified_hinge_loss(logits: Tensor, target: Tensor, b: float = 128.0) -> Tensor:
    """Modified hinge loss (MHL, Buschjäger et al., DATE 2021).

    ``L = mean_n (1/C) sum_c max(0, b - t_nc z_nc) / b`` with ``t_nc = +1`` for the true class
    and ``-1`` otherwise. A large ``b`` asks for large output margins, which survive more
    output-layer bit flips.

    Args:
        logits: ``(N, C)`` scaled logits ``z``.
        target: ``(N,)`` class indices.
        b: the hinge target, > 0.

    Returns:
        Scalar loss.

    """
    _check_targets(logits, target)
    _check_finite("b", b, 0.0, strict=True)
    t = F.one_hot(target, logits.shape[1]).to(logits.dtype) * 2 - 1
    return (F.relu(b - t * logits) / b).mean()


def margin_cross_entropy(logits: Tensor, target: Tensor, m: float = 1.0) -> Tensor:
    """Margin cross-entropy (additive-margin softmax form).

    ``L = mean_n -log( exp(z_ny - m) / (exp(z_ny - m) + sum_{c != y} exp(z_nc)) )``, i.e.
    cross-entropy after subtracting the margin ``m`` from the true-class logit: the loss keeps
    pushing until the true logit leads every other logit by about ``m``. (The exact form of
    MCEL, arXiv:2603.05048, was not available; this is the form implemented.)

    Args:
        logits: ``(N, C)`` scaled logits ``z``.
        target: ``(N,)`` class indices.
        m: margin, >= 0 (``m = 0`` is plain cross-entropy).

    Returns:
        Scalar loss.

    """
    _check_targets(logits, target)
    _check_finite("m", m, 0.0, strict=False)
    shifted = logits - m * F.one_hot(target, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy(shifted, target)


def resolve_loss(
    name: str, mhl_b: float = 128.0, mcel_margin: float = 1.0
) -> Callable[[Tensor, Tensor], Tensor]:
    """Return ``loss(logits, target) -> Tensor`` for ``name`` in :data:`LOSSES`."""
    if name == "cross_entropy":
        return F.cross_entropy
    if name == "mhl":
        _check_finite("mhl_b", mhl_b, 0.0, strict=True)
        return lambda z, y: modified_hinge_loss(z, y, mhl_b)
    if name == "mcel":
        _check_finite("mcel_margin", mcel_margin, 0.0, strict=False)
        return lambda z, y: margin_cross_entropy(z, y, mcel_margin)
    raise ValueError(f"Expected `loss` to be one of {list(LOSSES)}, but got {name!r}")
