"""Checkpoints are data, bound to their run, integrity-checked (#13), and analyses refuse NaN weights.

Through the paths users take: ``pa.train(..., checkpoint=path)``, ``config.run`` with a store,
``Store.load_model`` and ``prealign analyze``.
"""
import shutil

import pytest
import torch

import prealign as pa
from prealign.cli import main
from prealign.run.config import RunConfig, run
from prealign.errors import PrealignError
from prealign.run.store import Store
from prealign.run.trainer import TensorData, train


def _data(n_train=128, n_test=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_test, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :3]).argmax(1)
    return TensorData(x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes=3)


def _model(rule="fa", hidden=8):
    return pa.mlp([16, hidden, 3], rule=rule, generator=torch.Generator().manual_seed(1))


def _cfg(method="fa", **kw):
    base = dict(method=method, hidden=(8,), epochs=2, batch_size=32, lr=1e-2, seed=0, device="cpu", dataset="digits")
    return RunConfig(**{**base, **kw})


def _metrics(curves):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in curves]


KW = dict(epochs=3, batch_size=32, lr=1e-2, seed=0, device="cpu", progress=False)


# -- (a) a crafted file is data, never code --------------------------------------------------
class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appears iff the payload ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _craft(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Payload(marker), "epoch": 0}, path)


def test_crafted_checkpoint_is_inert_on_train_resume(tmp_path):
    ckpt, marker = tmp_path / "ck.pt", tmp_path / "pwned"
    _craft(ckpt, marker)
    with pytest.raises(PrealignError, match="not a prealign checkpoint") as err:
        train(_model(), _data(), checkpoint=ckpt, **KW)
    assert not marker.exists()
    assert str(ckpt) in str(err.value) and "\n" not in str(err.value)


def test_crafted_checkpoint_is_inert_on_config_run_and_load_model(tmp_path):
    store, marker, data = Store(tmp_path / "out"), tmp_path / "pwned", _data()
    cfg = _cfg()
    run_id = store.start(cfg)
    _craft(store.checkpoint_path(run_id), marker)
    with pytest.raises(PrealignError):
        run(cfg, store, data=data)
    assert not marker.exists()
    done = run(_cfg(seed=1), store, data=data)  # a finished run whose checkpoint is then replaced
    _craft(store.checkpoint_path(done.run_id), marker)
    with pytest.raises(PrealignError):
        store.load_model(done.run_id)
    assert not marker.exists()


# -- (b) bound to the run ----------------------------------------------------------------------
def test_checkpoints_of_another_store_are_never_reused(tmp_path):
    data = _data()
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    run(_cfg("bp"), a, data=data)  # row 1 in store a
    shutil.copytree(a.checkpoint_dir, b.checkpoint_dir)  # an --out folder holding a's checkpoints
    fa = run(_cfg("fa"), b, data=data)  # row 1 in store b
    alone = run(_cfg("fa"), data=data)
    assert _metrics(fa.curves) == _metrics(alone.curves)


def test_checkpoint_with_another_runs_key_is_refused(tmp_path):
    data = _data()
    store = Store(tmp_path)
    bp = run(_cfg("bp"), store, data=data)
    fa_cfg = _cfg("fa")
    fa_id = store.start(fa_cfg)
    shutil.copy(store.checkpoint_path(bp.run_id), store.checkpoint_path(fa_id))  # bp's file under fa's name
    with pytest.raises(PrealignError, match="belongs to another run"):
        run(fa_cfg, store, data=data)
    with pytest.raises(PrealignError, match="belongs to another run"):
        store.load_model(fa_id)


