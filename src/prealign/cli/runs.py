"""``prealign runs list | show RUN | export --csv FILE``: browse the result store.

RUN is a run id (``12``) or a unique prefix of its key (``3fa9c1``). ``list`` and ``export`` take
the filters ``--method`` (``ifa`` matches every ``ifa@θ``), ``--model``, ``--dataset``, ``--status``.
Every action takes ``--out DIR`` and ``--json`` (JSON on stdout, nothing else there); into a pipe
the tables are tab-separated lines.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime

from ..run.store import STATUSES
from .args import OUT_FILE, add_json, add_out, console, print_json

# runs list: (header, summary column, format)
COLUMNS = [("id", "id", str), ("key", "key", lambda k: k[:8]), ("method", "method", str), ("dataset", "dataset", str),
           ("model", "model", str), ("hidden", "hidden", str), ("lr", "lr", "{:g}".format),
           ("epochs", "epochs", str), ("seed", "seed", str), ("status", "status", str), ("device", "trained_on", str),
           ("best acc (%)", "best_test_acc", lambda v: _pct(v)), ("best epoch", "best_epoch", str),
           ("epochs run", "epochs_run", str),
           ("created", "created", lambda t: datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M"))]


def register(sub) -> None:
    p = sub.add_parser("runs", help="list, show and export stored runs", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out(p)
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    ls = rsub.add_parser("list", help="one line per run (config, status, best accuracy)")
    _filters(ls)
    add_json(ls, "every matching run (config and summary)")
    ls.set_defaults(func=list_runs)
    show = rsub.add_parser("show", help="config, summary and per-epoch metrics of one run")
    show.add_argument("run", metavar="RUN")
    add_json(show, "the run and its per-epoch records")
    show.set_defaults(func=show_run)
    ex = rsub.add_parser("export", help="per-epoch metrics and config of every (matching) run as CSV")
    ex.add_argument("--csv", type=OUT_FILE, required=True, metavar="FILE")
    ex.add_argument("runs", nargs="*", metavar="RUN", help="only these runs (default: all)")
    _filters(ex)
    add_json(ex, "what was written (file, rows)")
    ex.set_defaults(func=export_runs)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _filters(p) -> None:
    p.add_argument("--method", help="only this method label (ifa@30) or method (ifa: every angle)")
    p.add_argument("--model", help="only this model (mlp, lenet, alexnet)")
    p.add_argument("--dataset", help="only this data set")
    p.add_argument("--status", choices=STATUSES, help="only runs with this status")


def _selected(args) -> dict:
    return {k: getattr(args, k) for k in ("method", "model", "dataset", "status")}


def _store(args):
    """The store at ``--out``, opened read-only: browsing never writes (works on a read-only store)."""
    from ..run.store import Store

    return Store(args.out, read_only=True)


def _pct(v):
    return "—" if v is None or v != v else f"{100 * v:.2f}"


def list_runs(args) -> int:
    from ..stats import rich_table

    store = _store(args)
    runs = store.summaries(**_selected(args))
    if args.json:
        print_json(runs)
        return 0
    out = console()
    if not runs:
        chosen = ", ".join(f"{k} {v}" for k, v in _selected(args).items() if v is not None)
        print(f"no runs{' with ' + chosen if chosen else ''} in {store.path}", file=sys.stderr)
        return 0
    rows = [[("—" if r.get(col) is None else fmt(r[col])) for _, col, fmt in COLUMNS] for r in runs]
    out.print(rich_table([h for h, _, _ in COLUMNS], rows, title=str(store.path)))
    return 0


def show_run(args) -> int:
    from ..stats import rich_table

    store = _store(args)
    row = store.get(args.run)
    epochs = store.epochs(row["id"])
    if args.json:
        print_json({**row, "epochs": epochs})
        return 0
    out = console()
    out.print(f"[bold]run {row['id']}[/] key {row['key']}  {row['label']} on {row['dataset']}, seed {row['seed']}: "
              f"[bold]{row['status']}[/]" + (f" ({row['error']})" if row["error"] else ""), markup=True)
    out.print("config: " + ", ".join(f"{k}={v}" for k, v in row["config"].items()), markup=False)
    s = row["summary"]
    if s:
        out.print(f"best test accuracy {_pct(s['best_test_acc'])}% at epoch {s['best_epoch']}; epochs run "
                  f"{s['epochs_run']}; diverged {s['diverged']}; {s['seconds']:.1f} s training + "
                  f"{s['noise_seconds']:.1f} s noise pretraining")
    if epochs:
        keys = [k for k in epochs[0] if k not in ("epoch", "seconds", "eval_seconds")]
        cells = [[str(e["epoch"])] + [(_pct(e.get(k)) if k.endswith("_acc") else f"{e.get(k, float('nan')):.4g}") for k in keys]
                 for e in epochs]
        out.print(rich_table(["epoch"] + [k + (" (%)" if k.endswith("_acc") else " (°)" if "angle" in k else "")
                                          for k in keys], cells))
    return 0


def export_runs(args) -> int:
    store = _store(args)
    n = store.export_csv(args.csv, args.runs or None, **_selected(args))
    if args.json:
        print_json({"csv": str(args.csv), "rows": n, "store": str(store.path)})
    else:
        print(f"wrote {n} rows (one per run and epoch) to {args.csv}", file=sys.stderr)
    return 0
