"""Paired comparisons with confidence intervals, and honest verdicts (METHOD §8)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "Comparison",
    "SpearmanResult",
    "binomial_se",
    "compare_paired",
    "spearman",
    "verdict",
    "verdict_below",
]

Verdict = Literal["supported", "not supported", "inconclusive"]


def binomial_se(accuracy: float, n: int) -> float:
    """Binomial standard error ``sqrt(acc (1 - acc) / n)`` of an accuracy measured on ``n`` samples.

    The resolution of a test set: an effect smaller than this cannot be told from noise. At least
    ``0.5 / n`` is returned so that an accuracy of 0 or 1 still has a non-zero resolution.
    """
    if n < 1:
        raise ValueError(f"Expected `n` to be a positive int, but got {n!r}")
    return max(math.sqrt(accuracy * (1.0 - accuracy) / n), 0.5 / n)


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2.0, dof))


@dataclass(frozen=True)
class Comparison:
    """A paired difference ``a - b`` over independent units (training seeds).

    Attributes:
        mean: mean paired difference.
        low: lower end of the confidence interval.
        high: upper end of the confidence interval.
        n_units: number of pairs.
        resolution: binomial standard error of the test set at the accuracies compared.
    """

    mean: float
    low: float
    high: float
    n_units: int
    resolution: float

    def as_text(self, scale: float = 100.0, unit: str = " pt") -> str:
        """``+1.23 pt [0.50, 1.96]`` (accuracy differences in percentage points by default)."""
        return f"{self.mean * scale:+.2f}{unit} [{self.low * scale:+.2f}, {self.high * scale:+.2f}]"


def compare_paired(
    a: np.ndarray, b: np.ndarray, n_test: int, confidence: float = 0.95
) -> Comparison:
    """Compare paired measurements ``a[i]`` and ``b[i]`` (e.g. one per training seed).

    Args:
        a: ``(k,)`` measurements of condition A (e.g. accuracy, averaged over fault maps).
        b: ``(k,)`` measurements of condition B on the same units and the same fault maps.
        n_test: test-set size, for the resolution.
        confidence: two-sided confidence level of the Student-t interval.

    Returns:
        The :class:`Comparison`. With a single unit the interval is unbounded.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(
            f"Expected `a` and `b` to be paired 1-D arrays of equal length, but got shapes "
            f"{a.shape} and {b.shape}"
        )
    diff = a - b
    mean = float(diff.mean())
    if diff.size > 1:
        half = (
            _t_quantile(confidence, diff.size - 1) * float(diff.std(ddof=1)) / math.sqrt(diff.size)
        )
    else:
        half = math.inf
    accuracy = float(np.clip((a.mean() + b.mean()) / 2.0, 0.0, 1.0))
    return Comparison(mean, mean - half, mean + half, int(diff.size), binomial_se(accuracy, n_test))


def verdict(comparison: Comparison, expected_sign: int) -> Verdict:
    """Judge a claim that the difference has sign ``expected_sign`` (+1 or -1).

    - ``inconclusive`` when the mean effect is below the test set's resolution, whatever the
      interval says, or when the interval contains 0;
    - ``supported`` when the whole interval lies on the claimed side;
    - ``not supported`` when the whole interval lies on the other side.
    """
    if expected_sign not in (-1, 1):
        raise ValueError(f"Expected `expected_sign` to be -1 or +1, but got {expected_sign!r}")
    if abs(comparison.mean) < comparison.resolution:
        return "inconclusive"
    low, high = comparison.low * expected_sign, comparison.high * expected_sign
    low, high = min(low, high), max(low, high)
    if low > 0:
        return "supported"
    if high < 0:
        return "not supported"
    return "inconclusive"


def verdict_below(comparison: Comparison, bound: float) -> Verdict:
    """Judge a claim that an effect is *small*: below ``bound`` (e.g. a loss under one point).

    The claim is about the absence of a large effect, so it is judged against the bound, not
    against zero (an equivalence-style test). The bound is raised to the test set's resolution:
    a test set cannot show that an effect is smaller than what it resolves.

    - ``supported`` when the whole interval lies below ``max(bound, resolution)``;
    - ``not supported`` when the whole interval lies above it;
    - ``inconclusive`` otherwise.
    """
    if isinstance(bound, bool) or not isinstance(bound, int | float) or not bound > 0:
        raise ValueError(f"Expected `bound` to be a float > 0, but got {bound!r}")
    limit = max(float(bound), comparison.resolution)
    if comparison.high < limit:
        return "supported"
    if comparison.low > limit:
        return "not supported"
    return "inconclusive"


@dataclass(frozen=True)
class SpearmanResult:
    """Spearman rank correlation with a bootstrap percentile interval.

    Attributes:
        rho: the correlation (NaN when undefined, e.g. a constant variable).
        low: lower end of the bootstrap interval.
        high: upper end of the bootstrap interval.
        n: number of units (models).
    """

    rho: float
    low: float
    high: float
    n: int

    def as_text(self) -> str:
        """``0.71 [0.40, 0.90] (n=33)``."""
        return f"{self.rho:.2f} [{self.low:.2f}, {self.high:.2f}] (n={self.n})"


def _centered(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = values.astype(np.float64).copy()
    for g in np.unique(groups):
        out[groups == g] -= out[groups == g].mean()
    return out


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def spearman(
    a: np.ndarray,
    b: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> SpearmanResult:
    """Spearman correlation of ``a`` and ``b`` with a bootstrap interval over units.

    Args:
        a: ``(n,)`` first variable (e.g. the metric scalar of each model).
        b: ``(n,)`` second variable (e.g. the BET area of each model).
        groups: ``(n,)`` group labels (e.g. training methods). When given, the group means of
            ``a`` and ``b`` are removed first (the *within-group* correlation: a correlation
            that only separates the groups vanishes), and the bootstrap resamples units within
            each group.
        n_boot: bootstrap resamples.
        confidence: two-sided level of the percentile interval.
        seed: bootstrap seed.

    Returns:
        A :class:`SpearmanResult`; resamples with an undefined correlation are dropped.

    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"Expected `a` and `b` to be 1-D arrays of equal length, but got shapes {a.shape} "
            f"and {b.shape}"
        )
    labels = np.zeros(a.size, dtype=np.int64) if groups is None else np.asarray(groups)
    if labels.shape != a.shape:
        raise ValueError(f"Expected `groups` to have shape {a.shape}, but got {labels.shape}")
    transform = (lambda v, g: v) if groups is None else _centered
    rho = _rho(transform(a, labels), transform(b, labels))
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    values = []
    for _ in range(n_boot):
        index = np.concatenate([rng.choice(m, size=m.size, replace=True) for m in members])
        value = _rho(transform(a[index], labels[index]), transform(b[index], labels[index]))
        if not math.isnan(value):
            values.append(value)
    if values and not math.isnan(rho):
        low, high = np.quantile(values, [0.5 - confidence / 2.0, 0.5 + confidence / 2.0])
    else:
        low = high = math.nan
    return SpearmanResult(rho, float(low), float(high), int(a.size))
