"""Checkpoint storage behind a URI, and the store as a sweep worker sees it (issue 15: one writer).

A sweep has exactly one process that writes the SQLite result store: the driver (the process
that called :func:`prealign.run.sweep.run_sweep`). Workers — local processes or Ray tasks on
other machines — never open it. They receive their configs and a :class:`WorkerStore`, train,
and *emit* messages the driver applies to the store:

==========================================  ==================================================
``("epoch", key, record)``                  one epoch's record (``Store.log_epoch``; idempotent
                                            per run key + epoch)
``("result", key, result_dict, device)``    the run ended: ``TrainResult.to_dict()`` with its
                                            curves, and the device it trained on (``Store.finish``)
``("fail", key, error)``                    the run raised (``Store.fail``)
==========================================  ==================================================

Checkpoints do not pass through the driver: they go to a :class:`Storage`, a location named by a
URI that every node can reach — a local folder (the default: ``checkpoints/`` next to the store,
where :class:`~prealign.run.store.Store` has always kept them), or anything ``fsspec`` opens:
``file:///shared/ckpt``, ``s3://bucket/prefix`` (needs ``s3fs``), ``gs://bucket/prefix`` (needs
``gcsfs``), ``memory://`` (one process only; tests). A run retried on another node, or resumed by
a later invocation, finds its last epoch there. Each checkpoint is ``<key>.pt``, written and read
by :class:`~prealign.run.trainer.FileCheckpoint` (bound to the run key, CRC-checked, loaded with
``torch.load(weights_only=True)``); on a non-local file system through a local cache file, and
uploaded whole (a temporary object, then a rename), so a reader never sees half a checkpoint.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from ..errors import PrealignError


class Storage:
    """The checkpoint folder named by ``uri`` (a path or an fsspec URL). Picklable: only the URI
    travels to a worker, which opens the file system itself."""

    def __init__(self, uri: str | os.PathLike):
        self.uri = os.fspath(uri)
        self._fs = None
        _ = self.fs  # an unknown protocol or a missing driver (s3fs, gcsfs) fails here, in the driver

    def __getstate__(self):
        return {"uri": self.uri}

    def __setstate__(self, state):
        self.uri, self._fs = state["uri"], None

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    @property
    def fs(self):
        if self._fs is None:
            import fsspec

            try:
                self._fs, self.root = fsspec.core.url_to_fs(self.uri)
            except (ImportError, ValueError) as err:
                raise PrealignError(f"cannot use the checkpoint storage {self.uri!r} ({err}); give a folder or an "
                                    "fsspec URL (file://, s3:// with s3fs, gs:// with gcsfs) to --storage") from None
            self.root = self.root.rstrip("/") or "/"
            if self.local:  # an absolute path: what a worker with another working directory needs
                self.uri = self.root
        return self._fs

    @property
    def local(self) -> bool:
        """Whether the storage is a folder of this machine's file system (no cache needed)."""
        protocol = (self._fs or self.fs).protocol
        return "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))

    def path(self, key: str) -> str:
        """Where the checkpoint of run ``key`` lives, in the file system's own notation."""
        _ = self.fs  # sets self.root
        return f"{self.root}/{key}.pt"

    def url(self, key: str) -> str:
        """The checkpoint of run ``key`` as a URL (what the store records and error messages name)."""
        return self.fs.unstrip_protocol(self.path(key)) if not self.local else self.path(key)

    def checkpoint(self, key: str) -> StorageCheckpoint:
        """The :class:`~prealign.run.trainer.FileCheckpoint`-like object of run ``key``."""
        return StorageCheckpoint(self, key)

    def remove(self, key: str) -> None:
        if self.fs.exists(self.path(key)):
            self.fs.rm(self.path(key))

    # -- other files of a run (trajectory snapshots): stored beside the checkpoints, so whatever
    # node trained the run, the driver finds them where it finds its checkpoint
    def file_path(self, name: str) -> str:
        """Where the file ``name`` (e.g. ``trajectories/<key>.npy``) lives, in the file system's notation."""
        _ = self.fs  # sets self.root
        return f"{self.root}/{name}"

    def put(self, local: str | os.PathLike, name: str) -> None:
        """Copy the local file ``local`` into the storage as ``name``: a temporary object, then a
        rename, so a reader never sees half a file."""
        fs, remote = self.fs, self.file_path(name)
        fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{remote}.{uuid.uuid4().hex}.tmp"
        fs.put_file(os.fspath(local), tmp)
        fs.mv(tmp, remote)

    def local_copy(self, name: str) -> Path | None:
        """The file ``name`` as a local path (itself on a local storage, else a fresh download into a
        private cache file), or None when the storage has no such file."""
        fs, remote = self.fs, self.file_path(name)
        if not fs.exists(remote):
            return None
        if self.local:
            return Path(remote)
        cache = Path(tempfile.gettempdir()) / "prealign-files" / f"{os.getpid()}-{uuid.uuid4().hex}" / Path(name).name
        cache.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(cache))
        return cache


