"""The claims C1-C5 of METHOD §8, measured on a trained model set.

Every claim is judged from paired differences: models are paired by training seed, and every
model was swept on the same fault maps, so the fault-map noise is shared within a pair. Each
difference carries a Student-t interval over seeds (:func:`~.stats.compare_paired`) and is judged
against the test set's resolution (:func:`~.stats.binomial_se`): an effect below it is
"inconclusive", never "supported".

Operationalisation (the report prints it next to the numbers):

- **C1** plain BNN: accuracy loss ``acc(0) - acc(p)`` at ``p = 1e-4`` and ``1e-3``; the claim
  "little loss" is supported when the interval lies below one accuracy point (or the
  resolution, whichever is larger) at both rates (:func:`~.stats.verdict_below`).
- **C2** Hirtzlin flip training: (a) tolerance raised: ``acc_hirtzlin(0.04) - acc_plain(0.04)``
  > 0 at the training rate closest to 0.04; (b) the dip: ``acc(p_train) - acc(0)`` > 0 (lower
  accuracy below the training rate), at any training rate with a Bonferroni-corrected interval.
  Supported when (a) and (b) are.
- **C3** straight-through has no such dip: ``dip_hirtzlin - dip_straight_through`` > 0 at the same
  training rate and seed (Bonferroni over training rates), with the straight-through dip itself
  reported.
- **C4** the metric predicts tolerance: Spearman correlation of the ``BitErrorTolerance`` scalar
  ``bet`` (the predicted BET area of METHOD §4b, logged as ``val/bet``; validation split) and the
  BET area (test split) over all models, and within methods (method means removed), with
  stratified bootstrap intervals. Supported when both lower bounds are > 0.
- **C5** the margin regularizer's ``λ`` trades clean accuracy for tolerance: at the largest
  ``λ`` against ``λ = 0`` (the plain models of the same seeds), clean accuracy lower and BET area
  higher; Spearman over ``λ`` reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lightning_bet.reproduce.stats import (
    Comparison,
    Verdict,
    binomial_se,
    compare_paired,
    spearman,
    verdict,
    verdict_below,
)

__all__ = ["ClaimResult", "ModelRecord", "analyze", "to_records"]

#: C1: the error rates of "small" and the accuracy loss that counts as "little".
C1_RATES = (1e-4, 1e-3)
C1_TOLERANCE = 0.01
#: C2: the error rate the tolerance is compared at (Hirtzlin et al.: about 4e-2).
C2_RATE = 0.04


@dataclass(frozen=True)
class ModelRecord:
    """The measurements of one trained model.

    Attributes:
        method: training method.
        setting: method setting (``"p=0.05"``, ``"λ=1"`` or ``""``).
        seed: training seed.
        p_train: training error rate (flip training) or ``None``.
        lam: ``λ`` (margin regularizer) or ``None``.
        error_rates: the sweep grid ``(P,)``.
        accuracy: mean accuracy over fault maps per error rate ``(P,)``.
        bet_area: BET area.
        metric: the ``BitErrorTolerance`` scalar ``bet`` (predicted BET area, METHOD §4b).
        final_train_loss: mean training objective of the last epoch.
        train_seconds: training time.
        epochs: training epochs.

    """

    method: str
    setting: str
    seed: int
    p_train: float | None
    lam: float | None
    error_rates: tuple[float, ...]
    accuracy: np.ndarray
    bet_area: float
    metric: float
    final_train_loss: float
    train_seconds: float
    epochs: int

    @property
    def group(self) -> str:
        """Method and setting."""
        return f"{self.method} {self.setting}".strip()

    def at(self, p: float) -> float:
        """Mean accuracy at error rate ``p`` (a grid point)."""
        for rate, acc in zip(self.error_rates, self.accuracy, strict=True):
            if math.isclose(rate, p, rel_tol=1e-9, abs_tol=0.0):
                return float(acc)
        raise KeyError(f"error rate {p!r} is not on the sweep grid {list(self.error_rates)}")

    def has(self, p: float) -> bool:
        """Whether ``p`` is on the sweep grid."""
        return any(math.isclose(r, p, rel_tol=1e-9, abs_tol=0.0) for r in self.error_rates)


def to_records(runs: Sequence[dict[str, Any]]) -> list[ModelRecord]:
    """Model records from the output of :func:`~lightning_bet.reproduce.run.run_model_set`."""
    out = []
    for run in runs:
        spec, train, result = run["spec"], run["train"], run["result"]
        out.append(
            ModelRecord(
                method=spec.method,
                setting=spec.setting,
                seed=spec.seed,
                p_train=spec.p_train,
                lam=spec.lam,
                error_rates=tuple(result["error_rates"]),
                accuracy=np.asarray(result["accuracy_mean"], dtype=np.float64),
                bet_area=float(result["bet_area"]),
                metric=float(result["metric"]["bet"]),
                final_train_loss=float(train["final_train_loss"]),
                train_seconds=float(train["train_seconds"]),
                epochs=int(train["epochs"]),
            )
        )
    return out


@dataclass
class ClaimResult:
    """The measurement of one claim.

    Attributes:
        key: ``"C1"`` ... ``"C5"``.
        claim: the claim as METHOD §8 states it.
        how: how it is operationalised here.
        rows: measured quantities, each ``{"quantity", "value", "verdict"}`` (verdict may be "").
        verdict: the overall verdict.
        notes: caveats (missing models, resolution, ...).
        summary: the key measurement in one line.

    """

    key: str
    claim: str
    how: str
    rows: list[dict[str, str]] = field(default_factory=list)
    verdict: Verdict = "inconclusive"
    notes: list[str] = field(default_factory=list)
    summary: str = ""


def _combine_all(verdicts: Sequence[Verdict]) -> Verdict:
    """All parts must hold: any "not supported" refutes, all "supported" supports."""
    if any(v == "not supported" for v in verdicts):
        return "not supported"
    if verdicts and all(v == "supported" for v in verdicts):
        return "supported"
    return "inconclusive"


def _combine_any(verdicts: Sequence[Verdict]) -> Verdict:
    """Exists-claim over Bonferroni-corrected tests: one "supported" supports it."""
    if any(v == "supported" for v in verdicts):
        return "supported"
    if verdicts and all(v == "not supported" for v in verdicts):
        return "not supported"
    return "inconclusive"


def _by_seed(records: Sequence[ModelRecord], method: str, **match: Any) -> dict[int, ModelRecord]:
    return {
        r.seed: r
        for r in records
        if r.method == method and all(getattr(r, k) == v for k, v in match.items())
    }


def _paired(
    a: dict[int, ModelRecord], b: dict[int, ModelRecord]
) -> tuple[list[ModelRecord], list[ModelRecord]]:
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds]


def _compare(
    a: Sequence[float], b: Sequence[float], n_test: int, level: float, confidence: float = 0.95
) -> Comparison:
    """Paired comparison whose resolution is that of an accuracy ``level``."""
    c = compare_paired(np.asarray(a), np.asarray(b), n_test, confidence)
    return replace(c, resolution=binomial_se(float(np.clip(level, 0.0, 1.0)), n_test))


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _too_few(result: ClaimResult, what: str) -> ClaimResult:
    result.notes.append(f"Not measurable: {what}. Verdict: inconclusive.")
    result.verdict = "inconclusive"
    return result


def claim_c1(records: Sequence[ModelRecord], n_test: int) -> ClaimResult:
    """C1: an ordinary BNN loses little accuracy at small error rates."""
    result = ClaimResult(
        "C1",
        "An ordinary BNN tolerates small error rates (Hirtzlin: about 1e-4) with little accuracy "
        "loss.",
        f"Plain models, accuracy loss acc(0) - acc(p) at p in {list(C1_RATES)}, paired by seed "
        f"(same fault maps); supported when the 95% interval of the loss lies below "
        f"{100 * C1_TOLERANCE:g} point (or the test set's resolution, if larger) at every rate.",
    )
    plain = _by_seed(records, "plain")
    if len(plain) < 2:
        return _too_few(result, "needs plain models of at least 2 seeds")
    models = list(plain.values())
    verdicts = []
    for p in C1_RATES:
        if not models[0].has(p):
            result.notes.append(f"p={p:g} is not on the sweep grid: not measured.")
            continue
        clean = [m.at(0.0) for m in models]
        faulty = [m.at(p) for m in models]
        c = _compare(clean, faulty, n_test, float(np.mean(clean)))
        v = verdict_below(c, C1_TOLERANCE)
        verdicts.append(v)
        result.rows.append(
            {
                "quantity": f"plain: accuracy loss at p={p:g} (acc {_pct(np.mean(faulty))} vs "
                f"{_pct(np.mean(clean))})",
                "value": c.as_text(),
                "verdict": v,
            }
        )
    result.verdict = _combine_all(verdicts) if verdicts else "inconclusive"
    result.summary = "; ".join(
        f"loss at {r['quantity'].split('p=')[1].split(' ')[0]}: {r['value']}" for r in result.rows
    )
    return result


def _dips(
    records: Sequence[ModelRecord], method: str, n_test: int, confidence: float
) -> dict[float, tuple[Comparison, dict[int, float]]]:
    """``{p_train: (comparison of acc(p_train) vs acc(0), {seed: dip})}`` for one method."""
    out = {}
    rates = sorted({r.p_train for r in records if r.method == method and r.p_train is not None})
    for p in rates:
        group = _by_seed(records, method, p_train=p)
        models = [m for m in group.values() if m.has(p)]
        if len(models) < 2:
            continue
        at_p = [m.at(p) for m in models]
        clean = [m.at(0.0) for m in models]
        comparison = _compare(at_p, clean, n_test, float(np.mean(clean)), confidence)
        out[p] = (comparison, {m.seed: m.at(p) - m.at(0.0) for m in models})
    return out


def _rise_rows(records: Sequence[ModelRecord], method: str) -> list[dict[str, str]]:
    """Descriptive rows: the largest seed-mean rise ``acc(p) - acc(0)`` over ``0 < p <= p_train``.

    Chosen after looking at the curve (a maximum over the grid), so it carries no verdict; it
    shows whether the curve has a dip anywhere below the training rate, not only at it.
    """
    rows = []
    for p_train in sorted({r.p_train for r in records if r.method == method and r.p_train}):
        models = list(_by_seed(records, method, p_train=p_train).values())
        grid = [p for p in models[0].error_rates if 0 < p <= p_train]
        if not grid:
            continue
        rise = {p: float(np.mean([m.at(p) - m.at(0.0) for m in models])) for p in grid}
        best = max(rise, key=rise.get)
        rows.append(
            {
                "quantity": f"{method} p={p_train:g}: largest mean rise acc(p) - acc(0) over "
                f"0 < p <= {p_train:g} (descriptive, no verdict)",
                "value": f"{100 * rise[best]:+.2f} pt at p={best:g}",
                "verdict": "",
            }
        )
    return rows


def claim_c2(records: Sequence[ModelRecord], n_test: int) -> ClaimResult:
    """C2: Hirtzlin flip training raises tolerance, but dips below the training rate."""
    result = ClaimResult(
        "C2",
        "Hirtzlin-style flip training raises tolerance (to about 4e-2), but fully connected "
        "networks overfit to the training error rate: lower accuracy at error rates below the "
        "training rate.",
        f"(a) acc_hirtzlin({C2_RATE:g}) - acc_plain({C2_RATE:g}) > 0, paired by seed, at the "
        f"training rate closest to {C2_RATE:g} (other rates shown); (b) the dip "
        "acc(p_train) - acc(0) > 0 for the Hirtzlin models, at any training rate, intervals "
        "Bonferroni-corrected over the training rates. Supported when (a) and (b) are.",
    )
    hirtzlin = [r for r in records if r.method == "hirtzlin"]
    plain = _by_seed(records, "plain")
    if not hirtzlin or len(plain) < 2:
        return _too_few(result, "needs Hirtzlin and plain models of at least 2 seeds")
    if not hirtzlin[0].has(C2_RATE):
        return _too_few(result, f"p={C2_RATE:g} is not on the sweep grid")
    rates = sorted({r.p_train for r in hirtzlin})
    primary = min(rates, key=lambda p: (abs(p - C2_RATE), p))
    part_a: Verdict = "inconclusive"
    primary_text = "not measured"
    for p in rates:
        a, b = _paired(_by_seed(records, "hirtzlin", p_train=p), plain)
        if len(a) < 2:
            continue
        ha, pa = [m.at(C2_RATE) for m in a], [m.at(C2_RATE) for m in b]
        c = _compare(ha, pa, n_test, (np.mean(ha) + np.mean(pa)) / 2)
        v = verdict(c, +1)
        if p == primary:
            part_a = v
            primary_text = f"p_train={p:g}: {c.as_text()}"
        result.rows.append(
            {
                "quantity": f"(a) hirtzlin p={p:g} vs plain at p={C2_RATE:g} (acc "
                f"{_pct(np.mean(ha))} vs {_pct(np.mean(pa))})"
                + (" [primary]" if p == primary else ""),
                "value": c.as_text(),
                "verdict": v,
            }
        )
    dips = _dips(records, "hirtzlin", n_test, 1.0 - 0.05 / max(1, len(rates)))
    dip_verdicts = []
    for p, (c, _) in dips.items():
        v = verdict(c, +1)
        dip_verdicts.append(v)
        result.rows.append(
            {
                "quantity": f"(b) hirtzlin p={p:g}: dip acc({p:g}) - acc(0)",
                "value": c.as_text() + f" ({100 * (1 - 0.05 / len(rates)):.1f}% CI)",
                "verdict": v,
            }
        )
    part_b = _combine_any(dip_verdicts) if dip_verdicts else "inconclusive"
    result.rows.extend(_rise_rows(records, "hirtzlin"))
    result.rows.append({"quantity": "(a) tolerance raised", "value": "", "verdict": part_a})
    result.rows.append(
        {"quantity": "(b) dip below the training rate", "value": "", "verdict": part_b}
    )
    result.verdict = _combine_all([part_a, part_b])
    result.summary = (
        f"(a) tolerance at {C2_RATE:g} raised: {part_a} ({primary_text}); (b) dip: {part_b}"
    )
    return result


def claim_c3(records: Sequence[ModelRecord], n_test: int) -> ClaimResult:
    """C3: straight-through flip training has a smaller dip than Hirtzlin's."""
    result = ClaimResult(
        "C3",
        "Straight-through flip training adapts less to the training error rate: no such dip.",
        "dip = acc(p_train) - acc(0) per model; dip_hirtzlin - dip_straight_through > 0, paired "
        "by seed at the same training rate (both variants draw the same training fault maps for "
        "the same seed), at any training rate with Bonferroni-corrected intervals. The "
        "straight-through dip itself is shown too.",
    )
    rates = sorted(
        {r.p_train for r in records if r.method == "hirtzlin"}
        & {r.p_train for r in records if r.method == "straight_through"}
    )
    if not rates:
        return _too_few(result, "needs Hirtzlin and straight-through models at a common rate")
    confidence = 1.0 - 0.05 / len(rates)
    verdicts = []
    for p in rates:
        a, b = _paired(
            _by_seed(records, "hirtzlin", p_train=p),
            _by_seed(records, "straight_through", p_train=p),
        )
        if len(a) < 2 or not a[0].has(p):
            continue
        dh = [m.at(p) - m.at(0.0) for m in a]
        ds = [m.at(p) - m.at(0.0) for m in b]
        level = float(np.mean([m.at(0.0) for m in a + b]))
        c = _compare(dh, ds, n_test, level, confidence)
        v = verdict(c, +1)
        verdicts.append(v)
        st = _compare([m.at(p) for m in b], [m.at(0.0) for m in b], n_test, level, confidence)
        result.rows.append(
            {
                "quantity": f"p={p:g}: dip_hirtzlin - dip_straight_through",
                "value": c.as_text() + f" ({100 * confidence:.1f}% CI)",
                "verdict": v,
            }
        )
        result.rows.append(
            {
                "quantity": f"p={p:g}: straight-through dip acc({p:g}) - acc(0) (for reference)",
                "value": st.as_text(),
                "verdict": "",
            }
        )
    result.verdict = _combine_any(verdicts) if verdicts else "inconclusive"
    result.summary = "; ".join(
        f"{r['quantity'].split(':')[0]}: {r['value']}" for r in result.rows if r["verdict"]
    )
    result.rows.extend(_rise_rows(records, "straight_through"))
    if not verdicts:
        result.notes.append("Not measurable: needs paired models of at least 2 seeds.")
    return result


