"""Figures and tables of a reproduced experiment, mirroring the paper's panels.

Each ``[[output]]`` of an experiment file is one of:

``curves``    mean ± std (over seeds) per-epoch curves of ``metrics`` per ``group``, one row of
              panels per value of ``facet`` (optional)
``alignment`` the forward–feedback angle (degrees) per layer over epochs, per ``group``
``line``      metric ``y`` against grid axis ``x``, one line per ``group``, error bars = std
``heatmap``   mean of ``z`` over the (``x``, ``y``) grid, one panel per ``facet`` value
``series``    columns ``<prefix>@<value>`` (e.g. ``fgsm@0.03``) as a curve over the value, per ``group``
``density``   the Hessian spectral densities, per ``group``
``landscape`` the perturbed-loss surfaces, one panel per ``group``
``reliability`` / ``ood_roc`` / ``confidence_histograms``
              reliability diagram per ``group`` (needs the ``calibration`` analysis), ROC curves
              per OOD set and MSP histograms per ``group`` (need ``ood_detection``), from
              :mod:`prealign.viz.uncertainty`
``table``     markdown: ``metric`` mean ± sample std (n) per ``rows`` × ``cols``, with the exact
              two-sided rank-sum p against ``reference`` (a ``{field = value}`` table) in the same
              row/column cell, and the model-selection protocol of the runs
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .. import stats
from ..viz.geometry import plot_perturbed_surfaces, plot_trajectory_landscapes
from ..viz.robustness import plot_spectra
from ..viz.style import integer_epochs, legend_outside, method_styles, pyplot, save_figure, shared_colorbar, shared_norm
from .analyses import Unavailable

PERCENT = ("acc", "ece", "confidence")  # metrics with these substrings are fractions shown in percent


def _is_pct(metric: str) -> bool:
    return any(s in metric for s in PERCENT) or metric.split("@")[0] in ("fgsm", "bim", "pgd", "corruption", "ood")


def _label(metric: str) -> str:
    units = " (%)" if _is_pct(metric) else (" (degrees)" if "angle" in metric else "")
    return metric.replace("_", " ") + units


def _key(v):
    return (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v))


def _groups(runs, field):
    out = defaultdict(list)
    for r in runs:
        out[r.row.get(field, "all") if field else "all"].append(r)
    return dict(sorted(out.items(), key=lambda kv: _key(kv[0])))


def _find(groups: dict, label: str):
    """The key of ``groups`` whose ``str`` is ``label`` (styles are keyed by the shown label)."""
    return next(k for k in groups if str(k) == label)



def _artifact(ctx, key: str, what: str, analysis: str):
    """``ctx.artifacts[key]``; :class:`Unavailable` naming ``what`` is missing when the analysis left none."""
    found = ctx.artifacts.get(key)
    if not found:
        raise Unavailable(f"no {what} (the {analysis} analysis was not produced)")
    return found


def _title(out: dict | None) -> str:
    """The figure title of an ``[[output]]``: its panel and title."""
    return " — ".join(str(out[k]) for k in ("panel", "title") if out and out.get(k))


def _save(fig, path: Path, out: dict | None = None) -> str:
    if _title(out):
        fig.suptitle(_title(out), fontsize=9)
    return save_figure(fig, path).name


def _stack(runs, metric):
    """Epoch-aligned array (runs × epochs), NaN-padded, of ``metric`` from the runs' curves."""
    series = [[c.get(metric, math.nan) for c in r.curves] for r in runs if r.curves]
    if not series or all(all(v is None or (isinstance(v, float) and math.isnan(v)) for v in s) for s in series):
        return None, None
    length = max(len(s) for s in series)
    arr = np.full((len(series), length), np.nan)
    for i, s in enumerate(series):
        arr[i, :len(s)] = [np.nan if v is None else float(v) for v in s]
    epochs = np.arange(length)
    return epochs, arr


def _band(ax, x, arr, label, style, scale=1.0):
    m, s = stats.mean_std_each(arr.T, 0.0)
    m, s = m * scale, s * scale
    ax.plot(x, m, label=str(label), **style.kw(len(x)))
    ax.fill_between(x, m - s, m + s, alpha=0.15, color=style.color, lw=0)


def _group_styles(runs, field):
    """One style per value of ``field`` over all ``runs`` (the same in every facet/panel)."""
    return method_styles(_groups(runs, field))


