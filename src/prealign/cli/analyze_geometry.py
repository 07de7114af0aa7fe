"""``prealign analyze hessian RUN...`` and ``prealign analyze landscape RUN...`` (IFA paper B.6–B.8).

RUN is a stored run id or key prefix (``prealign runs list``). Each command writes JSON and PNG
figures to ``--save`` (default ``<out>/analysis/<command>``) and prints one line per run.
"""
from __future__ import annotations

import json
from pathlib import Path

from .args import FOLDER, POSITIVE, POSITIVE_FLOAT, SEED, STORE, Int


def register_analyze(sub) -> None:
    h = sub.add_parser("hessian", help="Hessian top eigenvalues, trace and spectral density of stored runs (IFA B.7)")
    h.add_argument("runs", nargs="+", metavar="RUN")
    h.add_argument("--samples", type=POSITIVE, default=1000, help="training samples the Hessian is taken on (default 1000)")
    h.add_argument("--k", type=POSITIVE, default=1, help="top eigenvalues (default 1)")
    h.add_argument("--probes", type=POSITIVE, default=50, help="Hutchinson probes (default 50)")
    h.add_argument("--density-probes", type=POSITIVE, default=5, help="SLQ probes (default 5)")
    h.add_argument("--lanczos-steps", type=POSITIVE, default=30, help="Lanczos steps per SLQ probe (default 30)")
    h.add_argument("--seed", type=SEED, default=0)
    _common(h)
    h.set_defaults(func=_hessian)
    ls = sub.add_parser("landscape", help="perturbed loss landscape (IFA B.8) and, with --trajectory, "
                                          "the training trajectory in its PCA plane (IFA B.6)")
    ls.add_argument("runs", nargs="+", metavar="RUN")
    ls.add_argument("--radius", type=POSITIVE_FLOAT, default=1.0, help="grid half-width along the eigenvectors (default 1.0)")
    ls.add_argument("--grid", type=Int(3, odd=True), default=21,
                    help="points per axis, odd so the trained point is the centre (default 21)")
    ls.add_argument("--samples", type=POSITIVE, default=1000, help="training samples for the Hessian / trajectory loss (default 1000)")
    ls.add_argument("--trajectory", action="store_true",
                    help="also re-train the run's config (same seed) recording every epoch, then plot its PCA landscape")
    ls.add_argument("--seed", type=SEED, default=0)
    _common(ls)
    ls.set_defaults(func=_landscape)


def _common(p) -> None:
    p.add_argument("--out", type=STORE, default=None, help="output root holding the store (default $PREALIGN_RUNS or ./prealign-runs)")
    p.add_argument("--save", type=FOLDER, default=None, help="folder for JSON and PNG (default <out>/analysis/<command>)")


def _store(args):
    """The store at ``--out``, read-only (measuring never writes it), with every RUN resolvable."""
    from ..run.store import Store

    store = Store(args.out, read_only=True)
    for run in args.runs:
        store.resolve(run)  # an unknown RUN fails before any output folder is made
    return store


def _load(store, run):
    from ..run.config import load_data

    model = store.load_model(run, device="cpu")
    return model, load_data(model.run_config)


def _folder(args, store, command) -> Path:
    from .analyze import save_folder

    return save_folder(args.save, store.root, command)


def _hessian(args) -> int:
    from ..analysis import hessian_summary
    from ..viz.geometry import plot_hessian_tracking, plot_spectral_density

    densities, tracked, out = {}, {}, {}
    store = _store(args)
    folder = _folder(args, store, "hessian")
    for run in args.runs:
        model, data = _load(store, run)
        row = store.get(run)
        name = f"{row['id']} {row['label']}"
        s = hessian_summary(model, data.x_train, data.y_train, n_samples=args.samples, k=args.k, probes=args.probes,
                            density_probes=args.density_probes, lanczos_steps=args.lanczos_steps, seed=args.seed)
        out[str(row["id"])] = {"label": row["label"], **s}
        densities[name] = (s["density_grid"], s["density"])
        recs = [r for r in store.epochs(row["id"]) if r.get("hessian_trace") is not None]
        if recs:
            tracked[name] = ([r["epoch"] for r in recs], [r["hessian_trace"] for r in recs],
                             [r["hessian_top_eig"] for r in recs])
        print(f"run {name}: top eigenvalue(s) {', '.join(f'{v:.4g}' for v in s['top_eigenvalues'])}, "
              f"trace {s['trace']:.4g} ± {s['trace_stderr']:.2g}, {s['seconds']['total']:.1f} s")
    (folder / "hessian.json").write_text(json.dumps(out, indent=1))
    plot_spectral_density(folder / "spectral_density.png", densities)
    if tracked:
        plot_hessian_tracking(folder / "hessian_tracking.png", tracked)
    print(f"wrote {folder}")
    return 0


