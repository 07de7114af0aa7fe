"""The local executor's worker processes (:func:`prealign.run.sweep.run_sweep` with ``executor="local"``):
how they start — SIGINT held while they are spawned, so a Ctrl-C during their start-up (importing
torch takes seconds) cannot end one with a traceback — and how they end: never after their parent
(:func:`_worker_init`), and all of them when the sweep is interrupted (:func:`_end_workers`)."""
from __future__ import annotations

import contextlib
import os
import time

PARENT_POLL_SECONDS = 0.25  # how often a worker checks that its parent is still alive


_STREAM = None  # in a local worker process: the queue its epoch records go to (set by _worker_init)


def _worker_init(parent_pid: int, stream=None) -> None:
    """Initializer of every local worker process: exit when the sweeping process ``parent_pid`` dies.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` has the kernel kill this worker the moment its
    parent dies (also on ``kill -9``; strictly, when the parent thread that started it ends: the
    pool starts its workers from the thread calling :func:`prealign.run.sweep.run_sweep`, which outlives the
    pool). Everywhere: a daemon thread polls ``os.getppid()`` every
    :data:`PARENT_POLL_SECONDS` and ends the process once it differs from ``parent_pid`` (the
    worker was re-parented: its parent is gone). SIGINT is ignored here: on Ctrl-C the terminal
    signals the whole process group, and the parent alone decides (it ends the workers)."""
    import signal
    import sys
    import threading

    global _STREAM
    _STREAM = stream
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


@contextlib.contextmanager
def _sigint_blocked():
    """Worker processes spawned within the block never see Ctrl-C, and the spawning is never cut short.

    SIGINT is blocked in this thread, so the workers spawned here start with it blocked (a signal mask
    survives fork and exec): a Ctrl-C while a worker is still starting (importing torch takes seconds,
    before :func:`_worker_init` ignores SIGINT) cannot end it with a KeyboardInterrupt traceback; the
    parent alone decides (it ends its workers). SIGINT and SIGTERM that reach this process meanwhile (through
    another of its threads) are held until the block ends and then handled as usual: an interruption
    between starting a worker and sending it its start-up data would leave it to die with an EOFError
    traceback."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: held.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if held:  # as if it arrived now
            handler = handlers[held[0]]
            if callable(handler):
                handler(held[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(held[0])


def _local_unit(unit: dict) -> dict:
    """Entry point of a local worker process: :func:`prealign.run.worker.execute`, epoch records
    into the pool's queue (:func:`_worker_init`)."""
    from .worker import execute

    return execute(unit, _STREAM.put if _STREAM is not None else (lambda msg: None))
