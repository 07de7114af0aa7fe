"""Which runs a claim reads, and its units of replication (the statistics design of a claim).

The **unit** of a claim is the grid field whose values are independent replicates: the seed
(``unit = "seed"``, the default). Runs that share a seed share its initial network (``same_init``,
the default), its feedback matrices and its data order, so they are *not* independent: a test
receives **one number per unit per compared condition**. Levels a claim pools (data sets, depths,
variances …) are averaged within the unit first; two conditions measured on the same units are
compared unit by unit (paired); only conditions on disjoint units (or ``same_init = false``,
where every method draws its own network) are compared as independent groups.

**Identical runs** — the same trained network by construction, e.g. σ = 0 under Gaussian and
uniform noise (no noise is no noise) — are detected from what the runs recorded (every epoch's
numbers equal: the row's ``fingerprint``, see :mod:`prealign.experiments.runner`) and kept once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError

SIDE_KEYS = {"metric", "minus"}
UNIT = "seed"


class MissingData(Exception):
    """The data a claim needs is not in the results (not run, or the analysis was not produced)."""


def matches(row: dict, where: dict) -> bool:
    for k, v in where.items():
        rv = row.get(k)
        if isinstance(v, (int, float)) and isinstance(rv, (int, float)) and not isinstance(v, bool):
            if not math.isclose(float(rv), float(v), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif rv != v:
            return False
    return True


def finite(row: dict, metric: str) -> float | None:
    v = row.get(metric)
    if v is None or isinstance(v, (str, bool)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass
class Side:
    """The runs one side of a claim selects: ``pairs`` = ``[(run row, partner row or None)]``
    (the partner of ``minus``; the run itself when ``minus`` only names another metric)."""

    spec: dict
    metric: str
    partner_metric: str
    pairs: list = field(default_factory=list)
    with_partner: bool = False

    def rows(self) -> list[dict]:
        return [r for r, _ in self.pairs]

    def partners(self) -> list[dict]:
        return [p for _, p in self.pairs if p is not None and p is not _SELF]

    def values(self, unit: str = UNIT) -> tuple[dict, int]:
        """``({unit value: mean over its runs}, identical runs dropped)`` of ``metric`` (minus the
        partner's ``partner_metric``): identical runs are kept once, the pooled levels averaged
        within each unit. MissingData when no run has a finite value."""
        per_unit: dict = {}
        seen, dropped = set(), 0
        for r, p in self.pairs:
            v = finite(r, self.metric)
            if v is None:
                continue
            if self.with_partner:
                partner = r if p is _SELF else p
                pv = finite(partner, self.partner_metric) if partner is not None else None
                if pv is None:
                    continue
                v -= pv
            ident = (r.get(unit), r.get("fingerprint"), (p or {}).get("fingerprint") if p is not _SELF else "self")
            if r.get("fingerprint") is not None and ident in seen:
                dropped += 1
                continue
            seen.add(ident)
            per_unit.setdefault(r.get(unit), []).append(v)
        if not per_unit:
            cond = ", ".join(f"{k}={v}" for k, v in self.spec.items() if k not in SIDE_KEYS)
            raise MissingData(f"no finite '{self.metric}' for {cond or 'any run'}"
                              + (f" with a partner {self.spec['minus']}" if self.with_partner else ""))
        return {u: sum(vs) / len(vs) for u, vs in per_unit.items()}, dropped


_SELF = object()  # the partner of ``minus = {metric = …}``: the run itself


class Data:
    """The result rows of an experiment (or its planned runs) and its grid axes (for pairing)."""

    def __init__(self, rows: list[dict], axes=None, unit: str = UNIT):
        self.rows = rows
        self.axes = list(axes) if axes is not None else [unit]
        self.unit = unit

    def resolve(self, where: dict) -> dict:
        """Replace ``"@max"`` / ``"@min"`` by the largest / smallest value of that field."""
        out = {}
        for k, v in where.items():
            if v in ("@max", "@min"):
                vals = [r[k] for r in self.rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
                if not vals:
                    raise MissingData(f"no runs with a numeric '{k}' for {v}")
                v = max(vals) if v == "@max" else min(vals)
            out[k] = v
        return out

    def cell(self, row: dict, skip=None) -> tuple:
        """The row's grid labels except the unit (and ``skip``): the condition it belongs to."""
        skip = (self.unit, *(skip or ()))
        return tuple((a, row.get(a)) for a in self.axes if a not in skip)

    def side(self, metric: str, spec: dict) -> Side:
        """The runs ``spec`` selects (``{field: value}``, ``metric``, ``minus``), each with its partner:
        the run that agrees on every grid axis except the ones ``minus`` sets."""
        metric = spec.get("metric", metric)
        where = self.resolve({k: v for k, v in spec.items() if k not in SIDE_KEYS})
        minus = dict(spec.get("minus") or {})
        partner_metric = minus.pop("metric", metric)
        minus = self.resolve(minus)
        side = Side(spec, metric, partner_metric, with_partner=spec.get("minus") is not None)
        for r in self.rows:
            if not matches(r, where):
                continue
            partner = None
            if side.with_partner:
                if not minus:
                    partner = _SELF
                else:
                    key = self.cell(r, skip=tuple(minus))
                    found = [p for p in self.rows if matches(p, minus) and self.cell(p, skip=tuple(minus)) == key
                             and p.get(self.unit) == r.get(self.unit)]
                    if len(found) > 1:
                        raise ConfigError(f"minus = {spec['minus']} matches {len(found)} runs for one run; "
                                          "pairing needs exactly one partner (add the axis that tells them apart)")
                    partner = found[0] if found else None
            side.pairs.append((r, partner))
        return side

    def trend(self, metric: str, x: str, spec: dict) -> Side:
        """The runs of a trend over ``x`` (those with a numeric ``x``)."""
        side = self.side(metric, spec)
        side.pairs = [(r, p) for r, p in side.pairs if finite(r, x) is not None]
        return side


def count_text(n: int, unit: str = UNIT) -> str:
    """``"1 seed"``, ``"5 seeds"``."""
    return f"{n} {unit}{'' if n == 1 else 's'}"


def trend_values(side: Side, x: str, unit: str = UNIT) -> dict:
    """``{unit: [(x level, mean metric at that level)]}`` — levels averaged within the unit."""
    cells: dict = {}
    seen = set()
    for r, _ in side.pairs:
        v = finite(r, side.metric)
        if v is None:
            continue
        ident = (r.get(unit), r.get("fingerprint"))
        if r.get("fingerprint") is not None and ident in seen:
            continue
        seen.add(ident)
        cells.setdefault(r.get(unit), {}).setdefault(finite(r, x), []).append(v)
    return {u: sorted((lvl, sum(vs) / len(vs)) for lvl, vs in by.items()) for u, by in cells.items()}


def unit_count(side: Side, unit: str = UNIT) -> set:
    """The units a side's runs (and partners) cover, whatever their metrics (for the design)."""
    units = {r.get(unit) for r, p in side.pairs if not side.with_partner or p is not None}
    return {u for u in units if u is not None}


def run_keys(side: Side) -> list:
    """``[(run key, partner key)]`` of a side, sorted: what a claim's numbers are made of."""
    out = []
    for r, p in side.pairs:
        pk = "self" if p is _SELF else (p.get("run_key") if p is not None else None)
        out.append((str(r.get("run_key")), str(pk)))
    return sorted(out)


__all__ = ["Data", "MissingData", "SIDE_KEYS", "Side", "UNIT", "count_text", "finite", "matches", "run_keys", "trend_values",
           "unit_count"]
