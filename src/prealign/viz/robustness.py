"""Figures for the robustness and generalization analyses (PNG, dpi 150, Agg backend).

Every function takes the numbers to draw (mostly the JSON-ready dict its analysis returns) and a
path, and returns the path; it computes nothing but the mean ± std it draws (:mod:`prealign.stats`).
Accuracies are drawn in percent; shaded bands / error bars are ± one standard deviation over seeds.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..stats import mean_std_each
from .style import integer_epochs, legend_outside, method_styles, pyplot, save_figure

SOURCE_STYLES = {"exact": "-", "feedback": ":", "transfer": "--"}
SOURCE_LABELS = {"exact": "exact gradient", "feedback": "own feedback pathway", "transfer": "transfer from BP surrogate"}



def plot_adversarial(report: Mapping, path, title: str | None = None, layout: str = "grid") -> Path:
    """Accuracy (%) vs ε under attack, ±1 std bands over seeds.

    ``layout="grid"``: rows = attacks, columns = gradient sources (exact, feedback, transfer); each
    method its own colour, line style and marker. ``"overlay"``: one panel per attack, colour and
    marker = method, line style = gradient source.
    """
    plt = pyplot()
    from matplotlib.lines import Line2D

    eps = np.asarray(report["epsilons"])
    attacks, sources, results = report["attacks"], report["sources"], report["results"]
    styles = method_styles(results)
    if layout not in ("grid", "overlay"):
        raise ValueError(f"unknown layout {layout!r}; valid: grid, overlay")
    cols = sources if layout == "grid" else [None]
    fig, axes = plt.subplots(len(attacks), len(cols), figsize=(4.6 * len(cols), 3.6 * len(attacks)),
                             sharex=True, sharey=True, squeeze=False)
    for r, attack in enumerate(attacks):
        for c, col in enumerate(cols):
            ax = axes[r][c]
            for method, style in styles.items():
                for source in ([col] if col else sources):
                    acc = np.asarray(results[method][attack][source]) * 100
                    mean, std = mean_std_each(acc.T, 0.0)
                    kw = style.kw(len(eps)) | ({} if col else {"linestyle": SOURCE_STYLES[source]})
                    ax.plot(eps, mean, lw=1.6, label=method if col or len(sources) == 1 else f"{method}, {source}", **kw)
                    ax.fill_between(eps, mean - std, mean + std, color=style.color, alpha=0.15, lw=0)
            steps = "" if attack == "fgsm" else f", {report.get('steps', 10)} steps"
            ax.set_title(f"{attack.upper()}{steps}" + (f" — {SOURCE_LABELS[col]}" if col else ""), fontsize=10)
            ax.grid(alpha=0.3)
            if r == len(attacks) - 1:
                ax.set_xlabel("perturbation ε (L∞, inputs in [0, 1])")
            if c == 0:
                ax.set_ylabel("accuracy under attack (%)")
    if layout == "overlay":
        handles = [Line2D([], [], color=st.color, marker=st.marker, lw=2, label=m) for m, st in styles.items()]
        handles += [Line2D([], [], color="k", ls=SOURCE_STYLES[s], label=SOURCE_LABELS[s]) for s in sources]
        legend_outside(fig, handles, [h.get_label() for h in handles])
    else:
        legend_outside(fig)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, tight=False)


def plot_corruption(summaries: Mapping[str, Sequence[Mapping]], path, title: str | None = None) -> Path:
    """(a) mean corruption accuracy (%) vs severity per method; (b) heat map method × corruption
    (accuracy averaged over severities); (c) mean accuracy per category. ``summaries``: ``{method:
    [summary per seed]}``, each summary as :func:`prealign.analysis.robustness.summarize_corruption`
    makes it (``clean``, ``per_severity``, ``per_type``, ``per_category``; accuracies as fractions)."""
    plt = pyplot()
    styles = method_styles(summaries)
    first = next(iter(summaries.values()))[0]
    names, categories = list(first["per_type"]), list(first["per_category"])
    fig = plt.figure(figsize=(16, 4.6))
    grid = fig.add_gridspec(1, 3, width_ratios=[1, 2.4, 1])
    ax = fig.add_subplot(grid[0])
    for m, ss in summaries.items():
        sev = sorted(ss[0]["per_severity"])
        vals = np.array([[s["per_severity"][k] for k in sev] for s in ss]) * 100
        clean = np.array([s["clean"] for s in ss]) * 100
        x = [0, *sev]
        mean, std = mean_std_each([clean, *vals.T], 0.0)
        ax.errorbar(x, mean, yerr=std, capsize=3, label=m, **styles[m].kw())
    ax.set_xticks(x, ["clean", *map(str, sev)])
    ax.set_xlabel("corruption severity")
    ax.set_ylabel("mean corruption accuracy (%)")
    ax.set_title("(a) mean over the 15 corruptions")
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(grid[1])
    mat = np.array([mean_std_each([[s["per_type"][n] * 100 for s in ss] for n in names])[0] for ss in summaries.values()])
    im = ax.imshow(mat, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(summaries)), list(summaries))
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            ax.text(j, i, f"{mat[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if mat[i, j] < mat.mean() else "black")
    fig.colorbar(im, ax=ax, label="accuracy (%), mean over severities 1–5")
    ax.set_title("(b) accuracy per corruption")
    ax = fig.add_subplot(grid[2])
    width = 0.8 / len(summaries)
    lo = 100.0
    for i, (m, ss) in enumerate(summaries.items()):
        vals = np.array([[s["per_category"][c] for c in categories] for s in ss]) * 100
        lo = min(lo, float(vals.min()))
        mean, std = mean_std_each(vals.T, 0.0)
        ax.bar(np.arange(len(categories)) + i * width, mean, width, yerr=std, capsize=2,
               color=styles[m].color, hatch=styles[m].hatch, edgecolor="white", label=m)
    ax.set_xticks(np.arange(len(categories)) + 0.4 - width / 2, categories)
    ax.set_ylabel("accuracy (%), mean over types and severities")
    ax.set_title("(c) per category")
    ax.set_ylim(max(0.0, lo - 10), 100)
    ax.grid(alpha=0.3, axis="y")
    legend_outside(ax)
    return save_figure(fig, path, title)


def plot_ood(report: Mapping, path, title: str | None = None) -> Path:
    """Grouped bars: accuracy (%) on the clean and each out-of-distribution test set, per method."""
    plt = pyplot()
    sets, results = report["sets"], report["results"]
    styles = method_styles(results)
    fig, ax = plt.subplots(figsize=(1.6 * len(sets) + 3, 4.2))
    width = 0.8 / len(results)
    for i, (m, style) in enumerate(styles.items()):
        vals = np.array([[e[s] for s in sets] for e in results[m]]) * 100
        mean, std = mean_std_each(vals.T, 0.0)
        ax.bar(np.arange(len(sets)) + i * width, mean, width, yerr=std, capsize=2, color=style.color,
               hatch=style.hatch, edgecolor="white", label=m)
    ax.set_xticks(np.arange(len(sets)) + 0.4 - width / 2, [s.replace(" (", "\n(") for s in sets], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, axis="y")
    legend_outside(ax)
    ax.set_title(title or "out-of-distribution accuracy")
    return save_figure(fig, path)


def plot_dimensionality(history: Sequence[Mapping], path, title: str | None = None) -> Path:
    """Effective rank of every weight matrix (and of features, if measured) over noise
    pretraining (x = noise samples seen) and data training (x = epoch)."""
    plt = pyplot()
    phases = [p for p in ("noise", "data") if any(h["phase"] == p for h in history)]
    kinds = [k for k in ("weights", "features") if any(k in h for h in history)]
    fig, axes = plt.subplots(len(kinds), len(phases), figsize=(5.2 * len(phases), 3.6 * len(kinds)), squeeze=False)
    for r, kind in enumerate(kinds):
        for c, phase in enumerate(phases):
            ax = axes[r][c]
            rows = [h for h in history if h["phase"] == phase and kind in h]
            xs = [h["seen"] if phase == "noise" else h["epoch"] for h in rows]
            for name, style in method_styles(rows[0][kind]).items():  # name: the layer's module name
                ax.plot(xs, [h[kind][name] for h in rows], label=name, **style.kw(len(xs)))
            if phase == "data":
                integer_epochs(ax)
            ax.set_xlabel("noise samples seen" if phase == "noise" else "data epoch")
            ax.set_ylabel(f"effective rank of {'W' if kind == 'weights' else 'features'}")
            ax.set_title(f"{kind} during {'noise pretraining' if phase == 'noise' else 'data training'}")
            ax.grid(alpha=0.3)
    legend_outside(fig)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, tight=False)


def plot_spectra(spectra: Mapping[str, Mapping[str, Sequence[float]]], path, title: str | None = None,
                 layer_titles: Mapping[str, str] | None = None) -> Path:
    """Singular-value spectra per layer; ``spectra = {condition: {layer: [σ…]}}`` (e.g. before/after noise);
    ``layer_titles``: ``{layer: panel title}`` (:func:`prealign.viz.style.layer_title`), else ``"module NAME"``."""
    plt = pyplot()
    layers = list(next(iter(spectra.values())))
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.6), squeeze=False)
    styles = method_styles(spectra)
    for ax, layer in zip(axes[0], layers):
        for cond, style in styles.items():
            s = np.asarray(spectra[cond][layer])
            ax.semilogy(np.arange(1, len(s) + 1), s, label=cond, **style.kw(len(s)))
        ax.set_xlabel("index (descending)")
        ax.set_ylabel("singular value")
        ax.set_title((layer_titles or {}).get(layer, f"module {layer}"), fontsize=9)
        ax.grid(alpha=0.3)
        integer_epochs(ax)
    legend_outside(fig)
    return save_figure(fig, path, title)


def plot_effective_rank(histories: Mapping[str, Sequence[Mapping]], path, full_rank: Mapping[str, int],
                        layer_titles: Mapping[str, str] | None = None, title: str | None = None) -> Path:
    """Effective rank of each layer's weights during noise pretraining (noise paper Fig. S12e–g), one
    panel per layer, one line per run label (``{label: [{"seen", "weights": {layer: rank}}]}``).

    The y axis runs from 0 to the layer's full rank min(n_in, n_out) (``full_rank``, dashed), the
    stated baseline: a 0.2 % change then looks like one, where an axis fitted to the data (9.85–9.88)
    made it look steep. Each panel's title gives the untrained and final value and the relative change."""
    plt = pyplot()
    layers = list(full_rank)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.8 * len(layers), 3.2), squeeze=False)
    styles = method_styles(histories)
    for ax, layer in zip(axes[0], layers):
        first, last = [], []
        for lab, style in styles.items():
            hist = histories[lab]
            ranks = [h["weights"][layer] for h in hist]
            ax.plot([h["seen"] for h in hist], ranks, label=lab, **style.kw(len(hist)))
            first.append(ranks[0])
            last.append(ranks[-1])
        ax.axhline(full_rank[layer], color="0.4", ls="--", lw=1, label="full rank min(n_in, n_out)")
        ax.set_ylim(0, full_rank[layer] * 1.05)
        a, b = float(np.mean(first)), float(np.mean(last))
        name = (layer_titles or {}).get(layer, f"module {layer}")
        ax.set_title(f"{name}\n{a:.4g} untrained → {b:.4g} after noise ({100 * (b - a) / a:+.2g} %)", fontsize=8)
        ax.set_xlabel("noise samples seen")
        ax.set_ylabel("effective rank (axis from 0 to full rank)")
        ax.grid(alpha=0.3)
    legend_outside(fig)
    return save_figure(fig, path, title)


