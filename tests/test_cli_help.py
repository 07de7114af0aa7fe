"""Discoverable: every command, subcommand and group answers ``--help``, a bare group prints its usage,
and ``prealign --version`` names the installed version (issue 24).

The command tree is walked from the parser itself, so a command added later is covered without
touching this file."""
from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version

import pytest

from prealign.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, path: tuple = ()) -> list[tuple[tuple, argparse.ArgumentParser]]:
    """``[(argv prefix, parser)]`` for the top level and every subcommand below it, recursively."""
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, path + (name,))
    return out


def _groups(parser) -> list[tuple]:
    return [path for path, p in _commands(parser) if path and any(isinstance(a, argparse._SubParsersAction)
                                                                  for a in p._actions)]


COMMANDS = [path for path, _ in _commands(build_parser())]
GROUPS = _groups(build_parser())


def test_the_walk_sees_every_command():
    """The walk is not vacuous: the top-level commands and the nested ones (analyze NAME, runs list) are in it."""
    top = {path[0] for path in COMMANDS if len(path) == 1}
    assert {"compare", "sweep", "train", "runs", "datasets", "analyze", "reproduce", "bench"} <= top
    assert ("analyze", "ood-detection") in COMMANDS and ("runs", "list") in COMMANDS
    assert {("analyze",), ("runs",), ("datasets",)} <= set(GROUPS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "prealign")
def test_every_command_answers_help(path, capsys):
    """``prealign ... --help`` prints the usage and exits 0 (``analyze --help`` crashed on a ``%`` in a help
    string: argparse %-formats help text; every help string is now printed as written)."""
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("usage: prealign") and "options:" in out.out and out.err == ""


@pytest.mark.parametrize("path", GROUPS, ids=" ".join)
def test_a_bare_group_prints_its_usage(path, capsys):
    """``prealign analyze`` (no analysis named) lists what it offers and exits 2, as a usage error does
    (every group alike; bare ``prealign`` prints its help and exits 0)."""
    assert main(list(path)) == 2
    out = capsys.readouterr()
    assert out.out.startswith(f"usage: prealign {' '.join(path)}") and "Traceback" not in out.out + out.err
    assert main([]) == 0 and capsys.readouterr().out.startswith("usage: prealign [-h]")


def test_a_percent_sign_in_help_is_printed_as_written(capsys):
    """The root cause, on a parser of its own: a literal ``%`` in a help string, in an option's choices'
    help and in a subcommand's one-line help."""
    from prealign.cli.args import OneLineParser

    parser = OneLineParser(prog="p")
    parser.add_argument("--x", help="FPR@95%TPR, 10 % held out")
    parser.add_subparsers().add_parser("sub", help="100% of it", formatter_class=argparse.RawDescriptionHelpFormatter)
    text = parser.format_help()
    assert "FPR@95%TPR, 10 % held out" in text and "100% of it" in text


def test_version_is_the_installed_distribution_s():
    """``prealign --version`` (the console script a user runs) prints the package metadata's version, which is
    ``prealign.__version__`` (pyproject reads it from there: one place)."""
    import prealign

    done = subprocess.run([sys.executable, "-m", "prealign.cli", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"prealign {version('prealign')} (torch {version('torch')}, Python ")
    assert version("prealign") == prealign.__version__


def test_patience_help_names_what_the_runs_are_selected_on():
    """``compare --patience`` stops on the accuracy the runs are selected on: validation, since compare holds out
    ``RunConfig.val_fraction`` of the training set (the help said "test accuracy")."""
    from prealign.cli.compare import build_configs
    from prealign.run.config import RunConfig

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["compare"]
    patience = next(a for a in sub._actions if "--patience" in a.option_strings)
    configs = build_configs(parser.parse_args(["compare", "--patience", "3", "--methods", "fa", "--seeds", "1"]))
    assert configs[0].val_fraction == RunConfig.val_fraction > 0 and configs[0].patience == 3
    assert "validation accuracy" in patience.help and "test accuracy" not in patience.help
    assert f"{RunConfig.val_fraction:.0%}".replace("%", " %") in patience.help
