"""Batched sweeps (prealign.run.sweep_batched): compatible runs trained side by side are stored bitwise
as their separate runs; incompatible ones run alone; resume, failures and patience hold."""
from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch

import prealign as pa
import prealign.run.batched
import prealign.run.sweep_batched as sb
from prealign.run.batched import train_runs
from prealign.run.config import RunConfig
from prealign.run.store import Store
from prealign.run.sweep import run_sweep
from prealign.run.trainer import TensorData, train

pytestmark = pytest.mark.usefixtures("one_thread")

def tiny(method="fa", seed=0, **kw):
    """A small digits run; no validation split by default (the trainer of this branch selects on test)."""
    base = {"method": method, "seed": seed, "dataset": "digits", "train_subset": 192, "hidden": [16, 12], "epochs": 3,
            "batch_size": 32, "lr": 3e-2, "device": "cpu", "val_fraction": 0.0}
    base.update(kw)
    return RunConfig.from_dict(base)


def _count_models(monkeypatch, name: str) -> list[int]:
    """Replace ``prealign.run.batched.<name>`` by a wrapper recording how many models each call got."""
    calls = []
    real = getattr(prealign.run.batched, name)

    def counting(models, *args, **kw):
        calls.append(len(models))
        return real(models, *args, **kw)

    monkeypatch.setattr(prealign.run.batched, name, counting)
    return calls


@pytest.fixture
def spy(monkeypatch):
    """Records the number of models of every batched training."""
    return _count_models(monkeypatch, "train_runs")


