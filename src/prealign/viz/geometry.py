"""Figures for the loss geometry (IFA paper Fig. 2a–k, Fig. 5a–d, Fig. S10): PNG at dpi 150, Agg backend.

Each function takes plain arrays (the dicts of :mod:`prealign.analysis.landscape` /
:mod:`prealign.analysis.hessian` unpack into them), writes ``path`` and returns it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .style import (integer_epochs, legend_outside, method_styles, pyplot, save_figure, shared_colorbar, shared_levels,
                    shared_norm)


def _trajectory_panel(ax, alphas, betas, loss, coords, explained_variance_ratio, norm, levels):
    ax.contourf(alphas, betas, np.log10(np.maximum(loss, 1e-12)), levels=shared_levels(norm, levels), norm=norm,
                cmap="viridis")
    from matplotlib.patheffects import withStroke

    coords = np.asarray(coords)
    ax.plot(coords[:, 0], coords[:, 1], "-", color="white", lw=1.2, label="trajectory",  # outlined: seen on
            path_effects=[withStroke(linewidth=2.6, foreground="black")])                # the map and in the legend
    ax.plot(coords[0, 0], coords[0, 1], "o", color="tab:orange", ms=6, label="start")
    ax.plot(0, 0, "*", color="tab:red", ms=11, label="final")
    evr = explained_variance_ratio
    ax.set_xlabel(f"PC1 ({100 * evr[0]:.1f} % of variance)" if evr is not None else "PC1")
    ax.set_ylabel(f"PC2 ({100 * evr[1]:.1f} % of variance)" if evr is not None else "PC2")
    _few_ticks(ax)


def _few_ticks(ax):
    """At most 5 ticks per axis, so side-by-side panels' tick labels do not run into each other."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(5))


def _log_loss(loss):
    return np.log10(np.maximum(np.asarray(loss, float), 1e-12))


def plot_trajectory_landscape(path, alphas, betas, loss, coords, explained_variance_ratio=None,
                              title: str = "training trajectory", levels: int = 30) -> Path:
    """Training loss contours on the top-2 PC plane with the projected trajectory (IFA Fig. 2b–d).

    ``loss``: ``(len(betas), len(alphas))``; ``coords``: ``(T, 2)`` path, last point = final model (origin).
    """
    return plot_trajectory_landscapes(path, {title: (alphas, betas, loss, coords, explained_variance_ratio)},
                                      levels=levels)


def plot_trajectory_landscapes(path, surfaces: Mapping[str, tuple], title: str | None = None, levels: int = 30) -> Path:
    """:func:`plot_trajectory_landscape` for several runs side by side on one colour scale (log10 training
    loss) with one colorbar; ``surfaces = {panel title: (alphas, betas, loss, coords, explained_variance_ratio)}``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(surfaces), figsize=(4.6 * len(surfaces) + 0.8, 4.4), squeeze=False,
                             layout="constrained")
    norm = shared_norm([_log_loss(s[2]) for s in surfaces.values()])
    for ax, (name, (alphas, betas, loss, coords, evr)) in zip(axes[0], surfaces.items()):
        _trajectory_panel(ax, alphas, betas, loss, coords, evr, norm, levels)
        ax.set_title(name)
    shared_colorbar(fig, axes, norm, "viridis", "log10 training loss")
    legend_outside(fig, where="below")
    return save_figure(fig, path, title)


def plot_perturbed_surface(path, alphas, betas, loss, title: str = "loss along top-2 Hessian eigenvectors",
                           levels: int = 30) -> Path:
    """Loss around the trained point, ``θ* + α v₁ + β v₂`` (IFA Fig. 5a, S10); trained point marked."""
    return plot_perturbed_surfaces(path, {title: (alphas, betas, loss)}, levels=levels)


def plot_perturbed_surfaces(path, surfaces: Mapping[str, tuple], title: str | None = None, levels: int = 30) -> Path:
    """Perturbed test-loss surfaces of several runs side by side on one colour scale with one colorbar
    (IFA Fig. 5a, S10); ``surfaces = {panel title: (alphas, betas, loss)}``, ``loss`` shaped ``(len(betas), len(alphas))``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(surfaces), figsize=(4.6 * len(surfaces) + 0.8, 4.4), squeeze=False,
                             layout="constrained")
    norm = shared_norm([s[2] for s in surfaces.values()])
    for ax, (name, (alphas, betas, loss)) in zip(axes[0], surfaces.items()):
        ax.contourf(alphas, betas, loss, levels=shared_levels(norm, levels), norm=norm, cmap="magma")
        ax.plot(0, 0, "*", color="tab:cyan", ms=11, label="trained point")
        ax.set_xlabel("α (along v₁, parameter-space distance)")
        ax.set_ylabel("β (along v₂, parameter-space distance)")
        ax.set_title(name)
        _few_ticks(ax)
    shared_colorbar(fig, axes, norm, "magma", "test loss")
    legend_outside(fig, where="below")
    return save_figure(fig, path, title)


def plot_spectral_density(path, densities: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                          title: str = "Hessian eigenvalue density") -> Path:
    """Smoothed spectral densities ``{label: (grid, density)}`` on a log density axis (IFA Fig. 5b)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for label, style in method_styles(densities).items():
        grid, density = densities[label]
        ax.semilogy(grid, np.maximum(np.asarray(density), 1e-12), label=label, **style.kw(len(grid)))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_ylim(bottom=1e-6)
    ax.set_title(title)
    legend_outside(ax)
    return save_figure(fig, path)


def plot_hessian_tracking(path, curves: Mapping[str, tuple[Sequence[int], Sequence[float], Sequence[float]]],
                          title: str = "Hessian during training") -> Path:
    """Trace and top eigenvalue over epochs, ``{label: (epochs, trace, top_eig)}`` (IFA Fig. 2f–k)."""
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for label, style in method_styles(curves).items():
        epochs, trace, top = curves[label]
        a1.plot(epochs, trace, label=label, **style.kw(len(epochs)))
        a2.plot(epochs, top, label=label, **style.kw(len(epochs)))
    a1.set_ylabel("Hessian trace")
    a2.set_ylabel("top Hessian eigenvalue")
    for ax in (a1, a2):
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        integer_epochs(ax)
    legend_outside(fig)
    fig.suptitle(title)
    return save_figure(fig, path)


__all__ = ["plot_trajectory_landscape", "plot_trajectory_landscapes", "plot_perturbed_surface", "plot_perturbed_surfaces",
           "plot_spectral_density", "plot_hessian_tracking"]
