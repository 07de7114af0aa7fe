"""The ``prealign`` command. Thin: parse, call the library, print.

Each subcommand lives in its own module under ``prealign.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
Options go after the subcommand's name (``prealign runs list --out DIR --json``); the older places
(``prealign --quiet runs --out DIR list``) work too. A :class:`~prealign.errors.PrealignError` or a bad
option (:mod:`prealign.cli.args`) becomes one line on stderr and exit status 2; a closed stdout (``| head``) ends the command quietly.

Interruptions: Ctrl-C (SIGINT) and SIGTERM stop the command the same way — the sweep ends its
worker processes, runs in flight stay resumable (their last epoch checkpoint; the store is SQLite,
so no record is half-written), and one line on stderr says so. Exit status 130 after SIGINT and
143 after SIGTERM (128 + the signal number, what a shell reports for a process killed by it). A
second SIGTERM during that clean-up ends the process at once.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading

# subcommand name -> module that registers it (imported lazily, so `prealign --help` is fast)
COMMANDS = {
    "compare": "prealign.cli.compare",
    "sweep": "prealign.cli.sweep",
    "train": "prealign.cli.train",
    "runs": "prealign.cli.runs",
    "datasets": "prealign.cli.datasets",
    "analyze": "prealign.cli.analyze",
    "reproduce": "prealign.cli.reproduce",
    "bench": "prealign.cli.bench",
}


def build_parser() -> argparse.ArgumentParser:
    from .parser import OneLineParser, version_line

    parser = OneLineParser(
        prog="prealign",
        description="Train without weight transport (FA, IFA, noise pretraining) and measure why it works.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--version", action="version", version=version_line(),
                        help="print prealign's version (package metadata) with torch's and Python's, and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # the subcommand module itself is absent: leave it out
                continue
            raise
        mod.register(sub)
    return parser.inherit()  # every option of a command group is accepted after its subcommands too


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM: every clean-up that handles Ctrl-C handles it too."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated("SIGTERM")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _one_line_warnings():
    """Within the block, a :class:`~prealign.errors.PrealignWarning` prints as ``prealign: warning: ...``
    (one line, no file and line number); other warnings as Python prints them."""
    import warnings

    from ..errors import PrealignWarning

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PrealignWarning):
            print(f"prealign: warning: {message}", file=sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: list[str] | None = None) -> int:
    from .args import stdout_closed

    code = _main(argv)
    try:  # what is still buffered meets a closed pipe here, not in the interpreter's last flush (exit 120)
        sys.stdout.flush()
    except BrokenPipeError:
        return stdout_closed()
    except (AttributeError, ValueError):  # stdout replaced or closed by the caller: nothing to flush
        pass
    return code


def _main(argv: list[str] | None) -> int:
    from ..errors import PrealignError
    from ..progress import set_quiet
    from .args import stdout_closed

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a bad argument already reported in one line
        return int(done.code or 0)
    except BrokenPipeError:
        return stdout_closed()
    if getattr(args, "quiet", False):
        set_quiet(True)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        with _sigterm_as_interrupt(), _one_line_warnings():
            return int(args.func(args) or 0)
    except PrealignError as err:
        print(f"prealign: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `prealign ... | head`: the reader has what it wanted
        return stdout_closed()
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"prealign: {'terminated (SIGTERM)' if terminated else 'interrupted'}; finished runs are saved, "
              "re-run the same command to resume", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
