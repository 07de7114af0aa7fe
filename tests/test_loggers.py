"""Loggers (issue #16): every per-epoch record reaches the loggers (read back from TensorBoard's
event files), through the CLI (`compare`, `train`), a config field and the batched sweep, and
logging changes nothing it logs (curves and weights bitwise equal with and without it)."""
import json
import math
import sys

import numpy as np
import pytest

from prealign.cli import main
from prealign.errors import PrealignError
from prealign.run.config import RunConfig, run
from prealign.run.loggers import Logger, LogRecords, TensorBoardLogger, run_name
from prealign.run.store import Store

pytest.importorskip("tensorboard", reason="the tensorboard extra (pip install 'prealign[tensorboard]')")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TIMING = ("seconds", "eval_seconds")


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the event files of one run folder: tag -> [(step, value)]."""
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _f32(x) -> float:
    return float(np.float32(x))  # TensorBoard stores scalars as float32


def _assert_holds_every_record(folder, records):
    """The event files of ``folder`` hold exactly ``records``' numbers (float32), epoch by epoch."""
    scalars = _scalars(folder)
    for key in records[0]:
        if key in ("epoch", "eval_seconds"):
            continue
        got = scalars[key]
        want = [(r["epoch"], _f32(r[key])) for r in records]
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert all(a == b or (math.isnan(a) and math.isnan(b)) for (_, a), (_, b) in zip(got, want)), key


def _compare(tmp_path, capsys, tb, *extra):
    argv = ["--quiet", "compare", "--dataset", "digits", "--methods", "bp,fa", "--seeds", "1", "--epochs", "2",
            "--hidden", "16", "--workers", "1", "--out", str(tmp_path / "st"), "--json", "--tensorboard", str(tb), *extra]
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("batch", ["2", "off"])
def test_compare_tensorboard_event_files_hold_every_runs_test_accuracy(tmp_path, capsys, batch):
    """`prealign compare --tensorboard DIR` (batched group, or each run alone): one folder per run,
    holding its per-epoch test accuracy (and every other metric) as stored; run again, the runs come
    from the store and their stored records are written to a new DIR all the same."""
    _compare(tmp_path, capsys, tmp_path / "tb", "--batch-models", batch)
    store = Store(tmp_path / "st", read_only=True)
    runs = store.runs()
    assert len(runs) == 2 and sorted(p.name for p in (tmp_path / "tb").iterdir()) == sorted(
        run_name(RunConfig.from_dict(r["config"])) for r in runs)
    for r in runs:
        folder = tmp_path / "tb" / run_name(RunConfig.from_dict(r["config"]))
        records = store.epochs(r["id"])
        assert [(s, v) for s, v in _scalars(folder)["test_acc"]] == [(e, _f32(rec["test_acc"])) for e, rec in
                                                                       enumerate(records)] and len(records) == 3
        _assert_holds_every_record(folder, records)
    _compare(tmp_path, capsys, tmp_path / "tb2")  # served from the store
    for r in runs:
        name = run_name(RunConfig.from_dict(r["config"]))
        assert _scalars(tmp_path / "tb2" / name) == _scalars(tmp_path / "tb" / name)


def _tiny(**changes) -> RunConfig:
    return RunConfig(**{"method": "fa", "dataset": "digits", "hidden": (16,), "epochs": 2, "train_subset": 256,
                        "device": "cpu", **changes})


def _untimed(curves):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in curves]


def _same(a, b) -> bool:
    """Bitwise equal floats (NaN equals NaN)."""
    return json.dumps(a) == json.dumps(b)


def test_logging_changes_nothing_it_logs(tmp_path, one_thread):
    """The measurement contract: the same config with and without a TensorBoard logger trains to
    bitwise the same curves and weights (plain trainer; the batched path: the compare test above)."""
    plain = run(_tiny(method="ifa@30"))
    logged = run(_tiny(method="ifa@30", tensorboard=str(tmp_path / "tb")))
    assert _same(_untimed(plain.curves), _untimed(logged.curves))
    folder = tmp_path / "tb" / run_name(_tiny(method="ifa@30"))
    _assert_holds_every_record(folder, logged.curves)
    assert {"angle/1", "grad_angle/1", "test_acc", "train_loss", "val_acc"} <= set(_scalars(folder))


