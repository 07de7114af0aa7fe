"""Every bad-input case of issue 24: one line on stderr, exit status 2, no traceback, nothing accepted
silently, and a message that says what differs and what to do. One table for the command line (each
row: the files it needs, the command, words the line must hold, words it must not), one for the
library (the same property for ``PrealignError``s raised to Python callers), then the cases that
need a process of their own (Ctrl-C) or a store in a given state."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prealign.cli import main
from prealign.errors import PrealignError
from prealign.run.config import RunConfig, run
from prealign.run.store import Store

TINY = 'method = "fa"\nhidden = [8]\nepochs = 1\ndataset = "digits"\ntrain_subset = 64\nval_fraction = 0.0\n'
GRID_BASE = '[base]\ndataset = "digits"\nepochs = 1\nhidden = [8]\ntrain_subset = 64\n'
EXPERIMENT = '''[paper]
paper = "ifa"
ref = "bad claim"
title = "A claim whose expression would overflow"
caption = "t"
data = ["digits"]
[base]
dataset = "digits"
hidden = [8]
epochs = 1
train_subset = 64
[grid]
method = ["fa"]
seed = [0]
[budget.smoke]
[budget.quick]
[budget.paper]
[[claim]]
id = "boom"
text = "an expression that overflows"
test = "exact"
check = "count() * 'x' * 10**20"
'''
FILES = {
    "run.toml": TINY,
    "dict.toml": TINY + 'model = "builtins:dict"\n',
    "yes.toml": TINY + 'same_init = "yes"\n',
    "empty.toml": "# nothing set\n",
    "dictgrid.toml": GRID_BASE + 'model = "builtins:dict"\n[grid]\nmethod = ["fa"]\n',
    "emptygrid.toml": "# an empty grid\n",
    "huge.toml": GRID_BASE + "[grid]\nseed = [" + ",".join(map(str, range(200))) + "]\nlr = [" +
                 ",".join(f"{1e-4 * (i + 1):g}" for i in range(200)) + "]\nbatch_size = [" +
                 ",".join(map(str, range(1, 151))) + "]\n",
    "large.toml": GRID_BASE + "[grid]\nseed = [" + ",".join(map(str, range(200))) + "]\nlr = [" +
                  ",".join(f"{1e-4 * (i + 1):g}" for i in range(100)) + "]\n",
    "claim.toml": EXPERIMENT,
}
QUICK = ["--dataset", "digits", "--seeds", "1", "--epochs", "1", "--hidden", "8", "--workers", "1", "--train-subset", "64"]
HUGE_THREADS = "100000"

# (id, argv, words the one line holds, words it must not hold); "silent" rows were accepted silently before
CASES = [
    ("model builtins:dict (compare)", ["compare", "--model", "builtins:dict", "--methods", "fa", *QUICK],
     ["'builtins:dict'", "class dict", "factory"], []),
    ("model builtins:dict (TOML)", ["train", "--config", "dict.toml"], ["'builtins:dict'", "class dict"], []),
    ("model builtins:dict (--set)", ["train", "--config", "run.toml", "--set", "model=builtins:dict"],
     ["'builtins:dict'", "class dict"], []),
    ("model builtins:dict (sweep)", ["sweep", "dictgrid.toml", "--workers", "1"], ["'builtins:dict'", "class dict"], []),
    ("silent: model builtins:dict (sweep --dry-run)", ["sweep", "dictgrid.toml", "--dry-run"],
     ["'builtins:dict'", "class dict"], []),
    ("claim expression overflowing after training", ["reproduce", "claim.toml", "--budget", "smoke", "--workers", "1",
                                                     "--out", "repro"],
     ["count() * 'x' * 10**20", "arithmetic on something other than a number"], []),
    ("silent: same_init = \"yes\"", ["train", "--config", "yes.toml"], ["'same_init'", "true or false", "'yes'"], []),
    ("silent: --batch-models 0", ["compare", "--batch-models", "0", *QUICK], ["--batch-models", "auto, off or a group size"], []),
    ("silent: --address without ray", ["compare", "--address", "127.0.0.1:1", *QUICK],
     ["--address", "--executor ray", "local"], []),
    ("silent: --runtime-env without ray", ["sweep", "dictgrid.toml", "--runtime-env", "{}"],
     ["--runtime-env", "--executor ray"], []),
    ("silent: rnp with --noise-samples 0", ["compare", "--methods", "rnp", "--noise-samples", "0", *QUICK],
     ["'rnp'", "noise_samples = 0", "'fa'"], []),
    ("silent: empty config file", ["train", "--config", "empty.toml"], ["empty.toml", "sets no keys", "default"], []),
    ("silent: empty grid file", ["sweep", "emptygrid.toml"], ["emptygrid.toml", "sets nothing", "default"], []),
    ("silent: empty grid file (dry run)", ["sweep", "emptygrid.toml", "--dry-run"], ["emptygrid.toml", "sets nothing"], []),
    ("LSTM in a config: what a config user does", ["train", "--config", "run.toml", "--set", "model=custom_nets:recurrent",
                                                   "--set", "hidden=100"],  # (the factory takes no hidden: default)
     ["lstm (LSTM)", "replace it in the factory", "a run from a config"], []),
    ("memory: compare --hidden 10000000", ["compare", "--hidden", "10000000", "--methods", "fa", "--seeds", "1",
                                           "--workers", "1"],  # mnist5k: 7.9e9 parameters, about 190 GB
     ["model 'mlp' hidden=(10000000,)", "7.95e+09 parameters", "190.8 GB", "available", "smaller network"], []),
    ("memory: a noise batch no machine holds", ["train", "--config", "run.toml", "--set", "method=rnp", "--set",
                                                "noise_samples=1e9", "--set", "noise_batch_size=1e9", "--set",
                                                "hidden=1000"],
     ["model 'mlp' hidden=(1000,)", "a batch of 1000000000", "smaller network or batch"], []),
    ("threads: train --threads 100000", ["train", "--config", "run.toml", "--threads", HUGE_THREADS],
     ["--threads", "CPU cores"], []),
    ("threads: compare --threads 100000", ["compare", "--threads", HUGE_THREADS, *QUICK], ["--threads", "CPU cores"], []),
    ("threads: bench --threads 100000", ["bench", "--quick", "--threads", HUGE_THREADS], ["--threads", "CPU cores"], []),
    ("workers: compare --workers 100000", ["compare", "--methods", "fa", "--workers", HUGE_THREADS],
     ["--workers", "CPU cores"], []),
    ("threads: --cpus-per-run 100000 (local)", ["compare", "--cpus-per-run", HUGE_THREADS, *QUICK],
     ["--cpus-per-run", "CPU cores"], []),
    ("grid: 20,000 runs without --yes", ["sweep", "large.toml"], ["large.toml", "20,000 runs", "add --yes"], []),
    ("grid: 6,000,000 runs even with --yes", ["sweep", "huge.toml", "--yes"],
     ["huge.toml", "6,000,000 combinations", "more than the 1,000,000", "split it"], []),
    ("compare: 40,000 runs without --yes", ["compare", "--seeds", "10000", "--methods", "bp,fa,ifa,rnp",
                                            "--dataset", "digits"], ["40,000 runs", "--yes"], []),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREALIGN_RUNS", raising=False)
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("prealign") and ": error: " in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case, argv, words, absent", CASES, ids=[c[0] for c in CASES])
def test_every_bad_input_is_one_line_exit_2_and_writes_nothing(case, argv, words, absent, workdir, capsys):
    before = _tree(workdir)
    line = one_line_error(capsys, argv)
    for w in words:
        assert w in line, line
    for w in absent:
        assert w not in line, line
    assert _tree(workdir) == before, f"{case}: something was written"


def test_a_grid_of_6_million_runs_dry_run_answers_at_once(workdir, capsys):
    start = time.perf_counter()
    assert main(["sweep", "huge.toml", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert time.perf_counter() - start < 10, "the count is computed from the axis lengths, nothing expanded"
    assert out.startswith("huge.toml: 6,000,000 runs; too many to list (over 10,000); more than the 1,000,000 one "
                          "grid may expand: split it into several grid files"), out
    assert main(["sweep", "large.toml", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("large.toml: 20,000 runs; too many to list (over 10,000); a sweep of it "
                                              "needs --yes")
    assert main(["sweep", "huge.toml", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 6_000_000
    assert not (workdir / "prealign-runs").exists()


def test_device_tpu_is_refused_also_where_the_run_is_stored(workdir, capsys):
    """A stored run was served for any device string (the device is not part of the key)."""
    assert main(["--quiet", "train", "--config", "run.toml", "--json"]) == 0
    capsys.readouterr()
    line = one_line_error(capsys, ["train", "--config", "run.toml", "--set", "device=tpu"])
    assert "'device'" in line and "'tpu'" in line and "cuda:N" in line


# -- stores: damaged or missing checkpoints of finished runs, a 0-byte store, another program's database --------
@pytest.fixture
def finished(workdir):
    """A store holding one finished run (id 1) with its checkpoint."""
    store = Store(workdir / "st")
    result = run(RunConfig.from_toml(str(workdir / "run.toml")), store, progress=False)
    path = store.checkpoint_file(result.run_id).path
    store.close()
    return workdir, Path(path)


def test_a_finished_runs_damaged_checkpoint_is_not_called_unfinished(finished, capsys):
    workdir, ckpt = finished
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\0" * 64
    ckpt.write_bytes(bytes(data))
    line = one_line_error(capsys, ["analyze", "hessian", "1", "--out", "st", "--samples", "8", "--probes", "1"])
    assert "run 1 finished, but its saved weights" in line and "is damaged" in line, line
    assert "unfinished" not in line and "prealign runs remove 1" in line


def test_a_finished_runs_missing_checkpoint_says_how_to_train_it_again(finished, capsys):
    workdir, ckpt = finished
    ckpt.unlink()
    line = one_line_error(capsys, ["analyze", "hessian", "1", "--out", "st", "--samples", "8", "--probes", "1"])
    assert "are missing" in line and "re-run it to create them" not in line, line
    assert "prealign runs remove 1" in line and "serves the stored result" in line
    assert main(["runs", "--out", "st", "remove", "1"]) == 0  # and the fix works: the config trains again
    assert Store(workdir / "st").runs() == []
    result = run(RunConfig.from_toml(str(workdir / "run.toml")), Store(workdir / "st"), progress=False)
    assert Path(Store(workdir / "st").checkpoint_file(result.run_id).path).exists()


def test_a_zero_byte_store_is_an_empty_store_for_reading_and_writing(workdir, capsys):
    (workdir / "zero").mkdir()
    (workdir / "zero" / "runs.sqlite").write_bytes(b"")
    assert main(["runs", "--out", "zero", "list"]) == 0  # was: "not a prealign result store" (compare wrote it)
    assert "no runs" in capsys.readouterr().err
    assert (workdir / "zero" / "runs.sqlite").read_bytes() == b""  # reading wrote nothing
    assert main(["--quiet", "compare", "--out", "zero", "--methods", "fa", *QUICK, "--json"]) == 0
    assert len(Store(workdir / "zero", read_only=True).runs()) == 1


def test_another_programs_database_is_refused_for_writing_as_for_reading(workdir, capsys):
    import sqlite3

    (workdir / "other").mkdir()
    db = workdir / "other" / "runs.sqlite"
    sqlite3.connect(db).execute("CREATE TABLE notes (t TEXT)").connection.commit()
    before = db.read_bytes()
    line = one_line_error(capsys, ["--quiet", "compare", "--out", "other", "--methods", "fa", *QUICK])
    assert "not a prealign result store" in line and "notes" in line and db.read_bytes() == before


# -- the library: the same one-line errors for Python callers ------------------------------------------------
def _tiny_mlp(rule="fa"):
    import prealign as pa

    return pa.mlp([4, 3, 5], rule=rule, generator=torch.Generator().manual_seed(0))


def _pretrain_wrong_shape():
    import prealign as pa

    pa.pretrain_noise(_tiny_mlp(), 64, input_shape=(5,), progress=False)


def _pretrain_wrong_classes():
    import prealign as pa

    pa.pretrain_noise(_tiny_mlp(), 64, num_classes=9, progress=False)


def _hessian_func_on_dfa():
    import prealign as pa
    from prealign.analysis.hessian import hessian_operator

    model = _tiny_mlp("dfa")
    op = hessian_operator(model, x=torch.randn(8, 4), y=torch.arange(8) % 5, batch_size=4, method="func")
    with pa.exact_gradients(model):
        op.hvp(torch.ones(op.shape[0]))


def _replace_builtin():
    from prealign.models import register_model

    register_model("mlp", lambda input_shape, num_classes: None)


def _factory_that_raises():
    from prealign.models import build_model

    build_model("builtins:divmod", (1, 8, 8), 10)  # divmod((1, 8, 8), 10): a raw TypeError before


LIBRARY = [
    ("pretrain_noise(input_shape=(5,))", _pretrain_wrong_shape, ["shape (5,)", "input_shape="]),
    ("pretrain_noise(num_classes=9) on 5 outputs", _pretrain_wrong_classes, ["(5,) per sample", "num_classes=5"]),
    ("Hessian method='func' on DFA", _hessian_func_on_dfa, ["'func'", "method='autograd'"]),
    ("register_model('mlp') without replace", _replace_builtin, ["'mlp' is taken", "replace=True"]),
    ("a factory that raises", _factory_that_raises, ["'builtins:divmod'", "factory raised TypeError"]),
]


@pytest.mark.parametrize("case, fn, words", LIBRARY, ids=[c[0] for c in LIBRARY])
def test_library_errors_are_one_line_prealign_errors(case, fn, words):
    with pytest.raises(PrealignError) as err:
        fn()
    text = str(err.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_rule_of_says_mixed_when_strict_false_left_every_layer_on_backprop():
    import prealign as pa
    from torch import nn

    model = nn.Sequential(nn.LSTM(4, 3))
    with pytest.warns(UserWarning, match="lstm|0 \\(LSTM\\)"):
        pa.convert(model, "fa", strict=False)
    assert pa.rule_of(model) == "mixed"  # the docs' word; it was None
    assert pa.rule_of(nn.Sequential(nn.LSTM(4, 3))) is None  # never converted


def test_budget_line_names_the_methods_that_pretrain_on_noise():
    from prealign.cli import build_parser
    from prealign.cli.compare import build_configs
    from prealign.reports.compare import budget_line, settings_of

    args = build_parser().parse_args(["compare", "--methods", "bp,fa,bp+noise", "--dataset", "digits", "--seeds", "1"])
    line = budget_line(settings_of(build_configs(args), device="cpu"))
    assert "500,000 noise samples for bp+noise" in line and "rnp" not in line, line


def test_a_checkpoint_of_another_network_says_which_layer_differs(tmp_path):
    import prealign as pa
    from prealign.run.trainer import TensorData

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 4, 4, generator=g)
    data = TensorData(x[:48], x[:48].flatten(1)[:, :3].argmax(1), x[48:], x[48:].flatten(1)[:, :3].argmax(1), num_classes=3)
    ckpt = tmp_path / "c.pt"
    pa.train(pa.mlp([16, 8, 3], generator=torch.Generator().manual_seed(0)), data, epochs=1, checkpoint=ckpt,
             progress=False, val_fraction=0)
    with pytest.raises(PrealignError) as err:
        pa.train(pa.mlp([16, 6, 3], generator=torch.Generator().manual_seed(0)), data, epochs=2, checkpoint=ckpt,
                 progress=False, val_fraction=0)
    text = str(err.value)
    assert "model: layer 1: FeedbackLinear(in_features=16, out_features=8" in text and "out_features=6" in text, text
    assert "there" in text and "now" in text and "\n" not in text


# -- Ctrl-C while a worker process is still importing torch ---------------------------------------------------
def test_ctrl_c_while_workers_start_prints_one_line_and_no_traceback(tmp_path):
    """SIGINT to the whole process group (what a terminal's Ctrl-C sends) while the spawned workers are
    still importing torch: before, a worker printed a 30-line KeyboardInterrupt traceback (1 in 3)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PREALIGN_RUNS": str(tmp_path / "st")}
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "prealign.cli", "--quiet", "compare", "--methods", "bp,fa",
                                 "--dataset", "digits", "--seeds", "2", "--epochs", "1", "--hidden", "8",
                                 "--workers", "2", "--batch-models", "off", "--json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path, env=env,
                                start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _children(proc.pid):
            time.sleep(0.02)
        assert _children(proc.pid), "no worker process started"
        time.sleep(0.2 * attempt)  # mid-import: torch takes seconds to import in a fresh process
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert code == 130 and err.strip().splitlines() == [
            "prealign: interrupted; finished runs are saved, re-run the same command to resume"], err


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        pytest.skip("needs ps")
    return [int(p) for p in out.split()]


@pytest.mark.ray
def test_a_ray_task_no_node_can_hold_is_refused_not_left_waiting(tmp_path):
    """--cpus-per-run beyond the largest node: Ray would keep the task pending forever."""
    from prealign.run.sweep import run_sweep

    cfg = RunConfig.from_toml(TINY)
    with pytest.raises(PrealignError, match=r"asks for 64 CPU\(s\).*largest node.*wait forever"):
        run_sweep([cfg], tmp_path / "st", executor="ray", cpus_per_run=64, progress=False)


def test_a_network_larger_than_the_gpus_free_memory_is_refused_before_it_moves(monkeypatch):
    """No GPU here: torch's free-memory query is replaced by a GPU with 1 MB free of 2 MB."""
    from prealign.errors import ConfigError
    from prealign.models import build_model
    from prealign.models.registry import check_device_memory

    model = build_model("mlp", (1, 28, 28), 10, hidden=(1000,), batch_size=64)
    assert model.memory_estimate.bytes > 1e7 and model.memory_estimate.activations > 0
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10**6, 2 * 10**6))
    with pytest.raises(ConfigError, match=r"on cuda:0 needs about .* but the GPU has 1 MB free \(2 MB in all\)"):
        check_device_memory(model, "cuda:0")
    check_device_memory(model, "cpu")  # the CPU was checked when it was built