class StorageCheckpoint:
    """``load() -> dict | None`` / ``save(dict)`` of one run's checkpoint in a :class:`Storage`.

    Both go through :class:`~prealign.run.trainer.FileCheckpoint` (key binding, integrity check,
    data-only loading): directly on a local storage; on a remote one through a private local
    cache file that is downloaded before each load and uploaded after each save."""

    def __init__(self, storage: Storage, key: str):
        from .trainer import FileCheckpoint

        self.storage, self.key = storage, key
        self.remote = storage.path(key)
        if storage.local:
            self.file = FileCheckpoint(self.remote, key=key)
        else:
            cache = Path(tempfile.gettempdir()) / "prealign-checkpoints" / f"{os.getpid()}-{uuid.uuid4().hex}"
            self.file = FileCheckpoint(cache / f"{key}.pt", key=key)
        self.path = self.file.path

    def load(self) -> dict | None:
        if self.storage.local:
            return self.file.load()
        fs = self.storage.fs
        self.path.unlink(missing_ok=True)
        if not fs.exists(self.remote):
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(self.remote, str(self.path))
        try:
            return self.file.load()
        except PrealignError as err:  # name the stored object, not the cache file
            raise PrealignError(str(err).replace(str(self.path), self.storage.url(self.key))) from None

    def save(self, state: dict) -> None:
        self.file.save(state)
        if not self.storage.local:
            self.storage.put(self.path, f"{self.key}.pt")  # Storage.path(key): the same object


class _Logger:
    """Trainer callback that emits each epoch's record to the driver."""

    def __init__(self, emit, key: str):
        self.emit, self.key = emit, key

    def on_epoch_end(self, epoch, model, data, record):
        self.emit(("epoch", self.key, dict(record)))


class WorkerStore:
    """The result store as a worker sees it: the subset of :class:`~prealign.run.store.Store` that
    :func:`prealign.run.config.run` and :func:`prealign.run.sweep_batched.train_group` use, with
    every write turned into a message for the driver (module docstring) and checkpoints in a
    :class:`Storage`. Opens no database.

    ``ids``: run key → the driver's run id (the driver registered every run before dispatching);
    ``gpus``: the GPUs this task asked its executor for (> 0: training on CPU is an error);
    ``store_path``: the driver's store path, only as a name (``os.fspath`` of this object gives it,
    for tasks that name files after it)."""

    def __init__(self, storage: Storage, ids: dict[str, int], emit, *, gpus: float = 0.0, store_path: str = ""):
        self.storage, self.ids, self.emit, self.gpus, self.store_path = storage, dict(ids), emit, gpus, store_path
        self.devices: dict[str, str] = {}  # key -> device the run trained on (set by the sweep's tasks)
        self.resumed: dict[str, int] = {}  # key -> epoch of the checkpoint the run resumed from
        self._keys = {run_id: key for key, run_id in self.ids.items()}

    def __fspath__(self) -> str:
        return self.store_path

    def _key(self, run_id: int) -> str:
        return self._keys[int(run_id)]

    def find(self, key: str) -> None:
        return None  # the driver dispatches only runs that are not done

    def start(self, config) -> int:
        key = config.key()
        if key not in self.ids:
            raise PrealignError(f"run {key} was not registered by the sweep that sent this task: a task may only "
                                "train the configs it was given, and the run key sees the network, so a worker whose "
                                "model code or packages differ from the driver's builds another run; give every node "
                                "the same code (--runtime-env, or the same install)")
        return self.ids[key]

    def get(self, run_id: int) -> dict:
        return {"id": int(run_id), "key": self._key(run_id)}

    def checkpoint_file(self, run_id: int) -> _ResumeTracking:
        key = self._key(run_id)
        return _ResumeTracking(self.storage.checkpoint(key), key, self.resumed)

    def checkpointer(self, run_id: int):
        return _StoreCheckpoint(self, run_id)

    def epoch_logger(self, run_id: int) -> _Logger:
        return _Logger(self.emit, self._key(run_id))

    def finish(self, run_id: int, result, device: str | None = None) -> None:
        key = self._key(run_id)
        self.emit(("result", key, result.to_dict(curves=True), device or self.devices.get(key)))

    def fail(self, run_id: int, message: str) -> None:
        self.emit(("fail", self._key(run_id), message))

    def close(self) -> None:
        pass


class _ResumeTracking:
    """A checkpoint that notes the epoch it resumed from (in ``resumed``, by key) on its first load."""

    def __init__(self, file: StorageCheckpoint, key: str, resumed: dict):
        self.file, self.key, self._resumed, self.path = file, key, resumed, file.path

    def load(self) -> dict | None:
        state = self.file.load()
        if state is not None and self.key not in self._resumed:
            self._resumed[self.key] = int(state.get("epoch", 0))
        return state

    def save(self, state: dict) -> None:
        self.file.save(state)


__all__ = ["Storage", "StorageCheckpoint", "WorkerStore"]


class _StoreCheckpoint:
    """Checkpoint object handed to :func:`prealign.train` for one stored run: the file
    ``checkpoints/<key>.pt``, bound to the run's key (see :class:`prealign.run.trainer.FileCheckpoint`)."""

    def __init__(self, store, run_id: int):  # store: prealign.run.store.Store
        self.store, self.run_id, self.extra = store, run_id, {}
        self.file = store.checkpoint_file(run_id)
        self.path = self.file.path
        self._loaded: tuple | None = None  # (state,) read once: config.run and the trainer both ask for it

    def load(self) -> dict | None:
        """The run's checkpoint (None when there is none), read and verified once until the next save."""
        if self._loaded is None:
            self._loaded = (self.file.load(),)
        return self._loaded[0]

    def save(self, state: dict) -> None:
        self._loaded = None
        self.file.save({**state, **self.extra})