def _same(a, b) -> bool:
    """Bitwise equal numbers (NaN equals NaN; a stored None reads back as NaN)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def assert_same_run(sa: Store, sb_: Store, cfg: RunConfig) -> None:
    """Two stores hold the same run of ``cfg``, bitwise: status, summary, records (same keys, same
    numbers but wall times), final weights."""
    ra, rb = sa.find(cfg.key()), sb_.find(cfg.key())
    assert ra["status"] == rb["status"] == "finished", (cfg.label, ra["status"], rb["status"], rb["error"])
    a, b = sa.result(ra["id"]), sb_.result(rb["id"])
    assert set(ra["summary"]) == set(rb["summary"])
    for field in ("best_epoch", "epochs_run", "diverged", "diverged_epoch", "stopped_early", "best_test_acc"):
        assert _same(getattr(a, field), getattr(b, field)), (cfg.label, cfg.seed, field)
    for field in ("best_val_acc", "selection"):  # validation fields, where the trainer writes them
        assert _same(ra["summary"].get(field), rb["summary"].get(field)), (cfg.label, cfg.seed, field)
    assert a.noise_seconds > 0 if cfg.noise_samples else a.noise_seconds == 0
    assert (b.noise_seconds > 0) == (a.noise_seconds > 0)
    assert [r["epoch"] for r in a.curves] == [r["epoch"] for r in b.curves] == list(range(a.epochs_run + 1))
    for ea, eb in zip(a.curves, b.curves):
        assert list(ea) == list(eb), (cfg.label, ea["epoch"])  # same keys, same order
        for key in ea:
            if not key.endswith("seconds"):
                assert _same(ea[key], eb[key]), (cfg.label, cfg.seed, ea["epoch"], key, ea[key], eb[key])
    ma, mb = sa.load_model(ra["id"]), sb_.load_model(rb["id"])
    for (name, p), q in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(p, q), f"{cfg.label} seed {cfg.seed}: {name}"


def test_batched_sweep_stores_the_same_runs_as_separate_runs(tmp_path, spy, monkeypatch):
    """(a) every rule — bp/fa/ifa@30/rnp/dfa/usf/brsf/frsf/kp (with its own kp_decay)/wm (mirroring every 2
    steps) — and bp+noise and brsf+noise warm-ups × seeds, one with patience, batched = separate (records
    incl. angle and grad_angle, summaries, final weights; the noise pretrainings batched too); (b) a
    different lr in its own group; a run with no partner alone; the packing is logged."""
    noise_calls = _count_models(monkeypatch, "pretrain_noise_batched")
    batchable = [tiny(m, s) for m in ("bp", "fa", "ifa@30") for s in (0, 1)]
    batchable += [tiny("rnp", 0, noise_samples=200), tiny("rnp", 1, noise_samples=200), tiny("fa", 2, epochs=6, patience=1),
                  tiny("bp", 3, alpha_w=1.0, epochs=2), tiny("dfa", 0), tiny("usf", 1), tiny("frsf", 2),
                  tiny("kp", 0, kp_decay=0.05), tiny("bp+noise", 4, noise_samples=200), tiny("brsf", 0),
                  tiny("wm", 1, wm_every=2), tiny("brsf+noise", 2, noise_samples=200)]
    other_lr = [tiny("fa", 5, lr=1e-2), tiny("ifa", 5, lr=1e-2)]
    alone = [tiny("kp", 0, weight_decay=1e-3)]
    configs = batchable + alone + other_lr
    assert len({sb.group_key(c) for c in batchable}) == 1 and sb.group_key(other_lr[0]) != sb.group_key(batchable[0])

    separate = Store(tmp_path / "separate")
    out = run_sweep(configs, separate, workers=1, progress=False, batch_models=False)
    assert all(o.status == "finished" for o in out) and spy == []
    batched = Store(tmp_path / "batched")
    lines = []
    out = run_sweep(configs, batched, workers=1, progress=False, log=lines.append)  # default: auto
    assert all(o.status == "finished" for o in out), [o.error for o in out]
    assert [o.key for o in out] == [c.key() for c in configs]
    assert sorted(spy) == [2, 6, 6, 6]  # the 18 in groups of at most 8, the other lr's 2; the lone kp alone
    assert sum(noise_calls) == 4 and max(noise_calls) >= 2  # the four noise runs, pretrained per group, batched
    assert lines == ["batching: 21 runs to train; 20 in 4 batched groups (3 × 6, 1 × 2); 1 alone — 1 (kp seed 0): "
                     "no other pending run shares its data, widths and optimizer settings"]
    for cfg in configs:
        assert_same_run(separate, batched, cfg)
    patient = batched.result(batched.find(batchable[8].key())["id"])
    assert patient.stopped_early and patient.epochs_run < 6  # really stopped before its last epoch
    assert any(k.startswith("grad_angle/") for k in patient.curves[1])
    rows = batched.runs()
    assert len(rows) == len(configs) and all(r["status"] == "finished" for r in rows)


class Killed(BaseException):
    """A simulated kill (not an Exception: nothing may catch it as a training failure)."""


@pytest.mark.parametrize("resume_batched", [True, False], ids=["resumed-in-a-group", "resumed-alone"])
def test_killed_group_resumes_bitwise(tmp_path, spy, monkeypatch, resume_batched):
    """Issue 12 (1): a group killed in the middle of its epoch 2 — one run checkpointed at epoch 2,
    the others at epoch 1, an RNP run among them — resumed (in a group again, or each run alone)
    stores bitwise what the uninterrupted group stores, and what separate runs store; finished
    runs are skipped (not retrained, not duplicated)."""
    configs = [tiny("bp", 0), tiny("fa", 1), tiny("ifa@30", 0), tiny("rnp", 0, noise_samples=200), tiny("fa", 2, epochs=5)]
    store = Store(tmp_path / "s")
    run_sweep(configs[:1], store, workers=1, progress=False, batch_models=False)
    before = {r["key"]: r["updated"] for r in store.runs()}
    checkpointer = type(store.checkpointer(1))  # what the trainers save through
    real_save, saves = checkpointer.save, []

    def dying_save(self, state):
        if state["epoch"] == 2:
            saves.append(self.run_id)
            if len(saves) == 2:
                raise Killed("simulated kill")
        return real_save(self, state)

    monkeypatch.setattr(checkpointer, "save", dying_save)
    with pytest.raises(Killed):
        run_sweep(configs, store, workers=1, progress=False)
    assert spy == [4]  # only the 4 unfinished runs went into the group
    monkeypatch.setattr(checkpointer, "save", real_save)
    epochs = sorted(store.load_checkpoint(store.find(c.key())["id"])["epoch"] for c in configs[1:])
    assert epochs == [1, 1, 1, 2] and all(store.find(c.key())["status"] == "failed" for c in configs[1:])

    out = run_sweep(configs, store, workers=1, progress=False, batch_models="auto" if resume_batched else False)
    assert [o.status for o in out] == ["skipped"] + ["finished"] * 4
    assert spy == ([4, 4] if resume_batched else [4])
    rows = store.runs()
    assert len(rows) == 5 and len({r["key"] for r in rows}) == 5
    assert {r["key"]: r["updated"] for r in rows if r["key"] in before} == before
    uninterrupted = Store(tmp_path / "group")
    run_sweep(configs[1:], uninterrupted, workers=1, progress=False)
    separate = Store(tmp_path / "separate")
    run_sweep(configs[1:], separate, workers=1, progress=False, batch_models=False)
    for cfg in configs[1:]:
        assert_same_run(uninterrupted, store, cfg)
        assert_same_run(separate, store, cfg)


@pytest.mark.skipif("val_fraction" not in inspect.signature(train).parameters,
                    reason="this branch's prealign.train has no val_fraction yet (the trainer's branch adds it)")
def test_validation_sweep_batched_equals_separate(tmp_path):
    """With a validation split (the compare default), batched runs store what config.run stores, bitwise."""
    configs = [tiny(m, s, val_fraction=0.2, patience=1, epochs=4) for m in ("bp", "fa") for s in (0, 1)]
    separate, batched = Store(tmp_path / "separate"), Store(tmp_path / "batched")
    run_sweep(configs, separate, workers=1, progress=False, batch_models=False)
    run_sweep(configs, batched, workers=1, progress=False)
    for cfg in configs:
        assert_same_run(separate, batched, cfg)
        assert batched.find(cfg.key())["summary"]["selection"] == "val"


def test_one_bad_config_and_a_failing_batch_lose_nothing(tmp_path, spy, monkeypatch):
    configs = [tiny("fa", s) for s in range(4)]
    real_prepare = prealign.run.config.prepare

    def prepare(config, data, device, **kw):
        if config.seed == 1:
            raise RuntimeError("broken seed")
        return real_prepare(config, data, device, **kw)

    monkeypatch.setattr(prealign.run.config, "prepare", prepare)
    store = Store(tmp_path / "a")
    out = {o.key: o for o in run_sweep(configs, store, workers=1, progress=False)}
    assert out[configs[1].key()].status == "failed" and "broken seed" in out[configs[1].key()].error
    assert store.find(configs[1].key())["status"] == "failed"
    assert all(out[c.key()].status == "finished" for c in configs if c.seed != 1) and spy == [3]

    def broken(*args, **kw):
        raise MemoryError("stack too large")

    monkeypatch.setattr(prealign.run.batched, "train_runs", broken)
    store = Store(tmp_path / "b")
    out = run_sweep(configs[2:], store, workers=1, progress=False)
    assert all(o.status == "finished" for o in out)  # trained one by one instead, and said so
    assert all("stack too large" in o.summary["batched_error"] for o in out)


def test_train_runs_equals_separate_train_calls_with_patience_and_optimizers():
    """(d) per-model epochs and patience (models leave the stack as their run ends), Adam, AdamW
    and SGD with momentum: records, best epoch, early stop and final weights equal prealign.train, bitwise."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, 4, 5, generator=g)
    y = (x.flatten(1) @ torch.randn(20, 3, generator=g)).argmax(1)
    data = TensorData(x[:150], y[:150], x[150:], y[150:], 3)
    seeds, epochs, patience = [3, 1, 4, 1, 5], [4, 4, 2, 4, 3], [1, None, None, 2, 1]
    stopped = set()
    for optimizer, momentum, lr in (("adam", 0.0, 3e-2), ("adamw", 0.0, 3e-2), ("sgd", 0.9, 5e-2)):
        models = []
        for i, method in enumerate(["bp", "fa", "ifa@30", "rnp", "fa"]):
            gen = torch.Generator().manual_seed(100 + i)
            model = pa.mlp([20, 16, 12, 3], rule="fa", generator=gen)
            pa.get_method(method).with_options(noise_samples=128).prepare(model, generator=gen, progress=False)
            models.append(model)
        refs = [copy.deepcopy(m) for m in models]
        kw = {"batch_size": 16, "lr": lr, "optimizer": optimizer, "momentum": momentum, "weight_decay": 1e-3,
              "device": "cpu", "progress": False}
        expected = [train(m, data, epochs=e, patience=p, seed=s, **kw) for m, s, e, p in zip(refs, seeds, epochs, patience)]
        got = train_runs(models, data, epochs=epochs, patience=patience, seeds=seeds, **kw)
        for k, (r, b) in enumerate(zip(expected, got)):
            assert (r.best_epoch, r.epochs_run, r.stopped_early, r.diverged) == (b.best_epoch, b.epochs_run, b.stopped_early, b.diverged)
            assert len(r.curves) == len(b.curves)
            for er, eb in zip(r.curves, b.curves):
                assert list(er) == list(eb)
                for key in er:
                    if not key.endswith("seconds"):
                        assert _same(er[key], eb[key]), (optimizer, k, key)
            for p, q in zip(models[k].state_dict().values(), refs[k].state_dict().values()):
                assert torch.equal(p, q), (optimizer, k)
            if r.stopped_early and r.epochs_run < epochs[k]:
                stopped.add((optimizer, k))
    assert len(stopped) >= 3  # early stops really happened, at epochs before the models' budgets


