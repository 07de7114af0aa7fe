"""Claims: a paper's statement checked against the results of a reproduction, with a declared test.

A verdict is **held**, **not held**, **inconclusive**, **undecidable** (the budget's design cannot
reach significance: a power statement, not a verdict) or **not run** (data missing, or the claim
is not checked at this budget). It comes from a declared exact test on **one number per unit of
replication** (the seed, :mod:`.units`), never from a bare comparison of means or from runs
counted twice. A ``[[claim]]`` has ``id``, ``text`` and one of these shapes:

two groups      ``metric``, ``a``, ``b`` — is ``metric`` over the runs ``a`` larger than over ``b``?
                Per seed: mean of a − mean of b (− ``margin``), exact signed-rank over seeds
                (rank-sum of the seed means when a and b share no seed or ``same_init = false``).
one group       ``metric``, ``a``, ``value`` — is ``metric`` over ``a`` above ``value``? Per seed:
                the mean − ``value``, exact signed-rank over seeds.
trend           ``metric``, ``x`` (a grid axis), optional ``a`` — does ``metric`` rise with ``x``?
                Per seed: Spearman ρ over the levels of ``x``; exact signed-rank of the ρ over seeds.
exact           ``check`` (an expression, :mod:`.exact`) with ``test = "exact"``: deterministic
                quantities only (e.g. a count of weight reads).
compound        ``all = [{…}, …]`` (every part held) or ``any = [{…}, …]`` (some part held): parts
                are inline tables of the shapes above, inheriting the claim's keys.

``a`` / ``b`` select runs by ``{field = value}`` (grid labels, ``method`` such as ``"ifa@30"``,
config fields); ``"@max"`` / ``"@min"`` stand for the largest / smallest value of that field.
In a selection, ``metric = "…"`` reads another metric, and ``minus = {field = value, metric = …}``
turns each run's value into a paired difference: the run minus its partner that agrees on every
grid axis (the seed included) except the ones ``minus`` sets.

Declared with each claim: ``test`` = ``"greater"`` (the default) | ``"less"`` | ``"two-sided"`` |
``"exact"``; ``alpha`` (default 0.05); ``min_effect`` (the claimed size: default 0, trend 0.3 in ρ);
``margin`` (two groups: a − b is compared with it, e.g. −0.01 for "within one point of BP or
better"); ``unit`` (default ``"seed"``); ``trained = false`` for a quantity measured before data
training (no run-health check, :mod:`.health`); ``learns = "somewhere"`` where a method may be
untrainable in some cells by the claim itself (IFA Fig. 3a); ``skip = {quick = "why"}`` for a
budget that cannot afford the claim (reported as not run, with the reason). The rule that turns
the test into a verdict is :mod:`.verdict`'s.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

from ..errors import ConfigError
from .exact import evaluate as evaluate_exact
from .exact import validate_check
from .units import SIDE_KEYS, UNIT, Data, MissingData
from .verdict import TREND_MIN_EFFECT, check_part
from .verdict import kind_of as _shape

STATUSES = ("held", "not held", "inconclusive", "undecidable", "not run")
TESTS = ("greater", "less", "two-sided", "exact")
CLAIM_KEYS = {"id", "text", "metric", "a", "b", "value", "x", "test", "alpha", "min_effect", "margin", "check",
              "all", "any", "note", "unit", "trained", "learns", "skip"}
INHERITED_NOT = ("all", "any", "id", "text", "note", "skip")

__all__ = ["CLAIM_KEYS", "CURVE_METRICS", "STATUSES", "TREND_MIN_EFFECT", "MissingData", "Verdict", "check_claim",
           "checklist_markdown", "describe", "part_signature", "parts", "signature", "validate"]


@dataclass
class Verdict:
    """``status``: one of :data:`STATUSES`; ``numbers``: ``[(name, value)]`` (effect, interval, p,
    n…); ``test``: what was tested; ``stand_in``: the substitute data, if any; ``parts``: per part
    the record :func:`prealign.experiments.audit.audit` re-checks (n units, seeds, smallest p,
    compared methods, runs read); ``same_as``: the claim this one repeats (same test on the same
    runs), which alone is counted; ``signature``: a hash of the test and the runs it read."""

    id: str
    text: str
    test: str
    status: str
    numbers: list = field(default_factory=list)
    reason: str = ""
    experiment: str = ""
    stand_in: str = ""
    parts: list = field(default_factory=list)
    same_as: str = ""
    signature: str = ""

    def numbers_text(self) -> str:
        return "; ".join(f"{name} = {_fmt(v)}" for name, v in self.numbers)

    def to_dict(self) -> dict:
        return {"id": self.id, "experiment": self.experiment, "text": self.text, "test": self.test,
                "status": self.status, "reason": self.reason, "numbers": [[k, _json(v)] for k, v in self.numbers],
                "stand_in": self.stand_in, "same_as": self.same_as, "signature": self.signature,
                "parts": [_json(p) for p in self.parts]}


def _json(v):
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return "—" if math.isnan(v) else f"{v:.4g}"
    return str(v)


# ------------------------------------------------------------------------------ declarations
def _kind(spec: dict) -> str:
    if "all" in spec or "any" in spec:
        return "compound"
    if "check" in spec:
        return "exact"
    if "x" in spec or "b" in spec or "value" in spec:
        return _shape(spec)
    raise ConfigError(f"claim {spec.get('id', '?')!r} declares no test: give `metric` with `a` and `b` (two groups), "
                      "`a` and `value` (one group), `x` (trend), `check` with test = \"exact\", or `all`/`any`")


def parts(claim: dict) -> list[dict]:
    """The claim's parts with the claim's keys inherited (one part for a simple claim)."""
    if _kind(claim) != "compound":
        return [claim]
    inherit = {k: v for k, v in claim.items() if k not in INHERITED_NOT}
    return [{**inherit, "id": claim.get("id", "?"), **p} for p in claim.get("all", claim.get("any", []))]


def validate(claim: dict, where: str = "claim") -> None:
    """Raise ConfigError unless ``claim`` is a complete declaration (see the module docstring)."""
    name = f"{where} {claim.get('id', '?')!r}"
    unknown = set(claim) - CLAIM_KEYS
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {sorted(unknown)}; valid: {sorted(CLAIM_KEYS)}")
    kind = _kind(claim)
    test = claim.get("test", "greater")
    if test not in TESTS:
        raise ConfigError(f"{name}: test = {test!r}; use one of {TESTS}")
    if (kind == "exact") != (test == "exact"):
        raise ConfigError(f"{name}: a `check` expression needs test = \"exact\" (deterministic quantities only) and "
                          "test = \"exact\" needs a `check`; noisy metrics need a statistical test")
    alpha = claim.get("alpha", 0.05)
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ConfigError(f"{name}: alpha must be in (0, 1), got {alpha!r}")
    if claim.get("learns", "each") not in ("each", "somewhere"):
        raise ConfigError(f"{name}: learns must be \"each\" or \"somewhere\", got {claim['learns']!r}")
    if not isinstance(claim.get("trained", True), bool) or not isinstance(claim.get("unit", UNIT), str):
        raise ConfigError(f"{name}: trained is true/false and unit a field name (default \"seed\")")
    skip = claim.get("skip", {})
    if not isinstance(skip, dict) or not all(isinstance(v, str) and v for v in skip.values()) or \
            set(skip) - {"smoke", "quick", "paper"}:
        raise ConfigError(f"{name}: skip = {{budget = \"why it cannot be checked there\"}} (smoke, quick, paper)")
    if kind == "compound":
        items = claim.get("all", claim.get("any"))
        if not isinstance(items, list) or not items or ("all" in claim and "any" in claim):
            raise ConfigError(f"{name}: give one non-empty list `all` or `any`")
        if not all(isinstance(p, dict) for p in items):
            raise ConfigError(f"{name}: each part of all/any is an inline table")
        for part in parts(claim):
            validate(part, where)
        return
    if kind == "exact":
        validate_check(claim["check"])
        return
    if "metric" not in claim and not all("metric" in claim.get(s, {}) for s in ("a", "b") if s in claim):
        raise ConfigError(f"{name}: needs `metric`")
    for side in ("a", "b"):
        if side in claim and not isinstance(claim[side], dict):
            raise ConfigError(f"{name}: `{side}` must be a table of field = value")


def describe(claim: dict) -> str:
    """One line saying what is tested: ``best_test_acc: method=ifa > method=fa, per seed (exact, one-sided, α=0.05)``."""
    kind = _kind(claim)
    if kind == "compound":
        joiner = " and " if "all" in claim else " or "
        return joiner.join(f"({describe(p)})" for p in parts(claim))
    if kind == "exact":
        return f"exact: {claim['check']}"
    test, alpha = claim.get("test", "greater"), claim.get("alpha", 0.05)
    op = {"greater": ">", "less": "<", "two-sided": "≠"}[test]
    sided = "two-sided" if test == "two-sided" else "one-sided"
    unit = claim.get("unit", UNIT)

    def sel(side):
        s = claim.get(side, {})
        txt = ", ".join(f"{k}={v}" for k, v in s.items() if k not in SIDE_KEYS) or "all runs"
        if "metric" in s:
            txt = f"{s['metric']} of {txt}"
        if "minus" in s:
            txt += " minus its " + ", ".join(f"{k}={v}" for k, v in s["minus"].items())
        return txt

    metric, margin = claim.get("metric", ""), claim.get("margin", 0.0)
    if kind == "two-sample":
        body = f"{metric}: {sel('a')} {op} {sel('b')}{f' {margin:+g}' if margin else ''}"
    elif kind == "one-sample":
        body = f"{metric}: {sel('a')} {op} {claim['value']:g}"
    else:
        verb = {"greater": "rises", "less": "falls", "two-sided": "changes"}[test]
        body = f"{metric} {verb} with {claim['x']} over {sel('a')} (Spearman ρ per {unit})"
    size = claim.get("min_effect")
    return f"{body}; one number per {unit}{f', by ≥ {size:g}' if size else ''} (exact signed-rank, {sided}, α={alpha:g})"


# ------------------------------------------------------------------------------ evaluation
# metrics computed from the per-epoch curves of plain training; any other metric depends on an
# analysis' parameters, which then belong to the identity of the test
CURVE_METRICS = {"best_test_acc", "final_test_acc", "final_train_acc", "max_train_acc", "max_test_acc",
                 "final_train_loss", "final_test_loss", "gen_error", "auc_test_acc", "best_epoch", "epochs_run",
                 "diverged", "init_angle", "final_angle", "late_gain", "angle", "train_size", "depth"}


def signature(payload) -> str:
    """A short hash of ``payload`` (JSON): the identity of a test and the runs it reads."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def part_signature(part: dict, record: dict, analyses=()) -> str:
    """The identity of one part: its declared test and the runs it reads (``record["runs"]``), plus
    the analyses' parameters when it reads an analysis' metric (or is an exact check)."""
    keys = ("metric", "a", "b", "value", "x", "test", "margin", "min_effect", "unit", "check")
    metrics = {part.get("metric"), part.get("x"), *(part.get(s, {}).get("metric") for s in ("a", "b")),
               *((part.get(s, {}).get("minus") or {}).get("metric") for s in ("a", "b"))} - {None}
    extra = list(analyses) if ("check" in part or metrics - CURVE_METRICS) else []
    return signature({"test": {k: part.get(k) for k in keys}, "runs": record.get("runs"), "analyses": extra})