def curves(out, ctx, path: Path) -> str:
    metrics = out.get("metrics", ["train_acc", "train_loss", "test_acc", "test_loss"])
    facets = _groups(ctx.done_runs(), out.get("facet")) if out.get("facet") else {"": ctx.done_runs()}
    plt = pyplot()
    fig, axes = plt.subplots(len(facets), len(metrics), figsize=(3.6 * len(metrics), 2.9 * len(facets)), squeeze=False)
    drawn = False
    styles = _group_styles(ctx.done_runs(), out.get("group", "method"))
    for i, (fval, fruns) in enumerate(facets.items()):
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            groups = _groups(fruns, out.get("group", "method"))
            for gval in [g for g in styles if g in map(str, groups)]:
                x, arr = _stack(groups[_find(groups, gval)], metric)
                if arr is not None:
                    _band(ax, x, arr, gval, styles[gval], 100.0 if _is_pct(metric) else 1.0)
                    drawn = True
            ax.set_xlabel("epoch")
            integer_epochs(ax)
            ax.set_ylabel(_label(metric))
            if out.get("facet"):
                ax.set_title(f"{out['facet']} = {fval}", fontsize=9)
            if metric.endswith("loss") and out.get("log_loss"):
                ax.set_yscale("log")
    legend_outside(fig)
    if not drawn:
        plt.close(fig)
        raise Unavailable(f"no values of {metrics} in the runs' curves")
    return _save(fig, path, out)


def alignment(out, ctx, path: Path) -> str:
    runs = ctx.done_runs()
    layers = sorted({k for r in runs for c in r.curves for k in c if k.startswith("angle/")},
                    key=lambda k: [int(t) if t.isdigit() else t for t in k.replace(".", "/").split("/")])
    if out.get("skip_first", True):
        layers = layers[1:]  # the first layer's B carries no learning signal (papers omit it)
    if out.get("layers") == "penultimate":
        layers = layers[-2:-1] or layers
    if not layers:
        raise Unavailable("no alignment angles in the curves (bp runs have none; fa/ifa/rnp runs needed)")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 2.9), squeeze=False)
    groups = _groups(runs, out.get("group", "method"))
    styles = method_styles(groups)
    for ax, layer in zip(axes[0], layers):
        for gval, style in styles.items():
            x, arr = _stack(groups[_find(groups, gval)], layer)
            if arr is not None:
                _band(ax, x, arr, gval, style)
        ax.set_xlabel("epoch")
        ax.set_ylabel("alignment angle (degrees)")
        ax.set_title(f"module {layer.split('/', 1)[1]}", fontsize=9)  # the layer's name in the model
        ax.set_ylim(0, 100)
        integer_epochs(ax)
    legend_outside(fig)
    return _save(fig, path, out)


def _points(runs, x, y):
    by = defaultdict(list)
    for r in runs:
        xv, yv = r.row.get(x), r.row.get(y)
        if xv is not None and yv is not None and math.isfinite(float(yv)):
            by[xv].append(float(yv))
    xs = sorted(by, key=_key)
    mean, std = stats.mean_std_each([by[k] for k in xs], 0.0)
    return xs, list(mean), list(std)


