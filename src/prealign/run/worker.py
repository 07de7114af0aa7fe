"""What a sweep worker runs — the same code in this process, in a local worker process and in a
Ray task on another machine (issue 15). The driver's half is :mod:`prealign.run.sweep`; the
messages between the two and the checkpoint storage are in :mod:`prealign.run.storage`.

A *unit* is one dispatch: one config, or a group trained as one batched model
(:mod:`prealign.run.sweep_batched`). :func:`execute` trains it against a
:class:`~prealign.run.storage.WorkerStore` (no database), streaming epoch records through
``emit`` and returning ``{"out": outcome(s), "final": [result/fail messages]}``: the messages
that end a run travel with the unit's completion, so the driver never sees a unit complete
without its results, whatever the transport.
"""
from __future__ import annotations

import importlib
import os
import socket
import time
from collections.abc import Callable

from ..device import describe_device  # noqa: F401  (re-exported: the store's device column)
from ..errors import PrealignError

DONE = ("finished", "diverged")  # statuses that count as "this run is done, never redo it"


def run_summary(result, device: str | None = None, resumed_from: int | None = None) -> dict:
    """The per-run summary a sweep outcome carries (from a :class:`~prealign.run.trainer.TrainResult`):
    accuracies (fractions), the selected epoch, epochs run, the ``device`` it trained on, and
    ``resumed_from``: the epoch of the checkpoint it resumed from (None: trained from scratch)."""
    return {"best_test_acc": result.best_test_acc, "best_val_acc": result.best_val_acc, "selection": result.selection,
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "diverged_epoch": result.diverged_epoch,
            "device": device, "resumed_from": resumed_from}


def limit_threads(threads: int = 1) -> None:
    """``threads`` torch/BLAS threads in this worker: N workers then use N×threads cores, not N×N."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set in this process
        pass


def run_device(config, store=None):
    """The ``torch.device`` ``config`` trains on here. When the task asked its executor for GPUs
    (``store.gpus > 0``, :class:`~prealign.run.storage.WorkerStore`), CUDA must be visible and the
    config must not say ``cpu``: a run that asked for a GPU and did not get one raises, never
    falls back to the CPU."""
    import torch

    from ..device import resolve_device

    gpus = getattr(store, "gpus", 0) or 0
    if gpus > 0 and not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise PrealignError(f"this run asked for {gpus:g} GPU but torch on {socket.gethostname()} sees no CUDA device "
                            f"(CUDA_VISIBLE_DEVICES={visible!r}, torch {torch.__version__} "
                            f"{'with CUDA ' + torch.version.cuda if torch.version.cuda else 'built without CUDA'}); "
                            "give the workers a CUDA build of torch and a GPU, or run with --gpus-per-run 0")
    device = resolve_device(config.device)
    if gpus > 0 and device.type != "cuda":
        raise PrealignError(f"this run asked for {gpus:g} GPU but its config says device {config.device!r}; "
                            "use device auto or cuda, or --gpus-per-run 0")
    return device


def record_failure(store, cfg, error: str) -> None:
    """Mark the run of ``cfg`` failed in the store, unless :func:`run` already did."""
    row = store.find(cfg.key())
    if row is None:
        run_id = store.start(cfg)
    else:
        if row["status"] == "failed":
            return
        run_id = row["id"]
    store.fail(run_id, error)


def _as_store(store):
    """A store object from a store or (a direct call outside a sweep) a store path."""
    if hasattr(store, "checkpointer"):
        return store, False
    from .store import Store

    return Store(store), True


def train_task(config: dict, store, callbacks=()) -> dict:
    """The default task: train one :class:`RunConfig` (given as a dict) into ``store`` (in a sweep
    the :class:`~prealign.run.storage.WorkerStore`; a path opens that store, outside sweeps).

    Never raises for a training problem: returns ``{"status": "failed", "error": ...}`` and
    records the failure in the store, so one bad run cannot stop a sweep.
    """
    from .config import RunConfig, run

    cfg = RunConfig.from_dict(config)
    store, own = _as_store(store)
    start = time.perf_counter()
    device = None
    try:
        device = describe_device(run_device(cfg, store))
        if hasattr(store, "devices"):
            store.devices[cfg.key()] = device
        result = run(cfg, store, progress=False, callbacks=callbacks)
    except Exception as exc:  # noqa: BLE001 - a sweep records failures, never crashes on them
        error = f"{type(exc).__name__}: {exc}"
        record_failure(store, cfg, error)
        return {"key": cfg.key(), "status": "failed", "error": error, "seconds": time.perf_counter() - start}
    finally:
        if own:
            store.close()
    resumed = getattr(store, "resumed", {}).get(cfg.key())
    return {"key": cfg.key(), "status": result.status, "summary": run_summary(result, device, resumed),
            "seconds": time.perf_counter() - start}


def resolve_task(task) -> Callable:
    """``task`` may be a callable or ``"module:function"`` (importable in every worker)."""
    if callable(task):
        return task
    module, _, name = str(task).partition(":")
    return getattr(importlib.import_module(module), name)


def execute(unit: dict, emit: Callable[[tuple], None]) -> dict:
    """Run one unit (a dict made by :func:`prealign.run.sweep.run_sweep`: ``task``, ``payload``,
    ``storage``, ``ids``, ``gpus``, ``threads``, ``store_path``). Messages go to ``emit`` as
    they happen; returns ``{"out": the task's outcome dict(s), "final": result/fail messages}``.
    Never raises: a broken task is a failed outcome."""
    from .storage import WorkerStore

    if unit.get("threads"):
        limit_threads(unit["threads"])
    final: list[tuple] = []

    def send(msg: tuple) -> None:  # every message streams; the ones that end a run also travel with the unit's end
        emit(msg)
        if msg[0] in ("result", "fail"):
            final.append(msg)

    store = WorkerStore(unit["storage"], unit["ids"], send, gpus=unit.get("gpus", 0.0),
                        store_path=unit.get("store_path", ""))
    try:
        out = resolve_task(unit["task"])(unit["payload"], store)
    except Exception as exc:  # noqa: BLE001 - even a broken task must not kill the sweep
        out = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {"out": out, "final": final}


__all__ = ["DONE", "describe_device", "execute", "limit_threads", "record_failure", "resolve_task", "run_device",
           "run_summary", "train_task"]
