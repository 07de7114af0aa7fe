"""Claims: a paper's statement checked against the results of a reproduction, with a declared test.

A verdict is **held**, **not held**, **inconclusive** or **not run** (data missing). It comes
from a declared statistical test, never from a bare comparison of means. A ``[[claim]]`` has
``id``, ``text`` and one of these shapes (all statistics from :mod:`prealign.stats`):

two groups      ``metric``, ``a``, ``b`` — is ``metric`` over the runs ``a`` larger than over ``b``?
                Exact Wilcoxon rank-sum test; effect = mean(a) − mean(b) − ``margin``.
one group       ``metric``, ``a``, ``value`` — is ``metric`` over ``a`` above ``value``? Exact
                Wilcoxon signed-rank test of the values − ``value``; effect = their mean.
trend           ``metric``, ``x`` (a grid axis), optional ``a`` — does ``metric`` rise with ``x``?
                Permutation test of Spearman ρ; effect = ρ.
exact           ``check`` (an expression, see below) with ``test = "exact"``: only for quantities
                without seed noise (e.g. a count of weight reads); every value it reads must be
                identical across the runs it pools, else the verdict is inconclusive.
compound        ``all = [{…}, …]`` (every part held) or ``any = [{…}, …]`` (some part held): parts
                are inline tables of the shapes above, inheriting the claim's keys.

``a`` / ``b`` select runs by ``{field = value}`` (grid labels, ``method`` such as ``"ifa@30"``,
config fields); ``"@max"`` / ``"@min"`` stand for the largest / smallest value of that field.
In a selection, ``metric = "…"`` reads another metric, and ``minus = {field = value, metric = …}``
turns each run's value into a paired difference: the run minus its partner that agrees on every
grid axis except the ones ``minus`` sets (e.g. ``minus = {method = "fa"}`` pairs each noise-
pretrained run with the FA run of the same seed, data set and depth).

Declared with each claim: ``test`` = ``"greater"`` (the default: a > b, value, or a rising trend)
| ``"less"`` | ``"two-sided"`` | ``"exact"``; ``alpha`` (default 0.05); ``min_effect`` (default 0,
trend 0.3 in ρ); ``margin`` (two groups: a − b is compared with it, e.g. −0.01 for "within one
point of BP or better"). The minimum effect actually used is ``max(min_effect, seed spread)``:
the pooled sample std over seeds of the values tested (within each cell of the other grid axes;
none with one seed per cell, where the declared minimum alone applies).

**held**: the test in the declared direction has p ≤ α *and* the effect ≥ the minimum effect.
**not held**: evidence against — significant (p ≤ α) in the opposite direction, or the 95 %
bootstrap interval of the effect lies wholly below the minimum effect (two-sided: inside
±minimum). **inconclusive** otherwise, with the reason (e.g. with 3 vs 3 seeds an exact
two-sided test can never reach 0.05). Every verdict carries the effect, its interval, the
minimum effect, p and the n per group.

The ``check`` language of exact claims: ``mean(metric, **where)``, ``std(...)`` (sample),
``median(...)``, ``count(**where)``, ``top(field, **where)``, ``bottom(...)``, ``abs``, ``min``,
``max``, arithmetic, comparisons, ``and``/``or``/``not`` — parsed with :mod:`ast` and evaluated
over that whitelist, never Python ``eval``.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field

import numpy as np

from .. import stats
from ..errors import ConfigError

STATUSES = ("held", "not held", "inconclusive", "not run")
TESTS = ("greater", "less", "two-sided", "exact")
CLAIM_KEYS = {"id", "text", "metric", "a", "b", "value", "x", "test", "alpha", "min_effect", "margin", "check",
              "all", "any", "note"}
SIDE_KEYS = {"metric", "minus"}
TREND_MIN_EFFECT = 0.3


class MissingData(Exception):
    """The data a claim needs is not in the results (not run, or the analysis was not produced)."""


@dataclass
class Verdict:
    """``status``: one of :data:`STATUSES`; ``numbers``: ``[(name, value)]`` (effect, CI, min effect,
    p, n…); ``test``: what was tested; ``stand_in``: the substitute data the check ran on, if any."""

    id: str
    text: str
    test: str
    status: str
    numbers: list = field(default_factory=list)
    reason: str = ""
    experiment: str = ""
    stand_in: str = ""

    def numbers_text(self) -> str:
        return "; ".join(f"{name} = {_fmt(v)}" for name, v in self.numbers)


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        return "—" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


# ------------------------------------------------------------------------------ declarations
def _kind(spec: dict) -> str:
    if "all" in spec or "any" in spec:
        return "compound"
    if "check" in spec:
        return "exact"
    if "x" in spec:
        return "trend"
    if "b" in spec:
        return "two-sample"
    if "value" in spec:
        return "one-sample"
    raise ConfigError(f"claim {spec.get('id', '?')!r} declares no test: give `metric` with `a` and `b` (two groups), "
                      "`a` and `value` (one group), `x` (trend), `check` with test = \"exact\", or `all`/`any`")


def validate(claim: dict, where: str = "claim") -> None:
    """Raise ConfigError unless ``claim`` is a complete declaration (see the module docstring)."""
    unknown = set(claim) - CLAIM_KEYS
    if unknown:
        raise ConfigError(f"{where} {claim.get('id', '?')!r}: unknown key(s) {sorted(unknown)}; valid: {sorted(CLAIM_KEYS)}")
    kind = _kind(claim)
    test = claim.get("test", "greater")
    if test not in TESTS:
        raise ConfigError(f"{where} {claim.get('id', '?')!r}: test = {test!r}; use one of {TESTS}")
    if (kind == "exact") != (test == "exact"):
        raise ConfigError(f"{where} {claim.get('id', '?')!r}: a `check` expression needs test = \"exact\" (deterministic "
                          "quantities only) and test = \"exact\" needs a `check`; noisy metrics need a statistical test")
    alpha = claim.get("alpha", 0.05)
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ConfigError(f"{where} {claim.get('id', '?')!r}: alpha must be in (0, 1), got {alpha!r}")
    if kind == "compound":
        parts = claim.get("all", claim.get("any"))
        if not isinstance(parts, list) or not parts or ("all" in claim and "any" in claim):
            raise ConfigError(f"{where} {claim.get('id', '?')!r}: give one non-empty list `all` or `any`")
        inherit = {k: v for k, v in claim.items() if k not in ("all", "any", "id", "text", "note")}
        for part in parts:
            if not isinstance(part, dict):
                raise ConfigError(f"{where} {claim.get('id', '?')!r}: each part of all/any is an inline table")
            validate({**inherit, "id": claim.get("id", "?"), **part}, where)
        return
    if kind == "exact":
        _validate_check(claim["check"])
        return
    if "metric" not in claim and not all("metric" in claim.get(s, {}) for s in ("a", "b") if s in claim):
        raise ConfigError(f"{where} {claim.get('id', '?')!r}: needs `metric`")
    for side in ("a", "b"):
        if side in claim and not isinstance(claim[side], dict):
            raise ConfigError(f"{where} {claim.get('id', '?')!r}: `{side}` must be a table of field = value")


def describe(claim: dict) -> str:
    """One line saying what is tested: ``best_test_acc: method=ifa > method=fa (rank-sum, one-sided, α=0.05)``."""
    kind = _kind(claim)
    if kind == "compound":
        inherit = {k: v for k, v in claim.items() if k not in ("all", "any", "id", "text", "note")}
        joiner = " and " if "all" in claim else " or "
        return joiner.join(f"({describe({**inherit, **p})})" for p in claim.get("all", claim.get("any", [])))
    if kind == "exact":
        return f"exact: {claim['check']}"
    test, alpha = claim.get("test", "greater"), claim.get("alpha", 0.05)
    op = {"greater": ">", "less": "<", "two-sided": "≠"}[test]
    sided = "two-sided" if test == "two-sided" else "one-sided"
    metric = claim.get("metric", "")

    def sel(side):
        s = claim.get(side, {})
        txt = ", ".join(f"{k}={v}" for k, v in s.items() if k not in SIDE_KEYS) or "all runs"
        if "metric" in s:
            txt = f"{s['metric']} of {txt}"
        if "minus" in s:
            txt += " minus its " + ", ".join(f"{k}={v}" for k, v in s["minus"].items())
        return txt

    margin = claim.get("margin", 0.0)
    if kind == "two-sample":
        shift = f" {margin:+g}" if margin else ""
        body = f"{metric}: {sel('a')} {op} {sel('b')}{shift} (rank-sum"
    elif kind == "one-sample":
        body = f"{metric}: {sel('a')} {op} {claim['value']:g} (signed-rank"
    else:
        body = f"{metric} {'rises' if test == 'greater' else 'falls' if test == 'less' else 'changes'} with " \
               f"{claim['x']} over {sel('a')} (Spearman permutation"
    return f"{body}, {sided}, α={alpha:g})"


# ------------------------------------------------------------------------------ selections
def _matches(row: dict, where: dict) -> bool:
    for k, v in where.items():
        rv = row.get(k)
        if isinstance(v, (int, float)) and isinstance(rv, (int, float)) and not isinstance(v, bool):
            if not math.isclose(float(rv), float(v), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif rv != v:
            return False
    return True


def _finite(row: dict, metric: str) -> float | None:
    v = row.get(metric)
    if v is None or isinstance(v, (str, bool)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class _Data:
    """The result rows of an experiment and its grid axes (for pairing and for seed cells)."""

    def __init__(self, rows: list[dict], axes):
        self.rows = rows
        self.axes = list(axes) if axes is not None else ["seed"]

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

    def cell(self, row: dict, skip=("seed",)) -> tuple:
        return tuple((a, row.get(a)) for a in self.axes if a not in skip)

    def side(self, metric: str, spec: dict) -> tuple[list[float], list[tuple]]:
        """Values of ``metric`` over the runs ``spec`` selects (paired differences with ``minus``)
        and each value's cell (its grid labels other than the seed)."""
        metric = spec.get("metric", metric)
        where = self.resolve({k: v for k, v in spec.items() if k not in SIDE_KEYS})
        rows = [r for r in self.rows if _matches(r, where)]
        minus = dict(spec.get("minus", {}))
        partner_metric = minus.pop("metric", metric)
        minus = self.resolve(minus)
        values, cells = [], []
        for r in rows:
            v = _finite(r, metric)
            if v is None:
                continue
            if spec.get("minus") is not None:
                key = self.cell(r, skip=tuple(minus))
                partners = [p for p in self.rows if _matches(p, minus) and self.cell(p, skip=tuple(minus)) == key]
                if len(partners) > 1:
                    raise ConfigError(f"minus = {spec['minus']} matches {len(partners)} runs for one run; "
                                      "pairing needs exactly one partner (add the axis that tells them apart)")
                pv = _finite(partners[0], partner_metric) if partners else None
                if pv is None:
                    continue
                v -= pv
            values.append(v)
            cells.append(self.cell(r))
        if not values:
            cond = ", ".join(f"{k}={v}" for k, v in where.items())
            raise MissingData(f"no finite '{metric}' for {cond or 'any run'}"
                              + (f" with a partner {spec['minus']}" if spec.get("minus") is not None else ""))
        return values, cells


