"""Calibration of a classifier's confidence (issue 17; Cheon & Paik, arXiv 2412.17411).

Confidence = the largest softmax probability, ``conf_i = max_k p_ik``; correct = ``argmax_k p_ik == y_i``.

* **ECE** (expected calibration error, Guo et al. 2017, eq. 3): confidences cut into ``n_bins``
  equal-width bins on [0, 1] (:data:`N_BINS` = 15 by default, bin ``b`` = (b/M, (b+1)/M], the
  first also holding 0); ``ECE = Σ_b (n_b / N) · |acc_b − conf_b|`` with ``conf_b`` the *mean
  confidence* of the samples in bin ``b`` (not the bin centre) and ``acc_b`` their accuracy.
* **MCE** (maximum calibration error, Guo et al. 2017): ``max_b |acc_b − conf_b|`` over non-empty bins.
* **Adaptive ECE** (equal-mass bins; Nguyen & O'Connor 2015, Nixon et al. 2019): bin edges at the
  ``b/n_bins`` quantiles of the confidences, so each bin holds about ``N/n_bins`` samples (tied
  confidences never split across bins), then the ECE formula.
* **NLL**: mean ``−log p_{i,y_i}`` (nats). **Brier** (Brier 1950, multi-class): mean over samples of
  ``Σ_k (p_ik − [y_i = k])²`` (in [0, 2]).

All functions take probabilities ``(N, K)`` (rows summing to 1) or logits via :func:`softmax`,
numpy arrays or tensors, and labels ``(N,)``.
"""
from __future__ import annotations

import math
import numpy as np
import torch
from torch import nn

from ..errors import PrealignError

N_BINS = 15  # Guo et al. 2017 use 15 equal-width bins


def _np(a) -> np.ndarray:
    return a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=float)


def softmax(logits) -> np.ndarray:
    """Row-wise softmax of logits ``(N, K)`` in float64 (max-subtracted, exact up to rounding)."""
    z = _np(logits)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = _np(probs), np.asarray(_np(labels), dtype=np.int64)
    if p.ndim != 2 or y.shape != (p.shape[0],) or p.shape[0] == 0:
        raise PrealignError(f"calibration needs probabilities (N, K) and labels (N,), N > 0; got {p.shape} and {y.shape}")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-4) or (p < 0).any():
        raise PrealignError("calibration needs probabilities (rows >= 0 summing to 1); pass logits through softmax() first")
    return p, y


def confidence_and_correct(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence (N,), correct (N,) as 0/1 floats)`` of probabilities ``(N, K)``."""
    p, y = _check(probs, labels)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(float)


def reliability_bins(confidence, correct, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Equal-width bins on [0, 1]: ``edges (M+1,)``, per bin ``count``, ``confidence`` (mean
    confidence of its samples, NaN if empty) and ``accuracy`` (fraction correct, NaN if empty)."""
    if n_bins < 1:
        raise PrealignError(f"n_bins must be >= 1, got {n_bins}")
    conf, corr = _np(confidence), _np(correct)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)  # (lo, hi]; 0 in the first bin
    count = np.bincount(idx, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=corr, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def _ece_of_groups(groups_conf: list[np.ndarray], groups_corr: list[np.ndarray], n: int) -> tuple[float, float]:
    gaps = [(len(c), abs(float(a.mean()) - float(c.mean()))) for c, a in zip(groups_conf, groups_corr) if len(c)]
    return sum(k * g for k, g in gaps) / n, max(g for _, g in gaps)


def ece(probs, labels, n_bins: int = N_BINS) -> float:
    """Expected calibration error, equal-width bins, mean confidence per bin (Guo et al. 2017)."""
    conf, corr = confidence_and_correct(probs, labels)
    b = reliability_bins(conf, corr, n_bins)
    full = b["count"] > 0
    return float(np.sum(b["count"][full] * np.abs(b["accuracy"][full] - b["confidence"][full])) / len(conf))


def mce(probs, labels, n_bins: int = N_BINS) -> float:
    """Maximum calibration error: the largest ``|acc_b − conf_b|`` over non-empty equal-width bins."""
    conf, corr = confidence_and_correct(probs, labels)
    b = reliability_bins(conf, corr, n_bins)
    full = b["count"] > 0
    return float(np.max(np.abs(b["accuracy"][full] - b["confidence"][full])))


def adaptive_ece(probs, labels, n_bins: int = N_BINS) -> float:
    """ECE over ``n_bins`` equal-mass bins: edges at the confidence quantiles ``b/M``
    (``numpy.quantile``), bins ``(lo, hi]`` (the first closed), so tied confidences share a bin
    (coinciding edges merge bins: fewer, never split ties)."""
    conf, corr = confidence_and_correct(probs, labels)
    edges = np.unique(np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1)))
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, max(len(edges) - 2, 0))
    groups = [np.flatnonzero(idx == b) for b in range(max(len(edges) - 1, 1))]
    return _ece_of_groups([conf[g] for g in groups], [corr[g] for g in groups], len(conf))[0]


