"""The result store: one SQLite file in the output root (SPEC §4; DESIGN "store.py").

Layout of the output root (default ``prealign-runs/`` in the current directory, or
``$PREALIGN_RUNS``, or ``--out``)::

    prealign-runs/
      runs.sqlite            runs (config, status, summary) and per-epoch metrics
      checkpoints/<key>.pt   latest full training state of each run (model, optimizer, RNGs, curves),
                             bound to the run's key (a file of another run is refused, never reused)

SQLite runs in WAL mode with a busy timeout and every write in its own ``BEGIN IMMEDIATE``
transaction, so several processes can write at once without losing or duplicating rows. A
run's ``key`` (:meth:`prealign.run.config.RunConfig.key`) is UNIQUE: starting a config twice
gives the same run, so a finished run is never duplicated and an interrupted one is resumed.

``Store(root, read_only=True)`` (what ``prealign runs`` and ``prealign analyze RUN`` use) opens
the file with SQLite's ``mode=ro``: no schema, no journal-mode switch, nothing written, so a
store on a read-only file or folder can be listed. SQLite cannot build the WAL index of a
read-only folder; when it says so (``SQLITE_READONLY_DIRECTORY``) and no ``-wal`` file exists
(every writer has closed, and none can start there), the file alone is the whole store and it is
opened ``immutable=1``. A damaged or foreign file gives one line naming it; it is never overwritten.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

from ..errors import PrealignError
from .storage import _StoreCheckpoint

DB_NAME = "runs.sqlite"
STATUSES = ("running", "finished", "diverged", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    key      TEXT NOT NULL UNIQUE,
    label    TEXT NOT NULL,
    dataset  TEXT NOT NULL,
    seed     INTEGER NOT NULL,
    config   TEXT NOT NULL,
    status   TEXT NOT NULL,
    summary  TEXT,
    error    TEXT,
    created  REAL NOT NULL,
    updated  REAL NOT NULL,
    device   TEXT,
    storage  TEXT,
    config_key TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch    INTEGER NOT NULL,
    record   TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
"""


# columns added after the first schema (older stores get them on opening): ``device`` the run trained on
# ("cpu", "cuda:0 (NVIDIA H200)"), ``storage`` the URI of its checkpoint folder when not checkpoints/,
# ``config_key`` the run's RunConfig.config_key() (its key without the network; NULL for a run stored
# before run keys saw the network, whose key *is* its config key)
_ADDED_COLUMNS = ("device", "storage", "config_key")


def default_root() -> Path:
    """``$PREALIGN_RUNS`` or ``./prealign-runs``."""
    return Path(os.environ.get("PREALIGN_RUNS") or "prealign-runs")


