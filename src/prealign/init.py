"""Initial conditions: variance-scaled init and the one-time soft alignment (IFA paper B.2, B.5; SPEC §2).

All angles are in **degrees**.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .errors import PrealignError
from .feedback import CONVERTIBLE, FeedbackLayer, feedback_layers
from .feedback.angles import _row_angles, alignment_angles  # noqa: F401  (prealign.init.alignment_angles stays)


def _weight_layers(model: nn.Module):
    """Weight layers: convertible ones (converted or not) and feedback layers (attention projections too)."""
    return [m for m in model.modules() if isinstance(m, (*CONVERTIBLE, FeedbackLayer))]


@torch.no_grad()
def init_weights(model: nn.Module, alpha_w: float = 2.0, alpha_b: float = 2.0,
                 generator: torch.Generator | None = None) -> nn.Module:
    """``W ~ N(0, α_W / n_in)``, ``B ~ N(0, α_B / n_in)``, biases 0, for every weight layer (Linear, Bilinear,
    Conv*, ConvTranspose*, and attention projections once converted).

    ``n_in`` is the fan-in (``in_features``, or ``in_channels/groups`` times the kernel size). ``α = 1`` is
    LeCun, ``α = 2`` He (the default, as both papers use). Draws on the CPU from ``generator``
    so the result does not depend on the device. The DFA matrices ``D`` are re-seeded from
    ``generator`` too, after all weights (so ``W`` and ``B`` do not depend on whether a model has
    feedback layers): the same generator state gives the same network, ``D`` included. Returns ``model``.
    """
    layers = _weight_layers(model)
    for m in layers:
        w = m.weight
        fan_in = w[0].numel()
        w.copy_(torch.randn(w.shape, generator=generator) * math.sqrt(alpha_w / fan_in))
        if m.bias is not None:
            m.bias.zero_()
        if isinstance(m, FeedbackLayer):
            m.feedback.copy_(torch.randn(w.shape, generator=generator) * math.sqrt(alpha_b / fan_in))
    for m in layers:
        if isinstance(m, FeedbackLayer):
            m.reseed_direct_feedback(generator)
    return model


@torch.no_grad()
def align(model: nn.Module, angle: float, generator: torch.Generator | None = None, copy: bool = False) -> nn.Module:
    """One-time soft alignment of every forward weight to its feedback at ``angle`` degrees.

    IFA paper B.2 (restored in SPEC §2). Per output neuron ``i`` (a row of ``W``; for a
    convolution, a flattened filter) take ``r_i`` = the current row ``w_i`` — itself a draw from
    W's init — remove its component along ``b_i`` to get ``r⊥``, and set
    ``w_i = ‖r_i‖ (cos θ · b_i/‖b_i‖ + sin θ · r⊥/‖r⊥‖)``. Every row then sits at exactly θ from
    its feedback row and keeps the norm of W's own distribution. Rows where ``r_i ∥ b_i`` get a
    fresh direction from ``generator``. ``copy=True`` (only with ``angle=0``) sets ``W = B``
    exactly, as in the noise paper B.7. Applied once; training never re-aligns. Returns ``model``.
    Raises :class:`~prealign.errors.PrealignError` if ``model`` has no feedback layers (nothing to align).
    """
    if not feedback_layers(model):
        raise PrealignError("align() found no feedback layers in this model: convert it first, e.g. prealign.convert(model, 'fa')")
    if copy and angle != 0:
        raise ValueError("align(copy=True) makes W an exact copy of B, which is angle 0; got angle=%r" % angle)
    if not 0 <= angle <= 180:
        raise ValueError(f"alignment angle must be in [0, 180] degrees, got {angle}")
    theta = math.radians(angle)
    for _, layer in feedback_layers(model):
        if copy:
            layer.weight.copy_(layer.feedback)
            continue
        r = layer.weight.flatten(1).double()
        b = layer.feedback.flatten(1).double()
        b_hat = b / b.norm(dim=1, keepdim=True)
        perp = r - (r * b_hat).sum(1, keepdim=True) * b_hat
        bad = perp.norm(dim=1) <= 1e-9 * r.norm(dim=1).clamp_min(1e-30)
        if bad.any():  # r parallel to b: any direction orthogonal to b will do
            fresh = torch.randn(int(bad.sum()), r.shape[1], generator=generator, dtype=torch.float64).to(r.device)
            fresh -= (fresh * b_hat[bad]).sum(1, keepdim=True) * b_hat[bad]
            perp[bad] = fresh
        w = r.norm(dim=1, keepdim=True) * (math.cos(theta) * b_hat + math.sin(theta) * perp / perp.norm(dim=1, keepdim=True))
        layer.weight.copy_(w.view_as(layer.weight).to(layer.weight.dtype))
    return model