def _seed_spread(*sides: tuple[list[float], list[tuple]]) -> float:
    """Pooled sample std over seeds within each cell (other grid axes equal), all sides together."""
    groups: dict = {}
    for i, (values, cells) in enumerate(sides):
        for v, c in zip(values, cells):
            groups.setdefault((i, c), []).append(v)
    return stats.pooled_std(list(groups.values()))


# ------------------------------------------------------------------------------ decisions
@dataclass
class _Outcome:
    status: str
    numbers: list
    reason: str = ""


def _decide(*, test, alpha, effect, ci, min_effect, p, p_opposite, smallest_p, n_text) -> tuple[str, str]:
    """The three-valued rule of the module docstring; returns ``(status, reason)``."""
    lo, hi = ci
    if not math.isfinite(p):
        return "inconclusive", f"no test with n = {n_text} (each group needs at least 2 values)"
    if p <= alpha and effect >= min_effect:
        return "held", ""
    if test != "two-sided" and math.isfinite(p_opposite) and p_opposite <= alpha:
        return "not held", f"significant in the opposite direction (p = {stats.fmt_p(p_opposite)})"
    if math.isfinite(hi) and (hi < min_effect if test != "two-sided" else (-min_effect < lo and hi < min_effect)):
        return "not held", (f"the 95% interval [{lo:.4g}, {hi:.4g}] of the effect lies below the minimum effect "
                            f"{min_effect:.4g}")
    if smallest_p > alpha:
        return "inconclusive", (f"with n = {n_text} the exact test can never reach p ≤ {alpha:g} (smallest possible "
                                f"p = {smallest_p:.3g}); more seeds needed")
    if p > alpha:
        return "inconclusive", f"not significant (p = {stats.fmt_p(p)} > α = {alpha:g})"
    return "inconclusive", f"significant, but the effect {effect:.4g} is below the minimum effect {min_effect:.4g}"


