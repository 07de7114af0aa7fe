"""The one grid format (prealign.run.grid) and ``prealign sweep``: expansion rules, one-line errors,
the shipped experiments' runs unchanged, resume after kill -9, the same outputs as ``compare``."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prealign.cli import main
from prealign.errors import ConfigError
from prealign.run.config import RunConfig
from prealign.run.grid import Grid

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "golden" / "experiment_points.json"

TINY = {"dataset": "digits", "hidden": [8], "epochs": 1, "train_subset": 120, "val_fraction": 0.0, "lr": 1e-3}


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _toml(base: dict, grid: dict, zipped: dict | None = None) -> str:
    def value(v):
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines = ["[base]", *(f"{k} = {value(v)}" for k, v in base.items()), "[grid]",
             *(f"{k} = {value(v)}" for k, v in grid.items())]
    if zipped:
        lines += ["[zip]", *(f"{k} = {value(v)}" for k, v in zipped.items())]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ experiments unchanged
def _config_hash(config: dict) -> str:
    """The run key without the data fingerprint (as the fixture was computed: data-independent)."""
    d = RunConfig.from_dict(config).key_fields()
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def test_every_shipped_experiment_expands_to_the_same_runs_as_before_the_grid_module():
    """tests/golden/experiment_points.json was written by the expansion in experiments/__init__.py
    before it moved to run/grid.py: every budget's points (axis labels and config) in order, and the
    full run keys at the smoke budget (offline data), must be unchanged, so no stored run is orphaned.

    ``smoke_keys`` were regenerated once, on purpose, when run keys began to include the network
    (issue 24: :meth:`RunConfig.model_fingerprint`); every one changed. The keys from before are kept as
    ``smoke_config_keys``: they are :meth:`RunConfig.config_key` now, by which the store recognises a
    run stored before (reported, not served)."""
    from prealign.experiments import BUDGETS, load_all

    golden = json.loads(FIXTURE.read_text())
    exps = [e for e in load_all() if e.name in golden]  # experiments added after the fixture have no "before"
    assert sorted(e.name for e in exps) == sorted(golden)
    for exp in exps:
        for b in BUDGETS:
            now = [[{k: str(v) for k, v in p["axes"].items()}, _config_hash(p["config"])] for p in exp.points(b)]
            assert now == golden[exp.name][b], f"{exp.name} at {b}: runs changed"
        configs = [RunConfig.from_dict(p["config"]) for p in exp.points("smoke")]
        assert [c.key() for c in configs] == golden[exp.name]["smoke_keys"], exp.name
        assert [c.config_key() for c in configs] == golden[exp.name]["smoke_config_keys"], exp.name


def test_compare_configs_keep_their_keys():
    """compare builds its configs through the grid now; they are the configs it built by hand before
    (where the old RunConfig dropped a noise budget on a method without noise; it is now a warm-up, so
    the hand-built reference gives it to rnp only)."""
    from prealign.cli import build_parser
    from prealign.cli.compare import build_configs

    args = build_parser().parse_args(["compare", "--methods", "bp,fa,rnp", "--angles", "30", "--seeds", "2",
                                      "--dataset", "digits", "--epochs", "3", "--noise-samples", "2000"])
    old = [RunConfig(method=m, dataset="digits", model="mlp", hidden=(100,), epochs=3, batch_size=64, lr=1e-4,
                     optimizer="adam", weight_decay=0.0, noise_samples=2000 if m == "rnp" else None, patience=None, seed=s, same_init=True,
                     device="auto") for m in ("bp", "fa", "rnp", "ifa@30") for s in (0, 1)]
    assert [c.key() for c in build_configs(args)] == [c.key() for c in old]


# ------------------------------------------------------------------------------ expansion rules
def test_cartesian_zip_and_order():
    g = Grid({"dataset": "digits"}, {"method": ["bp", "fa"], "seed": [0, 1, 2]},
             {"lr": [1e-3, 1e-4], "batch_size": [32, 64]})
    pts = g.points()
    assert len(pts) == 2 * 3 * 2 and g.collapsed == 0
    assert [(p["config"]["method"], p["config"]["seed"], p["config"]["lr"], p["config"]["batch_size"]) for p in pts[:3]] == \
        [("bp", 0, 1e-3, 32), ("bp", 0, 1e-4, 64), ("bp", 1, 1e-3, 32)]  # first axis slowest, zip fastest
    assert all((p["config"]["lr"], p["config"]["batch_size"]) in {(1e-3, 32), (1e-4, 64)} for p in pts)


def test_method_specific_values_apply_only_where_the_method_uses_them():
    g = Grid({"dataset": "digits"}, {"method": ["bp", "fa", "ifa"], "angle": [0, 45, 90], "seed": [0, 1]})
    pts = g.points()
    assert len(pts) == 2 + 2 + 3 * 2 and g.collapsed == 18 - 10
    cfgs = [RunConfig.from_dict(p["config"]) for p in pts]
    assert sorted({c.label for c in cfgs}) == ["bp", "fa", "ifa", "ifa@45", "ifa@90"]
    assert len({c.key() for c in cfgs}) == 10
    assert all(p["axes"]["angle"] is None for p in pts if p["config"]["method"] != "ifa")
    # sugar and inline tables
    pts = Grid({}, {"method": ["ifa@30", {"label": "He", "method": "fa", "alpha_w": 1.0}]}).points()
    assert pts[0]["config"]["angle"] == 30.0 and pts[1]["axes"] == {"method": "He"} and pts[1]["config"]["alpha_w"] == 1.0


@pytest.mark.parametrize("base, grid, zipped, words", [
    ({}, {"methd": ["fa"]}, {}, ["unknown key 'methd'", "did you mean 'method'"]),
    ({"colour": 1}, {"seed": [0]}, {}, ["[base]", "unknown key 'colour'"]),
    ({}, {"seed": []}, {}, ["seed", "non-empty list"]),
    ({}, {"seed": 3}, {}, ["seed", "non-empty list"]),
    ({}, {"seed": [0, 0]}, {}, ["listed twice"]),
    ({}, {"seed": [0]}, {"lr": [1e-3, 1e-4], "batch_size": [32]}, ["same length", "lr=2", "batch_size=1"]),
    ({}, {"lr": [1e-3]}, {"lr": [1e-4]}, ["'lr' is also set by axis"]),
    ({}, {"method": ["bp", "fa"], "angle": [0, 45]}, {}, ["axis 'angle'", "none of the grid's methods", "ifa"]),
    ({}, {"method": ["fa"], "lr": [1e-3, -1.0]}, {}, ["point method=fa, lr=-1.0", "'lr' must be > 0"]),
    ({}, {"method": ["ifa@30"], "angle": [45]}, {}, ["'ifa@30' and angle=45 disagree"]),
])
def test_grid_errors_are_one_line(base, grid, zipped, words):
    with pytest.raises(ConfigError) as err:
        Grid(base, grid, zipped, name="g.toml").points()
    msg = str(err.value)
    assert "\n" not in msg and "g.toml" in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_sweep_cli_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[base]\ndataset = 'digits'\n[grids]\nseed = [0]\n")
    code, out, err = _run(capsys, ["sweep", str(bad), "--dry-run", "--out", str(tmp_path / "st")])
    assert code == 2 and out == "" and err.count("\n") == 1 and "unknown section(s) ['grids']" in err
    code, _, err = _run(capsys, ["sweep", str(tmp_path / "none.toml")])
    assert code == 2 and "existing file" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------ prealign sweep
def _stored(store_dir: Path) -> list[tuple]:
    con = sqlite3.connect(f"file:{store_dir / 'runs.sqlite'}?mode=ro", uri=True)
    try:
        return con.execute("SELECT id, key, status, summary FROM runs ORDER BY id").fetchall()
    finally:
        con.close()


def test_sweep_3_methods_3_angles_2_seeds_resumes_after_kill_9(tmp_path, capsys):
    """A 3-method × 3-angle × 2-seed grid (angles apply to ifa: 10 runs) started as a process, its
    whole process group killed with SIGKILL mid-sweep, run again: every run stored exactly once, the
    runs finished before the kill kept (same id and result), then the compare outputs and --json."""
    grid = tmp_path / "grid.toml"
    grid.write_text(_toml({**TINY, "epochs": 2, "train_subset": 200, "batch_size": 32},
                          {"method": ["fa", "ifa", "bp"], "angle": [0, 45, 90], "seed": [0, 1]}))
    store = tmp_path / "st"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PREALIGN_QUIET": "1"}
    cmd = [sys.executable, "-m", "prealign.cli", "--quiet", "sweep", str(grid), "--out", str(store), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    before, deadline = [], time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (store / "runs.sqlite").exists():
                try:
                    before = [r for r in _stored(store) if r[2] == "finished"]
                except sqlite3.OperationalError:  # the schema is being created
                    before = []
                if len(before) >= 2:
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert 2 <= len(before) < 10, f"killed with {len(before)} of 10 runs finished: not mid-sweep"

    code, out, err = _run(capsys, ["--quiet", "sweep", str(grid), "--out", str(store), "--workers", "1", "--json"])
    assert code == 0, err
    rows = _stored(store)
    assert len(rows) == 10 and len({r[1] for r in rows}) == 10 and all(r[2] == "finished" for r in rows)
    assert set(before) <= set(rows)  # the runs finished before the kill: kept as they were, not retrained
    summary = json.loads(out)  # --json: stdout is exactly the summary
    assert [m["method"] for m in summary["methods"]] == ["fa", "ifa", "ifa@45", "ifa@90", "bp"]
    assert all(m["seeds"] == 2 for m in summary["methods"])
    folder = Path(summary["files"]["report.md"]).parent
    for name in ("report.md", "learning_curves.png", "alignment.png", "epochs.csv", "summary.json", "runs.csv"):
        assert (folder / name).stat().st_size > 0, name
    assert len((folder / "runs.csv").read_text().splitlines()) == 1 + 10
    import csv

    with open(folder / "runs.csv") as f:  # the device each run actually trained on (issue 15)
        assert {r["trained_on"] for r in csv.DictReader(f)} == {"cpu"}
    code, out, _ = _run(capsys, ["runs", "list", "--out", str(store), "--json"])
    assert {r["trained_on"] for r in json.loads(out)} == {"cpu"}
    # --dry-run: every run listed, all stored now; nothing trained
    code, out, _ = _run(capsys, ["sweep", str(grid), "--out", str(store), "--dry-run", "--json"])
    listing = json.loads(out)
    assert code == 0 and listing["total"] == 10 and listing["stored"] == 10 and listing["collapsed"] == 8
    assert {r["key"] for r in listing["runs"]} == {r[1] for r in rows}


def test_sweep_writes_what_compare_writes_for_the_same_grid(tmp_path, capsys):
    """compare is a methods × seeds grid: a sweep file with the same base and axes gives the same runs
    (compare afterwards trains nothing), the same files and the same summary columns and numbers."""
    base = {"dataset": "digits", "hidden": [8], "epochs": 1, "train_subset": 120, "lr": 1e-3, "batch_size": 64}
    grid = tmp_path / "grid.toml"
    grid.write_text(_toml(base, {"method": ["bp", "fa"], "seed": [0, 1]}))
    store = tmp_path / "st"
    code, out, _ = _run(capsys, ["sweep", str(grid), "--out", str(store), "--dry-run"])
    assert code == 0 and out.count(" new ") == 4 and "4 runs, 0 already stored, 4 to train" in out
    code, out, err = _run(capsys, ["--quiet", "sweep", str(grid), "--out", str(store), "--workers", "1", "--json"])
    assert code == 0, err
    sweep = json.loads(out)
    n_runs = len(_stored(store))
    code, out, err = _run(capsys, ["--quiet", "compare", "--methods", "bp,fa", "--seeds", "2", "--dataset", "digits",
                                   "--hidden", "8", "--epochs", "1", "--train-subset", "120", "--lr", "1e-3",
                                   "--workers", "1", "--out", str(store), "--json"])
    assert code == 0, err
    comp = json.loads(out)
    assert len(_stored(store)) == n_runs == 4  # same keys: compare was served from the store
    assert sorted(sweep["files"]) == sorted(comp["files"])
    assert [sorted(m) for m in sweep["methods"]] == [sorted(m) for m in comp["methods"]]
    for a, b in zip(sweep["methods"], comp["methods"]):
        assert (a["method"], a["best_test_acc"], a["run_ids"]) == (b["method"], b["best_test_acc"], b["run_ids"])
    assert comp["settings"]["train_subset"] == 120
    s_dir, c_dir = Path(sweep["files"]["runs.csv"]).parent, Path(comp["files"]["runs.csv"]).parent
    assert (s_dir / "runs.csv").read_text() == (c_dir / "runs.csv").read_text()
    assert (s_dir / "epochs.csv").read_text() == (c_dir / "epochs.csv").read_text()
    # the plain table survives a pipe
    code, out, _ = _run(capsys, ["--quiet", "sweep", str(grid), "--out", str(store), "--workers", "1"])
    assert code == 0 and "test acc (%)" in out and "Report:" in out


def test_sweep_passes_the_resource_options_to_run_sweep(tmp_path, capsys, monkeypatch):
    """--gpus-per-run (the cluster options every sweep command shares) reaches run_sweep unchanged."""
    import prealign.run.sweep as sweep_mod

    real, seen = sweep_mod.run_sweep, {}
    grid = tmp_path / "grid.toml"
    grid.write_text(_toml(TINY, {"method": ["fa"]}))

    def run_sweep(configs, store, *, gpus_per_run=None, **kwargs):  # what issue 15's machinery takes
        seen["gpus_per_run"] = gpus_per_run
        return real(configs, store, **kwargs)

    monkeypatch.setattr(sweep_mod, "run_sweep", run_sweep)
    code, out, err = _run(capsys, ["--quiet", "sweep", str(grid), "--gpus-per-run", "0.25", "--workers", "1",
                                   "--out", str(tmp_path / "st"), "--json"])
    assert code == 0, err
    assert seen == {"gpus_per_run": 0.25} and json.loads(out)["methods"][0]["method"] == "fa"


def test_shipped_example_grid_is_valid():
    g = Grid.from_toml(ROOT / "examples" / "grid.toml")
    assert len(g.points()) == 20 and g.collapsed == 16


def test_gpu_check_fails_loudly_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run its checks")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py")], capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert proc.returncode == 2
    assert "CUDA is not available" in proc.stderr and proc.stderr.count("\n") == 1 and proc.stdout == ""
