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
``table``     markdown: ``metric`` mean ± sample std (n) per ``rows`` × ``cols``, with the exact
              two-sided rank-sum p against ``reference`` (a ``{field = value}`` table) in the same
              row/column cell, and the model-selection protocol of the runs
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..analysis import stats
from .analyses import Unavailable

PERCENT = ("acc",)  # metrics with these substrings are fractions shown in percent


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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, out: dict | None = None) -> str:
    if out and (out.get("panel") or out.get("title")):
        fig.suptitle(" — ".join(str(out[k]) for k in ("panel", "title") if out.get(k)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    _plt().close(fig)
    return path.name


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


def _band(ax, x, arr, label, scale=1.0):
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            m, s = np.nanmean(arr, 0) * scale, np.nanstd(arr, 0) * scale
    line, = ax.plot(x, m, label=str(label))
    ax.fill_between(x, m - s, m + s, alpha=0.2, color=line.get_color())


def curves(out, ctx, path: Path) -> str:
    metrics = out.get("metrics", ["train_acc", "train_loss", "test_acc", "test_loss"])
    facets = _groups(ctx.done_runs(), out.get("facet")) if out.get("facet") else {"": ctx.done_runs()}
    plt = _plt()
    fig, axes = plt.subplots(len(facets), len(metrics), figsize=(3.6 * len(metrics), 2.9 * len(facets)), squeeze=False)
    drawn = False
    for i, (fval, fruns) in enumerate(facets.items()):
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            for gval, gruns in _groups(fruns, out.get("group", "method")).items():
                x, arr = _stack(gruns, metric)
                if arr is not None:
                    _band(ax, x, arr, gval, 100.0 if _is_pct(metric) else 1.0)
                    drawn = True
            ax.set_xlabel("epoch")
            ax.set_ylabel(_label(metric))
            if out.get("facet"):
                ax.set_title(f"{out['facet']} = {fval}", fontsize=9)
            if metric.endswith("loss") and out.get("log_loss"):
                ax.set_yscale("log")
        axes[i, 0].legend(fontsize=7)
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
    plt = _plt()
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 2.9), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for gval, gruns in _groups(runs, out.get("group", "method")).items():
            x, arr = _stack(gruns, layer)
            if arr is not None:
                _band(ax, x, arr, gval)
        ax.set_xlabel("epoch")
        ax.set_ylabel("alignment angle (degrees)")
        ax.set_title(layer.replace("angle/", "layer "), fontsize=9)
        ax.set_ylim(0, 100)
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path, out)


def _points(runs, x, y):
    by = defaultdict(list)
    for r in runs:
        xv, yv = r.row.get(x), r.row.get(y)
        if xv is not None and yv is not None and math.isfinite(float(yv)):
            by[xv].append(float(yv))
    xs = sorted(by, key=_key)
    return xs, [np.mean(by[k]) for k in xs], [np.std(by[k]) for k in xs]


