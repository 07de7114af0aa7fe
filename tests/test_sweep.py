"""Sweeps: local worker processes and Ray give the same results; a killed sweep resumes with no
run lost or duplicated; failures are recorded and never stop a sweep."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from prealign.run.config import RunConfig
from prealign.run.store import Store
from prealign.run.sweep import run_sweep


def tiny(method="fa", seed=0, **kw):
    base = dict(method=method, seed=seed, dataset="digits", train_subset=128, hidden=[16], epochs=2,
                batch_size=32, lr=1e-3, grad_alignment=False, device="cpu")
    base.update(kw)
    return RunConfig.from_dict(base)


def stored(store):
    return {r["key"]: r for r in store.runs()}


def test_local_pool_runs_all_then_skips_finished(tmp_path):
    configs = [tiny(m, s) for m in ("bp", "fa") for s in (0, 1)]
    store = Store(tmp_path)
    out = run_sweep(configs + configs[:1], store, workers=2, progress=False)  # a duplicate config runs once
    assert [o.key for o in out] == [c.key() for c in configs]
    assert all(o.status == "finished" for o in out), [o.error for o in out]
    rows = stored(store)
    assert len(rows) == 4 and all(r["status"] == "finished" for r in rows.values())
    for c in configs:  # epoch 0 (init) + 2 epochs, logged once each
        assert len(store.epochs(rows[c.key()]["id"])) == 3
    again = run_sweep(configs, store, workers=2, progress=False)
    assert all(o.status == "skipped" and o.previous == "finished" for o in again)
    assert {r["updated"] for r in store.runs()} == {r["updated"] for r in rows.values()}  # nothing re-trained


def test_failure_is_recorded_and_sweep_goes_on(tmp_path):
    good = tiny("fa", 0)
    bad = tiny("fa", 1, dataset="cifar10")  # not available offline here -> the run fails
    store = Store(tmp_path)
    out = {o.key: o for o in run_sweep([bad, good], store, workers=1, progress=False)}
    assert out[good.key()].status == "finished"
    assert out[bad.key()].status == "failed" and "cifar10" in out[bad.key()].error.lower()
    assert store.find(bad.key())["status"] == "failed"


def test_worker_pool_survives_a_task_that_raises(tmp_path):
    store = Store(tmp_path)
    out = run_sweep([tiny("fa", 0)], store, workers=2, progress=False, task="prealign.nonexistent_module:task")
    assert out[0].status == "failed" and "ModuleNotFoundError" in out[0].error


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from prealign.run.config import RunConfig
    from prealign.run.sweep import run_sweep, train_task

    class Slow:  # makes every epoch last a while, so the kill lands mid-run
        def on_epoch_end(self, epoch, model, data, record):
            time.sleep(0.25)

    def slow_task(config, path):
        return train_task(config, path, callbacks=[Slow()])

    configs = [RunConfig.from_dict(dict(method="fa", seed=s, dataset="digits", train_subset=128, hidden=[16],
               epochs=3, batch_size=32, lr=1e-3, grad_alignment=False, device="cpu")) for s in range(6)]
    run_sweep(configs, sys.argv[1], workers=1, progress=False, task=slow_task)
""")


