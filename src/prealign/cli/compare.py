"""``prealign compare``: train several methods over several seeds and report them side by side.

The main job: does IFA / noise-pretrained FA learn like backprop while plain FA lags? Every run
goes through :func:`prealign.run.config.run` into the result store (``--out``), so an interrupted
comparison resumes and a repeated one is served from the store; the figures, report, CSV and
JSON land in a fresh folder ``<out>/compare-<timestamp>/``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from .args import ANGLES, DEVICE, NONNEG, NONNEG_FLOAT, POSITIVE, POSITIVE_FLOAT, STORE, Seeds, Widths
from .args import add_cluster_options, cluster_options
from .args import console as _console

DEFAULTS = dict(dataset="mnist5k", methods="bp,fa,ifa,rnp", seeds="3", epochs=30, batch_size=64, lr=1e-4,
                noise_samples=500_000, hidden="100")


def register(sub) -> None:
    p = sub.add_parser("compare", help="train methods side by side over seeds; table, figures, report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=DEFAULTS["dataset"], help="data set name (default mnist5k, offline)")
    p.add_argument("--model", default="mlp", help="mlp (default), lenet or alexnet")
    p.add_argument("--hidden", type=Widths(), default=DEFAULTS["hidden"], help="mlp hidden widths, e.g. 100 or 100,100 (default 100)")
    p.add_argument("--methods", default=DEFAULTS["methods"], help="comma-separated methods (default bp,fa,ifa,rnp)")
    p.add_argument("--angles", type=ANGLES, default=[], help="IFA angles in degrees: adds ifa@θ for each, e.g. 15,45")
    p.add_argument("--seeds", type=Seeds(), default=DEFAULTS["seeds"], help="number of seeds (3 → 0,1,2) or a list 0,5,7 (default 3)")
    p.add_argument("--epochs", type=NONNEG, default=DEFAULTS["epochs"], help="maximum epochs (default 30)")
    p.add_argument("--batch-size", type=POSITIVE, default=DEFAULTS["batch_size"], help="default 64")
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=DEFAULTS["lr"], help="Adam learning rate (default 1e-4)")
    p.add_argument("--optimizer", default="adam", help="adam (default), adamw or sgd")
    p.add_argument("--weight-decay", type=NONNEG_FLOAT, default=0.0)
    p.add_argument("--noise-samples", type=NONNEG, default=DEFAULTS["noise_samples"],
                   help="noise-pretraining samples for rnp (default 500000, the noise paper's)")
    p.add_argument("--patience", type=POSITIVE, default=None, help="stop after this many epochs without a better test accuracy")
    p.add_argument("--same-init", action=argparse.BooleanOptionalAction, default=True,
                   help="every method of a seed starts from the same network (noise paper B.6; default on)")
    p.add_argument("--device", type=DEVICE, default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=POSITIVE, default=None,
                   help="runs trained in parallel processes (default: 2 on a multi-core CPU, 1 on a GPU)")
    p.add_argument("--threads", type=POSITIVE, default=None,
                   help="torch threads with --workers 1 (default 1 for mlp: small nets train fastest single-threaded); "
                        "parallel workers use one thread each")
    p.add_argument("--batch-models", default="auto", metavar="auto|off|G",
                   help="train compatible runs (MLPs under bp/fa/ifa/rnp) together as one batched model: auto "
                        "(default; where it was measured to win), off, or a group size G")
    p.add_argument("--out", type=STORE, default=None, help="output root holding the result store (default ./prealign-runs or $PREALIGN_RUNS)")
    add_cluster_options(p)
    p.add_argument("--json", action="store_true", help="print only the summary JSON on stdout")
    p.set_defaults(func=main)


def build_configs(args) -> list:
    from ..run.config import RunConfig
    from ..errors import ConfigError

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods += [f"ifa@{a:g}" for a in args.angles]
    if not methods:
        raise ConfigError("--methods is empty; give e.g. bp,fa,ifa,rnp")
    hidden = tuple(args.hidden)
    configs = []
    for method in dict.fromkeys(methods):
        for seed in args.seeds:
            configs.append(RunConfig(
                method=method, dataset=args.dataset, model=args.model, hidden=hidden, epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
                noise_samples=args.noise_samples, patience=args.patience, seed=seed, same_init=args.same_init,
                device=args.device))
    return configs


def main(args) -> int:
    import torch

    from ..run.config import build, load_data
    from ..device import resolve_device
    from ..errors import PrealignError
    from ..viz.report import budget_line, table, write_compare_report
    from ..run.store import Store, default_root
    from ..run.sweep import check_options, run_sweep
    from ..run.sweep_batched import resolve_batch
    from ..run.trainer import TrainResult

    configs = build_configs(args)  # unknown methods / bad values fail here, before any work
    resolve_batch(args.batch_models)
    check_options(workers=args.workers)
    data = load_data(configs[0])  # unknown or missing data set fails here
    build(configs[0], data)  # and a model that does not fit the data (lenet on 8×8 digits)
    device = resolve_device(args.device)
    root = Path(args.out) if args.out else default_root()
    store = Store(root)
    workers = args.workers or (1 if device.type != "cpu" else min(2, os.cpu_count() or 1))
    threads = 1 if workers > 1 else args.threads or (1 if args.model == "mlp" and device.type == "cpu" else None)
    labels = list(dict.fromkeys(c.label for c in configs))
    n_in = 1
    for d in data.x_train.shape[1:]:
        n_in *= int(d)
    arch = ("-".join(str(v) for v in (n_in, *configs[0].hidden, data.num_classes)) if args.model == "mlp" else args.model)
    settings = {"dataset": args.dataset, "architecture": arch, "model": args.model, "methods": labels,
                "seeds": args.seeds, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "optimizer": args.optimizer, "weight_decay": args.weight_decay, "patience": args.patience,
                "noise_samples": args.noise_samples if any(c.noise_samples for c in configs) else 0,
                "same_init": args.same_init, "device": str(device), "workers": workers, "threads": threads,
                "train_samples": len(data.y_train), "test_samples": len(data.y_test), "store": str(store.path)}
    if not args.json:
        print(f"prealign compare: {', '.join(labels)} on {args.dataset} ({arch}); {budget_line(settings)}", file=sys.stderr)
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads and workers <= 1:
        torch.set_num_threads(threads)
    try:  # the sweep machinery: resumable, compatible runs trained batched (--batch-models), failures isolated
        outcomes = run_sweep(configs, store, workers=workers, batch_models=args.batch_models, **cluster_options(args))
    finally:
        torch.set_num_threads(previous_threads)
    failed = [o for o in outcomes if not o.done]
    if failed:
        raise PrealignError(f"{len(failed)} of {len(outcomes)} runs failed (first: {failed[0].error}); the finished "
                            f"ones are stored in {store.path}: fix the cause and run the same command again to resume")
    results: dict[str, TrainResult] = {c.key(): store.result(store.find(c.key())["id"]) for c in configs}
    wall = time.perf_counter() - start
    groups = {label: [results[c.key()] for c in configs if c.label == label] for label in labels}
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = root / f"compare-{stamp}"
    i = 1
    while folder.exists():
        folder, i = root / f"compare-{stamp}-{i}", i + 1
    summary = write_compare_report(folder, groups, settings, wall)
    if args.json:
        print(json.dumps(json.loads((folder / "summary.json").read_text()), indent=2))
        return 0
    from ..analysis.stats import rich_table

    columns, cells = table(summary["methods"])
    console = _console()
    selection = ", ".join(sorted({m["selection"] for m in summary["methods"]}))
    console.print(rich_table(columns, cells, title=f"{args.dataset}, {arch} — test accuracy at the selected epoch "
                                                    f"(selection: {selection}), mean ± sample std over "
                                                    f"{len(settings['seeds'])} seed(s); angles in degrees"))
    console.print(budget_line(settings), style="dim")
    layers = ", ".join(f"{k} = layer `{v}`" for k, v in summary["layers"].items())
    console.print(f"{layers}. Wall time {wall:.1f} s. Report: {folder / 'report.md'}")
    return 0
