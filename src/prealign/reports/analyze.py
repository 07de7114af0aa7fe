"""The ``prealign analyze NAME`` form of each registered analysis (:mod:`.registry`).

For each analysis: ``NAME(inputs, ns) -> dict`` (the JSON-able result, written as is; the numbers
come from :mod:`prealign.analysis`), ``NAME_tables(result)`` / ``NAME_lines(result)`` (what the
terminal shows; numbers formatted by :mod:`prealign.stats`) and ``NAME_figure(result, folder,
inputs) -> [paths]`` (drawn by :mod:`prealign.viz`). ``inputs`` is a
:class:`prealign.analysis.sources.Inputs`, ``ns`` the entry's options. Heavy imports are local,
so importing the registry stays cheap.
"""
from __future__ import annotations

import math
import sys

from ..feedback.rules import RULES
from ..stats import fmt_p, fmt_pm, mean_std, ranksum


def _pm(values, scale=100.0, digits=1) -> str:
    """``mean ± std`` of ``values`` (accuracies ×100 by default)."""
    return fmt_pm(*mean_std(values), scale=scale, digits=digits)


def _vs_bp(values, ref) -> float:
    """Exact two-sided rank-sum p of ``values`` against the BP ones (NaN without BP). Unpaired: the runs
    a user names need not share seeds (experiments pair by seed: :mod:`prealign.experiments.units`)."""
    return ranksum(values, ref) if ref is not None else math.nan


def _load(store, run):
    from ..run.config import load_data

    model = store.load_model(run, device="cpu")
    return model, load_data(model.run_config), store.get(run)


# -- hessian (IFA B.7) ----------------------------------------------------------------------------
def hessian(inputs, ns) -> dict:
    """``{run id: {"label", **hessian_summary}}`` for every RUN."""
    from ..analysis.hessian import hessian_summary

    out = {}
    for run in ns.runs:
        model, data, row = _load(inputs.store, run)
        s = hessian_summary(model, data.x_train, data.y_train, n_samples=ns.samples, k=ns.k, probes=ns.probes,
                            density_probes=ns.density_probes, lanczos_steps=ns.lanczos_steps, seed=ns.seed)
        out[str(row["id"])] = {"label": row["label"], **s}
    return out


def hessian_lines(result) -> list[str]:
    return [f"run {rid} {s['label']}: top eigenvalue(s) {', '.join(f'{v:.4g}' for v in s['top_eigenvalues'])}, "
            f"trace {s['trace']:.4g} ± {s['trace_stderr']:.2g}, {s['seconds']['total']:.1f} s"
            for rid, s in result.items()]


def hessian_figure(result, folder, inputs) -> list:
    """The spectral densities, and the Hessian tracked during training where the runs have it."""
    from ..viz.geometry import plot_hessian_tracking, plot_spectral_density

    densities, tracked = {}, {}
    for rid, s in result.items():
        name = f"{rid} {s['label']}"
        densities[name] = (s["density_grid"], s["density"])
        recs = [r for r in inputs.store.epochs(int(rid)) if r.get("hessian_trace") is not None]
        if recs:
            tracked[name] = ([r["epoch"] for r in recs], [r["hessian_trace"] for r in recs],
                             [r["hessian_top_eig"] for r in recs])
    plot_spectral_density(folder / "spectral_density.png", densities)
    files = [folder / "spectral_density.png"]
    if tracked:
        plot_hessian_tracking(folder / "hessian_tracking.png", tracked)
        files.append(folder / "hessian_tracking.png")
    return files


