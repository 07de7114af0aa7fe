"""``prealign compare``: train several methods over several seeds and report them side by side.

The main job: does IFA / noise-pretrained FA learn like backprop while plain FA lags? Every run
goes through :func:`prealign.run.config.run` into the result store (``--out``), so an interrupted
comparison resumes and a repeated one is served from the store; the figures, report, CSV and
JSON land in a fresh folder ``<out>/compare-<timestamp>/``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .args import ANGLES, DEVICE, NONNEG, NONNEG_FLOAT, POSITIVE, POSITIVE_FLOAT, STORE, THREADS, WORKERS, Seeds, Widths
from .args import add_batch_models, add_cluster_options, add_tensorboard, logger_fields

DEFAULTS = dict(dataset="mnist5k", methods="bp,fa,ifa,rnp", seeds="3", epochs=30, batch_size=64, lr=1e-4,
                noise_samples=500_000, hidden="100")


def register(sub) -> None:
    p = sub.add_parser("compare", help="train methods side by side over seeds; table, figures, report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=DEFAULTS["dataset"], help="data set name (default mnist5k, offline)")
    p.add_argument("--model", default="mlp", help="mlp (default), lenet, alexnet, resnet20, resnet56, vit, or a factory's import path package.module:function (docs/models.md)")
    p.add_argument("--hidden", type=Widths(), default=DEFAULTS["hidden"], help="mlp hidden widths, e.g. 100 or 100,100 (default 100)")
    p.add_argument("--methods", default=DEFAULTS["methods"],
                   help="comma-separated methods (default bp,fa,ifa,rnp); X+noise adds noise warm-up, e.g. bp+noise")
    p.add_argument("--angles", type=ANGLES, default=[], help="IFA angles in degrees: adds ifa@θ for each, e.g. 15,45")
    p.add_argument("--seeds", type=Seeds(), default=DEFAULTS["seeds"], help="number of seeds (3 → 0,1,2) or a list 0,5,7 (default 3)")
    p.add_argument("--epochs", type=NONNEG, default=DEFAULTS["epochs"], help="maximum epochs (default 30)")
    p.add_argument("--train-subset", type=POSITIVE, default=None, help="train on the first N training samples only (default: all)")
    p.add_argument("--batch-size", type=POSITIVE, default=DEFAULTS["batch_size"], help="default 64")
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=DEFAULTS["lr"], help="Adam learning rate (default 1e-4)")
    p.add_argument("--optimizer", default="adam", help="adam (default), adamw or sgd")
    p.add_argument("--weight-decay", type=NONNEG_FLOAT, default=0.0)
    p.add_argument("--noise-samples", type=NONNEG, default=DEFAULTS["noise_samples"],
                   help="noise-pretraining samples of rnp and of X+noise warm-up methods such as bp+noise "
                        "(default 500000, the noise paper's); bp, fa, ifa ... stay noise-free")
    p.add_argument("--patience", type=POSITIVE, default=None, help="stop after this many epochs without a better "
                   "validation accuracy (10 % of the training set is held out; the run is selected on it)")
    p.add_argument("--same-init", action=argparse.BooleanOptionalAction, default=True,
                   help="every method of a seed starts from the same network (noise paper B.6; default on)")
    p.add_argument("--device", type=DEVICE, default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=WORKERS, default=None,
                   help="runs trained in parallel processes (default: 2 on a multi-core CPU, 1 on a GPU)")
    p.add_argument("--threads", type=THREADS, default=None,
                   help="torch threads with --workers 1 (default 1 for mlp: small nets train fastest single-threaded); "
                        "parallel workers use one thread each")
    add_batch_models(p, "train compatible runs (MLPs, any rule) together as one batched model, bitwise as alone: "
                        "auto (default; where it was measured to win), off (or 1), or a group size G up to 256")
    p.add_argument("--yes", action="store_true", help="run a comparison of more than 10,000 runs (methods x seeds)")
    p.add_argument("--out", type=STORE, default=None, help="output root holding the result store (default ./prealign-runs or $PREALIGN_RUNS)")
    add_cluster_options(p)
    p.add_argument("--json", action="store_true", help="print only the summary JSON on stdout")
    add_tensorboard(p)
    p.set_defaults(func=main)


def build_grid(args):
    """The comparison as a grid (:mod:`prealign.run.grid`): the options as its base, methods × seeds."""
    from ..errors import ConfigError
    from ..run.grid import Grid

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods += [f"ifa@{a:g}" for a in args.angles]
    if not methods:
        raise ConfigError("--methods is empty; give e.g. bp,fa,ifa,rnp")
    base = dict(dataset=args.dataset, model=args.model, hidden=list(args.hidden), epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
                noise_samples=args.noise_samples, patience=args.patience, train_subset=args.train_subset,
                same_init=args.same_init, device=args.device, **logger_fields(args))
    base = {k: v for k, v in base.items() if v is not None}
    return Grid(base, {"method": list(dict.fromkeys(methods)), "seed": list(args.seeds)}, name="compare")


def build_configs(args) -> list:
    """The RunConfigs of the comparison, method-major (every seed of a method, then the next method)."""
    return build_grid(args).configs()


def main(args) -> int:
    import torch

    from ..device import resolve_device
    from ..run.config import RunConfig, build, load_data
    from ..run.store import Store, default_root
    from ..run.sweep import check_options
    from ..run.sweep_batched import resolve_batch
    from ..reports.compare import budget_line, settings_of

    grid = build_grid(args)
    grid.check_size(yes=args.yes)  # methods x seeds, before anything is expanded
    points = grid.points()  # unknown methods / bad values fail here, before any work
    configs = [RunConfig.from_dict(p["config"]) for p in points]
    resolve_batch(args.batch_models)
    check_options(args.executor, args.workers, gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run,
                  address=args.address, runtime_env=args.runtime_env)
    data = load_data(configs[0])  # unknown or missing data set fails here
    build(configs[0], data)  # and a model that does not fit the data (lenet on 8×8 digits)
    device = resolve_device(args.device)
    root = Path(args.out) if args.out else default_root()
    store = Store(root)
    workers = args.workers or (1 if device.type != "cpu" else min(2, os.cpu_count() or 1))
    threads = 1 if workers > 1 else args.threads or (1 if args.model == "mlp" and device.type == "cpu" else None)
    settings = settings_of(configs, device=str(device), workers=workers, threads=threads, train_samples=len(data.y_train),
                           test_samples=len(data.y_test), store=str(store.path))
    if not args.json:
        print(f"prealign compare: {', '.join(settings['methods'])} on {args.dataset} ({settings['architecture']}); "
              f"{budget_line(settings)}", file=sys.stderr)
    previous_threads = torch.get_num_threads()
    if threads and workers <= 1:
        torch.set_num_threads(threads)
    try:
        from .gridrun import sweep_and_report

        return sweep_and_report(args, "compare", root, points, configs, store, settings, workers=workers)
    finally:
        torch.set_num_threads(previous_threads)
