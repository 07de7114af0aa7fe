"""The verdict of one claim part: one number per unit, an exact test each way, a symmetric rule.

Every statistical part reduces to **one effect per unit** (seed), oriented so that the claim says
"positive" (:class:`Evidence`):

two-sample  a vs b on the same units: ``e = ±(a_u − b_u − margin)`` (paired, signed-rank);
            on disjoint units (or ``same_init = false``): the unit means of a and b as two
            independent groups (rank-sum).
one-sample  ``e = ±(a_u − value)`` (signed-rank).
trend       ``e = ±ρ_u``: Spearman ρ of the metric over ``x`` within unit u (signed-rank).

The rule, with ``t`` = the declared ``min_effect`` (the claimed size; trend default 0.3 in ρ) and
``p(δ, side)`` the exact test of the effect against δ:

- **undecidable** — the design can never reach p ≤ α (its smallest p, :func:`stats.min_p`,
  exceeds α): a statement about the budget's power ("needs ≥ k seeds"), not a verdict;
- **inconclusive (budget-limited: …)** — a compared method at chance, still improving, or
  stopped by patience at epoch ≤ 1 (:mod:`.health`), whatever the test says;
- **held** — ``p(0, greater) ≤ α`` and the mean effect ≥ ``max(t, seed spread)``;
- **not held** — the same standard the other way: ``p(t, less) ≤ α`` (the effect is below the
  claimed size; for ``t = 0`` the estimate is significantly opposite); two-sided claims: an
  equivalence test (both one-sided tests against ±t). The reason says "opposite direction"
  only when the estimate (without the margin) points against the claim;
- **inconclusive** otherwise, with the reason.

The interval printed is the exact one from inverting the same test (:func:`stats.shift_interval`):
held ⇔ its lower end > 0 (and the size rule), not held ⇔ its upper end < t.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import stats
from . import health
from .units import UNIT, Data, MissingData, Side, count_text, run_keys, trend_values

TREND_MIN_EFFECT = 0.3


@dataclass
class Evidence:
    """The numbers a part's test receives: per-unit effects (paired, one-sample, trend) or two
    groups of unit means (unpaired), in the claim's orientation (positive = as claimed)."""

    design: str  # "paired" | "one-sample" | "trend" | "unpaired"
    effects: np.ndarray  # per unit (paired/one-sample/trend); a − b of the unit means (unpaired: empty)
    units: list
    raw_offset: float = 0.0  # effect + raw_offset = the estimate without the margin / claimed value
    a: np.ndarray | None = None
    b: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.units)

    def n_text(self) -> str:
        if self.design == "unpaired":
            return f"{self.a.size} vs {count_text(self.b.size)} (independent)"
        return count_text(self.n)

    def estimate(self) -> float:
        if self.design == "unpaired":
            return float(self.a.mean() - self.b.mean())
        return float(self.effects.mean())

    def p(self, shift: float, alternative: str) -> float:
        if self.design == "unpaired":
            return stats.ranksum(self.a - shift, self.b, alternative)
        return stats.signed_rank(self.effects - shift, alternative)

    def min_p(self, alternative: str) -> float:
        if self.design == "unpaired":
            return stats.min_p("two-sample", self.a.size, self.b.size, alternative)
        return stats.min_p("one-sample", self.n, alternative=alternative)

    def interval(self, alpha: float) -> tuple[float, float]:
        if self.design == "unpaired":
            return stats.shift_interval_two(self.a, self.b, alpha)
        return stats.shift_interval(self.effects, alpha)


def kind_of(spec: dict) -> str:
    if "x" in spec:
        return "trend"
    if "b" in spec:
        return "two-sample"
    return "one-sample"


def design_needs(kind: str, paired: bool, alpha: float, test: str) -> int:
    """Units per condition the design needs for its exact test to reach α."""
    alt = "two-sided" if test == "two-sided" else "greater"
    return stats.seeds_needed("one-sample" if paired or kind != "two-sample" else "two-sample", alpha, alt)


