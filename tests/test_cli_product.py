"""The `prealign compare / train / runs` commands: outputs, exit codes and one-line errors."""
import json
import os
import subprocess
import sys

import pytest

from prealign.cli import main


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_one_seed_two_epochs_writes_everything(tmp_path, capsys):
    code, out, err = _run(capsys, ["--quiet", "compare", "--seeds", "1", "--epochs", "2", "--noise-samples", "2000",
                                   "--methods", "bp,fa,rnp", "--angles", "30", "--workers", "1", "--out", str(tmp_path), "--json"])
    assert code == 0, err
    summary = json.loads(out)  # --json: stdout is exactly the summary
    assert [m["method"] for m in summary["methods"]] == ["bp", "fa", "rnp", "ifa@30"]
    folder = tmp_path / os.path.basename(os.path.dirname(summary["files"]["report.md"]))
    for name in ("report.md", "learning_curves.png", "alignment.png", "epochs.csv", "summary.json"):
        assert (folder / name).stat().st_size > 0, name
    report = (folder / "report.md").read_text()
    assert "![learning curves](learning_curves.png)" in report and "| method |" in report and "2,000 noise samples" in report
    lines = (folder / "epochs.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 * 3  # 4 runs × epochs 0..2
    ifa = summary["methods"][3]
    assert ifa["final_angle"]["3"] < 45  # ifa@30 starts at 30° and FA keeps it aligned over 2 epochs
    assert summary["settings"]["epochs"] == 2 and summary["layers"] == {"L1": "1", "L2": "3"}
    # the same comparison again is served from the store: no new runs
    code, out2, _ = _run(capsys, ["--quiet", "compare", "--seeds", "1", "--epochs", "2", "--noise-samples", "2000",
                                  "--methods", "bp,fa,rnp", "--angles", "30", "--workers", "1", "--out", str(tmp_path), "--json"])
    assert code == 0
    again = json.loads(out2)
    assert [m["best_test_acc"] for m in again["methods"]] == [m["best_test_acc"] for m in summary["methods"]]
    code, out, _ = _run(capsys, ["runs", "--out", str(tmp_path), "list"])
    assert code == 0 and out.count("finished") == 4
    code, out, _ = _run(capsys, ["runs", "--out", str(tmp_path), "show", "1", "--json"])
    assert code == 0 and len(json.loads(out)["epochs"]) == 3
    code, _, err = _run(capsys, ["runs", "--out", str(tmp_path), "export", "--csv", str(tmp_path / "all.csv")])
    assert code == 0 and "12 rows" in err


def test_compare_table_on_stdout(tmp_path, capsys):
    code, out, err = _run(capsys, ["--quiet", "compare", "--seeds", "2", "--epochs", "1", "--methods", "bp,fa",
                                   "--workers", "1", "--out", str(tmp_path)])
    assert code == 0, err
    assert "test acc (%)" in out and "p vs bp" in out and "±" in out and "report.md" in out
    assert "(n=2)" in out and "selection" in out


@pytest.mark.parametrize("argv, words", [
    (["compare", "--dataset", "nope"], ["unknown data set 'nope'", "mnist5k"]),
    (["compare", "--methods", "bp,backprop"], ["unknown method 'backprop'", "rnp"]),
    (["compare", "--seeds", "zero"], ["--seeds"]),
    (["train", "--config", "/nonexistent/run.toml"], ["--config", "existing file", "run.toml"]),
    (["runs", "--out", "/nonexistent/store", "list"], ["no result store"]),
])
def test_bad_input_is_one_line_exit_2(argv, words, capsys):
    code, out, err = _run(capsys, argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prealign") and ": error: " in lines[0] and "Traceback" not in err
    for w in words:
        assert w in lines[0]


def test_train_config_validation_and_run(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('method = "ifa@10"\nhidden = [16]\nepochs = 1\ntrain_subset = 256\nbatch_size = 64\n')
    code, _, err = _run(capsys, ["train", "--config", str(cfg), "--set", "lrate=3", "--out", str(tmp_path)])
    assert code == 2 and "unknown config key 'lrate'" in err and "valid keys:" in err and "lr," in err
    code, _, err = _run(capsys, ["train", "--config", str(cfg), "--set", "epochs=-2", "--out", str(tmp_path)])
    assert code == 2 and "'epochs'" in err
    code, out, err = _run(capsys, ["--quiet", "train", "--config", str(cfg), "--set", "seed=3", "--out", str(tmp_path), "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["status"] == "finished" and res["config"]["angle"] == 10.0 and res["config"]["seed"] == 3
    assert res["epochs_run"] == 1 and 0 <= res["best_test_acc"] <= 1


def test_installed_entry_point_subprocess(tmp_path):
    """`python -m prealign.cli` in a fresh process: an unknown data set is one line, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "prealign.cli", "compare", "--dataset", "imagenet-42",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "unknown data set 'imagenet-42'" in proc.stderr
