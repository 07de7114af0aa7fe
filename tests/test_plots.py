"""Figures read well: every method has its own (colour, line style), IFA angles are ordered along one
colormap, compared panels share one colour scale, epochs tick on integers, legends cover no data and
layers carry the model's module names. Each figure kind is built through the function its command
calls and checked on the matplotlib objects it drew (Agg backend)."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgba

from prealign import plot_style

METHODS = ["bp", "fa", "rnp", "ifa", "ifa@30", "ifa@60", "ifa@15"]  # ifa = IFA at θ = 0 (what ifa@0 is labelled)
GEOMETRY_LABELS = ["fa", "ifa", "ifa@60", "ifa@30"]


@pytest.fixture
def drawn(monkeypatch):
    """Keep the figures the plotting functions save (they close them) so the test can inspect them."""
    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    monkeypatch.undo()
    plt.close("all")


def _fig(kept):
    figs = [f for f in kept if isinstance(f, matplotlib.figure.Figure)]
    assert len(figs) == 1
    return figs[0]


def _data_lines(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def _assert_distinct_styles(fig, min_lines):
    """Within every panel, no two labelled lines share (colour, line style); the same label looks the same everywhere."""
    seen = {}
    for ax in fig.axes:
        pairs = [(to_rgba(ln.get_color()), ln.get_linestyle()) for ln in _data_lines(ax)]
        assert len(pairs) == len(set(pairs)), [ln.get_label() for ln in _data_lines(ax)]
        for ln, pair in zip(_data_lines(ax), pairs):
            assert seen.setdefault(ln.get_label(), pair) == pair
    assert len(seen) >= min_lines


def _legends(fig):
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]


def _assert_legends_clear(fig):
    """Every legend lies outside every panel that holds data (so it covers none)."""
    renderer = fig.canvas.get_renderer()
    legends = _legends(fig)
    assert legends
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.lines or ax.collections or ax.images:
                assert not box.overlaps(ax.get_window_extent(renderer)), leg.get_texts()[0].get_text()


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


# ------------------------------------------------------------------------------- compare's figures


def test_compare_learning_curves(drawn, tmp_path, model):
    from prealign import plots

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
    from prealign import plots

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
    from prealign.report import write_compare_report
    from prealign.trainer import TrainResult

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
        colors = {t.split(" (n=")[0]: to_rgba(ln.get_color()) for ax in fig.axes for ln, t in
                  zip(_data_lines(ax), [ln.get_label() for ln in _data_lines(ax)])}
        assert colors["ifa@30"] != colors["ifa@60"]