def line(out, ctx, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    x, y = out["x"], out["y"]
    scale = 100.0 if _is_pct(y) else 1.0
    drawn = False
    groups = _groups(ctx.done_runs(), out.get("group"))
    for gval, style in method_styles(groups).items():
        xs, m, s = _points(groups[_find(groups, gval)], x, y)
        if xs:
            numeric = all(isinstance(v, (int, float)) for v in xs)
            pos = xs if numeric else list(range(len(xs)))
            ax.errorbar(pos, np.array(m) * scale, yerr=np.array(s) * scale, capsize=3, label=str(gval), **style.kw())
            if not numeric:
                ax.set_xticks(pos, [str(v) for v in xs])
            drawn = True
    if not drawn:
        plt.close(fig)
        raise Unavailable(f"no '{y}' values to plot")
    if out.get("logx"):
        ax.set_xscale("log")
    ax.set_xlabel(out.get("xlabel", x))
    ax.set_ylabel(_label(y))
    if out.get("group"):
        legend_outside(ax)
    return _save(fig, path, out)


def heatmap(out, ctx, path: Path) -> str:
    x, y, z = out["x"], out["y"], out["z"]
    facets = _groups(ctx.done_runs(), out.get("facet", "method"))
    xs = sorted({r.row.get(x) for r in ctx.done_runs()}, key=_key)
    ys = sorted({r.row.get(y) for r in ctx.done_runs()}, key=_key)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(facets), figsize=(3.8 * len(facets), 3.3), squeeze=False, layout="constrained")
    scale = 100.0 if _is_pct(z) else 1.0
    grids = []
    for fval, fruns in facets.items():
        grid = np.full((len(ys), len(xs)), np.nan)
        for i, yv in enumerate(ys):
            for j, xv in enumerate(xs):
                vals = [float(r.row[z]) for r in fruns if r.row.get(x) == xv and r.row.get(y) == yv
                        and r.row.get(z) is not None]
                if vals:
                    grid[i, j] = np.nanmean(vals) * scale
        grids.append(grid)
    norm = shared_norm(grids)  # one colour scale for all panels; the output's vmin/vmax override it
    norm.vmin = out.get("vmin", norm.vmin)
    norm.vmax = out.get("vmax", norm.vmax)
    for ax, fval, grid in zip(axes[0], facets, grids):
        ax.imshow(grid, origin="lower", aspect="auto", norm=norm, cmap="viridis")
        ax.set_xticks(range(len(xs)), [f"{v:g}" if isinstance(v, float) else str(v) for v in xs], fontsize=7)
        ax.set_yticks(range(len(ys)), [f"{v:g}" if isinstance(v, float) else str(v) for v in ys], fontsize=7)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(str(fval), fontsize=9)
    shared_colorbar(fig, axes, norm, "viridis", _label(z))
    return _save(fig, path, out)


def series(out, ctx, path: Path) -> str:
    prefix = out["prefix"]
    runs = ctx.done_runs()
    cols = sorted({k for r in runs for k in r.row if k.startswith(prefix + "@")},
                  key=lambda k: _key(_num(k.split("@", 1)[1])))
    if not cols:
        raise Unavailable(f"no '{prefix}@…' columns (the analysis behind them was not produced)")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    xv = [_num(c.split("@", 1)[1]) for c in cols]
    numeric = all(isinstance(v, (int, float)) for v in xv)
    pos = xv if numeric else list(range(len(xv)))
    groups = _groups(runs, out.get("group", "method"))
    for gval, style in method_styles(groups).items():
        gruns = groups[_find(groups, gval)]
        m, s = stats.mean_std_each([[r.row.get(c) for r in gruns] for c in cols], 0.0)
        m, s = m * 100, s * 100
        ax.errorbar(pos, m, yerr=s, capsize=3, label=str(gval), **style.kw())
    if not numeric:
        ax.set_xticks(pos, [str(v) for v in xv], rotation=45, fontsize=7)
    ax.set_xlabel(out.get("xlabel", prefix))
    ax.set_ylabel(out.get("ylabel", "accuracy (%)"))
    legend_outside(ax)
    return _save(fig, path, out)


def _num(s):
    try:
        return float(s)
    except ValueError:
        return s


def density(out, ctx, path: Path) -> str:
    items = _artifact(ctx, "density", "Hessian spectral densities", "hessian")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    first = {}
    for row, grid, dens in items:  # one seed per group keeps the panel readable
        first.setdefault(str(row.get(out.get("group", "method"))), (grid, dens))
    for g, style in method_styles(first).items():
        grid, dens = first[g]
        ax.semilogy(grid, np.maximum(np.asarray(dens), 1e-12), label=g, **style.kw(len(grid)))
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("density (log)")
    legend_outside(ax)
    return _save(fig, path, out)


def _panels(out, items) -> dict:
    """``{panel name: result}``, one panel per row (its group's value; the seed added where two share it)."""
    panels = {}
    for row, res in items:
        name = str(row.get(out.get("group", "method")))
        panels[name if name not in panels else f"{name}, seed {row.get('seed')}"] = res
    return panels


def landscape(out, ctx, path: Path) -> str:
    """Perturbed test-loss surfaces of the landscape analysis (IFA Fig. 5a), one colour scale."""
    items = _artifact(ctx, "landscape", "perturbed landscapes", "landscape")
    surfaces = {}
    for name, res in _panels(out, items).items():
        loss = np.asarray(res["loss"], float)
        surfaces[name] = (np.asarray(res.get("alphas", np.arange(loss.shape[1]))),
                          np.asarray(res.get("betas", np.arange(loss.shape[0]))), loss)
    return plot_perturbed_surfaces(path, surfaces, title=_title(out) or None).name