def nll(probs, labels) -> float:
    """Mean negative log-likelihood of the true class (nats); ``inf`` where it has probability 0."""
    p, y = _check(probs, labels)
    with np.errstate(divide="ignore"):
        return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def brier(probs, labels) -> float:
    """Multi-class Brier score: mean of ``Σ_k (p_k − onehot_k)²`` (0 perfect, 2 worst)."""
    p, y = _check(probs, labels)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def summary(labels, *, probs=None, logits=None, n_bins: int = N_BINS) -> dict:
    """Every measure at once from ``probs`` or ``logits`` (exactly one): ``accuracy``,
    ``mean_confidence``, ``ece``, ``mce``, ``adaptive_ece``, ``nll``, ``brier``, ``n_bins`` and the
    reliability ``bins`` (lists, for JSON and :func:`prealign.viz.uncertainty.plot_reliability`)."""
    if (probs is None) == (logits is None):
        raise PrealignError("calibration summary needs exactly one of probs= or logits=")
    p = softmax(logits) if logits is not None else probs
    conf, corr = confidence_and_correct(p, labels)
    bins = reliability_bins(conf, corr, n_bins)
    out = {"n": len(conf), "accuracy": float(corr.mean()), "mean_confidence": float(conf.mean()),
           "ece": ece(p, labels, n_bins), "mce": mce(p, labels, n_bins), "adaptive_ece": adaptive_ece(p, labels, n_bins),
           "nll": nll(p, labels), "brier": brier(p, labels), "n_bins": n_bins}
    out["bins"] = {k: [None if not math.isfinite(v) else float(v) for v in a] for k, a in bins.items()}
    return out


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """``model``'s logits ``(N, K)`` on ``x`` in eval mode and no-grad batches, under
    :func:`prealign.run.trainer.measurement_guard` (modes, RNGs, grads left as they were)."""
    from ..run.trainer import measurement_guard

    device = next(model.parameters()).device
    with measurement_guard(model):
        model.eval()
        return torch.cat([model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def model_summary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_bins: int = N_BINS) -> dict:
    """:func:`summary` of ``model`` on ``(x, y)``."""
    return summary(y, logits=logits_of(model, x), n_bins=n_bins)


def analyze_runs(store, runs, *, n_bins: int = N_BINS) -> tuple[dict, dict, dict]:
    """``prealign analyze calibration``'s numbers: each stored run (id or key prefix) →
    :func:`model_summary` on its test set. Returns ``(result, per_method, curves)``: ``result =
    {"n_bins", "runs": {id: {"label", "seed", **summary}}}``; for the figures
    (:mod:`prealign.reports.analyze` draws them), ``per_method = {label: [summary per run]}`` and
    ``curves = {"<id> <label>": epoch records}`` of the runs that tracked calibration
    (:class:`CalibrationTracker`)."""
    from ..run.config import load_data

    out = {"n_bins": n_bins, "runs": {}}
    per_method: dict[str, list[dict]] = {}
    curves = {}
    for run in runs:
        row = store.get(run)
        model = store.load_model(run, device="cpu")
        data = load_data(model.run_config)
        s = model_summary(model, data.x_test, data.y_test, n_bins)
        out["runs"][str(row["id"])] = {"label": row["label"], "seed": row["seed"], **s}
        per_method.setdefault(row["label"], []).append(s)
        tracked = [r for r in store.epochs(row["id"]) if r.get("test_confidence") is not None]
        if tracked:
            curves[f"{row['id']} {row['label']}"] = tracked
    return out, per_method, curves


class CalibrationTracker:
    """Trainer callback: ``record["{train,test}_confidence"]`` (mean max-softmax probability) and
    ``record["{train,test}_ece"]`` (:func:`ece`, ``n_bins`` equal-width bins, Guo et al. 2017) at
    the end of every epoch, epoch 0 (before training, i.e. after any noise warm-up) included. The
    training set is measured on ``n_train`` samples drawn once with its own seeded generator (all
    when None). Runs under the trainer's measurement guard; draws nothing from the global RNG, so
    curves are unchanged. (A measurement, so it lives here beside :func:`ece`, like the other
    analyses' trackers; :mod:`prealign.run.callbacks` holds the trainer's generic callbacks.)"""

    def __init__(self, n_bins: int = 15, n_train: int | None = 2000, seed: int = 0):
        self.n_bins, self.n_train, self.seed = n_bins, n_train, seed
        self._train_idx = None

    def on_epoch_end(self, epoch, model, data, record):
        if self._train_idx is None:
            n = len(data.y_train)
            g = torch.Generator().manual_seed(self.seed)
            self._train_idx = (torch.randperm(n, generator=g)[:self.n_train] if self.n_train and self.n_train < n
                               else torch.arange(n))
        idx = self._train_idx.to(data.x_train.device)
        for split, x, y in (("train", data.x_train[idx], data.y_train[idx]), ("test", data.x_test, data.y_test)):
            p = softmax(logits_of(model, x))
            record[f"{split}_confidence"] = float(p.max(axis=1).mean())
            record[f"{split}_ece"] = ece(p, _np(y), self.n_bins)


__all__ = ["N_BINS", "softmax", "confidence_and_correct", "reliability_bins", "ece", "mce", "adaptive_ece", "nll",
           "brier", "summary", "logits_of", "model_summary", "analyze_runs", "CalibrationTracker"]
