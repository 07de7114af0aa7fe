"""How the figures and tables of an experiment read its runs: groups, epoch stacks, points per
grid value, the factor levels a band pools, labels with units.

``runs`` are :class:`prealign.experiments.runner.RunInfo` (``row``: the result row, ``axes``: the
run's grid axes, ``curves``: its per-epoch records). Accuracies are fractions here; the figures
scale them to percent (:func:`is_pct`).
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .. import stats
from ..viz.style import save_figure, suptitle
from .analyses import Unavailable

PERCENT = ("acc", "ece", "confidence")  # metrics with these substrings are fractions shown in percent
REPLICATES = ("seed",)  # the grid axis whose values are replicates, never a pooled factor


def is_pct(metric: str) -> bool:
    return any(s in metric for s in PERCENT) or metric.split("@")[0] in ("fgsm", "bim", "pgd", "corruption", "ood")


def label(metric: str) -> str:
    units = " (%)" if is_pct(metric) else (" (degrees)" if "angle" in metric else "")
    return metric.replace("_", " ") + units


def key(v):
    """Sort key for mixed axis values: numbers in order, then strings."""
    return (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v))


def groups(runs, field) -> dict:
    out = defaultdict(list)
    for r in runs:
        out[r.row.get(field, "all") if field else "all"].append(r)
    return dict(sorted(out.items(), key=lambda kv: key(kv[0])))


def find(grouped: dict, shown: str):
    """The key of ``grouped`` whose ``str`` is ``shown`` (styles are keyed by the shown label)."""
    return next(k for k in grouped if str(k) == shown)


def pooled(runs, *fields) -> dict[str, list]:
    """``{grid axis: [its values]}`` for the axes other than the seed that take more than one value
    among runs sharing their ``fields`` values (one band, point or cell): the factor levels it would
    average together. An axis that only moves with a field (``method`` with ``angle``) pools nothing."""
    cells = defaultdict(lambda: defaultdict(set))
    for r in runs:
        cell = cells[tuple(str(r.row.get(f)) for f in fields if f)]
        for axis, v in (getattr(r, "axes", None) or {}).items():
            if axis not in REPLICATES and axis not in fields:
                cell[axis].add(v if isinstance(v, (int, float, str)) else str(v))
    out = defaultdict(set)
    for cell in cells.values():
        for axis, vs in cell.items():
            if len(vs) > 1:
                out[axis] |= vs
    return {a: sorted(vs, key=key) for a, vs in out.items()}


def pooled_text(pool: dict) -> str:
    """``"pooled over dataset ∈ {fashion-mnist, mnist5k}"`` (empty when nothing is pooled)."""
    if not pool:
        return ""
    return "pooled over " + "; ".join(f"{a} ∈ {{{', '.join(map(str, vs))}}}" for a, vs in pool.items())


def stack(runs, metric):
    """Epoch-aligned array (runs × epochs), NaN-padded, of ``metric`` from the runs' curves."""
    series = [[c.get(metric, math.nan) for c in r.curves] for r in runs if r.curves]
    if not series or all(all(v is None or (isinstance(v, float) and math.isnan(v)) for v in s) for s in series):
        return None, None
    length = max(len(s) for s in series)
    arr = np.full((len(series), length), np.nan)
    for i, s in enumerate(series):
        arr[i, :len(s)] = [np.nan if v is None else float(v) for v in s]
    return np.arange(length), arr


def points(runs, x, y):
    """``(x values, mean of y, sample std of y)`` per x value over ``runs``."""
    by = defaultdict(list)
    for r in runs:
        xv, yv = r.row.get(x), r.row.get(y)
        if xv is not None and yv is not None and math.isfinite(float(yv)):
            by[xv].append(float(yv))
    xs = sorted(by, key=key)
    mean, std = stats.mean_std_each([by[k] for k in xs], 0.0)
    return xs, list(mean), list(std)


def num(s):
    try:
        return float(s)
    except ValueError:
        return s


def artifact(ctx, name: str, what: str, analysis: str):
    """``ctx.artifacts[name]``; :class:`Unavailable` naming ``what`` is missing when the analysis left none."""
    found = ctx.artifacts.get(name)
    if not found:
        raise Unavailable(f"no {what} (the {analysis} analysis was not produced)")
    return found


def title(out: dict | None) -> str:
    """The figure title of an ``[[output]]``: its panel and title."""
    return " — ".join(str(out[k]) for k in ("panel", "title") if out and out.get(k))


def save(fig, path: Path, out: dict | None = None) -> str:
    if title(out):
        suptitle(fig, title(out), fontsize=9)
    return save_figure(fig, path).name


def note_once(ctx, text: str) -> None:
    """``ctx.note(text)`` unless the report has that note already (several panels may say it)."""
    notes = getattr(ctx, "notes", None)
    if notes is not None and text not in notes:
        ctx.note(text)
