"""Figures read well: every method has its own (colour, line style), IFA angles are ordered along one
colormap, compared panels share one colour scale, epochs tick on integers, legends cover no data and
layers carry the model's module names. Each figure kind is built through the function its command
calls and checked on the matplotlib objects it drew (Agg backend)."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_rgba

from prealign.experiments.describe import layer_titles
from prealign.viz import style as plot_style

METHODS = ["bp", "fa", "rnp", "ifa", "ifa@30", "ifa@60", "ifa@15"]  # ifa = IFA at θ = 0 (what ifa@0 is labelled)
GEOMETRY_LABELS = ["fa", "ifa", "ifa@60", "ifa@30"]


def _fig(kept):
    """The one figure the ``drawn`` fixture (conftest.py) kept."""
    figs = [f for f in kept if isinstance(f, matplotlib.figure.Figure)]
    assert len(figs) == 1
    return figs[0]


def _data_lines(ax):
    """``[(label, Line2D)]`` of the labelled series in ``ax`` (plain lines and error-bar plots)."""
    from matplotlib.container import ErrorbarContainer

    out = [(ln.get_label(), ln) for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    return out + [(c.get_label(), c.lines[0]) for c in ax.containers
                  if isinstance(c, ErrorbarContainer) and c.lines[0] is not None]


def _assert_distinct_styles(fig, min_lines):
    """Within every panel, no two labelled lines share (colour, line style); the same label looks the same everywhere."""
    seen = {}
    for ax in fig.axes:
        lines = _data_lines(ax)
        pairs = [(to_rgba(ln.get_color()), ln.get_linestyle()) for _, ln in lines]
        assert len(pairs) == len(set(pairs)), [label for label, _ in lines]
        for (label, _), pair in zip(lines, pairs):
            assert seen.setdefault(label, pair) == pair
    assert len(seen) >= min_lines


def _legends(fig):
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]


def _assert_legends_clear(fig):
    """Every legend lies outside every panel that holds data (so it covers none) and covers no
    axis label, tick label or panel title (issue 21: the S19 legend sat on the x label)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = _legends(fig)
    assert legends
    texts = [t for ax in fig.axes for t in (ax.xaxis.label, ax.yaxis.label, ax.title, *ax.get_xticklabels(),
                                             *ax.get_yticklabels()) if t.get_visible() and t.get_text()]
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.lines or ax.collections or ax.images:
                assert not box.overlaps(ax.get_window_extent(renderer)), leg.get_texts()[0].get_text()
        for text in texts:
            assert not box.overlaps(text.get_window_extent(renderer)), (leg.get_texts()[0].get_text(), text.get_text())
    _assert_panels_clear(fig)


def _assert_panels_clear(fig):
    """No panel's axis label or tick label runs into another panel (the S12 spectra's y labels sat on
    the neighbouring curves when the figure skipped its layout)."""
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    for ax in panels:
        for text in (ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels()):
            if not (text.get_visible() and text.get_text()):
                continue
            box = text.get_window_extent(renderer)
            for other in panels:
                if other is not ax:
                    assert not box.overlaps(other.get_window_extent(renderer)), (text.get_text(), other.get_title())


def _assert_integer_ticks(ax):
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def _legend_labels(fig):
    return [t.get_text() for leg in _legends(fig) for t in leg.get_texts()]


def _curves(model, epochs=3, seed=0):
    """Per-epoch records shaped like the trainer's, with the angle keys the trainer derives from ``model``."""
    import prealign as pa

    rng = np.random.default_rng(seed)
    names = list(pa.alignment_angles(model))
    return [{"epoch": e, "test_acc": 0.1 + 0.2 * e + 0.01 * rng.random(), "test_loss": 2.3 - 0.3 * e,
             **{f"angle/{n}": 90.0 - 5 * e + rng.random() for n in names},
             **{f"grad_angle/{n}": 80.0 - e + rng.random() for n in names[:-1]}} for e in range(epochs + 1)]


@pytest.fixture(scope="module")
def model():
    import prealign as pa

    return pa.mlp([20, 8, 8, 3], "fa")


# ---------------------------------------------------------------------------------------------- style


