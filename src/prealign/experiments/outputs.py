"""Figures and tables of a reproduced experiment, mirroring the paper's panels.

Each ``[[output]]`` of an experiment file is one of (row and curve figures in :mod:`.figures`,
artifact figures here):

``curves``    mean ± std (over seeds) per-epoch curves of ``metrics`` per ``group``, one row of
              panels per value of ``facet`` (optional); a grid axis the bands would pool becomes
              the columns (``split``), or the titles and report say it is pooled
``alignment`` the forward–feedback angle (degrees) per layer over epochs, per ``group``; panels
              named by the layer's place and shape (``layer 2 of 3: 100→100 (module 3)``)
``line``      metric ``y`` against grid axis ``x``, one line per ``group``, error bars = std;
              coinciding series stay visible and are named
``heatmap``   mean of ``z`` over the (``x``, ``y``) grid, one panel per ``facet`` value, values in
              the cells, the region ≥ ``trainable`` outlined, chance marked
``series``    columns ``<prefix>@<value>`` (e.g. ``fgsm@0.03``) as a curve over the value, per ``group``
``corruption_gap`` accuracy lost to corruption (clean − corrupted) vs severity and per corruption
              type at ``severity`` (IFA Fig. 6c / S11)
``erank`` / ``spectra`` effective rank (axis from 0 to full rank) and singular values per layer
              during noise training (noise paper Fig. S12)
``density``   the Hessian spectral densities, per ``group``
``landscape`` the perturbed-loss surfaces, one panel per ``group``
``reliability`` / ``ood_roc`` / ``confidence_histograms``
              reliability diagram per ``group`` (needs the ``calibration`` analysis), ROC curves
              per OOD set and MSP histograms per ``group`` (need ``ood_detection``), from
              :mod:`prealign.viz.uncertainty`
``table``     markdown: ``metric`` mean ± sample std over seeds (n = seeds) per ``rows`` × ``cols``,
              with the exact two-sided signed-rank p of the seed-paired differences against
              ``reference`` (a ``{field = value}`` table) in the same row/column cell, and the
              model-selection protocol of the runs

Every output adds to the report's notes, once, the data its runs used
(:func:`prealign.experiments.describe.data_note`).
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .. import stats
from ..viz.geometry import plot_perturbed_surfaces, plot_trajectory_landscapes
from ..viz.robustness import plot_effective_rank, plot_spectra
from ..viz.style import integer_epochs, legend_outside, method_styles, pyplot
from . import figures
from .analyses import Unavailable
from .describe import data_note, not_run, run_layer_titles
from .rowdata import artifact as _artifact
from .rowdata import is_pct as _is_pct
from .rowdata import key as _key
from .rowdata import label as _label
from .rowdata import note_once, pooled, pooled_text
from .rowdata import points as _points  # noqa: F401  (the one mean ± std per x; tests use it)
from .rowdata import save as _save
from .rowdata import title as _title

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


def _full_rank(hist, layers) -> dict[str, int]:
    """min(n_in, n_out) of each layer: the number of its singular values."""
    if "spectra" not in hist[0]:
        raise Unavailable("no singular-value spectra, so no full rank to draw the effective rank against "
                          "(the dimensionality analysis keeps them)")
    return {layer: len(hist[0]["spectra"][layer]) for layer in layers}


def erank(out, ctx, path: Path) -> str:
    """Effective rank of each layer during noise training (noise paper Fig. S12e–g), on an axis from 0
    to the layer's full rank (the stated baseline), titled by the layer's place and shape."""
    items = _artifact(ctx, "erank_noise", "effective-rank history", "dimensionality")
    layers = list(items[0][1][0]["weights"])
    histories = {f"seed {seed}": hist for seed, hist in items}
    titles = run_layer_titles(ctx, ctx.done_runs())
    plot_effective_rank(histories, path, _full_rank(items[0][1], layers), titles, title=_title(out) or None)
    note_once(ctx, f"{_title(out)}: effective rank on an axis from 0 to each layer's full rank min(n_in, n_out) "
                   "(dashed); each panel's title gives the untrained and final value (mean over seeds) and the change in %")
    return path.name


def spectra(out, ctx, path: Path) -> str:
    """Singular values of every weight matrix before and after noise pretraining (noise paper Fig. S12b–d)."""
    items = ctx.artifacts.get("erank_noise")
    if not items or "spectra" not in items[0][1][0]:
        raise Unavailable("no singular-value spectra (the dimensionality analysis was not produced)")
    hist = items[0][1]
    plot_spectra({"untrained": hist[0]["spectra"], "after noise": hist[-1]["spectra"]}, path, title=_title(out) or None,
                 layer_titles=run_layer_titles(ctx, ctx.done_runs()))
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


FIGURES = {"order": order, "erank": erank, "spectra": spectra, "meta": meta, "curves": figures.curves,
           "alignment": figures.alignment, "line": figures.line, "heatmap": figures.heatmap, "series": figures.series,
           "corruption_gap": figures.corruption_gap, "density": density, "landscape": landscape,
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


def _note_data(ctx) -> None:
    """The report's note on the data the runs used (:func:`prealign.experiments.describe.data_note`), once."""
    exp, budget = getattr(ctx, "experiment", None), getattr(ctx, "budget", None)
    if exp is not None and budget:
        note_once(ctx, data_note(exp, budget))