def evidence(claim: dict, data: Data) -> tuple[Evidence, list, list]:
    """``(evidence, the compared runs' rows, the runs read [(run key, partner key)] per side)``."""
    kind, test = kind_of(claim), claim.get("test", "greater")
    sign = -1.0 if test == "less" else 1.0
    metric = claim.get("metric", "")
    if kind == "trend":
        side = data.trend(metric, claim["x"], claim.get("a", {}))
        per_unit = {u: lv for u, lv in trend_values(side, claim["x"], data.unit).items() if len(lv) >= 3}
        rhos = {u: stats.spearman([x for x, _ in lv], [y for _, y in lv]) for u, lv in per_unit.items()}
        rhos = {u: r for u, r in rhos.items() if math.isfinite(r)}
        if not rhos:
            raise MissingData(f"a trend of {metric} over {claim['x']} needs, within a {data.unit}, 3+ levels of "
                              f"{claim['x']} with a non-constant {metric}")
        units = sorted(rhos, key=str)
        ev = Evidence("trend", sign * np.array([rhos[u] for u in units]), units)
        return ev, side.rows(), [side]
    a = data.side(metric, claim.get("a", {}))
    va, _ = a.values(data.unit)
    compared = a.rows() + a.partners()
    if kind == "one-sample":
        units = sorted(va, key=str)
        value = float(claim["value"])
        ev = Evidence("one-sample", sign * (np.array([va[u] for u in units]) - value), units, raw_offset=0.0)
        return ev, compared, [a]
    b = data.side(metric, claim["b"])
    vb, _ = b.values(data.unit)
    compared += b.rows() + b.partners()
    margin = float(claim.get("margin", 0.0))
    common = sorted(set(va) & set(vb), key=str)
    independent = any(r.get("same_init") is False for r in compared) or not common
    if independent:
        ua, ub = sorted(va, key=str), sorted(vb, key=str)
        xa, xb = np.array([va[u] for u in ua]), np.array([vb[u] for u in ub]) + margin
        if sign < 0:
            xa, xb = -xa, -xb
        ev = Evidence("unpaired", np.array([]), ua + ub, raw_offset=sign * margin, a=xa, b=xb)
        return ev, compared, [a, b]
    e = sign * (np.array([va[u] for u in common]) - np.array([vb[u] for u in common]) - margin)
    return Evidence("paired", e, common, raw_offset=sign * margin), compared, [a, b]


def _spread(claim: dict, data: Data) -> float:
    """Pooled sample std over units within each cell (other grid axes equal), over the sides'
    unit values: the seed-to-seed spread (NaN for trends and with one unit per cell)."""
    if kind_of(claim) == "trend":
        return float("nan")
    groups = []
    for s in ("a", "b"):
        if s not in claim and not (s == "a" and "value" in claim):
            continue
        side = data.side(claim.get("metric", ""), claim.get(s, {}))
        cells: dict = {}
        for pair in side.pairs:
            cells.setdefault(data.cell(pair[0]), []).append(pair)
        for pairs in cells.values():
            sub = Side(side.spec, side.metric, side.partner_metric, pairs, side.with_partner)
            try:
                groups.append(list(sub.values(data.unit)[0].values()))
            except MissingData:
                pass
    return stats.pooled_std(groups)