def claim_c4(records: Sequence[ModelRecord], n_test: int) -> ClaimResult:
    """C4: the logged metric (predicted BET area) correlates with the BET area."""
    result = ClaimResult(
        "C4",
        "The margin metric (METHOD §4) correlates with accuracy over error rate for fully "
        "connected networks (Spearman over a model set).",
        "Spearman correlation between the BitErrorTolerance scalar `bet` (the predicted BET "
        "area of METHOD §4b, logged as `val/bet`; validation split) and the BET area (test "
        "split, METHOD §6 grid), over all models and within methods (method "
        "means removed), 95% bootstrap intervals over models (stratified by method for the "
        "within-method value). Supported when both lower bounds are > 0; not supported when "
        "either upper bound is <= 0.",
    )
    if len(records) < 4:
        return _too_few(result, "needs at least 4 models")
    metric = np.array([r.metric for r in records])
    area = np.array([r.bet_area for r in records])
    methods = np.array([r.method for r in records])
    overall = spearman(metric, area)
    within = spearman(metric, area, groups=methods)
    result.rows.append(
        {"quantity": "Spearman, all models", "value": overall.as_text(), "verdict": ""}
    )
    result.rows.append(
        {"quantity": "Spearman, within methods", "value": within.as_text(), "verdict": ""}
    )
    relative = area / np.array([r.at(0.0) for r in records])
    result.rows.append(
        {
            "quantity": "Spearman with the relative area (BET area / clean accuracy), all models "
            "(for reference)",
            "value": spearman(metric, relative).as_text(),
            "verdict": "",
        }
    )
    for method in dict.fromkeys(methods):
        mask = methods == method
        if mask.sum() >= 4:
            s = spearman(metric[mask], area[mask])
            result.rows.append(
                {"quantity": f"Spearman, {method} only", "value": s.as_text(), "verdict": ""}
            )
    result.summary = f"all models {overall.as_text()}; within methods {within.as_text()}"
    bounds = [overall.low, within.low, overall.high, within.high]
    if any(math.isnan(b) for b in bounds):
        result.verdict = "inconclusive"
        result.notes.append("A correlation is undefined (constant values or too few models).")
    elif overall.low > 0 and within.low > 0:
        result.verdict = "supported"
    elif overall.high <= 0 or within.high <= 0:
        result.verdict = "not supported"
    else:
        result.verdict = "inconclusive"
    spread = float(np.std(area))
    if spread < binomial_se(float(np.mean(area)), n_test):
        result.notes.append(
            f"The BET areas spread by {_pct(spread)} (sd), below the test set's resolution "
            f"{_pct(binomial_se(float(np.mean(area)), n_test))}: rankings are noisy."
        )
    return result