# -- landscape and trajectory (IFA B.6, B.8) ----------------------------------------------------------
def landscape(inputs, ns) -> dict:
    """``{run id: {"label", "eigenvalues", "alphas", "perturbed_test_loss"[, "trajectory"]}}``."""
    import numpy as np

    from ..analysis.landscape import perturbed_surface

    out = {}
    for run in ns.runs:
        model, data, row = _load(inputs.store, run)
        n, axis = ns.samples, np.linspace(-ns.radius, ns.radius, ns.grid)
        p = perturbed_surface(model, None, data.x_test, data.y_test, hessian_x=data.x_train[:n],
                              hessian_y=data.y_train[:n], alphas=axis, betas=axis, seed=ns.seed)
        entry = {"label": row["label"], "eigenvalues": p["eigenvalues"].tolist(), "alphas": axis.tolist(),
                 "perturbed_test_loss": p["loss"].tolist()}
        if ns.trajectory:
            s = _retrained_trajectory(model, data, row, n, ns.grid)
            entry["trajectory"] = {k: np.asarray(s[k]).tolist() for k in
                                   ("alphas", "betas", "loss", "coords", "explained_variance_ratio")}
        out[str(row["id"])] = entry
    return out


def _retrained_trajectory(model, data, row, n: int, grid: int) -> dict:
    """Re-train the run's config (same seed) recording every epoch; the trajectory surface on the
    first ``n`` training samples. Raises where the re-training does not reproduce the stored weights."""
    import torch

    from ..analysis.landscape import TrajectoryRecorder, flat_parameters, trajectory_surface
    from ..errors import PrealignError
    from ..run.config import run as run_config

    rec = TrajectoryRecorder(max_in_memory=32)
    again = run_config(model.run_config, None, callbacks=[rec], progress=None)
    if again.diverged or not torch.allclose(torch.from_numpy(rec[-1]), flat_parameters(model).float(),
                                            rtol=1e-4, atol=1e-5):
        raise PrealignError(f"re-training run {row['id']} did not reproduce its stored weights (different "
                            "machine or library version?); the trajectory would not belong to this run")
    s = trajectory_surface(model, rec, data.x_train[:n], data.y_train[:n], n=grid)
    rec.close()
    return s


def landscape_lines(result) -> list[str]:
    lines = []
    for rid, e in result.items():
        c = len(e["alphas"]) // 2
        lines.append(f"run {rid} {e['label']}: top-2 eigenvalues {e['eigenvalues'][0]:.4g}, {e['eigenvalues'][1]:.4g}; "
                     f"test loss at the trained point {e['perturbed_test_loss'][c][c]:.4g}")
    return lines


def landscape_figure(result, folder, inputs) -> list:
    """Per run: the perturbed surface (and the trajectory); with several runs, all side by side."""
    import numpy as np

    from ..viz.geometry import (
        plot_perturbed_surface,
        plot_perturbed_surfaces,
        plot_trajectory_landscape,
        plot_trajectory_landscapes,
    )

    files, surfaces, paths = [], {}, {}
    for rid, e in result.items():
        name, a = f"run {rid} {e['label']}", np.asarray(e["alphas"])
        surfaces[name] = (a, a, np.asarray(e["perturbed_test_loss"]))
        files.append(folder / f"perturbed_{rid}.png")
        plot_perturbed_surface(files[-1], *surfaces[name], title=f"{name}: test loss")
        if "trajectory" in e:
            t = {k: np.asarray(v) for k, v in e["trajectory"].items()}
            paths[name] = (t["alphas"], t["betas"], t["loss"], t["coords"], t["explained_variance_ratio"])
            files.append(folder / f"trajectory_{rid}.png")
            plot_trajectory_landscape(files[-1], *paths[name], title=name)
    if len(surfaces) > 1:  # the runs side by side on one colour scale, to be compared
        files.append(folder / "perturbed_all.png")
        plot_perturbed_surfaces(files[-1], surfaces, title="test loss along top-2 Hessian eigenvectors")
    if len(paths) > 1:
        files.append(folder / "trajectory_all.png")
        plot_trajectory_landscapes(files[-1], paths, title="training trajectories")
    return files


# -- weight memory traffic (IFA Fig. 1d) -------------------------------------------------------------
TRAFFIC_COLUMNS = ("rule", "weight_transport", "w_reads", "feedback_reads", "feedback_writes", "backward_bytes")


