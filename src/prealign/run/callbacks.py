"""Ready-made trainer callbacks (per-epoch measurements beyond the built-in record).

A callback is any object with optional ``on_epoch_end(epoch, model, data, record)`` (may add
keys to ``record``; epoch 0 = before training) and ``on_step_end(step, model)``. The trainer
itself already records loss/accuracy, the row-mean alignment angle per layer and gradient
alignment; these add the other measures of SPEC §5.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..feedback import feedback_layers
from ..init import alignment_angles


class MatrixAngles:
    """Adds ``angle_matrix/<layer>``: the angle (degrees) between the flattened ``W`` and ``B``
    of each feedback layer whose rule reads ``B`` (fa, kp; IFA paper B.4's whole-matrix measure)."""

    def on_epoch_end(self, epoch, model, data, record):
        for name, deg in alignment_angles(model, reduce="matrix").items():
            record[f"angle_matrix/{name}"] = deg


class WeightDistance:
    """Adds ``w_minus_b/<layer>``: the Frobenius norm ``‖W − B‖`` per feedback layer (SPEC §5,
    weight trajectory), and ``w_norm/<layer>`` = ``‖W‖``."""

    @torch.no_grad()
    def on_epoch_end(self, epoch, model, data, record):
        for name, layer in feedback_layers(model):
            record[f"w_minus_b/{name}"] = float((layer.weight - layer.feedback).norm())
            record[f"w_norm/{name}"] = float(layer.weight.norm())


class EpochFunction:
    """Adds ``record[key] = fn(model, data)`` every epoch (``fn`` returns a float)."""

    def __init__(self, key: str, fn: Callable[[torch.nn.Module, object], float]):
        self.key, self.fn = key, fn

    def on_epoch_end(self, epoch, model, data, record):
        record[self.key] = float(self.fn(model, data))


class CalibrationTracker:
    """Trainer callback: ``record["{train,test}_confidence"]`` (mean max-softmax probability) and
    ``record["{train,test}_ece"]`` (:func:`prealign.analysis.calibration.ece`, ``n_bins`` equal-width
    bins, Guo et al. 2017) at the end of every epoch, epoch 0 (before training, i.e. after any noise
    warm-up) included. The training set is measured
    on ``n_train`` samples drawn once with its own seeded generator (all when None). Runs under the
    trainer's measurement guard; draws nothing from the global RNG, so curves are unchanged."""

    def __init__(self, n_bins: int = 15, n_train: int | None = 2000, seed: int = 0):
        self.n_bins, self.n_train, self.seed = n_bins, n_train, seed
        self._train_idx = None

    def on_epoch_end(self, epoch, model, data, record):
        from ..analysis.calibration import _np, ece, logits_of, softmax

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


__all__ = ["MatrixAngles", "WeightDistance", "EpochFunction", "CalibrationTracker"]
