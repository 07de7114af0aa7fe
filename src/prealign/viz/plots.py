"""Paper-ready figures (matplotlib, Agg backend, PNG at 150 dpi), one function per figure kind.

Inputs are ``{method label: [curves of seed 0, curves of seed 1, ...]}`` where ``curves`` is a
:attr:`prealign.run.trainer.TrainResult.curves` list. Bands are mean ± std over the seeds that
reached that epoch (runs stopped early or diverged simply end).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..stats import mean_std_each
from .style import integer_epochs, legend_outside, method_styles, pyplot, save_figure

Curves = list[dict[str, float]]



def _band(runs: Sequence[Curves], key: str, scale: float = 1.0):
    """Epochs, mean and std of ``key`` over ``runs`` (finite values only)."""
    by_epoch: dict[int, list[float]] = {}
    for curves in runs:
        for r in curves:
            v = r.get(key)
            if v is not None and math.isfinite(v):
                by_epoch.setdefault(int(r["epoch"]), []).append(v * scale)
    epochs = sorted(by_epoch)
    mean, std = mean_std_each([by_epoch[e] for e in epochs], 0.0)
    return np.array(epochs), mean, std


def _plot_band(ax, runs, key, label, style, scale=1.0):
    epochs, mean, std = _band(runs, key, scale)
    if len(epochs) == 0:
        return
    n = len(runs)
    ax.plot(epochs, mean, label=f"{label} (n={n})" if n > 1 else label, lw=1.6, **style.kw(len(epochs)))
    if n > 1:
        ax.fill_between(epochs, mean - std, mean + std, color=style.color, alpha=0.15, lw=0)


def learning_curves(groups: dict[str, Sequence[Curves]], path, title: str = "Learning curves") -> Path:
    """Test accuracy (%) and test loss (cross-entropy, nats) vs epoch, mean ± std band per method."""
    plt = pyplot()
    styles = method_styles(groups)
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in styles:
        _plot_band(ax_acc, groups[label], "test_acc", label, styles[label], scale=100.0)
        _plot_band(ax_loss, groups[label], "test_loss", label, styles[label])
    ax_acc.set(xlabel="epoch (0 = before training)", ylabel="test accuracy (%)", title="Test accuracy")
    ax_loss.set(xlabel="epoch (0 = before training)", ylabel="test loss (cross-entropy, nats)", title="Test loss")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    integer_epochs(ax_acc, ax_loss)
    legend_outside(fig)
    fig.suptitle(f"{title} — mean ± std over seeds")
    return save_figure(fig, path)


def _keys(groups, prefix: str) -> list[str]:
    """``prefix<module name>`` keys of the first records, in layer order as recorded."""
    keys = []
    for runs in groups.values():
        for curves in runs:
            for r in curves[:1]:
                keys += [k for k in r if k.startswith(prefix) and k not in keys]
    return keys


def alignment_curves(groups: dict[str, Sequence[Curves]], path, title: str = "Alignment") -> Path:
    """Top row: weight alignment angle ∠(W, B) per layer (degrees) vs epoch; bottom row: gradient
    alignment per hidden layer (degrees). Panels are titled with the layer's module name in the model
    (``angle/3`` → ``3``). Methods under ``bp`` are left out (B is unused)."""
    plt = pyplot()
    groups = {k: v for k, v in groups.items() if k.split("@")[0] != "bp"}
    keys, grad_keys = _keys(groups, "angle/"), _keys(groups, "grad_angle/")
    ncol = max(len(keys), len(grad_keys), 1)
    nrow = 2 if grad_keys else 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.8 * nrow), squeeze=False)
    styles = method_styles(groups)
    rows = [(keys, "weight alignment ∠(W, B)", "angle ∠(W, B) (degrees)")]
    if grad_keys:
        rows.append((grad_keys, "gradient alignment at the output of", "∠(delivered, true error) (degrees)"))
    for i, (row_keys, what, ylabel) in enumerate(rows):
        for j, key in enumerate(row_keys):
            ax = axes[i][j]
            for label in styles:
                _plot_band(ax, groups[label], key, label, styles[label])
            name = key.split("/", 1)[1]
            note = "\n(first layer: its B carries no signal)" if i == 0 and j == 0 and len(keys) > 1 else ""
            ax.set(xlabel="epoch (0 = before training)", ylabel=ylabel, title=f"{what} module {name}{note}")
            ax.title.set_fontsize(9)
    for row in axes:
        for ax in row:
            if ax.lines:
                ax.set_ylim(0, 100)
                ax.axhline(90, color="grey", lw=0.8, ls=":")
                ax.grid(alpha=0.3)
                integer_epochs(ax)
            else:
                ax.axis("off")
    legend_outside(fig)
    fig.suptitle(f"{title} — mean ± std over seeds; 90° = unaligned")
    return save_figure(fig, path)


__all__ = ["learning_curves", "alignment_curves"]