def _opposite(test: str) -> str:
    return {"greater": "less", "less": "greater", "two-sided": "two-sided"}[test]


def _group_test(claim: dict, data: _Data) -> _Outcome:
    kind = _kind(claim)
    test, alpha = claim.get("test", "greater"), float(claim.get("alpha", 0.05))
    metric = claim.get("metric", "")
    sign = -1.0 if test == "less" else 1.0
    declared = float(claim.get("min_effect", TREND_MIN_EFFECT if kind == "trend" else 0.0))
    if kind == "two-sample":
        a, b = data.side(metric, claim["a"]), data.side(metric, claim["b"])
        xa, xb = np.asarray(a[0]), np.asarray(b[0]) + float(claim.get("margin", 0.0))
        diff = float(xa.mean() - xb.mean())
        p = stats.ranksum(xa, xb, test)
        p_opp = stats.ranksum(xa, xb, _opposite(test)) if test != "two-sided" else float("nan")
        ci = stats.bootstrap_ci(lambda u, v: sign * (u.mean() - v.mean()), [xa, xb])
        spread = _seed_spread(a, b)
        smallest = stats.min_p("two-sample", xa.size, xb.size, test)
        n_text = f"{xa.size} vs {xb.size}"
        head = [("mean a", float(np.mean(a[0]))), ("mean b", float(np.mean(b[0])))]
    elif kind == "one-sample":
        a = data.side(metric, claim.get("a", {}))
        d = np.asarray(a[0]) - float(claim["value"])
        diff = float(d.mean())
        p = stats.signed_rank(d, test)
        p_opp = stats.signed_rank(d, _opposite(test)) if test != "two-sided" else float("nan")
        ci = stats.bootstrap_ci(lambda u: sign * u.mean(), [d])
        spread = _seed_spread(a)
        smallest = stats.min_p("one-sample", d.size, alternative=test)
        n_text = str(d.size)
        head = [("mean", float(np.mean(a[0])))]
    else:  # trend
        where = data.resolve(claim.get("a", {}))
        xs, ys = [], []
        for r in data.rows:
            if _matches(r, where) and _finite(r, claim["x"]) is not None and _finite(r, metric) is not None:
                xs.append(_finite(r, claim["x"]))
                ys.append(_finite(r, metric))
        if len(xs) < 3 or len(set(xs)) < 2:
            raise MissingData(f"a trend of {metric} over {claim['x']} needs at least 3 runs over 2+ values of {claim['x']}")
        rho, p = stats.spearman_trend(xs, ys, test)
        if not math.isfinite(rho):
            raise MissingData(f"the trend of {metric} over {claim['x']} is undefined (a constant series)")
        p_opp = stats.spearman_trend(xs, ys, _opposite(test))[1] if test != "two-sided" else float("nan")
        diff = rho
        ci = stats.bootstrap_ci(lambda u, v: sign * stats.spearman(u, v), [xs, ys], paired=True)
        spread = float("nan")
        smallest = stats.min_p("trend", len(xs), alternative=test)
        n_text = str(len(xs))
        head = [("rho", rho)]
    effect = abs(diff) if test == "two-sided" else sign * diff
    min_effect = max(declared, spread) if math.isfinite(spread) else declared
    status, reason = _decide(test=test, alpha=alpha, effect=effect, ci=ci, min_effect=min_effect, p=p,
                             p_opposite=p_opp, smallest_p=smallest, n_text=n_text)
    numbers = head + [("effect", effect), ("95% CI", ci), ("min effect", min_effect),
                      ("p", p if math.isfinite(p) else float("nan")), ("n", n_text)]
    return _Outcome(status, numbers, reason)


