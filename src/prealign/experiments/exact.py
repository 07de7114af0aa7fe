"""Exact claims (``test = "exact"``): a ``check`` expression over deterministic quantities.

Only for quantities without seed noise (e.g. a count of weight reads): every value it reads must
be identical across the runs it pools, else the verdict is inconclusive. The language:
``mean(metric, **where)``, ``std(...)`` (sample), ``median(...)``, ``count(**where)``,
``top(field, **where)``, ``bottom(...)``, ``abs``, ``min``, ``max``, arithmetic, comparisons,
``and``/``or``/``not`` — parsed with :mod:`ast` and evaluated over that whitelist, never ``eval``.
"""
from __future__ import annotations

import ast

import numpy as np

from .. import stats
from ..errors import ConfigError
from .units import MissingData, finite, matches


class Evaluator:
    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.numbers: list = []
        self.spread = 0.0

    def values(self, metric: str, where: dict) -> np.ndarray:
        vals = [v for r in self.rows if matches(r, where) and (v := finite(r, metric)) is not None]
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
        return sum(matches(r, where) for r in self.rows)

    def top(self, field, **where):
        vals = [r[field] for r in self.rows if matches(r, where) and isinstance(r.get(field), (int, float))]
        if not vals:
            raise MissingData(f"no runs with a numeric '{field}'")
        return max(vals)

    def bottom(self, field, **where):
        vals = [r[field] for r in self.rows if matches(r, where) and isinstance(r.get(field), (int, float))]
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
            if not all(isinstance(v, (int, float)) for v in (a, b)):  # no 'x' * 10**20: arithmetic on numbers only
                raise ConfigError(f"a claim's arithmetic takes numbers, got {type(a).__name__} and {type(b).__name__}")
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


def validate_check(check: str) -> None:
    """Raise ConfigError unless ``check`` parses as an exact-claim expression over the whitelist."""
    try:
        tree = ast.parse(check, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"claim check {check!r} is not a valid expression: {exc.msg}") from exc
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and
                                               node.func.id in Evaluator.FUNCS + ("abs", "min", "max")):
            raise ConfigError(f"claim check {check!r} calls a function that is not allowed")
        if isinstance(node, (ast.Attribute, ast.Subscript, ast.Lambda)):
            raise ConfigError(f"claim check {check!r} uses {type(node).__name__}, which is not allowed")
        # checked here, before any training, not when the claim is evaluated after it (issue 24)
        if isinstance(node, ast.BinOp) and not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            raise ConfigError(f"claim check {check!r} uses the operator {type(node.op).__name__}; only + - * / are allowed")
        if isinstance(node, ast.BinOp) and any(isinstance(side, (ast.List, ast.Tuple, ast.Dict, ast.JoinedStr)) or
                                               (isinstance(side, ast.Constant) and not _number(side.value))
                                               for side in (node.left, node.right)):
            raise ConfigError(f"claim check {check!r} does arithmetic on something other than a number")
        if isinstance(node, ast.Compare) and not all(isinstance(op, _COMPARISONS) for op in node.ops):
            raise ConfigError(f"claim check {check!r} uses a comparison other than < <= > >= == !=")
        if isinstance(node, ast.Name) and not any(isinstance(p, ast.Call) and p.func is node for p in ast.walk(tree)):
            raise ConfigError(f"claim check {check!r} names {node.id!r}, which is not a claim function; use one of "
                              f"{Evaluator.FUNCS + ('abs', 'min', 'max')}")
        if isinstance(node, (ast.JoinedStr, ast.NamedExpr, ast.IfExp, ast.ListComp, ast.SetComp, ast.DictComp,
                             ast.GeneratorExp, ast.Starred, ast.Set)):
            raise ConfigError(f"claim check {check!r} uses {type(node).__name__}, which is not allowed")


_COMPARISONS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluate(check: str, rows: list[dict]) -> tuple[str, list, str]:
    """``(status, numbers, reason)`` of an exact claim over ``rows``."""
    ev = Evaluator(rows)
    held = ev.eval(ast.parse(check, mode="eval"))
    if ev.spread > 0:
        return "inconclusive", ev.numbers, (f"the values vary between runs (range up to {ev.spread:.4g}); an exact "
                                            "check needs a deterministic quantity — declare a test")
    return ("held" if held else "not held"), ev.numbers, ""


__all__ = ["Evaluator", "evaluate", "validate_check"]
