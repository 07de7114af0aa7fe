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

from .args import IN_FILE, STORE, WORKERS, add_batch_models, add_cluster_options, add_tensorboard, with_loggers


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run your own grid of configs (TOML) resumably; table, figures, report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", type=IN_FILE, metavar="GRID.toml", help="the grid file: [base], [grid], [zip] (docs/sweeps.md)")
    p.add_argument("--dry-run", action="store_true", help="list the runs (and which are already stored); train nothing; "
                   "over 10,000 runs: only their count")
    p.add_argument("--yes", action="store_true", help="run a grid of more than 10,000 runs (without it such a sweep is "
                   "refused, saying its size)")
    p.add_argument("--workers", type=WORKERS, default=None,
                   help="local worker processes, one torch thread each (default: CPU cores; 1 = serial in this process)")
    add_batch_models(p, "train compatible MLP runs (any rule; same data, widths and optimizer settings) together as "
                        "one batched model, bitwise as alone: auto (default; groups of 8 where measured to win), off "
                        "(or 1), or a group size G up to 256; the packing is logged")
    p.add_argument("--out", type=STORE, default=None,
                   help="output root holding the result store (default ./prealign-runs or $PREALIGN_RUNS)")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout (the summary, or the run list with --dry-run)")
    add_tensorboard(p)
    add_cluster_options(p)  # --executor, --address, --storage, --gpus-per-run, --cpus-per-run, --runtime-env
    p.set_defaults(func=main)


def _dry_run(grid, points, store, as_json: bool) -> int:
    from ..run.grid import group_label, stored_status

    statuses = stored_status(points, store)
    runs = [{"run": group_label(p), "seed": p["config"].get("seed", 0), "axes": p["axes"], "key": key, "stored": s}
            for p, (key, s) in zip(points, statuses)]
    done = sum(s in ("finished", "diverged") for _, s in statuses)
    unchecked = sorted({p["config"].get("model") for p, (_, s) in zip(points, statuses) if s == "unchecked"})
    if as_json:
        print(json.dumps({"grid": grid.name, "runs": runs, "total": len(runs), "stored": done,
                          "collapsed": grid.collapsed, "store": str(store.path)}, indent=2))
        return 0
    for i, r in enumerate(runs, 1):
        print(f"{i:4d}  {r['stored']:9s} {r['key'] or '-':16s}  {r['run']} seed={r['seed']}")
    note = (f"; {grid.collapsed} combination(s) merged where a method-specific value does not apply"
            if grid.collapsed else "")
    print(f"{len(runs)} runs, {done} already stored, {len(runs) - done} to train{note} (store: {store.path})")
    if any(s == "new*" for _, s in statuses):
        print("new*: a run of the same config is stored under a key from before run keys saw the network, or for "
              "another network; it is not reused", file=sys.stderr)
    if unchecked:
        print(f"unchecked: a dry run does not import the model module(s) {', '.join(unchecked)} (only building a model "
              "does), so their run keys and stored status are known when the sweep runs", file=sys.stderr)
    return 0


def _count_only(grid, n: int, store, as_json: bool) -> int:
    """A dry run of a grid over :data:`prealign.run.grid.LARGE_SWEEP` combinations: the count, at once."""
    from ..run.grid import LARGE_SWEEP, MAX_POINTS, METHOD_KEYS, _fields

    keys = {k for section in (grid.axes, grid.zipped) for axis, values in section.items() for v in values
            for k in _fields(v, axis)}
    fewer = " at most" if keys & {*METHOD_KEYS, "method"} else ""  # points merge where a method-specific value does not apply
    if as_json:
        print(json.dumps({"grid": grid.name, "total": n, "listed": False, "limit": LARGE_SWEEP, "store": str(store)}))
        return 0
    runnable = (f"a sweep of it needs --yes" if n <= MAX_POINTS else
                f"more than the {MAX_POINTS:,} one grid may expand: split it into several grid files")
    print(f"{grid.name}:{fewer} {n:,} runs; too many to list (over {LARGE_SWEEP:,}); {runnable}")
    return 0


def _check_buildable(configs) -> None:
    """A data set that is missing, or a model that does not fit its data, this machine's memory or its
    rule, fails before any training (one build per distinct network shape, rule and batch)."""
    from ..run.config import build, load_data

    seen = set()
    for c in configs:
        ident = (c.dataset, c.train_subset, c.model, c.hidden, c.activation, c.method_object().rule, c.batch_size,
                 c.noise_batch_size if c.noise_samples else 0)
        if ident not in seen:
            seen.add(ident)
            build(c, load_data(c))


def main(args) -> int:
    from ..run.grid import LARGE_SWEEP, Grid
    from ..run.store import DB_NAME, Store, default_root
    from ..run.sweep import check_options
    from ..run.sweep_batched import resolve_batch
    from ..reports.compare import budget_line, settings_of
    from .gridrun import sweep_and_report

    check_options(args.executor, args.workers, gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run,
                  address=args.address, runtime_env=args.runtime_env)
    grid = Grid.from_toml(args.grid)
    root = Path(args.out) if args.out else default_root()
    n = grid.size()  # from the axis lengths: nothing expanded yet
    if args.dry_run and n > LARGE_SWEEP:
        return _count_only(grid, n, root, args.json)
    if not args.dry_run:
        grid.check_size(yes=args.yes)
    points = grid.points()  # every config checked here, before any work
    if args.dry_run:  # reads the store if there is one; writes nothing
        db = root if root.suffix in (".sqlite", ".db") else root / DB_NAME
        return _dry_run(grid, points, Store(root, read_only=True) if db.is_file() else _NoStore(db), args.json)
    resolve_batch(args.batch_models)
    configs = with_loggers(grid.configs(), args)  # --tensorboard (not part of the run key)
    _check_buildable(configs)  # before the store is opened: a bad model leaves nothing behind
    store = Store(root)
    settings = settings_of(configs, grid=str(args.grid), executor=args.executor, store=str(store.path))
    if not args.json:
        print(f"prealign sweep: {len(points)} runs from {args.grid}; {budget_line(settings)}", file=sys.stderr)
    return sweep_and_report(args, "sweep", root, points, configs, store, settings, workers=args.workers)


class _NoStore:
    """Where a dry run looks when there is no store yet: nothing is stored (and nothing is created)."""

    def __init__(self, path):
        self.path = path

    def find(self, key):
        return None

    def same_config(self, config):
        return []