def _exact(claim: dict, data: _Data) -> _Outcome:
    ev = _Evaluator(data.rows)
    held = ev.eval(ast.parse(claim["check"], mode="eval"))
    if ev.spread > 0:
        return _Outcome("inconclusive", ev.numbers, f"the values vary between runs (range up to {ev.spread:.4g}); an "
                                                    "exact check needs a deterministic quantity — declare a test")
    return _Outcome("held" if held else "not held", ev.numbers)


def _combine(mode: str, outcomes: list[_Outcome]) -> _Outcome:
    """``all``: held iff every part held, not held if any part is; ``any``: held if some part is,
    not held iff every part is; otherwise not run (missing data) or inconclusive."""
    st = [o.status for o in outcomes]
    numbers = [(f"[{i + 1}] {name}", v) for i, o in enumerate(outcomes) for name, v in o.numbers]
    reasons = "; ".join(f"[{i + 1}] {o.status}" + (f": {o.reason}" if o.reason else "") for i, o in enumerate(outcomes))
    win, lose = ("held", "not held") if mode == "any" else ("not held", "held")
    if win in st:
        return _Outcome(win, numbers, reasons)
    if all(s == lose for s in st):
        return _Outcome(lose, numbers, reasons)
    return _Outcome("not run" if "not run" in st else "inconclusive", numbers, reasons)


