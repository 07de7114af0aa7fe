"""The paper experiments: every file is valid and runs at the smoke budget; claims and tables
compute what they say (checked against numpy on synthetic results; the verdicts themselves in
test_claims.py, the statistics in test_stats.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from prealign.run.config import RunConfig
from prealign.data.registry import DATASETS
from prealign.errors import ConfigError, PrealignError
from prealign.experiments import BUDGETS, desugar, load, load_all, names, parse
from prealign.experiments.claims import check_claim

# every figure/table of both papers that holds an experiment must be covered by some file
EXPECTED_REFS = {
    "ifa": ["Fig. 1", "Fig. 2", "Fig. 3a", "Fig. 3b", "Fig. 3c", "Fig. 4", "Fig. 5", "Fig. 6", "Fig. 7",
            "Table S1", "Table S2"] + [f"Fig. S{i}" for i in range(1, 14)],
    "rnp": ["Table S1", "Fig. S1", "Table S2", "Fig. S3", "Table S3", "Fig. S4", "Table S4", "Fig. S5", "Fig. S6",
            "Table S5", "Fig. S7", "Fig. S8", "Fig. S9", "Fig. S10", "Fig. S11", "Table S6", "Fig. S12",
            "Table S7", "Fig. S13", "Fig. S14", "Table S8", "Fig. S15", "Fig. S16", "Fig. S17", "Fig. S18",
            "Fig. S19", "Fig. S20"],
}


def test_every_paper_figure_and_table_is_covered():
    covered = {"ifa": set(), "rnp": set()}
    for exp in load_all():
        covered.setdefault(exp.paper["paper"], set()).update([exp.paper["ref"], *exp.paper.get("also", [])])
    for paper, refs in EXPECTED_REFS.items():
        missing = [r for r in refs if r not in covered[paper]]
        assert not missing, f"{paper}: no experiment for {missing}"


@pytest.mark.parametrize("name", names())
def test_experiment_file_is_valid(name):
    exp = load(name)
    for budget in BUDGETS:
        points = exp.points(budget)
        assert points, f"{name} has no runs at {budget}"
        keys = {RunConfig.from_dict(p["config"]).key() for p in points}  # bad field -> ConfigError
        assert len(keys) == len(points), f"{name}/{budget}: two grid points give the same run"
    smoke = exp.points("smoke")
    assert len(smoke) <= 4
    for p in smoke:
        c = RunConfig.from_dict(p["config"])
        assert c.epochs <= 2 and (c.train_subset or 10**9) <= 256 and c.noise_samples <= 2048
        assert DATASETS[c.dataset].offline, f"{name}: the smoke budget must run on a fresh machine (mnist5k, digits)"
    for a in exp.analysis_params("smoke"):
        assert a.get("probes", 2) <= 2 and a.get("noise_samples", 0) <= 2048
    for claim in exp.claims:  # parse and whitelist check, without data -> "not run"
        assert check_claim(claim, []).status == "not run"
    # every claim a real budget keeps can be decided by its design (or is skipped there, saying why)
    from prealign.experiments.design import plan

    for budget in ("quick", "paper"):
        for p in plan(exp, budget):
            assert p.status in ("decidable", "skipped") or p.same_as, (name, budget, p.line())
            assert p.status != "skipped" or len(p.reason) > 40, (name, budget, p.id)


@pytest.mark.parametrize("budget", ["quick", "paper"])
def test_no_two_claims_share_a_test_on_the_same_runs(budget):
    """One claim, one row: a test on the same runs is made once (a repeat points to it)."""
    from prealign.experiments.design import same_tests, shared_parts

    assert shared_parts(budget) == []
    if budget == "quick":  # mnist5k stands in for both MNIST (Fig. S3) and CIFAR-10 (Fig. S5)
        assert same_tests(load("rnp_fig_s5"), "quick") == {"rnp-s5-auc": "rnp-s3-speed (rnp_fig_s3)",
                                                           "rnp-s5-acc": "rnp-s3-acc (rnp_fig_s3)"}
    else:
        assert same_tests(load("rnp_fig_s5"), "paper") == {}


def test_grid_sugar_and_restriction():
    d = desugar({"depth": 4, "width": 100, "method": "ifa@30"})
    assert d == {"hidden": [100, 100, 100], "method": "ifa", "angle": 30.0}
    exp = load("rnp_table_s5")
    pts = exp.points("paper", only={"dataset": ["fashion-mnist"]})
    assert len(pts) == 3 * 4 * 5 and {p["config"]["dataset"] for p in pts} == {"fashion-mnist"}  # 5 seeds
    assert {tuple(p["config"]["hidden"]) for p in pts} == {(100,), (100, 100), (100, 100, 100), (100, 100, 100, 100)}
    with pytest.raises(ConfigError):
        exp.points("paper", only={"dataset": ["imagenet"]})
    with pytest.raises(ConfigError):
        exp.points("paper", only={"colour": ["red"]})
    with pytest.raises(PrealignError):
        load("no_such_experiment")
    with pytest.raises(ConfigError):
        parse('[paper]\npaper = "ifa"\nref = "x"\ntitle = "t"\n[budget.smoke]\n[budget.quick]\n[budget.paper]\n[bogus]\n')


ROWS = [{"method": m, "angle": a, "seed": s, "acc": v}
        for (m, a, vals) in (("bp", None, [0.90, 0.91, 0.92]), ("fa", 90.0, [0.80, 0.82, 0.81]),
                             ("ifa@30", 30.0, [0.86, 0.85, 0.87]), ("ifa", 0.0, [0.89, 0.90, 0.88]))
        for s, v in enumerate(vals)]


def test_exact_check_functions_match_numpy():
    """The expression language of deterministic (test = "exact") claims."""
    rows = [dict(r, reads=6 if r["method"] == "bp" else 0) for r in ROWS]
    c = {"id": "a", "text": "", "test": "exact", "check": "mean('reads', method='bp') > mean('reads', method='fa')"}
    v = check_claim(c, rows)
    assert v.status == "held" and v.numbers[0][1] == 6
    v = check_claim({**c, "check": "mean('reads', angle=bottom('angle')) == 0"}, rows)
    assert v.status == "held" and v.numbers[-1][1] == 0
    v = check_claim({**c, "check": "mean('acc', method='ifa') > 0.5"}, rows)  # varies over seeds: not exact
    assert v.status == "inconclusive" and v.numbers[0][1] == pytest.approx(np.mean([0.89, 0.90, 0.88]))
    v = check_claim({**c, "check": "mean('hessian_trace', method='fa') > 0"}, rows)
    assert v.status == "not run" and "hessian_trace" in v.reason


@pytest.mark.parametrize("check", ["__import__('os').system('true')", "mean('acc').real > 0", "open('x')",
                                   "(lambda: 1)()", "mean('acc') ** 2 > 0", "p('acc', {}, {}) > 0"])
def test_claims_reject_anything_but_the_whitelist(check):
    with pytest.raises(ConfigError):
        check_claim({"id": "x", "text": "", "test": "exact", "check": check}, ROWS)


def test_table_mean_std_and_p(tmp_path):
    from prealign.experiments import outputs
    from prealign.experiments.runner import RunInfo

    class Ctx:
        runs = [RunInfo(axes={}, config={}, key=str(i), status="finished", row=dict(r)) for i, r in enumerate(ROWS)]

        def done_runs(self):
            return self.runs

    md = outputs.table({"metric": "acc", "rows": ["method"], "reference": {"method": "fa"}}, Ctx())
    line = next(l for l in md.splitlines() if l.startswith("| ifa |"))
    m, s = np.mean([0.89, 0.90, 0.88]) * 100, np.std([0.89, 0.90, 0.88], ddof=1) * 100  # sample std
    assert f"{m:.2f} ± {s:.2f} (n=3)" in line
    # exact two-sided signed-rank of the 3 seed-paired differences (all positive): 2/8 (rank-sum: 0.100)
    assert "p=0.250" in line and "signed-rank test of the seed-paired differences" in md
    assert "p=" not in next(l for l in md.splitlines() if l.startswith("| fa |"))
    # copies are no replicates: each run again at a second level of a pooled axis (the same numbers,
    # as alpha_B levels under Adam) leaves n = 3 seeds and the same p
    copies = [RunInfo(axes={"alpha_b": 2.0}, config={}, key=f"c{i}", status="finished", row=dict(r))
              for i, r in enumerate(ROWS)]
    for r in Ctx.runs:
        r.axes = {"alpha_b": 1.0}
    Ctx.runs = Ctx.runs + copies
    pooled_md = outputs.table({"metric": "acc", "rows": ["method"], "reference": {"method": "fa"}}, Ctx())
    assert next(l for l in pooled_md.splitlines() if l.startswith("| ifa |")) == line
    assert "pooled over alpha_b" in pooled_md
    Ctx.runs = Ctx.runs[:len(ROWS)]
    assert "Selection: test (papers' protocol" in md  # rows without a selection column: test
    Ctx.runs[0].row["selection"] = "val"
    assert "Selection: mixed: test, val" in outputs.table({"metric": "acc", "rows": ["method"]}, Ctx())
    Ctx.runs[0].row["selection"] = "test"
    # the paper's own numbers are printed beside ours where the experiment lists them
    Ctx.experiment = type("E", (), {"reference": {"t": {"ifa": "88.00 ± 0.10"}}})()
    md = outputs.table({"metric": "acc", "rows": ["method"], "paper": "t"}, Ctx())
    assert "(paper: 88.00 ± 0.10)" in next(l for l in md.splitlines() if l.startswith("| ifa |"))
    assert load("rnp_table_s5").reference["table_s5"]["fashion-mnist/fa/5"] == "83.80 ± 2.22"


def test_every_experiment_runs_at_smoke(tmp_path):
    """The whole pipeline — sweep, analyses, figures, tables, claims, report — for every experiment."""
    from prealign.experiments.runner import reproduce_many
    from prealign.run.store import Store

    store = Store(tmp_path / "store")
    results = reproduce_many(load_all(), "smoke", store, tmp_path / "out", workers=1, progress=False)
    assert [r.name for r in results] == names()  # none crashed
    for r in results:
        assert r.counts["finished"] + r.counts["diverged"] == sum(r.counts.values()), (r.name, r.counts)
        report = (r.folder / "report.md").read_text()
        assert r.ref.split()[1] in report
        # every output is produced or explained; analyses never fail with an exception at smoke
        assert not [m for m in r.missing if m[1].startswith("failed")], (r.name, r.missing)
        assert r.produced, r.name
        for png in r.folder.glob("*.png"):
            assert png.stat().st_size > 1000
    claims = (tmp_path / "out" / "claims.md").read_text()
    assert "| ifa_fig1 |" in claims and "stand-in: digits in place of the paper's" in claims
    assert sum(len(load(n).claims) for n in names()) == claims.count("\n| ") - 1  # one row per claim
    # one seed at smoke: every statistical claim is undecidable by design, none held or not held
    rows = [l for l in claims.splitlines() if l.startswith("| ") and "exact:" not in l][2:]
    assert not [l for l in rows if "✅ held" in l or "❌ not held" in l]
    assert "**Audit: passed**" in claims and "↪ see **rnp-s3-acc (rnp_fig_s3)**" in claims
    # a second pass reuses every run from the store
    again = reproduce_many([load("ifa_fig1")], "smoke", store, tmp_path / "out2", workers=1, progress=False)
    assert "skipped as already in the store: 3" in (again[0].folder / "report.md").read_text()


def test_cli_list_and_errors(capsys):
    from prealign.cli import main

    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in names():
        assert name in out
    assert main(["reproduce", "ifa_fig1", "--only", "dataset"]) == 2
    assert "AXIS=V1,V2" in capsys.readouterr().err
    assert main(["reproduce", "nope"]) == 2


def test_tracked_runs_do_not_reuse_untracked_ones(tmp_path):
    """Fig. 2 tracks the Hessian during training: the same configs finished earlier without the
    tracker (e.g. by Fig. 1) must not stand in for its runs."""
    from prealign.experiments.runner import reproduce
    from prealign.run.store import Store
    from prealign.run.sweep import run_sweep

    exp = load("ifa_fig2")
    store = Store(tmp_path / "store")
    run_sweep([RunConfig.from_dict(p["config"]) for p in exp.points("smoke")], store, workers=1, progress=False)
    res = reproduce(exp, "smoke", store, tmp_path / "out", workers=1, progress=False)
    assert "Fig. 2f-k" in res.produced, res.missing
    assert not math.isnan(float(next(v for v in res.verdicts if v.id == "ifa-2-trace").numbers[0][1]))


def test_trajectory_snapshots_live_in_the_run_storage(tmp_path):
    """Tracked trajectories go where the run's checkpoint goes (issue 15: on a cluster the driver
    cannot read a worker's disk): with checkpoints in an fsspec storage, the snapshots are there,
    nothing is written beside the store, and the trajectory analysis reads them back."""
    import uuid

    import fsspec

    from prealign.experiments.runner import reproduce
    from prealign.run.store import Store

    uri = f"memory://prealign-traj-{uuid.uuid4().hex}"
    store = Store(tmp_path / "store")
    res = reproduce(load("ifa_fig2"), "smoke", store, tmp_path / "out", workers=1, progress=False, storage=uri)
    fs, root = fsspec.core.url_to_fs(uri)
    snapshots = fs.glob(f"{root}/trajectories/*.npy")
    assert snapshots, "no trajectory snapshots in the run storage"
    assert not (store.root / "trajectories").exists() and not (store.root / "checkpoints" / "trajectories").exists()
    assert not [m for m in res.missing if "trajectory" in m[0]], res.missing
    report = (res.folder / "report.md").read_text()
    assert "path_length_ratio" in report or any((res.folder).glob("*trajector*.png"))
    fs.rm(root, recursive=True)


TINY = """
[paper]
paper = "rnp"
ref = "Test"
title = "a tiny experiment"
data = ["digits"]
[base]
dataset = "digits"
train_subset = 256
hidden = [16]
batch_size = 64
[grid]
seed = [0, 1, 2, 3, 4]
[budget.smoke]
[budget.paper]
"""


def test_tiny_experiments_give_the_verdicts_their_design_allows(tmp_path):
    """Through the user's path (parse a TOML, reproduce): runs that are the same network by
    construction are one unit; a method left at chance gives no verdict; a design with 3 seeds is
    undecidable before it runs; the audit passes on what they wrote."""
    from prealign.experiments.audit import audit_folder
    from prealign.experiments.design import plan
    from prealign.experiments.runner import reproduce
    from prealign.run.store import Store

    store = Store(tmp_path / "store")
    # 1. σ = 0 under Gaussian and uniform noise: 20 runs, 10 distinct networks, 5 units
    dup = parse(TINY + """[budget.quick]
