"""How every prealign figure looks, in one place: method label → (colour, line style, marker).

* Base methods (``bp``, ``fa``, ``rnp``, ``dfa``, ``kp``, ``usf``, ``brsf``, ``frsf``) keep one fixed colour
  in every figure, solid line, own marker.
* The IFA family (``ifa`` = IFA at θ = 0°, ``ifa@θ``) is coloured along one ordered colormap by the
  initial angle θ (degrees; fixed scale 0° … max(90°, largest θ), so ``ifa@30`` has the same colour in
  every figure that spans ≤ 90°); its members also get distinct line styles and markers, in θ order.
* Any other label (seeds, layers, conditions, run names) gets a distinct fallback (colour, line style).

Also here: integer epoch ticks, legends placed outside the data, one colour scale shared by
panels meant to be compared, and how every figure is drawn and saved (:func:`pyplot`,
:func:`save_figure`: Agg backend, PNG at 150 dpi).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BASE_COLORS = {"bp": "black", "fa": "tab:red", "rnp": "tab:orange", "dfa": "tab:brown", "kp": "tab:pink",
               "usf": "tab:gray", "brsf": "tab:olive", "frsf": "tab:cyan"}
BASE_MARKERS = {"bp": "o", "fa": "s", "rnp": "^", "dfa": "v", "kp": "D", "usf": "P", "brsf": "X", "frsf": "*"}
# noise warm-up (issue 17): X+noise has a colour of its own and X's marker
WARMUP_COLORS = {"bp": "#1f4e9c", "dfa": "#b8860b", "kp": "#6a3d9a", "usf": "#4d4d4d", "brsf": "#8b8b00",
                 "frsf": "#008b8b"}  # none of the fallback colours
BASE_COLORS.update({f"{m}+noise": c for m, c in WARMUP_COLORS.items()})
BASE_MARKERS.update({f"{m}+noise": BASE_MARKERS[m] for m in WARMUP_COLORS})
FALLBACK_COLORS = ("tab:blue", "tab:green", "tab:purple", "#e7298a", "#66a61e", "#a6761d", "#1b9e77", "#7570b3")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2, 2, 2)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
FAMILY_MARKERS = ("d", "p", "h", "<", ">", "H", "8", "X")  # IFA angles: none of the base methods' markers
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")
ANGLE_CMAP = "viridis"
ANGLE_CMAP_RANGE = (0.0, 0.85)  # the colormap's bright yellow end is hard to see on white


@dataclass(frozen=True)
class Style:
    """How one labelled series is drawn; ``hatch`` is for bars (which have no line style)."""

    color: object
    linestyle: object
    marker: str
    hatch: str = ""

    def kw(self, n_points: int | None = None) -> dict:
        """``plot``/``errorbar`` keywords; markers thinned to about 8 per line when ``n_points`` is given."""
        every = max(1, n_points // 8) if n_points else 1
        return {"color": self.color, "linestyle": self.linestyle, "marker": self.marker, "markevery": every,
                "ms": 4}


def ifa_angle(label: str) -> float | None:
    """θ in degrees for an IFA-family label (``ifa`` → 0, ``ifa@30`` → 30), else ``None``."""
    base, at, rest = str(label).partition("@")
    if base != "ifa":
        return None
    if not at:
        return 0.0
    try:
        return float(rest)
    except ValueError:
        return None


def method_of(label) -> str | None:
    """The method label a series label names: the label itself (``fa``, ``ifa@30``) or its last word
    (``"3 ifa@30"``: run 3, under IFA at 30°); ``None`` for anything else (seeds, layers, conditions)."""
    for part in (str(label), str(label).rsplit(maxsplit=1)[-1] if str(label).strip() else ""):
        if part in BASE_COLORS or ifa_angle(part) is not None:
            return part
    return None


def _theta(label) -> float | None:
    method = method_of(label)
    return None if method is None else ifa_angle(method)


def angle_norm(labels: Iterable[str]):
    """The θ → colour scale (degrees): 0 … max(90, largest IFA θ among ``labels``)."""
    from matplotlib.colors import Normalize

    top = max([90.0] + [a for a in map(_theta, labels) if a is not None])
    return Normalize(0.0, top)


def angle_color(theta: float, norm) -> tuple:
    """Colour of IFA at ``theta`` degrees on the ordered angle colormap."""
    import matplotlib

    lo, hi = ANGLE_CMAP_RANGE
    return matplotlib.colormaps[ANGLE_CMAP](lo + (hi - lo) * float(norm(theta)))


def ordered(labels: Iterable) -> list[str]:
    """``labels`` (as strings, first occurrence kept) with the IFA family moved together, in θ order,
    to where its first member stood: the order for drawing and for the legend."""
    labels = list(dict.fromkeys(str(v) for v in labels))
    family = sorted((lab for lab in labels if _theta(lab) is not None), key=_theta)  # stable: ties keep their order
    out = []
    for lab in labels:
        if _theta(lab) is None:
            out.append(lab)
        elif family[0] not in out:  # the first family member stands for all of them
            out += family
    return out


def method_styles(labels: Iterable) -> dict[str, Style]:
    """``{label: Style}`` for ``labels`` (keys are ``str(label)``, in :func:`ordered` order); all
    (colour, line style) pairs differ. Several labels of one method (e.g. runs ``"3 fa"``, ``"4 fa"``)
    share its colour and step through the line styles."""
    labels = ordered(labels)
    norm = angle_norm(labels)
    thetas = sorted({_theta(lab) for lab in labels if _theta(lab) is not None})
    out, free, repeats = {}, 0, {}
    for lab in labels:
        method = method_of(lab)
        if method is None:
            n = len(FALLBACK_COLORS)
            # colour and line style both step, so two series that coincide still differ in dash (Table S1's
            # noise kinds at σ = 0); the pair stays distinct for 64 labels
            out[lab] = Style(FALLBACK_COLORS[free % n], LINESTYLES[(free + free // n) % len(LINESTYLES)],
                             MARKERS[free % len(MARKERS)], HATCHES[(free // n) % len(HATCHES)])
            free += 1
            continue
        key = ifa_angle(method) if ifa_angle(method) is not None else method  # ifa and ifa@0 are one method
        j = repeats[key] = repeats.get(key, -1) + 1  # how many labels of this method came before
        if ifa_angle(method) is not None:
            k = thetas.index(ifa_angle(method)) + j
            out[lab] = Style(angle_color(ifa_angle(method), norm), LINESTYLES[k % len(LINESTYLES)],
                             FAMILY_MARKERS[k % len(FAMILY_MARKERS)], HATCHES[k % len(HATCHES)])
        else:
            out[lab] = Style(BASE_COLORS[method], LINESTYLES[j % len(LINESTYLES)],
                             BASE_MARKERS[method] if j == 0 else MARKERS[j % len(MARKERS)], HATCHES[j % len(HATCHES)])
    return out


def integer_epochs(*axes) -> None:
    """Major x ticks on whole numbers only (epochs, snapshots)."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def legend_outside(target, handles=None, labels=None, where: str = "right", **kw):
    """One legend outside the axes (``target``: an ``Axes`` or a ``Figure``) so it never covers data:
    ``where="right"`` (beside, top-aligned) or ``"below"``. Figures are saved with
    ``bbox_inches="tight"`` so the legend is kept. Returns the legend, or ``None`` when nothing is labelled."""
    from matplotlib.figure import Figure

    is_fig = isinstance(target, Figure)
    if handles is None:
        pairs = {}
        for ax in (target.axes if is_fig else [target]):
            for h, lab in zip(*ax.get_legend_handles_labels()):
                pairs.setdefault(lab, h)
        handles, labels = list(pairs.values()), list(pairs)
    if not handles:
        return None
    if where == "right":
        place = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}
    elif where == "below":
        place = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.02), "ncol": min(len(handles), 4)}
        if not is_fig:  # below the axis's tick labels and label, whatever the layout later does to the axes
            place["bbox_to_anchor"] = (0.5, 0.0)
            place["bbox_transform"] = target.transAxes + _below_labels(target)
    else:
        raise ValueError(f"legend place {where!r}: valid are right, below")
    kw = {"fontsize": 8, "frameon": False, "borderaxespad": 0.0, **place, **kw}
    return target.legend(handles, labels, **kw)