def test_divergence_stops_only_the_diverged_model():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 10, generator=g)
    y = (x @ torch.randn(10, 3, generator=g)).argmax(1)
    data = TensorData(x[:64], y[:64], x[64:], y[64:], 3)
    models = [pa.mlp([10, 8, 3], rule="fa", generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        models[0][1].weight[0, 0] = float("nan")  # diverges in its first epoch
    refs = [copy.deepcopy(m) for m in models]
    kw = {"epochs": 3, "batch_size": 16, "lr": 1e-2, "device": "cpu", "progress": False}
    expected = [train(m, data, seed=s, **kw) for m, s in zip(refs, (0, 1))]
    got = train_runs(models, data, seeds=(0, 1), **kw)
    assert got[0].diverged and got[0].diverged_epoch == expected[0].diverged_epoch == 0 and got[0].epochs_run == 0
    assert not got[1].diverged and got[1].epochs_run == 3
    for er, eb in zip(expected[1].curves, got[1].curves):
        assert _same(er["test_loss"], eb["test_loss"]) and list(er) == list(eb)


def test_runs_are_stored_as_they_end(tmp_path, monkeypatch):
    """A run whose budget ends first is finished in the store while its group goes on."""
    configs = [tiny("fa", 0, epochs=1), tiny("fa", 1, epochs=3)]
    store = Store(tmp_path)
    seen = {}
    real_log = Store.log_epoch

    def log(self, run_id, record):
        if record["epoch"] == 3:  # the long run's last epoch: the short one must be stored already
            seen.update({r["key"]: r["status"] for r in self.runs()})
        return real_log(self, run_id, record)

    monkeypatch.setattr(Store, "log_epoch", log)
    out = run_sweep(configs, store, workers=1, progress=False)
    assert [o.status for o in out] == ["finished", "finished"]
    assert seen == {configs[0].key(): "finished", configs[1].key(): "running"}
    assert [store.result(store.find(c.key())["id"]).epochs_run for c in configs] == [1, 3]


@pytest.mark.parametrize("command", ["reproduce ifa_fig1", "compare --methods fa", "sweep GRID"])
@pytest.mark.parametrize("value", ["many", "0", "300"])
def test_cli_rejects_a_bad_batch_option(capsys, tmp_path, command, value):
    """--batch-models 0 (groups of no model), a size above 256 or a word: one line, exit 2, nothing created."""
    from prealign.cli import main

    grid = tmp_path / "grid.toml"
    grid.write_text('[base]\ndataset = "digits"\nepochs = 1\n[grid]\nseed = [0, 1]\n')
    args = [a if a != "GRID" else str(grid) for a in command.split()]
    assert main([*args, "--batch-models", value, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--batch-models" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_grouping_rule():
    base = tiny("fa", 0)
    assert sb.group_key(base) is not None
    for m in ("bp", "ifa@30", "dfa", "usf", "brsf", "frsf", "kp", "wm"):  # every rule
        assert sb.group_key(tiny(m)) == sb.group_key(base), m
    lenet = tiny("fa", model="lenet", dataset="mnist5k", hidden=[100])
    assert sb.group_key(lenet) is None and "not an MLP" in sb.alone_reason(lenet)
    for change in ({"lr": 1e-2}, {"hidden": [16]}, {"batch_size": 16}, {"optimizer": "sgd"}, {"train_subset": 100},
                   {"grad_alignment": False}, {"activation": "tanh"}, {"momentum": 0.5}, {"val_fraction": 0.2}):
        assert sb.group_key(base.replace(**change)) != sb.group_key(base), change
    for change in ({"seed": 3}, {"method": "bp"}, {"method": "ifa", "angle": 30.0}, {"epochs": 9}, {"patience": 2},
                   {"alpha_w": 1.0}, {"method": "rnp", "noise_samples": 10}, {"method": "kp", "kp_decay": 0.1},
                   {"method": "bp+noise", "noise_samples": 10}, {"method": "wm", "wm_every": 3, "wm_noise": "gaussian"}):
        assert sb.group_key(base.replace(**change)) == sb.group_key(base), change
    # 10 compatible + 1 not, groups of at most 4, 2 workers: 3 groups rounded up to 4 (2+3+2+3), lenet alone
    configs = [tiny("fa", s) for s in range(10)] + [lenet]
    units = sb.plan(configs, 4, workers=2)
    assert sorted(len(u) for u in units) == [1, 2, 2, 3, 3] and sorted(i for u in units for i in u) == list(range(11))
    assert sorted(len(u) for u in sb.plan(configs, 4, workers=1)) == [1, 3, 3, 4]
    assert [len(u) for u in sb.plan(configs[:9], 8, workers=3)] == [3, 3, 3]
    assert sb.plan(configs[:3], 8, workers=2) == [[0, 1, 2]]  # too few to split between workers
    assert sb.plan(configs[:6], 8, workers=2) == [[0, 2, 4], [1, 3, 5]]  # both workers busy, equal costs dealt
    # costs balanced: 3 RNP runs (noise = 4x their training) among 9 plain ones, 2 workers: the RNP runs
    # split 2 / 1 and the plain runs even the load (contiguous halves would be 1200 / 3600)
    mixed = [tiny(m, s, epochs=2, train_subset=100) for m in ("bp", "fa", "ifa") for s in range(3)]
    mixed += [tiny("rnp", s, epochs=2, train_subset=100, noise_samples=800) for s in range(3)]
    costs = [sb.run_cost(c) for c in mixed]
    assert costs[0] == 200 and costs[-1] == 1000
    groups = sb.plan(mixed, 8, workers=2)
    assert sorted(len(g) for g in groups) == [4, 8]
    assert sorted(sum(i >= 9 for i in g) for g in groups) == [1, 2]
    assert [sum(costs[i] for i in g) for g in groups] == [2400, 2400]
    assert sb.plan(configs, 0) == [[i] for i in range(11)]
    assert sb.resolve_batch("auto") == (sb.DEFAULT_GROUP, True) and sb.resolve_batch("off")[0] == 0
    assert sb.resolve_batch(3) == (3, False) and sb.resolve_batch("1")[0] == 0 and sb.resolve_batch("256") == (256, False)
    # auto batches networks up to AUTO_MAX_MACS on a CPU (measured); a group size batches whatever is compatible
    small, wide = tiny("fa", 0, dataset="mnist5k", hidden=[100]), tiny("fa", 0, dataset="mnist5k", hidden=[4000])
    assert sb.step_macs(small) == 32 * (784 * 100 + 100 * 10)
    assert sb.wins(small) and sb.wins(tiny("fa", dataset="mnist5k", hidden=[128, 128], batch_size=128))  # quick budgets
    assert not sb.wins(wide)
    packing = sb.pack([wide, wide.replace(seed=1)], 8, auto=True)
    assert packing.units == [[0], [1]] and "multiply-adds per step" in packing.alone[0]
    assert sb.plan([wide, wide.replace(seed=1)], 8) == [[0, 1]]
    from prealign.errors import PrealignError

    for bad in ("many", 0, "0", -2, 257, "2.5", 2.0):
        with pytest.raises(PrealignError, match="from 1 .* to 256"):
            sb.resolve_batch(bad)


def test_packing_is_described():
    """The log line: runs, groups by size, and the runs alone counted by reason, named by label."""
    configs = [tiny("fa", s) for s in range(11)] + [tiny("fa", 0, model="lenet", dataset="mnist5k", hidden=[100]), tiny("bp", 0, lr=1e-2)]
    packing = sb.pack(configs, 4, workers=1, reasons=[None] * len(configs))
    labels = [f"{c.label} seed {c.seed}" for c in configs]
    assert sorted(len(g) for g in packing.groups) == [3, 4, 4]
    assert sb.describe_packing(packing, labels) == (
        "batching: 13 runs to train; 11 in 3 batched groups (2 × 4, 1 × 3); 2 alone — 1 (fa seed 0): model lenet is not "
        "an MLP (groups stack MLPs); 1 (bp seed 0): no other pending run shares its data, widths and optimizer settings")
    off = sb.pack(configs[:2], 0)
    assert sb.describe_packing(off) == "batching: 2 runs to train; 2 alone — 2: batching is off"


def test_reproduce_packs_its_seeds_and_says_so(tmp_path, capsys, spy):
    """`prealign reproduce` groups an experiment's runs by default and logs the packing; runs with
    trackers train alone, and the log says why."""
    from prealign.cli import main
    from prealign.experiments.runner import ExperimentRun

    assert main(["reproduce", "rnp_fig_s3", "--budget", "smoke", "--workers", "1", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "batching: 2 runs to train; 2 in 1 batched group (1 × 2)" in err and spy == [2]
    tracked = ExperimentRun(tiny("fa"), [{"kind": "hessian", "track": True}])
    assert tracked.batch_config() is None
    assert sb.item_alone_reason(tracked) == "trackers (hessian) follow every training step of a lone run"
