"""Result store: concurrent writers, no duplicates, resume through config.run, model reload, CSV export."""
import csv
import multiprocessing as mp

import pytest
import torch

from prealign.run.config import RunConfig, run
from prealign.errors import PrealignError
from prealign.run.store import Store
from prealign.run.trainer import TensorData


def _writer(root, worker, n_runs, n_epochs):
    store = Store(root)
    for i in range(n_runs):
        # half of the configs are shared between the two workers: they must map to the same run
        seed = i if i % 2 == 0 else 1000 * worker + i
        cfg = RunConfig(method="fa", seed=seed, epochs=n_epochs)
        run_id = store.start(cfg)
        for e in range(n_epochs + 1):
            store.log_epoch(run_id, {"epoch": e, "test_acc": e / 10, "worker": worker})
    store.close()


def test_two_concurrent_writer_processes_lose_and_duplicate_nothing(tmp_path):
    # spawn, not fork: a run key builds the network (issue 24), and torch's parallel ops hang in a child
    # forked after the parent ran them (PyTorch's fork hazard); the writers still run at the same time
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 20, 5)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = Store(tmp_path)
    runs = store.runs()
    expected = {i for i in range(20) if i % 2 == 0} | {1000 * w + i for w in (1, 2) for i in range(20) if i % 2}
    assert sorted(r["seed"] for r in runs) == sorted(expected)  # 10 shared + 2 × 10 own, no duplicates
    assert len({r["key"] for r in runs}) == len(runs) == 30
    for r in runs:
        assert [e["epoch"] for e in store.epochs(r["id"])] == list(range(6))
    n = store._conn.execute("SELECT COUNT(*) FROM epochs").fetchone()[0]
    assert n == 30 * 6


def _tiny_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(160, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :3]).argmax(1)
    return TensorData(x[:128], y[:128], x[128:], y[128:], num_classes=3)


def _strip(curves):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in curves]


def test_run_with_store_resumes_after_kill_and_never_duplicates(tmp_path):
    data = _tiny_data()
    cfg = RunConfig(method="rnp", noise_samples=256, hidden=(8,), epochs=5, batch_size=16, lr=1e-2, seed=2, device="cpu")
    plain = run(cfg, data=data)

    class Kill:
        def on_epoch_end(self, epoch, model, data, record):
            if epoch == 3:
                raise KeyboardInterrupt

    store = Store(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, store, data=data, callbacks=[Kill()])
    (row,) = store.runs()
    assert row["status"] == "failed" and "KeyboardInterrupt" in row["error"]
    assert [e["epoch"] for e in store.epochs(row["id"])] == [0, 1, 2]  # the kill came before epoch 3 was logged
    resumed = run(cfg, Store(tmp_path), data=data)
    assert _strip(resumed.curves) == _strip(plain.curves)
    assert resumed.best_test_acc == plain.best_test_acc and resumed.noise_seconds > 0
    again = run(cfg, Store(tmp_path), data=data)  # finished: served from the store, no new row
    assert again.run_id == resumed.run_id == row["id"] and len(Store(tmp_path).runs()) == 1
    assert _strip(again.curves) == _strip(plain.curves)
    stored = Store(tmp_path).get(row["id"])
    assert stored["status"] == "finished" and stored["summary"]["best_test_acc"] == plain.best_test_acc


def test_load_model_and_resolve_prefix(tmp_path, monkeypatch):
    data = _tiny_data()
    import prealign.run.config as config_mod
    monkeypatch.setattr(config_mod, "load_data", lambda cfg: data)
    store = Store(tmp_path)
    cfg = RunConfig(method="fa", hidden=(8,), epochs=2, batch_size=16, lr=1e-2, device="cpu")
    res = run(cfg, store)
    model = store.load_model(cfg.key()[:6])
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert acc == pytest.approx(res.curves[-1]["test_acc"])
    assert model.run_config.key() == cfg.key()
    with pytest.raises(PrealignError, match="no run"):
        store.resolve("zzz")
    out = tmp_path / "e.csv"
    assert store.export_csv(out) == 3
    rows = list(csv.DictReader(open(out)))
    assert rows[0]["method"] == "fa" and rows[-1]["epoch"] == "2" and "angle/3" in rows[0]


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PREALIGN_RUNS", str(tmp_path / "elsewhere"))
    store = Store()
    assert store.path == tmp_path / "elsewhere" / "runs.sqlite" and store.path.exists()