def _evaluate(claim: dict, data: _Data) -> _Outcome:
    kind = _kind(claim)
    if kind == "compound":
        mode = "all" if "all" in claim else "any"
        inherit = {k: v for k, v in claim.items() if k not in ("all", "any", "note")}
        return _combine(mode, [_evaluate({**inherit, **part}, data) for part in claim[mode]])
    try:
        return _exact(claim, data) if kind == "exact" else _group_test(claim, data)
    except MissingData as exc:
        return _Outcome("not run", [], str(exc))


def check_claim(claim: dict, rows: list[dict], experiment: str = "", *, axes=None, stand_in: str = "") -> Verdict:
    """Evaluate one ``[[claim]]`` over ``rows`` (one dict per finished run); ``axes``: the grid
    axes of the experiment (pairing and seed cells; default ``["seed"]``). Missing data gives
    ``not run``; an invalid declaration raises ConfigError."""
    validate(claim)
    out = _evaluate(claim, _Data(rows, axes))
    return Verdict(id=claim["id"], text=claim["text"], test=describe(claim), status=out.status, numbers=out.numbers,
                   reason=out.reason, experiment=experiment, stand_in=stand_in)


# ------------------------------------------------------------------------------ exact checks
class _Evaluator:
    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.numbers: list = []
        self.spread = 0.0

    def values(self, metric: str, where: dict) -> np.ndarray:
        vals = [v for r in self.rows if _matches(r, where) and (v := _finite(r, metric)) is not None]
        if not vals:
            cond = ", ".join(f"{k}={v}" for k, v in where.items())
            raise MissingData(f"no finite '{metric}' for {cond or 'any run'}")
        a = np.asarray(vals)
        self.spread = max(self.spread, float(np.ptp(a)))
        return a

    def mean(self, metric, **where):
        return stats.mean_std(self.values(metric, where))[0]

    def std(self, metric, **where):
        return stats.mean_std(self.values(metric, where))[1]

    def median(self, metric, **where):
        return float(np.median(self.values(metric, where)))

    def count(self, **where):
        return sum(_matches(r, where) for r in self.rows)

    def top(self, field, **where):
        vals = [r[field] for r in self.rows if _matches(r, where) and isinstance(r.get(field), (int, float))]
        if not vals:
            raise MissingData(f"no runs with a numeric '{field}'")
        return max(vals)

    def bottom(self, field, **where):
        vals = [r[field] for r in self.rows if _matches(r, where) and isinstance(r.get(field), (int, float))]
        if not vals:
            raise MissingData(f"no runs with a numeric '{field}'")
        return min(vals)

    FUNCS = ("mean", "std", "median", "count", "top", "bottom")

    def eval(self, node):
        if isinstance(node, ast.Expression):
            return self.eval(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Dict):
            return {self.eval(k): self.eval(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.eval(e) for e in node.elts]
        if isinstance(node, ast.UnaryOp):
            v = self.eval(node.operand)
            ops = {ast.USub: lambda a: -a, ast.UAdd: lambda a: a, ast.Not: lambda a: not a}
            return ops[type(node.op)](v)
        if isinstance(node, ast.BinOp):
            a, b = self.eval(node.left), self.eval(node.right)
            ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.Div: lambda: a / b}
            if type(node.op) not in ops:
                raise ConfigError(f"operator {type(node.op).__name__} is not allowed in a claim")
            return ops[type(node.op)]()
        if isinstance(node, ast.BoolOp):
            vals = [self.eval(v) for v in node.values]
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.Compare):
            left = self.eval(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = self.eval(right_node)
                ok = {ast.Lt: left < right, ast.LtE: left <= right, ast.Gt: left > right,
                      ast.GtE: left >= right, ast.Eq: left == right, ast.NotEq: left != right}.get(type(op))
                if ok is None:
                    raise ConfigError(f"comparison {type(op).__name__} is not allowed in a claim")
                if not ok:
                    return False
                left = right
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            args = [self.eval(a) for a in node.args]
            kwargs = {k.arg: self.eval(k.value) for k in node.keywords}
            if name in ("abs", "min", "max"):
                return {"abs": abs, "min": min, "max": max}[name](*args)
            if name not in self.FUNCS:
                raise ConfigError(f"function {name}() is not allowed in a claim; use one of {self.FUNCS}")
            value = getattr(self, name)(*args, **kwargs)
            shown = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
            self.numbers.append((f"{name}({shown})", value))
            return value
        raise ConfigError(f"'{ast.dump(node)[:60]}' is not allowed in a claim expression")


def _validate_check(check: str) -> None:
    """Raise ConfigError unless ``check`` parses as an exact-claim expression over the whitelist."""
    try:
        tree = ast.parse(check, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"claim check {check!r} is not a valid expression: {exc.msg}") from exc
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and
                                               node.func.id in _Evaluator.FUNCS + ("abs", "min", "max")):
            raise ConfigError(f"claim check {check!r} calls a function that is not allowed")
        if isinstance(node, (ast.Attribute, ast.Subscript, ast.Lambda)):
            raise ConfigError(f"claim check {check!r} uses {type(node).__name__}, which is not allowed")


