"""Row 5, ``sweep``: throughput of N single-threaded worker processes / one process on all cores
(one run per task, and runs batched per worker), and ``run_sweep`` end to end with batching off / on."""
from __future__ import annotations

import os
import statistics
import time

import torch

from .base import SMALL_DIMS, BenchRow, _gen, _load, _row, interleaved


# -- row 5: sweep throughput ------------------------------------------------------------------------
_SWEEP_DATA: dict = {}


def sweep_run(spec: dict) -> float:
    """One small sweep run (a worker task): 784-100-10 FA on a subset of mnist5k; returns best test accuracy."""
    from ..models import mlp
    from ..run.trainer import train

    key = spec["n_train"]
    if key not in _SWEEP_DATA:
        _SWEEP_DATA[key] = _load("mnist5k", spec["n_train"])
    model = mlp(SMALL_DIMS, "fa", generator=_gen(spec["seed"]))
    return train(model, _SWEEP_DATA[key], epochs=spec["epochs"], batch_size=64, lr=1e-3, seed=spec["seed"],
                 device="cpu", progress=False).best_test_acc


def sweep_group(specs: list[dict]) -> list[float]:
    """A worker task training several :func:`sweep_run` runs as one batched model
    (:func:`prealign.run.batched.train_runs`: what ``run_sweep(batch_models="auto")`` does with such runs)."""
    from ..models import mlp
    from ..run.batched import train_runs

    key = specs[0]["n_train"]
    if key not in _SWEEP_DATA:
        _SWEEP_DATA[key] = _load("mnist5k", key)
    models = [mlp(SMALL_DIMS, "fa", generator=_gen(spec["seed"])) for spec in specs]
    results = train_runs(models, _SWEEP_DATA[key], epochs=specs[0]["epochs"], seeds=[spec["seed"] for spec in specs],
                         batch_size=64, lr=1e-3, device="cpu", progress=False)
    return [r.best_test_acc for r in results]


def _warm(spec: dict) -> int:
    sweep_run({**spec, "epochs": 0})
    return os.getpid()


def _bench_worker_init(parent_pid: int) -> None:
    """A bench worker is a sweep worker: one torch thread, and it exits when the bench process dies."""
    from ..run.sweep import _limit_threads, _worker_init

    _worker_init(parent_pid)
    _limit_threads()


