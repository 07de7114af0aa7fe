"""Option types shared by every ``prealign`` subcommand, the parser that reports errors in one line,
and the handling of stdout every command shares (a rich console; a reader that went away).

Every numeric, device and path option takes one of the types below as ``type=``. The value is
checked when the command line is parsed, so a bad one is refused before anything runs, with
the option's name and what it allows, in one line and exit status 2::

    prealign analyze landscape: error: argument --grid: must be an odd integer >= 3, got '0' (see prealign analyze landscape --help)

The types keep their bounds as attributes (``lo``, ``hi``, ``kind``, ...), so the tests generate
bad values for every option straight from the parser (``tests/test_cli_fuzz.py``): a new option
declared with one of these types is covered without touching the tests.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

INT_MAX = 2**31 - 1  # counts (samples, epochs, threads, ...) beyond this are typos, and overflow torch
SEED_MAX = 2**32 - 1  # seeds are 32-bit: every RNG in the stack (torch, numpy) takes them


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr, naming the command and its help."""

    def error(self, message: str):
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def stdout_closed() -> int:
    """The reader of stdout went away (``prealign runs show 1 --json | head``): stop quietly, as
    Unix tools do, discarding the rest of the output; returns 141, the status a SIGPIPE death reports."""
    try:  # later writes (and the interpreter's final flush) go to /dev/null instead of raising again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # not a real file (captured in tests): nothing to redirect
        pass
    return 141


