"""Summaries, tables and the Markdown report of a comparison (``prealign compare``).

``summarize(groups)`` turns ``{method label: [TrainResult per seed]}`` into one row per method:
best test accuracy mean ± sample std (n seeds), best epoch, final alignment angle per layer
(mean over seeds, degrees), wall time, the model-selection protocol (``selection``: ``"val"`` =
test accuracy at the best-validation epoch, ``"test"`` = the papers' best test accuracy), and
exact two-sided Wilcoxon signed-rank p-values of the seed-paired differences of the best accuracies
against ``bp`` and against ``fa`` (:mod:`prealign.stats`; none with fewer than 2 common seeds).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..stats import fmt_p, fmt_pm, markdown_table, mean_std, paired_signed_rank
from ..run.store import json_safe  # one definition, beside the store that writes JSON


def _last_finite(curves, key):
    for r in reversed(curves):
        v = r.get(key)
        if v is not None and math.isfinite(v):
            return v
    return float("nan")


def layer_keys(groups) -> list[str]:
    """``angle/<layer>`` keys in layer order, from the runs' epoch-0 records (all runs: a bp or dfa
    run has none, as its rule never reads ``B``)."""
    keys: list[str] = []
    for results in groups.values():
        for res in results:
            if res.curves:
                keys += [k for k in res.curves[0] if k.startswith("angle/") and k not in keys]
    return keys


def _p(by_seed: dict, label: str, ref: str) -> float:
    """Exact two-sided signed-rank p of ``label`` minus ``ref`` over the seeds both ran (the seed is the
    unit: a seed's methods share its initial network and data order); NaN with fewer than 2 such seeds."""
    if ref not in by_seed or label == ref:
        return float("nan")
    return paired_signed_rank(by_seed[label], by_seed[ref])


def selection_of(results) -> str:
    """``"val"`` / ``"test"`` of the runs (``TrainResult.selection``; results stored before it
    existed were selected on test), ``"mixed"`` if they differ."""
    found = {getattr(r, "selection", None) or "test" for r in results}
    return found.pop() if len(found) == 1 else "mixed"


def summarize(groups: dict[str, list]) -> list[dict[str, Any]]:
    """One dict per method label (accuracies as fractions, angles in degrees, times in seconds)."""
    keys = layer_keys(groups)
    best = {label: [r.best_test_acc for r in results] for label, results in groups.items()}
    by_seed = {label: {(r.config or {}).get("seed", i): r.best_test_acc for i, r in enumerate(results)}
               for label, results in groups.items()}
    rows = []
    for label, results in groups.items():
        acc_m, acc_s = mean_std(best[label])
        ep_m, ep_s = mean_std([r.best_epoch for r in results])
        row = {
            "method": label, "seeds": len(results), "selection": selection_of(results),
            "best_test_acc_mean": acc_m, "best_test_acc_std": acc_s,
            "best_test_acc": best[label], "best_epoch_mean": ep_m, "best_epoch_std": ep_s,
            "epochs_run": [r.epochs_run for r in results], "diverged": sum(r.diverged for r in results),
            "rule": (results[0].config or {}).get("method", label) if results else label,
            "train_seconds": sum(r.train_seconds for r in results),
            "noise_seconds": sum(r.noise_seconds for r in results),
            "wall_seconds": sum(r.seconds + r.noise_seconds for r in results),
            "final_angle": {k.split("/", 1)[1]: mean_std([_last_finite(r.curves, k) for r in results])[0] for k in keys},
            "final_grad_angle": {},
            "p_vs_bp": _p(by_seed, label, "bp"),
            "p_vs_fa": _p(by_seed, label, "fa"),
            "run_ids": [r.run_id for r in results],
        }
        grad_keys = [k for k in (results[0].curves[0] if results and results[0].curves else {}) if k.startswith("grad_angle/")]
        row["final_grad_angle"] = {k.split("/", 1)[1]: mean_std([_last_finite(r.curves, k) for r in results])[0] for k in grad_keys}
        rows.append(row)
    return rows


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted cells: accuracy in percent, angles in degrees."""
    layers = list(rows[0]["final_angle"]) if rows else []
    columns = (["method", "selection", "test acc (%)", "best epoch"] + [f"∠W,B L{i + 1} (°)" for i in range(len(layers))]
               + ["wall (s)", "p vs bp", "p vs fa"])
    cells = []
    for r in rows:
        bp_like = r["method"].split("@")[0] == "bp"
        angles = ["—" if bp_like or not math.isfinite(r["final_angle"][k]) else f"{r['final_angle'][k]:.1f}" for k in layers]
        acc = fmt_pm(r["best_test_acc_mean"], r["best_test_acc_std"], 100.0, n=r["seeds"])
        if r["diverged"]:
            acc += f" ({r['diverged']} diverged)"
        cells.append([r["method"], r.get("selection", "test"), acc, f"{r['best_epoch_mean']:.1f}", *angles, f"{r['wall_seconds']:.1f}",
                      fmt_p(r["p_vs_bp"]), fmt_p(r["p_vs_fa"])])
    return columns, cells


def write_json(path, obj) -> Path:
    path = Path(path)
    path.write_text(json.dumps(json_safe(obj), indent=2) + "\n")
    return path


def write_compare_report(folder, groups: dict[str, list], settings: dict[str, Any], wall_seconds: float,
                         command: str = "compare") -> dict[str, Any]:
    """Write ``learning_curves.png``, ``alignment.png``, ``epochs.csv``, ``summary.json`` and
    ``report.md`` into ``folder``; return the summary (also what ``--json`` prints)."""
    from ..run.store import write_csv
    from ..viz import plots

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = summarize(groups)
    columns, cells = table(rows)
    curves = {label: [r.curves for r in results] for label, results in groups.items()}
    title = f"{_g(settings['dataset'])}, {_g(settings['architecture'])}"
    plots.learning_curves(curves, folder / "learning_curves.png", title=f"Learning curves: {title}")
    plots.alignment_curves(curves, folder / "alignment.png", title=f"Alignment: {title}")
    epoch_rows = []
    for label, results in groups.items():
        for r in results:
            seed = (r.config or {}).get("seed")
            for rec in r.curves:
                epoch_rows.append({"method": label, "seed": seed, "run_id": r.run_id, "status": r.status, **rec})
    write_csv(folder / "epochs.csv", epoch_rows)
    layer_names = list(rows[0]["final_angle"]) if rows else []
    summary = {"settings": settings, "wall_seconds": wall_seconds, "methods": rows,
               "layers": {f"L{i + 1}": name for i, name in enumerate(layer_names)},
               "files": {k: str(folder / k) for k in ("report.md", "learning_curves.png", "alignment.png", "epochs.csv", "summary.json")}}
    write_json(folder / "summary.json", summary)
    budget = budget_line(settings)
    lines = [
        f"# prealign {command} — {title}", "",
        budget, "",
        markdown_table(columns, cells), "",
        "Test acc: mean ± sample std (ddof = 1) over the n seeds of each run's test accuracy at its selected epoch. "
        "Selection `val`: the epoch of best validation accuracy (held-out part of the training set), patience on "
        "validation; `test`: the papers' protocol, the epoch of best test accuracy, patience on test (optimistic) "
        f"(patience: {settings.get('patience') or 'none'}). ∠W,B: alignment angle between forward weights W and feedback B per layer "
        "at the last epoch, mean over output neurons and seeds, in degrees (90° = unaligned; "
        + ", ".join(f"L{i + 1} = module `{n}`" for i, n in enumerate(layer_names))
        + "; the first layer's B carries no learning signal). p: exact two-sided Wilcoxon signed-rank test of the "
        "seed-paired accuracy differences (a seed's methods share its initial network; none with fewer than 2 common "
        "seeds; the smallest attainable p is 0.25 with 3 seeds, 0.0625 with 5). Wall time: training + measurements + noise "
        "pretraining, summed over seeds.", "",
        "## Learning curves", "", "![learning curves](learning_curves.png)", "",
        "## Alignment over training", "",
        "Top: weight alignment ∠(W, B) per layer. Bottom: gradient alignment — the angle between the error the "
        "method's rule delivers to a hidden layer's output and the true backprop error, on one fixed batch of 256 "
        "training samples per epoch.", "", "![alignment](alignment.png)", "",
        "## Settings", "", "```json", json.dumps(json_safe(settings), indent=2), "```", "",
        f"Per-epoch metrics of every run: `epochs.csv`; machine-readable summary: `summary.json`. "
        f"Total wall time {wall_seconds:.1f} s.", "",
    ]
    (folder / "report.md").write_text("\n".join(lines))
    return summary


def _g(value) -> str:
    """A setting as text: ``1e-4`` style for a number, ``a|b`` for the values of a grid axis."""
    if isinstance(value, list):
        return "|".join(_g(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else (f"{value:,}" if isinstance(value, int) else str(value))


def budget_line(settings: dict) -> str:
    noise = settings.get("noise_samples")
    noisy = [m for m in settings.get("methods", []) if m == "rnp" or str(m).endswith("+noise")]  # labels that pretrain
    noise_txt = f"{_g(noise)} noise samples for {', '.join(noisy) or 'rnp'}" if noise else "no noise pretraining"
    return (f"Budget: {_g(settings['epochs'])} epochs max, batch {_g(settings['batch_size'])}, {_g(settings['optimizer'])} lr "
            f"{_g(settings['lr'])}, {len(settings['seeds'])} seed(s) {settings['seeds']}, {noise_txt}, "
            f"{'same' if settings.get('same_init', True) else 'independent'} initial network per seed, "
            f"device {settings['device']}.")


def settings_of(configs: list, **extra) -> dict[str, Any]:
    """The ``settings`` of a report from the runs' configs: each field's value where every run
    shares it, else the sorted list of its values (a grid axis); ``architecture`` as ``64-100-10``
    (input-hidden-classes, from the data) for MLPs. ``extra`` is added as is (workers, store...)."""
    from ..run.config import load_data

    def common(name, among=configs):
        values = list(dict.fromkeys(getattr(c, name) for c in among))
        return values[0] if len(values) == 1 else sorted(values, key=str)

    archs = []
    for c in configs:
        if c.model != "mlp":
            arch = c.model
        else:
            data = load_data(c)  # cached per data set
            n_in = math.prod(int(d) for d in data.x_train.shape[1:])
            arch = "-".join(str(v) for v in (n_in, *c.hidden, data.num_classes))
        if arch not in archs:
            archs.append(arch)
    methods = list(dict.fromkeys(c.label for c in configs))
    settings = {"dataset": common("dataset"), "architecture": archs[0] if len(archs) == 1 else archs,
                "model": common("model"), "methods": methods, "seeds": list(dict.fromkeys(c.seed for c in configs)),
                **{k: common(k) for k in ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "patience",
                                          "train_subset", "same_init", "device")},
                "noise_samples": common("noise_samples", [c for c in configs if c.noise_samples]) if any(c.noise_samples for c in configs) else 0}
    return {**settings, **extra}


def write_grid_outputs(root, prefix: str, points: list[dict], store, settings: dict[str, Any],
                       wall_seconds: float) -> tuple[Path, dict[str, Any]]:
    """The outputs of every grid of runs (``prealign compare`` and ``prealign sweep``): the stored
    results of ``points`` (:meth:`prealign.run.grid.Grid.points`) grouped over seeds by
    :func:`prealign.run.grid.group_label`, written by :func:`write_compare_report` into a fresh
    folder ``<root>/<prefix>-<timestamp>/``, plus ``runs.csv`` (one row per run: its axes, key, id,
    status, best test accuracy, the wall seconds the store recorded, the device it trained on). Every point must be finished.
    Returns (folder, summary)."""
    from datetime import datetime

    from ..run.config import RunConfig
    from ..run.grid import group_label
    from ..run.store import write_csv

    groups: dict[str, list] = {}
    run_rows = []
    for p in points:
        cfg = RunConfig.from_dict(p["config"])
        row = store.find(cfg.key())
        res = store.result(row["id"])
        label = group_label(p)
        groups.setdefault(label, []).append(res)
        run_rows.append({"group": label, **{a: v for a, v in p["axes"].items()}, "method": cfg.label, "seed": cfg.seed,
                         "key": cfg.key(), "run_id": res.run_id, "status": res.status,
                         "best_test_acc": res.best_test_acc, "best_epoch": res.best_epoch,
                         "seconds": res.seconds + res.noise_seconds, "trained_on": row.get("device")})
    root = Path(root)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder, i = root / f"{prefix}-{stamp}", 1
    while folder.exists():
        folder, i = root / f"{prefix}-{stamp}-{i}", i + 1
    summary = write_compare_report(folder, groups, settings, wall_seconds, command=prefix)
    write_csv(folder / "runs.csv", run_rows)
    with open(folder / "report.md", "a") as report:
        report.write("One row per run (its grid axes, key, store id, status, the seconds the store recorded): `runs.csv`.\n")
    summary["files"]["runs.csv"] = str(folder / "runs.csv")
    write_json(folder / "summary.json", summary)
    return folder, summary


__all__ = ["summarize", "table", "write_compare_report", "write_grid_outputs", "write_json", "budget_line", "settings_of"]
