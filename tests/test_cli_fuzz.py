"""Property: every option of every subcommand, given a bad value, ends the command with exit status 2,
exactly one line on stderr, no traceback and no file written (issue #13).

The subcommands and their options come from the argparse parser itself, and the bad values from
each option's declared type (:mod:`prealign.cli.args`: bounds, oddness, path kind) or choices, so a
new option is covered without editing this file. Free-text options (names the library looks up,
e.g. ``--dataset``) are listed in ``FREE_TEXT``; an option that is neither typed, a choice, a flag
nor listed there fails :func:`test_every_option_is_checked_at_parse_time`.
"""
import argparse
import contextlib
import io
import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prealign.cli import build_parser, main
from prealign.cli.args import SEED_MAX, BatchModels, Device, Float, Floats, Int, PathArg, Seeds, Widths

# names looked up by the library (one-line UnknownNameError there), free text by nature, or run references
FREE_TEXT = {"dataset", "model", "methods", "optimizer", "only", "address", "corruptions", "method",
             "surrogate", "overrides", "name", "runs", "run", "status", "storage", "runtime_env"}


def _leaves(parser: argparse.ArgumentParser, path=()):
    """``(("analyze", "landscape"), parser)`` for every runnable subcommand."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _leaves(sub, (*path, name))


def _options():
    """``(subcommand path, option string, action)`` for every option that takes a value."""
    out = []
    for path, parser in _leaves(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.nargs != 0 and not isinstance(action, argparse._HelpAction):
                out.append((path, action.option_strings[-1], action))
    return out


OPTIONS = _options()
CHECKED = [(p, o, a) for p, o, a in OPTIONS if a.type is not None or a.choices is not None]
WORDS = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
NAME = st.from_regex(r"[a-z0-9_.]{1,10}", fullmatch=True)


def _rejected(action, text: str) -> bool:
    """Whether argparse refuses ``text`` for ``action`` (so a generated value is really bad)."""
    try:
        value = action.type(text) if action.type else text
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return True
    return action.choices is not None and value not in action.choices


def _bad_values(action) -> st.SearchStrategy:
    """Values the option's type (or choices) refuses."""
    kind = action.type
    junk = WORDS.map(str)
    if isinstance(kind, Int):
        parts = [st.integers(max_value=kind.lo - 1), st.integers(min_value=kind.hi + 1, max_value=2**80),
                 st.integers(-10**6, 10**6).map(lambda i: f"{i}.5"), st.sampled_from(["nan", "inf", "-inf", "1e999"])]
        if kind.odd:
            parts.append(st.integers(kind.lo, kind.lo + 1000).filter(lambda i: i % 2 == 0))
        strategy = st.one_of(*[p.map(str) for p in parts], junk)
    elif isinstance(kind, Float):
        parts = [st.sampled_from(["nan", "inf", "-inf", "NaN", "1e999"]), junk]
        if kind.lo > -math.inf:
            parts.append(st.floats(max_value=kind.lo, exclude_max=not kind.lo_open, allow_nan=False).map(repr))
        if kind.hi < math.inf:
            parts.append(st.floats(min_value=kind.hi, exclude_min=True, allow_nan=False).map(repr))
        strategy = st.one_of(*parts)
    elif isinstance(kind, Floats):
        item = _bad_values(argparse.Action([], "x", type=kind.item))
        strategy = st.one_of(st.just(""), st.tuples(st.lists(st.floats(0, 1).map(repr), max_size=3), item).map(
            lambda t: ",".join([*t[0], t[1]])))
    elif isinstance(kind, Widths):
        strategy = st.one_of(st.lists(st.integers(-10**6, 0), min_size=1, max_size=3),
                             st.tuples(st.integers(1, 500), st.integers(max_value=0)).map(list)).map(
            lambda ws: ",".join(map(str, ws))) | junk
    elif isinstance(kind, Seeds):
        strategy = st.one_of(st.integers(max_value=0).map(str), st.integers(SEED_MAX + 1, 2**80).map(lambda s: f"0,{s}"),
                             st.integers(max_value=-1).map(lambda s: f"{s},1"), junk)
    elif isinstance(kind, BatchModels):
        strategy = st.one_of(st.integers(max_value=0).map(str), st.integers(kind.hi + 1, 2**80).map(str), junk)
    elif isinstance(kind, Device):
        strategy = st.one_of(st.from_regex(r"[a-z]{1,8}(:[0-9]{1,3})?", fullmatch=True), junk)
    elif isinstance(kind, PathArg):
        tail = NAME
        common = [st.just(""), tail.map(lambda t: f"afile.txt/{t}")]
        if kind.kind != "in_file":
            common.append(st.just("afile.txt"))
        if kind.kind in ("out_file", "in_file"):
            common.append(st.just("adir"))
        if kind.kind == "in_file":
            common.append(tail.map(lambda t: f"missing-{t}"))
        strategy = st.one_of(*common)
    elif action.choices is not None:
        strategy = st.one_of(junk, st.integers().map(str), NAME)
    else:
        raise AssertionError(f"no bad values known for {action.option_strings} ({kind!r})")
    return strategy.filter(lambda text: _rejected(action, text))