def console(**kwargs):
    """A rich ``Console`` for a command's output on stdout (160 columns when it is not a terminal).
    A closed stdout raises ``BrokenPipeError``, which :func:`prealign.cli.main` ends quietly (exit 141),
    instead of rich's own exit."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(32, "Broken pipe")

    return _Console(**kwargs) if sys.stdout.isatty() else _Console(width=160, **kwargs)


def _fail(text: str, need: str):
    raise argparse.ArgumentTypeError(f"must be {need}, got {text!r}")


@dataclass(frozen=True)
class Int:
    """An integer in ``[lo, hi]`` (odd if ``odd``); ``5e5`` is accepted as 500000."""

    lo: int = 0
    hi: int = INT_MAX
    odd: bool = False

    @property
    def need(self) -> str:
        kind = "an odd integer" if self.odd else "an integer"
        return f"{kind} >= {self.lo}" if self.hi == INT_MAX else f"{kind} in [{self.lo}, {self.hi}]"

    def __call__(self, text: str) -> int:
        value = _integer(text)
        if value is None or not self.lo <= value <= self.hi or (self.odd and value % 2 == 0):
            _fail(text, self.need)
        return value


def _integer(text) -> int | None:
    text = str(text).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


@dataclass(frozen=True)
class Float:
    """A finite number above ``lo`` (``lo`` itself allowed unless ``lo_open``) and at most ``hi``."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False

    @property
    def need(self) -> str:
        parts = []
        if self.lo > -math.inf:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi < math.inf:
            parts.append(f"<= {self.hi:g}")
        return "a finite number" + (" " + " and ".join(parts) if parts else "")

    def __call__(self, text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            _fail(text, self.need)
        if not math.isfinite(value) or value < self.lo or (self.lo_open and value == self.lo) or value > self.hi:
            _fail(text, self.need)
        return value


@dataclass(frozen=True)
class Floats:
    """Numbers separated by commas or spaces, each an ``item`` (at least one)."""

    item: Float = Float()

    def __call__(self, text: str) -> list[float]:
        parts = str(text).replace(",", " ").split()
        if not parts:
            _fail(text, f"one or more numbers separated by commas, each {self.item.need}")
        try:
            return [self.item(p) for p in parts]
        except argparse.ArgumentTypeError:
            _fail(text, f"numbers separated by commas, each {self.item.need}")


@dataclass(frozen=True)
class Widths:
    """Hidden-layer widths: ``100`` or ``100,100`` (also ``100-100``), each a positive integer."""

    def __call__(self, text: str) -> tuple[int, ...]:
        from ..run.config import _coerce
        from ..errors import ConfigError

        try:
            widths = _coerce("hidden", str(text), "tuple[int, ...]")
        except ConfigError:
            widths = ()
        if not widths or min(widths) < 1 or max(widths) > INT_MAX:
            _fail(text, "positive integer widths separated by commas, e.g. 100 or 100,100")
        return widths


@dataclass(frozen=True)
class Seeds:
    """``3`` → seeds 0, 1, 2; ``0,5,7`` → exactly those seeds (each in [0, 2^32 - 1])."""

    def __call__(self, text: str) -> list[int]:
        text = str(text).strip()
        need = f"a count (3 → seeds 0,1,2) or a list of seeds (0,5,7), each in [0, {SEED_MAX}]"
        if "," in text:
            seeds = [_integer(s) for s in text.split(",") if s.strip()]
            if not seeds or any(s is None or not 0 <= s <= SEED_MAX for s in seeds):
                _fail(text, need)
            return seeds
        count = _integer(text)
        if count is None or not 1 <= count <= 10_000:
            _fail(text, need)
        return list(range(count))


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


# the types every subcommand uses
POSITIVE = Int(1)
NONNEG = Int(0)
SEED = Int(0, SEED_MAX)
POSITIVE_FLOAT = Float(0.0, lo_open=True)
NONNEG_FLOAT = Float(0.0)
ANGLES = Floats(Float(0.0, 180.0))
DEVICE = Device()
FOLDER = PathArg("dir")
STORE = PathArg("store")
OUT_FILE = PathArg("out_file")
IN_FILE = PathArg("in_file")


def add_cluster_options(p) -> None:
    """Where and with what a sweep's runs execute (issue 15; docs/cluster.md), one definition for every
    command that runs sweeps (``compare``, ``reproduce``, ``sweep``); :func:`cluster_options` turns
    them into :func:`prealign.run.sweep.run_sweep` keywords."""
    p.add_argument("--executor", default="local", choices=("local", "ray"), help="where the runs execute (default local)")
    p.add_argument("--address", default=None, help="Ray cluster address with --executor ray (HOST:PORT of `ray start "
                                                   "--head`, or auto); default: start a local Ray instance")
    p.add_argument("--storage", default=None, metavar="URI", help="checkpoint storage every worker can reach: a folder "
                   "or an fsspec URL (s3://bucket/prefix, gs://...); default: checkpoints/ next to the result store")
    p.add_argument("--gpus-per-run", type=NONNEG_FLOAT, default=None, help="GPUs each run asks for (fractions share a "
                   "GPU); default where GPUs exist: 1 for convolutional models, 0.25 for MLPs; a batched group asks for the sum")
    p.add_argument("--cpus-per-run", type=POSITIVE_FLOAT, default=None, help="CPUs each run asks for (default 1; "
                   "also its torch threads)")
    p.add_argument("--runtime-env", default=None, metavar="JSON|DIR", help="Ray runtime_env for the workers: a JSON "
                   "object (e.g. '{\"pip\": [\"prealign\"]}') or a folder shipped as their working_dir")


def cluster_options(args) -> dict:
    """The :func:`add_cluster_options` values as :func:`prealign.run.sweep.run_sweep` keywords (the
    ``executor`` and ``address`` keywords included)."""
    return {"executor": args.executor, "address": args.address, "storage": args.storage, "gpus_per_run": args.gpus_per_run,
            "cpus_per_run": args.cpus_per_run, "runtime_env": args.runtime_env}


__all__ = ["OneLineParser", "add_cluster_options", "cluster_options", "stdout_closed", "console", "Int", "Float", "Floats", "Widths", "Seeds", "Device", "PathArg",
           "POSITIVE", "NONNEG", "SEED", "POSITIVE_FLOAT", "NONNEG_FLOAT", "ANGLES", "DEVICE", "FOLDER", "STORE",
           "OUT_FILE", "IN_FILE"]