def plot_corruption_gap(path, per_method: Mapping[str, Mapping], severity: int = 1, title: str | None = None) -> Path:
    """The robustness gap (IFA Fig. 6c, S11): accuracy lost to corruption, clean − corrupted
    (percentage points; per seed, then mean ± std), (a) for the mean over corruptions against
    severity, (b) per corruption type at ``severity``. Lower is more robust; the clean accuracy
    each gap starts from is in the legend. ``per_method``: ``{method: {"clean": [acc per seed],
    "severity": {s: [acc per seed]}, "types": {name: [acc per seed]}}}`` (fractions)."""
    plt = pyplot()
    styles = method_styles(per_method)
    types = list(next(iter(per_method.values()))["types"])
    fig = plt.figure(figsize=(4.2 + 0.55 * max(len(types), 4), 3.8))
    grid = fig.add_gridspec(1, 2, width_ratios=[1, max(len(types), 4) / 4])
    ax = fig.add_subplot(grid[0])
    for m, style in styles.items():
        d = per_method[m]
        clean = np.asarray(d["clean"]) * 100
        sevs = sorted(d["severity"])
        gaps = [clean - np.asarray(d["severity"][s]) * 100 for s in sevs]
        mean, std = mean_std_each(gaps, 0.0)
        lab = f"{m} (clean {np.mean(clean):.1f} %)"
        ax.errorbar(sevs, mean, yerr=std, capsize=3, label=lab, **style.kw())
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xlabel("corruption severity")
    ax.set_ylabel("accuracy lost to corruption\n(clean − corrupted, points)")
    ax.set_title("(a) mean over corruptions", fontsize=9)
    ax.grid(alpha=0.3)
    integer_epochs(ax)  # severities are whole numbers
    bx = fig.add_subplot(grid[1])
    width = 0.8 / len(per_method)
    for i, (m, style) in enumerate(styles.items()):
        d = per_method[m]
        clean = np.asarray(d["clean"]) * 100
        mean, std = mean_std_each([clean - np.asarray(d["types"][t]) * 100 for t in types], 0.0)
        bx.bar(np.arange(len(types)) + i * width, mean, width, yerr=std, capsize=2, color=style.color,
               hatch=style.hatch, edgecolor="white", label=f"{m} (clean {np.mean(clean):.1f} %)")
    bx.axhline(0, color="0.4", lw=0.8)
    bx.set_xticks(np.arange(len(types)) + 0.4 - width / 2, [t.replace("_", " ") for t in types], rotation=45,
                  ha="right", fontsize=7)
    bx.set_ylabel("accuracy lost (points)")
    bx.set_title(f"(b) per corruption, severity {severity}", fontsize=9)
    bx.grid(alpha=0.3, axis="y")
    legend_outside(fig)
    return save_figure(fig, path, title)