def traffic(inputs, ns) -> dict:
    """``{run id: {"label", "rows": traffic_table(model, rules)}}``: element counts per training step
    of error propagation under each rule (the run's own rule first when ``--rules`` is not given)."""
    from ..analysis.traffic import traffic_table

    out = {}
    for run in ns.runs:
        model = inputs.store.load_model(run, device="cpu")
        row = inputs.store.get(run)
        rules = ns.rules or list(dict.fromkeys([model.run_config.method_object().rule, *RULES]))
        out[str(row["id"])] = {"label": row["label"], "rows": traffic_table(model, rules)}
    return out


def traffic_tables(result) -> list:
    return [(list(TRAFFIC_COLUMNS), [[f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in TRAFFIC_COLUMNS]
                                     for r in e["rows"]],
             f"run {rid} {e['label']}: elements per training step (backward_bytes: float32)") for rid, e in result.items()]


# -- adversarial robustness (IFA B.10, A.4) ------------------------------------------------------------
def robustness(inputs, ns) -> dict:
    """:func:`prealign.analysis.robustness.adversarial_report` of the models, with BP surrogates
    from :func:`prealign.analysis.sources.surrogates`; ``skipped``: ``{source: why and how to get it}``."""
    from ..analysis.robustness import adversarial_report
    from ..analysis.sources import surrogates

    sur = surrogates(inputs, ns)
    report = adversarial_report(inputs.models, inputs.data.x_test, inputs.data.y_test, epsilons=ns.eps,
                                attacks=ns.attacks, sources=ns.sources, surrogates=sur, steps=ns.steps,
                                step_size=ns.step_size, seed=ns.seed, progress=None)
    report["data"] = inputs.what
    report["skipped"] = {s: next(n for n in inputs.notes if s in n) for s in ns.sources if s not in report["sources"]}
    return report


def robustness_tables(report) -> list:
    eps, tables = report["epsilons"], []
    for attack in report["attacks"]:
        rows = []
        for method, per in report["results"].items():
            for source in report["sources"]:
                acc = per[attack][source]
                ref = report["results"].get("bp", {}).get(attack, {}).get(source) if method != "bp" else None
                p = _vs_bp([r[-1] for r in acc], [r[-1] for r in ref] if ref else None)
                rows.append([method, source, *[_pm([r[j] for r in acc]) for j in range(len(eps))], fmt_p(p)])
        tables.append((["method", "gradient", *[f"ε={e:g}" for e in eps], f"p vs bp @ε={eps[-1]:g} (rank-sum, unpaired)"], rows,
                       f"{attack.upper()} accuracy (%) under attack — {report['data']}"))
    agreement = report.get("gradient_agreement") or {}
    if agreement:
        rows = [[method, _pm([a["cosine"] for a in per], scale=1.0, digits=3),
                 _pm([a["sign_agreement"] for a in per], scale=1.0, digits=3)]
                for method, per in agreement.items()]
        tables.append((["method", "cos(exact, feedback)", "sign agreement"], rows,
                       "gradient masking: the model's feedback input gradient vs its exact one, mean over test images "
                       "(1 and 1 = the same; near 0 and 0.5 = an attack along the feedback pathway is blind) — "
                       f"{report['data']}"))
    return tables


def robustness_figure(report, folder, inputs) -> list:
    from ..viz.robustness import plot_adversarial

    plot_adversarial(report, folder / "adversarial.png", title=report["data"])
    return [folder / "adversarial.png"]


# -- corruption (IFA B.9) ----------------------------------------------------------------------------
def corruption(inputs, ns) -> dict:
    from ..analysis.robustness import corruption_report

    report = corruption_report(inputs.models, inputs.data.x_test, inputs.data.y_test, corruptions=ns.corruptions,
                               severities=ns.severities, seed=ns.seed)
    report["data"] = inputs.what
    return report


def _corruption_summaries(report) -> dict:
    """``{method: [summarize_corruption(entry) per seed]}`` of a corruption report."""
    from ..analysis.robustness import summarize_corruption

    return {m: [summarize_corruption(e, report["categories"]) for e in entries]
            for m, entries in report["results"].items()}


