"""The analysis registry: every analysis prealign runs on trained networks is ONE entry here.

An :class:`Analysis` says

- what it **needs** (:data:`NEEDS`): stored runs, models from runs or trained on the fly,
  BP surrogates, or nothing (it trains its own networks);
- what it **computes** for ``prealign analyze NAME`` — ``compute(inputs, options) -> dict``, a
  JSON-able result written to ``<save>/<json_name>`` (and to stdout with ``--json``), with its
  ``tables`` and summary ``lines`` for the terminal and its ``figure`` (PNG files);
- what it adds to an experiment's result rows — ``rows(ctx, params)`` for the ``[[analysis]]``
  sections of the experiment files (``kind = NAME`` or one of its ``aliases``), and ``tracker``
  where it can run during training (``track = true``);
- its command-line **params** (name, type, default, help): ``prealign analyze NAME`` builds its
  parser from them (:mod:`prealign.cli.analyze`); the common options (``--out``, ``--save``,
  ``--json``, and the model sources of :data:`NEEDS`) are added there for every entry.

Registering a new analysis is one entry::

    from prealign.reports.registry import Analysis, Param, register

    register(Analysis(
        "calibration", "expected calibration error of stored runs", needs=("models",),
        params=(Param("bins", "int>=1", 15, "confidence bins"),),
        compute=my_module.calibration_report,      # (Inputs, options) -> JSON-able dict
        tables=my_module.calibration_tables,      # result -> [(columns, rows, title)]
        figure=my_module.calibration_figure,      # (result, folder, inputs) -> [paths]
        rows=my_module.calibration_columns))      # (experiment ctx, params) -> None

and the CLI subcommand, its ``--json`` and its experiment kind exist. Implementations live in
other modules (:mod:`.analyze` for the CLI form: numbers, tables and figures;
:mod:`prealign.analysis.columns` for the experiment form; :mod:`prealign.analysis.sources` for
where the models come from), which import their measurement and drawing modules inside the
functions, so building the parser does not load them. The registry lives in :mod:`prealign.reports`,
above :mod:`prealign.analysis` (numbers) and :mod:`prealign.viz` (figures), because an entry
binds the two.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis import columns
from ..errors import PrealignError, UnknownNameError
from ..feedback.rules import RULES
from . import analyze

#: What an analysis needs, mapped to what the CLI adds for it.
NEEDS = {
    "runs": "stored RUN ids (one or more), read only",
    "models": "stored RUN ids, or --method/--dataset/--epochs/--seeds trained on the fly through the store",
    "surrogates": "BP-trained surrogates (given with --surrogate, among the runs, or trained and stored)",
    "own-training": "trains the networks it measures itself (with --method, or always when it needs no runs)",
}
#: Parameter types: the CLI maps each to a validating argparse type (prealign.cli.args).
TYPES = ("str", "int>=1", "int>=0", "seed", "float>0", "floats>=0", "odd>=3", "device", "flag")


@dataclass(frozen=True)
class Param:
    """One option of an analysis: ``--NAME`` on the command line (``type`` from :data:`TYPES`)."""

    name: str
    type: str = "str"
    default: Any = None
    help: str = ""
    nargs: str | None = None  # "+" for lists
    choices: Sequence | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


Table = tuple  # (columns: list[str], rows: list[list[str]], title: str)


def _nothing(*_args, **_kwargs):
    return []


@dataclass(frozen=True)
class Analysis:
    """One analysis; see the module docstring. Every callable is optional: an entry without
    ``compute`` has no ``prealign analyze`` subcommand, one without ``rows`` no experiment kind."""

    name: str
    help: str
    needs: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    compute: Callable[..., dict] | None = None  # (sources.Inputs, options namespace) -> JSON-able dict
    tables: Callable[[dict], list] = _nothing  # result -> [(columns, rows, title)]
    lines: Callable[[dict], list] = _nothing  # result -> summary lines printed before the tables
    figure: Callable[..., list] = _nothing  # (result, folder, inputs) -> [written paths]
    json_name: str = ""  # default f"{name}.json"
    rows: Callable | None = None  # (experiment Context, params dict) -> None: adds columns to result rows
    tracker: Callable[[dict], Any] | None = None  # params -> trainer callback, for `track = true`
    aliases: tuple[str, ...] = ()
    description: str = ""
    extra: Mapping = field(default_factory=dict)  # anything an implementation wants to keep with its entry

    def __post_init__(self):
        unknown = [n for n in self.needs if n not in NEEDS] + [p.type for p in self.params if p.type not in TYPES]
        if unknown:
            raise ValueError(f"analysis {self.name!r}: unknown need/type {unknown}; known: {sorted(NEEDS)}, {TYPES}")

    def options(self, given: Mapping | argparse.Namespace | None = None) -> argparse.Namespace:
        """The options namespace ``compute`` receives: every param's default, updated with ``given``."""
        given = vars(given) if isinstance(given, argparse.Namespace) else dict(given or {})
        base = {p.dest: (list(p.default) if isinstance(p.default, (list, tuple)) else p.default) for p in self.params}
        return argparse.Namespace(**{**base, **{k.replace("-", "_"): v for k, v in given.items()}})