def test_method_styles_are_distinct_and_ifa_ordered_by_angle():
    unknown = [f"seed {i}" for i in range(20)]
    labels = ["bp", "fa", "ifa@60", "rnp", "ifa", "dfa", "ifa@30", "ifa@90", "kp", "usf", "brsf", "frsf", *unknown]
    styles = plot_style.method_styles(labels)
    assert set(styles) == set(labels)
    pairs = [(to_rgba(s.color), s.linestyle) for s in styles.values()]
    assert len(set(pairs)) == len(pairs)
    # base methods: one fixed colour whatever else is drawn
    assert plot_style.method_styles(["fa"])["fa"] == styles["fa"]
    assert len({to_rgba(styles[m].color) for m in ("bp", "fa", "rnp", "dfa", "kp", "usf", "brsf", "frsf")}) == 8
    # ifa variants: ordered along the colormap by θ, and drawn/listed in θ order
    cmap = matplotlib.colormaps[plot_style.ANGLE_CMAP]
    table = cmap(np.linspace(0, 1, 256))
    position = {m: int(np.argmin(np.abs(table - to_rgba(styles[m].color)).sum(1))) for m in ("ifa", "ifa@30", "ifa@60", "ifa@90")}
    assert position["ifa"] < position["ifa@30"] < position["ifa@60"] < position["ifa@90"]
    family = [m for m in styles if m.startswith("ifa")]
    assert family == ["ifa", "ifa@30", "ifa@60", "ifa@90"]
    assert len({styles[m].linestyle for m in family}) == 4
    # an ifa angle keeps its colour across figures with the same θ range
    assert plot_style.method_styles(["ifa@30"])["ifa@30"].color == styles["ifa@30"].color
    # one method under two labels (ifa is IFA at 0°; runs "3 fa", "4 fa"): same colour, other line style
    for pair in (["ifa", "ifa@0"], ["3 fa", "4 fa"]):
        a, b = plot_style.method_styles(pair).values()
        assert to_rgba(a.color) == to_rgba(b.color) and a.linestyle != b.linestyle


# ------------------------------------------------------------------------------- compare's figures


def test_compare_learning_curves(drawn, tmp_path, model):
    from prealign.viz import plots

    groups = {m: [_curves(model, seed=s) for s in range(2)] for m in METHODS}
    plots.learning_curves(groups, tmp_path / "lc.png")
    fig = _fig(drawn)
    _assert_distinct_styles(fig, len(METHODS))
    for ax in fig.axes:
        _assert_integer_ticks(ax)
    _assert_legends_clear(fig)
    shown = [t.split(" (n=")[0] for t in _legend_labels(fig)]
    assert shown == ["bp", "fa", "rnp", "ifa", "ifa@15", "ifa@30", "ifa@60"]  # the IFA family in θ order


def test_compare_alignment_names_layers_as_the_model(drawn, tmp_path, model):
    import prealign as pa
    from prealign.viz import plots

    groups = {m: [_curves(model, seed=s) for s in range(2)] for m in METHODS}
    plots.alignment_curves(groups, tmp_path / "al.png")
    fig = _fig(drawn)
    _assert_distinct_styles(fig, len(METHODS) - 1)  # bp has no feedback weights
    names = list(pa.alignment_angles(model))
    panels = [ax for ax in fig.axes if ax.lines]
    weight = [ax.get_title().split("\n")[0].rsplit("module ", 1)[1] for ax in panels[:len(names)]]
    assert weight == names
    grad = [ax.get_title().rsplit("module ", 1)[1] for ax in panels[len(names):]]
    assert grad == names[:-1]
    assert not any("layer " in ax.get_title() for ax in panels)  # no invented numbering
    for ax in panels:
        _assert_integer_ticks(ax)
    _assert_legends_clear(fig)


def test_compare_report_through_the_cli_path(drawn, tmp_path, model):
    """``prealign compare`` draws through report.write_compare_report: both figures follow the style."""
    from prealign.reports.compare import write_compare_report
    from prealign.run.trainer import TrainResult

    groups = {}
    for m in ["bp", "fa", "ifa@30", "ifa@60"]:
        runs = []
        for s in range(2):
            r = TrainResult()
            r.curves = _curves(model, seed=s)
            r.best_test_acc, r.best_epoch = max(c["test_acc"] for c in r.curves), 3
            runs.append(r)
        groups[m] = runs
    settings = {"dataset": "digits", "architecture": "20-8-8-3", "seeds": [0, 1], "epochs": 3, "batch_size": 8,
                "lr": 1e-3, "optimizer": "adam", "noise_samples": 0, "same_init": True, "device": "cpu"}
    write_compare_report(tmp_path, groups, settings, 1.0)
    figs = [f for f in drawn if isinstance(f, matplotlib.figure.Figure)]
    assert len(figs) == 2
    for fig in figs:
        _assert_distinct_styles(fig, 3)
        _assert_legends_clear(fig)
        colors = {t.split(" (n=")[0]: to_rgba(ln.get_color()) for ax in fig.axes for t, ln in _data_lines(ax)}
        assert colors["ifa@30"] != colors["ifa@60"]