def corruption_tables(report) -> list:
    summaries = _corruption_summaries(report)
    sev, cats = report["severities"], list(dict.fromkeys(report["categories"].values()))
    rows, cat_rows = [], []
    for m, ss in summaries.items():
        ref = summaries.get("bp") if m != "bp" else None
        p = _vs_bp([s["mean"] for s in ss], [s["mean"] for s in ref] if ref else None)
        rows.append([m, _pm([s["clean"] for s in ss]), *[_pm([s["per_severity"][k] for s in ss]) for k in sev],
                     _pm([s["mean"] for s in ss]), fmt_p(p)])
        cat_rows.append([m, *[_pm([s["per_category"][c] for s in ss]) for c in cats]])
    return [(["method", "clean", *[f"severity {k}" for k in sev], "mean", "p vs bp (mean; rank-sum, unpaired)"], rows,
             f"mean corruption accuracy (%) per severity — {report['data']}"),
            (["method", *cats], cat_rows, "mean accuracy (%) per category (over types and severities)")]


def corruption_figure(report, folder, inputs) -> list:
    from ..viz.robustness import plot_corruption

    plot_corruption(_corruption_summaries(report), folder / "corruption.png", title=report["data"])
    return [folder / "corruption.png"]


# -- out of distribution (noise paper C.5) ----------------------------------------------------------------
def ood(inputs, ns) -> dict:
    from ..analysis.generalization import ood_report

    report = ood_report(inputs.models, inputs.data, seed=ns.seed, second_source=not ns.no_second_source)
    report["data"] = inputs.what
    return report


def ood_tables(report) -> list:
    rows = [[m, *[_pm([e[s] for e in entries]) for s in report["sets"]]] for m, entries in report["results"].items()]
    return [(["method", *report["sets"]], rows, f"accuracy (%) — {report['data']}")]


def ood_figure(report, folder, inputs) -> list:
    from ..viz.robustness import plot_ood

    plot_ood(report, folder / "ood.png", title=f"out-of-distribution accuracy — {report['data']}")
    return [folder / "ood.png"]


# -- dimensionality (noise paper C.2) ------------------------------------------------------------------
def dimensionality(inputs, ns) -> dict:
    """Stored runs: ``{"data", "results": {label: [{"spectra", "feature_erank", "weight_erank"}]}}``.
    With ``--method``: ``{label: history}``, the effective ranks tracked over the preparation (noise
    pretraining) and data training of seed 0."""
    if not inputs.models:
        return dict(_tracked_dimensionality(ns, m) for m in ns.method)
    import torch

    from ..analysis.generalization import effective_rank, feature_effective_ranks, weight_spectra

    probe = inputs.data.x_test[:ns.probe]
    results = {}
    for m, seeds in inputs.models.items():
        results[m] = []
        for model in seeds:
            spectra = weight_spectra(model)
            results[m].append({"spectra": spectra, "feature_erank": feature_effective_ranks(model, probe),
                               "weight_erank": {k: effective_rank(torch.tensor(v), is_spectrum=True)
                                                for k, v in spectra.items()}})
    return {"data": inputs.what, "results": results}


def _tracked_dimensionality(ns, method: str) -> tuple[str, list]:
    """Effective ranks of a fresh ``method`` network (seed 0) over its preparation and training."""
    import torch

    from ..analysis.generalization import DimensionalityTracker
    from ..analysis.sources import config as make_config
    from ..run.config import _seed_for, build, load_data
    from ..run.trainer import train

    cfg = make_config(ns, method, 0)
    if ns.noise_samples is not None and cfg.method_object().noise_samples:
        cfg = cfg.replace(noise_samples=ns.noise_samples)
    data = load_data(cfg)
    tracker = DimensionalityTracker(probe=data.x_test[:ns.probe], keep_spectra=True)
    model = build(cfg, data)
    tracker(0, 0, model)
    cfg.method_object().prepare(model, generator=torch.Generator().manual_seed(_seed_for(cfg.seed, cfg.label, "prepare")),
                                callback=tracker, progress=None)
    train(model, data, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=0, device=ns.device,
          callbacks=[tracker], grad_alignment=False, description=cfg.label)
    return cfg.label, tracker.history


