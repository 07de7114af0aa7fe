"""The ``prealign`` parser: errors in one line naming the (sub)command, help strings printed as
written, and options of a command group accepted after every subcommand below it
(:meth:`OneLineParser.inherit`). Re-exported by :mod:`prealign.cli.args`.
"""
from __future__ import annotations

import argparse
import copy
import sys


def _literal_help(formatter_class: type) -> type:
    """``formatter_class`` printing every help string as written. argparse %-formats help strings
    (``%(default)s``), so one literal ``%`` ("FPR@95%TPR", "10 %") crashed ``--help``; prealign's help
    strings are plain text (defaults are written out), so none is formatted."""
    if getattr(formatter_class, "literal_help", False):
        return formatter_class

    class Literal(formatter_class):
        literal_help = True

        def _expand_help(self, action):
            return self._get_help_string(action)

    Literal.__name__ = f"Literal{formatter_class.__name__}"
    return Literal


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr, naming the (sub)command and its help,
    and whose help strings are printed as written (no %-formatting: :func:`_literal_help`)."""

    strict = False  # set on subcommand parsers: an unknown argument is reported by the subcommand itself

    def __init__(self, *args, formatter_class: type = argparse.HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=_literal_help(formatter_class), **kwargs)

    def error(self, message: str):
        message = " ".join(str(message).split())
        usage = self.format_usage() if _isatty(sys.stderr) else ""  # a person at a terminal also sees the usage
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n{usage}")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self.strict:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def inherit(self) -> OneLineParser:
        """Copy this parser's options into every subcommand below it, recursively (an option the
        subcommand declares itself wins). Copies default to unset, so ``runs --out A list`` keeps A."""
        for sub in _subparsers(self):
            sub.strict = True
            for action in self._actions:
                if not action.option_strings or isinstance(action, argparse._HelpAction) or \
                        any(s in sub._option_string_actions for s in action.option_strings) or \
                        any(a.dest == action.dest for a in sub._actions):
                    continue
                inherited = copy.copy(action)
                inherited.default, inherited.required = argparse.SUPPRESS, False
                sub._add_action(inherited)
            if isinstance(sub, OneLineParser):
                sub.inherit()
        return self


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of ``parser``'s subcommands (each once)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list({id(p): p for s in subs for p in s.choices.values()}.values())


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def version_line() -> str:
    """``prealign 0.1.0 (torch 2.13.0+cpu, Python 3.11.7)``: the installed distributions' metadata (the
    version a bug report needs); a source tree that was never installed says so instead of guessing."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"prealign {installed('prealign')} (torch {installed('torch')}, Python {platform.python_version()})"
