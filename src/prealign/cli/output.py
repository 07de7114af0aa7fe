"""A command's output on stdout: JSON (``--json``), a rich console that writes plain text into a pipe,
and a reader that went away (``| head``)."""
from __future__ import annotations

import json
import os
import sys


def print_json(obj) -> None:
    """``obj`` as JSON on stdout (NaN and infinities as null: valid for every reader)."""
    from ..run.store import json_safe

    print(json.dumps(json_safe(obj), indent=2))


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
    """A rich ``Console`` for a command's output on stdout. Into a pipe or file it writes plain text:
    no colours, no line wrapping, and a table as tab-separated lines (its title first as a ``# ``
    comment, then the header), so ``| cut -f``, ``| grep`` and ``read_csv(sep="\\t", comment="#")`` work. A closed stdout raises
    ``BrokenPipeError``, which :func:`prealign.cli.main` ends quietly (exit 141), instead of rich's own exit."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(32, "Broken pipe")

        def print(self, *objects, **kw):
            if self.is_terminal or not any(isinstance(o, Table) for o in objects):
                return super().print(*objects, **kw)
            for table in objects:
                cells = [[Text.from_markup(str(c)).plain for c in col.cells] for col in table.columns]
                lines = [f"# {Text.from_markup(str(table.title)).plain}"] if table.title else []
                lines.append("\t".join(str(col.header) for col in table.columns))
                lines += ["\t".join(col[i] for col in cells) for i in range(table.row_count)]
                self.file.write("\n".join(lines) + "\n")  # as is: rich would expand the tabs

    if sys.stdout.isatty():
        return _Console(**kwargs)
    return _Console(**{"width": 160, "soft_wrap": True, **kwargs})


__all__ = ["console", "print_json", "stdout_closed"]
