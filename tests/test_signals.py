"""Killing `prealign compare` never leaves worker processes behind, and the killed sweep resumes.

Through the path users take: a real `python -m prealign.cli compare --workers 2` subprocess, its
worker processes found by PID in /proc. SIGTERM is handled like Ctrl-C (exit 143, one line on
stderr, workers ended); after `kill -9` of the parent the workers notice and exit on their own.
Re-running the same command then finishes the sweep without redoing any finished run.
"""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds worker processes in /proc")

SRC = Path(__file__).resolve().parents[1] / "src"
GONE_WITHIN = 5.0  # seconds the workers may take to exit after their parent stops


def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:  # the task ended meanwhile
            pass
    return out


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in _children(todo.pop()) - found:
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped by whoever adopted it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if _alive(p)}
        if not left:
            return left
        time.sleep(0.05)
    return {p for p in pids if _alive(p)}


def _query(db: Path, sql: str) -> list:
    if not db.exists():
        return []
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:  # schema not created yet
        return []
    finally:
        con.close()


def _finished(db: Path) -> dict:
    return {row[0]: row[1:] for row in _query(db, "SELECT id, key, updated FROM runs WHERE status = 'finished'")}


def _n_epochs(db: Path) -> int:
    rows = _query(db, "SELECT count(*) FROM epochs")
    return rows[0][0] if rows else 0


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "PREALIGN_QUIET": "1"}
    cmd = [sys.executable, "-m", "prealign.cli", "--quiet", "compare", "--dataset", "digits", "--methods", "bp,fa",
           "--seeds", "2", "--epochs", "50", "--workers", "2", "--batch-models", "off", "--out", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"compare ended early (rc {proc.returncode}): {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "compare did not reach the expected state in time"
        time.sleep(0.05)


def _workers(proc: subprocess.Popen) -> set[int]:
    """The sweep's worker processes: children of the parent whose command line is a multiprocessing spawn."""
    out = set()
    for pid in _descendants(proc.pid):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.add(pid)
        except OSError:
            pass
    return out


def _cleanup(proc: subprocess.Popen, seen: set[int]) -> None:
    """Whatever happened, leave nothing running: every process this test saw, by PID."""
    for pid in seen | _descendants(proc.pid):
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_killed_compare_leaves_no_workers_and_resumes(tmp_path):
    db = tmp_path / "runs.sqlite"

    # 1. SIGTERM while runs are in flight and some are finished: exit 143, one line, workers ended
    proc, seen = _start(tmp_path), set()
    try:
        def in_flight():
            seen.update(_descendants(proc.pid))
            return _workers(proc) and _finished(db) and _query(db, "SELECT id FROM runs WHERE status = 'running'")
        _wait_for(in_flight, proc)
        workers = _workers(proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 143
        assert err.strip().splitlines()[-1] == ("prealign: terminated (SIGTERM); finished runs are saved, "
                                                "re-run the same command to resume")
        assert "Traceback" not in err
        assert not _wait_gone(seen | workers, GONE_WITHIN)
    finally:
        _cleanup(proc, seen)
    after_term = _finished(db)
    assert after_term and len(after_term) < 4

    # 2. the same command again, killed with SIGKILL mid-training: the workers exit by themselves
    proc, seen = _start(tmp_path), set()
    try:
        epochs = _n_epochs(db)

        def training():
            seen.update(_descendants(proc.pid))
            return _workers(proc) and _n_epochs(db) > epochs
        _wait_for(training, proc)
        workers = _workers(proc)
        proc.kill()
        proc.wait(timeout=10)
        assert not _wait_gone(seen | workers, GONE_WITHIN)
    finally:
        _cleanup(proc, seen)
    after_kill = _finished(db)
    assert {k: after_kill[k] for k in after_term} == after_term  # nothing finished was touched

    # 3. and once more to the end: the rest trains, nothing finished is redone, the table is produced
    proc, seen = _start(tmp_path), set()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        _cleanup(proc, seen)
    assert proc.returncode == 0, err[-2000:]
    final = _finished(db)
    assert len(final) == 4 and len(_query(db, "SELECT id FROM runs")) == 4
    assert {k: final[k] for k in after_kill} == after_kill  # same run ids, same rows, not retrained
    assert "test accuracy at the selected epoch" in out and "fa" in out and "bp" in out
    assert list(tmp_path.glob("compare-*/report.md"))