# ------------------------------------------------------------------------- experiment outputs


def _ctx(model, artifacts=None):
    """Runs of every method in METHODS × 2 seeds × two depths, shaped like the experiment runner's."""
    from prealign.experiments.runner import RunInfo

    runs = []
    for i, m in enumerate(METHODS):
        for seed in range(2):
            for depth in (2, 3):
                theta = 0.0 if m == "ifa" else (float(m.split("@")[1]) if "@" in m else 90.0)
                row = {"method": m, "seed": seed, "depth": depth, "angle": theta, "lr": 10.0 ** -(seed + 2),
                       "best_test_acc": 0.5 + 0.01 * i + 0.02 * depth, "fgsm@0.01": 0.4, "fgsm@0.1": 0.2 - 0.01 * i}
                runs.append(RunInfo(axes={}, config={}, key=f"{m}{seed}{depth}", status="finished",
                                    curves=_curves(model, seed=seed), row=row))

    class Ctx:
        def done_runs(self):
            return runs

        def model(self, run):  # every run here trains `model`'s architecture
            return model

    ctx = Ctx()
    ctx.artifacts = artifacts or {}
    return ctx


def _surface(scale):
    a = np.linspace(-1, 1, 7)
    return {"alphas": a, "betas": a, "loss": scale * (1 + np.add.outer(a ** 2, a ** 2)),
            "coords": np.array([[0.5, 0.5], [0.2, 0.1], [0.0, 0.0]])}


@pytest.mark.parametrize("kind,out", [
    ("curves", {"metrics": ["test_acc", "test_loss"], "facet": "depth"}),
    ("alignment", {"skip_first": False}),
    ("line", {"x": "lr", "y": "best_test_acc", "group": "method", "logx": True}),
    ("series", {"prefix": "fgsm"}),
    ("density", {}),
])
def test_output_lines_follow_the_style(drawn, tmp_path, model, kind, out):
    from prealign.experiments import outputs

    grid = np.linspace(0, 5, 30)
    dens = {"density": [({"method": m}, grid, np.exp(-grid * (1 + i))) for i, m in enumerate(METHODS)]}
    outputs.FIGURES[kind](out, _ctx(model, dens), tmp_path / f"{kind}.png")
    fig = _fig(drawn)
    _assert_distinct_styles(fig, len(METHODS))
    _assert_legends_clear(fig)
    family = [t for t in dict.fromkeys(_legend_labels(fig)) if t.startswith("ifa")]
    assert family == ["ifa", "ifa@15", "ifa@30", "ifa@60"]
    if kind in ("curves", "alignment"):
        for ax in fig.axes:
            _assert_integer_ticks(ax)
    if kind == "alignment":
        import prealign as pa

        assert [ax.get_title() for ax in fig.axes] == list(layer_titles(model).values())
        assert [ax.get_title().rsplit("(module ", 1)[1][:-1] for ax in fig.axes] == list(pa.alignment_angles(model))


@pytest.mark.parametrize("kind", ["heatmap", "landscape", "trajectory"])
def test_compared_panels_share_one_colour_scale(drawn, tmp_path, model, kind):
    from prealign.experiments import outputs

    items = [({"method": m}, _surface(1 + 3 * i)) for i, m in enumerate(GEOMETRY_LABELS)]
    out = {"x": "lr", "y": "depth", "z": "best_test_acc", "facet": "method"} if kind == "heatmap" else {}
    outputs.FIGURES[kind](out, _ctx(model, {"landscape": items, "trajectory": items}), tmp_path / f"{kind}.png")
    fig = _fig(drawn)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    mappables = [m for ax in panels for m in [*ax.images, *ax.collections]
                 if getattr(m, "norm", None) is not None and m.get_array() is not None]
    assert len(mappables) == len(panels) >= 4
    assert len({(m.norm.vmin, m.norm.vmax) for m in mappables}) == 1
    data = np.concatenate([np.ravel(m.get_array()) for m in mappables] if kind == "heatmap" else
                          [np.ravel(res["loss"]) for _, res in items])
    if kind == "trajectory":  # drawn by viz.geometry (as `analyze landscape --trajectory`): log10 training loss
        data = np.log10(data)
    assert mappables[0].norm.vmin <= np.nanmin(data) and mappables[0].norm.vmax >= np.nanmax(data)
    if kind != "heatmap":  # contour panels: the same levels too
        assert len({tuple(m.levels) for m in mappables}) == 1
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1