REGISTRY: dict[str, Analysis] = {}
_ALIASES: dict[str, str] = {}


def register(analysis: Analysis) -> Analysis:
    """Add ``analysis`` (a name taken twice is a programming error)."""
    for name in (analysis.name, *analysis.aliases):
        if name in REGISTRY or name in _ALIASES:
            raise ValueError(f"analysis {name!r} is registered twice")
    REGISTRY[analysis.name] = analysis
    _ALIASES.update({a: analysis.name for a in analysis.aliases})
    return analysis


def get(name: str) -> Analysis:
    """The entry called ``name`` (or one of its aliases)."""
    name = _ALIASES.get(name, name)
    if name not in REGISTRY:
        raise UnknownNameError("analysis", name, sorted(REGISTRY))
    return REGISTRY[name]


def commands() -> list[Analysis]:
    """The entries that have a ``prealign analyze`` subcommand, in registration order."""
    return [a for a in REGISTRY.values() if a.compute is not None]


@dataclass
class Outcome:
    """What :func:`execute` produced: the result (as written to ``files[0]``) and what to print."""

    name: str
    result: dict
    folder: Path
    files: list
    tables: list
    lines: list
    notes: list


def execute(name: str, options: Mapping | argparse.Namespace | None = None) -> Outcome:
    """Run analysis ``name`` as ``prealign analyze NAME`` does: gather its inputs (see
    :func:`prealign.analysis.sources.gather`), compute, write ``<save>/<json_name>`` and the
    figures. ``options``: the entry's params plus ``runs``, ``out``, ``save`` and the model-source
    options; missing ones take their defaults."""
    from ..analysis import sources
    from ..analysis.sources import save_folder
    from ..run.store import json_safe

    entry = get(name)
    if entry.compute is None:
        raise PrealignError(f"analysis {entry.name!r} runs only inside experiments (its [[analysis]] kind), "
                            "not as `prealign analyze`")
    ns = sources.options(entry, options)
    inputs = sources.gather(entry, ns)
    folder = save_folder(ns.save, inputs.root, entry.name)
    result = entry.compute(inputs, ns)
    path = folder / (entry.json_name or f"{entry.name}.json")
    path.write_text(json.dumps(json_safe(result), indent=1))
    files = [path, *entry.figure(result, folder, inputs)]
    return Outcome(entry.name, result, folder, files, entry.tables(result), entry.lines(result), inputs.notes)


# ------------------------------------------------------------------------------ the entries
_MODEL_OPTIONS = (Param("seed", "seed", 0),)
register(Analysis(
    "hessian", "Hessian top eigenvalues, trace and spectral density of stored runs (IFA B.7)", needs=("runs",),
    params=(Param("samples", "int>=1", 1000, "training samples the Hessian is taken on"),
            Param("k", "int>=1", 1, "top eigenvalues"),
            Param("probes", "int>=1", 50, "Hutchinson probes"),
            Param("density-probes", "int>=1", 5, "SLQ probes"),
            Param("lanczos-steps", "int>=1", 30, "Lanczos steps per SLQ probe"), *_MODEL_OPTIONS),
    compute=analyze.hessian, lines=analyze.hessian_lines, figure=analyze.hessian_figure,
    rows=columns.hessian, tracker=columns.hessian_tracker))
register(Analysis(
    "landscape", "perturbed loss landscape (IFA B.8) and, with --trajectory, the training trajectory in its "
                 "PCA plane (IFA B.6)", needs=("runs",),
    params=(Param("radius", "float>0", 1.0, "grid half-width along the eigenvectors"),
            Param("grid", "odd>=3", 21, "points per axis, odd so the trained point is the centre"),
            Param("samples", "int>=1", 1000, "training samples for the Hessian / trajectory loss"),
            Param("trajectory", "flag", False, "also re-train the run's config (same seed) recording every epoch, "
                                               "then plot its PCA landscape"), *_MODEL_OPTIONS),
    compute=analyze.landscape, lines=analyze.landscape_lines, figure=analyze.landscape_figure,
    rows=columns.landscape))
register(Analysis(
    "trajectory", "training trajectory over the training-loss surface in its PCA plane (IFA B.6); on the "
                  "command line: `analyze landscape --trajectory`",
    rows=columns.trajectory, tracker=columns.trajectory_tracker))
register(Analysis(
    "robustness", "FGSM/BIM/PGD accuracy vs ε for each gradient source (exact, feedback, transfer)",
    description="Adversarial robustness (IFA paper B.10, A.4) with an explicit gradient source: exact = true input "
                "gradients (the honest white-box attack), feedback = the model's own backward pathway, transfer = "
                "exact gradients of a BP-trained surrogate (trained and stored when none is given).",
    needs=("models", "surrogates"),
    params=(Param("attacks", "str", ["fgsm", "bim", "pgd"], "attacks", nargs="+", choices=("fgsm", "bim", "pgd")),
            Param("sources", "str", ["exact", "feedback", "transfer"], "gradient sources", nargs="+",
                  choices=("exact", "feedback", "transfer")),
            Param("eps", "floats>=0", [0.0, 0.01, 0.02, 0.03, 0.04, 0.05], "ε values, e.g. '0,0.01,0.05' (inputs in [0, 1])"),
            Param("steps", "int>=1", 10, "BIM/PGD steps"),
            Param("step-size", "float>0", None, "BIM/PGD step (default 2.5·ε/steps)"),
            Param("seed", "seed", 0, "PGD random-start seed")),
    compute=analyze.robustness, tables=analyze.robustness_tables, figure=analyze.robustness_figure,
    json_name="adversarial.json", rows=columns.adversarial, aliases=("adversarial",)))
