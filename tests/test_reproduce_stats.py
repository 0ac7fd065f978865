import math

import numpy as np
import pytest
from scipy import stats as sps

from lightning_bet.reproduce.stats import Comparison, binomial_se, compare_paired, verdict


def test_binomial_se_matches_formula_and_floor():
    assert binomial_se(0.9, 360) == pytest.approx(math.sqrt(0.9 * 0.1 / 360))
    assert binomial_se(1.0, 100) == 0.005
    with pytest.raises(ValueError, match="Expected `n` to be a positive int, but got 0"):
        binomial_se(0.5, 0)


def test_compare_paired_equals_scipy_t_interval():
    rng = np.random.default_rng(0)
    a = rng.normal(0.9, 0.01, 5)
    b = a - rng.normal(0.02, 0.005, 5)
    c = compare_paired(a, b, n_test=10_000)
    low, high = sps.t.interval(0.95, 4, loc=(a - b).mean(), scale=sps.sem(a - b))
    assert (c.low, c.high) == pytest.approx((low, high))
    assert c.n_units == 5 and c.mean == pytest.approx((a - b).mean())


def test_single_unit_interval_is_unbounded():
    c = compare_paired(np.array([0.9]), np.array([0.8]), n_test=100)
    assert math.isinf(c.low) and math.isinf(c.high)
    assert verdict(c, +1) == "inconclusive"


@pytest.mark.parametrize(
    ("mean", "low", "high", "sign", "expected"),
    [
        (0.05, 0.03, 0.07, +1, "supported"),
        (0.05, 0.03, 0.07, -1, "not supported"),
        (0.05, -0.01, 0.11, +1, "inconclusive"),
        (0.004, 0.003, 0.005, +1, "inconclusive"),  # below the resolution: never "supported"
        (-0.05, -0.07, -0.03, -1, "supported"),
    ],
)
def test_verdicts(mean, low, high, sign, expected):
    assert verdict(Comparison(mean, low, high, 3, resolution=0.01), sign) == expected


def test_bad_input():
    with pytest.raises(
        ValueError, match="paired 1-D arrays of equal length, but got shapes \\(2,\\) and \\(3,\\)"
    ):
        compare_paired(np.zeros(2), np.zeros(3), 10)
    with pytest.raises(ValueError, match="Expected `expected_sign` to be -1 or \\+1, but got 0"):
        verdict(Comparison(0, 0, 0, 1, 0.1), 0)


def test_verdict_below_uses_the_bound_or_the_resolution():
    from lightning_bet.reproduce.stats import verdict_below

    assert verdict_below(Comparison(0.001, -0.002, 0.004, 3, 0.005), 0.01) == "supported"
    assert verdict_below(Comparison(0.05, 0.03, 0.07, 3, 0.005), 0.01) == "not supported"
    assert verdict_below(Comparison(0.008, 0.0, 0.016, 3, 0.005), 0.01) == "inconclusive"
    # a coarse test set cannot show a loss below its resolution: the bound is raised to it
    assert verdict_below(Comparison(0.012, 0.011, 0.013, 3, 0.02), 0.01) == "supported"
    with pytest.raises(ValueError, match="Expected `bound` to be a float > 0, but got 0"):
        verdict_below(Comparison(0, 0, 0, 1, 0.1), 0)


def test_spearman_matches_scipy_and_within_group_removes_group_means():
    from lightning_bet.reproduce.stats import spearman

    rng = np.random.default_rng(1)
    a = rng.normal(size=30)
    b = a + rng.normal(scale=0.5, size=30)
    result = spearman(a, b, n_boot=500)
    assert result.rho == pytest.approx(sps.spearmanr(a, b).statistic)
    assert result.low <= result.rho <= result.high and result.n == 30
    # two groups far apart, no relation inside a group: all-model rho high, within-group near 0
    groups = np.repeat([0, 1], 15)
    a2 = groups * 10 + rng.normal(size=30)
    b2 = groups * 10 + rng.normal(size=30)
    assert spearman(a2, b2, n_boot=200).rho > 0.7
    centered = [np.concatenate([v[:15] - v[:15].mean(), v[15:] - v[15:].mean()]) for v in (a2, b2)]
    within = spearman(a2, b2, groups=groups, n_boot=200)
    assert within.rho == pytest.approx(sps.spearmanr(*centered).statistic)
    assert within.low < 0 < within.high
    with pytest.raises(
        ValueError, match="Expected `groups` to have shape \\(30,\\), but got \\(2,\\)"
    ):
        spearman(a, b, groups=np.zeros(2))
    assert math.isnan(spearman(np.ones(5), np.arange(5.0)).rho)
