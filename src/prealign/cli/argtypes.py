"""Numeric option types of every ``prealign`` subcommand (devices and paths: :mod:`prealign.cli.argpaths`).
Each numeric option takes one of these as ``type=``, so a bad value is refused while the command line
is parsed, in one line naming the option and what it allows (see :mod:`prealign.cli.args`).

The types keep their bounds as attributes (``lo``, ``hi``, ``kind``, ...), so the tests generate
bad values for every option straight from the parser (``tests/test_cli_fuzz.py``): a new option
declared with one of these types is covered without touching the tests.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

INT_MAX = 2**31 - 1  # counts (samples, epochs, threads, ...) beyond this are typos, and overflow torch
SEED_MAX = 2**32 - 1  # seeds are 32-bit: every RNG in the stack (torch, numpy) takes them


def _fail(text: str, need: str):
    raise argparse.ArgumentTypeError(f"must be {need}, got {text!r}")


@dataclass(frozen=True)
class Int:
    """An integer in ``[lo, hi]`` (odd if ``odd``; ``5e5`` is 500000); ``bound``: what ``hi`` is, for the refusal."""

    lo: int = 0
    hi: int = INT_MAX
    odd: bool = False
    bound: str = ""

    @property
    def need(self) -> str:
        kind = "an odd integer" if self.odd else "an integer"
        need = f"{kind} >= {self.lo}" if self.hi == INT_MAX else f"{kind} in [{self.lo}, {self.hi}]"
        return f"{need} ({self.hi} = {self.bound})" if self.bound else need

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
        from ..errors import ConfigError
        from ..run.config import _coerce

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


CORES = os.cpu_count() or 1  # torch threads and local worker processes are bounded by them

# the numeric types every subcommand uses
POSITIVE = Int(1)
NONNEG = Int(0)
SEED = Int(0, SEED_MAX)
THREADS = Int(1, CORES, bound="this machine's CPU cores")
WORKERS = Int(1, CORES, bound="this machine's CPU cores; each worker is a process with one torch thread")
POSITIVE_FLOAT = Float(0.0, lo_open=True)
NONNEG_FLOAT = Float(0.0)
ANGLES = Floats(Float(0.0, 180.0))

__all__ = ["ANGLES", "CORES", "INT_MAX", "NONNEG", "THREADS", "WORKERS", "NONNEG_FLOAT", "POSITIVE", "POSITIVE_FLOAT", "SEED", "SEED_MAX", "Float",
           "Floats", "Int", "Seeds", "Widths"]
