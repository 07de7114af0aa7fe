"""∠(W, B): the angle between a layer's forward weights and its feedback, in degrees (IFA paper B.4)."""
from __future__ import annotations

import torch
from torch import nn

from .convert import feedback_layers
from .rules import RULES


def _row_angles(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row angle in degrees between ``w`` and ``b`` (``(rows, n)``), float64, stable near 0° and 180°."""
    w, b = w.double(), b.double()
    b_hat = b / b.norm(dim=1, keepdim=True)
    along = (w * b_hat).sum(1)
    across = (w - along[:, None] * b_hat).norm(dim=1)
    return torch.rad2deg(torch.atan2(across, along))


@torch.no_grad()
def alignment_angles(model: nn.Module, reduce: str = "row") -> dict[str, float]:
    """``{layer name: angle in degrees}`` between each layer's ``W`` and ``B`` (IFA paper B.4).

    ``reduce="row"``: mean over output neurons of the angle between ``w_i`` and ``b_i`` (the
    papers' measure); ``reduce="matrix"``: the angle between the flattened matrices. Only layers
    whose rule sends the error back through ``B`` itself (``Rule.reads_feedback``: fa, kp) are
    listed — for bp, dfa and the sign rules ∠(W, B) describes nothing the rule uses — the first
    layer included (the papers plot the others: the first layer's ``B`` carries no learning signal).
    """
    if reduce not in ("row", "matrix"):
        raise ValueError(f"unknown reduce {reduce!r}; valid: row, matrix")
    out = {}
    for name, layer in feedback_layers(model):
        if not RULES[layer.rule].reads_feedback:
            continue
        w, b = layer.weight.flatten(1), layer.feedback.flatten(1)
        if reduce == "matrix":
            w, b = w.reshape(1, -1), b.reshape(1, -1)
        out[name] = float(_row_angles(w, b).mean())
    return out
