"""Run an experiment: sweep its grid into the store, analyse, draw, tabulate, check claims, report.

``reproduce(experiment, budget, store, out)`` writes ``out/<name>/``: one PNG per figure
output, ``tables.md``, ``results.csv`` (one row per run), ``report.md``; and returns an
:class:`ExperimentResult` with the claim verdicts. :func:`reproduce_many` runs several and
writes the claims checklist (``out/claims.md``).
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import PAPERS, Experiment, method_label
from . import analyses as an
from . import outputs as outs
from .claims import Verdict, check_claim, checklist_markdown, describe
from . import design
from .design import plan_row

STANDARD_METRICS = ("best_test_acc", "final_test_acc", "max_train_acc", "max_test_acc", "final_train_loss",
                    "final_test_loss", "gen_error", "auc_test_acc", "best_epoch", "epochs_run", "diverged")


# ------------------------------------------------------------------------------------ sweep unit
class ExperimentRun:
    """One grid point as a sweep item: keyed like its RunConfig (so the store dedups), carrying
    the trackers to attach during training."""

    def __init__(self, config, track: list[dict]):
        self.config, self.track = config, track

    def key(self) -> str:
        return self.config.key()

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "track": self.track}

    def batch_config(self):
        """The RunConfig when this point is a plain run (no trackers): the sweep may then train it
        in a batched group (:mod:`prealign.run.sweep_batched`); None with trackers."""
        return None if self.track else self.config


def experiment_task(payload: dict, store_path: str) -> dict:
    """Worker: train one grid point with its trackers (see :func:`prealign.run.sweep.train_task`)."""
    import os
    import tempfile

    from ..run.config import RunConfig
    from ..run.storage import Storage
    from ..run.sweep import train_task

    callbacks = an.callbacks_for(payload.get("track", []))
    out = train_task(payload["config"], store_path, callbacks=callbacks)
    recorders = [cb for cb in callbacks if type(cb).__name__ == "TrajectoryRecorder"]
    if recorders and out.get("status") in ("finished", "diverged") and len(recorders[0]):
        # into the run's storage, beside its checkpoint: on a cluster the driver finds it there
        storage = getattr(store_path, "storage", None) or Storage(Path(os.fspath(store_path)).parent / "checkpoints")
        with tempfile.TemporaryDirectory(prefix="prealign-trajectory-") as tmp:
            local = recorders[0].save(Path(tmp) / "snapshots.npy")
            storage.put(local, an.trajectory_file(RunConfig.from_dict(payload["config"]).key()))
    return out


# ------------------------------------------------------------------------------------ results
@dataclass
class RunInfo:
    """A run of the experiment as the reports see it."""

    axes: dict
    config: dict
    key: str
    status: str = "not run"
    run_id: int | None = None
    curves: list = field(default_factory=list)
    error: str | None = None
    row: dict = field(default_factory=dict)


class Context:
    """What analyses and outputs see: the runs, a model/data loader, notes and artifacts."""

    def __init__(self, experiment: Experiment, budget: str, store, runs: list[RunInfo]):
        self.experiment, self.budget, self.store, self.runs = experiment, budget, store, runs
        self.notes: list[str] = []
        self.artifacts: dict = {}
        self._models: dict = {}

    def done_runs(self) -> list[RunInfo]:
        return [r for r in self.runs if r.status in ("finished", "diverged")]

    def note(self, text: str) -> None:
        self.notes.append(text)

    def model(self, run: RunInfo):
        if run.run_id not in self._models:
            if len(self._models) > 8:
                self._models.clear()
            model = self.store.load_model(run.run_id)
            model.eval()
            self._models[run.run_id] = model
        return self._models[run.run_id]

    def data(self, config: dict):
        from ..run.config import RunConfig, load_data

        return load_data(RunConfig.from_dict(config))


def _metrics(curves: list[dict], summary: dict) -> dict:
    """The standard scalar columns of one run, from its per-epoch curves (epoch 0 = init)."""
    trained = [c for c in curves if c.get("epoch", 0) >= 1] or curves
    out = {}

    def series(key):
        return [float(c[key]) for c in trained if c.get(key) is not None and math.isfinite(float(c[key]))]

    def last(key):
        for c in reversed(trained):
            v = c.get(key)
            if v is not None:
                return float(v)
        return math.nan

    out["best_test_acc"] = float(summary.get("best_test_acc", max(series("test_acc"), default=math.nan)))
    out["late_gain"] = _late_gain([c for c in curves if c.get("epoch", 0) >= 1])
    out["stopped_early"] = bool(summary.get("stopped_early", False))
    out["fingerprint"] = _fingerprint(curves)
    out["best_epoch"] = summary.get("best_epoch", math.nan)
    out["epochs_run"] = summary.get("epochs_run", len(trained))
    out["diverged"] = 1.0 if summary.get("diverged") else 0.0
    for key in ("test_acc", "train_acc", "test_loss", "train_loss"):
        out[f"final_{key}"] = last(key)
    out["max_train_acc"] = max(series("train_acc"), default=math.nan)
    out["max_test_acc"] = max(series("test_acc"), default=math.nan)
    out["gen_error"] = out["final_test_loss"] - out["final_train_loss"]
    accs = series("test_acc")
    out["auc_test_acc"] = sum(accs) / len(accs) if accs else math.nan
    angles = [k for k in (curves[0] if curves else {}) if k.startswith("angle/")]
    for k in angles:
        out[f"init_{k}"] = float(curves[0][k]) if curves[0].get(k) is not None else math.nan
        out[f"final_{k}"] = last(k)
    hidden = angles[1:]  # the first layer's B carries no learning signal
    if hidden:
        out["init_angle"] = sum(out[f"init_{k}"] for k in hidden) / len(hidden)
        out["final_angle"] = sum(out[f"final_{k}"] for k in hidden) / len(hidden)
    for key in ("hessian_trace", "hessian_top_eig"):
        vals = series(key)
        if vals:
            out[f"{key}_final"] = vals[-1]
            out[f"{key}_mean"] = sum(vals) / len(vals)
    out["seconds"] = summary.get("seconds", math.nan)
    return out


def _late_gain(trained: list[dict]) -> float:
    """Best test accuracy over the last fifth of the epochs minus the best before (run health,
    :mod:`.health`: > 1 point is "still improving"); NaN with fewer than 2 trained epochs."""
    accs = [float(c["test_acc"]) for c in trained if c.get("test_acc") is not None]
    if len(accs) < 2:
        return math.nan
    tail = max(1, math.ceil(len(accs) / 5))
    return max(accs[-tail:]) - max(accs[:-tail])


def _fingerprint(curves: list[dict]) -> str:
    """A hash of everything a run recorded per epoch except timings: equal for runs that trained
    the same network by construction (σ = 0 under any noise kind), so claims count them once."""
    import hashlib
    import json

    kept = [{k: v for k, v in sorted(c.items()) if "seconds" not in k} for c in curves]
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _collect(points, store) -> list[RunInfo]:
    runs = []
    for p in points:
        row, d = plan_row(p)
        info = RunInfo(axes=p["axes"], config=d, key=row["run_key"])
        found = store.find(info.key)
        summary = {}
        if found is not None:
            info.status, info.run_id = found["status"], found["id"]
            info.error = found.get("error") if hasattr(found, "get") else None
            if info.status in ("finished", "diverged"):
                res = store.result(info.run_id)
                info.curves = res.curves
                summary = res.to_dict(curves=False)
        row["selection"] = summary.get("selection", "test")  # rows stored before TrainResult.selection: test
        if info.status in ("finished", "diverged"):
            row.update(_metrics(info.curves, summary))
        info.row = row
        runs.append(info)
    return runs


# ------------------------------------------------------------------------------------ report
@dataclass
class ExperimentResult:
    name: str
    ref: str
    budget: str
    folder: Path
    verdicts: list[Verdict]
    counts: dict
    seconds: float
    produced: list
    missing: list
    plans: list = field(default_factory=list)  # each claim's design at this budget (prealign.experiments.design)


def _stand_in_data(exp: Experiment, budget: str) -> tuple[list[str], list[str]]:
    """(the paper's data sets, the budget's data sets that are not among them)."""
    paper_data = exp.paper.get("data") or exp.datasets("paper")
    paper_list = paper_data if isinstance(paper_data, list) else [paper_data]
    return paper_list, [d for d in exp.datasets(budget) if d not in paper_list]


def stand_in_text(exp: Experiment, budget: str, notes: list[str]) -> str:
    """What a claim of ``exp`` was checked on instead of the paper's data, or ``""``: the budget's
    stand-in data sets and any substitute an analysis chose (its note says "stand-in")."""
    paper_list, stand_in = _stand_in_data(exp, budget)
    parts = [f"{', '.join(stand_in)} in place of the paper's {', '.join(paper_list)}"] if stand_in else []
    parts += [n for n in notes if "stand-in" in n or "stand in" in n]
    return "; ".join(parts)


def _data_note(exp: Experiment, budget: str) -> str:
    paper_list, stand_in = _stand_in_data(exp, budget)
    used = exp.datasets(budget)
    if not stand_in:
        return f"Data: {', '.join(used)} (as in the paper)."
    return (f"**Stand-in data.** The paper uses {', '.join(paper_list)}; this `{budget}` budget uses "
            f"{', '.join(used)} instead (offline and small enough for the budget). Numbers are therefore "
            f"not comparable to the paper's in absolute terms; the claims are checked on the stand-in.")


def reproduce(exp: Experiment, budget: str, store, out: str | Path, *, executor: str = "local",
              workers: int | None = None, address: str | None = None, progress: bool | None = None,
              only: dict | None = None, train: bool = True, batch_models: bool | int | str = "auto",
              **sweep_options) -> ExperimentResult:
    """Sweep, analyse and report one experiment at one budget (see the module docstring).

    ``only``: ``{axis: [labels]}`` restricts the grid; ``train=False`` trains nothing and reports
    on the runs already finished in the store (the others are listed as not run / running);
    ``batch_models`` and ``sweep_options`` (storage, gpus_per_run, ...): as :func:`prealign.run.sweep.run_sweep`."""
    from ..run.config import RunConfig
    from ..run.sweep import run_sweep

    start = time.perf_counter()
    folder = Path(out) / exp.name
    folder.mkdir(parents=True, exist_ok=True)
    points = exp.points(budget, only)
    params = exp.analysis_params(budget)
    track = [p for p in params if p.get("track")]
    usable_track = [t for t in track if an.trackable(t)]
    if usable_track:
        # the same config trained without the tracker has no tracked values: runs with trackers
        # live in their own store, so the keys never collide with untracked runs of other experiments
        from ..run.store import Store

        store = Store(Path(store.root) / "tracked" / exp.name)
    items = [ExperimentRun(RunConfig.from_dict(p["config"]), usable_track) for p in points]
    if train:
        outcomes = run_sweep(items, store, executor=executor, workers=workers, address=address, progress=progress,
                             task="prealign.experiments.runner:experiment_task", batch_models=batch_models, **sweep_options)
    else:  # report on what the store holds now (e.g. while a long sweep is still running elsewhere)
        outcomes = []
    errors = {o.key: o.error for o in outcomes if o.error}
    runs = _collect(points, store)
    for r in runs:
        r.error = errors.get(r.key, r.error)
    ctx = Context(exp, budget, store, runs)
    for t in track:
        if t not in usable_track:
            ctx.note(f"tracker '{t['kind']}' could not be built here; its per-epoch values are absent")

    produced, missing = [], []
    for p in params:
        if p.get("track") and p["kind"] != "trajectory":  # tracked values are already in the curves
            continue
        fn = an.ANALYSES.get(p["kind"])
        if fn is None:
            missing.append((f"analysis {p['kind']}", "unknown analysis kind"))
            continue
        try:
            fn(ctx, p)
        except an.Unavailable as exc:
            missing.append((f"analysis {p['kind']}", str(exc)))
        except Exception as exc:  # noqa: BLE001 - one broken analysis must not lose the rest of the report
            missing.append((f"analysis {p['kind']}", f"failed: {type(exc).__name__}: {exc}"))

    figures, tables = [], []
    for i, o in enumerate(exp.outputs):
        panel = o.get("panel", f"output {i + 1}")
        try:
            if o["kind"] == "table":
                tables.append((panel, o.get("title", ""), outs.table(o, ctx)))
            else:
                fname = f"{exp.name}_{i + 1:02d}_{o['kind']}.png"
                outs.FIGURES[o["kind"]](o, ctx, folder / fname)
                figures.append((panel, o.get("title", ""), fname))
            produced.append(panel)
        except an.Unavailable as exc:
            missing.append((panel, str(exc)))
        except Exception as exc:  # noqa: BLE001
            missing.append((panel, f"failed: {type(exc).__name__}: {exc}"))

    rows = [r.row for r in ctx.done_runs()]
    axes, stand_in = list(exp.settings(budget)[1]), stand_in_text(exp, budget, ctx.notes)
    plans = design.plan(exp, budget, only)
    same = {p.id: p.same_as for p in plans}
    verdicts = [check_claim(c, rows, exp.name, axes=axes, stand_in=stand_in, budget=budget, same_as=same[c["id"]],
                            analyses=design.analyses_of(exp, budget)) for c in exp.claims]
    write_claims(folder / "claims.json", budget, verdicts)
    counts = {s: sum(r.status == s for r in runs) for s in ("finished", "diverged", "failed", "running", "not run")}
    _write_csv(folder / "results.csv", [r.row for r in runs])
    (folder / "tables.md").write_text("\n\n".join(f"### {p} {t}\n\n{md}" for p, t, md in tables) + "\n")
    seconds = time.perf_counter() - start
    result = ExperimentResult(exp.name, exp.ref, budget, folder, verdicts, counts, seconds, produced, missing, plans)
    (folder / "report.md").write_text(_report(exp, budget, ctx, result, figures, tables, outcomes))
    return result


def _write_csv(path: Path, rows: list[dict]) -> None:
    cols = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _report(exp, budget, ctx, result, figures, tables, outcomes) -> str:
    base, grid = exp.settings(budget)
    lines = [f"# {exp.ref}: {exp.paper['title']}", "",
             f"*{exp.paper.get('caption', '')}*", "",
             f"Paper: *{PAPERS[exp.paper['paper']]}* — {', '.join([exp.paper['ref'], *exp.paper.get('also', [])])}. "
             f"Budget: **{budget}**"
             + (f" ({exp.budgets[budget]['note']})" if exp.budgets[budget].get("note") else "") + ".", "",
             _data_note(exp, budget), "", "## Settings", "",
             "Base: " + ", ".join(f"`{k}={v}`" for k, v in base.items()), "",
             "Grid: " + "; ".join(f"`{k}` ∈ {v}" for k, v in grid.items()), "",
             f"## Runs ({len(ctx.runs)})", "",
             ", ".join(f"{n} {s}" for s, n in result.counts.items() if n) + f"; wall time {result.seconds:.1f} s "
             f"(skipped as already in the store: {sum(o.status == 'skipped' for o in outcomes)}).", ""]
    failed = [r for r in ctx.runs if r.status not in ("finished", "diverged")]
    for r in failed[:20]:
        lines.append(f"- {r.status}: {r.axes} — {r.error or 'no error recorded'}")
    if failed:
        lines.append("")
    lines += ["## Figures", ""]
    for panel, title, fname in figures:
        lines += [f"### {panel} {title}", "", f"![{panel}]({fname})", ""]
    if tables:
        lines += ["## Tables", ""]
        for panel, title, md in tables:
            lines += [f"### {panel} {title}", "", md, ""]
    if result.missing:
        lines += ["## Not produced", ""]
        lines += [f"- **{what}**: {why}" for what, why in result.missing]
        lines.append("")
    if ctx.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in ctx.notes] + [""]
    if result.verdicts:
        lines += ["## Claims", "", "Design at this budget (known before training: one number per seed, the smallest p "
                  "its exact test can reach):", "", design.markdown(result.plans), "",
                  checklist_markdown(result.verdicts), "", audit_text(result.verdicts), ""]
    return "\n".join(lines)


def write_claims(path: Path, budget: str, verdicts: list[Verdict]) -> None:
    """``claims.json``: every verdict with the record :func:`prealign.experiments.audit.audit` re-checks."""
    import json

    path.write_text(json.dumps({"budget": budget, "claims": [v.to_dict() for v in verdicts]}, indent=1) + "\n")


def audit_text(verdicts: list[Verdict]) -> str:
    """The audit of these verdicts as a report paragraph (:mod:`prealign.experiments.audit`)."""
    from .audit import audit

    problems = audit(verdicts)
    if not problems:
        return ("**Audit: passed** — no claim tests more units than distinct seeds, no held/not-held verdict where "
                "the design's smallest p exceeds α, no two claims share a test on the same numbers, no held/not-held "
                "verdict compares a method at chance.")
    return "**Audit: failed**\n\n" + "\n".join(f"- {p}" for p in problems)


def reproduce_many(experiments: list[Experiment], budget: str, store, out: str | Path, **kwargs) -> list[ExperimentResult]:
    """:func:`reproduce` each experiment in turn, then write ``out/claims.md`` (the checklist)
    and ``out/index.md``. One experiment's crash is reported, not raised."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, verdicts, crashed = [], [], []
    for exp in experiments:
        try:
            res = reproduce(exp, budget, store, out, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reproduce the rest; say which one broke
            from ..errors import PrealignError

            if isinstance(exc, PrealignError) and len(experiments) == 1:
                raise
            crashed.append((exp.name, f"{type(exc).__name__}: {exc}"))
            verdicts += [Verdict(c["id"], c["text"], describe(c), "not run", reason=f"experiment crashed: {exc}",
                                 experiment=exp.name) for c in exp.claims]
            continue
        results.append(res)
        verdicts += res.verdicts
    (out / "claims.md").write_text(f"# Claims checklist (budget: {budget})\n\n" + checklist_markdown(verdicts) + "\n\n"
                                   + audit_text(verdicts) + "\n")
    write_claims(out / "claims.json", budget, verdicts)
    index = ["| experiment | reference | runs | produced | not produced | seconds |", "|---|---|---|---|---|---|"]
    for r in results:
        index.append(f"| [{r.name}]({r.name}/report.md) | {r.ref} | "
                     + ", ".join(f"{n} {s}" for s, n in r.counts.items() if n)
                     + f" | {len(r.produced)} | {len(r.missing)} | {r.seconds:.0f} |")
    for name, err in crashed:
        index.append(f"| {name} | — | crashed: {err} | | | |")
    (out / "index.md").write_text("# Reproduction index\n\n" + "\n".join(index) + "\n")
    return results
