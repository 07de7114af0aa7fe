"""Ready-made trainer callbacks (per-epoch measurements beyond the built-in record).

A callback is any object with optional ``on_epoch_end(epoch, model, data, record)`` (may add
keys to ``record``; epoch 0 = before training) and ``on_step_end(step, model)``. The trainer
itself already records loss/accuracy, the row-mean alignment angle per layer and gradient
alignment; these add the other measures of SPEC §5. The trackers of the analyses (Hessian,
calibration, dimensionality, trajectory) live with their measurements in :mod:`prealign.analysis`:
training never imports measurement code.
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


__all__ = ["MatrixAngles", "WeightDistance", "EpochFunction"]
