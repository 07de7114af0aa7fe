"""Device, path and ``--batch-models`` option types of every ``prealign`` subcommand (the numeric ones
are in :mod:`prealign.cli.argtypes`): checked while the command line is parsed, one line on a bad value."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .argtypes import _fail, _integer


@dataclass(frozen=True)
class Device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and present on this machine."""

    def __call__(self, text: str) -> str:
        from ..device import resolve_device
        from ..errors import PrealignError

        text = str(text).strip()
        if text != "auto":
            try:
                resolve_device(text)
            except PrealignError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
        return text


@dataclass(frozen=True)
class PathArg:
    """A path of one ``kind``: ``"dir"`` (a folder, made if absent), ``"store"`` (a store folder, or
    its ``.sqlite`` file), ``"out_file"`` (a file to write) or ``"in_file"`` (an existing file)."""

    kind: str

    def __call__(self, text: str) -> str:
        if not str(text).strip() or "\0" in str(text):
            _fail(text, "a path")
        path = Path(text)
        if self.kind == "in_file":
            if not path.is_file():
                _fail(text, "an existing file" + (" (this is a folder)" if path.is_dir() else ""))
            return str(text)
        if path.exists():
            is_store_file = self.kind == "store" and path.suffix in (".sqlite", ".db") and path.is_file()
            if self.kind == "out_file" and path.is_dir():
                _fail(text, "a file to write (this is a folder)")
            if self.kind in ("dir", "store") and not path.is_dir() and not is_store_file:
                _fail(text, "a folder (this is a file)")
            return str(text)
        parent = path.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            _fail(text, f"a path inside a folder ({str(parent)!r} is a file)")
        return str(text)


@dataclass(frozen=True)
class BatchModels:
    """``--batch-models``: ``auto``, ``off`` or a group size ``G`` in ``[1, hi]`` (1 trains every run alone,
    as ``off``; a group holds ``G`` networks in memory at once)."""

    hi: int = 256

    def __call__(self, text: str):
        word = str(text).strip().lower()
        if word in ("auto", "off"):
            return word
        size = _integer(word)
        if size is None or not 1 <= size <= self.hi:
            _fail(text, f"auto, off or a group size in [1, {self.hi}] (the runs trained together as one model)")
        return size


DEVICE = Device()
FOLDER = PathArg("dir")
STORE = PathArg("store")
OUT_FILE = PathArg("out_file")
IN_FILE = PathArg("in_file")

__all__ = ["BatchModels", "DEVICE", "FOLDER", "IN_FILE", "OUT_FILE", "STORE", "Device", "PathArg"]
