"""Run many independent training runs: in local worker processes or on a Ray cluster.

A sweep is a list of :class:`~prealign.run.config.RunConfig`. Each run is independent, so the
sweep is embarrassingly parallel; the only shared thing is the result store (SQLite in WAL
mode, safe under concurrent writers), which makes a sweep *resumable*:

- before dispatching, every config whose ``key()`` is already ``finished`` (or ``diverged``,
  which is a finished outcome too) in the store is skipped;
- a run killed mid-way is left ``running`` in the store with its last epoch checkpoint;
  re-running the sweep re-dispatches it and :func:`prealign.run.config.run` resumes it, so a
  killed sweep loses at most the epochs in flight and never duplicates a run;
- a run that raises is recorded ``failed`` (with the error) and the sweep goes on; a ``failed``
  run is tried again on the next invocation.

Batching (issue 8): by default compatible configs — MLPs under bp/fa/ifa/rnp that share data,
widths and optimizer settings (:func:`prealign.run.sweep_batched.group_key`) — are trained in groups
of up to 8 as one vectorized model (:func:`prealign.run.batched.train_runs`), each run stored exactly
as its separate run would be; ``batch_models=False`` trains every config alone. A group is one
task for a worker; a killed group's runs resume from their last epoch checkpoints.

Executors
---------
``local``  a pool of ``workers`` spawned processes, one torch thread each (``workers=1`` runs
           in this process, serially). Default ``workers`` = number of CPU cores. Workers never
           outlive the sweep: if the sweeping process is interrupted (Ctrl-C, SIGTERM) it ends its
           workers before it returns, and if it dies outright (``kill -9``) the workers notice
           (Linux: ``prctl(PR_SET_PDEATHSIG)``; everywhere: a thread watching the parent pid) and
           exit. Runs they had in flight stay ``running`` with their last epoch checkpoint and
           resume on the next invocation.
``ray``    ``ray.init(address=...)`` (``None`` starts a local Ray instance); each run is a Ray
           task with ``num_cpus=1`` executing the same worker function. Every node must be able
           to open the store path (a shared POSIX filesystem; SQLite WAL does not work on NFS).

Usage::

    from prealign.run.sweep import run_sweep
    outcomes = run_sweep(configs, "runs.db", executor="local", workers=2)
"""
from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import PrealignError, UnknownNameError

EXECUTORS = ("local", "ray")
DONE = ("finished", "diverged")  # statuses that count as "this run is done, never redo it"


@dataclass
class Outcome:
    """What happened to one config of a sweep.

    ``status``: ``finished`` | ``diverged`` | ``failed`` | ``skipped`` (already done before this
    sweep started; ``previous`` then holds its stored status). ``summary``: the worker's summary
    dict (e.g. ``best_test_acc``, a fraction), ``error``: one line for failures.
    """

    key: str
    status: str
    config: dict
    summary: dict = field(default_factory=dict)
    error: str | None = None
    previous: str | None = None
    seconds: float = 0.0

    @property
    def done(self) -> bool:
        return self.status in DONE or (self.status == "skipped" and self.previous in DONE)


