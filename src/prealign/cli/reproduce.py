"""``prealign reproduce NAME|all``: regenerate the papers' figures and tables, with a claims checklist.

Examples::

    prealign reproduce --list
    prealign reproduce ifa_fig4 --budget quick --workers 2
    prealign reproduce rnp_table_s5 --budget paper --only dataset=fashion-mnist
    prealign reproduce all --budget quick --out reproduction
    prealign reproduce ifa_* --executor ray --address auto
"""
from __future__ import annotations

import sys
from pathlib import Path

from .args import (FOLDER, STORE, WORKERS, add_batch_models, add_cluster_options, add_json, add_tensorboard,
                   cluster_options, logger_fields, print_json)


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="regenerate every figure/table of both papers, with a claims checklist",
                       description="Run the declarative experiment behind a paper figure or table (or all of them): "
                                   "a resumable sweep into the result store, the analyses, figures mirroring the "
                                   "paper's panels, tables (mean ± sample std, exact rank-sum p) and a report with each "
                                   "claim held / not held / inconclusive / not run from its declared test.")
    p.add_argument("name", nargs="?", help="experiment name (see --list), a comma-separated list, a prefix glob "
                                           "such as 'ifa_*', a path to a .toml file, or 'all'")
    p.add_argument("--list", action="store_true", help="list the experiments with paper reference, models, data, budgets")
    p.add_argument("--budget", default="quick", choices=("smoke", "quick", "paper"),
                   help="smoke: seconds, tiny data; quick: minutes on 2 cores, offline stand-in data (default); "
                        "paper: the paper's settings and data")
    add_cluster_options(p)
    p.add_argument("--workers", type=WORKERS, default=None, help="local worker processes, one torch thread each "
                                                             "(default: number of CPU cores; 1 = serial in this process)")
    add_batch_models(p, "train runs that differ only in seed, method, init or noise (MLPs, any rule) as one group of "
                        "up to G, bitwise as alone; auto (default): 8 where measured to win; off (or 1); packing logged")
    p.add_argument("--only", action="append", default=[], metavar="AXIS=V1,V2",
                   help="restrict a grid axis to some of its values (repeatable), e.g. dataset=fashion-mnist")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report on the runs already finished in the store (e.g. while a sweep runs)")
    p.add_argument("--out", type=FOLDER, default="reproduction", help="folder for reports, figures and tables (default ./reproduction)")
    p.add_argument("--store", type=STORE, default=None, help="result store folder (default: <out>/store); finished runs in it are reused")
    add_tensorboard(p)
    add_json(p, "each experiment's result (verdicts, run counts, report path), or the --list")
    p.set_defaults(func=run)


def _only(items: list[str]) -> dict:
    from ..errors import PrealignError

    out = {}
    for item in items:
        axis, sep, values = item.partition("=")
        if not sep or not axis or not values:
            raise PrealignError(f"--only expects AXIS=V1,V2 (e.g. dataset=fashion-mnist), got {item!r}")
        out.setdefault(axis.strip(), []).extend(v.strip() for v in values.split(","))
    return out


def list_experiments() -> str:
    from ..experiments import BUDGETS, load_all
    from ..experiments.design import plan, summary

    lines = []
    for exp in load_all():
        refs = ", ".join([exp.paper["ref"], *exp.paper.get("also", [])])
        lines.append(f"{exp.name:15s} {exp.paper['paper'].upper():3s} {refs}: {exp.paper['title']}")
        lines.append(f"{'':15s}     models: {'; '.join(exp.models('paper'))}")
        for b in BUDGETS:
            n = len(exp.points(b))
            lines.append(f"{'':15s}     {b:5s}: {n:4d} runs on {', '.join(exp.datasets(b))}; {summary(plan(exp, b))}")
    return "\n".join(lines)


def run(args) -> int:
    from ..errors import PrealignError
    from ..experiments import select
    from ..experiments.runner import reproduce, reproduce_many
    from ..run.store import Store

    if args.list:
        if args.json:
            from ..experiments import BUDGETS, load_all

            from ..experiments.design import plan

            print_json([{"name": e.name, "paper": e.paper["paper"], "ref": e.paper["ref"], "title": e.paper["title"],
                         "runs": {b: len(e.points(b)) for b in BUDGETS},
                         "claims": {b: [vars(p) for p in plan(e, b)] for b in BUDGETS}} for e in load_all()])
        else:
            print(list_experiments())
        return 0
    if not args.name:
        raise PrealignError("name an experiment (or 'all'); `prealign reproduce --list` shows them")
    experiments = select(args.name)
    for exp in experiments:  # --tensorboard: a config field outside the run key
        exp.base.update(logger_fields(args))
    only = _only(args.only)
    from ..run.sweep import check_options
    from ..run.sweep_batched import resolve_batch

    resolve_batch(args.batch_models)  # a bad value is a user error before anything runs
    check_options(args.executor, args.workers, gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run,
                  address=args.address, runtime_env=args.runtime_env)
    if only and (len(experiments) != 1 or args.name == "all"):
        raise PrealignError("--only applies to a single experiment; name one experiment with it")
    if only:
        experiments[0].points(args.budget, only)  # an unknown axis or value fails here, before the store opens
    from ..experiments.design import plan, summary

    for exp in experiments:  # the design is known before anything runs: say what this budget cannot decide
        plans = [p for p in plan(exp, args.budget, only) if p.status != "decidable" and not p.same_as]
        if plans and not args.json:
            print(f"{exp.name} at budget {args.budget}: {summary(plans)}", file=sys.stderr)
    out = Path(args.out)
    store = Store(args.store or out / "store")
    kwargs = dict(**cluster_options(args), workers=args.workers, train=not args.report_only, batch_models=args.batch_models,
                  log=None if args.json else (lambda line: print(line, file=sys.stderr)))
    if len(experiments) == 1 and args.name != "all":
        res = reproduce(experiments[0], args.budget, store, out, only=only, **kwargs)
        if args.json:
            print_json(_result_json(res))
            return 0
        print(f"{res.name} ({res.ref}, budget {args.budget}): "
              + ", ".join(f"{n} {s}" for s, n in res.counts.items() if n) + f" in {res.seconds:.0f} s")
        for v in res.verdicts:
            if v.same_as:  # one claim, one row: the test is counted under the claim it repeats
                print(f"  [same test as {v.same_as}] {v.id}: {v.text}")
                continue
            print(f"  [{v.status}] {v.id}: {v.text}  ({v.numbers_text()}{' — ' + v.reason if v.reason else ''})")
        if res.missing:
            print(f"  not produced: {', '.join(w for w, _ in res.missing)} (see the report)")
        print(f"report: {res.folder / 'report.md'}")
        return 0
    results = reproduce_many(experiments, args.budget, store, out, **kwargs)
    if args.json:
        print_json({"index": str(out / "index.md"), "experiments": [_result_json(r) for r in results]})
        return 0
    print(f"{len(results)} experiments reproduced at budget {args.budget}; index: {out / 'index.md'}")
    print((out / "claims.md").read_text(), file=sys.stdout)
    return 0


def _result_json(res) -> dict:
    """One experiment's result for ``--json``: run counts, each claim's verdict with its numbers, the report."""
    return {"name": res.name, "ref": res.ref, "budget": res.budget, "runs": res.counts, "seconds": res.seconds,
            "claims": [{"id": v.id, "status": v.status, "text": v.text, "test": v.test, "numbers": dict(v.numbers),
                        "reason": v.reason, "same_as": v.same_as} for v in res.verdicts],
            "not_produced": [w for w, _ in res.missing], "report": str(res.folder / "report.md")}
