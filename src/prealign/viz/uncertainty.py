"""Figures for calibration and OOD detection (issue 17): reliability diagrams, confidence/ECE
curves, ROC curves and confidence histograms (PNG, dpi 150, Agg backend, house style of
:mod:`prealign.viz.style`). Every function takes the data its analysis returns and a path, and
returns the path. Confidence = maximum softmax probability; accuracies and confidences in percent.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .style import integer_epochs, legend_outside, method_styles, pyplot, save_figure


def pooled_bins(summaries: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """The reliability bins of several runs (:func:`prealign.analysis.calibration.summary`) pooled:
    counts summed, accuracy and mean confidence weighted by each run's bin count (NaN where empty)."""
    edges = np.asarray(summaries[0]["bins"]["edges"], float)
    count = np.zeros(len(edges) - 1)
    conf_sum, acc_sum = np.zeros_like(count), np.zeros_like(count)
    for s in summaries:
        c = np.asarray(s["bins"]["count"], float)
        count += c
        conf_sum += np.nan_to_num(np.asarray(s["bins"]["confidence"], float)) * c
        acc_sum += np.nan_to_num(np.asarray(s["bins"]["accuracy"], float)) * c
    with np.errstate(invalid="ignore"):
        return {"edges": edges, "count": count, "confidence": conf_sum / count, "accuracy": acc_sum / count}