def bench_sweep(quick: bool, workers: int | None = None) -> list[BenchRow]:
    """N spawned single-threaded workers (a warm pool, as a long sweep has) vs the same runs serially in
    this process with all cores; one repetition = the whole sweep. Two rows: workers training one run
    per task, and workers training their share of the runs as one batched model."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = workers or os.cpu_count() or 1
    runs, n_train, epochs = (4, 300, 1) if quick else (8, 1000, 2)
    specs = [{"seed": s, "n_train": n_train, "epochs": epochs} for s in range(runs)]
    threads = torch.get_num_threads()
    start = time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_bench_worker_init, initargs=(os.getpid(),))
    try:
        list(pool.map(_warm, [specs[0]] * workers))
        startup = time.perf_counter() - start

        def parallel():
            list(pool.map(sweep_run, specs))

        def parallel_batched():  # each worker trains its share of the runs as one batched model
            list(pool.map(sweep_group, [specs[w::workers] for w in range(workers)]))

        def serial():
            torch.set_num_threads(os.cpu_count() or 1)
            try:
                for spec in specs:
                    sweep_run(spec)
            finally:
                torch.set_num_threads(threads)

        times = interleaved({"serial": serial, "parallel": parallel, "parallel_batched": parallel_batched},
                            1 if quick else 4, torch.device("cpu"), warmup=1)
    finally:
        pool.shutdown()
    details = {"workers": workers, "runs": runs, "n_train": n_train, "epochs": epochs, "model": "784-100-10 fa",
               "pool_startup_s": startup, "note": "warm pool (started once per sweep; its start-up is reported, not timed)"}
    row = _row("sweep/processes", f"sweep throughput, {workers} single-threaded workers / 1 process on all cores",
               ">= 1.7", times["serial"], times["parallel"], details=dict(details))
    row.details.update(serial_s=row.a_seconds, parallel_s=row.b_seconds)
    grouped = _row("sweep/processes-batched", f"sweep throughput, {workers} single-threaded workers training their "
                   "runs batched / 1 process on all cores", ">= 1.7", times["serial"], times["parallel_batched"],
                   details=dict(details))
    grouped.details.update(serial_s=grouped.a_seconds, parallel_s=grouped.b_seconds,
                           groups=f"{workers} groups of {runs // workers} (prealign.run.batched.train_runs)")
    return [row, grouped]


def sweep_batching_timings(quick: bool = True, workers: int = 1, repeats: int | None = None) -> dict:
    """Wall time of one sweep of small runs with batching off vs on (``batch_models=False`` vs
    ``"auto"``), same ``workers``, one torch thread per worker (the sweep's own setting).

    Runs: 784-100-10 on the first 1,000 (quick) or 4,000 mnist5k training images, methods bp, fa,
    ifa × seeds (12 runs quick, 24 full), 2 (quick) or 3 epochs, batch 64, Adam lr 1e-4, gradient
    alignment on (the default); every run stored with its checkpoints as a real sweep does. The
    two sweeps alternate ``repeats`` times (default 1 quick, 3 full), each into a fresh store.
    Returns ``{"off_s": [seconds per repetition], "on_s": [...], "ratio": median of the paired
    off/on ratios, "runs", "workers", "n_train", "epochs", "model"}``.
    """
    import tempfile

    from ..run.config import RunConfig
    from ..run.store import Store
    from ..run.sweep import run_sweep

    n_train, epochs, seeds = (1000, 2, 4) if quick else (4000, 3, 8)
    repeats = repeats or (1 if quick else 3)
    configs = [RunConfig(method=m, seed=s, dataset="mnist5k", train_subset=n_train, hidden=(100,), epochs=epochs,
                         batch_size=64, lr=1e-4, device="cpu") for m in ("bp", "fa", "ifa") for s in range(seeds)]
    times: dict[str, list[float]] = {"off": [], "on": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # workers=1 trains in this process: one thread, as every worker has
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for label, batch in (("off", False), ("on", "auto")):  # warm-up: data cached, both code paths run once
                run_sweep(configs[:2], Store(f"{tmp}/warm-{label}"), workers=1, progress=False, batch_models=batch)
            for rep in range(repeats):
                for label, batch in (("off", False), ("on", "auto")):
                    store = Store(f"{tmp}/{label}{rep}")
                    t = time.perf_counter()
                    out = run_sweep(configs, store, workers=workers, progress=False, batch_models=batch)
                    times[label].append(time.perf_counter() - t)
                    store.close()
                    bad = [o.error for o in out if o.status != "finished"]
                    if bad:
                        raise RuntimeError(f"bench sweep ({label}) had failed runs: {bad[:2]}")
    finally:
        torch.set_num_threads(threads)
    ratio = statistics.median(a / b for a, b in zip(times["off"], times["on"]))
    return {"off_s": times["off"], "on_s": times["on"], "ratio": ratio, "runs": len(configs), "workers": workers,
            "n_train": n_train, "epochs": epochs, "model": "784-100-10, bp/fa/ifa"}


def bench_sweep_store(quick: bool) -> BenchRow:
    """``run_sweep`` end to end (store, checkpoints, grouping) with batching off / ``"auto"``, 1 worker, 1 thread."""
    r = sweep_batching_timings(quick)
    row = _row("sweep/run_sweep-batching", f"{r['runs']}-run run_sweep, batch_models off / auto (1 worker, 1 thread)",
               ">= 1", r["off_s"], r["on_s"])
    row.details = {k: v for k, v in r.items() if k not in ("off_s", "on_s", "ratio")}
    row.details.update(off_s=row.a_seconds, on_s=row.b_seconds)
    return row
