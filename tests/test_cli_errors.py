"""Bad input to the `prealign` command (issue #13): one line on stderr, exit status 2, no traceback,
nothing written; a closed stdout (`| head`) ends a command quietly; damaged and foreign stores
are named in one line and left untouched."""
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from prealign.cli import main
from prealign.run.config import RunConfig
from prealign.run.store import Store


def _tree(folder: Path) -> dict:
    """Every file under ``folder`` with its size and mtime (to see that nothing was written). SQLite's
    ``-wal``/``-shm`` index files, which any reader of a WAL database creates, and folder mtimes are left out."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def _make_store(root: Path, runs: int = 2, epochs: int = 3) -> Path:
    """A store with ``runs`` runs of ``epochs + 1`` logged epochs (no training needed)."""
    store = Store(root)
    for seed in range(runs):
        run_id = store.start(RunConfig(method="fa", dataset="digits", hidden=(8,), epochs=epochs, seed=seed))
        for e in range(epochs + 1):
            store.log_epoch(run_id, {"epoch": e, "test_acc": 0.1 * e, "loss": 2.0 - 0.1 * e, "pad": "x" * 500})
    store.close()
    return root / "runs.sqlite"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh current directory holding a small store (``st``), a file, a folder and a non-UTF-8 config."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREALIGN_RUNS", raising=False)
    _make_store(tmp_path / "st")
    (tmp_path / "afile.txt").write_text("not a folder\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "run.toml").write_text('method = "fa"\nhidden = [8]\nepochs = 1\ndataset = "digits"\n')
    (tmp_path / "latin1.toml").write_bytes('name = "réseau"\n'.encode("latin-1"))
    return tmp_path


BIG = str(2**70)

# (argv, words the one error line must contain); every case of issue #13, item 2
CASES = [
    (["train", "--config", "run.toml", "--threads", "-1"], ["--threads", "in [1, "]),
    (["compare", "--threads", "0"], ["--threads", "in [1, "]),
    (["train", "--config", "latin1.toml"], ["latin1.toml", "UTF-8"]),
    (["train", "--config", "adir"], ["--config", "existing file", "folder"]),
    (["train", "--config", "run.toml", "--out", "st", "--set", "model=lenet", "--set", "hidden=100"], ["lenet", "12×12", "mlp"]),
    (["train", "--config", "run.toml", "--out", "st", "--set", "model=lenet"], ["lenet", "takes no option 'hidden'", "(8,)"]),
    (["runs", "--out", "st", "export", "--csv", "adir"], ["--csv", "folder"]),
    (["runs", "--out", "st", "export", "--csv", "afile.txt/x.csv"], ["--csv", "is a file"]),
    (["datasets", "fetch", "digits", "--root", "afile.txt"], ["--root", "folder"]),
    (["analyze", "hessian", "1", "--out", "st", "--save", "afile.txt"], ["--save", "folder"]),
    (["analyze", "landscape", "1", "--out", "st", "--grid", "0"], ["--grid", "odd integer in [3, 1001]"]),
    (["analyze", "landscape", "1", "--out", "st", "--grid", "-3"], ["--grid", "odd integer in [3, 1001]"]),
    (["analyze", "landscape", "1", "--out", "st", "--grid", "20"], ["--grid", "odd"]),
    (["analyze", "landscape", "1", "--out", "st", "--grid", "100001"], ["--grid", "1001", "grid²"]),  # issue 24
    (["analyze", "robustness", "--method", "fa", "--out", "st", "--seeds", "0"], ["--seeds", "in [1, 10000]"]),
    (["analyze", "robustness", "1", "--out", "st", "--seeds", "0"], ["--seeds", "in [1, 10000]"]),
    (["analyze", "dimensionality", "1", "--out", "st", "--probe", "0"], ["--probe", ">= 1"]),
    (["train", "--config", "run.toml", "--out", "st", "--set", f"seed={BIG}"], ["seed", "4294967295"]),
    (["compare", "--seeds", f"0,{BIG}"], ["--seeds", "4294967295"]),
    (["analyze", "hessian", "1", "--out", "st", "--seed", BIG], ["--seed", "4294967295"]),
    (["train", "--config", "run.toml", "--out", "st", "--set", "hidden=100,-5"], ["hidden", "-5"]),
    (["compare", "--hidden=-100"], ["--hidden", "-100"]),
    (["compare", "--hidden", "100,-5"], ["--hidden", "100,-5"]),
    (["analyze", "hessian", "1", "--out", "st", "--samples", "-5"], ["--samples", ">= 1"]),
    (["analyze", "landscape", "1", "--out", "st", "--samples", "-5"], ["--samples", ">= 1"]),
    (["analyze", "ood", "1", "--out", "st", "--test-size", "-300"], ["--test-size", ">= 1"]),
    (["analyze", "dimensionality", "1", "--out", "st", "--probe", "-5"], ["--probe", ">= 1"]),
    (["analyze", "landscape", "1", "--out", "st", "--radius", "nan"], ["--radius", "finite"]),
    (["analyze", "landscape", "1", "--out", "st", "--radius", "inf"], ["--radius", "finite"]),
    (["analyze", "ood", "1", "--out", "st", "--device", "bogus"], ["--device", "bogus"]),
    (["analyze", "meta", "--device", "bogus"], ["--device", "bogus"]),
    (["compare", "--device", "bogus"], ["--device", "bogus"]),
    (["bench", "--device", "bogus"], ["--device", "bogus"]),
    (["compare", "--device", "meta"], ["--device", "not supported"]),
    (["compare", "--device", "cuda:99"], ["--device", "cuda:99"]),
    (["analyze", "meta", "--seeds", "0"], ["--seeds", ">= 1"]),
    (["runs", "--out", "st", "show", "%"], ["no run '%'"]),
    (["runs", "--out", "st", "show", "_"], ["no run '_'"]),
    (["runs", "--out", "st", "show", "1" * 30], ["no run"]),
    (["runs", "--out", "nowhere", "list"], ["no result store"]),
    (["analyze", "hessian", "1", "--out", "nowhere"], ["no result store"]),
    (["nosuchcommand"], ["invalid choice"]),
    (["runs", "--out", "st", "show"], ["RUN"]),
]


def _one_line_error(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("prealign") and ": error: " in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_one_line_exit_2_nothing_written(argv, words, workdir, capsys):
    before = _tree(workdir)
    line = _one_line_error(capsys, argv)
    for w in words:
        assert w in line, line
    assert _tree(workdir) == before  # no store, folder, CSV or half-written output


def test_argparse_error_names_the_subcommand_and_its_help(workdir, capsys):
    line = _one_line_error(capsys, ["analyze", "landscape", "1", "--grid", "0"])
    assert line == ("prealign analyze landscape: error: argument --grid: must be an odd integer in [3, 1001] (1001 = "
                    "points per axis; a surface holds grid² loss evaluations), got '0' "
                    "(see prealign analyze landscape --help)")
    assert main(["analyze", "landscape", "--help"]) == 0  # --help still exits 0 (in-process: returned)
    assert "--grid" in capsys.readouterr().out


def test_csv_to_a_place_nobody_can_write(workdir, capsys):
    """/proc refuses new files even to root: the OSError becomes one line, nothing else is written."""
    if not Path("/proc/self").exists():
        pytest.skip("needs Linux /proc (a folder where even root cannot create files)")
    line = _one_line_error(capsys, ["runs", "--out", "st", "export", "--csv", "/proc/prealign-test.csv"])
    assert "cannot write the CSV file '/proc/prealign-test.csv'" in line


def test_model_too_big_for_the_data_stores_no_failed_run(workdir, capsys):
    """lenet on 8×8 digits is refused before the store is touched (no 'failed' row left behind)."""
    _one_line_error(capsys, ["train", "--config", "run.toml", "--out", "st", "--set", "model=lenet"])
    assert len(Store("st", read_only=True).runs()) == 2


def test_hidden_widths_parse_commas_and_dashes_but_keep_signs():
    assert RunConfig(hidden="100,50").hidden == (100, 50)
    assert RunConfig(hidden="100-50").hidden == (100, 50)  # the 784-100-10 notation still works
    for bad in ("100,-5", "-100", "100--5", "100 -5"):
        with pytest.raises(ValueError, match="hidden"):
            RunConfig(hidden=bad)


# -- a closed stdout ---------------------------------------------------------------------------------
class _ClosedPipe:
    """A stdout whose reader went away."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self):
        return False


