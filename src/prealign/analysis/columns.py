"""The experiment form of each registered analysis (:mod:`prealign.reports.registry`): ``NAME(ctx, p)``.

``ctx`` is the experiment runner's context (:class:`prealign.experiments.runner.Context`: ``runs``,
``model(run)``, ``data(config)``, ``note(text)``, ``artifacts``, ``store``), ``p`` the
``[[analysis]]`` section's parameters. Each adds scalar columns to the result rows
(``hessian_trace``, ``fgsm@0.03``, ``corruption@1`` …) and may leave artifacts for figures
(spectral densities, landscapes). An analysis that cannot be produced raises
:class:`Unavailable`; the report then names the panel it could not produce and why — it never
makes numbers up. ``NAME_tracker(p)`` builds the trainer callback of a ``track = true`` analysis.
"""
from __future__ import annotations

import math


class Unavailable(Exception):
    """An analysis could not be produced (runs lacking, data absent, artifacts missing)."""


def _sample(x, y, n: int | None, seed: int = 0):
    """``n`` samples of ``(x, y)`` drawn at random (seeded) — never the first ``n``, since some
    data sets are stored sorted by class (mnist5k)."""
    import torch

    if n is None or n >= len(y):
        return x, y
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n].to(x.device)
    return x[idx], y[idx]


def _finished(ctx):
    runs = [r for r in ctx.runs if r.status in ("finished", "diverged") and r.run_id is not None]
    if not runs:
        raise Unavailable("no finished runs to analyse")
    return runs


# --------------------------------------------------------------------------- trained-model analyses
def hessian(ctx, p: dict) -> None:
    """Top eigenvalue, Hutchinson trace (and SLQ density) of the true training loss (IFA B.7)."""
    from . import hessian as mod
    for run in _finished(ctx):
        model = ctx.model(run)
        data = ctx.data(run.config)
        try:
            xs, ys = _sample(data.x_train, data.y_train, p.get("n_samples", 1000))
            out = mod.hessian_summary(model, xs, ys, n_samples=None,
                                      probes=p.get("probes", 50), density_probes=p.get("density_probes", 5),
                                      lanczos_steps=p.get("lanczos_steps", 30), density=p.get("density", True),
                                      seed=p.get("seed", 0))
        except Exception as exc:  # noqa: BLE001 - a diverged model has no Hessian; record NaN
            ctx.note(f"Hessian of run {run.run_id} failed: {type(exc).__name__}: {exc}")
            out = {"top_eigenvalues": [math.nan], "trace": math.nan}
        run.row["hessian_top_eig"] = out["top_eigenvalues"][0]
        run.row["hessian_trace"] = out["trace"]
        if "density" in out:
            ctx.artifacts.setdefault("density", []).append((run.row, out["density_grid"], out["density"]))


