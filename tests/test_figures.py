"""The experiment figures and reports show the paper's point (issue 21), checked on the matplotlib
objects each output draws and on the words it adds to the report — not on pixels:

- Fig. 3a shows the trainable region (values in the cells, the region outlined, chance marked) and
  the report says why α_B moves no cell under Adam and that the paper's 100-epoch grid is the protocol;
- S12's effective rank is drawn from a stated baseline (0 … full rank), not on an axis fitted to 0.2 %;
- S4c–d name layers as a reader of the paper does (``layer 2 of 3: 8→8``);
- Table S1's coinciding series both stay visible, and the figure and report say they coincide;
- legends cover neither data nor any axis's labels (S19);
- a band never pools grid levels unsaid (S7: split per data set);
- Fig. 6c shows the robustness gap (clean − corrupted), not clean accuracy again;
- the gradient-masking cosine reaches the CSV and the reports;
- Table S5's data words come from the runs (4,000 images, Fashion-MNIST is the paper's own), and
  its depth-5 row is run.
"""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_rgba

from prealign.experiments import load
from prealign.experiments.runner import RunInfo


def _fig(kept):
    """The one figure the ``drawn`` fixture (conftest.py) kept."""
    figs = [f for f in kept if isinstance(f, matplotlib.figure.Figure)]
    assert len(figs) == 1
    return figs[0]


@pytest.fixture(scope="module")
def model():
    import prealign as pa

    return pa.mlp([20, 8, 8, 3], "fa")


class Ctx:
    """The experiment runner's context as the outputs see it: runs, notes, artifacts, a model per run."""

    def __init__(self, runs, model=None, artifacts=None, experiment=None, budget=None):
        self.runs, self._model, self.artifacts = runs, model, artifacts or {}
        self.notes, self.experiment, self.budget = [], experiment, budget

    def done_runs(self):
        return self.runs

    def note(self, text):
        self.notes.append(text)

    def model(self, run):
        return self._model


def _run(axes, row=None, curves=None, config=None):
    return RunInfo(axes=dict(axes), config={"dataset": "mnist5k", "optimizer": "adam", **(config or {})},
                   key=str(sorted(axes.items())), status="finished", curves=curves or [], row={**axes, **(row or {})})


def _texts_of_axes(fig):
    """Every axis label, tick label and title of every panel (what a legend must not cover)."""
    out = []
    for ax in fig.axes:
        out += [ax.xaxis.label, ax.yaxis.label, ax.title, *ax.get_xticklabels(), *ax.get_yticklabels()]
    return [t for t in out if t.get_visible() and t.get_text()]