@pytest.mark.parametrize("change, words", [
    (dict(lr=1e-3), "lr"), (dict(batch_size=16), "batch_size"), (dict(optimizer="sgd"), "optimizer"),
    (dict(seed=5), "seed"), (dict(weight_decay=0.1), "weight_decay"), (dict(patience=1), "patience"),
    (dict(val_fraction=0.25), "val_fraction"), (dict(epochs=2), "epochs"), (dict(model_hidden=16), "model"),
    (dict(rule="bp"), "model"), (dict(data_seed=3), "data"),
])
def test_resuming_with_other_settings_names_the_file_and_setting(tmp_path, change, words):
    ckpt = tmp_path / "ck.pt"
    first = train(_model(), _data(), checkpoint=ckpt, **KW)
    kw = {**KW, **{k: v for k, v in change.items() if k not in ("model_hidden", "rule", "data_seed")}}
    model = _model(change.get("rule", "fa"), change.get("model_hidden", 8))
    with pytest.raises(PrealignError, match=words) as err:
        train(model, _data(seed=change.get("data_seed", 0)), checkpoint=ckpt, **kw)
    msg = str(err.value)
    assert str(ckpt) in msg and "delete it or use another checkpoint path" in msg and "\n" not in msg
    again = train(_model(), _data(), checkpoint=ckpt, **KW)  # the same settings still resume it
    assert _metrics(again.curves) == _metrics(first.curves)


def test_more_epochs_continue_exactly_and_a_finished_early_stop_stays(tmp_path):
    data = _data()
    train(_model(), data, checkpoint=tmp_path / "ck.pt", **KW)
    longer = train(_model(), data, checkpoint=tmp_path / "ck.pt", **{**KW, "epochs": 5})
    straight = train(_model(), data, **{**KW, "epochs": 5})
    assert _metrics(longer.curves) == _metrics(straight.curves) and longer.epochs_run == 5

    kw = {**KW, "patience": 1, "lr": 1.0, "optimizer": "sgd", "epochs": 8}
    stopped = train(_model(), data, checkpoint=tmp_path / "es.pt", **kw)
    assert stopped.stopped_early and stopped.epochs_run < 8
    more = train(_model(), data, checkpoint=tmp_path / "es.pt", **{**kw, "epochs": 12})
    assert _metrics(more.curves) == _metrics(train(_model(), data, **{**kw, "epochs": 12}).curves)


# -- (c) integrity -----------------------------------------------------------------------------
def _corrupt_message(path):
    return f"{path}: a corrupt checkpoint of an unfinished run: discard it (delete {path}) and restart that run"


def test_overwritten_weight_bytes_are_caught(tmp_path):
    ckpt = tmp_path / "ck.pt"
    model = _model()
    train(model, _data(), checkpoint=ckpt, **{**KW, "epochs": 1})
    raw = bytearray(ckpt.read_bytes())
    weight = model[1].weight.detach().numpy().tobytes()
    at = raw.find(weight)
    assert at > 0
    raw[at:at + 16] = bytes(16)  # zeroed weights: still a well-formed archive, wrong CRC
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(PrealignError) as err:
        train(_model(), _data(), checkpoint=ckpt, **KW)
    assert str(err.value) == _corrupt_message(ckpt)


def test_truncated_checkpoint_names_the_file_every_time(tmp_path):
    data, store = _data(), Store(tmp_path)
    cfg = _cfg()
    run_id = store.start(cfg)
    done = run(_cfg(seed=3), store, data=data)
    path = store.checkpoint_path(done.run_id)
    shutil.copy(path, store.checkpoint_path(run_id))
    target = store.checkpoint_path(run_id)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    for _ in range(2):
        with pytest.raises(PrealignError) as err:
            run(cfg, store, data=data)
        assert str(err.value) == _corrupt_message(target)


# -- analyses of a diverged run ----------------------------------------------------------------
def _diverged(tmp_path):
    store = Store(tmp_path)
    res = run(_cfg("bp", lr=1e30, optimizer="sgd", epochs=3), store, data=_data())
    assert res.diverged
    return store, res


def test_load_model_of_a_diverged_run_is_one_line(tmp_path):
    store, res = _diverged(tmp_path)
    with pytest.raises(PrealignError) as err:
        store.load_model(res.run_id)
    msg = str(err.value)
    assert f"run {res.run_id} diverged at epoch {res.diverged_epoch}" in msg and "finite" in msg and "\n" not in msg


def test_cli_analyze_hessian_of_a_diverged_run_exits_2_with_one_line(tmp_path, capsys):
    store, res = _diverged(tmp_path)
    store.close()
    code = main(["analyze", "hessian", str(res.run_id), "--out", str(tmp_path), "--samples", "16", "--probes", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "diverged at epoch" in err and "Traceback" not in err