# -- reading: literal run references, read-only stores (issue #13) -------------------------------------
def _store_with_runs(root, n=2) -> Store:
    store = Store(root)
    for seed in range(n):
        run_id = store.start(RunConfig(method="fa", hidden=(8,), epochs=1, seed=seed))
        store.log_epoch(run_id, {"epoch": 0, "test_acc": 0.5})
    return store


def test_resolve_compares_key_prefixes_literally(tmp_path):
    store = _store_with_runs(tmp_path)
    keys = {r["id"]: r["key"] for r in store.runs()}
    for text in ("%", "_", "%%", "_" * 16, keys[1][:3] + "%", "*", "[", "1" * 25):
        with pytest.raises(PrealignError, match="no run"):
            store.resolve(text)
    assert store.resolve(keys[2][:5]) == 2 and store.resolve(keys[2].upper()) == 2 and store.resolve(" 1 ") == 1


def test_read_only_open_writes_nothing_and_refuses_writes(tmp_path):
    _store_with_runs(tmp_path).close()
    db = tmp_path / "runs.sqlite"
    before = db.read_bytes()
    store = Store(tmp_path, read_only=True)
    assert [r["seed"] for r in store.runs()] == [0, 1] and store.epochs(1) == [{"epoch": 0, "test_acc": 0.5}]
    with pytest.raises(PrealignError, match="read-only"):
        store.start(RunConfig(method="bp"))
    store.close()
    assert db.read_bytes() == before
    with pytest.raises(PrealignError, match="no result store"):
        Store(tmp_path / "absent", read_only=True)
    assert not (tmp_path / "absent").exists()


def _as_reader_without_write_permission(fn):
    """``fn()`` in a forked child that really cannot write: chmod binds it (as user nobody when we are
    root, who ignores file modes). Returns what ``fn`` returned (JSON), or the exception's repr."""
    import json
    import os

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        os.close(r)
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            result = fn()
        except BaseException as err:  # noqa: BLE001 (reported to the parent)
            result = {"exception": repr(err)}
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.parametrize("case", ["read-only folder", "read-only file", "read-only folder, open writer with a WAL"])
def test_runs_list_show_export_on_a_read_only_store(case):
    """The old code died with 'attempt to write a readonly database' on a read-only folder."""
    import contextlib
    import io
    import json
    import os
    import shutil
    import stat
    import tempfile
    from pathlib import Path

    from prealign.cli import main

    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    top = Path(tempfile.mkdtemp(prefix="prealign-ro-"))  # outside pytest's 0700 tmp, so user nobody can enter
    try:
        top.chmod(0o755)
        warm, root, out = top / "warm", top / "store", top / "out"
        _store_with_runs(warm).close()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for argv in (["list"], ["show", "1"], ["show", "1", "--json"], ["export", "--csv", str(top / "w.csv")]):
                assert main(["runs", "--out", str(warm), *argv]) == 0  # imports everything the child needs
        writer = _store_with_runs(root)
        if "writer" in case:  # a third run sits in the WAL of a writer that is still open
            writer.start(RunConfig(method="bp", hidden=(8,), epochs=1))
            assert (root / "runs.sqlite-wal").stat().st_size > 0
        else:
            writer.close()
        out.mkdir()
        out.chmod(0o777)
        db = root / "runs.sqlite"
        files = sorted(os.listdir(root))
        before = db.read_bytes()
        for p in root.iterdir():
            p.chmod(0o444 if p.is_file() else 0o555)
        root.chmod(0o777 if case == "read-only file" else 0o555)

        def read():
            results = {}
            for name, argv in (("list", ["list"]), ("show", ["show", "1", "--json"]),
                               ("export", ["export", "--csv", str(out / "e.csv")])):
                stdout, stderr = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                    code = main(["runs", "--out", str(root), *argv])
                results[name] = [code, stdout.getvalue(), stderr.getvalue()]
            return results

        got = _as_reader_without_write_permission(read)
        assert "exception" not in got, got
        for name, (code, stdout, stderr) in got.items():
            assert code == 0, (name, stderr)
        n_runs = 3 if "writer" in case else 2
        assert got["list"][1].count("\tfa\t") + got["list"][1].count("\tbp\t") == n_runs  # tab-separated in a pipe
        assert json.loads(got["show"][1])["epochs"] == [{"epoch": 0, "test_acc": 0.5}]
        assert "wrote 2 rows" in got["export"][2]  # one epoch logged for each of the first two runs
        assert db.read_bytes() == before
        if case != "read-only file":
            assert sorted(os.listdir(root)) == files
    finally:
        for p in [top, *top.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)
        shutil.rmtree(top)
