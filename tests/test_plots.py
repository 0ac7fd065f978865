"""Figures a reader understands without the report: titles, units, legends that explain."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_bet.reproduce import report
from lightning_bet.reproduce.claims import ModelRecord
from lightning_bet.sweeps import SweepResult

pytest.importorskip("matplotlib")  # optional: the figures need it


def _result() -> SweepResult:
    rng = np.random.default_rng(0)
    accuracy = np.clip(np.linspace(0.95, 0.4, 5)[:, None] + rng.normal(0, 0.02, (5, 4)), 0, 1)
    config = {"semantics": "fixed", "config": "recipes/digits_fcnn.yaml", "fault": "symmetric"}
    return SweepResult([0.0, 0.01, 0.02, 0.05, 0.1], accuracy, config)


def test_sweep_figure_names_model_band_area_grid_and_percent(tmp_path):
    result = _result()
    fig = result.plot(tmp_path / "sweep.png")
    ax = fig.axes[0]
    assert ax.get_title().startswith("digits_fcnn: accuracy over weight bit error rate")
    assert "one fault map held per realization" in ax.get_title()
    assert ax.get_ylabel() == "test accuracy (%)"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), 100 * result.mean)
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == [
        f"digits_fcnn: BET area {100 * result.area:.2f}%",
        "±1 std over 4 fault maps per rate",
    ]
    assert legend.get_title().get_text() == (
        "BET area: mean accuracy over p in [0, 0.1]\n"
        "(trapezoid under the mean curve / grid width, 5 rates)"
    )
    assert (tmp_path / "sweep.png").stat().st_size > 1000


def _record(method: str, p: float | None, seed: int) -> ModelRecord:
    rates = (0.0, 1e-3, 0.01, 0.1, 0.3)
    accuracy = np.array([0.97, 0.96, 0.95, 0.8, 0.3]) - (0.0 if p is None else p / 10)
    return ModelRecord(
        method,
        "" if p is None else f"p={p:g}",
        seed,
        p,
        None,
        rates,
        accuracy,
        float(accuracy.mean()),
        1.0,
        0.1,
        1.0,
        1,
    )


def test_report_curves_explain_the_dotted_lines_and_keep_legends_off_the_axes(
    tmp_path, monkeypatch
):
    records = [
        _record(method, p, seed)
        for seed in (0, 1)
        for method, p in (("plain", None), ("hirtzlin", 0.05), ("straight_through", 0.15))
    ]
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    report._plot_curves(records, tmp_path / "curves.png")
    (fig,) = figures
    for ax in fig.axes:
        legend = ax.get_legend()
        texts = [t.get_text() for t in legend.get_texts()]
        assert "plain (no flip training)" in texts
        assert texts[-1] == "dotted: the training error rate"
        assert legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1  # right of the axes
        assert "mean over 2 seeds" in ax.get_ylabel()
    assert "hirtzlin, trained at p=0.05" in [
        t.get_text() for t in fig.axes[0].get_legend().get_texts()
    ]