def _canonical_bad(action) -> str:
    """One bad value per option, for the deterministic sweep over all of them."""
    kind = action.type
    if isinstance(kind, Int):
        return str(kind.lo - 1)
    if isinstance(kind, (Float, Floats)):
        return "nan"
    if isinstance(kind, (Widths, Seeds, BatchModels)):
        return "0"
    if isinstance(kind, Device):
        return "bogus"
    if isinstance(kind, PathArg):
        return "adir" if kind.kind in ("out_file", "in_file") else "afile.txt"
    return "no-such-choice"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A current directory holding a file and a folder (the bad paths point at them); no $PREALIGN_RUNS."""
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "afile.txt").write_text("a file, not a folder\n")
    (folder / "adir").mkdir()
    old_cwd, old_env = os.getcwd(), os.environ.pop("PREALIGN_RUNS", None)
    os.chdir(folder)
    yield folder
    os.chdir(old_cwd)
    if old_env is not None:
        os.environ["PREALIGN_RUNS"] = old_env


def _tree(folder: Path):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def _check(sandbox: Path, path, option: str, value: str) -> None:
    before = _tree(sandbox)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([*path, f"{option}={value}"])
    text = err.getvalue()
    lines = text.splitlines()
    assert code == 2, (path, option, value, text)
    assert len(lines) == 1 and text.endswith("\n") and "Traceback" not in text, (path, option, value, text)
    assert lines[0].startswith("prealign") and f"argument {option}" in lines[0], lines[0]
    assert _tree(sandbox) == before, (path, option, value)


def test_every_option_is_checked_at_parse_time():
    """No option takes a bare int/float/str: numbers, devices and paths use prealign.cli.args types."""
    loose = [(" ".join(p), o) for p, o, a in OPTIONS
             if a.type is None and a.choices is None and a.dest not in FREE_TEXT]
    assert not loose, f"options without a checking type= (add one from prealign.cli.args): {loose}"
    bare = [(" ".join(p), o) for p, o, a in OPTIONS if a.type in (int, float, str)]
    assert not bare, f"options with a bare int/float/str type: {bare}"
    assert len(CHECKED) > 100 and {p[0] for p, _, _ in CHECKED} >= {"compare", "train", "runs", "analyze", "bench"}


@pytest.mark.parametrize("path, option, action", CHECKED, ids=[f"{' '.join(p)} {o}" for p, o, _ in CHECKED])
def test_each_option_refuses_its_canonical_bad_value(path, option, action, sandbox):
    _check(sandbox, path, option, _canonical_bad(action))


@settings(max_examples=600, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(data=st.data())
def test_generated_bad_values_one_line_exit_2_nothing_written(sandbox, data):
    path, option, action = data.draw(st.sampled_from(CHECKED), label="option")
    value = data.draw(_bad_values(action), label="value")
    _check(sandbox, path, option, value)