def line(out, ctx, path: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    x, y = out["x"], out["y"]
    scale = 100.0 if _is_pct(y) else 1.0
    drawn = False
    for gval, gruns in _groups(ctx.done_runs(), out.get("group")).items():
        xs, m, s = _points(gruns, x, y)
        if xs:
            numeric = all(isinstance(v, (int, float)) for v in xs)
            pos = xs if numeric else list(range(len(xs)))
            ax.errorbar(pos, np.array(m) * scale, yerr=np.array(s) * scale, marker="o", capsize=3, label=str(gval))
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
        ax.legend(fontsize=7)
    return _save(fig, path, out)


def heatmap(out, ctx, path: Path) -> str:
    x, y, z = out["x"], out["y"], out["z"]
    facets = _groups(ctx.done_runs(), out.get("facet", "method"))
    xs = sorted({r.row.get(x) for r in ctx.done_runs()}, key=_key)
    ys = sorted({r.row.get(y) for r in ctx.done_runs()}, key=_key)
    plt = _plt()
    fig, axes = plt.subplots(1, len(facets), figsize=(3.8 * len(facets), 3.3), squeeze=False)
    scale = 100.0 if _is_pct(z) else 1.0
    for ax, (fval, fruns) in zip(axes[0], facets.items()):
        grid = np.full((len(ys), len(xs)), np.nan)
        for i, yv in enumerate(ys):
            for j, xv in enumerate(xs):
                vals = [float(r.row[z]) for r in fruns if r.row.get(x) == xv and r.row.get(y) == yv
                        and r.row.get(z) is not None]
                if vals:
                    grid[i, j] = np.nanmean(vals) * scale
        im = ax.imshow(grid, origin="lower", aspect="auto", vmin=out.get("vmin"), vmax=out.get("vmax"), cmap="viridis")
        ax.set_xticks(range(len(xs)), [f"{v:g}" if isinstance(v, float) else str(v) for v in xs], fontsize=7)
        ax.set_yticks(range(len(ys)), [f"{v:g}" if isinstance(v, float) else str(v) for v in ys], fontsize=7)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(str(fval), fontsize=9)
        fig.colorbar(im, ax=ax, label=_label(z))
    return _save(fig, path, out)


def series(out, ctx, path: Path) -> str:
    prefix = out["prefix"]
    runs = ctx.done_runs()
    cols = sorted({k for r in runs for k in r.row if k.startswith(prefix + "@")},
                  key=lambda k: _key(_num(k.split("@", 1)[1])))
    if not cols:
        raise Unavailable(f"no '{prefix}@…' columns (the analysis behind them was not produced)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    xv = [_num(c.split("@", 1)[1]) for c in cols]
    numeric = all(isinstance(v, (int, float)) for v in xv)
    pos = xv if numeric else list(range(len(xv)))
    for gval, gruns in _groups(runs, out.get("group", "method")).items():
        m = [stats.mean_std([r.row.get(c) for r in gruns])[0] * 100 for c in cols]
        s = [stats.mean_std([r.row.get(c) for r in gruns])[1] * 100 for c in cols]
        ax.errorbar(pos, m, yerr=s, marker="o", capsize=3, label=str(gval))
    if not numeric:
        ax.set_xticks(pos, [str(v) for v in xv], rotation=45, fontsize=7)
    ax.set_xlabel(out.get("xlabel", prefix))
    ax.set_ylabel(out.get("ylabel", "accuracy (%)"))
    ax.legend(fontsize=7)
    return _save(fig, path, out)


def _num(s):
    try:
        return float(s)
    except ValueError:
        return s


def density(out, ctx, path: Path) -> str:
    items = ctx.artifacts.get("density")
    if not items:
        raise Unavailable("no Hessian spectral densities (the hessian analysis was not produced)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    seen = set()
    for row, grid, dens in items:
        g = row.get(out.get("group", "method"))
        if g in seen:  # one seed per group keeps the panel readable
            continue
        seen.add(g)
        ax.semilogy(grid, np.maximum(np.asarray(dens), 1e-12), label=str(g))
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("density (log)")
    ax.legend(fontsize=7)
    return _save(fig, path, out)


def landscape(out, ctx, path: Path) -> str:
    items = ctx.artifacts.get("landscape")
    if not items:
        raise Unavailable("no perturbed landscapes (the landscape analysis was not produced)")
    plt = _plt()
    fig, axes = plt.subplots(1, len(items), figsize=(3.4 * len(items), 3.0), squeeze=False)
    for ax, (row, res) in zip(axes[0], items):
        loss = np.asarray(res["loss"], float)
        a, b = np.asarray(res.get("alphas", np.arange(loss.shape[1]))), np.asarray(res.get("betas", np.arange(loss.shape[0])))
        cs = ax.contourf(a, b, loss, levels=20, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="test loss")
        ax.set_xlabel("α (along v₁)")
        ax.set_ylabel("β (along v₂)")
        ax.set_title(str(row.get(out.get("group", "method"))), fontsize=9)
    return _save(fig, path, out)


def trajectory(out, ctx, path: Path) -> str:
    items = ctx.artifacts.get("trajectory")
    if not items:
        raise Unavailable("no trajectories (the trajectory analysis was not produced)")
    plt = _plt()
    fig, axes = plt.subplots(1, len(items), figsize=(3.6 * len(items), 3.1), squeeze=False)
    for ax, (row, res) in zip(axes[0], items):
        cs = ax.contourf(res["alphas"], res["betas"], np.asarray(res["loss"]), levels=20, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="training loss")
        c = np.asarray(res["coords"])
        ax.plot(c[:, 0], c[:, 1], "w.-", lw=1, ms=3)
        ax.plot(c[-1, 0], c[-1, 1], "r*", ms=9)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title(str(row.get(out.get("group", "method"))), fontsize=9)
    return _save(fig, path, out)


def order(out, ctx, path: Path) -> str:
    res = ctx.artifacts.get("order")
    if not res:
        raise Unavailable("no order-dependence result (the order analysis was not produced)")
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    for label, r in res["pca"]["runs"].items():
        pcs = np.asarray(r["pcs"])
        ax1.plot(pcs[:, 0], pcs[:, 1], ".-", ms=3, label=label)
        ax2.plot(range(len(r["w_minus_b"])), r["w_minus_b"], ".-", ms=3, label=label)
    ax1.set_xlabel("PC 1 of W₁")
    ax1.set_ylabel("PC 2 of W₁")
    ax2.set_xlabel("snapshot (noise checkpoints, then data epochs, in training order)")
    ax2.set_ylabel("‖W₁ − B₁‖ (Frobenius)")
    ax1.legend(fontsize=7)
    return _save(fig, path, out)


def erank(out, ctx, path: Path) -> str:
    items = ctx.artifacts.get("erank_noise")
    if not items:
        raise Unavailable("no effective-rank history (the dimensionality analysis was not produced)")
    layers = list(items[0][1][0]["weights"])
    plt = _plt()
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 2.9), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for seed, hist in items:
            ax.plot([h["seen"] for h in hist], [h["weights"][layer] for h in hist], ".-", ms=3, label=f"seed {seed}")
        ax.set_xlabel("noise samples seen")
        ax.set_ylabel("effective rank")
        ax.set_title(f"layer {layer}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path, out)


def spectra(out, ctx, path: Path) -> str:
    items = ctx.artifacts.get("erank_noise")
    if not items or "spectra" not in items[0][1][0]:
        raise Unavailable("no singular-value spectra (the dimensionality analysis was not produced)")
    hist = items[0][1]
    layers = list(hist[0]["spectra"])
    plt = _plt()
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 2.9), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for entry, label in ((hist[0], "untrained"), (hist[-1], "after noise")):
            sv = np.asarray(entry["spectra"][layer])
            ax.semilogy(np.arange(1, len(sv) + 1), sv, label=label)
        ax.set_xlabel("singular value index")
        ax.set_ylabel("singular value")
        ax.set_title(f"layer {layer}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path, out)


def meta(out, ctx, path: Path) -> str:
    items = ctx.artifacts.get("meta")
    if not items:
        raise Unavailable("no meta-loss history (the meta analysis was not produced)")
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.1))
    for seed, hist in items:
        seen = [h["seen"] for h in hist]
        ax1.plot(seen, [h["meta_loss"] for h in hist], ".-", label=f"seed {seed}")
    tasks = [k for k in items[0][1][0] if k not in ("step", "seen", "meta_loss")]
    for task in tasks:
        hist = items[0][1]
        ax2.plot([h["seen"] for h in hist], [h[task] for h in hist], ".-", label=task)
    for ax in (ax1, ax2):
        ax.set_xlabel("noise samples seen")
    ax1.set_ylabel("meta-loss (sum of adapted losses)")
    ax2.set_ylabel("adapted loss per task (seed 0)")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=6)
    return _save(fig, path, out)


FIGURES = {"order": order, "erank": erank, "spectra": spectra, "meta": meta, "curves": curves, "alignment": alignment, "line": line, "heatmap": heatmap, "series": series,
           "density": density, "landscape": landscape,
           "trajectory": trajectory}


SELECTION = {"test": "test (papers' protocol: best test accuracy, patience on test)",
             "val": "val (test accuracy at the best-validation epoch)"}


def selection_label(rows) -> str:
    """The model-selection protocol of result rows (``selection`` column, ``"test"`` when absent):
    ``"test (papers' protocol: …)"``, or ``"mixed: …"`` when the runs differ."""
    found = sorted({r.get("selection") or "test" for r in rows})
    return SELECTION.get(found[0], found[0]) if len(found) == 1 else "mixed: " + ", ".join(found)


def table(out, ctx) -> str:
    """Markdown table of ``metric``: mean ± sample std (n) per cell, the exact two-sided rank-sum p
    vs ``reference`` in the same cell group (:mod:`prealign.analysis.stats`), the selection protocol."""
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