def test_output_layer_panels_use_layer_titles(drawn, tmp_path, model):
    import prealign as pa
    from prealign.experiments import outputs

    names = list(pa.alignment_angles(model))
    hist = [{"seen": s, "weights": {n: 5.0 - s / 100 for n in names}, "spectra": {n: [3.0, 2.0, 1.0] for n in names}}
            for s in (0, 100, 200)]
    ctx = _ctx(model, {"erank_noise": [(0, hist), (1, hist)]})
    outputs.FIGURES["erank"]({}, ctx, tmp_path / "erank.png")
    fig = _fig(drawn)
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == list(layer_titles(model).values())
    assert list(layer_titles(model)) == names
    _assert_distinct_styles(fig, 2)
    _assert_legends_clear(fig)


# ------------------------------------------------------------------------ robustness/generalization


def _per_method(fn):
    return {m: fn(i, m) for i, m in enumerate(METHODS)}


@pytest.mark.parametrize("layout", ["grid", "overlay"])
def test_adversarial_figure(drawn, tmp_path, layout):
    from prealign.viz.robustness import plot_adversarial

    eps = [0.0, 0.05, 0.1]
    sources = ["exact", "feedback"]
    curve = lambda i: [[0.9 - (0.3 + 0.02 * i + 0.01 * s) * e * 10 for e in eps] for s in range(2)]  # noqa: E731
    report = {"epsilons": eps, "attacks": ["fgsm", "pgd"], "sources": sources,
              "results": _per_method(lambda i, m: {a: {src: curve(i) for src in sources} for a in ("fgsm", "pgd")})}
    plot_adversarial(report, tmp_path / "adv.png", layout=layout)
    fig = _fig(drawn)
    _assert_distinct_styles(fig, len(METHODS) * (len(sources) if layout == "overlay" else 1))
    _assert_legends_clear(fig)
    methods = [t for t in _legend_labels(fig) if t in METHODS]
    assert methods == ["bp", "fa", "rnp", "ifa", "ifa@15", "ifa@30", "ifa@60"]


def test_corruption_and_ood_figures(drawn, tmp_path):
    from prealign.analysis.robustness import summarize_corruption
    from prealign.viz.robustness import plot_corruption, plot_ood

    cats = {"gaussian_noise": "noise", "blur": "blur", "fog": "weather"}
    entry = lambda i: summarize_corruption({"clean": 0.9, "table": {  # noqa: E731
        n: {str(s): 0.8 - 0.05 * s - 0.01 * i for s in (1, 2, 3)} for n in cats}}, cats)
    plot_corruption(_per_method(lambda i, m: [entry(i), entry(i + 0.5)]), tmp_path / "c.png")
    fig = _fig(drawn)
    _assert_distinct_styles(fig, len(METHODS))
    _assert_legends_clear(fig)
    bars = next(ax for ax in fig.axes if ax.get_title().startswith("(c)")).patches
    assert len({(to_rgba(b.get_facecolor()), b.get_hatch()) for b in bars}) == len(METHODS)
    drawn.clear()
    sets = ["clean", "rotated (30°)"]
    plot_ood({"sets": sets, "results": _per_method(lambda i, m: [{s: 0.5 + 0.01 * i for s in sets}] * 2)},
             tmp_path / "o.png")
    fig = _fig(drawn)
    _assert_legends_clear(fig)
    assert len({(to_rgba(b.get_facecolor()), b.get_hatch()) for b in fig.axes[0].patches}) == len(METHODS)


def test_layer_figures_name_modules_and_tick_integers(drawn, tmp_path, model):
    import prealign as pa
    from prealign.viz.robustness import plot_dimensionality, plot_spectra

    names = list(pa.alignment_angles(model))
    history = [{"phase": "noise", "seen": s, "weights": {n: 5.0 - s / 100 for n in names}} for s in (0, 100)]
    history += [{"phase": "data", "epoch": e, "seen": 0, "weights": {n: 4.0 - e / 10 for n in names}} for e in range(4)]
    plot_dimensionality(history, tmp_path / "d.png")
    fig = _fig(drawn)
    assert _legend_labels(fig) == names
    _assert_distinct_styles(fig, len(names))
    _assert_integer_ticks(fig.axes[1])
    _assert_legends_clear(fig)
    drawn.clear()
    plot_spectra({"untrained": {n: [3.0, 2.0, 1.0] for n in names}, "after noise": {n: [2.5, 2.0, 0.5] for n in names}},
                 tmp_path / "s.png")
    fig = _fig(drawn)
    assert [ax.get_title() for ax in fig.axes] == [f"module {n}" for n in names]
    for ax in fig.axes:
        _assert_integer_ticks(ax)
    _assert_legends_clear(fig)


