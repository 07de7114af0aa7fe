"""``prealign analyze robustness|corruption|ood|dimensionality|meta``.

Models come from stored runs (``RUN``: id or key prefix in the store at ``--out``), grouped by
method label, or are trained on the fly through the store with ``--method … --dataset …
--epochs … --seeds …`` (a finished run with the same config is reused, never retrained). Each
command prints a table and writes JSON and a PNG figure to ``--save`` (default
``<out>/analysis/<command>``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..errors import PrealignError
from .args import DEVICE, FOLDER, NONNEG, POSITIVE, POSITIVE_FLOAT, SEED, STORE, Float, Floats
from .args import console as _console


# -- model sources ------------------------------------------------------------------------------
def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="stored run ids or key prefixes (`prealign runs list`)")
    g = p.add_argument_group("train on the fly instead (stored in --out, reused when already finished)")
    g.add_argument("--method", nargs="+", default=None, metavar="M", help="methods, e.g. bp fa ifa ifa@30 ifa@60")
    g.add_argument("--dataset", default="mnist5k", help="data set for --method (default mnist5k)")
    g.add_argument("--epochs", type=NONNEG, default=20, help="epochs for --method (default 20)")
    g.add_argument("--seeds", type=POSITIVE, default=3, help="seeds 0..N-1 per method for --method (default 3)")
    g.add_argument("--hidden", type=POSITIVE, nargs="+", default=[100], help="MLP hidden widths (default 100)")
    g.add_argument("--model", default="mlp", help="model for --method: mlp, lenet, alexnet, resnet20, resnet56, vit or package.module:function")
    g.add_argument("--batch-size", type=POSITIVE, default=64)
    g.add_argument("--lr", type=POSITIVE_FLOAT, default=1e-4)
    p.add_argument("--out", type=STORE, default=None, help="output root holding the store (default $PREALIGN_RUNS or ./prealign-runs)")
    p.add_argument("--save", type=FOLDER, default=None, help="folder for the JSON and PNG (default <out>/analysis/<command>)")
    p.add_argument("--test-size", type=POSITIVE, default=None, help="use the first N test images (default: all)")
    p.add_argument("--device", type=DEVICE, default="cpu", help="cpu, cuda or auto (default cpu)")


def _store(args, read_only: bool = False):
    from ..run.store import Store

    return Store(args.out, read_only=read_only)


def _config(args, method: str, seed: int):
    from ..run.config import RunConfig

    return RunConfig(method=method, dataset=args.dataset, model=args.model, hidden=tuple(args.hidden),
                     epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, device=args.device,
                     grad_alignment=False)


def _train_or_load(store, config, progress):
    from ..run.config import run

    result = run(config, store, progress=progress)
    return store.load_model(result.run_id if result.run_id is not None else store.find(config.key())["id"])


def _models(args, command: str):
    """``({label: [model per seed]}, data, store, description)`` from RUN ids or --method."""
    from ..run.config import load_data

    if bool(args.runs) == bool(args.method):
        raise PrealignError(f"`analyze {command}` needs either stored RUN ids or --method (with --dataset/--epochs/--seeds), "
                            "not both and not neither; e.g. `prealign analyze "
                            f"{command} --method bp fa ifa --epochs 20 --seeds 3`")
    store = _store(args, read_only=bool(args.runs))  # stored runs are only read; --method trains into the store
    models: dict[str, list] = {}
    if args.runs:
        datasets = set()
        for run in args.runs:
            model = store.load_model(run, device="cpu")
            models.setdefault(model.run_config.label, []).append(model)
            datasets.add((model.run_config.dataset, model.run_config.train_subset))
        if len(datasets) > 1:
            raise PrealignError(f"the runs use different data sets {sorted(map(str, datasets))}; analyse one data set at a time")
        config = next(iter(models.values()))[0].run_config
        what = f"runs {' '.join(map(str, args.runs))}"
    else:
        for method in args.method:
            for seed in range(args.seeds):
                config = _config(args, method, seed)
                model = _train_or_load(store, config, None)
                models.setdefault(config.label, []).append(model)
        what = f"{args.model} {args.hidden} {args.epochs} epochs, {args.seeds} seeds"
    data = load_data(config)
    if args.test_size:
        from dataclasses import replace

        data = replace(data, x_test=data.x_test[:args.test_size], y_test=data.y_test[:args.test_size])
    for seeds in models.values():
        for m in seeds:
            m.cpu().eval()
    return models, data, store, f"{data.name}, {what}"


def _save_dir(args, store_root: Path, command: str) -> Path:
    from .analyze import save_folder

    return save_folder(args.save, store_root, command)


def _print_table(columns, rows, title):
    from ..analysis.stats import rich_table

    _console().print(rich_table(columns, rows, title=title))


def _pm(values, scale=100.0, digits=1):
    from ..analysis.stats import fmt_pm, mean_std

    return fmt_pm(*mean_std(values), scale=scale, digits=digits)


# -- robustness ----------------------------------------------------------------------------------
def _robustness(args) -> int:
    from ..analysis import robustness as rob
    from ..analysis.stats import fmt_p, ranksum
    from ..viz.robustness import plot_adversarial

    models, data, store, what = _models(args, "robustness")
    surrogates = None
    if "transfer" in args.sources:
        if args.surrogate:
            surrogates = [store.load_model(r, device="cpu") for r in args.surrogate]
        elif "bp" in models:
            surrogates = models["bp"]
        elif args.method:
            surrogates = [_train_or_load(store, _config(args, "bp", s), None).cpu().eval() for s in range(args.seeds)]
        else:
            raise PrealignError("the transfer attack needs BP-trained surrogates: include BP runs, pass --surrogate RUN..., "
                                "or leave transfer out with --sources exact feedback")
        if list(models) == ["bp"] and len(surrogates) < 2 and not args.surrogate:
            raise PrealignError("transfer onto a BP model needs a second BP network: use --seeds 2 or more, or --surrogate RUN")
    report = rob.adversarial_report(models, data.x_test, data.y_test, epsilons=args.eps, attacks=args.attacks,
                                    sources=args.sources, surrogates=surrogates, steps=args.steps,
                                    step_size=args.step_size, seed=args.seed)
    report["data"] = what
    out = _save_dir(args, store.root, "robustness")
    (out / "adversarial.json").write_text(json.dumps(report, indent=1))
    plot_adversarial(report, out / "adversarial.png", title=what)
    eps = report["epsilons"]
    for attack in report["attacks"]:
        rows = []
        for method, per in report["results"].items():
            for source in report["sources"]:
                acc = per[attack][source]
                cells = [_pm([r[j] for r in acc]) for j in range(len(eps))]
                ref = report["results"].get("bp", {}).get(attack, {}).get(source)
                p = ranksum([r[-1] for r in acc], [r[-1] for r in ref]) if ref and method != "bp" else float("nan")
                rows.append([method, source, *cells, fmt_p(p)])
        _print_table(["method", "gradient", *[f"ε={e:g}" for e in eps], f"p vs bp @ε={eps[-1]:g}"], rows,
                     f"{attack.upper()} accuracy (%) under attack — {what}")
    print(f"wrote {out / 'adversarial.json'} and {out / 'adversarial.png'}")
    return 0


# -- corruption -----------------------------------------------------------------------------------
def _corruption(args) -> int:
    from ..analysis import robustness as rob
    from ..analysis.stats import fmt_p, ranksum
    from ..viz.robustness import plot_corruption

    models, data, store, what = _models(args, "corruption")
    report = rob.corruption_report(models, data.x_test, data.y_test, corruptions=args.corruptions,
                                   severities=args.severities, seed=args.seed)
    report["data"] = what
    out = _save_dir(args, store.root, "corruption")
    (out / "corruption.json").write_text(json.dumps(report, indent=1))
    plot_corruption(report, out / "corruption.png", title=what)
    summaries = {m: [rob.summarize_corruption(e, report["categories"]) for e in entries]
                 for m, entries in report["results"].items()}
    sev = report["severities"]
    cats = list(dict.fromkeys(report["categories"].values()))
    rows, cat_rows = [], []
    for m, ss in summaries.items():
        ref = summaries.get("bp")
        p = ranksum([s["mean"] for s in ss], [s["mean"] for s in ref]) if ref and m != "bp" else float("nan")
        rows.append([m, _pm([s["clean"] for s in ss]), *[_pm([s["per_severity"][k] for s in ss]) for k in sev],
                     _pm([s["mean"] for s in ss]), fmt_p(p)])
        cat_rows.append([m, *[_pm([s["per_category"][c] for s in ss]) for c in cats]])
    _print_table(["method", "clean", *[f"severity {k}" for k in sev], "mean", "p vs bp (mean)"], rows,
                 f"mean corruption accuracy (%) per severity — {what}")
    _print_table(["method", *cats], cat_rows, "mean accuracy (%) per category (over types and severities)")
    print(f"wrote {out / 'corruption.json'} and {out / 'corruption.png'}")
    return 0


# -- ood -------------------------------------------------------------------------------------------
def _ood(args) -> int:
    from ..analysis.generalization import ood_report
    from ..viz.robustness import plot_ood

    models, data, store, what = _models(args, "ood")
    report = ood_report(models, data, seed=args.seed, second_source=not args.no_second_source)
    report["data"] = what
    out = _save_dir(args, store.root, "ood")
    (out / "ood.json").write_text(json.dumps(report, indent=1))
    plot_ood(report, out / "ood.png", title=f"out-of-distribution accuracy — {what}")
    rows = [[m, *[_pm([e[s] for e in entries]) for s in report["sets"]]] for m, entries in report["results"].items()]
    _print_table(["method", *report["sets"]], rows, f"accuracy (%) — {what}")
    print(f"wrote {out / 'ood.json'} and {out / 'ood.png'}")
    return 0


# -- dimensionality --------------------------------------------------------------------------------
def _dimensionality(args) -> int:
    from ..analysis.generalization import DimensionalityTracker, feature_effective_ranks, weight_spectra
    from ..viz.robustness import plot_dimensionality, plot_spectra

    if args.runs:
        models, data, store, what = _models(args, "dimensionality")
        out = _save_dir(args, store.root, "dimensionality")
        probe = data.x_test[:args.probe]
        result = {"data": what, "results": {m: [{"spectra": weight_spectra(model),
                                                 "feature_erank": feature_effective_ranks(model, probe)} for model in seeds]
                                            for m, seeds in models.items()}}
        from ..analysis.generalization import effective_rank
        import torch

        for entries in result["results"].values():
            for e in entries:
                e["weight_erank"] = {k: effective_rank(torch.tensor(v), is_spectrum=True) for k, v in e["spectra"].items()}
        (out / "dimensionality.json").write_text(json.dumps(result, indent=1))
        plot_spectra({m: entries[0]["spectra"] for m, entries in result["results"].items()}, out / "spectra.png",
                     title=f"singular values of W (seed 0) — {what}")
        layers = list(next(iter(result["results"].values()))[0]["weight_erank"])
        feats = list(next(iter(result["results"].values()))[0]["feature_erank"])
        rows = [[m, *[_pm([e["weight_erank"][k] for e in es], scale=1) for k in layers],
                 *[_pm([e["feature_erank"][k] for e in es], scale=1) for k in feats]] for m, es in result["results"].items()]
        _print_table(["method", *[f"W {k}" for k in layers], *[f"features {k}" for k in feats]], rows,
                     f"effective rank (Roy & Vetterli 2007) — {what}")
        print(f"wrote {out / 'dimensionality.json'} and {out / 'spectra.png'}")
        return 0
    # on the fly: track over noise pretraining and data training
    import torch

    from ..run.config import _seed_for, build, load_data
    from ..run.trainer import train

    if not args.method:
        raise PrealignError("`analyze dimensionality` needs stored RUN ids or --method (e.g. --method rnp fa)")
    store = _store(args)
    out = _save_dir(args, store.root, "dimensionality")
    result = {}
    for method in args.method:
        config = _config(args, method, 0)
        if args.noise_samples is not None and config.method_object().noise_samples:
            config = config.replace(noise_samples=args.noise_samples)
        data = load_data(config)
        tracker = DimensionalityTracker(probe=data.x_test[:args.probe], keep_spectra=True)
        model = build(config, data)
        m = config.method_object()
        gen = torch.Generator().manual_seed(_seed_for(config.seed, config.label, "prepare"))
        tracker(0, 0, model)
        m.prepare(model, generator=gen, callback=tracker, progress=None)
        train(model, data, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=0, device=args.device,
              callbacks=[tracker], grad_alignment=False, description=f"{config.label}")
        result[config.label] = tracker.history
        plot_dimensionality(tracker.history, out / f"dimensionality_{config.label}.png",
                            title=f"{config.label} — effective rank (Roy & Vetterli 2007)")
        first, last = tracker.history[0], tracker.history[-1]
        rows = [[k, f"{first['weights'][k]:.1f}", f"{last['weights'][k]:.1f}"] for k in first["weights"]]
        _print_table(["layer", "erank at init", "erank at end"], rows, f"{config.label}: effective rank of W")
    (out / "dimensionality.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'dimensionality.json'} and the PNGs in {out}")
    return 0


# -- meta ------------------------------------------------------------------------------------------
def _meta(args) -> int:
    import copy

    import torch

    from .. import mlp
    from ..analysis.meta import default_tasks, meta_loss_curve, task_adaptation
    from ..viz.robustness import plot_meta
    from ..run.store import default_root

    out = _save_dir(args, Path(args.out) if args.out else default_root(), "meta")  # trains nothing into a store
    tasks = default_tasks(train_size=args.task_size)
    print("tasks: " + ", ".join(t.name for t in tasks), file=sys.stderr)
    result = {"tasks": [t.name for t in tasks], "noise_samples": args.noise_samples, "seeds": args.seeds, "runs": {}}
    histories = {}
    for seed in range(args.seeds):
        gen = torch.Generator().manual_seed(seed)
        model = mlp([784, *args.hidden, 10], rule="fa", input_shape=(1, 28, 28), generator=gen)
        untrained = copy.deepcopy(model)
        hist = meta_loss_curve(model, tasks, noise_samples=args.noise_samples, every=args.every, generator=gen,
                               k=args.k, inner_steps=args.inner_steps, inner_lr=args.inner_lr, seed=seed)
        histories[f"noise-pretrained FA, seed {seed}"] = hist
        entry = {"meta_loss": hist}
        if args.adapt_epochs:
            entry["adaptation"] = {
                "untrained": task_adaptation(untrained, tasks, epochs=args.adapt_epochs, seed=seed, device=args.device),
                "noise-pretrained": task_adaptation(model, tasks, epochs=args.adapt_epochs, seed=seed, device=args.device)}
        result["runs"][seed] = entry
    (out / "meta.json").write_text(json.dumps(result, indent=1))
    plot_meta(histories, out / "meta.png", title=f"meta-loss ({', '.join(result['tasks'])})")
    rows = [[label, f"{h[0]['meta_loss']:.3f}", f"{h[-1]['meta_loss']:.3f}"] for label, h in histories.items()]
    _print_table(["run", "meta-loss before noise", f"after {args.noise_samples:,} noise samples"], rows,
                 f"meta-loss: {args.inner_steps} Adam steps at lr {args.inner_lr:g}, k={args.k} per class")
    if args.adapt_epochs:
        rows = []
        for seed, entry in result["runs"].items():
            for cond, per_task in entry["adaptation"].items():
                rows.append([str(seed), cond, *[f"{100 * max(r.get('test_acc', math.nan) for r in per_task[t]):.1f}"
                                                for t in result["tasks"]]])
        _print_table(["seed", "start", *result["tasks"]], rows, f"task adaptation: best test accuracy (%), {args.adapt_epochs} epochs")
    print(f"wrote {out / 'meta.json'} and {out / 'meta.png'}")
    return 0


# -- registration ----------------------------------------------------------------------------------
def register_analyze(sub) -> None:
    from ..analysis.robustness import ATTACKS, DEFAULT_EPSILONS, GRADIENT_SOURCES

    p = sub.add_parser("robustness", help="FGSM/BIM/PGD accuracy vs ε for each gradient source (exact, feedback, transfer)",
                       description="Adversarial robustness (IFA paper B.10, A.4) with an explicit gradient source: "
                                   "exact = true input gradients (the honest white-box attack), feedback = the model's own "
                                   "backward pathway, transfer = exact gradients of a BP-trained surrogate.")
    _add_model_args(p)
    p.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    p.add_argument("--sources", nargs="+", choices=GRADIENT_SOURCES, default=list(GRADIENT_SOURCES))
    p.add_argument("--eps", type=Floats(Float(0.0)), default=list(DEFAULT_EPSILONS), help="ε values, e.g. '0,0.01,0.05' (inputs in [0, 1])")
    p.add_argument("--steps", type=POSITIVE, default=10, help="BIM/PGD steps (default 10)")
    p.add_argument("--step-size", type=POSITIVE_FLOAT, default=None, help="BIM/PGD step (default 2.5·ε/steps)")
    p.add_argument("--surrogate", nargs="+", default=None, metavar="RUN", help="BP runs for the transfer attack")
    p.add_argument("--seed", type=SEED, default=0, help="PGD random-start seed")
    p.set_defaults(func=_robustness)

    p = sub.add_parser("corruption", help="accuracy under the 15 corruptions × 5 severities (IFA paper B.9)")
    _add_model_args(p)
    p.add_argument("--corruptions", nargs="+", default=None, help="subset of corruptions (default all 15)")
    p.add_argument("--severities", type=POSITIVE, nargs="+", default=[1, 2, 3, 4, 5], choices=[1, 2, 3, 4, 5])
    p.add_argument("--seed", type=SEED, default=0)
    p.set_defaults(func=_corruption)

    p = sub.add_parser("ood", help="translated/scaled/rotated test sets and a second digit source (noise paper C.5)")
    _add_model_args(p)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--no-second-source", action="store_true", help="skip USPS / UCI digits")
    p.set_defaults(func=_ood)

    p = sub.add_parser("dimensionality", help="singular values and effective rank of weights and features (noise paper C.2)")
    _add_model_args(p)
    p.add_argument("--probe", type=POSITIVE, default=1000, help="test images for the feature ranks (default 1000)")
    p.add_argument("--noise-samples", type=NONNEG, default=None, help="with --method rnp: noise samples (default the method's)")
    p.set_defaults(func=_dimensionality)

    p = sub.add_parser("meta", help="meta-loss during noise pretraining and task adaptation (noise paper D)")
    p.add_argument("--out", type=FOLDER, default=None, help="output root (default $PREALIGN_RUNS or ./prealign-runs)")
    p.add_argument("--save", type=FOLDER, default=None, help="folder for the JSON and PNG (default <out>/analysis/meta)")
    p.add_argument("--hidden", type=POSITIVE, nargs="+", default=[100, 100], help="hidden widths (paper: 100 100)")
    p.add_argument("--noise-samples", type=NONNEG, default=500_000)
    p.add_argument("--every", type=POSITIVE, default=50_000, help="noise samples between meta-loss checkpoints")
    p.add_argument("--seeds", type=POSITIVE, default=1, help="seeds 0..N-1 (default 1)")
    p.add_argument("--k", type=POSITIVE, default=10, help="images per class in support and query batches (paper K = 10)")
    p.add_argument("--inner-steps", type=POSITIVE, default=10)
    p.add_argument("--inner-lr", type=POSITIVE_FLOAT, default=1e-3)
    p.add_argument("--task-size", type=POSITIVE, default=5000, help="training images per task (paper 5,000)")
    p.add_argument("--adapt-epochs", type=NONNEG, default=0, help="also train copies on each task for N epochs (paper 100)")
    p.add_argument("--device", type=DEVICE, default="cpu")
    p.set_defaults(func=_meta)
