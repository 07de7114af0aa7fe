"""What ``prealign compare`` and ``prealign sweep`` share once their grid is built: train it, write
the outputs (:func:`prealign.reports.compare.write_grid_outputs`), print the table or the JSON summary."""
from __future__ import annotations

import json
import sys
import time

from .args import cluster_options
from .args import console as _console


def sweep_and_report(args, command: str, root, points, configs, store, settings, workers) -> int:
    """What ``compare`` and ``sweep`` do once their grid is built: train it through the sweep machinery
    (resumable, compatible runs batched, failures isolated), write the outputs, print the table
    (or, with ``--json``, the summary only)."""
    from ..run.grid import sweep_grid
    from ..reports.compare import write_grid_outputs

    start = time.perf_counter()
    sweep_grid(configs, store, workers=workers, batch_models=args.batch_models, log=None if args.json else _log,
               **cluster_options(args))
    wall = time.perf_counter() - start
    folder, summary = write_grid_outputs(root, command, points, store, settings, wall)
    if args.json:
        print(json.dumps(json.loads((folder / "summary.json").read_text()), indent=2))
        return 0
    print_table(summary, folder, wall)
    return 0


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def print_table(summary: dict, folder, wall: float) -> None:
    """The summary table (rich) and where the report is: what ``compare`` and ``sweep`` print."""
    from ..stats import rich_table
    from ..reports.compare import _g, budget_line, table

    settings = summary["settings"]
    columns, cells = table(summary["methods"])
    console = _console()
    selection = ", ".join(sorted({m["selection"] for m in summary["methods"]}))
    console.print(rich_table(columns, cells, title=f"{_g(settings['dataset'])}, {_g(settings['architecture'])} — test "
                                                    f"accuracy at the selected epoch (selection: {selection}), mean ± "
                                                    f"sample std over {len(settings['seeds'])} seed(s); angles in degrees"))
    console.print(budget_line(settings), style="dim")
    layers = ", ".join(f"{k} = layer `{v}`" for k, v in summary["layers"].items())
    console.print(f"{layers}. Wall time {wall:.1f} s. Report: {folder / 'report.md'}")