def plot_meta(histories: Mapping[str, Sequence[Mapping]], path, title: str | None = None) -> Path:
    """Meta-loss (sum over tasks, nats) vs noise samples seen, one line per run label."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4))
    for label, style in method_styles(histories).items():
        hist = histories[label]
        ax.plot([h["seen"] for h in hist], [h["meta_loss"] for h in hist], label=label, **style.kw(len(hist)))
    ax.set_xlabel("noise samples seen")
    ax.set_ylabel("meta-loss (sum of adapted losses, nats)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    ax.set_title(title or "meta-loss during noise pretraining")
    return save_figure(fig, path)


def plot_generalization(rows: Sequence[Mapping], key: str, path, title: str | None = None) -> Path:
    """Generalization error (test − train loss, nats) vs ``key`` (``"size"`` or ``"depth"``), per method."""
    plt = pyplot()
    styles = method_styles(r["method"] for r in rows)
    fig, ax = plt.subplots(figsize=(5.6, 4))
    for m, style in styles.items():
        xs = sorted({r[key] for r in rows if r["method"] == m})
        vals = [[r["gap"] for r in rows if r["method"] == m and r[key] == x] for x in xs]
        mean, std = mean_std_each(vals, 0.0)
        ax.errorbar(xs, mean, yerr=std, capsize=3, label=m, **style.kw())
    if key == "size":
        ax.set_xscale("log")
    else:
        integer_epochs(ax)  # depth counts layers
    ax.set_xlabel("training-set size (images)" if key == "size" else "depth (weight layers)")
    ax.set_ylabel("generalization error: test − train loss (nats)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    ax.set_title(title or "generalization error")
    return save_figure(fig, path)


def plot_trajectory(result: Mapping, path, title: str | None = None) -> Path:
    """First-layer weight trajectory in its top-2 PCs, one line per run, and ‖W − B‖ along it."""
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, style in method_styles(result["runs"]).items():
        run = result["runs"][label]
        pts = np.asarray(run["pcs"])
        ax.plot(pts[:, 0], pts[:, 1], color=style.color, linestyle=style.linestyle, lw=1, label=label)
        phases = run["phases"]
        for phase, marker in (("noise", "o"), ("data", "s")):
            idx = [i for i, p in enumerate(phases) if p == phase]
            if idx:
                ax.scatter(pts[idx, 0], pts[idx, 1], s=10, marker=marker, color=style.color)
        ax.scatter(*pts[0, :2], c="k", marker="x", s=40)
        bx.plot(np.arange(len(run["w_minus_b"])), run["w_minus_b"], label=label, **style.kw(len(run["w_minus_b"])))
    ev = result.get("explained_variance", [np.nan, np.nan])
    ax.set_xlabel(f"PC 1 ({100 * ev[0]:.0f} % of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ev[1]:.0f} % of variance)")
    ax.set_title("first-layer W (x: start; o noise, s data)")
    ax.grid(alpha=0.3)
    bx.set_xlabel("snapshot (noise checkpoints, then data epochs)")
    bx.set_ylabel("‖W₁ − B₁‖ (Frobenius)")
    bx.grid(alpha=0.3)
    integer_epochs(bx)
    legend_outside(fig)
    return save_figure(fig, path, title)