def claim_c5(records: Sequence[ModelRecord], n_test: int) -> ClaimResult:
    """C5: λ trades clean accuracy for tolerance."""
    from scipy.stats import spearmanr

    result = ClaimResult(
        "C5",
        "The regularizer's λ gives a configurable trade-off between clean accuracy and tolerance.",
        "Margin-regularized models at the largest λ against the plain models (λ = 0) of the "
        "same seeds: clean accuracy difference < 0 and BET-area difference > 0 (both must "
        "hold); Spearman correlation over λ (models of all seeds, λ = 0 included) shown for both.",
    )
    lams = sorted({r.lam for r in records if r.method == "margin"})
    plain = _by_seed(records, "plain")
    if not lams or len(plain) < 2:
        return _too_few(result, "needs margin-regularized and plain models of at least 2 seeds")
    top = lams[-1]
    a, b = _paired(_by_seed(records, "margin", lam=top), plain)
    if len(a) < 2:
        return _too_few(result, "needs paired models of at least 2 seeds")
    ca, cb = [m.at(0.0) for m in a], [m.at(0.0) for m in b]
    clean = _compare(ca, cb, n_test, (np.mean(ca) + np.mean(cb)) / 2)
    aa, ab = [m.bet_area for m in a], [m.bet_area for m in b]
    area = _compare(aa, ab, n_test, (np.mean(aa) + np.mean(ab)) / 2)
    v_clean, v_area = verdict(clean, -1), verdict(area, +1)
    result.rows.append(
        {
            "quantity": f"clean accuracy, λ={top:g} - λ=0 ({_pct(np.mean(ca))} vs "
            f"{_pct(np.mean(cb))})",
            "value": clean.as_text(),
            "verdict": v_clean,
        }
    )
    result.rows.append(
        {
            "quantity": f"BET area, λ={top:g} - λ=0 ({_pct(np.mean(aa))} vs {_pct(np.mean(ab))})",
            "value": area.as_text(),
            "verdict": v_area,
        }
    )
    for lam in lams[:-1]:
        a2, b2 = _paired(_by_seed(records, "margin", lam=lam), plain)
        if len(a2) >= 2:
            a2_area, b2_area = [m.bet_area for m in a2], [m.bet_area for m in b2]
            level = (np.mean(a2_area) + np.mean(b2_area)) / 2
            c = _compare(a2_area, b2_area, n_test, level)
            result.rows.append(
                {
                    "quantity": f"BET area, λ={lam:g} - λ=0 (for reference)",
                    "value": c.as_text(),
                    "verdict": "",
                }
            )
    models = [r for r in records if r.method == "margin"] + list(plain.values())
    lam_values = [r.lam if r.lam is not None else 0.0 for r in models]
    for name, values in (
        ("clean accuracy", [r.at(0.0) for r in models]),
        ("BET area", [r.bet_area for r in models]),
    ):
        rho = spearmanr(lam_values, values)
        result.rows.append(
            {
                "quantity": f"Spearman(λ, {name}) over {len(models)} models",
                "value": f"{rho.statistic:+.2f} (p = {rho.pvalue:.2g})",
                "verdict": "",
            }
        )
    result.verdict = _combine_all([v_clean, v_area])
    result.summary = (
        f"λ={top:g} vs 0: clean accuracy {clean.as_text()} ({v_clean}), BET area "
        f"{area.as_text()} ({v_area})"
    )
    return result


def analyze(records: Sequence[ModelRecord], n_test: int) -> list[ClaimResult]:
    """Measure C1-C5 on the model records; ``n_test`` is the test-set size (resolution)."""
    return [claim(records, n_test) for claim in (claim_c1, claim_c2, claim_c3, claim_c4, claim_c5)]
