"""``prealign analyze NAME ...``: one subcommand per entry of the analysis registry
(:mod:`prealign.reports.registry`), its options built from the entry's params and needs.

Every subcommand takes ``--out`` (the store / output root), ``--save`` (folder for the JSON and
PNG, default ``<out>/analysis/NAME``) and ``--json`` (the result as JSON on stdout, nothing else
there); entries that measure models also take RUN ids or ``--method …`` to train on the fly.
"""
from __future__ import annotations

import argparse
import json
import sys

from .args import DEVICE, FOLDER, NONNEG, POSITIVE, POSITIVE_FLOAT, SEED, STORE, Float, Floats, Int


TYPES = {"str": None, "int>=1": POSITIVE, "int>=0": NONNEG, "seed": SEED, "float>0": POSITIVE_FLOAT,
         "floats>=0": Floats(Float(0.0)), "odd>=3": Int(3, odd=True), "device": DEVICE}


def register(sub) -> None:
    from ..reports.registry import commands

    parser = sub.add_parser("analyze", help="measure stored runs: Hessian, landscape, robustness, OOD, ...")
    analyze_sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS")
    for entry in commands():
        p = analyze_sub.add_parser(entry.name, help=entry.help, description=entry.description or None)
        _sources(p, entry)
        for param in entry.params:
            _add(p, param)
        p.add_argument("--json", action="store_true", help="print the result as JSON on stdout (nothing else there)")
        p.set_defaults(func=lambda args, name=entry.name: _run(name, args))
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _add(p: argparse.ArgumentParser, param) -> None:
    if param.type == "flag":
        p.add_argument(f"--{param.name}", action="store_true", help=param.help)
        return
    shown = " ".join(map(str, param.default)) if isinstance(param.default, (list, tuple)) else param.default
    default = f" (default {shown})" if param.default is not None else ""
    p.add_argument(f"--{param.name}", type=TYPES[param.type], default=param.default, nargs=param.nargs,
                   choices=param.choices, help=param.help + default)


def _sources(p: argparse.ArgumentParser, entry) -> None:
    """RUN ids, the train-on-the-fly group and --surrogate, as the entry needs; --out and --save."""
    if "runs" in entry.needs:
        p.add_argument("runs", nargs="+", metavar="RUN", help="stored run ids or key prefixes (`prealign runs list`)")
    if "models" in entry.needs:
        p.add_argument("runs", nargs="*", metavar="RUN", help="stored run ids or key prefixes (`prealign runs list`)")
        g = p.add_argument_group("train on the fly instead (stored in --out, reused when already finished)")
        g.add_argument("--method", nargs="+", default=None, metavar="M", help="methods, e.g. bp fa ifa ifa@30 ifa@60")
        g.add_argument("--dataset", default="mnist5k", help="data set for --method (default mnist5k)")
        g.add_argument("--epochs", type=NONNEG, default=20, help="epochs for --method (default 20)")
        g.add_argument("--seeds", type=POSITIVE, default=3, help="seeds 0..N-1 per method for --method (default 3)")
        g.add_argument("--hidden", type=POSITIVE, nargs="+", default=[100], help="MLP hidden widths (default 100)")
        g.add_argument("--model", default="mlp", help="model for --method: mlp, lenet, alexnet")
        g.add_argument("--batch-size", type=POSITIVE, default=64)
        g.add_argument("--lr", type=POSITIVE_FLOAT, default=1e-4)
        p.add_argument("--test-size", type=POSITIVE, default=None, help="use the first N test images (default: all)")
        p.add_argument("--device", type=DEVICE, default="cpu", help="cpu, cuda or auto (default cpu)")
    if "surrogates" in entry.needs:
        p.add_argument("--surrogate", nargs="+", default=None, metavar="RUN",
                       help="BP runs for the transfer attack (default: BP runs among RUN, else trained and stored)")
    stored = "runs" in entry.needs or "models" in entry.needs
    p.add_argument("--out", type=STORE if stored else FOLDER, default=None,
                   help=f"output root{' holding the store' if stored else ''} (default $PREALIGN_RUNS or ./prealign-runs)")
    p.add_argument("--save", type=FOLDER, default=None, help=f"folder for the JSON and PNG (default <out>/analysis/{entry.name})")


def _run(name: str, args) -> int:
    from ..reports.registry import execute
    from ..run.store import json_safe
    from .args import console

    outcome = execute(name, args)
    for note in outcome.notes:
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(json_safe(outcome.result)))
        print(f"wrote {', '.join(map(str, outcome.files))}", file=sys.stderr)
        return 0
    from ..stats import rich_table

    for line in outcome.lines:
        print(line)
    for columns, rows, title in outcome.tables:
        console().print(rich_table(columns, rows, title=title))
    print(f"wrote {', '.join(map(str, outcome.files))}")
    return 0
