"""Figures of an experiment drawn from its result rows and per-epoch curves (the ``[[output]]``
kinds ``curves``, ``alignment``, ``line``, ``heatmap``, ``series``, ``corruption_gap``; see
:mod:`prealign.experiments.outputs`). Each reads the runs (:mod:`.rowdata`), draws through
:mod:`prealign.viz`, and adds to the report's notes what a reader must know to read it: factor
levels a band pools, series that coincide, why an axis is flat.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import stats
from ..viz.panels import band, draw_series, plot_heatmaps, series_legend
from ..viz.style import integer_epochs, legend_outside, method_styles, pyplot, shared_norm
from .analyses import Unavailable
from .describe import run_layer_titles
from .rowdata import (find, groups, is_pct, key, label, note_once, num, points, pooled, pooled_text, save, stack,
                      title)

SCALE_FREE = ("adam", "adamw")  # optimizers whose step does not see a constant scale of a parameter's gradient


def curves(out, ctx, path: Path) -> str:
    """Mean ± std bands per ``group`` over epochs: one row of panels per ``facet`` value, one column
    per metric. A grid axis the bands would pool (S7's data sets) becomes the columns when one
    metric is drawn (``split`` names it; ``split = false`` keeps it pooled), else the panel titles
    and the report say what is pooled."""
    metrics = out.get("metrics", ["train_acc", "train_loss", "test_acc", "test_loss"])
    group, facet = out.get("group", "method"), out.get("facet")
    runs = ctx.done_runs()
    pool = pooled(runs, group, *([facet] if facet else []))
    split = out.get("split", next(iter(pool), None) if len(metrics) == 1 else None)
    split = split if split in pool else None
    rest = {a: v for a, v in pool.items() if a != split}
    facets = groups(runs, facet) if facet else {"": runs}
    cols = [(m, v) for m in metrics for v in (pool[split] if split else [None])]
    plt = pyplot()
    fig, axes = plt.subplots(len(facets), len(cols), figsize=(3.6 * len(cols), 2.9 * len(facets)), squeeze=False)
    drawn = False
    styles = method_styles(groups(runs, group))
    for i, (fval, fruns) in enumerate(facets.items()):
        for j, (metric, sval) in enumerate(cols):
            ax = axes[i, j]
            sub = [r for r in fruns if split is None or _axis(r, split) == sval]
            grouped = groups(sub, group)
            for gval in [g for g in styles if g in map(str, grouped)]:
                x, arr = stack(grouped[find(grouped, gval)], metric)
                if arr is not None:
                    band(ax, x, arr, gval, styles[gval], 100.0 if is_pct(metric) else 1.0)
                    drawn = True
            ax.set_xlabel("epoch")
            integer_epochs(ax)
            ax.set_ylabel(label(metric))
            parts = ([f"{facet} = {fval}"] if facet else []) + ([f"{split} = {sval}"] if split else [])
            parts += [pooled_text(rest)] if rest else []
            if parts:
                ax.set_title("\n".join(parts), fontsize=8)
            if metric.endswith("loss") and out.get("log_loss"):
                ax.set_yscale("log")
    legend_outside(fig)
    if not drawn:
        plt.close(fig)
        raise Unavailable(f"no values of {metrics} in the runs' curves")
    if rest:
        note_once(ctx, f"{title(out) or 'curves'}: each band is {pooled_text(rest)} (mean ± std over all those runs, "
                       "not over seeds alone)")
    return save(fig, path, out)


def _axis(run, axis):
    v = (getattr(run, "axes", None) or {}).get(axis)
    return v if isinstance(v, (int, float, str)) else str(v)


def alignment(out, ctx, path: Path) -> str:
    """∠(W, B) per layer over epochs, per group; panels titled by the layer's place and shape."""
    runs = ctx.done_runs()
    layers = sorted({k for r in runs for c in r.curves for k in c if k.startswith("angle/")},
                    key=lambda k: [int(t) if t.isdigit() else t for t in k.replace(".", "/").split("/")])
    if out.get("skip_first", True):
        layers = layers[1:]  # the first layer's B carries no learning signal (papers omit it)
    if out.get("layers") == "penultimate":
        layers = layers[-2:-1] or layers
    if not layers:
        raise Unavailable("no alignment angles in the curves (bp runs have none; fa/ifa/rnp runs needed)")
    names = run_layer_titles(ctx, runs)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(layers), figsize=(3.8 * len(layers), 3.0), squeeze=False)
    grouped = groups(runs, out.get("group", "method"))
    styles = method_styles(grouped)
    for ax, layer in zip(axes[0], layers):
        for gval, style in styles.items():
            x, arr = stack(grouped[find(grouped, gval)], layer)
            if arr is not None:
                band(ax, x, arr, gval, style)
        module = layer.split("/", 1)[1]
        ax.set_xlabel("epoch")
        ax.set_ylabel("alignment angle (degrees)")
        ax.set_title(names.get(module, f"module {module}"), fontsize=8)
        ax.set_ylim(0, 100)
        integer_epochs(ax)
    legend_outside(fig)
    return save(fig, path, out)