base = { epochs = 0, noise_samples = 512 }
grid = { method = ["rnp"], noise_distribution = ["gaussian", "uniform"], noise_std = [0.0, 1.0] }
[[claim]]
id = "aligns"
text = "noise training moves the angle (σ = 1 against σ = 0)"
metric = "init_angle"
a = { noise_std = 1.0 }
b = { noise_std = 0.0 }
test = "less"
""", "tiny_dup")
    res = reproduce(dup, "quick", store, tmp_path / "out", workers=1, progress=False)
    rows = list(__import__("csv").DictReader(open(res.folder / "results.csv")))
    zero = [r for r in rows if float(r["noise_std"]) == 0.0]
    for s in range(5):  # the two σ = 0 runs of a seed recorded the same numbers: one network
        assert len({r["fingerprint"] for r in zero if r["seed"] == str(s)}) == 1
    v = res.verdicts[0]
    assert v.parts[0]["n"] == 5 and dict(v.numbers)["n"] == "5 seeds"
    assert v.status in ("held", "not held", "inconclusive") and v.status != "undecidable"

    # 2. FA after one epoch at lr 1e-5 is at chance: no verdict on it, whatever the test says
    chance = parse(TINY + """[budget.quick]
base = { epochs = 2, lr = 1e-5 }
grid = { method = ["bp", "fa"] }
[[claim]]
id = "bp-beats-fa"
text = "BP beats FA"
metric = "best_test_acc"
a = { method = "bp" }
b = { method = "fa" }
""", "tiny_chance")
    res = reproduce(chance, "quick", store, tmp_path / "out", workers=1, progress=False)
    v = res.verdicts[0]
    assert v.status == "inconclusive" and v.reason.startswith("budget-limited:") and "fa at chance" in v.reason

    # 3. the same claim over 3 seeds cannot be decided, and the design says so before anything runs
    only = {"seed": ["0", "1", "2"]}
    assert plan(chance, "quick", only)[0].status == "undecidable"
    res = reproduce(chance, "quick", store, tmp_path / "out3", workers=1, progress=False, only=only)
    v = res.verdicts[0]
    assert v.status == "undecidable" and "needs ≥ 5 seeds" in v.reason
    report = (res.folder / "report.md").read_text()
    assert "**no** — needs ≥ 5 seeds" in report and "**Audit: passed**" in report
    problems, verdicts = audit_folder(tmp_path / "out", tmp_path / "out3")
    assert problems == [] and {v["id"] for v in verdicts} == {"aligns", "bp-beats-fa"}