def dimensionality_tables(result) -> list:
    if "results" not in result:
        tables = []
        for label, history in result.items():
            first, last = history[0], history[-1]
            rows = [[k, f"{first['weights'][k]:.1f}", f"{last['weights'][k]:.1f}"] for k in first["weights"]]
            tables.append((["layer", "erank at init", "erank at end"], rows, f"{label}: effective rank of W"))
        return tables
    first = next(iter(result["results"].values()))[0]
    layers, feats = list(first["weight_erank"]), list(first["feature_erank"])
    rows = [[m, *[_pm([e["weight_erank"][k] for e in es], scale=1) for k in layers],
             *[_pm([e["feature_erank"][k] for e in es], scale=1) for k in feats]] for m, es in result["results"].items()]
    return [(["method", *[f"W {k}" for k in layers], *[f"features {k}" for k in feats]], rows,
             f"effective rank (Roy & Vetterli 2007) — {result['data']}")]


def dimensionality_figure(result, folder, inputs) -> list:
    from ..viz.robustness import plot_dimensionality, plot_spectra

    if "results" not in result:
        files = []
        for label, history in result.items():
            files.append(folder / f"dimensionality_{label}.png")
            plot_dimensionality(history, files[-1], title=f"{label} — effective rank (Roy & Vetterli 2007)")
        return files
    plot_spectra({m: entries[0]["spectra"] for m, entries in result["results"].items()}, folder / "spectra.png",
                 title=f"singular values of W (seed 0) — {result['data']}")
    return [folder / "spectra.png"]


# -- meta-learning (noise paper D) ----------------------------------------------------------------------
def meta(inputs, ns) -> dict:
    """Meta-loss over noise pretraining of fresh FA MLPs (one per seed) and, with
    ``--adapt-epochs``, task adaptation from the untrained and the noise-pretrained network."""
    import copy

    import torch

    from ..analysis.meta import default_tasks, meta_loss_curve, task_adaptation
    from ..models import mlp

    tasks = default_tasks(train_size=ns.task_size)
    print("tasks: " + ", ".join(t.name for t in tasks), file=sys.stderr)
    result = {"tasks": [t.name for t in tasks], "noise_samples": ns.noise_samples, "seeds": ns.seeds, "runs": {},
              "inner_steps": ns.inner_steps, "inner_lr": ns.inner_lr, "k": ns.k, "adapt_epochs": ns.adapt_epochs}
    for seed in range(ns.seeds):
        gen = torch.Generator().manual_seed(seed)
        model = mlp([784, *ns.hidden, 10], rule="fa", input_shape=(1, 28, 28), generator=gen)
        untrained = copy.deepcopy(model)
        entry = {"meta_loss": meta_loss_curve(model, tasks, noise_samples=ns.noise_samples, every=ns.every, generator=gen,
                                              k=ns.k, inner_steps=ns.inner_steps, inner_lr=ns.inner_lr, seed=seed)}
        if ns.adapt_epochs:
            entry["adaptation"] = {
                name: task_adaptation(m, tasks, epochs=ns.adapt_epochs, seed=seed, device=ns.device)
                for name, m in (("untrained", untrained), ("noise-pretrained", model))}
        result["runs"][seed] = entry
    return result


def _meta_histories(result) -> dict:
    return {f"noise-pretrained FA, seed {seed}": e["meta_loss"] for seed, e in result["runs"].items()}


def meta_tables(result) -> list:
    rows = [[label, f"{h[0]['meta_loss']:.3f}", f"{h[-1]['meta_loss']:.3f}"] for label, h in _meta_histories(result).items()]
    tables = [(["run", "meta-loss before noise", f"after {result['noise_samples']:,} noise samples"], rows,
               f"meta-loss: {result['inner_steps']} Adam steps at lr {result['inner_lr']:g}, k={result['k']} per class")]
    if result["adapt_epochs"]:
        rows = [[str(seed), cond, *[f"{100 * max(r.get('test_acc', math.nan) for r in per_task[t]):.1f}"
                                    for t in result["tasks"]]]
                for seed, entry in result["runs"].items() for cond, per_task in entry["adaptation"].items()]
        tables.append((["seed", "start", *result["tasks"]], rows,
                       f"task adaptation: best test accuracy (%), {result['adapt_epochs']} epochs"))
    return tables


