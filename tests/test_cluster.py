"""Sweeps across a cluster without a shared file system (issue 15): one writer, checkpoints in a
storage every node reaches, a lost node's runs retried from their checkpoints, GPUs shared as fractions.

The Ray tests start a real two-node cluster on this machine: a head node, and a worker node in
its own mount namespace (``unshare -m``: a private ``/tmp``, its own working directory) that
cannot see the driver's files — the store lives in the driver's ``/tmp``. What both nodes reach is
the checkpoint storage (a folder in ``/dev/shm``, standing for a bucket) and prealign itself, which
each task gets through Ray's ``runtime_env`` (``working_dir``: this checkout's ``src``). Every Ray
process started here is stopped by its PID. Marked ``ray`` (``-m 'not ray'`` leaves them out)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from prealign.errors import PrealignError
from prealign.run.config import RunConfig
from prealign.run.store import Store
from prealign.run.sweep import run_sweep

SRC = Path(__file__).resolve().parents[1] / "src"


def tiny(method="fa", seed=0, **kw):
    base = dict(method=method, seed=seed, dataset="digits", train_subset=128, hidden=[16], epochs=2,
                batch_size=32, lr=1e-3, grad_alignment=False, device="cpu")
    base.update(kw)
    return RunConfig.from_dict(base)


def same_stored_runs(a: Store, b: Store, configs, resumed: bool = False) -> None:
    """Two stores hold the same results for ``configs``: status, accuracies, every epoch's losses (bitwise;
    ``resumed``: the training loss, a running sum, to 1e-6 as tests/test_sweep.py allows for a resumed run)."""
    for cfg in configs:
        ra, rb = a.find(cfg.key()), b.find(cfg.key())
        assert ra["status"] == rb["status"] == "finished"
        sa, sb = ra["summary"], rb["summary"]
        for name in ("best_test_acc", "best_val_acc", "best_epoch", "epochs_run"):
            assert sa[name] == sb[name], (cfg.label, name)
        ea, eb = a.epochs(ra["id"]), b.epochs(rb["id"])
        assert [e["epoch"] for e in ea] == [e["epoch"] for e in eb] == list(range(cfg.epochs + 1))
        assert [e["test_loss"] for e in ea] == [e["test_loss"] for e in eb]
        assert [e["train_loss"] for e in ea] == (pytest.approx([e["train_loss"] for e in eb], rel=1e-6) if resumed
                                                 else [e["train_loss"] for e in eb])


# ------------------------------------------------------------------------------ without Ray
def test_workers_never_open_the_store(tmp_path, monkeypatch):
    """One writer: local worker processes run with sqlite3.connect made to raise (a sitecustomize on
    their PYTHONPATH), and the sweep — single runs and a batched group — still stores everything."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import os, sqlite3
        if os.getpid() != {os.getpid()}:  # a worker process, not this test's
            open({str(tmp_path / 'workers')!r}, "a").write(f"{{os.getpid()}}\\n")
            def refuse(*args, **kwargs):
                open({str(tmp_path / 'opened')!r}, "a").write(f"{{os.getpid()}} {{args[:1]}}\\n")
                raise sqlite3.OperationalError("a sweep worker opened an SQLite database")
            sqlite3.connect = refuse
    """))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), str(SRC), os.environ.get("PYTHONPATH", "")]))
    configs = [tiny("bp", 0), tiny("fa", 0), tiny("dfa", 0)]  # dfa trains alone, the others batched
    store = Store(tmp_path / "store")
    out = run_sweep(configs, store, workers=2, progress=False, batch_models=2)
    assert all(o.status == "finished" for o in out), [o.error for o in out]
    assert (tmp_path / "workers").read_text().count("\n") >= 2  # the hook ran in the workers
    assert not (tmp_path / "opened").exists()
    assert all(r["status"] == "finished" and r["device"] == "cpu" for r in store.runs())
    assert all(len(store.epochs(r["id"])) == 3 for r in store.runs())


def test_storage_uri_holds_the_checkpoints_and_resumes(tmp_path):
    """``storage="memory://..."`` (any fsspec URL): checkpoints go there, not next to the store, the
    store records where, ``load_model`` finds them, and a run resumes from there (``resumed_from``)."""
    import fsspec

    uri = f"memory://prealign-{uuid.uuid4().hex}"
    cfg = tiny("fa", 0, epochs=2)
    store = Store(tmp_path / "s")
    run_sweep([cfg.replace(epochs=1)], store, workers=1, progress=False, storage=uri)  # a 1-epoch run: epoch 1 saved
    row = store.find(cfg.replace(epochs=1).key())
    assert row["storage"] == uri and not (tmp_path / "s" / "checkpoints").exists()
    assert fsspec.filesystem("memory").exists(f"{uri[len('memory://'):]}/{row['key']}.pt")
    assert store.load_model(row["id"]) is not None
    # the same key resumed from a stored checkpoint: copy epoch 1 of a 3-epoch run's training into the storage
    partial = Store(tmp_path / "p")
    from prealign.run.storage import Storage

    class Stop(BaseException):
        pass

    state = {}

    class StopAfterOne:
        def on_epoch_end(self, epoch, model, data, record):
            if epoch == 2:
                raise Stop

    from prealign.run.config import run

    with pytest.raises(Stop):
        run(cfg, partial, progress=False, callbacks=[StopAfterOne()])
    state = partial.load_checkpoint(partial.find(cfg.key())["id"])
    assert state["epoch"] == 1
    Storage(uri).checkpoint(cfg.key()).save(state)
    out = run_sweep([cfg], store, workers=1, progress=False, storage=uri)
    assert out[0].status == "finished" and out[0].summary["resumed_from"] == 1
    fresh = Store(tmp_path / "fresh")
    run_sweep([cfg], fresh, workers=1, progress=False)
    same_stored_runs(store, fresh, [cfg])


def test_a_checkpoint_of_another_run_in_the_storage_is_refused(tmp_path):
    from prealign.run.storage import Storage

    uri = f"memory://prealign-{uuid.uuid4().hex}"
    a, b = tiny("fa", 0), tiny("fa", 1)
    store = Store(tmp_path)
    run_sweep([a], store, workers=1, progress=False, storage=uri)
    storage = Storage(uri)
    storage.fs.copy(storage.path(a.key()), storage.path(b.key()))  # a's file under b's name
    out = run_sweep([b], store, workers=1, progress=False, storage=uri)
    assert out[0].status == "failed" and "belongs to another run" in out[0].error and "memory://" in out[0].error


def test_gpu_requests_fail_loudly_without_a_gpu(tmp_path):
    """A run that asks for a GPU where there is none is refused before anything is stored (local
    executor), and a config pinned to the CPU cannot ask for one."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    store = Store(tmp_path)
    with pytest.raises(PrealignError, match="no GPU"):
        run_sweep([tiny("fa", 0, device="auto")], store, workers=1, progress=False, gpus_per_run=0.25)
    with pytest.raises(PrealignError, match="says device cpu"):
        run_sweep([tiny("fa", 0)], store, workers=1, progress=False, gpus_per_run=1)
    assert store.runs() == []
    # in the worker itself (what a Ray task on a node without CUDA runs): no CPU fallback
    from prealign.run.storage import Storage, WorkerStore
    from prealign.run.worker import train_task

    messages = []
    ws = WorkerStore(Storage(tmp_path / "ckpt"), {tiny("fa", 0, device="auto").key(): 1}, messages.append, gpus=0.25)
    out = train_task(tiny("fa", 0, device="auto").to_dict(), ws)
    assert out["status"] == "failed" and "asked for 0.25 GPU" in out["error"] and "sees no CUDA device" in out["error"]
    assert [m[0] for m in messages] == ["fail"]


