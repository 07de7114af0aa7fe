"""Run many independent training runs: in local worker processes or on a Ray cluster.

A sweep is a list of :class:`~prealign.run.config.RunConfig`. Each run is independent, so the
sweep is embarrassingly parallel. **One writer** (issue 15): this process (the driver) is the only
one that opens the SQLite result store. It registers every run it dispatches (``running``), and
workers — the same :func:`prealign.run.worker.execute` in this process, a local worker process or
a Ray task on another machine — train against a :class:`~prealign.run.storage.WorkerStore` and send
back each epoch's record and each run's result, which the driver stores (:class:`_Writer`,
idempotent per run key and epoch). Checkpoints go to a :class:`~prealign.run.storage.Storage`
(``storage=``: a folder or an fsspec URL every node reaches; default ``checkpoints/`` next to the
store). The store makes a sweep *resumable*:

- before dispatching, every config whose ``key()`` is already ``finished`` (or ``diverged``,
  which is a finished outcome too) in the store is skipped;
- a run killed mid-way is left ``running`` in the store with its last epoch checkpoint;
  re-running the sweep re-dispatches it and :func:`prealign.run.config.run` resumes it, so a
  killed sweep loses at most the epochs in flight and never duplicates a run;
- a unit whose worker dies (a killed process, a lost Ray node) is dispatched again, up to
  ``max_attempts`` in all, and resumes from the checkpoints in the storage;
- a run that raises is recorded ``failed`` (with the error) and the sweep goes on; a ``failed``
  run is tried again on the next invocation.

Batching (issues 8, 22): by default compatible configs — MLPs under any rule that share data,
widths and optimizer settings (:func:`prealign.run.sweep_batched.group_key`) — are trained in groups
of up to 8 as one vectorized model (:func:`prealign.run.batched.train_runs`), each run stored exactly
as its separate run would be; ``batch_models=False`` trains every config alone. A group is one
task for a worker; a killed group's runs resume from their last epoch checkpoints.

Executors
---------
``local``  a pool of ``workers`` spawned processes, one torch thread each, epoch records sent
           back through a queue (``workers=1`` runs
           in this process, serially). Default ``workers`` = number of CPU cores. Workers never
           outlive the sweep: if the sweeping process is interrupted (Ctrl-C, SIGTERM) it ends its
           workers before it returns, and if it dies outright (``kill -9``) the workers notice
           (Linux: ``prctl(PR_SET_PDEATHSIG)``; everywhere: a thread watching the parent pid) and
           exit. Runs they had in flight stay ``running`` with their last epoch checkpoint and
           resume on the next invocation.
``ray``    ``ray.init(address=...)`` (``None`` starts a local Ray instance); each unit is a Ray
           task (a streaming generator) asking for its runs' ``gpus_per_run``/``cpus_per_run``
           (:func:`_resources`), with ``runtime_env`` shipping prealign to the nodes. Nodes need no
           access to the store or the driver's disk (docs/cluster.md).

Usage::

    from prealign.run.sweep import run_sweep
    outcomes = run_sweep(configs, "runs.db", executor="local", workers=2)
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import PrealignError, UnknownNameError

EXECUTORS = ("local", "ray")


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
# the worker's half lives in prealign.run.worker (no import cycle with sweep_batched); these names stay here too
from .worker import DONE, execute, run_summary, train_task  # noqa: F401
from .worker import record_failure as _record_failure  # noqa: F401


def _limit_threads(threads: int = 1) -> None:
    """One torch/BLAS thread per worker (see :func:`prealign.run.worker.limit_threads`)."""
    from .worker import limit_threads

    limit_threads(threads)


def _field(row, name):
    return row[name] if isinstance(row, dict) else getattr(row, name)


# the local executor's worker processes: started with SIGINT held, ended with their parent (run/processes.py)
from .processes import PARENT_POLL_SECONDS, _end_workers, _local_unit, _sigint_blocked, _worker_init  # noqa: E402,F401


def _ray_unit(unit: dict):
    """A Ray task, as a streaming generator: yields the unit's ``("epoch", key, record)`` messages
    while it trains (in a thread), then ``("done", execute's return)``."""
    import queue
    import threading

    messages: queue.Queue = queue.Queue()
    box: dict = {}

    def target() -> None:
        try:
            box["done"] = execute(unit, messages.put)
        finally:
            messages.put(None)

    thread = threading.Thread(target=target, name="prealign-unit", daemon=True)
    thread.start()
    while (msg := messages.get()) is not None:
        yield msg
    thread.join()
    yield ("done", box.get("done") or {"out": {"status": "failed", "error": "the task ended without a result"},
                                       "final": []})


# --------------------------------------------------------------------------------------- sweep
def _store_path(store) -> str:
    path = getattr(store, "path", store)
    return os.fspath(path)


def _open_store(store):
    if isinstance(store, (str, os.PathLike)):
        from .store import Store

        return Store(store)
    return store


class _Writer:
    """The sweep's one writer: applies the workers' messages (:mod:`prealign.run.storage`) to the
    store. Idempotent per run key and epoch: an epoch record replaces the same epoch's, and a run's
    result is stored once (a later copy — a retried unit's — is ignored)."""

    def __init__(self, store, ids: dict[str, int]):
        self.store, self.ids, self.ended = store, ids, set()

    def __call__(self, msg: tuple) -> None:
        kind, key = msg[0], msg[1]
        run_id = self.ids.get(key)
        if run_id is None or key in self.ended:
            return
        if kind == "epoch":
            self.store.log_epoch(run_id, msg[2])
        elif kind == "result":
            from .trainer import TrainResult

            self.store.finish(run_id, TrainResult.from_dict(msg[2]), device=msg[3])
            self.ended.add(key)
        elif kind == "fail":
            self.store.fail(run_id, msg[2])


def pending(configs: Iterable, store) -> tuple[list, list[Outcome]]:
    """Split ``configs`` into those still to run and :class:`Outcome` rows for those already done.

    Duplicate keys inside ``configs`` are run once.
    """
    from .loggers import replay

    from .config import RunConfig, not_reused, reuse_note

    store = _open_store(store)
    todo, done, seen, other = [], [], set(), []
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
            if row is None and isinstance(cfg, RunConfig):
                other += not_reused(cfg, store)
    if other:  # stored runs of these configs that are not their runs (another network, an old key): say so once
        import warnings

        from ..errors import PrealignWarning

        warnings.warn(reuse_note(other, f"{len(other)} stored run(s) in {getattr(store, 'path', store)}"),
                      PrealignWarning, stacklevel=3)
    return todo, done


DEFAULT_TASK = "prealign.run.sweep:train_task"
# default --gpus-per-run where the executor has GPUs and the run may use one (device auto/cuda): a whole GPU
# for a convolutional network, a quarter for an MLP (a few-MB network that leaves a GPU mostly idle alone;
# four share one). The rule, not a measurement: no GPU was available to measure the best fraction.
SMALL_MODEL_GPUS = 0.25


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


def _run_config(item):
    """The RunConfig of a sweep item (a RunConfig, or an item with one as ``.config``), or None."""
    from .config import RunConfig

    for cfg in (item, getattr(item, "config", None)):
        if isinstance(cfg, RunConfig):
            return cfg
    return None


def check_options(executor: str = "local", workers: int | None = None, *, gpus_per_run: float | None = None,
                  cpus_per_run: float | None = None, address: str | None = None, runtime_env=None) -> None:
    """Raise a one-line error for an unknown ``executor``, ``workers < 1``, a bad resource request, or
    what the executor would ignore or could not bear: ``address``/``runtime_env`` without Ray,
    ``cpus_per_run`` (each local worker's torch threads) beyond this machine's cores. Commands call
    this before they open a store, so a bad option leaves nothing behind."""
    if executor not in EXECUTORS:
        raise UnknownNameError("executor", executor, EXECUTORS)
    if workers is not None and workers < 1:
        raise PrealignError(f"--workers must be at least 1, got {workers}")
    if gpus_per_run is not None and not (gpus_per_run >= 0 and (gpus_per_run <= 1 or float(gpus_per_run).is_integer())):
        raise PrealignError(f"--gpus-per-run must be a fraction in [0, 1] or a whole number of GPUs, got {gpus_per_run}")
    if cpus_per_run is not None and not cpus_per_run > 0:
        raise PrealignError(f"--cpus-per-run must be > 0, got {cpus_per_run}")
    ignored = " and ".join(o for o, v in (("--address", address), ("--runtime-env", runtime_env)) if v is not None)
    if executor != "ray" and ignored:
        raise PrealignError(f"{ignored} appl{'y' if ' and ' in ignored else 'ies'} only to --executor ray (the executor "
                            f"is {executor}); add --executor ray "
                            f"or drop {ignored}")
    cores = os.cpu_count() or 1
    if executor == "local" and cpus_per_run is not None and cpus_per_run > cores:
        raise PrealignError(f"--cpus-per-run {cpus_per_run:g} is more than this machine's {cores} CPU cores (with the "
                            f"local executor it is each worker's torch threads); give at most {cores}")


def parse_runtime_env(value) -> dict | None:
    """``--runtime-env``: a JSON object (Ray's ``runtime_env``, e.g. ``{"pip": ["prealign==0.4"]}``), or
    a folder, shipped to every worker as its ``working_dir`` (e.g. a checkout's ``src``)."""
    import json

    if value is None or isinstance(value, dict):
        return value
    text = str(value).strip()
    if os.path.isdir(text):
        return {"working_dir": os.path.abspath(text)}
    try:
        env = json.loads(text)
    except json.JSONDecodeError:
        env = None
    if not isinstance(env, dict):
        raise PrealignError(f"--runtime-env must be a JSON object such as '{{\"pip\": [\"prealign\"]}}' or an existing "
                            f"folder to ship as the working directory, got {text!r}")
    return env


def default_gpus(config, gpus_available: float) -> float:
    """The GPUs one run asks for when ``--gpus-per-run`` is not given: none where the executor has no
    GPU or the run says ``device = "cpu"``; else :data:`SMALL_MODEL_GPUS` for an MLP, 1 for any other model."""
    if not gpus_available or config is None or config.device == "cpu":
        return 0.0
    return SMALL_MODEL_GPUS if config.model == "mlp" else 1.0


def _resources(cfgs: list, gpus_per_run, cpus_per_run, gpus_available: float, max_cpus: float) -> tuple[float, float]:
    """``(gpus, cpus)`` of one unit: a batched group asks for its members' combined resources (one task),
    capped at one device (the group trains on one) and at the largest node's CPUs (so it can be placed)."""
    per_run = [gpus_per_run if gpus_per_run is not None else default_gpus(c, gpus_available) for c in cfgs]
    gpus = sum(per_run)
    if len(cfgs) > 1:
        gpus = min(gpus, max(1.0, *per_run))
    cpus = min((cpus_per_run or 1.0) * len(cfgs), max(max_cpus, cpus_per_run or 1.0))
    return gpus, cpus


def run_sweep(configs: Sequence, store, *, executor: str = "local", workers: int | None = None,
              address: str | None = None, progress: bool | None = None,
              task: Callable | str = DEFAULT_TASK,
              on_outcome: Callable[[Outcome], None] | None = None, batch_models: bool | int | str = "auto",
              storage: str | os.PathLike | None = None, gpus_per_run: float | None = None,
              cpus_per_run: float | None = None, runtime_env: dict | str | None = None,
              resources: dict | None = None, max_attempts: int = 3,
              log: Callable[[str], None] | None = None) -> list[Outcome]:
    """Run every config not yet done in ``store``; return one :class:`Outcome` per distinct key.

    ``store``: a :class:`~prealign.run.store.Store` or its path; this process is its only writer.
    ``executor``: ``"local"`` (``workers`` spawned processes; ``workers=1`` runs serially in this
    process) or ``"ray"`` (``address`` of a cluster, ``None`` = start a local one).
    ``task(payload, store) -> dict`` is the worker function (default: train the run); its ``store`` is
    a :class:`~prealign.run.storage.WorkerStore`. ``batch_models``: ``"auto"`` (default) trains
    compatible configs (MLPs under any rule sharing data, widths and optimizer settings;
    :func:`prealign.run.sweep_batched.group_key`) as one vectorized model per group of up to 8, storing
    bitwise what separate runs store, where that is faster (:func:`prealign.run.sweep_batched.wins`);
    ``False``/``"off"`` trains every config alone; an int ``G >= 2`` batches in groups of at most ``G``.
    ``storage``: URI of the checkpoint folder every worker can reach (default ``checkpoints/`` next to
    the store; :class:`~prealign.run.storage.Storage`). ``gpus_per_run`` (fractional; default
    :func:`default_gpus`) and ``cpus_per_run`` (default 1; also each worker's torch threads): what each
    run asks its executor for; a batched group asks for its members' sum (:func:`_resources`).
    ``runtime_env``: Ray's runtime environment for the tasks (:func:`parse_runtime_env`);
    ``resources``: extra Ray resources per unit (e.g. ``{"gpu_node": 0.01}`` to pin units to nodes).
    ``max_attempts``: how often a unit whose worker died (killed, out of memory, node lost) is
    dispatched before its runs are recorded failed; a retry resumes from the last checkpoints.
    ``on_outcome`` is called in this process as each run ends; ``log(line)`` gets the packing line
    (:func:`prealign.run.sweep_batched.describe_packing`). Outcomes come back in the order of ``configs``.
    """
    from .storage import Storage
    from .sweep_batched import GROUP_TASK, pack_items, resolve_batch

    check_options(executor, workers, gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run, address=address,
                  runtime_env=runtime_env)
    group_size, auto = resolve_batch(batch_models)
    runtime_env = parse_runtime_env(runtime_env)
    own = isinstance(store, (str, os.PathLike))
    store = _open_store(store)
    try:
        ckpt = Storage(storage) if storage is not None else Storage(store.checkpoint_dir)
        column = ckpt.uri if storage is not None else None
        order = {}
        for cfg in configs:
            order.setdefault(cfg.key(), len(order))
        todo, outcomes = pending(configs, store)
        n_workers = workers or os.cpu_count() or 1
        batch_configs = [_batch_config(item, task) for item in todo] if group_size else [None] * len(todo)
        units = []  # (items, task, payload): one config, or a group trained as one batched model
        for members in pack_items(todo, batch_configs, group_size, n_workers, auto, log).units:
            if len(members) == 1:
                units.append(([todo[members[0]]], task, todo[members[0]].to_dict()))
            else:
                units.append(([todo[i] for i in members], GROUP_TASK, [batch_configs[i].to_dict() for i in members]))
        if units:
            _dispatch(units, store, ckpt, column, outcomes, executor=executor, workers=n_workers, address=address,
                      progress=progress, on_outcome=on_outcome, gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run,
                      runtime_env=runtime_env, resources=resources, max_attempts=max_attempts, serial=workers == 1)
    finally:
        if own:
            store.close()
    outcomes.sort(key=lambda o: order[o.key])
    return outcomes


def _dispatch(units, store, ckpt, column, outcomes, *, executor, workers, address, progress, on_outcome,
              gpus_per_run, cpus_per_run, runtime_env, resources, max_attempts, serial) -> None:
    """Register the units' runs (status running), make each unit's worker dict, run them on the
    executor and record the outcomes as they arrive."""
    from ..progress import progress_bar

    for items, *_ in units:
        for item in items:
            cfg = _run_config(item)
            if gpus_per_run and cfg is not None and cfg.device == "cpu":
                raise PrealignError(f"--gpus-per-run {gpus_per_run:g} was given but run {cfg.label} seed {cfg.seed} "
                                    "says device cpu; use --device auto or cuda, or --gpus-per-run 0")
    if "memory" in ckpt.fs.protocol and not (executor == "local" and serial):
        raise PrealignError(f"the checkpoint storage {ckpt.uri!r} lives in one process's memory, which other workers "
                            "cannot read; give a folder or a shared URL to --storage, or run with --workers 1")
    from .ray_connect import connect  # bounded; one line when the head is absent or refuses this process's token

    ray, started = (connect(address, runtime_env) if executor == "ray" else (None, False))
    try:
        if ray is not None:
            gpus_available = ray.cluster_resources().get("GPU", 0.0)
            max_cpus = max([n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")], default=1.0)
        else:
            import torch

            gpus_available, max_cpus = float(torch.cuda.device_count()), float(os.cpu_count() or 1)
        specs = [_resources([_run_config(i) for i in items], gpus_per_run, cpus_per_run, gpus_available, max_cpus)
                 for items, *_ in units]
        if ray is not None:  # a task no node can hold would wait forever: refuse it now, in one line
            alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            most_gpus = max([r.get("GPU", 0.0) for r in alive], default=0.0)
            for gpus, cpus in specs:
                if cpus > max_cpus or (gpus and most_gpus and gpus > most_gpus):
                    raise PrealignError(f"a run asks for {cpus:g} CPU(s) and {gpus:g} GPU(s), but the largest node of "
                                        f"the Ray cluster has {max_cpus:g} CPU(s) and {most_gpus:g} GPU(s), so it would "
                                        "wait forever; lower --cpus-per-run / --gpus-per-run or add a larger node")
        wanted = max(g for g, _ in specs)
        if wanted and not gpus_available:
            raise PrealignError(f"the runs ask for {wanted:g} GPU each but the {executor} executor has no GPU "
                                f"({'the cluster advertises none' if ray else 'torch sees no CUDA device'}); "
                                "run with --gpus-per-run 0 or where GPUs are")
        ids = {}
        for items, *_ in units:
            for item in items:
                cfg = _run_config(item)
                if cfg is not None:
                    ids[item.key()] = store.start(cfg, storage=column)
        threads = None if (executor == "local" and serial) else max(1, int(cpus_per_run or 1))
        jobs = [({"task": task, "payload": payload, "storage": ckpt, "gpus": gpus, "threads": threads,
                  "ids": {i.key(): ids[i.key()] for i in items if i.key() in ids}, "store_path": _store_path(store)},
                 items, gpus, cpus) for (items, task, payload), (gpus, cpus) in zip(units, specs)]
        write = _Writer(store, ids)
        n_runs = sum(len(items) for items, *_ in units)
        with progress_bar(n_runs, f"sweep ({executor})", enabled=progress) as bar:
            def finish(items, done: dict) -> None:
                """Store a unit's results, then record one outcome per item (``out``: a list for groups;
                one dict = the same outcome for every item)."""
                for msg in done.get("final", ()):
                    write(msg)
                out = done.get("out")
                outs = out if isinstance(out, list) and len(out) == len(items) else [out] * len(items)
                for item, o in zip(items, outs):
                    o = o if isinstance(o, dict) else {"status": "failed", "error": f"the task returned {o!r}"}
                    outcome = Outcome(key=item.key(), status=o.get("status", "failed"), config=item.to_dict(),
                                      summary=o.get("summary", {}), error=o.get("error"), seconds=o.get("seconds", 0.0))
                    if outcome.status not in DONE and item.key() in ids:  # e.g. a task that raised or a lost worker
                        store.fail(ids[item.key()], outcome.error or "failed")
                    outcomes.append(outcome)
                    if on_outcome:
                        on_outcome(outcome)
                    bar.advance(1, last=outcome.status, failed=sum(o.status == "failed" for o in outcomes))

            if ray is not None:
                _run_ray(ray, jobs, write, finish, None if started else runtime_env, resources, max_attempts)
            elif serial:
                for unit, items, *_ in jobs:
                    finish(items, execute(unit, write))
            else:
                _run_local(jobs, workers, write, finish, max_attempts)
    finally:
        if started:
            ray.shutdown()


def _run_local(jobs, workers, write, finish, max_attempts) -> None:
    """The jobs on a pool of spawned worker processes; epoch records come back through a queue."""
    import multiprocessing
    import queue
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")  # no fork: torch threads and SQLite handles don't survive fork
    stream = ctx.Queue()

    def drain() -> None:
        while True:
            try:
                write(stream.get_nowait())
            except queue.Empty:
                return

    remaining, attempts = list(jobs), {}
    while remaining:
        broken = []
        pool = ProcessPoolExecutor(max_workers=min(workers, len(remaining)), mp_context=ctx,
                                   initializer=_worker_init, initargs=(os.getpid(), stream))
        try:
            with _sigint_blocked():  # the workers are spawned by these submits, and inherit the blocked SIGINT
                futures = {pool.submit(_local_unit, job[0]): job for job in remaining}
            waiting = set(futures)
            while waiting:
                done, waiting = wait(waiting, timeout=0.2, return_when=FIRST_COMPLETED)
                drain()
                for fut in done:
                    job = futures[fut]
                    try:
                        out = fut.result()
                    except BrokenProcessPool:  # a worker died (killed, out of memory): retry its units
                        broken.append(job)
                        continue
                    finish(job[1], out)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM via the CLI) or failing: no worker outlives us
            _end_workers(pool)
            raise
        pool.shutdown(wait=True)
        drain()
        remaining = []
        for job in broken:
            ident = tuple(item.key() for item in job[1])
            attempts[ident] = attempts.get(ident, 1) + 1
            if attempts[ident] > max_attempts:
                finish(job[1], {"out": {"status": "failed", "error": f"worker process died {max_attempts} times "
                                                                      "(killed or out of memory)"}})
            else:
                remaining.append(job)


def _run_ray(ray, jobs, write, finish, runtime_env, resources, max_attempts) -> None:
    """Each job is a Ray task (a streaming generator, :func:`_ray_unit`) asking for its unit's GPUs and
    CPUs. A task whose worker or node is lost is dispatched again (up to ``max_attempts`` in all) and
    resumes from the checkpoints in the storage. ``runtime_env``: per task (this process connected
    before the sweep, so the job's own cannot be set; Ray accepts no local folders here)."""
    from ray.exceptions import RayTaskError

    remote = ray.remote(_ray_unit)

    def submit(job):
        unit, _, gpus, cpus = job
        options = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": 0}
        if resources:
            options["resources"] = dict(resources)
        if runtime_env:
            options["runtime_env"] = runtime_env
        try:
            return remote.options(**options).remote(unit)
        except ValueError as err:  # e.g. a local working_dir for a task of a job that is already running
            raise PrealignError(f"Ray refused the runtime_env {runtime_env} ({str(err).splitlines()[0]}); give it to "
                                "ray.init, or let the sweep connect (address=...) with it") from None

    streams = {submit(job): (job, 1) for job in jobs}
    while streams:
        ready, _ = ray.wait(list(streams), num_returns=1, timeout=1.0)
        for gen in ready:
            job, attempt = streams[gen]
            try:
                msg = ray.get(next(gen))
            except StopIteration:  # ended without its "done" message: cannot happen unless ray drops it
                del streams[gen]
                finish(job[1], {"out": {"status": "failed", "error": "the Ray task ended without a result"}})
                continue
            except RayTaskError as exc:  # the task itself raised (e.g. prealign missing on the node)
                del streams[gen]
                first = (str(exc).strip().splitlines() or [""])[-1][:300]
                finish(job[1], {"out": {"status": "failed", "error": f"ray task failed: {first}"}})
                continue
            except Exception as exc:  # noqa: BLE001 - its worker or node was lost: dispatch it again
                del streams[gen]
                if attempt >= max_attempts:
                    finish(job[1], {"out": {"status": "failed", "error": f"ray task lost {attempt} times "
                                                                         f"({type(exc).__name__})"}})
                else:
                    streams[submit(job)] = (job, attempt + 1)
                continue
            if msg[0] == "done":
                del streams[gen]
                finish(job[1], msg[1])
            else:
                write(msg)
