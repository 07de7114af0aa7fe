"""``prealign analyze calibration RUN...`` and ``prealign analyze ood-detection RUN...`` (issue 17).

RUN is a stored run id or key prefix (``prealign runs list``). ``calibration``: ECE (equal-width
bins, mean confidence per bin, Guo et al. 2017), MCE, adaptive ECE, NLL and Brier score on each
run's test set, a reliability diagram per method and, for runs trained with the calibration
tracker, confidence/ECE curves. ``ood-detection``: MSP (Hendrycks & Gimpel 2017) and energy
scores, AUROC and FPR at 95 % TPR against the OOD sets available offline, ROC curves and
confidence histograms. JSON and PNG go to ``--save`` (default ``<out>/analysis/<command>``).
"""
from __future__ import annotations

import json

from .args import FOLDER, POSITIVE, SEED, STORE


def register_analyze(sub) -> None:
    c = sub.add_parser("calibration", help="ECE, MCE, adaptive ECE, NLL, Brier and reliability diagrams of stored runs")
    c.add_argument("runs", nargs="+", metavar="RUN")
    c.add_argument("--bins", type=POSITIVE, default=15, help="equal-width confidence bins (default 15, Guo et al. 2017)")
    _common(c)
    c.set_defaults(func=_calibration)
    o = sub.add_parser("ood-detection", help="OOD detection (MSP, energy): AUROC, FPR@95%%TPR, ROC curves of stored runs")
    o.add_argument("runs", nargs="+", metavar="RUN")
    o.add_argument("--samples", type=POSITIVE, default=1000, help="in-distribution test images and images per OOD set (default 1000)")
    o.add_argument("--seed", type=SEED, default=0, help="seed of the sample draws and noise images (default 0)")
    _common(o)
    o.set_defaults(func=_ood_detection)


def _common(p) -> None:
    p.add_argument("--out", type=STORE, default=None, help="output root holding the store (default $PREALIGN_RUNS or ./prealign-runs)")
    p.add_argument("--save", type=FOLDER, default=None, help="folder for JSON and PNG (default <out>/analysis/<command>)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout (nothing else)")


def _setup(args, command: str):
    """The read-only store with every RUN resolved (an unknown RUN fails first), and the output folder."""
    from ..run.store import Store
    from .analyze import save_folder

    store = Store(args.out, read_only=True)
    for run in args.runs:
        store.resolve(run)
    return store, save_folder(args.save, store.root, command)


def _finish(args, result: dict, folder, name: str, lines: list[str]) -> int:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print("\n".join(lines))
    print(f"wrote {path} and {', '.join(result['figures'])}")
    return 0


def _calibration(args) -> int:
    from ..analysis.calibration import analyze_runs

    store, folder = _setup(args, "calibration")
    result = analyze_runs(store, args.runs, folder, n_bins=args.bins)
    lines = [f"run {rid} {r['label']} (seed {r['seed']}): accuracy {100 * r['accuracy']:.2f} %, mean confidence "
             f"{100 * r['mean_confidence']:.2f} %, ECE {100 * r['ece']:.2f} % ({args.bins} bins), MCE {100 * r['mce']:.2f} %, "
             f"adaptive ECE {100 * r['adaptive_ece']:.2f} %, NLL {r['nll']:.4f}, Brier {r['brier']:.4f}"
             for rid, r in result["runs"].items()]
    return _finish(args, result, folder, "calibration", lines)


def _ood_detection(args) -> int:
    from ..analysis.ood_detection import analyze_runs

    store, folder = _setup(args, "ood-detection")
    result = analyze_runs(store, args.runs, folder, n=args.samples, seed=args.seed)
    lines = []
    for rid, r in result["runs"].items():
        lines.append(f"run {rid} {r['label']} (seed {r['seed']}, {r['dataset']}): in-distribution confidence "
                     f"{100 * r['in_confidence']:.1f} %")
        lines += [f"  {name:14s} AUROC MSP {e['auroc_msp']:.3f}  energy {e['auroc_energy']:.3f}  "
                  f"FPR@95%TPR MSP {e['fpr95_msp']:.3f}  confidence {100 * e['mean_confidence']:.1f} %"
                  for name, e in r["sets"].items()]
    lines += [f"not available: {name} ({why})" for name, why in result["skipped"].items()]
    return _finish(args, result, folder, "ood-detection", lines)
