"""``prealign sweep GRID.toml``: your own grid of runs (base config + axes), resumable, reported like ``compare``.

The grid file (docs/sweeps.md, examples/grid.toml)::

    [base]
    dataset = "digits"
    epochs = 5
    [grid]
    method = ["bp", "fa", "ifa"]
    angle = [0, 45, 90]          # applies to ifa only: bp and fa get one run per seed
    seed = [0, 1]

Every run goes into the result store (``--out``): a killed sweep resumes where it stopped and a
repeated one is served from the store. Outputs as ``compare``: table, figures, report, CSV and
JSON in ``<out>/sweep-<timestamp>/``. ``--dry-run`` lists the runs and which are already stored.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .args import IN_FILE, POSITIVE, STORE, add_cluster_options, add_tensorboard, with_loggers


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run your own grid of configs (TOML) resumably; table, figures, report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", type=IN_FILE, metavar="GRID.toml", help="the grid file: [base], [grid], [zip] (docs/sweeps.md)")
    p.add_argument("--dry-run", action="store_true", help="list the runs (and which are already stored); train nothing")
    p.add_argument("--workers", type=POSITIVE, default=None,
                   help="local worker processes, one torch thread each (default: CPU cores; 1 = serial in this process)")
    p.add_argument("--batch-models", default="auto", metavar="auto|off|G",
                   help="train compatible MLP runs (any rule; same data, widths and optimizer settings) together as one batched "
                        "model, bitwise as alone: auto (default; groups of 8 where measured to win), off (or 1), or a "
                        "group size G up to 256; the packing is logged")
    p.add_argument("--out", type=STORE, default=None,
                   help="output root holding the result store (default ./prealign-runs or $PREALIGN_RUNS)")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout (the summary, or the run list with --dry-run)")
    add_tensorboard(p)
    add_cluster_options(p)  # --executor, --address, --storage, --gpus-per-run, --cpus-per-run, --runtime-env
    p.set_defaults(func=main)


def _dry_run(grid, points, store, as_json: bool) -> int:
    from ..run.config import RunConfig
    from ..run.grid import group_label, stored_status

    statuses = stored_status(points, store)
    runs = [{"run": group_label(p), "seed": p["config"].get("seed", 0), "axes": p["axes"],
             "key": RunConfig.from_dict(p["config"]).key(), "stored": s} for p, s in zip(points, statuses)]
    done = sum(s in ("finished", "diverged") for s in statuses)
    if as_json:
        print(json.dumps({"grid": grid.name, "runs": runs, "total": len(runs), "stored": done,
                          "collapsed": grid.collapsed, "store": str(store.path)}, indent=2))
        return 0
    for i, r in enumerate(runs, 1):
        print(f"{i:4d}  {r['stored']:9s} {r['key']}  {r['run']} seed={r['seed']}")
    note = (f"; {grid.collapsed} combination(s) merged where a method-specific value does not apply"
            if grid.collapsed else "")
    print(f"{len(runs)} runs, {done} already stored, {len(runs) - done} to train{note} (store: {store.path})")
    return 0


def _check_buildable(configs) -> None:
    """A data set that is missing, or a model that does not fit its data, fails before any training."""
    from ..run.config import build, load_data

    seen = set()
    for c in configs:
        ident = (c.dataset, c.train_subset, c.model, c.hidden)
        if ident not in seen:
            seen.add(ident)
            build(c, load_data(c))


def main(args) -> int:
    from ..run.grid import Grid
    from ..run.store import Store, default_root
    from ..run.sweep import check_options
    from ..run.sweep_batched import resolve_batch
    from ..viz.report import budget_line, settings_of
    from .gridrun import sweep_and_report

    grid = Grid.from_toml(args.grid)
    points = grid.points()  # every config checked here, before any work
    resolve_batch(args.batch_models)  # a bad value is a user error before the store is created
    root = Path(args.out) if args.out else default_root()
    store = Store(root)
    if args.dry_run:
        return _dry_run(grid, points, store, args.json)
    check_options(args.executor, args.workers, gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run)
    configs = with_loggers(grid.configs(), args)  # --tensorboard (not part of the run key)
    _check_buildable(configs)
    settings = settings_of(configs, grid=str(args.grid), executor=args.executor, store=str(store.path))
    if not args.json:
        print(f"prealign sweep: {len(points)} runs from {args.grid}; {budget_line(settings)}", file=sys.stderr)
    return sweep_and_report(args, "sweep", root, points, configs, store, settings, workers=args.workers)
