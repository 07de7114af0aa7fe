"""``prealign runs list | show RUN | export --csv FILE``: browse the result store.

RUN is a run id (``12``) or a unique prefix of its key (``3fa9c1``).
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime

from .args import OUT_FILE, STORE
from .args import console as _console


def register(sub) -> None:
    p = sub.add_parser("runs", help="list, show and export stored runs", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=STORE, default=None, help="output root holding the result store (default ./prealign-runs or $PREALIGN_RUNS)")
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION")
    ls = rsub.add_parser("list", help="one line per run")
    ls.add_argument("--status", choices=("running", "finished", "diverged", "failed"))
    ls.add_argument("--dataset")
    ls.set_defaults(func=list_runs)
    show = rsub.add_parser("show", help="config, summary and per-epoch metrics of one run")
    show.add_argument("run", metavar="RUN")
    show.add_argument("--json", action="store_true", help="machine-readable")
    show.set_defaults(func=show_run)
    ex = rsub.add_parser("export", help="per-epoch metrics of every run as CSV")
    ex.add_argument("--csv", type=OUT_FILE, required=True, metavar="FILE")
    ex.add_argument("runs", nargs="*", metavar="RUN", help="only these runs (default: all)")
    ex.set_defaults(func=export_runs)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _store(args):
    """The store at ``--out``, opened read-only: browsing never writes (works on a read-only store)."""
    from ..run.store import Store

    return Store(args.out, read_only=True)


def _pct(v):
    return "—" if v is None or v != v else f"{100 * v:.2f}"


def list_runs(args) -> int:
    from ..analysis.stats import rich_table

    store = _store(args)
    rows = []
    for r in store.runs(status=args.status, dataset=args.dataset):
        s = r["summary"] or {}
        rows.append([str(r["id"]), r["key"][:8], r["label"], r["dataset"], str(r["seed"]), r["status"],
                     _pct(s.get("best_test_acc")), str(s.get("best_epoch", "—")), str(s.get("epochs_run", "—")),
                     datetime.fromtimestamp(r["created"]).strftime("%Y-%m-%d %H:%M")])
    console = _console()
    if not rows:
        console.print(f"no runs in {store.path}")
        return 0
    cols = ["id", "key", "method", "dataset", "seed", "status", "best acc (%)", "best epoch", "epochs", "created"]
    console.print(rich_table(cols, rows, title=str(store.path)))
    return 0


def show_run(args) -> int:
    from ..analysis.stats import rich_table
    from ..viz.report import _json_safe

    store = _store(args)
    row = store.get(args.run)
    epochs = store.epochs(row["id"])
    if args.json:
        print(json.dumps(_json_safe({**row, "epochs": epochs}), indent=2))
        return 0
    console = _console()
    console.print(f"[bold]run {row['id']}[/] key {row['key']}  {row['label']} on {row['dataset']}, seed {row['seed']}: "
                  f"[bold]{row['status']}[/]" + (f" ({row['error']})" if row["error"] else ""))
    console.print("config: " + ", ".join(f"{k}={v}" for k, v in row["config"].items()))
    s = row["summary"]
    if s:
        console.print(f"best test accuracy {_pct(s['best_test_acc'])}% at epoch {s['best_epoch']}; epochs run "
                      f"{s['epochs_run']}; diverged {s['diverged']}; {s['seconds']:.1f} s training + "
                      f"{s['noise_seconds']:.1f} s noise pretraining")
    if epochs:
        keys = [k for k in epochs[0] if k not in ("epoch", "seconds", "eval_seconds")]
        cells = [[str(e["epoch"])] + [(_pct(e.get(k)) if k.endswith("_acc") else f"{e.get(k, float('nan')):.4g}") for k in keys]
                 for e in epochs]
        console.print(rich_table(["epoch"] + [k + (" (%)" if k.endswith("_acc") else " (°)" if "angle" in k else "")
                                              for k in keys], cells))
    return 0


def export_runs(args) -> int:
    store = _store(args)
    n = store.export_csv(args.csv, args.runs or None)
    print(f"wrote {n} rows (one per run and epoch) to {args.csv}", file=sys.stderr)
    return 0