def json_safe(obj):
    """``obj`` with NaN/inf floats as ``None`` (``null``: valid JSON for every reader), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _json(obj) -> str:
    """JSON with NaN/inf written as null (valid JSON for every reader)."""
    return json.dumps(json_safe(obj))


def _store_error(path: Path, err: sqlite3.Error) -> PrealignError | None:
    """The one-line user error for an SQLite error on the store at ``path``; None for a bug (re-raised)."""
    name = getattr(err, "sqlite_errorname", "")  # Python >= 3.11; the message tells the same on 3.10
    text, where = str(err), repr(str(path))
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
        return PrealignError(f"the result store {where} is damaged ({text}); restore it from a backup, or move it "
                             "aside and re-run to start a new store; prealign will not overwrite it")
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return PrealignError(f"the result store {where} is read-only ({text}); reading it (runs list/show/export, "
                             "analyze RUN) works, training needs a writable --out")
    if "no such table" in text or "no such column" in text:
        return PrealignError(f"{where} is not a prealign result store ({text}); point --out at a folder "
                             "prealign made, or move the file aside; prealign will not overwrite it")
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_PERM", "SQLITE_AUTH")) or \
            "unable to open" in text or "disk" in text:
        return PrealignError(f"cannot use the result store {where} ({text}); check the disk and the permissions, "
                             "or choose another folder with --out or PREALIGN_RUNS")
    return None


def _unnull(record: dict) -> dict:
    return {k: (float("nan") if v is None and k != "epoch" else v) for k, v in record.items()}


class _EpochLogger:
    def __init__(self, store: Store, run_id: int):
        self.store, self.run_id = store, run_id

    def on_epoch_end(self, epoch, model, data, record):
        # called before the trainer adds eval_seconds; log a copy once the record is complete
        self.store.log_epoch(self.run_id, {**record})


class Store:
    """Runs, their per-epoch metrics and checkpoints under one output root."""

    def __init__(self, root: str | os.PathLike | None = None, *, read_only: bool = False):
        root = Path(root) if root is not None else default_root()
        if root.suffix in (".sqlite", ".db"):
            self.path, self.root = root, root.parent
        else:
            self.root, self.path = root, root / DB_NAME
        self.read_only = read_only
        self.checkpoint_dir = self.root / "checkpoints"
        if read_only:
            self._conn = self._open_read_only()
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            with self._errors():
                self._conn.execute("PRAGMA busy_timeout = 60000")
                self._refuse_foreign()
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = NORMAL")
                self._conn.execute("PRAGMA foreign_keys = ON")
                self._conn.executescript(_SCHEMA)
                self._add_columns()
                self._conn.execute("CREATE INDEX IF NOT EXISTS runs_config_key ON runs (config_key)")
        except (sqlite3.Error, OSError) as err:
            raise PrealignError(f"cannot open the result store {str(self.path)!r}: {err}; "
                                f"choose another folder with --out or PREALIGN_RUNS") from None

    def _refuse_foreign(self) -> None:
        """An SQLite file of another program (tables, but not prealign's) is refused, as reading refuses
        it: prealign never adds its tables to someone else's database. An empty file (0 bytes, or an
        SQLite file with no tables) is a new store, for writing and reading alike."""
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        tables.discard("sqlite_sequence")
        if tables and not {"runs", "epochs"} <= tables:
            self._conn.close()
            raise PrealignError(f"{str(self.path)!r} is not a prealign result store (it holds the tables "
                                f"{', '.join(sorted(tables))}); point --out at a folder prealign made, or move the file "
                                "aside; prealign will not overwrite it")

    def _add_columns(self) -> None:
        """Give a store made before :data:`_ADDED_COLUMNS` existed those columns (in order: rows are read by position)."""
        def missing():
            have = {r[1] for r in self._conn.execute("PRAGMA table_info(runs)")}
            return [c for c in _ADDED_COLUMNS if c not in have]

        if missing():
            with self._transaction() as c:  # one writer at a time, so two processes never add a column twice
                for column in missing():
                    c.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")

    def _open_read_only(self) -> sqlite3.Connection:
        """A ``mode=ro`` connection to an existing store (``immutable=1`` in a read-only folder without a WAL)."""
        if not self.path.is_file():
            raise PrealignError(f"no result store at {str(self.path)!r}; run `prealign compare` or `prealign train` "
                                f"first, or point --out / PREALIGN_RUNS at the folder that holds {DB_NAME}")
        uri = "file:" + urllib.parse.quote(str(self.path.absolute())) + "?mode=ro"
        wal = self.path.with_name(self.path.name + "-wal")
        for immutable in (False, True):
            conn = sqlite3.connect(uri + ("&immutable=1" if immutable else ""), uri=True, timeout=60,
                                   isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout = 60000")
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                break
            except sqlite3.Error as err:
                conn.close()
                name = getattr(err, "sqlite_errorname", None)  # None before Python 3.11: the message alone tells
                no_wal_index = name in (None, "SQLITE_READONLY_DIRECTORY") and "readonly" in str(err)
                if not immutable and no_wal_index and not wal.exists():
                    continue
                raise (_store_error(self.path, err) or err) from None
        if not tables - {"sqlite_sequence"}:  # an empty file (0 bytes): a store with no runs yet, as writing sees it
            conn.close()
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            conn.executescript(_SCHEMA)
            conn.row_factory = sqlite3.Row
            return conn
        if not {"runs", "epochs"} <= tables:
            conn.close()
            raise PrealignError(f"{str(self.path)!r} is not a prealign result store (it has no runs table); point "
                                "--out at a folder prealign made, or move the file aside; prealign will not overwrite it")
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def _errors(self):
        """SQLite errors the user can act on (a damaged, foreign or read-only file, a full disk) as one line."""
        try:
            yield
        except sqlite3.Error as err:
            user = _store_error(self.path, err)
            if user is None:
                raise
            raise user from None

    def _query(self, sql: str, params=()) -> list[tuple]:
        """All rows of one read."""
        with self._errors():
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def _write(self):
        """One write transaction taken up front (BEGIN IMMEDIATE), retried while another writer holds the lock."""
        with self._errors():
            with self._transaction() as conn:
                yield conn

    @contextmanager
    def _transaction(self):
        for attempt in range(200):
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err):
                    raise
                time.sleep(0.05)
        else:
            raise PrealignError(f"the result store {str(self.path)!r} stayed locked; is another process stuck?")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    # -- runs ----------------------------------------------------------------------------------
    def start(self, config, storage: str | None = None) -> int:
        """Register ``config`` (a RunConfig) as running and return its id; a config already stored
        (same key) keeps its id, and is marked running again unless it finished. ``storage``: the
        URI of the checkpoint folder (:class:`prealign.run.storage.Storage`) when not ``checkpoints/``."""
        now = time.time()
        with self._write() as c:
            key = config.key()
            c.execute("INSERT OR IGNORE INTO runs (key, label, dataset, seed, config, status, created, updated, config_key) "
                      "VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                      (key, config.label, config.dataset, config.seed, _json(config.to_dict()), now, now,
                       config.config_key()))
            run_id, status = c.execute("SELECT id, status FROM runs WHERE key = ?", (key,)).fetchone()
            if status not in ("finished", "diverged", "running"):
                c.execute("UPDATE runs SET status = 'running', error = NULL, updated = ? WHERE id = ?", (now, run_id))
            if storage is not None and status not in ("finished", "diverged"):
                c.execute("UPDATE runs SET storage = ? WHERE id = ?", (storage, run_id))
        return int(run_id)

    def find(self, key: str) -> dict | None:
        """The run with exactly this key, or None."""
        rows = self._query("SELECT * FROM runs WHERE key = ?", (key,))
        return self._row(rows[0]) if rows else None

    def same_config(self, config) -> list[dict]:
        """The stored runs of ``config``'s fields and data whose key is not ``config.key()``: runs of
        another network (its factory changed), and runs stored before run keys saw the network
        (``legacy`` True: prealign cannot tell which network they trained). Oldest first."""
        ck, key = config.config_key(), config.key()
        have = {r[1] for r in self._query("PRAGMA table_info(runs)")}
        if "config_key" not in have:  # a read-only store from before the column: every run is legacy
            rows = self._query("SELECT * FROM runs WHERE key = ? ORDER BY id", (ck,))
        else:
            rows = self._query("SELECT * FROM runs WHERE (config_key = ? OR (config_key IS NULL AND key = ?)) "
                               "AND key != ? ORDER BY id", (ck, ck, key))
        out = [self._row(r) for r in rows]
        for r in out:
            r["legacy"] = r.get("config_key") is None
        return out

    def resolve(self, run: int | str) -> int:
        """Run id from an id (``12``) or a unique key prefix (``3fa9c1``; compared literally, no wildcards)."""
        text = str(run).strip()
        if text.isascii() and text.isdigit() and len(text) < 19:  # beyond that, not an SQLite integer: only a key prefix
            rows = self._query("SELECT id FROM runs WHERE id = ?", (int(text),))
            if rows:
                return int(rows[0][0])
        prefix = text.lower()
        rows = self._query("SELECT id FROM runs WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)) if text else []
        if len(rows) == 1:
            return int(rows[0][0])
        if not rows:
            raise PrealignError(f"no run {text!r} in {str(self.path)!r}; `prealign runs list` shows the ids and keys")
        raise PrealignError(f"run {text!r} is ambiguous ({len(rows)} keys start with it); give more characters of the key")

    def get(self, run: int | str) -> dict:
        """One run as a dict: id, key, label, dataset, seed, config (dict), status, summary (dict|None), error, created, updated."""
        run_id = self.resolve(run)
        return self._row(self._query("SELECT * FROM runs WHERE id = ?", (run_id,))[0])

    def runs(self, status: str | None = None, dataset: str | None = None, label: str | None = None) -> list[dict]:
        """All runs (optionally filtered), oldest first."""
        query, args = "SELECT * FROM runs WHERE 1=1", []
        for col, val in (("status", status), ("dataset", dataset), ("label", label)):
            if val is not None:
                query += f" AND {col} = ?"
                args.append(val)
        return [self._row(r) for r in self._query(query + " ORDER BY id", args)]

    def _row(self, row: sqlite3.Row) -> dict:
        d = {**dict.fromkeys(_ADDED_COLUMNS), **dict(zip(row.keys(), row))}  # by name: a column's place may differ
        d["config"] = json.loads(d["config"])
        d["summary"] = _unnull(json.loads(d["summary"])) if d["summary"] else None
        return d

    def log_epoch(self, run_id: int, record: dict) -> None:
        """Store (or replace, on resume) the record of one epoch."""
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO epochs (run_id, epoch, record) VALUES (?, ?, ?)",
                      (run_id, int(record["epoch"]), _json(record)))
            c.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id))

    def epoch_logger(self, run_id: int) -> _EpochLogger:
        """A trainer callback that logs every epoch of ``run_id``."""
        return _EpochLogger(self, run_id)

    def epochs(self, run: int | str) -> list[dict]:
        """Per-epoch records of one run, in epoch order."""
        run_id = self.resolve(run)
        rows = self._query("SELECT record FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))
        return [_unnull(json.loads(r[0])) for r in rows]

    def finish(self, run_id: int, result, device: str | None = None) -> None:
        """Record the final result (status finished or diverged), its full curves and the ``device``
        it trained on."""
        summary = result.to_dict(curves=False)
        with self._write() as c:
            for record in result.curves:
                c.execute("INSERT OR REPLACE INTO epochs (run_id, epoch, record) VALUES (?, ?, ?)",
                          (run_id, int(record["epoch"]), _json(record)))
            c.execute("DELETE FROM epochs WHERE run_id = ? AND epoch > ?", (run_id, result.epochs_run))
            c.execute("UPDATE runs SET status = ?, summary = ?, error = NULL, updated = ? WHERE id = ?",
                      (result.status, _json(summary), time.time(), run_id))
            if device is not None:
                c.execute("UPDATE runs SET device = ? WHERE id = ?", (device, run_id))

    def fail(self, run_id: int, message: str) -> None:
        with self._write() as c:
            c.execute("UPDATE runs SET status = 'failed', error = ?, updated = ? WHERE id = ? AND status = 'running'",
                      (message[:2000], time.time(), run_id))

    def result(self, run: int | str):
        """The stored :class:`~prealign.run.trainer.TrainResult` of a finished run (curves included)."""
        from .trainer import TrainResult

        row = self.get(run)
        if row["summary"] is None:
            raise PrealignError(f"run {row['id']} has no result yet (status {row['status']}); re-run its config to finish it")
        d = dict(row["summary"])
        d["curves"] = self.epochs(row["id"])
        d["run_id"] = row["id"]
        return TrainResult.from_dict(d)

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_path(self, run_id: int) -> Path:
        """``checkpoints/<key>.pt`` of the run: named by its key, so a checkpoint copied in from
        another store (where the same row id is another run) is never taken for this run's."""
        return self.checkpoint_dir / f"{self.get(int(run_id))['key']}.pt"

    def storage_of(self, run_id: int):
        """The :class:`prealign.run.storage.Storage` holding run ``run_id``'s checkpoint and files: the
        ``storage`` a sweep recorded for it, else ``checkpoints/`` beside the store."""
        from .storage import Storage

        row = self.get(int(run_id))
        return Storage(row["storage"] or self.checkpoint_dir)

    def checkpoint_file(self, run_id: int):
        """The run's checkpoint file (load/save): ``checkpoints/<key>.pt``, or ``<key>.pt`` in the
        run's ``storage`` (:class:`prealign.run.storage.Storage`) when a sweep put it elsewhere."""
        from .trainer import FileCheckpoint

        row = self.get(int(run_id))
        if row.get("storage"):
            from .storage import Storage

            return Storage(row["storage"]).checkpoint(row["key"])
        return FileCheckpoint(self.checkpoint_dir / f"{row['key']}.pt", key=row["key"])

    def save_checkpoint(self, run_id: int, state: dict) -> None:
        self.checkpointer(run_id).save(state)

    def load_checkpoint(self, run_id: int) -> dict | None:
        """The run's checkpoint dict (integrity-checked, data only, its key verified), or None."""
        return self.checkpointer(run_id).load()

    def checkpointer(self, run_id: int) -> _StoreCheckpoint:
        """The checkpoint object :func:`prealign.train` uses for ``run_id``."""
        return _StoreCheckpoint(self, run_id)

    def load_model(self, run: int | str, device: str = "cpu"):
        """Rebuild a stored run's network with its latest weights (the trained ones once finished).

        ``run``: run id or unique key prefix. Returns an ``nn.Module`` in eval mode under the
        run's rule, with ``.input_shape``/``.num_classes``; ``model.run_config`` holds its RunConfig.
        A run whose weights are not finite (it diverged) raises a one-line PrealignError: no
        analysis means anything on NaN weights.
        """
        import torch

        from .config import RunConfig, build, load_data

        row = self.get(run)
        state = self._weights(row)
        bad = [name for name, t in state["model"].items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            epoch = state.get("diverged_epoch")
            when = f"diverged at epoch {epoch}" if epoch is not None else "has diverged"
            raise PrealignError(f"run {row['id']} {when}: its weights are not finite ({bad[0]}), and analyses need "
                                f"finite weights; analyze a finished run (`prealign runs list` shows each status)")
        config = RunConfig.from_dict(row["config"])
        model = build(config, load_data(config))
        model.load_state_dict(state["model"])
        model.run_config = config
        return model.to(device).eval()

    def _weights(self, row: dict) -> dict:
        """The checkpoint of ``row`` for an analysis, or a one-line error that says what to do: a run
        that ended keeps its results in the store even when its weights are lost, and running its config
        again serves those results, so the fix is to remove it (``prealign runs remove``) and train anew."""
        rid, status = row["id"], row["status"]
        ended = status in ("finished", "diverged")
        anew = (f"its results stay readable (`prealign runs show {rid}`); to train it again, `prealign runs remove "
                f"{rid}` and run its config once more (while it is stored, running the config serves the stored result)")
        try:
            state = self.load_checkpoint(rid)
        except PrealignError as err:
            if not ended:
                raise
            text = str(err)
            why = ("is damaged (it fails the integrity check)" if "corrupt" in text else
                   "belongs to another run" if "another run" in text else
                   "is from another prealign version" if "version" in text else
                   "holds objects other than tensors and was not loaded" if "objects other" in text else f"cannot be read ({text})")
            raise PrealignError(f"run {rid} {status}, but its saved weights {self._checkpoint_name(row)} {why}, and "
                                f"analyses need them; {anew}") from None
        if state is None:
            if ended:
                raise PrealignError(f"run {rid} {status}, but its saved weights {self._checkpoint_name(row)} are "
                                    f"missing, and analyses need them; {anew}")
            raise PrealignError(f"run {rid} has no saved weights yet (status {status}); run its config again to "
                                f"train it (it resumes from its last epoch)")
        return state

    def _checkpoint_name(self, row: dict) -> str:
        return f"({row['storage']}/{row['key']}.pt)" if row.get("storage") else f"({self.checkpoint_dir / row['key']}.pt)"

    def remove(self, run: int | str) -> dict:
        """Delete a run — its row, its epochs and its checkpoint — so its config trains anew when run
        again. Returns the removed row."""
        row = self.get(run)
        try:
            self.storage_of(row["id"]).remove(row["key"])
        except OSError as err:  # left behind, a later run of the config would resume from it: stop here
            raise PrealignError(f"cannot remove run {row['id']}'s checkpoint {self._checkpoint_name(row)} ({err}); "
                                "fix the access to it and remove the run again; nothing was removed") from None
        with self._write() as c:
            c.execute("DELETE FROM epochs WHERE run_id = ?", (row["id"],))
            c.execute("DELETE FROM runs WHERE id = ?", (row["id"],))
        return row

    # -- export -----------------------------------------------------------------------------------
    def export_csv(self, path: str | os.PathLike, runs: list[int] | None = None, **filters) -> int:
        """Write :meth:`records` (one row per run and epoch: the run, its config, every metric) as CSV;
        returns the number of rows."""
        rows = self.records(runs, **filters)
        write_csv(path, rows)
        return len(rows)

    # -- tables: prealign runs list / export, notebooks ----------------------------------------------
    def select(self, runs: list[int | str] | None = None, *, method: str | None = None, model: str | None = None,
               dataset: str | None = None, status: str | None = None) -> list[dict]:
        """The runs (as :meth:`get` gives them, oldest first) matching every filter given: ``runs``
        (ids or key prefixes), ``method`` (a label such as ``ifa@30``, or a method such as ``ifa``,
        which matches every angle), ``model`` (mlp, lenet, alexnet), ``dataset``, ``status``."""
        if status is not None and status not in STATUSES:
            raise PrealignError(f"unknown run status {status!r}; valid: {', '.join(STATUSES)}")
        wanted = {self.resolve(r) for r in runs} if runs else None
        return [r for r in self.runs(status=status, dataset=dataset)
                if (wanted is None or r["id"] in wanted) and (method is None or method in (r["label"], r["config"].get("method")))
                and (model is None or r["config"].get("model") == model)]

    def summaries(self, runs: list[int | str] | None = None, **filters) -> list[dict]:
        """One flat dict per run (:meth:`select` filters): id, key, method (its label), dataset, seed,
        status, every config field (``hidden`` as ``"100-100"``), the summary (accuracies are fractions,
        ``seconds`` of training) and ``created``/``updated`` (Unix seconds)."""
        out = []
        for r in self.select(runs, **filters):
            summary = {k: v for k, v in (r["summary"] or {}).items() if k not in ("config", "run_id", "status", "final")}
            summary.update({f"final/{k}": v for k, v in ((r["summary"] or {}).get("final") or {}).items()})
            out.append({**_run_columns(r), **summary, "error": r["error"], "created": r["created"], "updated": r["updated"]})
        return out

    def records(self, runs: list[int | str] | None = None, **filters) -> list[dict]:
        """One flat dict per run and epoch (:meth:`select` filters): ``run_id``, key, method (label),
        dataset, seed, status, every config field, then that epoch's metrics (accuracies as fractions,
        angles in degrees); what ``prealign runs export`` writes."""
        rows = []
        for r in self.select(runs, **filters):
            columns = _run_columns(r)
            columns["run_id"] = columns.pop("id")
            rows += [{**columns, **rec} for rec in self.epochs(r["id"])]
        return rows

    def to_dataframe(self, per: str = "epoch", runs: list[int | str] | None = None, **filters):
        """A pandas ``DataFrame`` of :meth:`records` (``per="epoch"``: one row per run and epoch) or of
        :meth:`summaries` (``per="run"``); ``runs`` and ``filters`` as :meth:`select`. Needs pandas
        (``pip install 'prealign[pandas]'``)."""
        if per not in ("epoch", "run"):
            raise PrealignError(f"per must be 'epoch' or 'run', got {per!r}")
        try:
            import pandas as pd
        except ImportError:
            raise PrealignError("Store.to_dataframe needs pandas, which is not installed; "
                                "pip install 'prealign[pandas]' (or pip install pandas)") from None
        rows = self.records(runs, **filters) if per == "epoch" else self.summaries(runs, **filters)
        return pd.DataFrame.from_records(rows)


def _run_columns(row: dict) -> dict:
    """The leading columns of a run in tables and CSV: id, key, method (label), dataset, seed, status,
    the device it actually trained on (``trained_on``; the config's ``device`` is what was asked for),
    then its config fields (``hidden`` as ``100-100``; config ``method`` is the label's base)."""
    columns = {"id": row["id"], "key": row["key"], "method": row["label"], "dataset": row["dataset"],
               "seed": row["seed"], "status": row["status"], "trained_on": row.get("device")}
    for k, v in row["config"].items():
        if k not in columns:
            columns[k] = "-".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    return columns


def write_csv(path, rows: list[dict]) -> None:
    """CSV with the union of the rows' keys as columns (first-seen order)."""
    columns: list[str] = []
    for row in rows:
        for k in row:
            if k not in columns:
                columns.append(k)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    except OSError as err:
        raise PrealignError(f"cannot write the CSV file {str(path)!r} ({err.strerror or err}); choose another path") from None


__all__ = ["Store", "default_root", "write_csv", "DB_NAME", "STATUSES"]
