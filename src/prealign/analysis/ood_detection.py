"""Out-of-distribution *detection* from a classifier's outputs (issue 17; Cheon & Paik, arXiv 2412.17411).

(Not :func:`prealign.experiments.analyses.ood`, which measures *accuracy* under distribution shift.)

Scores, higher = more in-distribution:

* **MSP** — maximum softmax probability ``max_k softmax(z)_k`` (Hendrycks & Gimpel 2017).
* **energy** — ``T · logsumexp(z / T)`` = minus the free energy (Liu et al. 2020, eq. 5), ``T = 1``.

Detection metrics (scikit-learn), with the in-distribution test set as the *positive* class:
**AUROC** (``roc_auc_score``; 0.5 = no separation, 1 = perfect) and **FPR@95 %TPR** — the fraction
of OOD inputs scoring at or above the threshold that keeps 95 % of the in-distribution inputs
(the first ROC point with TPR ≥ 0.95, from ``roc_curve`` with every threshold kept).

OOD sets available offline (:func:`ood_sets`) for gray-scale image data ``(1, H, W)``: other data
sets resized to ``H×W`` (Fashion-MNIST where its files are present, MNIST-5k, UCI digits — each
only when it is not the in-distribution set), ``gaussian`` noise images (pixels i.i.d. N(0.5, 1)
clipped to [0, 1], Hendrycks et al. 2019), ``uniform`` noise images (U[0, 1]), and the existing
shifted test sets of :func:`prealign.data.transforms.ood_sets` (translated / scaled / rotated).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import PrealignError
from .calibration import _np, logits_of, softmax
from ..stats import auroc, fpr_at_tpr, roc  # noqa: F401  (ROC statistics live in the one stats module)

SCORES = ("msp", "energy")
OTHER_DATASETS = ("fashion-mnist", "mnist5k", "digits")
MNIST_FAMILY = ("mnist", "mnist5k", "emnist-digits", "usps")  # digits of the same kind: not OOD for each other


def msp_score(logits) -> np.ndarray:
    """Maximum softmax probability of each row of ``logits (N, K)`` → ``(N,)``."""
    return softmax(logits).max(axis=1)


def energy_score(logits, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy ``T·logsumexp(z/T)`` of each row of ``logits (N, K)`` → ``(N,)`` (float64)."""
    from scipy.special import logsumexp

    return temperature * logsumexp(_np(logits) / temperature, axis=1)


def score(logits, kind: str) -> np.ndarray:
    if kind == "msp":
        return msp_score(logits)
    if kind == "energy":
        return energy_score(logits)
    raise PrealignError(f"unknown OOD score {kind!r}; valid: {', '.join(SCORES)}")


def ood_sets(data, dataset: str, n: int | None = 1000, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(sets, skipped)``: ``{name: images (n, *data.input_shape)}`` of the OOD sets described in the
    module docstring for in-distribution ``data`` (named ``dataset``), each at most ``n`` images
    drawn with ``seed``; ``skipped`` = ``{name: reason}`` for the sets not available here."""
    from ..data import load
    from ..data.transforms import ood_sets as shifted
    from ..data.transforms import resize

    shape = tuple(data.x_test.shape[1:])
    gen = torch.Generator().manual_seed(seed)
    m = min(n or len(data.y_test), len(data.y_test))
    sets, skipped = {}, {}
    if shape[0] == 1 and shape[1] == shape[2]:
        family = MNIST_FAMILY if dataset in MNIST_FAMILY else (dataset,)
        for name in OTHER_DATASETS:
            if name in family:
                continue
            try:
                x = load(name).x_test
            except PrealignError as err:
                skipped[name] = str(err).split(";")[0]
                continue
            x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:m]]
            sets[name] = resize(x, shape[1])
    else:
        skipped["other data sets"] = f"only for gray-scale square images, this data is {shape}"
    sets["gaussian"] = torch.randn((m, *shape), generator=gen).add_(0.5).clamp_(0, 1)
    sets["uniform"] = torch.rand((m, *shape), generator=gen)
    idx = torch.randperm(len(data.y_test), generator=torch.Generator().manual_seed(seed))[:m]
    sets.update(shifted(data.x_test[idx].cpu(), seed=seed))
    return sets, skipped


def detect(model, x_in: torch.Tensor, sets: dict[str, torch.Tensor], scores=SCORES) -> dict:
    """For each OOD set and score: ``auroc``, ``fpr95``, and the mean MSP of the set
    (``mean_confidence``); plus ``in_confidence`` (mean MSP on ``x_in``) and the raw ``scores``
    (arrays, for figures) — ``{"in_confidence", "sets": {name: {...}}, "scores": {name: {kind: array}}}``."""
    logits = {"in": logits_of(model, x_in), **{k: logits_of(model, x) for k, x in sets.items()}}
    raw = {name: {kind: score(z, kind) for kind in scores} for name, z in logits.items()}
    out = {"in_confidence": float(msp_score(logits["in"]).mean()), "sets": {}, "scores": raw}
    for name in sets:
        entry = {"mean_confidence": float(msp_score(logits[name]).mean())}
        for kind in scores:
            entry[f"auroc_{kind}"] = auroc(raw["in"][kind], raw[name][kind])
            entry[f"fpr95_{kind}"] = fpr_at_tpr(raw["in"][kind], raw[name][kind])
        out["sets"][name] = entry
    return out


def analyze_runs(store, runs, *, n: int | None = 1000, seed: int = 0) -> tuple[dict, dict]:
    """``prealign analyze ood-detection``'s numbers: each stored run (id or key prefix) →
    :func:`detect` on ``n`` of its test images vs :func:`ood_sets`. Returns ``(result, scores)``:
    ``result = {"runs": {id: {...}}, "skipped": {...}}`` (no raw scores) and, for the figures
    (:mod:`prealign.reports.analyze` draws them), ``scores = {label: [detect()'s raw scores per run]}``."""
    from ..run.config import load_data

    out, per_method, cache = {"runs": {}, "skipped": {}}, {}, {}
    for run in runs:
        row = store.get(run)
        model = store.load_model(run, device="cpu")
        cfg = model.run_config
        data = load_data(cfg)
        if cfg.dataset not in cache:
            cache[cfg.dataset] = ood_sets(data, cfg.dataset, n, seed)
        sets, skipped = cache[cfg.dataset]
        out["skipped"].update(skipped)
        idx = torch.randperm(len(data.y_test), generator=torch.Generator().manual_seed(seed))[:n]
        res = detect(model, data.x_test[idx], sets)
        per_method.setdefault(row["label"], []).append(res.pop("scores"))
        out["runs"][str(row["id"])] = {"label": row["label"], "seed": row["seed"], "dataset": cfg.dataset, **res}
    return out, per_method


__all__ = ["SCORES", "msp_score", "energy_score", "score", "auroc", "roc", "fpr_at_tpr", "ood_sets", "detect",
           "analyze_runs"]