def meta_figure(result, folder, inputs) -> list:
    from ..viz.robustness import plot_meta

    plot_meta(_meta_histories(result), folder / "meta.png", title=f"meta-loss ({', '.join(result['tasks'])})")
    return [folder / "meta.png"]


# -- calibration and OOD detection (issue 17; Cheon & Paik, arXiv 2412.17411) ---------------------
def _folder(inputs, ns, name):
    from ..analysis.sources import save_folder

    return save_folder(ns.save, inputs.root, name)


def calibration(inputs, ns) -> dict:
    """ECE (``ns.bins`` equal-width bins, mean confidence per bin; Guo et al. 2017), MCE, adaptive
    ECE, NLL and Brier of every RUN on its test set; reliability diagrams per method and the tracked
    confidence curves are written with it (:func:`prealign.analysis.calibration.analyze_runs`, then
    :func:`prealign.viz.uncertainty.plot_reliability` / ``plot_calibration_curves``)."""
    from ..analysis.calibration import analyze_runs
    from ..viz.uncertainty import plot_calibration_curves, plot_reliability

    folder = _folder(inputs, ns, "calibration")
    result, per_method, curves = analyze_runs(inputs.store, ns.runs, n_bins=ns.bins)
    result["figures"] = [str(plot_reliability(folder / "reliability.png", per_method))]
    if curves:
        result["figures"].append(str(plot_calibration_curves(folder / "calibration_curves.png", curves)))
    return result


def calibration_lines(result) -> list[str]:
    n = result["n_bins"]
    return [f"run {rid} {r['label']} (seed {r['seed']}): accuracy {100 * r['accuracy']:.2f} %, mean confidence "
            f"{100 * r['mean_confidence']:.2f} %, ECE {100 * r['ece']:.2f} % ({n} bins), MCE {100 * r['mce']:.2f} %, "
            f"adaptive ECE {100 * r['adaptive_ece']:.2f} %, NLL {r['nll']:.4f}, Brier {r['brier']:.4f}"
            for rid, r in result["runs"].items()]


def ood_detection(inputs, ns) -> dict:
    """MSP and energy scores of ``ns.samples`` test images of every RUN vs each offline OOD set:
    AUROC and FPR at 95 % TPR (scikit-learn), ROC curves and confidence histograms written with it
    (:func:`prealign.analysis.ood_detection.analyze_runs`, then :func:`prealign.viz.uncertainty.plot_roc`
    and ``plot_confidence_histograms``)."""
    from ..analysis.ood_detection import analyze_runs
    from ..viz.uncertainty import plot_confidence_histograms, plot_roc

    folder = _folder(inputs, ns, "ood-detection")
    result, scores = analyze_runs(inputs.store, ns.runs, n=ns.samples, seed=ns.seed)
    result["figures"] = [str(plot_roc(folder / "roc.png", scores)),
                         str(plot_confidence_histograms(folder / "confidence_histograms.png", scores))]
    for name, why in result["skipped"].items():
        inputs.note(f"OOD set {name} not available: {why}")
    return result


def ood_detection_lines(result) -> list[str]:
    lines = []
    for rid, r in result["runs"].items():
        lines.append(f"run {rid} {r['label']} (seed {r['seed']}, {r['dataset']}): in-distribution confidence "
                     f"{100 * r['in_confidence']:.1f} %")
        lines += [f"  {name:14s} AUROC MSP {e['auroc_msp']:.3f}  energy {e['auroc_energy']:.3f}  "
                  f"FPR@95%TPR MSP {e['fpr95_msp']:.3f}  confidence {100 * e['mean_confidence']:.1f} %"
                  for name, e in r["sets"].items()]
    return lines


def written_figures(result, folder, inputs) -> list:
    """The figures an analysis wrote while computing (``result["figures"]``)."""
    from pathlib import Path

    return [Path(f) for f in result.get("figures", [])]