def _landscape(args) -> int:
    import numpy as np
    import torch

    from ..analysis import TrajectoryRecorder, flat_parameters, perturbed_surface, trajectory_surface
    from ..errors import PrealignError
    from ..viz.geometry import (plot_perturbed_surface, plot_perturbed_surfaces, plot_trajectory_landscape,
                                  plot_trajectory_landscapes)

    out, surfaces, paths = {}, {}, {}
    store = _store(args)
    folder = _folder(args, store, "landscape")
    for run in args.runs:
        model, data = _load(store, run)
        row = store.get(run)
        n = args.samples
        axis = np.linspace(-args.radius, args.radius, args.grid)
        p = perturbed_surface(model, None, data.x_test, data.y_test, hessian_x=data.x_train[:n],
                              hessian_y=data.y_train[:n], alphas=axis, betas=axis, seed=args.seed)
        plot_perturbed_surface(folder / f"perturbed_{row['id']}.png", p["alphas"], p["betas"], p["loss"],
                               title=f"run {row['id']} {row['label']}: test loss")
        surfaces[f"run {row['id']} {row['label']}"] = (p["alphas"], p["betas"], p["loss"])
        entry = {"label": row["label"], "eigenvalues": p["eigenvalues"].tolist(), "alphas": axis.tolist(),
                 "perturbed_test_loss": p["loss"].tolist()}
        if args.trajectory:
            from ..run.config import run as run_config

            rec = TrajectoryRecorder(max_in_memory=32)
            config = model.run_config
            again = run_config(config, None, callbacks=[rec], progress=None)
            trained = flat_parameters(model)
            if again.diverged or not torch.allclose(torch.from_numpy(rec[-1]),
                                                   trained.float(), rtol=1e-4, atol=1e-5):
                raise PrealignError(f"re-training run {row['id']} did not reproduce its stored weights (different "
                                    "machine or library version?); the trajectory would not belong to this run")
            s = trajectory_surface(model, rec, data.x_train[:n], data.y_train[:n], n=args.grid)
            rec.close()
            plot_trajectory_landscape(folder / f"trajectory_{row['id']}.png", s["alphas"], s["betas"], s["loss"],
                                      s["coords"], s["explained_variance_ratio"], title=f"run {row['id']} {row['label']}")
            paths[f"run {row['id']} {row['label']}"] = (s["alphas"], s["betas"], s["loss"], s["coords"],
                                                        s["explained_variance_ratio"])
            entry["trajectory"] = {k: np.asarray(s[k]).tolist() for k in
                                   ("alphas", "betas", "loss", "coords", "explained_variance_ratio")}
        out[str(row["id"])] = entry
        print(f"run {row['id']} {row['label']}: top-2 eigenvalues {p['eigenvalues'][0]:.4g}, {p['eigenvalues'][1]:.4g}; "
              f"test loss at the trained point {p['loss'][args.grid // 2, args.grid // 2]:.4g}")
        (folder / "landscape.json").write_text(json.dumps(out, indent=1))
    if len(surfaces) > 1:  # the runs side by side on one colour scale, to be compared
        plot_perturbed_surfaces(folder / "perturbed_all.png", surfaces, title="test loss along top-2 Hessian eigenvectors")
    if len(paths) > 1:
        plot_trajectory_landscapes(folder / "trajectory_all.png", paths, title="training trajectories")
    print(f"wrote {folder}")
    return 0