@pytest.mark.parametrize("argv", [["runs", "--out", "st", "show", "1", "--json"], ["runs", "--out", "st", "list"],
                                  ["runs", "--out", "st", "show", "1"], ["datasets", "info", "digits"]])
def test_closed_stdout_ends_quietly(argv, workdir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(argv) == 141  # the status of a SIGPIPE death, as `yes | head` reports
    assert capsys.readouterr().err == ""


def test_closed_stdout_in_a_real_pipe(workdir):
    """`prealign runs show 1 --json | head -c 0`: no traceback, no 'Exception ignored' at exit."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "prealign.cli", "runs", "--out", "st", "show", "1", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=workdir)
    proc.stdout.close()  # the reader is gone before the first write
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


# -- damaged and foreign stores ----------------------------------------------------------------------
def _damage(path: Path) -> bytes:
    """Overwrite every page but the first (header and schema) with garbage, as a bad disk would."""
    data = bytearray(path.read_bytes())
    page = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    assert len(data) >= 3 * page
    data[page:] = b"\xde\xad" * ((len(data) - page) // 2)
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("argv", [["runs", "--out", "st", "list"], ["runs", "--out", "st", "show", "1"],
                                  ["runs", "--out", "st", "export", "--csv", "all.csv"],
                                  ["--quiet", "compare", "--out", "st", "--methods", "fa", "--seeds", "1", "--epochs", "1",
                                   "--dataset", "digits", "--hidden", "8", "--workers", "1"]])
def test_damaged_store_one_line_and_left_alone(argv, workdir, capsys):
    damaged = _damage(workdir / "st" / "runs.sqlite")
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert "'st/runs.sqlite' is damaged" in err[-1] and "prealign will not overwrite it" in err[-1]
    assert "backup" in err[-1]
    assert (workdir / "st" / "runs.sqlite").read_bytes() == damaged
    assert not (workdir / "all.csv").exists()


def test_store_that_is_not_a_database(workdir, capsys):
    (workdir / "st" / "runs.sqlite").write_bytes(b"this is not sqlite" * 100)
    line = _one_line_error(capsys, ["runs", "--out", "st", "list"])
    assert "damaged" in line and "file is not a database" in line


def test_sqlite_file_of_another_program(workdir, capsys):
    other = workdir / "other" / "runs.sqlite"
    other.parent.mkdir()
    sqlite3.connect(other).execute("CREATE TABLE notes (t TEXT)").connection.commit()
    before = other.read_bytes()
    line = _one_line_error(capsys, ["runs", "--out", "other", "list"])
    assert "is not a prealign result store" in line and other.read_bytes() == before


def test_library_refuses_the_same_values_from_python():
    """The values the CLI refuses at parse time are refused by the analysis functions too."""
    import torch

    from prealign import mlp
    from prealign.analysis import hessian_summary, perturbed_surface
    from prealign.analysis.generalization import feature_effective_ranks
    from prealign.errors import ConfigError

    model = mlp([4, 3, 2], rule="bp", generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(8, 4), torch.arange(8) % 2
    with pytest.raises(ConfigError, match="n_samples"):
        hessian_summary(model, x, y, n_samples=-5)
    for axis in ([], [0.0], [float("nan"), 0.0, 1.0]):
        with pytest.raises(ConfigError, match="alphas"):
            perturbed_surface(model, None, x, y, alphas=axis)
    with pytest.raises(ConfigError, match="probe"):
        feature_effective_ranks(model, x[:0])
    with pytest.raises(ValueError, match="seed"):
        RunConfig(seed=2**70)
    with pytest.raises(ValueError, match="seed"):
        RunConfig(seed=-1)