def test_killed_sweep_resumes_without_loss_or_duplicates(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path)], env={**os.environ, "PREALIGN_QUIET": "1"})
    store = Store(tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until 2 runs are finished and a third is in flight
        rows = store.runs()
        if sum(r["status"] == "finished" for r in rows) >= 2 and any(r["status"] == "running" for r in rows):
            break
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.05)
    else:
        pytest.fail("sweep made no progress")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r["key"]: r for r in store.runs()}
    finished_before = {k: r["updated"] for k, r in before.items() if r["status"] == "finished"}
    assert any(r["status"] == "running" for r in before.values())  # the killed run is left in flight

    configs = [RunConfig.from_dict(dict(method="fa", seed=s, dataset="digits", train_subset=128, hidden=[16],
                                        epochs=3, batch_size=32, lr=1e-3, grad_alignment=False, device="cpu"))
               for s in range(6)]
    out = run_sweep(configs, store, workers=2, progress=False)
    statuses = {o.key: o.status for o in out}
    assert all(statuses[k] == "skipped" for k in finished_before)  # finished runs are not redone
    after = store.runs()
    assert len(after) == 6 and len({r["key"] for r in after}) == 6  # none lost, none duplicated
    assert all(r["status"] == "finished" for r in after)
    for r in after:
        epochs = [e["epoch"] for e in store.epochs(r["id"])]
        assert epochs == [0, 1, 2, 3]  # every epoch logged exactly once, resumed run included
        if r["key"] in finished_before:
            assert r["updated"] == finished_before[r["key"]]

    # the resumed run's result equals an uninterrupted run of the same config
    resumed = [c for c in configs if before.get(c.key(), {}).get("status") == "running"]
    fresh = Store(tmp_path / "fresh")
    run_sweep(resumed, fresh, workers=1, progress=False)
    for c in resumed:
        a, b = store.result(store.find(c.key())["id"]), fresh.result(fresh.find(c.key())["id"])
        assert a.best_test_acc == b.best_test_acc
        assert [e["train_loss"] for e in a.curves] == pytest.approx([e["train_loss"] for e in b.curves], rel=1e-6)


def test_ray_executor_matches_local(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed; the Ray executor test needs `pip install ray`")
    configs = [tiny("fa", 0), tiny("ifa", 0), tiny("bp", 1)]
    local = Store(tmp_path / "local")
    run_sweep(configs, local, workers=1, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        remote = Store(tmp_path / "ray")
        out = run_sweep(configs, remote, executor="ray", progress=False)
    finally:
        ray.shutdown()
    assert all(o.status == "finished" for o in out), [o.error for o in out]
    for c in configs:
        a, b = local.result(local.find(c.key())["id"]), remote.result(remote.find(c.key())["id"])
        assert a.best_test_acc == b.best_test_acc
        assert [e["test_loss"] for e in a.curves] == pytest.approx([e["test_loss"] for e in b.curves], rel=1e-6)


def test_bad_executor_and_workers_are_user_errors(tmp_path):
    from prealign.errors import PrealignError

    with pytest.raises(PrealignError):
        run_sweep([tiny()], tmp_path, executor="slurm")
    with pytest.raises(PrealignError):
        run_sweep([tiny()], tmp_path, workers=0)


BAD_ARGUMENTS = [  # (command line after the subcommand's --out, expected words of the one-line error)
    (["compare", "--methods", "nonsense"], "unknown method 'nonsense'"),
    (["compare", "--dataset", "digits", "--workers", "0"], "--workers: must be an integer in [1, "),
    (["compare", "--dataset", "digits", "--threads", "0"], "--threads: must be an integer in [1, "),
    (["compare", "--dataset", "nope"], "unknown data set 'nope'"),
    (["compare", "--batch-models", "bogus"], "--batch-models"),
    (["reproduce", "ifa_fig1", "--budget", "smoke", "--only", "foo=1"], "no grid axis 'foo'"),
    (["reproduce", "ifa_fig1", "--budget", "smoke", "--workers", "0"], "--workers: must be an integer in [1, "),
    (["reproduce", "ifa_fig1,ifa_fig2", "--budget", "smoke", "--only", "method=fa"], "single experiment"),
    (["reproduce", "nonsense"], "unknown experiment 'nonsense'"),
    (["train", "--config", "{bad}"], "unknown method 'nonsense'"),
    (["train", "--config", "{good}", "--threads", "0"], "--threads: must be an integer in [1, "),
]


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS, ids=[" ".join(a[:2]) + f" {i}" for i, (a, _) in enumerate(BAD_ARGUMENTS)])
def test_a_failed_argument_check_leaves_no_store_behind(tmp_path, capsys, argv, message):
    """Every argument is checked before the result store opens: the --out folder is not even created."""
    from prealign.cli import main

    (tmp_path / "bad.toml").write_text('method = "nonsense"\ndataset = "digits"\n')
    (tmp_path / "good.toml").write_text('method = "fa"\ndataset = "digits"\nepochs = 1\n')
    out = tmp_path / "out"
    argv = [a.format(bad=tmp_path / "bad.toml", good=tmp_path / "good.toml") for a in argv]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("prealign") and ": error:" in err and message in err
    assert not out.exists()
