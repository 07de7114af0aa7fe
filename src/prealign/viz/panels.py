"""Panels the experiment figures share, drawn from numbers they are given (no training, no data).

* :func:`band` — one mean ± std band over seeds per epoch.
* :func:`draw_series` — error-bar lines that never hide one another: where two series coincide
  (Table S1's Gaussian and uniform noise at σ = 0 train the same network) the later one is drawn
  with open, smaller markers on top, every series is shifted sideways by a small stated step, and
  the coincidences are returned as words for the legend and the report.
* :func:`plot_heatmaps` — one panel per facet on one colour scale, every cell's value written in
  it, the region at or above a stated threshold outlined (IFA Fig. 3a's *trainable region*) and
  chance marked on the colorbar.

Accuracies arrive in percent; error bars are ± one sample std over seeds (:mod:`prealign.stats`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..stats import mean_std_each
from .style import legend_outside, pyplot, save_figure, shared_colorbar

DODGE = 0.03  # sideways step between series, as a fraction of the smallest x spacing (or of a log decade)


def band(ax, x, arr, label, style, scale: float = 1.0) -> None:
    """Mean ± std over the rows of ``arr`` (runs × epochs, NaN where a run has no value) against ``x``."""
    m, s = mean_std_each(np.asarray(arr, float).T, 0.0)
    m, s = m * scale, s * scale
    ax.plot(x, m, label=str(label), **style.kw(len(x)))
    ax.fill_between(x, m - s, m + s, alpha=0.15, color=style.color, lw=0)


def coincidences(series: Mapping[str, tuple], xname: str = "x") -> list[str]:
    """Where series are the same to float precision (mean and std), in words, one sentence per set
    of series: ``["gaussian and uniform coincide at noise σ = 0"]``. ``series``: ``{label: (xs, mean, std)}``."""
    where: dict[tuple, list] = {}
    xs = list(dict.fromkeys(x for xv, _, _ in series.values() for x in xv))
    for x in xs:
        at = {lab: (m[list(xv).index(x)], s[list(xv).index(x)]) for lab, (xv, m, s) in series.items() if x in list(xv)}
        left = list(at)
        while left:
            first = left.pop(0)
            same = [lab for lab in left if np.isclose(at[lab][0], at[first][0], rtol=1e-9, atol=1e-12)
                    and np.isclose(at[lab][1], at[first][1], rtol=1e-9, atol=1e-12)]
            left = [lab for lab in left if lab not in same]
            if same:
                where.setdefault((first, *same), []).append(x)
    out = []
    for labels, at_x in where.items():
        names = ", ".join(labels[:-1]) + f" and {labels[-1]}"
        out.append(f"{names} coincide at {xname} = " + ", ".join(f"{x:g}" if isinstance(x, float) else str(x)
                                                                  for x in at_x))
    return out


def _offsets(pos: Sequence[float], n: int, log: bool) -> list[np.ndarray]:
    """Sideways positions of ``n`` series at x positions ``pos``: centred on the true x, one
    :data:`DODGE` step apart (multiplicative on a log axis)."""
    x = np.asarray(pos, float)
    if log:
        steps = [10 ** (DODGE * (i - (n - 1) / 2)) for i in range(n)]
        return [x * s for s in steps]
    gaps = np.diff(np.unique(x))
    step = DODGE * (gaps.min() if gaps.size else max(abs(x[0]), 1.0))
    return [x + step * (i - (n - 1) / 2) for i in range(n)]


def draw_series(ax, series: Mapping[str, tuple], styles: Mapping, *, log: bool = False, xname: str = "x",
                ticks: Sequence[str] | None = None) -> list[str]:
    """Error-bar lines ``{label: (positions, mean, std)}`` drawn so that none hides another, in the
    order of ``styles`` (:func:`prealign.viz.style.method_styles`): series ``i`` of ``n`` sits
    ``(i − (n−1)/2)`` :data:`DODGE` steps to the side of its true x, each later series is drawn
    above the earlier ones with smaller, open markers, so a series lying exactly on another still
    shows. ``ticks``: labels of categorical positions. Returns :func:`coincidences` (put them in the
    legend title and the report)."""
    labels = [lab for lab in styles if lab in series]
    for i, lab in enumerate(labels):
        pos, m, s = series[lab]
        shifted = _offsets(np.asarray(pos, float), len(labels), log)[i]
        kw = styles[lab].kw() | {"ms": 4 + 2.0 * (len(labels) - 1 - i), "zorder": 2 + i}
        if i:
            kw["mfc"] = "none"  # an open marker shows the one under it
        ax.errorbar(shifted, m, yerr=s, capsize=3, label=str(lab), **kw)
    if ticks is not None and labels:
        ax.set_xticks(np.asarray(series[labels[0]][0], float), list(ticks))
    if log:
        ax.set_xscale("log")
    return coincidences({lab: series[lab] for lab in labels}, xname)


def series_legend(ax, same: list[str]):
    """The legend beside ``ax``; its title says which series coincide (and that series are shifted sideways)."""
    import textwrap

    title = None
    if same:
        title = "\n".join(textwrap.fill(t, 40) for t in same) + f"\n(series drawn {DODGE:g} x-step apart)"
    leg = legend_outside(ax)
    if leg is not None and title:
        leg.set_title(title, prop={"size": 7})
    return leg


def _stroke():
    """A black edge under a white line, so the outline shows on light and dark cells alike."""
    from matplotlib import patheffects

    return patheffects.withStroke(linewidth=4.0, foreground="black")


def _outline(ax, mask: np.ndarray, **kw):
    """The border of the cells where ``mask`` is true (imshow cells, origin lower), as one LineCollection."""
    from matplotlib.collections import LineCollection

    rows, cols = mask.shape
    pad = np.zeros((rows + 2, cols + 2), bool)
    pad[1:-1, 1:-1] = mask
    segs = []
    for i in range(rows):
        for j in range(cols):
            if not mask[i, j]:
                continue
            if not pad[i, j + 1]:  # below
                segs.append([(j - 0.5, i - 0.5), (j + 0.5, i - 0.5)])
            if not pad[i + 1, j + 2]:  # right
                segs.append([(j + 0.5, i - 0.5), (j + 0.5, i + 0.5)])
            if not pad[i + 2, j + 1]:  # above
                segs.append([(j - 0.5, i + 0.5), (j + 0.5, i + 0.5)])
            if not pad[i + 1, j]:  # left
                segs.append([(j - 0.5, i - 0.5), (j - 0.5, i + 0.5)])
    lines = LineCollection(segs, **kw)
    ax.add_collection(lines)
    return lines


def plot_heatmaps(path, grids: Mapping[str, np.ndarray], xs: Sequence, ys: Sequence, norm, *, xlabel: str, ylabel: str,
                  zlabel: str, chance: float | None = None, threshold: float | None = None, title: str | None = None) -> Path:
    """One panel per ``grids`` entry (``{panel title: array ys × xs}``, NaN = not run) on the shared
    ``norm``; each cell's value written in it; the cells ≥ ``threshold`` outlined in white (the
    region the legend names); ``chance`` and ``threshold`` marked on the colorbar."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    fig, axes = plt.subplots(1, len(grids), figsize=(3.8 * len(grids), 3.5), squeeze=False, layout="constrained")
    cmap = plt.get_cmap("viridis")
    handles = []
    for ax, (name, grid) in zip(axes[0], grids.items()):
        grid = np.asarray(grid, float)
        ax.imshow(grid, origin="lower", aspect="auto", norm=norm, cmap="viridis")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                dark = np.mean(cmap(norm(v))[:3]) < 0.5
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
        if threshold is not None:
            _outline(ax, np.nan_to_num(grid, nan=-np.inf) >= threshold, colors="white", linewidths=2.2,
                     path_effects=[_stroke()], clip_on=False, zorder=3)
        ax.set_xticks(range(len(xs)), [f"{v:g}" if isinstance(v, float) else str(v) for v in xs], fontsize=7)
        ax.set_yticks(range(len(ys)), [f"{v:g}" if isinstance(v, float) else str(v) for v in ys], fontsize=7)
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_ylim(-0.5, len(ys) - 0.5)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(str(name), fontsize=9)
    bar = shared_colorbar(fig, axes, norm, "viridis", zlabel)
    if chance is not None:
        bar.ax.axhline(chance, color="red", lw=1.5)
        handles.append(Line2D([], [], color="red", lw=1.5, label=f"chance ({chance:g})"))
    if threshold is not None:
        bar.ax.axhline(threshold, color="white", lw=2.2, path_effects=[_stroke()])
        handles.append(Line2D([], [], color="white", lw=2.2, path_effects=[_stroke()],
                              label=f"outlined: ≥ {threshold:g} (trainable)"))
    if handles:
        legend_outside(fig, handles, [h.get_label() for h in handles], where="below")
    return save_figure(fig, path, title, tight=False)


__all__ = ["DODGE", "band", "coincidences", "draw_series", "series_legend", "plot_heatmaps"]