def line(out, ctx, path: Path) -> str:
    """Metric ``y`` against grid axis ``x``, one error-bar line per ``group``, none hidden by another."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    x, y = out["x"], out["y"]
    scale = 100.0 if is_pct(y) else 1.0
    grouped = groups(ctx.done_runs(), out.get("group"))
    found, ticks = {}, None
    for gval in method_styles(grouped):
        xs, m, s = points(grouped[find(grouped, gval)], x, y)
        if xs:
            numeric = all(isinstance(v, (int, float)) for v in xs)
            found[gval] = (xs if numeric else list(range(len(xs))), np.array(m) * scale, np.array(s) * scale)
            ticks = None if numeric else [str(v) for v in xs]
    if not found:
        plt.close(fig)
        raise Unavailable(f"no '{y}' values to plot")
    same = draw_series(ax, found, method_styles(found), log=bool(out.get("logx")), xname=out.get("xlabel", x),
                       ticks=ticks)
    ax.set_xlabel(out.get("xlabel", x))
    ax.set_ylabel(label(y))
    if "angle" in y:  # angles on their whole range, 90° = unaligned, as the alignment panels draw them
        top = max(float(np.nanmax(m + s)) for _, m, s in found.values())
        ax.set_ylim(0, max(100.0, top + 5))
        ax.axhline(90, color="0.5", lw=0.8, ls=":")
    if out.get("group"):
        series_legend(ax, same)
    for text in same:
        note_once(ctx, f"{title(out) or y}: {text} (the same runs' numbers, drawn once per series)")
    _say_pooled(ctx, out, ctx.done_runs(), x, out.get("group"))
    return save(fig, path, out)


def _say_pooled(ctx, out, runs, *fields):
    pool = pooled(runs, *[f for f in fields if f])
    if pool:
        note_once(ctx, f"{title(out) or 'figure'}: each point is {pooled_text(pool)}")


def heatmap(out, ctx, path: Path) -> str:
    """Mean of ``z`` over the (``x``, ``y``) grid, one panel per ``facet``; every cell's value written,
    the region at or above ``trainable`` (percent; default halfway from chance to 100 for an
    accuracy) outlined — IFA Fig. 3a's trainable region — and chance marked. When ``y`` is
    ``alpha_b`` and the runs use Adam, the report says why that axis is flat."""
    x, y, z = out["x"], out["y"], out["z"]
    runs = ctx.done_runs()
    facets = groups(runs, out.get("facet", "method"))
    xs = sorted({r.row.get(x) for r in runs}, key=key)
    ys = sorted({r.row.get(y) for r in runs}, key=key)
    scale = 100.0 if is_pct(z) else 1.0
    grids = {}
    for fval, fruns in facets.items():
        grid = np.full((len(ys), len(xs)), np.nan)
        for i, yv in enumerate(ys):
            for j, xv in enumerate(xs):
                vals = [float(r.row[z]) for r in fruns if r.row.get(x) == xv and r.row.get(y) == yv
                        and r.row.get(z) is not None]
                if vals:
                    grid[i, j] = np.nanmean(vals) * scale
        grids[str(fval)] = grid
    norm = shared_norm(list(grids.values()))  # one colour scale for all panels; the output's vmin/vmax override it
    norm.vmin = out.get("vmin", norm.vmin)
    norm.vmax = out.get("vmax", norm.vmax)
    chance = threshold = None
    if "acc" in z:
        chance = 100.0 / _classes(runs)
        threshold = float(out.get("trainable", chance + (100.0 - chance) / 2))
    path = plot_heatmaps(path, grids, xs, ys, norm, xlabel=out.get("xlabel", x), ylabel=out.get("ylabel", y),
                         zlabel=label(z), chance=chance, threshold=threshold, title=title(out) or None)
    if threshold is not None:
        note_once(ctx, f"{title(out)}: cells outlined in white reach ≥ {threshold:g} % {z.replace('_', ' ')} "
                       f"(trainable: halfway from chance, {chance:g} %, to 100 %); the red mark on the colour bar is chance")
    _flat_axis(ctx, out, runs, grids, y)
    return path.name


def _classes(runs) -> int:
    from ..data.registry import DATASETS

    found = {DATASETS[r.config["dataset"]].num_classes for r in runs if r.config.get("dataset") in DATASETS}
    return found.pop() if len(found) == 1 else 10


def _flat_axis(ctx, out, runs, grids, y):
    """Say how much the ``y`` axis moves the cells; for ``alpha_b`` under Adam, why it cannot (said once)."""
    spread = max((float(np.nanmax(g[:, j]) - np.nanmin(g[:, j])) for g in grids.values() for j in range(g.shape[1])
                  if np.isfinite(g[:, j]).sum() > 1), default=float("nan"))
    if not np.isfinite(spread):
        return
    unit = " points" if is_pct(out["z"]) else ""
    note_once(ctx, f"{title(out)}: {y} changes no cell by more than {spread:.3g}{unit} (largest spread along {y} "
                   f"at fixed {out['x']} and {out.get('facet', 'method')})")
    optimizers = {str(r.config.get("optimizer", "adam")) for r in runs}
    if y == "alpha_b" and optimizers <= set(SCALE_FREE):
        note_once(ctx, "Why α_B moves nothing under Adam: α_B only rescales B (every α_B draws the same direction, "
                       "B = √(α_B/n_in)·N(0, 1) from the seed), so it multiplies each hidden layer's error signal, and "
                       "hence that layer's gradient estimate, by a constant; Adam's step m̂/(√v̂ + ε) does not see a "
                       "constant scale of a parameter's gradient (up to ε), so the runs along an α_B column differ "
                       "only by float rounding. The α_W columns carry the comparison.")
    exp, budget = getattr(ctx, "experiment", None), getattr(ctx, "budget", None)
    if exp is not None and budget and budget != "paper":
        ours, theirs = exp.settings(budget)[0].get("epochs"), exp.settings("paper")[0].get("epochs")
        if ours != theirs:
            note_once(ctx, f"The paper's protocol is its {theirs}-epoch grid (`--budget paper`); this `{budget}` "
                           f"budget trains {ours} epochs, so a cell outside the outline may be one still learning.")


def series(out, ctx, path: Path) -> str:
    """Columns ``<prefix>@<value>`` (``fgsm@0.03``, ``corruption@2``) as a curve over the value, per group."""
    prefix = out["prefix"]
    runs = ctx.done_runs()
    cols = sorted({k for r in runs for k in r.row if k.startswith(prefix + "@")},
                  key=lambda k: key(num(k.split("@", 1)[1])))
    if not cols:
        raise Unavailable(f"no '{prefix}@…' columns (the analysis behind them was not produced)")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    xv = [num(c.split("@", 1)[1]) for c in cols]
    numeric = all(isinstance(v, (int, float)) for v in xv)
    pos = xv if numeric else list(range(len(xv)))
    grouped = groups(runs, out.get("group", "method"))
    found = {}
    for gval in method_styles(grouped):
        gruns = grouped[find(grouped, gval)]
        m, s = stats.mean_std_each([[r.row.get(c) for r in gruns] for c in cols], 0.0)
        found[gval] = (pos, m * 100, s * 100)
    same = draw_series(ax, found, method_styles(found), xname=out.get("xlabel", prefix),
                       ticks=None if numeric else [str(v) for v in xv])
    if not numeric:
        plt.setp(ax.get_xticklabels(), rotation=45, fontsize=7)
    ax.set_xlabel(out.get("xlabel", prefix))
    ax.set_ylabel(out.get("ylabel", "accuracy (%)"))
    series_legend(ax, same)
    _say_pooled(ctx, out, runs, out.get("group", "method"))
    return save(fig, path, out)


def corruption_gap(out, ctx, path: Path) -> str:
    """IFA Fig. 6c / S11 as the paper reads them: the accuracy each method *loses* to corruption
    (clean − corrupted, points, per seed then mean ± std) against severity, and per corruption type
    at ``severity`` (default 1) — not the corrupted accuracy itself, which mostly repeats the clean one."""
    from ..viz.robustness import plot_corruption_gap

    runs = [r for r in ctx.done_runs() if r.row.get("corruption_clean") is not None]
    if not runs:
        raise Unavailable("no corruption columns (the corruption analysis was not produced)")
    sev = int(out.get("severity", 1))
    sevs = sorted({int(k.split("@", 1)[1]) for r in runs for k in r.row if k.startswith("corruption@")})
    types = sorted({k[len("corruption_"):].split("@", 1)[0] for r in runs for k in r.row
                    if k.startswith("corruption_") and k.endswith(f"@{sev}") and not k.startswith("corruption_cat_")})
    per_method = {}
    for gval, gruns in groups(runs, out.get("group", "method")).items():
        clean = [float(r.row["corruption_clean"]) for r in gruns]
        per_method[str(gval)] = {"clean": clean,
                                 "severity": {s: [float(r.row[f"corruption@{s}"]) for r in gruns] for s in sevs},
                                 "types": {t: [float(r.row[f"corruption_{t}@{sev}"]) for r in gruns] for t in types}}
    plot_corruption_gap(path, per_method, sev, title=title(out) or None)
    gaps = []
    for m, d in per_method.items():
        drop = [100 * (c - v) for c, v in zip(d["clean"], d["severity"].get(sev, []))]
        gaps.append(f"{m} {stats.fmt_values(drop)} (clean {stats.fmt_values(d['clean'], 100)} %)")
    note_once(ctx, f"{title(out)}: accuracy lost to corruption at severity {sev} (clean − mean corrupted, "
                   "points, mean ± std over seeds): " + "; ".join(gaps))
    return path.name