def plot_reliability(path, per_method: Mapping[str, Sequence[Mapping]], title: str | None = None) -> Path:
    """Reliability diagram, one column per method (runs of a method pooled, :func:`pooled_bins`):
    accuracy per equal-width confidence bin (bars), the gap to the bin's mean confidence shaded
    (hatched), the diagonal (perfect calibration), and below, the sample count per bin (log scale).
    Panel titles give ECE (mean ± std over runs) and the number of runs."""
    plt = pyplot()
    styles = method_styles(per_method)
    n = len(styles)
    fig, axes = plt.subplots(2, n, figsize=(3.4 * n, 4.6), squeeze=False, sharex=True,
                             gridspec_kw={"height_ratios": [3, 1]})
    for j, (label, style) in enumerate(styles.items()):
        runs = per_method[label]
        b = pooled_bins(runs)
        lo, width = b["edges"][:-1], np.diff(b["edges"])
        full = b["count"] > 0
        ax, axc = axes[0][j], axes[1][j]
        ax.bar(lo[full], b["accuracy"][full], width=width[full], align="edge", color=style.color, alpha=0.75,
               edgecolor="white", lw=0.5, label="accuracy")
        gap_lo = np.minimum(b["accuracy"], b["confidence"])[full]
        gap_hi = np.maximum(b["accuracy"], b["confidence"])[full]
        ax.bar(lo[full], gap_hi - gap_lo, bottom=gap_lo, width=width[full], align="edge", facecolor="tab:red",
               alpha=0.25, hatch="//", edgecolor="tab:red", lw=0.5, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], color="0.3", ls="--", lw=1, label="perfect calibration")
        eces = np.array([r["ece"] for r in runs]) * 100
        std = f" ± {eces.std(ddof=1):.1f}" if len(eces) > 1 else ""
        ax.set_title(f"{label}: ECE {eces.mean():.1f}{std} % (n={len(runs)})", fontsize=9)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        axc.bar(lo, np.maximum(b["count"], 0), width=width, align="edge", color=style.color, alpha=0.6)
        axc.set_yscale("symlog", linthresh=1)
        axc.set_xlabel("confidence (max softmax)")
        if j == 0:
            ax.set_ylabel("accuracy in bin")
            axc.set_ylabel("samples")
    legend_outside(axes[0][-1])
    fig.suptitle(title or f"reliability diagram ({len(b['count'])} equal-width bins, Guo et al. 2017)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_calibration_curves(path, curves: Mapping[str, Sequence], title: str | None = None) -> Path:
    """Per-epoch accuracy and mean confidence (left) and ECE (right), test solid, train dashed, from
    the records of :class:`prealign.analysis.calibration.CalibrationTracker`. ``curves``: ``{label: records}``
    (one run) or ``{label: [records, ...]}`` (seeds: mean, band ± 1 std)."""
    plt = pyplot()
    styles = method_styles(curves)
    fig, (ax, axe) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, style in styles.items():
        runs = curves[label]
        runs = [runs] if runs and isinstance(runs[0], Mapping) else list(runs)
        epochs = [r["epoch"] for r in runs[0]]
        for split, ls in (("test", "-"), ("train", "--")):
            for key, target, lw in ((f"{split}_confidence", ax, 1.8), (f"{split}_ece", axe, 1.8)):
                values = np.array([[r.get(key, np.nan) for r in run[:len(epochs)]] for run in runs], float) * 100
                mean = np.nanmean(values, axis=0)
                target.plot(epochs, mean, color=style.color, ls=ls, marker=style.marker, ms=3, lw=lw,
                            label=f"{label} {split}")
                if len(runs) > 1:
                    std = np.nanstd(values, axis=0, ddof=1)
                    target.fill_between(epochs, mean - std, mean + std, color=style.color, alpha=0.12, lw=0)
        acc = np.array([[r.get("test_acc", np.nan) for r in run[:len(epochs)]] for run in runs], float) * 100
        ax.plot(epochs, np.nanmean(acc, axis=0), color=style.color, ls=":", lw=1.2, label=f"{label} test accuracy")
    ax.set_ylabel("mean confidence / accuracy (%)")
    axe.set_ylabel("ECE (%)")
    for a in (ax, axe):
        a.set_xlabel("epoch (0 = before data training)")
        a.grid(alpha=0.3)
    integer_epochs(ax, axe)
    legend_outside(axe)
    fig.suptitle(title or "confidence and calibration during training", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_roc(path, per_method: Mapping[str, Sequence[Mapping]], kind: str = "msp", title: str | None = None) -> Path:
    """ROC curves (in-distribution = positive), one panel per OOD set, one curve per method (its
    first run), score ``kind``; the legend gives each curve's AUROC. ``per_method``:
    ``{label: [{set_name or "in": {kind: scores}}, ...]}`` (:func:`prealign.analysis.ood_detection.detect`'s ``scores``)."""
    from ..stats import auroc, roc

    plt = pyplot()
    styles = method_styles(per_method)
    sets = [k for k in next(iter(per_method.values()))[0] if k != "in"]
    cols = min(4, len(sets))
    rows = -(-len(sets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.1 * rows), squeeze=False, sharex=True, sharey=True)
    for i, name in enumerate(sets):
        ax = axes[i // cols][i % cols]
        for label, style in styles.items():
            s = per_method[label][0]
            fpr, tpr = roc(s["in"][kind], s[name][kind])
            ax.plot(fpr, tpr, color=style.color, ls=style.linestyle, lw=1.5,
                    label=f"{label} ({auroc(s['in'][kind], s[name][kind]):.2f})")
        ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1)
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7, loc="lower right", title="AUROC", title_fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(sets):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("false-positive rate (OOD)")
    for row in axes:
        row[0].set_ylabel("true-positive rate (in-dist.)")
    fig.suptitle(title or f"OOD detection, {kind.upper()} score (first run per method)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confidence_histograms(path, per_method: Mapping[str, Sequence[Mapping]], title: str | None = None) -> Path:
    """Histograms of the maximum softmax probability, one panel per method (its runs pooled): the
    in-distribution test set filled, each OOD set as a step outline (density, 20 bins on [0, 1])."""
    plt = pyplot()
    styles = method_styles(per_method)
    sets = [k for k in next(iter(per_method.values()))[0] if k != "in"]
    set_styles = method_styles(sets)
    fig, axes = plt.subplots(1, len(styles), figsize=(3.4 * len(styles), 3.2), squeeze=False, sharey=True)
    bins = np.linspace(0, 1, 21)
    for j, (label, style) in enumerate(styles.items()):
        ax = axes[0][j]
        runs = per_method[label]

        def pooled(key, runs=runs):
            return np.concatenate([np.asarray(r[key]["msp"]) for r in runs])

        ax.hist(pooled("in"), bins=bins, density=True, color=style.color, alpha=0.35, label="in-distribution")
        for name in sets:
            ax.hist(pooled(name), bins=bins, density=True, histtype="step", lw=1.3, color=set_styles[name].color,
                    ls=set_styles[name].linestyle, label=name)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("confidence (max softmax)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("density")
    legend_outside(axes[0][-1])
    fig.suptitle(title or "confidence on in-distribution vs OOD inputs", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["pooled_bins", "plot_reliability", "plot_calibration_curves", "plot_roc", "plot_confidence_histograms"]
