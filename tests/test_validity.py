import json
import math

import numpy as np
import pytest

from lightning_bet.validity import (
    ModelSpec,
    cli_main,
    default_model_set,
    markdown_table,
    run_validity,
    spearman,
)


def _rank_corr_reference(a, b):
    """Pearson correlation of average ranks, written out."""

    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # average ranks of ties
            r[v == value] = r[v == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt((ra**2).sum() * (rb**2).sum()))


def test_spearman_against_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=12)
    b = a + rng.normal(size=12)
    b[3] = b[4]  # a tie
    assert spearman(a, b) == pytest.approx(_rank_corr_reference(a, b))
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_default_model_set_covers_the_design():
    specs = default_model_set()
    assert len(specs) >= 12
    assert {s.method for s in specs} == {"plain", "straight_through", "hirtzlin"}
    assert any(s.lam > 0 for s in specs) and any(s.p_train >= 0.3 for s in specs)
    assert len({s.name for s in specs}) == len(specs)


def test_small_study_writes_outputs(tmp_path):
    specs = [
        ModelSpec("plain", 0.0, 0.0, 0),
        ModelSpec("plain", 0.0, 0.0, 1),
        ModelSpec("straight_through", 0.2, 0.0, 0),
        ModelSpec("straight_through", 0.2, 1.0, 0),
    ]
    report = run_validity(
        out_dir=str(tmp_path), epochs=1, realizations=2, specs=specs, progress=False
    )
    corr = report["correlations"]
    assert "bet" in corr and "mean_layers/margin_mean" in corr
    areas = [m["bet_area"] for m in report["models"]]
    bets = [m["metric"]["bet"] for m in report["models"]]
    assert corr["bet"]["spearman_all"] == pytest.approx(_rank_corr_reference(bets, areas))
    # within method: residuals after removing each method's mean
    methods = np.array([m["method"] for m in report["models"]])
    rb, ra = np.array(bets), np.array(areas)
    for method in set(methods):
        rb[methods == method] -= rb[methods == method].mean()
        ra[methods == method] -= ra[methods == method].mean()
    assert corr["bet"]["spearman_within_method"] == pytest.approx(_rank_corr_reference(rb, ra))
    for c in corr.values():  # flagged iff at most half the models have distinct values
        assert c["few_levels"] == (c["distinct_values"] <= 3)
    saved = json.loads((tmp_path / "validity.json").read_text())
    assert saved["correlations"].keys() == corr.keys()
    assert (tmp_path / "validity.png").stat().st_size > 1000
    table = (tmp_path / "validity.md").read_text()
    assert table == markdown_table(report) and "| `bet` |" in table


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="Expected `dataset` to be 'digits'"):
        run_validity(dataset="mnist", out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Expected `epochs` to be a positive int, but got 0"):
        run_validity(epochs=0, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Expected at least 3 models to rank, but got 1"):
        run_validity(out_dir=str(tmp_path), specs=[ModelSpec("plain", 0.0, 0.0, 0)])
    with pytest.raises(SystemExit):
        cli_main(["--dataset", "imagenet"])