def decide(claim: dict, ev: Evidence, records: list, spread: float, everywhere=None) -> tuple[str, str, list]:
    """``(status, reason, numbers)`` of one part by the rule of the module docstring."""
    test, alpha = claim.get("test", "greater"), float(claim.get("alpha", 0.05))
    kind = kind_of(claim)
    t = float(claim.get("min_effect", TREND_MIN_EFFECT if kind == "trend" else 0.0))
    two = test == "two-sided"
    est = ev.estimate()
    effect = abs(est) if two else est
    smallest = ev.min_p("two-sided" if two else "greater")
    p_claim = ev.p(0.0, "two-sided" if two else "greater")
    if two:
        p_against = max(ev.p(t, "less"), ev.p(-t, "greater")) if t > 0 else float("nan")
    else:
        p_against = ev.p(t, "less")
    lo, hi = ev.interval(alpha)
    size = max(t, spread) if math.isfinite(spread) else t
    numbers = [("effect", effect), (f"{100 * (1 - 2 * alpha):g}% CI", (lo, hi)), ("min effect", size),
               ("p", p_claim), ("p against", p_against), ("smallest p", smallest), ("n", ev.n_text())]
    if ev.design != "unpaired":
        numbers.insert(1, (f"per {UNIT}", tuple(float(x) for x in ev.effects)))
    if smallest > alpha:
        need = design_needs(kind, ev.design != "unpaired", alpha, test)
        return "undecidable", (f"undecidable at this budget (needs ≥ {need} {UNIT}s): with n = {ev.n_text()} the "
                               f"exact test can never reach p ≤ {alpha:g} (smallest p = {smallest:.3g})"), numbers
    if not math.isfinite(p_claim):
        return "inconclusive", f"no test with n = {ev.n_text()} (each group needs at least 2 units)", numbers
    issues = health.problems(records, claim.get("learns", "each"), everywhere) if claim.get("trained", True) else []
    if issues:
        return "inconclusive", "budget-limited: " + "; ".join(issues), numbers
    if p_claim <= alpha and effect >= size:
        return "held", "", numbers
    if math.isfinite(p_against) and p_against <= alpha:
        raw = est + ev.raw_offset
        if two:
            return "not held", f"equivalent within ±{t:g} (p = {stats.fmt_p(p_against)})", numbers
        if raw < 0:
            what = "opposite trend" if kind == "trend" else "opposite direction"
            return "not held", f"{what}: estimate {raw:+.4g} against the claim (p = {stats.fmt_p(p_against)})", numbers
        claimed = "margin" if claim.get("margin") else ("value" if kind == "one-sample" else "minimum effect")
        return "not held", (f"points the claimed way ({raw:+.4g}) but is smaller than the claimed {claimed}: "
                            f"the effect {est:.4g} is significantly below {t:g} (p = {stats.fmt_p(p_against)})"), numbers
    if p_claim <= alpha:
        return "inconclusive", (f"significant, but the effect {effect:.4g} is below the seed-to-seed spread "
                                f"{size:.4g}"), numbers
    return "inconclusive", (f"significant neither way (p = {stats.fmt_p(p_claim)} for the claim, "
                            f"{stats.fmt_p(p_against)} against it; α = {alpha:g})"), numbers


def check_part(claim: dict, data: Data) -> dict:
    """Evaluate one statistical part: a dict with ``status``, ``reason``, ``numbers`` and the
    record the audit re-checks (``n``, ``seeds``, ``smallest_p``, ``alpha``, ``methods``, ``learns``,
    ``runs``)."""
    ev, compared, sides = evidence(claim, data)
    seeds = sorted({str(r.get(data.unit)) for r in compared if r.get(data.unit) is not None})
    records, everywhere = health.methods(compared, data.cell), None
    if claim.get("learns", "each") == "somewhere":  # must learn somewhere in the experiment, not only here
        names = {r.get("method") for r in compared}
        everywhere = health.methods([r for r in data.rows if r.get("method") in names], data.cell)
    status, reason, numbers = decide(claim, ev, records, _spread(claim, data), everywhere)
    return {"status": status, "reason": reason, "numbers": numbers, "n": ev.n, "seeds": seeds,
            "smallest_p": dict(numbers)["smallest p"], "alpha": float(claim.get("alpha", 0.05)),
            "methods": (everywhere or records) if claim.get("trained", True) else [], "learns": claim.get("learns", "each"),
            "runs": [run_keys(s) for s in sides]}


__all__ = ["Evidence", "TREND_MIN_EFFECT", "check_part", "decide", "design_needs", "evidence", "kind_of"]