def _evaluate_part(part: dict, rows: list[dict], axes, analyses) -> dict:
    data = Data(rows, axes, part.get("unit", UNIT))
    try:
        if _kind(part) == "exact":
            status, numbers, reason = evaluate_exact(part["check"], rows)
            record = {"status": status, "reason": reason, "numbers": numbers, "exact": True,
                      "runs": sorted(str(r.get("run_key")) for r in rows)}
        else:
            record = check_part(part, data)
    except MissingData as exc:
        record = {"status": "not run", "reason": str(exc), "numbers": [], "runs": []}
    record["signature"] = part_signature(part, record, analyses)
    return record


def _combine(mode: str, records: list[dict]) -> tuple[str, list, str]:
    """Parts → claim. Undecidable if any part is (neither verdict reachable on equal terms);
    ``all``: held iff every part held, not held if any part is; ``any``: held if some part is,
    not held iff every part is; otherwise not run (missing data) or inconclusive."""
    st = [r["status"] for r in records]
    numbers = [(f"[{i + 1}] {name}", v) for i, r in enumerate(records) for name, v in r["numbers"]]
    reasons = "; ".join(f"[{i + 1}] {r['status']}" + (f": {r['reason']}" if r["reason"] else "")
                        for i, r in enumerate(records))
    if "undecidable" in st:
        return "undecidable", numbers, reasons
    win, lose = ("held", "not held") if mode == "any" else ("not held", "held")
    if win in st:
        return win, numbers, reasons
    if all(s == lose for s in st):
        return lose, numbers, reasons
    return ("not run" if "not run" in st else "inconclusive"), numbers, reasons