def _below_labels(ax):
    """A downward shift, in points, past everything under ``ax``'s bottom spine (tick labels, the x
    label): font sizes fix that height whatever size a layout later gives the axes, so a legend
    anchored at the axes' bottom plus this shift never covers the label (the old fixed -0.18 of
    the axes' height did, Fig. S19)."""
    from matplotlib.transforms import ScaledTranslation

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    drop = ax.get_window_extent(renderer).y0 - ax.get_tightbbox(renderer).y0  # pixels
    return ScaledTranslation(0.0, -(max(drop, 0.0) + 4.0 * fig.dpi / 72) / fig.dpi, fig.dpi_scale_trans)


def layer_title(name: str, position: int, count: int, shape: str) -> str:
    """How a panel names a weight layer: ``"layer 2 of 3: 100→100 (module 3)"`` — the place among
    the model's weight layers and the shape a reader recognises, then the module name PyTorch gives it."""
    return f"layer {position} of {count}: {shape} (module {name})"


def shared_norm(arrays: Sequence):
    """One ``Normalize`` spanning the finite values of all ``arrays``, so panels meant to be compared
    share one colour scale (all-NaN input: 0 … 1, nothing is drawn anyway)."""
    from matplotlib.colors import Normalize

    values = np.concatenate([np.asarray(a, float).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Normalize(0.0, 1.0)
    lo, hi = float(values.min()), float(values.max())
    return Normalize(lo, hi if hi > lo else lo + 1.0)


def shared_levels(norm, n: int = 20) -> np.ndarray:
    """``n`` evenly spaced contour levels across ``norm``'s range (the same in every panel)."""
    return np.linspace(norm.vmin, norm.vmax, n)


def shared_colorbar(fig, axes, norm, cmap: str, label: str):
    """One colorbar for all ``axes`` drawn with ``norm`` and ``cmap``."""
    from matplotlib.cm import ScalarMappable

    return fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(np.ravel(axes)), label=label)


__all__ = ["Style", "method_styles", "ordered", "method_of", "ifa_angle", "angle_norm", "angle_color", "integer_epochs",
           "legend_outside", "layer_title", "shared_norm", "shared_levels", "shared_colorbar"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def suptitle(fig, text: str, fontsize: float | None = None):
    """The figure's title, wrapped to the figure's width (a long panel title must not run into a
    legend beside the figure)."""
    import textwrap

    size = fontsize or 12
    chars = max(20, int(fig.get_figwidth() * 72 / (0.55 * size)))
    return fig.suptitle(textwrap.fill(str(text), chars), fontsize=size)


def save_figure(fig, path, title: str | None = None, *, tight: bool = True) -> Path:
    """Save ``fig`` as PNG (150 dpi; the bounding box keeps legends placed outside the axes) under a
    ``title`` when given, close it, return the path (its folder created). ``tight``: apply the tight
    layout unless the figure has a layout engine (figures with a shared colorbar use constrained)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if title:
        suptitle(fig, title)
    if tight and fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=150, bbox_inches="tight")
    pyplot().close(fig)
    return path