def landscape(ctx, p: dict) -> None:
    """Test loss on the plane of the top-2 Hessian eigenvectors (training loss) around the optimum
    (IFA B.8), for one seed per method; column ``landscape_rise`` = mean loss over the grid − loss at θ*."""
    from . import landscape as mod
    import numpy as np

    n = p.get("n_samples", 1000)
    radius, steps = p.get("radius", 1.0), p.get("steps", 21)
    for run in _finished(ctx):
        if run.row.get("seed", 0) != p.get("seed", 0):
            continue
        data = ctx.data(run.config)
        grid = np.linspace(-radius, radius, steps)
        try:
            xt, yt = _sample(data.x_test, data.y_test, n)
            xh, yh = _sample(data.x_train, data.y_train, n)
            out = mod.perturbed_surface(ctx.model(run), None, xt, yt, hessian_x=xh, hessian_y=yh, alphas=grid, betas=grid)
        except Exception as exc:  # noqa: BLE001 - e.g. a diverged model; note it, keep the others
            ctx.note(f"landscape of run {run.run_id} failed: {type(exc).__name__}: {exc}")
            continue
        ctx.artifacts.setdefault("landscape", []).append((run.row, out))
        loss = np.asarray(out["loss"], float)
        run.row["landscape_rise"] = float(np.nanmean(loss) - loss[steps // 2, steps // 2])


def trajectory_file(key: str) -> str:
    """The name of run ``key``'s parameter snapshots in its storage (:class:`prealign.run.storage.Storage`,
    beside its checkpoint): ``trajectories/<key>.npy``."""
    return f"trajectories/{key}.npy"


def _trajectory_snapshots(store, run):
    """The local path of ``run``'s snapshots: in its storage (whatever node trained it), or where
    stores written before the snapshots moved there kept them (``<store>/trajectories/<key>.npy``)."""
    path = store.storage_of(run.run_id).local_copy(trajectory_file(run.key))
    legacy = store.root / trajectory_file(run.key)
    if path is None and legacy.exists():
        return legacy
    if path is None:
        raise Unavailable(f"no parameter snapshots {trajectory_file(run.key)} in the storage of run {run.run_id}: "
                          "the run was trained without the trajectory tracker (delete it from the store and re-run)")
    return path


def trajectory(ctx, p: dict) -> None:
    """Training trajectory (per-epoch parameter snapshots) projected on its top-2 PCA directions
    over the training-loss surface (IFA B.6, Fig. 2b–d), for one seed per method (``seed``; ``"all"``:
    every seed, so a claim on it has one number per seed; the figure keeps ``figure_seed``, default 0).
    Column ``path_length_ratio`` = path length / straight distance in the PC plane (1 = straight)."""
    from . import landscape as mod
    import numpy as np

    n = p.get("n_samples", 1000)
    for run in _finished(ctx):
        if p.get("seed", 0) != "all" and run.row.get("seed", 0) != p.get("seed", 0):
            continue
        snaps = np.load(_trajectory_snapshots(ctx.store, run), mmap_mode="r", allow_pickle=False)
        data = ctx.data(run.config)
        xs, ys = _sample(data.x_train, data.y_train, n)
        out = mod.trajectory_surface(ctx.model(run), np.asarray(snaps), xs, ys,
                                     n=p.get("steps", 15))
        if p.get("seed", 0) != "all" or run.row.get("seed", 0) == p.get("figure_seed", 0):  # the figure: one seed
            ctx.artifacts.setdefault("trajectory", []).append((run.row, out))
        c = np.asarray(out["coords"])
        length = float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum())
        run.row["path_length_ratio"] = length / max(float(np.linalg.norm(c[0] - c[-1])), 1e-12)


def corruption(ctx, p: dict) -> None:
    """Accuracy under the 15 corruptions × severities (IFA B.9); columns ``corruption@<severity>``."""
    from . import robustness as mod
    n = p.get("n_samples", 1000)
    severities = p.get("severities", [1, 2, 3, 4, 5])
    for run in _finished(ctx):
        data = ctx.data(run.config)
        xt, yt = _sample(data.x_test, data.y_test, n)
        res = mod.corruption_accuracy(ctx.model(run), xt, yt,
                                      corruptions=p.get("corruptions"), severities=severities, seed=p.get("seed", 0))
        s = mod.summarize_corruption(res)
        run.row["corruption_clean"] = s["clean"]
        run.row["corruption_mean"] = s["mean"]
        for sev, acc in s["per_severity"].items():
            run.row[f"corruption@{sev}"] = acc
        for name, table in res["table"].items():
            for sev, acc in table.items():
                run.row[f"corruption_{name}@{sev}"] = acc
        for cat, acc in s["per_category"].items():
            run.row[f"corruption_cat_{cat}"] = acc


def adversarial(ctx, p: dict) -> None:
    """Accuracy under FGSM/BIM/PGD vs ε (IFA B.10, A.4), columns ``<attack>@<ε>`` for exact input
    gradients and ``<attack>_<source>@<ε>`` for the feedback pathway / BP-surrogate transfer; with the
    feedback source, ``grad_cosine`` and ``grad_sign_agreement`` (:func:`~prealign.analysis.robustness.gradient_agreement`
    of the exact and the feedback input gradient on the same test images: near 0 and 0.5 = an attack
    along the feedback pathway is blind, i.e. gradient masking)."""
    from . import robustness as mod
    n = p.get("n_samples", 1000)
    eps = p.get("epsilons", list(mod.DEFAULT_EPSILONS))
    attacks = p.get("attacks", ["fgsm"])
    sources = p.get("sources", ["exact", "feedback", "transfer"])
    runs = _finished(ctx)
    surrogates = {r.row.get("seed"): r for r in runs if r.row.get("method") == "bp"}
    for run in runs:
        data = ctx.data(run.config)
        model = ctx.model(run)
        for attack in attacks:
            for source in sources:
                sur = None
                if source == "transfer":
                    if not surrogates:
                        continue
                    # a BP network from another seed where there is one (attacking a BP target through itself is just "exact")
                    others = [s for k, s in surrogates.items() if k != run.row.get("seed")] or list(surrogates.values())
                    sur = ctx.model(others[0])
                xt, yt = _sample(data.x_test, data.y_test, n)
                accs = mod.adversarial_accuracy(model, xt, yt, eps, attack_name=attack,
                                                source=source, surrogate=sur, steps=p.get("steps", 10),
                                                seed=p.get("seed", 0))
                tag = attack if source == "exact" else f"{attack}_{source}"
                for e, a in zip(eps, accs):
                    run.row[f"{tag}@{e:g}"] = a
        if "feedback" in sources:
            xt, yt = _sample(data.x_test, data.y_test, n)
            agreement = mod.gradient_agreement(model, xt, yt)
            run.row["grad_cosine"] = agreement["cosine"]
            run.row["grad_sign_agreement"] = agreement["sign_agreement"]


def ood(ctx, p: dict) -> None:
    """Accuracy on translated / scaled / rotated test sets (columns ``ood@translated`` …) and on a
    second digit source (``ood@second_source``: USPS where its files are present, else UCI digits
    resized to 28×28 — the report notes which) (noise paper C.5)."""
    from ..data import transforms
    from . import robustness as rob
    from . import generalization as gen_mod
    n = p.get("n_samples", 1000)
    second = {}
    for run in _finished(ctx):
        data = ctx.data(run.config)
        model = ctx.model(run)
        x, y = _sample(data.x_test, data.y_test, n)
        run.row["ood@clean"] = rob.accuracy(model, x, y)
        for name, xs in transforms.ood_sets(x, seed=p.get("seed", 0)).items():
            run.row[f"ood@{name}"] = rob.accuracy(model, xs, y)
        shape = tuple(data.input_shape)
        if p.get("second_source", True) and data.num_classes == 10 and shape[0] == 1 and shape[1] == shape[2] >= 16:
            if shape not in second:
                second[shape] = gen_mod.second_digit_source(shape)
                ctx.note(f"second digit source: {second[shape][0]}")
            _, x2, y2 = second[shape]
            x2, y2 = _sample(x2, y2, n)
            run.row["ood@second_source"] = rob.accuracy(model, x2.to(x.device), y2.to(x.device))


def traffic(ctx, p: dict) -> None:
    """Weight memory traffic of error propagation per training step (IFA Fig. 1d), from
    :func:`prealign.analysis.traffic.traffic_table` for each run's own rule. Columns
    ``w_reads`` (forward weights read backward = weight transport), ``feedback_reads``,
    ``backward_bytes``."""
    from . import traffic as mod
    from ..run.config import RunConfig

    for run in _finished(ctx):
        rule = RunConfig.from_dict(run.config).method_object().rule
        row = mod.traffic_table(ctx.model(run), [rule])[0]
        for k in ("w_reads", "feedback_reads", "feedback_writes", "backward_bytes"):
            run.row[k] = row[k]


def cost_to_converge(ctx, p: dict) -> None:
    """Epochs to convergence with the noise epochs counted (noise paper B.8): ``noise_epochs`` =
    noise samples / training-set size, ``total_epochs`` = noise_epochs + best_epoch."""
    for run in _finished(ctx):
        n_train = len(ctx.data(run.config).y_train)
        noise = float(run.config.get("noise_samples") or 0)  # rnp's, or an X+noise warm-up's
        run.row["noise_epochs"] = noise / n_train
        run.row["total_epochs"] = run.row["noise_epochs"] + float(run.row.get("best_epoch", math.nan))


def _fresh_model(config: dict):
    """The run's initial network, prepared like :func:`prealign.run.config.run` but without noise."""
    from ..run.config import RunConfig, build, load_data

    cfg = RunConfig.from_dict(config)
    data = load_data(cfg)
    return cfg, data, build(cfg, data)


def dimensionality(ctx, p: dict) -> None:
    """Effective rank (Roy & Vetterli) of every weight matrix during noise pretraining (noise
    paper C.2, Fig. S12) — re-run on a fresh copy of each seed's network — and of the learned
    features of the trained runs (Fig. 4g–h). Columns ``erank_init/<layer>``, ``erank_noise/<layer>``,
    ``feature_erank/<module>``."""
    from . import generalization as gen_mod
    from ..pretrain import pretrain_noise

    samples = int(p.get("noise_samples", 500_000))
    done_seeds = set()
    for run in _finished(ctx):
        data = ctx.data(run.config)
        if p.get("features", True):
            ranks = gen_mod.feature_effective_ranks(ctx.model(run), _sample(data.x_test, data.y_test, p.get("n_samples", 1000))[0])
            for name, v in ranks.items():
                run.row[f"feature_erank/{name}"] = v
            run.row["feature_erank"] = sum(ranks.values()) / max(len(ranks), 1)
        seed = run.row.get("seed", 0)
        if not p.get("noise", True) or seed in done_seeds:
            continue
        done_seeds.add(seed)
        import torch

        cfg, data, model = _fresh_model({**run.config, "method": "fa", "angle": None, "noise_samples": None})
        tracker = gen_mod.DimensionalityTracker(keep_spectra=True)
        tracker(0, 0, model)
        pretrain_noise(model, samples, batch_size=cfg.noise_batch_size, lr=cfg.noise_lr,
                       generator=torch.Generator().manual_seed(seed), callback=tracker,
                       callback_every=max(1, samples // cfg.noise_batch_size // p.get("points", 10)), progress=False)
        ctx.artifacts.setdefault("erank_noise", []).append((seed, tracker.history))
        for name, v in tracker.history[0]["weights"].items():
            run.row[f"erank_init/{name}"] = v
        for name, v in tracker.history[-1]["weights"].items():
            run.row[f"erank_noise/{name}"] = v
        run.row["erank_drop"] = (sum(tracker.history[0]["weights"].values())
                                 - sum(tracker.history[-1]["weights"].values())) / len(tracker.history[0]["weights"])


def meta(ctx, p: dict) -> None:
    """Meta-loss (sum of losses after 10 Adam steps on each task) measured during noise training
    of a fresh copy of each seed's network (noise paper D, Tables S9–S10). Columns ``meta_loss_init``,
    ``meta_loss_final`` (before / after noise)."""
    from . import meta as meta_mod
    import torch

    tasks = meta_mod.default_tasks(p.get("train_size"))
    ctx.note("meta-loss tasks: " + ", ".join(t.name for t in tasks))
    seeds = sorted({r.row.get("seed", 0) for r in _finished(ctx)})
    for seed in seeds:
        run = next(r for r in _finished(ctx) if r.row.get("seed", 0) == seed)
        from ..models import build_model
        from ..run.config import RunConfig

        cfg = RunConfig.from_dict({**run.config, "method": "fa", "angle": None, "noise_samples": None})
        shape = tuple(tasks[0].data.x_train.shape[1:])  # the tasks' inputs (28×28), whatever the run's data
        model = build_model(cfg.model, shape, 10, hidden=cfg.hidden, rule="fa", activation=cfg.activation,
                            generator=torch.Generator().manual_seed(seed), alpha_w=cfg.alpha_w, alpha_b=cfg.alpha_b)
        samples = int(p.get("noise_samples", 500_000))
        hist = meta_mod.meta_loss_curve(model, tasks, noise_samples=samples, every=max(samples // p.get("points", 5), 64),
                                        batch_size=cfg.noise_batch_size, lr=cfg.noise_lr,
                                        generator=torch.Generator().manual_seed(seed), inner_steps=p.get("inner_steps", 10),
                                        k=p.get("k", 10), seed=seed, progress=False)
        ctx.artifacts.setdefault("meta", []).append((seed, hist))
        for r in ctx.runs:
            if r.row.get("seed", 0) == seed:
                r.row["meta_loss_init"] = hist[0]["meta_loss"]
                r.row["meta_loss_final"] = hist[-1]["meta_loss"]


def order(ctx, p: dict) -> None:
    """W₁ trajectory in PCA space and ‖W₁ − B₁‖ for noise→data vs data→noise from one initial
    network (noise paper Fig. S6), via :func:`prealign.analysis.trajectory.order_dependence`,
    on the first seed's data and architecture. Columns on every row of that seed:
    ``order_w1_distance`` (distance between the two final W₁), ``order_acc_noise_first``,
    ``order_acc_data_first``."""
    from . import trajectory as mod
    runs = _finished(ctx)
    run = next((r for r in runs if r.config.get("noise_samples")), runs[0])
    data = ctx.data(run.config)
    noise = int(p.get("noise_samples") or run.config.get("noise_samples") or 100_000)
    res = mod.order_dependence(data, hidden=tuple(run.config["hidden"]), noise_samples=noise,
                               epochs=int(p.get("epochs", run.config["epochs"])), seed=run.row.get("seed", 0),
                               lr=run.config["lr"], batch_size=run.config["batch_size"], device="cpu")
    ctx.artifacts["order"] = res
    for r in runs:
        if r.row.get("seed") == run.row.get("seed"):
            r.row["order_w1_distance"] = res["final_w1_distance"]
            r.row["order_acc_noise_first"] = res["final"]["noise→data"]["test_acc"]
            r.row["order_acc_data_first"] = res["final"]["data→noise"]["test_acc"]


# --------------------------------------------------------------------------- tracked during training
def hessian_tracker(p: dict):
    """Top eigenvalue and trace of the Hessian every ``every`` epochs (per-epoch columns)."""
    from .hessian import HessianTracker

    return HessianTracker(every=p.get("every", 1), n_samples=p.get("n_samples", 1000), probes=p.get("probes", 30),
                          seed=p.get("seed", 0))


def trajectory_tracker(p: dict):
    """Per-epoch parameter snapshots (for :func:`trajectory`)."""
    from .landscape import TrajectoryRecorder

    return TrajectoryRecorder(max_in_memory=64)


# --------------------------------------------------------------------------- uncertainty (issue 17)
def calibration(ctx, p: dict) -> None:
    """Calibration of each trained run on its test set (:func:`prealign.analysis.calibration.model_summary`,
    ``n_bins`` equal-width bins, default 15): columns ``ece``, ``mce``, ``adaptive_ece``, ``nll``,
    ``brier``, ``final_confidence`` (mean max-softmax probability). From the per-epoch values of the
    ``calibration`` tracker where the run has them: ``init_confidence`` (epoch 0: after any noise
    warm-up, before data), ``init_confidence_excess`` (= init_confidence − 1/classes, 0 at chance),
    ``init_ece`` and ``mean_ece`` (test ECE averaged over the training epochs 1…E)."""
    from . import calibration as mod
    n_bins = int(p.get("n_bins", mod.N_BINS))
    for run in _finished(ctx):
        data = ctx.data(run.config)
        s = mod.model_summary(ctx.model(run), data.x_test, data.y_test, n_bins)
        for key in ("ece", "mce", "adaptive_ece", "nll", "brier"):
            run.row[key] = s[key]
        run.row["final_confidence"] = s["mean_confidence"]
        tracked = [c for c in run.curves if c.get("test_confidence") is not None]
        if tracked and tracked[0].get("epoch") == 0:
            run.row["init_confidence"] = float(tracked[0]["test_confidence"])
            run.row["init_confidence_excess"] = run.row["init_confidence"] - 1.0 / int(data.num_classes)
            run.row["init_ece"] = float(tracked[0]["test_ece"])
            trained = [float(c["test_ece"]) for c in tracked if c.get("epoch", 0) >= 1]
            run.row["mean_ece"] = sum(trained) / len(trained) if trained else math.nan
        ctx.artifacts.setdefault("calibration", []).append((run.row, s))


def ood_detection(ctx, p: dict) -> None:
    """OOD detection of each trained run (:mod:`prealign.analysis.ood_detection`): ``n_samples``
    test images (default 1000) vs each offline OOD set. Columns ``auroc_msp@<set>``,
    ``auroc_energy@<set>``, ``fpr95_msp@<set>``, ``ood_confidence@<set>`` (mean MSP on the set),
    ``in_confidence``; and over the far-OOD sets (other data sets, noise images — not the shifted
    test sets translated/scaled/rotated): ``ood_confidence`` and ``auroc_msp`` (means)."""
    from . import ood_detection as mod
    import torch

    n, seed, cache = p.get("n_samples", 1000), p.get("seed", 0), {}
    shifted = ("translated", "scaled", "rotated")
    for run in _finished(ctx):
        data, dataset = ctx.data(run.config), run.config.get("dataset")
        if dataset not in cache:
            cache[dataset] = mod.ood_sets(data, dataset, n, seed)
            sets, skipped = cache[dataset]
            ctx.note(f"OOD sets for {dataset}: {', '.join(sets)}" + "".join(f"; {k} skipped ({v})" for k, v in skipped.items()))
        sets, _ = cache[dataset]
        idx = torch.randperm(len(data.y_test), generator=torch.Generator().manual_seed(seed))[:n]
        res = mod.detect(ctx.model(run), data.x_test[idx], sets)
        run.row["in_confidence"] = res["in_confidence"]
        for name, e in res["sets"].items():
            run.row[f"auroc_msp@{name}"] = e["auroc_msp"]
            run.row[f"auroc_energy@{name}"] = e["auroc_energy"]
            run.row[f"fpr95_msp@{name}"] = e["fpr95_msp"]
            run.row[f"ood_confidence@{name}"] = e["mean_confidence"]
        far = [name for name in res["sets"] if name not in shifted]
        run.row["ood_confidence"] = sum(res["sets"][k]["mean_confidence"] for k in far) / len(far)
        run.row["auroc_msp"] = sum(res["sets"][k]["auroc_msp"] for k in far) / len(far)
        ctx.artifacts.setdefault("ood_detection", []).append((run.row, res["scores"]))


def calibration_tracker(spec: dict):
    """``track = true``: mean confidence and ECE on train and test every epoch, epoch 0 included."""
    from .calibration import CalibrationTracker

    return CalibrationTracker(n_bins=spec.get("n_bins", 15), n_train=spec.get("n_train", 2000))