def check_claim(claim: dict, rows: list[dict], experiment: str = "", *, axes=None, stand_in: str = "",
                budget: str | None = None, same_as: str = "", analyses=()) -> Verdict:
    """Evaluate one ``[[claim]]`` over ``rows`` (one dict per finished run); ``axes``: the grid
    axes of the experiment (pairing and cells; default ``[unit]``); ``budget``: the budget the
    rows come from (a claim may ``skip`` it); ``same_as``: the claim this one repeats (see
    :func:`prealign.experiments.design.same_tests`); ``analyses``: the experiment's analysis
    parameters (part of the identity of a test on an analysis' metric). Missing data gives
    ``not run``; an invalid declaration raises ConfigError."""
    validate(claim)
    v = Verdict(id=claim["id"], text=claim["text"], test=describe(claim), status="not run", experiment=experiment,
                stand_in=stand_in, same_as=same_as)
    if budget in claim.get("skip", {}):
        v.reason = f"not checked at the {budget} budget: {claim['skip'][budget]}"
        return v
    records = [_evaluate_part(p, rows, axes, analyses) for p in parts(claim)]
    if _kind(claim) == "compound":
        v.status, v.numbers, v.reason = _combine("all" if "all" in claim else "any", records)
    else:
        v.status, v.numbers, v.reason = records[0]["status"], records[0]["numbers"], records[0]["reason"]
    v.parts = [{k: r[k] for k in r if k not in ("numbers", "reason")} for r in records]
    v.signature = signature([r["signature"] for r in records])
    return v