def trajectory(out, ctx, path: Path) -> str:
    """Training trajectories in their PCA planes over the training loss (IFA Fig. 2b–d), one colour scale."""
    items = _artifact(ctx, "trajectory", "trajectories", "trajectory")
    surfaces = {name: (res["alphas"], res["betas"], np.asarray(res["loss"]), np.asarray(res["coords"]),
                       res.get("explained_variance_ratio")) for name, res in _panels(out, items).items()}
    return plot_trajectory_landscapes(path, surfaces, title=_title(out) or None).name


def order(out, ctx, path: Path) -> str:
    res = _artifact(ctx, "order", "order-dependence result", "order")
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    runs = res["pca"]["runs"]
    for label, style in method_styles(runs).items():
        pcs, r = np.asarray(runs[label]["pcs"]), runs[label]
        ax1.plot(pcs[:, 0], pcs[:, 1], label=label, **style.kw(len(pcs)))
        ax2.plot(range(len(r["w_minus_b"])), r["w_minus_b"], label=label, **style.kw(len(r["w_minus_b"])))
    integer_epochs(ax2)
    ax1.set_xlabel("PC 1 of W₁")
    ax1.set_ylabel("PC 2 of W₁")
    ax2.set_xlabel("snapshot (noise checkpoints, then data epochs, in training order)")
    ax2.set_ylabel("‖W₁ − B₁‖ (Frobenius)")
    legend_outside(fig)
    return _save(fig, path, out)


def erank(out, ctx, path: Path) -> str:
    items = _artifact(ctx, "erank_noise", "effective-rank history", "dimensionality")
    layers = list(items[0][1][0]["weights"])
    plt = pyplot()
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 2.9), squeeze=False)
    styles = method_styles(f"seed {seed}" for seed, _ in items)
    for ax, layer in zip(axes[0], layers):
        for seed, hist in items:
            ax.plot([h["seen"] for h in hist], [h["weights"][layer] for h in hist], label=f"seed {seed}",
                    **styles[f"seed {seed}"].kw(len(hist)))
        ax.set_xlabel("noise samples seen")
        ax.set_ylabel("effective rank")
        ax.set_title(f"module {layer}", fontsize=9)  # the layer's name in the model
    legend_outside(fig)
    return _save(fig, path, out)


def spectra(out, ctx, path: Path) -> str:
    """Singular values of every weight matrix before and after noise pretraining (noise paper Fig. S12)."""
    items = ctx.artifacts.get("erank_noise")
    if not items or "spectra" not in items[0][1][0]:
        raise Unavailable("no singular-value spectra (the dimensionality analysis was not produced)")
    hist = items[0][1]
    plot_spectra({"untrained": hist[0]["spectra"], "after noise": hist[-1]["spectra"]}, path, title=_title(out) or None)
    return path.name


def meta(out, ctx, path: Path) -> str:
    items = _artifact(ctx, "meta", "meta-loss history", "meta")
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.1))
    seeds = method_styles(f"seed {seed}" for seed, _ in items)
    for seed, hist in items:
        seen = [h["seen"] for h in hist]
        ax1.plot(seen, [h["meta_loss"] for h in hist], label=f"seed {seed}", **seeds[f"seed {seed}"].kw(len(hist)))
    tasks = method_styles(k for k in items[0][1][0] if k not in ("step", "seen", "meta_loss"))
    for task, style in tasks.items():
        hist = items[0][1]
        ax2.plot([h["seen"] for h in hist], [h[task] for h in hist], label=task, **style.kw(len(hist)))
    for ax in (ax1, ax2):
        ax.set_xlabel("noise samples seen")
    ax1.set_ylabel("meta-loss (sum of adapted losses)")
    ax2.set_ylabel("adapted loss per task (seed 0)")
    legend_outside(ax1, where="below")
    legend_outside(ax2, where="below", fontsize=6)
    return _save(fig, path, out)


FIGURES = {"order": order, "erank": erank, "spectra": spectra, "meta": meta, "curves": curves, "alignment": alignment, "line": line, "heatmap": heatmap, "series": series,
           "density": density, "landscape": landscape,
           "trajectory": trajectory}