# --------------------------------------------------------------------------------------- workers
def _limit_threads() -> None:
    """One torch/BLAS thread per worker: N workers then use N cores, not N×N."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def train_task(config: dict, store_path: str, callbacks=()) -> dict:
    """The default worker: train one :class:`RunConfig` (given as a dict) into the store.

    Never raises for a training problem: returns ``{"status": "failed", "error": ...}`` and
    records the failure in the store, so one bad run cannot stop a sweep.
    """
    from .config import RunConfig, run
    from .store import Store

    cfg = RunConfig.from_dict(config)
    store = Store(store_path)
    start = time.perf_counter()
    try:
        result = run(cfg, store, progress=False, callbacks=callbacks)
    except Exception as exc:  # noqa: BLE001 - a sweep records failures, never crashes on them
        error = f"{type(exc).__name__}: {exc}"
        _record_failure(store, cfg, error)
        return {"key": cfg.key(), "status": "failed", "error": error, "seconds": time.perf_counter() - start}
    finally:
        close = getattr(store, "close", None)
        if close:
            close()
    return {"key": cfg.key(), "status": result.status, "summary": run_summary(result),
            "seconds": time.perf_counter() - start}


def run_summary(result) -> dict:
    """The per-run summary a sweep outcome carries (from a :class:`~prealign.run.trainer.TrainResult`)."""
    return {"best_test_acc": result.best_test_acc, "best_val_acc": result.best_val_acc, "selection": result.selection,
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "diverged_epoch": result.diverged_epoch}


def _record_failure(store, cfg, error: str) -> None:
    """Mark the run of ``cfg`` failed in the store, unless :func:`run` already did."""
    row = store.find(cfg.key())
    if row is None:
        run_id = store.start(cfg)
    else:
        if _field(row, "status") == "failed":
            return
        run_id = _field(row, "id")
    store.fail(run_id, error)


def _field(row, name):
    return row[name] if isinstance(row, dict) else getattr(row, name)


def _resolve_task(task) -> Callable[[dict, str], dict]:
    """``task`` may be a callable or ``"module:function"`` (importable in every worker)."""
    if callable(task):
        return task
    module, _, name = str(task).partition(":")
    return getattr(importlib.import_module(module), name)


PARENT_POLL_SECONDS = 0.25  # how often a worker checks that its parent is still alive


def _worker_init(parent_pid: int) -> None:
    """Initializer of every local worker process: exit when the sweeping process ``parent_pid`` dies.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` has the kernel kill this worker the moment its
    parent dies (also on ``kill -9``; strictly, when the parent thread that started it ends: the
    pool starts its workers from the thread calling :func:`run_sweep`, which outlives the pool). Everywhere: a daemon thread polls ``os.getppid()`` every
    :data:`PARENT_POLL_SECONDS` and ends the process once it differs from ``parent_pid`` (the
    worker was re-parented: its parent is gone). SIGINT is ignored here: on Ctrl-C the terminal
    signals the whole process group, and the parent alone decides (it ends the workers)."""
    import signal
    import sys
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1  # <linux/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="prealign-parent-watch", daemon=True).start()


def _end_workers(pool, grace: float = 5.0) -> None:
    """Stop a process pool now: cancel the queued units, SIGTERM every worker, wait for them.

    A worker ended mid-run leaves that run ``running`` with its last (atomically written) epoch
    checkpoint, which the next invocation resumes."""
    # ProcessPoolExecutor has no public way to stop running workers; its ``_processes`` (pid -> Process) does
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


def _worker(task, config: dict, store_path: str) -> dict:
    """Entry point in a worker process / Ray task: one thread, run, never raise."""
    _limit_threads()
    try:
        out = _resolve_task(task)(config, store_path)
    except Exception as exc:  # noqa: BLE001 - even a broken task must not kill the sweep
        out = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return out


# --------------------------------------------------------------------------------------- sweep
def _store_path(store) -> str:
    path = getattr(store, "path", store)
    return os.fspath(path)


def _open_store(store):
    if isinstance(store, (str, os.PathLike)):
        from .store import Store

        return Store(store)
    return store


def pending(configs: Iterable, store) -> tuple[list, list[Outcome]]:
    """Split ``configs`` into those still to run and :class:`Outcome` rows for those already done.

    Duplicate keys inside ``configs`` are run once.
    """
    from .loggers import replay

    store = _open_store(store)
    todo, done, seen = [], [], set()
    for cfg in configs:
        key = cfg.key()
        if key in seen:
            continue
        seen.add(key)
        row = store.find(key)
        status = None if row is None else _field(row, "status")
        if status in DONE:
            if getattr(cfg, "tensorboard", ""):  # its loggers get the stored records (prealign.run.loggers)
                replay(cfg, store.result(_field(row, "id")))
            done.append(Outcome(key=key, status="skipped", config=cfg.to_dict(), previous=status))
        else:
            todo.append(cfg)
    return todo, done


DEFAULT_TASK = "prealign.run.sweep:train_task"


def _batch_config(item, task):
    """The RunConfig under which ``item`` may train in a batched group, or None.

    A RunConfig qualifies only under the default task (a custom task may do anything); any other
    item qualifies through its own ``batch_config()`` (None = no), by which it promises that its
    task's result is that of a plain run of the returned config."""
    from .config import RunConfig

    if isinstance(item, RunConfig):
        return item if task == DEFAULT_TASK or task is train_task else None
    get = getattr(item, "batch_config", None)
    return get() if callable(get) else None


def check_options(executor: str = "local", workers: int | None = None) -> None:
    """Raise a one-line error for an unknown ``executor`` or ``workers < 1`` (commands call this
    before they open a store, so a bad option leaves nothing behind)."""
    if executor not in EXECUTORS:
        raise UnknownNameError("executor", executor, EXECUTORS)
    if workers is not None and workers < 1:
        raise PrealignError(f"--workers must be at least 1, got {workers}")


def run_sweep(configs: Sequence, store, *, executor: str = "local", workers: int | None = None,
              address: str | None = None, progress: bool | None = None,
              task: Callable[[dict, str], dict] | str = DEFAULT_TASK,
              on_outcome: Callable[[Outcome], None] | None = None, batch_models: bool | int | str = "auto") -> list[Outcome]:
    """Run every config not yet done in ``store``; return one :class:`Outcome` per distinct key.

    ``store``: a :class:`~prealign.run.store.Store` or its path (workers open the path themselves).
    ``executor``: ``"local"`` (``workers`` spawned single-threaded processes; ``workers=1`` runs
    serially in this process) or ``"ray"`` (``address`` of a cluster, ``None`` = start a local one).
    ``task(config_dict, store_path) -> dict`` is the worker function (default: train the run).
    ``batch_models``: ``"auto"`` (default) trains compatible configs (MLPs under bp/fa/ifa/rnp
    sharing data, widths and optimizer settings; :func:`prealign.run.sweep_batched.group_key`) as one
    vectorized model per group of up to 8, storing bitwise what separate runs store
    (:mod:`prealign.run.sweep_batched`), where that is faster (:func:`prealign.run.sweep_batched.wins`: small networks on a CPU, any on a GPU);
    ``False``/``"off"`` trains every config alone; an int ``G >= 2`` batches every compatible
    config in groups of at most ``G``.
    ``on_outcome`` is called in this process as each run ends.
    Outcomes come back in the order of ``configs``.
    """
    from .sweep_batched import GROUP_TASK, plan, resolve_batch

    check_options(executor, workers)
    group_size, auto = resolve_batch(batch_models)
    order = {}
    for cfg in configs:
        order.setdefault(cfg.key(), len(order))
    todo, outcomes = pending(configs, store)
    path = _store_path(store)
    from ..progress import progress_bar

    def record(cfg, out: dict) -> Outcome:
        outcome = Outcome(key=cfg.key(), status=out.get("status", "failed"), config=cfg.to_dict(),
                          summary=out.get("summary", {}), error=out.get("error"), seconds=out.get("seconds", 0.0))
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)
        return outcome

    n_workers = workers or os.cpu_count() or 1
    batch_configs = [_batch_config(item, task) for item in todo] if group_size else [None] * len(todo)
    units = []  # (items, task, payload): one config, or a group trained as one batched model
    for members in plan(batch_configs, group_size, n_workers, auto=auto):
        if len(members) == 1:
            units.append(([todo[members[0]]], task, todo[members[0]].to_dict()))
        else:
            units.append(([todo[i] for i in members], GROUP_TASK, [batch_configs[i].to_dict() for i in members]))

    with progress_bar(len(todo), f"sweep ({executor})", enabled=progress) as bar:
        def advance(outcome: Outcome) -> None:
            n_failed = sum(o.status == "failed" for o in outcomes)
            bar.advance(1, last=outcome.status, failed=n_failed)

        def finish(items, out) -> None:
            """Record a unit's result: one dict per item (a list for groups; one dict = all failed)."""
            outs = out if isinstance(out, list) and len(out) == len(items) else [out] * len(items)
            for item, o in zip(items, outs):
                advance(record(item, o))

        if units and executor == "local":
            _run_local(units, path, n_workers, finish)
        elif units:
            _run_ray(units, path, address, finish)
    outcomes.sort(key=lambda o: order[o.key])
    return outcomes


def _run_local(units, path, workers, finish) -> None:
    if workers == 1:  # serial, in this process (debugging, tests, one-core machines)
        for items, task, payload in units:
            try:
                out = _resolve_task(task)(payload, path)
            except Exception as exc:  # noqa: BLE001
                out = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            finish(items, out)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")  # no fork: torch threads and SQLite handles don't survive fork
    remaining, retried = list(units), set()
    while remaining:
        broken = []
        pool = ProcessPoolExecutor(max_workers=min(workers, len(remaining)), mp_context=ctx,
                                   initializer=_worker_init, initargs=(os.getpid(),))
        try:
            futures = {pool.submit(_worker, task, payload, path): (items, task, payload) for items, task, payload in remaining}
            for fut in as_completed(futures):
                unit = futures[fut]
                try:
                    out = fut.result()
                except BrokenProcessPool:  # a worker died (killed, out of memory): retry its runs once
                    broken.append(unit)
                    continue
                finish(unit[0], out)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM via the CLI) or failing: no worker outlives us
            _end_workers(pool)
            raise
        pool.shutdown(wait=True)
        remaining = []
        for unit in broken:
            ident = tuple(item.key() for item in unit[0])
            if ident in retried:
                finish(unit[0], {"status": "failed", "error": "worker process died twice (killed or out of memory)"})
            else:
                retried.add(ident)
                remaining.append(unit)


def _run_ray(units, path, address, finish) -> None:
    try:
        import ray
    except ImportError as exc:
        raise PrealignError("the Ray executor needs the 'ray' package; install it with "
                            "`pip install ray` or use --executor local") from exc
    started = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=1)(_worker)
        refs = {remote.remote(task, payload, path): items for items, task, payload in units}
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            items = refs[ready[0]]
            try:
                out = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - a lost task / dead node is a failed run
                out = {"status": "failed", "error": f"ray task failed: {type(exc).__name__}: {exc}"}
            finish(items, out)
    finally:
        if started:
            ray.shutdown()