def test_batched_sweep_with_and_without_loggers_stores_the_same_curves(tmp_path, one_thread):
    from prealign.run.sweep import run_sweep

    configs = [_tiny(method=m) for m in ("bp", "fa")]
    logged = [c.replace(tensorboard=str(tmp_path / "tb")) for c in configs]
    for name, cfgs in (("plain", configs), ("logged", logged)):
        outcomes = run_sweep(cfgs, Store(tmp_path / name), workers=1, progress=False, batch_models=2)
        assert all(o.status == "finished" for o in outcomes)
    for cfg in configs:
        a, b = (Store(tmp_path / n, read_only=True) for n in ("plain", "logged"))
        curves = _untimed(a.epochs(a.find(cfg.key())["id"]))
        assert _same(curves, _untimed(b.epochs(b.find(cfg.key())["id"])))
        _assert_holds_every_record(tmp_path / "tb" / run_name(cfg), b.epochs(b.find(cfg.key())["id"]))


def test_any_logger_gets_every_record_including_the_one_callbacks_never_see():
    class Collect:
        def __init__(self):
            self.got, self.closed = [], 0

        def log(self, record, step):
            self.got.append((step, record))

        def close(self):
            self.closed += 1

    logger = Collect()
    assert isinstance(logger, Logger)
    logs = LogRecords([logger])
    curves = [{"epoch": 0, "test_acc": 0.1}, {"epoch": 1, "test_acc": 0.2}, {"epoch": 2, "test_acc": math.nan}]
    for record in curves[:2]:
        logs.on_epoch_end(record["epoch"], None, None, record)
    logs.close(curves)  # epoch 2 diverged: the trainer skipped the callbacks there
    logs.close(curves)
    assert logger.got == [(r["epoch"], r) for r in curves] and logger.closed == 1
    logger.got[0][1]["test_acc"] = 99.0
    assert curves[0]["test_acc"] == 0.1  # loggers get copies


def test_tensorboard_logger_writes_numbers_only(tmp_path):
    logger = TensorBoardLogger(tmp_path / "run")
    logger.log({"epoch": 3, "test_acc": 0.5, "angle/fc1": 42.0, "diverged": True, "note": "x", "n": 7}, step=3)
    logger.close()
    assert _scalars(tmp_path / "run") == {"test_acc": [(3, 0.5)], "angle/fc1": [(3, 42.0)], "n": [(3, 7.0)]}


def test_the_config_field_is_not_part_of_the_run_key(tmp_path):
    assert _tiny(tensorboard="tb").key() == _tiny().key()
    toml = _tiny(tensorboard="tb").to_toml()
    assert 'tensorboard = "tb"' in toml and RunConfig.from_toml(toml).tensorboard == "tb"


def test_train_tensorboard_from_the_cli_and_from_the_toml(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text('method = "fa"\nhidden = [8]\nepochs = 1\ndataset = "digits"\n'
                                       'train_subset = 128\ntensorboard = "from-toml"\n')
    assert main(["--quiet", "train", "--config", "run.toml", "--out", "st", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    cfg = RunConfig.from_dict(result["config"])
    _assert_holds_every_record(tmp_path / "from-toml" / run_name(cfg), Store("st", read_only=True).epochs(1))
    assert main(["--quiet", "train", "--config", "run.toml", "--out", "st", "--tensorboard", "cli", "--json"]) == 0
    capsys.readouterr()
    _assert_holds_every_record(tmp_path / "cli" / run_name(cfg), Store("st", read_only=True).epochs(1))


def test_missing_tensorboard_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    with pytest.raises(PrealignError, match=r"pip install 'prealign\[tensorboard\]'"):
        TensorBoardLogger(tmp_path / "x")
    (tmp_path / "run.toml").write_text('method = "fa"\nhidden = [8]\nepochs = 1\ndataset = "digits"\n')
    code = main(["train", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "st"),
                 "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "prealign[tensorboard]" in err
    assert not (tmp_path / "st").exists()  # refused before anything was stored


def test_reproduce_tensorboard_logs_every_run_of_the_experiment(tmp_path, capsys, one_thread):
    """`prealign reproduce NAME --tensorboard DIR`: the experiment's runs carry the field (not their key)."""
    assert main(["--quiet", "reproduce", "ifa_fig4", "--budget", "smoke", "--workers", "1", "--out", str(tmp_path / "rep"),
                 "--tensorboard", str(tmp_path / "tb")]) == 0, capsys.readouterr().err
    store = Store(tmp_path / "rep" / "store", read_only=True)
    runs = store.runs()
    assert len(runs) == 2 and all(r["status"] == "finished" for r in runs)
    for r in runs:
        cfg = RunConfig.from_dict(r["config"])
        assert cfg.tensorboard == str(tmp_path / "tb") and cfg.key() == cfg.replace(tensorboard="").key() == r["key"]
        _assert_holds_every_record(tmp_path / "tb" / run_name(cfg), store.epochs(r["id"]))
