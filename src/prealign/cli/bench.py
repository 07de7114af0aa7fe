"""``prealign bench [--json] [--quick] [--only ROW ...] [--device auto|cpu|cuda]``: the benchmark suite."""
from __future__ import annotations

import sys

from .args import DEVICE, THREADS, add_json, print_json


def register(subparsers) -> None:
    from ..bench import ROWS

    p = subparsers.add_parser("bench", help="benchmark ratios measured side by side (rules vs BP, vs the usual "
                                            "recipe, vs the GEMM limit, vs PyHessian, sweeps, batched training)")
    add_json(p, "the results (progress on stderr)")
    p.add_argument("--quick", action="store_true", help="reduced sizes and repetitions (under a minute; for CI)")
    p.add_argument("--only", nargs="+", choices=ROWS, metavar="ROW", help=f"run only these rows: {', '.join(ROWS)}")
    p.add_argument("--device", type=DEVICE, default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--threads", type=THREADS, default=None,
                   help="torch threads for the run (default: one per core; 1 with --quick); 1 is steadier on a shared machine")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from ..bench import format_table, run_bench

    log = None if args.json else (lambda msg: print(f"  done {msg}", file=sys.stderr))
    result = run_bench(quick=args.quick, device=args.device, only=args.only, threads=args.threads, log=log)
    if args.json:
        print_json(result)
    else:
        print(format_table(result))
    return 0