# ------------------------------------------------------------------------------ checklist
MARKS = {"held": "✅ held", "not held": "❌ not held", "inconclusive": "❔ inconclusive", "not run": "⏸ not run"}


def checklist_markdown(verdicts: list[Verdict]) -> str:
    """The claims checklist: one row per claim — verdict, the declared test, its numbers and
    reason, and the stand-in data it was checked on."""
    lines = ["| experiment | claim | verdict | test | numbers | data |", "|---|---|---|---|---|---|"]
    for v in verdicts:
        nums = v.numbers_text() + (f" — {v.reason}" if v.reason else "")
        data = f"stand-in: {v.stand_in}" if v.stand_in else "as in the paper"
        cells = [v.experiment, f"**{v.id}**: {v.text}", MARKS[v.status], v.test, nums, data]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    counts = {s: sum(v.status == s for v in verdicts) for s in MARKS}
    lines += ["", ", ".join(f"{counts[s]} {s}" for s in MARKS) + f" (of {len(verdicts)} claims).", "",
              "held: the declared test is significant (p ≤ α) in the claimed direction and the effect is at least the "
              "minimum effect (the declared one or the seed-to-seed spread, whichever is larger); not held: evidence "
              "against (significant the other way, or the 95% bootstrap interval below the minimum effect); "
              "inconclusive: neither. See docs/reproduce.md."]
    return "\n".join(lines)