def test_resources_of_units():
    """The default GPU rule and a batched group's combined request."""
    from prealign.run.sweep import _resources, default_gpus

    mlp, cnn = tiny("fa", device="auto"), tiny("fa", device="auto", model="lenet", dataset="mnist5k", hidden=[100])
    assert default_gpus(mlp, 0) == 0 and default_gpus(mlp, 8) == 0.25 and default_gpus(cnn, 1) == 1.0
    assert default_gpus(tiny("fa"), 8) == 0  # device cpu
    assert _resources([mlp] * 3, None, None, 1, 16) == (0.75, 3.0)
    assert _resources([mlp] * 8, None, 0.5, 1, 16) == (1.0, 4.0)  # one device at most; CPUs summed
    assert _resources([mlp] * 8, 0, 4, 0, 6) == (0.0, 6.0)  # capped at the largest node


# ------------------------------------------------------------------------------ a real two-node Ray cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list:
    import psutil

    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _tail(path: Path, lines: int = 5) -> str:
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) if path.exists() else "(no log)"


def _kill(procs: list, sig=signal.SIGKILL) -> None:
    import psutil

    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, private_ray_token):
    """A head node (1 CPU) and node B (1 CPU, 1 fake GPU, resource ``nodeB``) in its own mount
    namespace; the driver (this process) connected to the head. Yields a dict of what the tests need.

    Token authentication (``RAY_AUTH_MODE=token``, which this setup needs) with the session's own
    token (``private_ray_token``, conftest.py): the nodes get it as ``RAY_AUTH_TOKEN`` (node B's
    private ``/tmp`` hides the file), the driver through ``RAY_AUTH_TOKEN_PATH``. Nothing depends on
    a token left in ``~/.ray`` by an earlier run: on a fresh machine ``ray start --head`` exited 1."""
    ray = pytest.importorskip("ray", reason="the cluster tests need ray")
    pytest.importorskip("psutil", reason="the cluster tests stop Ray by PID with psutil (Ray ships a copy)")
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a node in its own mount namespace needs Linux, root and unshare")
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm for the storage both nodes share")
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    root = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_TOKEN": private_ray_token.read_text()}
    env.pop("RAY_AUTH_TOKEN_PATH")
    env.pop("PYTHONPATH", None)  # the nodes get prealign from the tasks' runtime_env, not from here
    common = ["--block", "--disable-usage-stats"]
    head = subprocess.Popen([ray_bin, "start", "--head", "--port", str(port), "--num-cpus", "1", "--num-gpus", "0",
                             "--temp-dir", str(root / "ray"), "--include-dashboard=false", *common],
                            env=env, stdout=open(root / "head.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    # Node B's /tmp is an empty tmpfs: it sees none of the driver's temporary files (the store). The
    # environment's own files stay where they are; one that lives under /tmp (a CI checkout's .venv)
    # is held by a bind mount first and put back at its path, so the `ray` executable still runs.
    venv, hold = Path(sys.prefix), None
    keep_before = keep_after = ""
    if Path("/tmp") in venv.parents:
        hold = tempfile.mkdtemp(prefix="prealign-venv-", dir="/dev/shm")
        keep_before = f"mount --bind {shlex.quote(str(venv))} {hold} && "
        keep_after = f" && mkdir -p {shlex.quote(str(venv))} && mount --bind {hold} {shlex.quote(str(venv))}"
    node_cmd = (f"{keep_before}mount -t tmpfs none /tmp{keep_after} && mkdir /tmp/nodeB && cd /tmp/nodeB && "
                f"exec {ray_bin} start --address 127.0.0.1:{port} --num-cpus 1 --num-gpus 1 "
                f"--resources '{json.dumps({'nodeB': 1})}' " + " ".join(common))
    node = None
    procs = []
    storage = tempfile.mkdtemp(prefix="prealign-cluster-", dir="/dev/shm")
    from ray._raylet import Config

    old_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"  # the head asks for the token (MACHINE-NOTES); Ray caches the mode:
    Config.initialize("")                  # refresh it, as ray's own _enable_token_auth does
    try:
        time.sleep(1.0)
        node = subprocess.Popen(["unshare", "-m", "sh", "-c", node_cmd], env=env, stdout=open(root / "node.log", "wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 90
        while True:
            try:
                if not ray.is_initialized():
                    ray.init(address=f"127.0.0.1:{port}", include_dashboard=False, log_to_driver=False)
                if len([n for n in ray.nodes() if n["Alive"]]) == 2:
                    break
            except Exception:  # the head is still starting
                if time.time() > deadline:
                    raise
            if time.time() > deadline:
                pytest.fail("the two-node Ray cluster did not come up in 90 s")
            for name, proc, log in (("head", head, "head.log"), ("node B", node, "node.log")):
                if proc.poll() is not None:
                    pytest.fail(f"the Ray {name} exited ({proc.returncode}): {_tail(root / log)}")
            time.sleep(0.5)
        procs = _tree(head.pid) + _tree(node.pid)
        ray.shutdown()  # each test connects as a user would: a job with prealign in its runtime_env
        yield {"ray": ray, "storage": storage, "node": node, "address": f"127.0.0.1:{port}",
               "runtime_env": {"working_dir": str(SRC), "excludes": ["__pycache__"]}}
    finally:
        ray.shutdown()
        for proc in (node, head):
            if proc is not None:
                procs += _tree(proc.pid)
        _kill(list({p.pid: p for p in procs}.values()), signal.SIGTERM)
        _kill([p for p in procs if p.is_running()])
        shutil.rmtree(storage, ignore_errors=True)
        if hold is not None:
            os.rmdir(hold)  # empty here: the bind mount lived in node B's namespace, which ended with it
        if old_mode is None:
            os.environ.pop("RAY_AUTH_MODE")
        else:
            os.environ["RAY_AUTH_MODE"] = old_mode
        Config.initialize("")


ON_B = {"nodeB": 0.001}


@pytest.mark.ray
def test_two_node_sweep_stores_what_the_local_executor_stores(cluster, tmp_path):
    ray = cluster["ray"]
    store = Store(tmp_path / "store")
    ray.init(address=cluster["address"], runtime_env=cluster["runtime_env"], log_to_driver=False)

    @ray.remote(num_cpus=0, resources=ON_B)
    def look(path):
        import prealign

        return os.path.exists(path), os.path.exists(os.path.dirname(path)), os.getcwd(), prealign.__file__

    try:
        sees_store, sees_folder, _cwd, module = ray.get(look.remote(str(store.path)))
        assert store.path.exists() and not sees_store and not sees_folder  # node B cannot see the store
        assert not module.startswith(str(SRC)) and "/work/" not in module  # prealign came with the runtime_env
        configs = [tiny(m, s) for m in ("bp", "fa", "ifa") for s in range(3)] + [tiny("dfa", s) for s in range(3)]
        out = run_sweep(configs, store, executor="ray", storage=cluster["storage"], resources=ON_B, progress=False)
    finally:
        ray.shutdown()
    assert all(o.status == "finished" for o in out), [o.error for o in out]
    local = Store(tmp_path / "local")
    run_sweep(configs, local, workers=1, progress=False)
    same_stored_runs(store, local, configs)
    rows = store.runs()
    assert len(rows) == 12 and all(r["device"] == "cpu" and r["storage"] == cluster["storage"] for r in rows)
    assert not (tmp_path / "store" / "checkpoints").exists()
    assert sorted(p.name for p in Path(cluster["storage"]).glob("*.pt")) == sorted(f"{c.key()}.pt" for c in configs)


class Item:
    """A sweep item that is not a run (the concurrency probe below trains nothing)."""

    def __init__(self, i):
        self.i = i

    def key(self):
        return f"probe-{self.i}"

    def to_dict(self):
        return {"i": self.i}


@pytest.mark.ray
def test_quarter_gpus_run_four_at_a_time_and_a_missing_cuda_fails_loudly(cluster, tmp_path):
    """Node B advertises one (fake) GPU: with ``gpus_per_run=0.25`` (and CPUs to spare) exactly four
    probes overlap — each waits until four have started, so fewer could not finish, more would
    overlap — and each saw a Ray GPU; a training run asking for a GPU there fails, naming the cause."""
    barrier = Path(cluster["storage"]) / f"barrier-{uuid.uuid4().hex}"
    barrier.mkdir()

    def probe(payload, store):
        import ray as _ray

        start = time.time()
        (barrier / f"{payload['i']}.start").write_text(str(start))
        while len(list(barrier.glob("*.start"))) - len(list(barrier.glob("*.end"))) < 4 and time.time() - start < 20:
            time.sleep(0.05)
        time.sleep(0.3)
        (barrier / f"{payload['i']}.end").write_text(str(time.time()))
        return {"status": "finished", "summary": {"device": f"ray GPU {_ray.get_gpu_ids()}", "start": start,
                                                  "end": time.time()}}

    store = Store(tmp_path / "store")
    out = run_sweep([Item(i) for i in range(8)], store, executor="ray", task=probe, gpus_per_run=0.25, cpus_per_run=0.1,
                    resources=ON_B, progress=False, address=cluster["address"], runtime_env=str(SRC))
    assert all(o.status == "finished" for o in out), [o.error for o in out]
    spans = [(o.summary["start"], o.summary["end"]) for o in out]
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap == 4
    assert all(o.summary["device"] == "ray GPU ['0']" or o.summary["device"] == "ray GPU [0]" for o in out), out[0].summary
    run = tiny("fa", 0, device="auto")
    out = run_sweep([run], store, executor="ray", gpus_per_run=0.25, resources=ON_B, progress=False,
                    address=cluster["address"], runtime_env=cluster["runtime_env"], batch_models=False)
    assert out[0].status == "failed" and "asked for 0.25 GPU" in out[0].error and "no CUDA device" in out[0].error
    row = store.find(run.key())
    assert row["status"] == "failed" and "asked for 0.25 GPU" in row["error"]


@pytest.mark.ray
def test_a_lost_node_s_runs_resume_on_the_other_from_their_checkpoints(cluster, tmp_path):
    """Node B is killed (its processes, by PID) while it trains; its runs are retried on the head node
    from their last checkpoints: every run stored exactly once, each epoch once, results as uninterrupted."""
    ray = cluster["ray"]

    def slow(payload, store):
        from prealign.run.worker import train_task

        class Slow:
            def on_epoch_end(self, epoch, model, data, record):
                time.sleep(0.4)

        return train_task(payload, store, callbacks=[Slow()])

    configs = [tiny("fa", s, epochs=4) for s in range(4)]
    store = Store(tmp_path / "store")
    result = {}
    ray.init(address=cluster["address"], runtime_env=cluster["runtime_env"], log_to_driver=False)
    sweep = threading.Thread(target=lambda: result.update(out=run_sweep(
        configs, store, executor="ray", task=slow, storage=cluster["storage"], batch_models=False, progress=False)))
    sweep.start()
    reader = Store(tmp_path / "store", read_only=True)
    deadline = time.time() + 90
    while time.time() < deadline:  # both nodes train, each a run past its epoch 1 (checkpointed)
        training = [r for r in reader.runs() if r["status"] == "running" and len(reader.epochs(r["id"])) >= 2]
        if len(training) >= 2:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the sweep did not start on both nodes")
    killed = _tree(cluster["node"].pid)  # `ray start --block` in node B's namespace, its raylet and workers
    _kill(killed)
    sweep.join(180)
    assert not sweep.is_alive()
    out = result["out"]
    assert all(o.status == "finished" for o in out), [o.error for o in out]
    rows = store.runs()
    assert len(rows) == 4 and len({r["key"] for r in rows}) == 4
    resumed = [o.summary["resumed_from"] for o in out if o.summary["resumed_from"] is not None]
    assert resumed and max(resumed) >= 1  # node B's run went on from its checkpoint
    for r in rows:
        assert [e["epoch"] for e in store.epochs(r["id"])] == [0, 1, 2, 3, 4]
    local = Store(tmp_path / "local")
    run_sweep(configs, local, workers=1, progress=False, batch_models=False)
    same_stored_runs(store, local, configs, resumed=True)
    assert len(killed) >= 3 and not any(p.is_running() for p in killed)  # node B stayed dead
    ray.shutdown()


def test_a_store_made_before_the_device_column_gains_it(tmp_path):
    """A store written before ``device``/``storage`` existed opens, keeps its runs, and records devices."""
    import sqlite3

    from prealign.run import store as store_module

    old_schema = store_module._SCHEMA.replace(",\n    device   TEXT,\n    storage  TEXT", "")
    assert "device" not in old_schema
    conn = sqlite3.connect(tmp_path / "runs.sqlite")
    conn.executescript(old_schema)
    conn.execute("INSERT INTO runs (key, label, dataset, seed, config, status, created, updated) "
                 "VALUES ('k', 'fa', 'digits', 0, '{}', 'failed', 0, 0)")
    conn.commit()
    conn.close()
    assert Store(tmp_path, read_only=True).runs()[0]["device"] is None  # read-only: nothing added, still readable
    store = Store(tmp_path)
    assert store.get("1")["key"] == "k" and store.get("1")["device"] is None
    out = run_sweep([tiny("fa", 0)], store, workers=1, progress=False)
    assert out[0].summary["device"] == "cpu" and store.find(tiny("fa", 0).key())["device"] == "cpu"


def test_batched_members_are_timed_by_their_share(tmp_path):
    """compare's "wall (s)" sums each run's ``seconds``: a batched group's members carry their share of the
    group's time (they add up to at most the sweep's wall time), not the group's total each."""
    configs = [tiny(m, s, train_subset=256) for m in ("bp", "fa") for s in (0, 1)]
    store = Store(tmp_path)
    start = time.perf_counter()
    out = run_sweep(configs, store, workers=1, progress=False, batch_models=4)
    wall = time.perf_counter() - start
    results = [store.result(store.find(c.key())["id"]) for c in configs]
    assert all(o.status == "finished" for o in out)
    assert sum(r.seconds + r.noise_seconds for r in results) <= wall
    assert sum(o.seconds for o in out) <= wall


def test_no_import_cycle_between_sweep_and_its_helpers():
    """sweep imports sweep_batched, worker and storage; none of them imports sweep (not even inside a function)."""
    import ast

    run_dir = SRC / "prealign" / "run"
    for name in ("sweep_batched", "worker", "storage"):
        tree = ast.parse((run_dir / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        assert "sweep" not in imported and "prealign.run.sweep" not in imported, name


def test_memory_storage_with_worker_processes_is_refused(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(PrealignError, match="one process's memory"):
        run_sweep([tiny("fa", 0)], store, workers=2, progress=False, storage="memory://x")
    assert store.runs() == []


def test_a_plain_run_records_its_device(tmp_path):
    """``prealign train`` (config.run with a store, no sweep) records the device too."""
    from prealign.run.config import run

    store = Store(tmp_path)
    result = run(tiny("fa", 0, epochs=1), store, progress=False)
    assert store.get(result.run_id)["device"] == "cpu"


# ------------------------------------------------------------------------------ connecting: bounded, one line
def _prealign(args, env=None, timeout=90) -> subprocess.CompletedProcess:
    """The CLI as a user runs it (this checkout's prealign), in a fresh process."""
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(SRC), "PREALIGN_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "prealign.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    """The command failed with exit 2 and one ``prealign: error:`` line, no traceback; returns that line."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("prealign: error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    return errors[0]


RAY_COMPARE = ["compare", "--dataset", "digits", "--methods", "fa", "--seeds", "1", "--epochs", "1",
               "--executor", "ray"]


def test_nothing_at_the_ray_address_is_one_line_in_bounded_time(tmp_path):
    """``--executor ray --address 127.0.0.1:PORT`` with nothing there: Ray itself retries for minutes (issue 24:
    "hangs with Ray's own message only"); prealign answers within seconds, naming the address."""
    pytest.importorskip("ray", reason="the Ray executor needs ray")
    port = _free_port()
    start = time.monotonic()
    done = _prealign([*RAY_COMPARE, "--address", f"127.0.0.1:{port}", "--out", str(tmp_path)], timeout=60)
    line = _one_line_error(done)
    assert time.monotonic() - start < 60
    assert f"no Ray head at 127.0.0.1:{port}" in line and f"ray start --head --port {port}" in line, line
    assert Store(tmp_path, read_only=True).runs() == []


def test_an_unanswered_connect_is_bounded(monkeypatch):
    """A head address that never answers (a dropped SYN): the TCP connect gives up after CONNECT_TIMEOUT_S and
    says so; the socket call is replaced here (a real black-hole address is not reachable from every machine)."""
    from prealign.run import ray_connect

    asked = {}

    def no_answer(target, timeout):
        asked.update(target=target, timeout=timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(ray_connect.socket, "create_connection", no_answer)
    with pytest.raises(PrealignError, match=r"no Ray head at ray://10\.1\.2\.3:10001 \(no answer within 10 s\)"):
        ray_connect.reachable("ray://10.1.2.3:10001")
    assert asked == {"target": ("10.1.2.3", 10001), "timeout": ray_connect.CONNECT_TIMEOUT_S}


@pytest.mark.ray
def test_a_head_refusing_this_process_s_token_is_one_line_with_the_fix(cluster, tmp_path):
    """The cluster asks for a token (token auth). A driver with another cluster's token, one with none (a fresh
    HOME, RAY_AUTH_MODE unset: Ray sends nothing) and one told to use tokens but holding none are each refused
    in one line that says how to get the cluster's token, in seconds (Ray alone: "Failed to connect" after ~25 s)."""
    import secrets

    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    home = tmp_path / "home"
    home.mkdir()
    cases = [({**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)},
              "refused this process's auth token"),
             ({**base, "HOME": str(home)}, "refused this process's auth token"),
             ({**base, "HOME": str(home), "RAY_AUTH_MODE": "token"}, "needs an auth token and this machine has none")]
    for env, words in cases:
        start = time.monotonic()
        done = _prealign([*RAY_COMPARE, "--address", cluster["address"], "--out", str(tmp_path / "out")], env=env)
        line = _one_line_error(done)
        assert f"the Ray cluster at '{cluster['address']}' {words}" in line, line
        assert "ray get-auth-token" in line and "RAY_AUTH_MODE=token" in line, line
        assert time.monotonic() - start < 60
    assert not (home / ".ray").exists()  # nothing was written into the (fresh) HOME