register(Analysis(
    "corruption", "accuracy under the 15 corruptions × 5 severities (IFA paper B.9)", needs=("models",),
    params=(Param("corruptions", "str", None, "subset of corruptions (default all 15)", nargs="+"),
            Param("severities", "int>=1", [1, 2, 3, 4, 5], "severities", nargs="+", choices=(1, 2, 3, 4, 5)),
            *_MODEL_OPTIONS),
    compute=analyze.corruption, tables=analyze.corruption_tables, figure=analyze.corruption_figure,
    rows=columns.corruption))
register(Analysis(
    "ood", "translated/scaled/rotated test sets and a second digit source (noise paper C.5)", needs=("models",),
    params=(*_MODEL_OPTIONS, Param("no-second-source", "flag", False, "skip USPS / UCI digits")),
    compute=analyze.ood, tables=analyze.ood_tables, figure=analyze.ood_figure, rows=columns.ood))
register(Analysis(
    "dimensionality", "singular values and effective rank of weights and features (noise paper C.2)",
    needs=("models", "own-training"),
    params=(Param("probe", "int>=1", 1000, "test images for the feature ranks"),
            Param("noise-samples", "int>=0", None, "with --method rnp: noise samples (default the method's)")),
    compute=analyze.dimensionality, tables=analyze.dimensionality_tables, figure=analyze.dimensionality_figure,
    rows=columns.dimensionality))
register(Analysis(
    "meta", "meta-loss during noise pretraining and task adaptation (noise paper D)", needs=("own-training",),
    params=(Param("hidden", "int>=1", [100, 100], "hidden widths (paper: 100 100)", nargs="+"),
            Param("noise-samples", "int>=0", 500_000, "noise samples"),
            Param("every", "int>=1", 50_000, "noise samples between meta-loss checkpoints"),
            Param("seeds", "int>=1", 1, "seeds 0..N-1"),
            Param("k", "int>=1", 10, "images per class in support and query batches (paper K = 10)"),
            Param("inner-steps", "int>=1", 10, "inner Adam steps"),
            Param("inner-lr", "float>0", 1e-3, "inner learning rate"),
            Param("task-size", "int>=1", 5000, "training images per task (paper 5,000)"),
            Param("adapt-epochs", "int>=0", 0, "also train copies on each task for N epochs (paper 100)"),
            Param("device", "device", "cpu", "cpu, cuda or auto")),
    compute=analyze.meta, tables=analyze.meta_tables, figure=analyze.meta_figure, rows=columns.meta))
register(Analysis(
    "traffic", "weight memory traffic of error propagation per training step, per rule (IFA Fig. 1d)", needs=("runs",),
    params=(Param("rules", "str", None, "rules to count (default: the run's own, then every rule)", nargs="+",
                  choices=tuple(RULES)),),
    compute=analyze.traffic, tables=analyze.traffic_tables, rows=columns.traffic))
register(Analysis(
    "calibration", "ECE, MCE, adaptive ECE, NLL, Brier and reliability diagrams of stored runs (Guo et al. 2017)",
    needs=("runs",), params=(Param("bins", "int>=1", 15, "equal-width confidence bins (Guo et al. 2017)"),),
    compute=analyze.calibration, lines=analyze.calibration_lines, figure=analyze.written_figures,
    rows=columns.calibration, tracker=columns.calibration_tracker))
register(Analysis(
    "ood-detection", "OOD detection (MSP, energy): AUROC, FPR@95%TPR, ROC curves and confidence histograms of "
                     "stored runs (Hendrycks & Gimpel 2017)", needs=("runs",),
    params=(Param("samples", "int>=1", 1000, "in-distribution test images and images per OOD set"),
            Param("seed", "seed", 0, "seed of the sample draws and noise images")),
    compute=analyze.ood_detection, lines=analyze.ood_detection_lines, figure=analyze.written_figures,
    rows=columns.ood_detection, aliases=("ood_detection",)))
register(Analysis("cost-to-converge", "epochs to convergence with the noise epochs counted (noise paper B.8)",
                  rows=columns.cost_to_converge, aliases=("cost_to_converge",)))
register(Analysis("order", "noise→data vs data→noise from one initial network (noise paper Fig. S6)",
                  rows=columns.order))
for _name, _what in (("curves", "learning curves"), ("alignment", "the angle/<layer> curves"),
                     ("trainability", "the max_train_acc column"), ("generalization", "the gen_error column")):
    register(Analysis(_name, f"{_what}: recorded with every run, nothing to compute", rows=_nothing))