def _assert_legends_clear(fig):
    """No legend overlaps a panel holding data, nor any axis label, tick label or title."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.lines or ax.collections or ax.images or ax.patches:
                assert not box.overlaps(ax.get_window_extent(renderer)), leg.get_texts()[0].get_text()
        for text in _texts_of_axes(fig):
            assert not box.overlaps(text.get_window_extent(renderer)), (leg.get_texts()[0].get_text(), text.get_text())


# ------------------------------------------------------------------------------------------ Fig. 3a
def test_fig3a_heatmap_shows_the_trainable_region_and_why_alpha_b_is_flat(drawn, tmp_path):
    from prealign.experiments import outputs

    alpha_w, alpha_b = [0.25, 2.0, 16.0], [0.25, 2.0, 16.0]
    acc = {("fa", 0.25): 0.88, ("fa", 2.0): 0.86, ("fa", 16.0): 0.10, ("ifa", 0.25): 0.90, ("ifa", 2.0): 0.89,
           ("ifa", 16.0): 0.70}  # α_B moves nothing (Adam)
    runs = [_run({"method": m, "alpha_w": w, "alpha_b": b, "seed": 0}, {"max_train_acc": acc[m, w]})
            for m in ("fa", "ifa") for w in alpha_w for b in alpha_b]
    exp = load("ifa_fig3a")
    ctx = Ctx(runs, experiment=exp, budget="quick")
    out = next(o for o in exp.outputs if o.get("z") == "max_train_acc")
    outputs.FIGURES["heatmap"](out, ctx, tmp_path / "h.png")
    fig = _fig(drawn)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["fa", "ifa"]
    for ax, method in zip(panels, ("fa", "ifa")):
        values = sorted(float(t.get_text()) for t in ax.texts)  # every cell's value written in it
        assert values == sorted(round(100 * acc[method, w]) for w in alpha_w for _ in alpha_b)
        outline = [c for c in ax.collections if isinstance(c, matplotlib.collections.LineCollection)]
        assert len(outline) == 1
        segs = {tuple(sorted(map(tuple, np.round(np.asarray(s), 2).tolist()))) for s in outline[0].get_segments()}
        # the trainable cells (≥ 55 %: halfway from chance 10 % to 100 %) are the columns of α_W ≤ 2 (fa)
        # or all three (ifa): the outline is exactly the border of that rectangle, one segment per cell edge
        right = 1.5 if method == "fa" else 2.5
        cols = np.arange(-0.5, right, 1.0)
        border = ({((x, -0.5), (x + 1, -0.5)) for x in cols} | {((x, 2.5), (x + 1, 2.5)) for x in cols}
                  | {((-0.5, y), (-0.5, y + 1)) for y in (-0.5, 0.5, 1.5)}
                  | {((right, y), (right, y + 1)) for y in (-0.5, 0.5, 1.5)})
        assert segs == border
        assert ax.get_xlim() == (-0.5, 2.5) and ax.get_ylim() == (-0.5, 2.5)
    bar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    assert {round(ln.get_ydata()[0], 6) for ln in bar.lines} == {10.0, 55.0}  # chance and the threshold
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert any("chance" in t for t in labels) and any("trainable" in t for t in labels)
    _assert_legends_clear(fig)
    notes = " ".join(ctx.notes)
    assert "alpha_b changes no cell by more than 0 points" in notes
    assert "Adam" in notes and "does not see a constant scale" in notes
    assert "100-epoch grid (`--budget paper`)" in notes
    assert "halfway from chance, 10 %" in notes


# ------------------------------------------------------------------------------------------ S12
def test_s12_effective_rank_is_drawn_from_zero_to_full_rank(drawn, tmp_path, model):
    from prealign.experiments import outputs

    import prealign as pa

    names = list(pa.alignment_angles(model))
    full = {names[0]: 8, names[1]: 8, names[2]: 3}
    hist = [{"seen": s, "weights": {n: full[n] * (0.985 + 0.001 * k) for n in names},
             "spectra": {n: list(np.linspace(2, 1, full[n])) for n in names}} for k, s in enumerate((0, 100, 200))]
    ctx = Ctx([_run({"method": "rnp", "seed": 0})], model, {"erank_noise": [(0, hist), (1, hist)]})
    outputs.FIGURES["erank"]({"panel": "Fig. S12e-g"}, ctx, tmp_path / "e.png")
    fig = _fig(drawn)
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == 3
    for ax, n in zip(panels, names):
        lo, hi = ax.get_ylim()
        assert lo == 0 and hi >= full[n]  # not 0.985·full … 0.987·full, which made a 0.2 % change look steep
        ref = [ln for ln in ax.lines if ln.get_label().startswith("full rank")]
        assert len(ref) == 1 and ref[0].get_ydata()[0] == full[n]
        assert "from 0" in ax.get_ylabel()
        assert "+0.2 %" in ax.get_title() and "untrained" in ax.get_title()
    assert panels[2].get_title().startswith("layer 3 of 3: 8→3 (module 5)")
    assert any("from 0 to each layer's full rank" in n for n in ctx.notes)
    _assert_legends_clear(fig)


# ------------------------------------------------------------------------------------------ S4c–d
def test_s4_alignment_panels_name_layers_as_the_paper(drawn, tmp_path, model):
    from prealign.experiments import outputs

    import prealign as pa

    names = list(pa.alignment_angles(model))
    curves = [{"epoch": e, **{f"angle/{n}": 90.0 - e for n in names}} for e in range(3)]
    runs = [_run({"method": m, "seed": s}, curves=curves) for m in ("fa", "rnp") for s in (0, 1)]
    outputs.FIGURES["alignment"]({}, Ctx(runs, model), tmp_path / "a.png")
    fig = _fig(drawn)
    assert [ax.get_title() for ax in fig.axes] == ["layer 2 of 3: 8→8 (module 3)", "layer 3 of 3: 8→3 (module 5)"]


def test_layer_titles_of_a_convolutional_model():
    from torch import nn

    from prealign.experiments.describe import layer_titles

    net = nn.Sequential(nn.Conv2d(3, 16, 5), nn.ReLU(), nn.Flatten(), nn.Linear(16, 10))
    assert layer_titles(net) == {"0": "layer 1 of 2: 3→16 channels, 5×5 (module 0)",
                                 "3": "layer 2 of 2: 16→10 (module 3)"}


# ------------------------------------------------------------------------------------------ Table S1
def test_s1_coinciding_series_stay_visible_and_are_said(drawn, tmp_path):
    from prealign.experiments import outputs

    angle = {("gaussian", 0.0): 90.0, ("uniform", 0.0): 90.0, ("gaussian", 1.0): 60.0, ("uniform", 1.0): 62.0}
    runs = [_run({"noise_distribution": d, "noise_std": s, "seed": k}, {"init_angle": angle[d, s] + k})
            for d in ("gaussian", "uniform") for s in (0.0, 1.0) for k in (0, 1)]
    exp = load("rnp_table_s1")
    out = next(o for o in exp.outputs if o["kind"] == "line")
    ctx = Ctx(runs)
    outputs.FIGURES["line"](out, ctx, tmp_path / "l.png")
    fig = _fig(drawn)
    ax = fig.axes[0]
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    g, u = lines["gaussian"], lines["uniform"]
    assert g.get_linestyle() != u.get_linestyle()  # was "-" and "-": uniform hid gaussian
    assert u.get_zorder() > g.get_zorder() and u.get_markersize() < g.get_markersize()
    assert to_rgba(u.get_markerfacecolor())[3] == 0  # open: the marker under it shows
    assert g.get_xdata()[0] != u.get_xdata()[0] and abs(g.get_xdata()[0] - u.get_xdata()[0]) < 0.1  # dodged, slightly
    title = " ".join(ax.get_legend().get_title().get_text().split())
    assert "gaussian and uniform coincide at noise σ = 0" in title
    assert any("gaussian and uniform coincide at noise σ = 0" in n for n in ctx.notes)
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 100  # an angle on its whole range
    _assert_legends_clear(fig)


# ------------------------------------------------------------------------------------------ S19
def test_s19_legends_below_panels_leave_the_axis_labels_clear(drawn, tmp_path):
    from prealign.experiments import outputs

    hist = [{"seen": s, "meta_loss": 4.7 - s / 1e4, "mnist5k": 2.35, "uci-digits-28 (stand-in for fashion-mnist)": 2.39}
            for s in (0, 500, 1000)]
    ctx = Ctx([], artifacts={"meta": [(0, hist), (1, hist)]})
    outputs.FIGURES["meta"]({"panel": "Table S10 / Fig. S19 (main Fig. 6a)"}, ctx, tmp_path / "m.png")
    _assert_legends_clear(_fig(drawn))


# ------------------------------------------------------------------------------------------ S7
def test_s7_bands_never_pool_data_sets_unsaid(drawn, tmp_path):
    from prealign.experiments import outputs

    curves = lambda top: [{"epoch": e, "test_acc": top * e / 3, "test_loss": 1.0} for e in range(4)]  # noqa: E731
    top = {"mnist5k": 0.95, "fashion-mnist": 0.8}
    runs = [_run({"dataset": d, "method": m, "depth": k, "seed": s}, curves=curves(top[d] - 0.01 * s))
            for d in top for m in ("fa", "rnp") for k in (2, 4) for s in (0, 1)]
    exp = load("rnp_table_s5")
    out = next(o for o in exp.outputs if o.get("panel", "").startswith("Fig. S7"))
    outputs.FIGURES["curves"](out, Ctx(runs), tmp_path / "c.png")
    fig = _fig(drawn)
    assert len(fig.axes) == 4  # depth rows × data set columns
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["depth = 2\ndataset = fashion-mnist", "depth = 2\ndataset = mnist5k",
                      "depth = 4\ndataset = fashion-mnist", "depth = 4\ndataset = mnist5k"]
    for ax, title in zip(fig.axes, titles):
        tops = [ln.get_ydata()[-1] for ln in ax.lines]
        want = 100 * (top[title.split("= ")[-1]] - 0.005)  # the mean over the data set's two seeds only
        assert tops == pytest.approx([want, want])
    drawn.clear()
    ctx = Ctx(runs)  # two metrics take the columns: the pooling is said in every title and in the report
    outputs.FIGURES["curves"]({**out, "metrics": ["test_acc", "test_loss"]}, ctx, tmp_path / "c2.png")
    fig = _fig(drawn)
    assert all("pooled over dataset ∈ {fashion-mnist, mnist5k}" in ax.get_title() for ax in fig.axes)
    assert any("pooled over dataset" in n for n in ctx.notes)


# ------------------------------------------------------------------------------------------ Fig. 6c
def test_fig6c_shows_the_robustness_gap(drawn, tmp_path):
    from prealign.experiments import outputs

    runs = []
    for m, clean, drop in (("bp", 0.95, 0.10), ("fa", 0.80, 0.20), ("ifa", 0.90, 0.05)):
        for s in (0, 1):
            row = {"corruption_clean": clean, "corruption@1": clean - drop, "corruption@2": clean - 2 * drop}
            row |= {f"corruption_{t}@{v}": clean - drop * v * (1 + i) / 2 for i, t in enumerate(("gaussian_noise", "fog"))
                    for v in (1, 2)}
            runs.append(_run({"method": m, "seed": s}, row))
    exp = load("ifa_fig6")
    out = next(o for o in exp.outputs if "6c" in o["panel"])
    assert out["kind"] == "corruption_gap"
    ctx = Ctx(runs)
    outputs.FIGURES[out["kind"]](out, ctx, tmp_path / "g.png")
    fig = _fig(drawn)
    gap_ax, type_ax = fig.axes[:2]
    assert "clean − corrupted" in gap_ax.get_ylabel()
    lines = {c.get_label().split(" (")[0]: c.lines[0] for c in gap_ax.containers}
    assert list(lines["fa"].get_ydata()) == pytest.approx([20.0, 40.0])  # the gap, not 60 % / 40 % accuracy
    assert list(lines["ifa"].get_ydata()) == pytest.approx([5.0, 10.0])
    bars = {b.get_label().split(" (")[0]: [p.get_height() for p in b] for b in type_ax.containers
            if isinstance(b, matplotlib.container.BarContainer)}
    assert [t.get_text() for t in type_ax.get_xticklabels()] == ["fog", "gaussian noise"]
    assert bars["fa"] == pytest.approx([20.0, 10.0])  # per corruption at severity 1
    assert any("clean 80.0 %" in t.get_text() for leg in fig.legends for t in leg.get_texts())
    assert any("accuracy lost to corruption at severity 1" in n and "fa 20.00" in n for n in ctx.notes)
    _assert_legends_clear(fig)


# ------------------------------------------------------------------------------------ gradient masking
def test_gradient_masking_cosine_reaches_the_csv_and_the_reports(tmp_path):
    import csv

    from prealign.experiments.runner import reproduce
    from prealign.reports.analyze import robustness_tables
    from prealign.run.store import Store

    res = reproduce(load("ifa_fig7"), "smoke", Store(tmp_path / "store"), tmp_path / "out", workers=1, progress=False)
    rows = list(csv.DictReader(open(res.folder / "results.csv")))
    cos = {r["method"]: float(r["grad_cosine"]) for r in rows}
    assert cos["bp"] == pytest.approx(1.0, abs=1e-5) and -1 <= cos["ifa"] <= 1
    assert all(0 <= float(r["grad_sign_agreement"]) <= 1 for r in rows)
    assert "| method | grad cosine |" in (res.folder / "report.md").read_text()
    report = {"epsilons": [0.0], "attacks": ["fgsm"], "sources": ["exact"], "data": "digits",
              "results": {"bp": {"fgsm": {"exact": [[0.9], [0.9]]}}},
              "gradient_agreement": {"bp": [{"cosine": 1.0, "sign_agreement": 1.0}] * 2,
                                     "fa": [{"cosine": 0.1, "sign_agreement": 0.52}, {"cosine": 0.3, "sign_agreement": 0.58}]}}
    cols, body, title = robustness_tables(report)[-1]
    assert cols == ["method", "cos(exact, feedback)", "sign agreement"] and "gradient masking" in title
    assert body[1] == ["fa", "0.200 ± 0.141", "0.550 ± 0.042"]


# ------------------------------------------------------------------------------------------ Table S5
def test_s5_data_words_come_from_the_runs_and_depth_5_is_run():
    from prealign.experiments.describe import data_note, not_run

    exp = load("rnp_table_s5")
    note = data_note(exp, "quick")
    assert ("fashion-mnist — one of the paper's data sets; the first 4,000 of its 60,000 training images, "
            "all 10,000 test images") in note
    assert "mnist5k — used in place of the paper's data" in note and "all 4,000 training images" in note
    assert "5,000" not in exp.budgets["quick"]["note"] + note.split("mnist5k —")[0]
    assert {p["axes"]["depth"] for p in exp.points("quick")} >= {2, 5}
    missing = not_run(exp, "quick")
    assert 5 not in missing.get("depth", []) and missing["depth"] == [3]
    assert missing["dataset"] == ["cifar10", "cifar100", "mnist", "stl10"]
    assert "depth 3" in note and "`--budget paper` runs them" in note


def test_pooled_means_levels_averaged_within_one_point():
    """Fig. 6b's x is the angle each method sets: a point per angle pools no method. Two depths at
    one angle would be pooled, and the report says so."""
    from prealign.experiments.rowdata import pooled

    runs = [_run({"method": m, "seed": s}, {"angle": a}) for m, a in (("fa", 90.0), ("ifa@30", 30.0), ("ifa", 0.0))
            for s in (0, 1)]
    assert pooled(runs, "angle") == {}
    deep = [_run({"method": "ifa", "depth": d, "seed": 0}, {"angle": 0.0}) for d in (2, 4)]
    assert pooled(runs + deep, "angle") == {"depth": [2, 4]}