def _noting_data(draw):
    def drawn(out, ctx, path):
        _note_data(ctx)
        return draw(out, ctx, path)

    drawn.__doc__, drawn.__name__ = draw.__doc__, draw.__name__
    return drawn


FIGURES = {kind: _noting_data(draw) for kind, draw in FIGURES.items()}


SELECTION = {"test": "test (papers' protocol: best test accuracy, patience on test)",
             "val": "val (test accuracy at the best-validation epoch)"}


def selection_label(rows) -> str:
    """The model-selection protocol of result rows (``selection`` column, ``"test"`` when absent):
    ``"test (papers' protocol: …)"``, or ``"mixed: …"`` when the runs differ."""
    found = sorted({r.get("selection") or "test" for r in rows})
    return SELECTION.get(found[0], found[0]) if len(found) == 1 else "mixed: " + ", ".join(found)


def table(out, ctx) -> str:
    """Markdown table of ``metric``: mean ± sample std over seeds (n = seeds) per cell, the exact
    two-sided signed-rank p of the seed-paired differences vs ``reference`` in the same cell group
    (:mod:`prealign.stats`), the selection protocol. The seed is the unit: runs of one seed in a cell
    (levels the cell pools) are averaged first, so copies never count as replicates."""
    _note_data(ctx)
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

    def cell_by_seed(key, c, override=None) -> dict:
        """``{seed: mean of the cell's runs of that seed}``: one number per unit."""
        want = dict(zip(rows_by, key))
        if override:
            want.update(override)
        by_seed = defaultdict(list)
        for r in runs:
            if all(r.row.get(f) == v for f, v in want.items()) and (col is None or r.row.get(col) == c):
                by_seed[r.config.get("seed", r.row.get("seed"))].append(float(r.row[metric]))
        return {seed: float(np.mean(v)) for seed, v in by_seed.items()}

    paper = getattr(getattr(ctx, "experiment", None), "reference", {}).get(out.get("paper"), {}) if out.get("paper") else {}
    head = rows_by + ([f"{col}={c}" for c in cols] if col else [_label(metric)])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        cells = []
        for c in cols:
            mine = cell_by_seed(key, c)
            text = stats.fmt_values(list(mine.values()), scale)  # one seed: no ± (and no p below)
            if ref and mine and not all(dict(zip(rows_by, key)).get(f) == v for f, v in ref.items()):
                p = stats.paired_signed_rank(mine, cell_by_seed(key, c, ref))
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
        missing = not_run(ctx.experiment, ctx.budget) if getattr(ctx, "budget", None) else {}
        if missing:
            note += ("; the paper's cells of " + "; ".join(f"{a} {', '.join(map(str, v))}" for a, v in missing.items())
                     + " are not run at this budget (`--budget paper` runs them)")
    pool = pooled(runs, *rows_by, *([col] if col else []))
    if pool:
        note += f"; each cell is {pooled_text(pool)}"
    if ref:
        note += ("; p: exact two-sided Wilcoxon signed-rank test of the seed-paired differences against "
                 + ", ".join(f"{k}={v}" for k, v in ref.items()) + " in the same cell (runs of a seed share their "
                 "initial network; none with fewer than 2 common seeds; the smallest p with 5 seeds is 0.0625, "
                 "so a table's p is a description, and the claims below are the tests)")
    return "\n".join(lines) + note