# ------------------------------------------------------------------------------ checklist
MARKS = {"held": "✅ held", "not held": "❌ not held", "inconclusive": "❔ inconclusive",
         "undecidable": "⊘ undecidable", "not run": "⏸ not run"}
RULES = ("One number per seed (pooled levels averaged within the seed; identical runs kept once); exact tests. "
         "held: significant (p ≤ α) in the claimed direction and the effect at least the minimum effect (the "
         "claimed size or the seed-to-seed spread, whichever is larger); not held: the same evidence the other way "
         "(significantly below the claimed size, margin or direction); inconclusive: neither, or budget-limited (a "
         "compared method at chance, still improving, or stopped by patience at epoch ≤ 1); undecidable: the "
         "design's smallest p exceeds α — more seeds needed, not a verdict. See docs/reproduce.md.")


def checklist_markdown(verdicts: list[Verdict]) -> str:
    """The claims checklist: one row per claim — verdict, the declared test, its numbers and
    reason, and the stand-in data it was checked on. A claim that repeats another (same test on
    the same runs) points to it and is not counted again."""
    lines = ["| experiment | claim | verdict | test | numbers | data |", "|---|---|---|---|---|---|"]
    for v in verdicts:
        if v.same_as:
            mark, nums = f"↪ see **{v.same_as}**", f"the same test on the same runs as {v.same_as}; counted there"
        else:
            mark, nums = MARKS[v.status], v.numbers_text() + (f" — {v.reason}" if v.reason else "")
        data = f"stand-in: {v.stand_in}" if v.stand_in else "as in the paper"
        cells = [v.experiment, f"**{v.id}**: {v.text}", mark, v.test, nums, data]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    counted = [v for v in verdicts if not v.same_as]
    counts = {s: sum(v.status == s for v in counted) for s in MARKS}
    same = len(verdicts) - len(counted)
    lines += ["", ", ".join(f"{counts[s]} {s}" for s in MARKS) + f" (of {len(counted)} claims"
              + (f"; {same} row(s) repeat a claim above and are not counted" if same else "") + ").", "", RULES]
    return "\n".join(lines)
