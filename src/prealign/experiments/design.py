"""The design of an experiment's claims at a budget, known before anything runs.

From the budget's grid points alone (no training) each claim's parts select their runs exactly as
they will on the results (:mod:`.units`), so the design knows per claim: its unit, how many units
each compared condition has, whether conditions are paired, the smallest p its exact test can
reach and — when that exceeds α — how many seeds it needs. ``prealign reproduce --list`` and each
report print it; such a claim is reported *undecidable*, never held or not held.

It also knows which runs each claim reads, so two claims that make **the same test on the same
runs** (e.g. noise Fig. S3 and S5 at the quick budget, where mnist5k stands in for both MNIST and
CIFAR-10) are found before running: the later one (in name order) points to the first and is not
counted again (:func:`same_tests`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from . import method_label
from .claims import CURVE_METRICS, part_signature, parts, signature
from .units import Data, MissingData, count_text, unit_count
from .verdict import design_needs, kind_of

def plan_row(point: dict) -> tuple[dict, dict]:
    """``(row, RunConfig dict)`` of one grid point before it runs: the config fields, the grid
    labels, ``method`` as its label, ``depth``, ``train_size``, ``angle``, ``run_key`` and
    ``chance_acc`` (1 / classes of its data set) — what claims select on."""
    from ..data.registry import DATASETS
    from ..run.config import RunConfig

    cfg = RunConfig.from_dict(point["config"])
    d = cfg.to_dict()
    row = {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None}
    row.update({k: v for k, v in point["axes"].items()})
    row["method"] = method_label(d)
    row["depth"] = len(d.get("hidden", [])) + 1
    row["train_size"] = d.get("train_subset")
    row["angle"] = d.get("angle") if d.get("method") == "ifa" else (90.0 if d.get("method") in ("fa", "rnp") else None)
    row["run_key"] = cfg.key()
    spec = DATASETS.get(d.get("dataset"))
    row["chance_acc"] = 1.0 / spec.num_classes if spec is not None else math.nan
    return row, d


def analyses_of(exp, budget: str) -> list:
    """What an analysis metric's numbers depend on besides the runs: the budget's analyses."""
    return exp.analysis_params(budget)


@dataclass
class ClaimPlan:
    """A claim's design at a budget. ``status``: ``decidable`` | ``undecidable`` | ``skipped`` |
    ``no runs``; ``n``: units of the weakest part (``"3 vs 3"`` unpaired); ``needs``: units it
    would need; ``same_as``: the claim it repeats (same test on the same runs), if any."""

    id: str
    experiment: str
    budget: str
    status: str
    n: str = ""
    smallest_p: float = math.nan
    needs: int = 0
    reason: str = ""
    signature: str = ""
    parts: tuple = ()
    same_as: str = ""

    def line(self) -> str:
        if self.same_as:
            return f"{self.id}: the same test on the same runs as {self.same_as} (counted there)"
        if self.status == "decidable":
            return f"{self.id}: decidable ({self.n}; smallest p {self.smallest_p:.3g})"
        return f"{self.id}: {self.status}" + (f" — {self.reason}" if self.reason else "")


def _plan_part(part: dict, data: Data) -> tuple[str, str, float, int]:
    """``(status, n text, smallest p, units needed)`` of one part on the planned rows."""
    from .. import stats

    kind, test, alpha = kind_of(part), part.get("test", "greater"), float(part.get("alpha", 0.05))
    alt = "two-sided" if test == "two-sided" else "greater"
    metric = part.get("metric", "")
    if kind == "trend":
        side = data.trend(metric, part["x"], part.get("a", {}))
        levels: dict = {}
        for r, _ in side.pairs:
            levels.setdefault(r.get(data.unit), set()).add(r.get(part["x"]))
        units = [u for u, lv in levels.items() if len(lv) >= 3]
        paired, n, m = True, len(units), 0
    else:
        ua = unit_count(data.side(metric, part.get("a", {})), data.unit)
        if kind == "one-sample":
            paired, n, m = True, len(ua), 0
        else:
            sb = data.side(metric, part["b"])
            ub = unit_count(sb, data.unit)
            common = ua & ub
            same_init = all(r.get("same_init") is not False for r in data.rows)
            paired = bool(common) and same_init
            n, m = (len(common), 0) if paired else (len(ua), len(ub))
    if n == 0:
        if kind == "trend":
            raise MissingData(f"no {data.unit} has 3 or more levels of {part['x']}: a trend needs them")
        return "no runs", "0", math.nan, design_needs(kind, paired, alpha, test)
    smallest = stats.min_p("one-sample", n, alternative=alt) if paired else \
        (stats.min_p("two-sample", n, m, alt) if m else 1.0)
    text = count_text(n, data.unit) if paired else f"{n} vs {count_text(m, data.unit)}"
    status = "decidable" if smallest <= alpha + 1e-12 else "undecidable"
    return status, text, smallest, design_needs(kind, paired, alpha, test)


def plan_claim(claim: dict, rows: list[dict], axes, budget: str, experiment: str = "", analyses=()) -> ClaimPlan:
    """The design of ``claim`` on the planned ``rows`` of ``budget`` (see the module docstring)."""
    plan = ClaimPlan(claim["id"], experiment, budget, "decidable")
    if budget in claim.get("skip", {}):
        plan.status, plan.reason = "skipped", f"not checked at the {budget} budget: {claim['skip'][budget]}"
        return plan
    sigs, worst = [], None
    for part in parts(claim):
        data = Data(rows, axes, part.get("unit", "seed"))
        if "check" in part:
            sigs.append(part_signature(part, {"runs": sorted(str(r.get("run_key")) for r in rows)}, analyses))
            continue
        try:
            status, n, smallest, needs = _plan_part(part, data)
            record = _runs_record(part, data)
        except MissingData as exc:
            status, n, smallest, needs, record = "no runs", "0", math.nan, 0, {"runs": []}
            plan.reason = str(exc)
        sigs.append(part_signature(part, record, analyses))
        rank = {"no runs": 2, "undecidable": 1, "decidable": 0}[status]
        if worst is None or rank > worst[0] or (rank == worst[0] and smallest > worst[2]):
            worst = (rank, status, smallest, n, needs)
    plan.parts, plan.signature = tuple(sigs), signature(sigs)
    if worst is not None:
        _, plan.status, plan.smallest_p, plan.n, plan.needs = worst
        if plan.status == "undecidable":
            plan.reason = (f"undecidable at this budget (needs ≥ {plan.needs} seeds; with {plan.n} the smallest "
                           f"p is {plan.smallest_p:.3g})")
    return plan


def _runs_record(part: dict, data: Data) -> dict:
    from .units import run_keys

    if kind_of(part) == "trend":
        return {"runs": [run_keys(data.trend(part.get("metric", ""), part["x"], part.get("a", {})))]}
    sides = [data.side(part.get("metric", ""), part.get("a", {}))]
    if "b" in part:
        sides.append(data.side(part.get("metric", ""), part["b"]))
    return {"runs": [run_keys(s) for s in sides]}


def plan(exp, budget: str, only: dict | None = None) -> list[ClaimPlan]:
    """Every claim of ``exp`` at ``budget``, with the claims it repeats (shipped experiments)."""
    rows = [plan_row(p)[0] for p in exp.points(budget, only)]
    axes = list(exp.settings(budget)[1])
    out = [plan_claim(c, rows, axes, budget, exp.name, analyses_of(exp, budget)) for c in exp.claims]
    if not only:
        first = _first_of(budget)
        for p in out:
            owner = first.get(p.signature)
            if owner and owner != (exp.name, p.id) and p.status != "skipped":
                p.same_as = f"{owner[1]} ({owner[0]})"
    return out


@functools.lru_cache(maxsize=4)
def _first_of(budget: str) -> dict:
    """``{claim signature: (experiment, claim id)}`` of the first shipped claim (name order) making each test."""
    from . import load_all

    first: dict = {}
    for exp in load_all():
        rows = [plan_row(p)[0] for p in exp.points(budget)]
        axes = list(exp.settings(budget)[1])
        for c in exp.claims:
            p = plan_claim(c, rows, axes, budget, exp.name, analyses_of(exp, budget))
            if p.status != "skipped" and p.signature:
                first.setdefault(p.signature, (exp.name, c["id"]))
    return first


def same_tests(exp, budget: str) -> dict:
    """``{claim id: "other id (experiment)"}`` for the claims of ``exp`` that repeat an earlier one."""
    return {p.id: p.same_as for p in plan(exp, budget) if p.same_as}


def shared_parts(budget: str) -> list[tuple]:
    """Pairs of claims (not repeats of each other) that share a part: the same test on the same
    runs inside two different claims — a design error the test suite refuses."""
    from . import load_all

    seen: dict = {}
    out = []
    for exp in load_all():
        for p in plan(exp, budget):
            if p.same_as or p.status == "skipped":
                continue
            for sig in set(p.parts):
                if sig in seen and seen[sig] != (exp.name, p.id):
                    out.append((seen[sig], (exp.name, p.id)))
                seen.setdefault(sig, (exp.name, p.id))
    return out


def summary(plans: list[ClaimPlan]) -> str:
    """One line: how many claims the budget can decide, and why the others cannot be."""
    if not plans:
        return "no claims"
    ok = sum(p.status == "decidable" and not p.same_as for p in plans)
    others = [p for p in plans if p.status != "decidable" or p.same_as]
    text = f"claims: {ok} of {len(plans)} decidable"
    if others:
        text += "; " + "; ".join(
            f"{p.id} repeats {p.same_as}" if p.same_as else
            f"{p.id} undecidable (needs ≥ {p.needs} seeds, has {p.n or 0})" if p.status == "undecidable" else
            f"{p.id} {p.reason or p.status}" for p in others)
    return text


def markdown(plans: list[ClaimPlan]) -> str:
    """The design table of a report: each claim's units, smallest p and whether it can be decided."""
    lines = ["| claim | design | units | smallest p | decidable |", "|---|---|---|---|---|"]
    for p in plans:
        ok = {"decidable": "yes", "undecidable": f"**no** — needs ≥ {p.needs} seeds", "skipped": p.reason,
              "no runs": "no runs"}[p.status]
        if p.same_as:
            ok = f"repeats {p.same_as}: counted there"
        sp = "—" if not math.isfinite(p.smallest_p) else f"{p.smallest_p:.3g}"
        kind = "—" if not p.n else ("independent groups" if " vs " in p.n else "paired, one number per seed")
        lines.append(f"| {p.id} | {kind} | {p.n or '—'} | {sp} | {ok} |")
    return "\n".join(lines)


__all__ = ["ClaimPlan", "markdown", "plan", "plan_claim", "plan_row", "same_tests", "shared_parts", "summary"]