def test_generalization_meta_trajectory_figures(drawn, tmp_path):
    from prealign.viz.robustness import plot_generalization, plot_meta, plot_trajectory

    rows = [{"method": m, "depth": d, "gap": 0.1 * d + 0.01 * i + 0.001 * s}
            for i, m in enumerate(METHODS) for d in (2, 3, 4) for s in range(2)]
    plot_generalization(rows, "depth", tmp_path / "g.png")
    fig = _fig(drawn)
    _assert_distinct_styles(fig, len(METHODS))
    _assert_integer_ticks(fig.axes[0])
    _assert_legends_clear(fig)
    drawn.clear()
    plot_meta(_per_method(lambda i, m: [{"seen": s, "meta_loss": 3.0 - s / 100 - i / 10} for s in (0, 50, 100)]),
              tmp_path / "m.png")
    fig = _fig(drawn)
    _assert_distinct_styles(fig, len(METHODS))
    _assert_legends_clear(fig)
    drawn.clear()
    runs = _per_method(lambda i, m: {"pcs": [[0, i], [1, i], [2, i + 1]], "phases": ["noise", "data", "data"],
                                     "w_minus_b": [3.0, 2.0 - i / 10, 1.0]})
    plot_trajectory({"runs": runs, "explained_variance": [0.6, 0.3]}, tmp_path / "t.png")
    fig = _fig(drawn)
    _assert_distinct_styles(fig, len(METHODS))
    _assert_integer_ticks(fig.axes[1])
    _assert_legends_clear(fig)


# ---------------------------------------------------------------------------------- loss geometry


def test_geometry_surfaces_share_one_colour_scale(drawn, tmp_path):
    from prealign.viz.geometry import plot_perturbed_surfaces, plot_trajectory_landscapes

    surfaces = {f"run {i} {m}": _surface(1 + 3 * i) for i, m in enumerate(GEOMETRY_LABELS)}
    plot_perturbed_surfaces(tmp_path / "p.png", {k: (s["alphas"], s["betas"], s["loss"]) for k, s in surfaces.items()})
    plot_trajectory_landscapes(tmp_path / "t.png", {k: (s["alphas"], s["betas"], s["loss"], s["coords"], [0.7, 0.2])
                                                    for k, s in surfaces.items()})
    figs = [f for f in drawn if isinstance(f, matplotlib.figure.Figure)]
    assert len(figs) == 2
    for fig in figs:
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        sets = [c for ax in panels for c in ax.collections if hasattr(c, "levels")]
        assert len(sets) == len(panels) == len(GEOMETRY_LABELS)
        assert len({(c.norm.vmin, c.norm.vmax) for c in sets}) == 1 and len({tuple(c.levels) for c in sets}) == 1
        assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1
        _assert_legends_clear(fig)
    loss = np.concatenate([s["loss"].ravel() for s in surfaces.values()])
    assert figs[0].axes[0].collections[0].norm.vmin == pytest.approx(loss.min())
    assert figs[0].axes[0].collections[0].norm.vmax == pytest.approx(loss.max())


def test_geometry_lines_styled_by_the_method_in_the_run_label(drawn, tmp_path):
    from prealign.viz.geometry import plot_hessian_tracking, plot_spectral_density

    labels = [f"{i} {m}" for i, m in enumerate(["fa", "ifa@60", "ifa", "ifa@30", "fa"])]
    grid = np.linspace(0, 5, 20)
    plot_spectral_density(tmp_path / "d.png", {lab: (grid, np.exp(-grid * (1 + i))) for i, lab in enumerate(labels)})
    plot_hessian_tracking(tmp_path / "h.png", {lab: ([0, 1, 2], [3.0 + i, 2.0, 1.0], [1.0 + i, 0.5, 0.2])
                                               for i, lab in enumerate(labels)})
    figs = [f for f in drawn if isinstance(f, matplotlib.figure.Figure)]
    styles = plot_style.method_styles(labels)
    assert [lab for lab in styles if "ifa" in lab] == ["2 ifa", "3 ifa@30", "1 ifa@60"]  # θ order
    assert to_rgba(styles["0 fa"].color) == to_rgba(styles["4 fa"].color) == to_rgba(plot_style.BASE_COLORS["fa"])
    for fig in figs:
        _assert_distinct_styles(fig, len(labels))
        _assert_legends_clear(fig)
    for ax in figs[1].axes:
        _assert_integer_ticks(ax)