def _artifact_groups(out, ctx, artifact: str, analysis: str) -> dict:
    found = ctx.artifacts.get(artifact)
    if not found:
        raise Unavailable(f"no {artifact} results (add [[analysis]] kind = \"{analysis}\")")
    groups = defaultdict(list)
    for row, value in found:
        groups[str(row.get(out.get("group", "method"), "all"))].append(value)
    return dict(groups)


def reliability(out, ctx, path: Path) -> str:
    from ..viz.uncertainty import plot_reliability

    return plot_reliability(path, _artifact_groups(out, ctx, "calibration", "calibration"), title=out.get("title")).name


def ood_roc(out, ctx, path: Path) -> str:
    from ..viz.uncertainty import plot_roc

    groups = _artifact_groups(out, ctx, "ood_detection", "ood_detection")
    return plot_roc(path, groups, kind=out.get("score", "msp"), title=out.get("title")).name


def confidence_histograms(out, ctx, path: Path) -> str:
    from ..viz.uncertainty import plot_confidence_histograms

    groups = _artifact_groups(out, ctx, "ood_detection", "ood_detection")
    return plot_confidence_histograms(path, groups, title=out.get("title")).name


FIGURES.update({"reliability": reliability, "ood_roc": ood_roc, "confidence_histograms": confidence_histograms})


SELECTION = {"test": "test (papers' protocol: best test accuracy, patience on test)",
             "val": "val (test accuracy at the best-validation epoch)"}


def selection_label(rows) -> str:
    """The model-selection protocol of result rows (``selection`` column, ``"test"`` when absent):
    ``"test (papers' protocol: …)"``, or ``"mixed: …"`` when the runs differ."""
    found = sorted({r.get("selection") or "test" for r in rows})
    return SELECTION.get(found[0], found[0]) if len(found) == 1 else "mixed: " + ", ".join(found)


def table(out, ctx) -> str:
    """Markdown table of ``metric``: mean ± sample std (n) per cell, the exact two-sided rank-sum p
    vs ``reference`` in the same cell group (:mod:`prealign.stats`), the selection protocol."""
    metric = out["metric"]
    rows_by = out.get("rows", ["method"])
    rows_by = [rows_by] if isinstance(rows_by, str) else rows_by
    col = out.get("cols")
    runs = [r for r in ctx.done_runs() if r.row.get(metric) is not None]
    if not runs:
        raise Unavailable(f"no '{metric}' values")
    scale = 100.0 if _is_pct(metric) else 1.0
    cols = sorted({r.row.get(col) for r in runs}, key=_key) if col else [None]
    keys = sorted({tuple(r.row.get(f) for f in rows_by) for r in runs}, key=lambda t: [_key(v) for v in t])
    ref = out.get("reference")

    def cell_vals(key, c, override=None):
        want = dict(zip(rows_by, key))
        if override:
            want.update(override)
        return [float(r.row[metric]) for r in runs if all(r.row.get(f) == v for f, v in want.items())
                and (col is None or r.row.get(col) == c)]

    paper = getattr(getattr(ctx, "experiment", None), "reference", {}).get(out.get("paper"), {}) if out.get("paper") else {}
    head = rows_by + ([f"{col}={c}" for c in cols] if col else [_label(metric)])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        cells = []
        for c in cols:
            vals = cell_vals(key, c)
            text = stats.fmt_values(vals, scale)  # one seed: no ± (and no p below)
            if ref and vals and not all(dict(zip(rows_by, key)).get(f) == v for f, v in ref.items()):
                p = stats.ranksum(vals, cell_vals(key, c, ref))
                if math.isfinite(p):
                    text += f", p={stats.fmt_p(p)}"
            ref_key = "/".join([str(k) for k in key] + ([str(c)] if col else []))
            if ref_key in paper:
                text += f" (paper: {paper[ref_key]})"
            cells.append(text)
        lines.append("| " + " | ".join([str(k) for k in key] + cells) + " |")
    note = (f"\n\nSelection: {selection_label([r.row for r in runs])}. {_label(metric)}: mean ± sample std (ddof = 1) "
            "over seeds, n = number of seeds")
    if paper:
        note += "; (paper: …) = the value the paper reports for that cell"
    if ref:
        note += ("; p: exact two-sided Wilcoxon rank-sum test against "
                 + ", ".join(f"{k}={v}" for k, v in ref.items()) + " in the same cell (none with one seed; the "
                 "smallest p with 3 vs 3 seeds is 0.1)")
    return "\n".join(lines) + note
