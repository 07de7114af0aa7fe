"""Weight mirror (Akrout et al. 2019, NeurIPS, §4): ``B`` learns ``W`` from the layer's own noise-driven activity.

After every optimizer step that changes ``W`` (whatever the optimizer: Adam, AdamW, SGD, fused
or not, the trainer's or a user's own loop, LBFGS with a closure), each feedback layer under a rule
that ``mirrors`` runs ``steps`` mirror steps. In one mirror step the layer is driven by zero-mean
Gaussian noise ``x`` of std ``σ`` (``batch`` samples; for a convolution, noise patches of one
receptive field), its forward path produces ``y = W x`` (no bias), and the feedback synapses
change by the Hebbian product of the two activities they connect, with a decay:

    ``B ← (1 − λ) B + (η / batch) · yᵀ x``      (``B``, ``W``: ``(out, in)``; ``x``: ``(batch, in)``; ``y``: ``(batch, out)``)

The paper writes its ``B`` as ``(in, out)`` (the matrix the error travels back through,
``δ_l = B δ_{l+1}``) and the rule as ``ΔB = η x yᵀ`` (its Eq. 7); prealign stores ``B`` with
``W``'s shape and sends the error as ``δ B`` (:mod:`prealign.feedback.rules`), so the same update
reads ``yᵀ x`` here. Since ``E[yᵀ x] / batch = W E[x xᵀ] = σ² W``, the expected step is
``η σ² W − λ B``: ``B`` settles at ``(η σ² / λ) W`` (with the default ``η = λ / σ²``, at ``W``
itself), up to the sampling noise of ``x xᵀ`` (relative size ≈ ``sqrt(in · λ / (2 · batch · steps))``
per row), while ``W`` keeps moving. ``B`` is computed from ``x`` and ``y`` only — never from ``W``'s
values directly; ``W`` enters only through the forward activity ``y`` it produces.

Convolutions: the noise is one receptive field per sample, ``x: (batch, C_in, *kernel)``, and the
layer's own convolution (its groups; no padding, stride or dilation needed for a single position)
gives ``y: (batch, C_out, 1, ...)``; ``Δ B`` is the convolution's weight correlation of ``y`` and
``x`` (:func:`torch.nn.grad.conv2d_weight`), so ``E[ΔB] = η σ² W`` exactly as for a linear layer.

Settings (layer attributes, set for a model with :func:`set_wm`, ``prealign.train(..., wm=...)``
or ``RunConfig.wm_*``): ``wm_lr`` η (default ``λ / σ²``: B converges to ``W``'s scale),
``wm_noise_std`` σ (:data:`WM_NOISE_STD`), ``wm_decay`` λ per mirror step (:data:`WM_DECAY`),
``wm_steps`` mirror steps per optimizer step (:data:`WM_STEPS`), ``wm_batch`` noise samples per
mirror step (:data:`WM_BATCH`). The paper gives the rule, not settings for our networks; the
defaults were tuned on the 784-100-100-10 MLP on mnist5k (Adam, lr 1e-4, batch 64, 10 epochs):
final ∠(W, B) ≈ 5.2°, 1.9°, 1.9° per layer (KP: 0.1°), test accuracy as KP's, training ≈ 6× FA's
time. The angle is limited by the noise's sampling error, ``∝ sqrt(λ / (batch · steps))``: a
smaller λ lets ``B`` lag behind the moving ``W`` (λ = 0.003 gave ≈ 10°), more samples cost time
(batch 4096: 2.3°, 0.9°, 0.9° at ≈ 65× FA's time).

Mechanism: a global ``torch.optim.Optimizer.step`` post-hook (as :mod:`prealign.feedback.kp`);
the layers join the same weakly held registry when their rule is set. A layer mirrors after a
step of an optimizer that holds its ``W`` and only if ``W`` had a gradient (an optimizer skips a
parameter without one), in the order of the optimizer's parameters. Several forwards per
optimizer step, measurements, and changes of ``W`` outside a step (loading a checkpoint, :func:`prealign.align`) trigger nothing. The noise is drawn
from the global RNG of ``W``'s device, so a checkpoint (which saves the RNG states) resumes the
very same noise. Cost per optimizer step: ``steps`` × (one forward and one weight-gradient-sized
product of a ``batch``-sample noise batch) per layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..errors import ConfigError
from .rules import _LEARNING
from .rules import RULES

WM_NOISE_STD = 1.0
"""Default std σ of the mirror noise (the update is linear in ``x``, so σ only sets the scale of ``η``)."""
WM_DECAY = 0.01
"""Default decay λ of ``B`` per mirror step (the fraction of ``B`` forgotten each step)."""
WM_STEPS = 1
"""Default mirror steps per optimizer step."""
WM_BATCH = 512
"""Default noise samples per mirror step."""

_SETTINGS = ("wm_lr", "wm_noise_std", "wm_decay", "wm_steps", "wm_batch")
_CONV_WEIGHT = {3: torch.nn.grad.conv1d_weight, 4: torch.nn.grad.conv2d_weight, 5: torch.nn.grad.conv3d_weight}
_CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


def wm_settings(layer: nn.Module) -> dict[str, float | int]:
    """The weight-mirror settings in effect for ``layer`` (its own, else the defaults):
    ``wm_lr`` η (default ``wm_decay / wm_noise_std²``), ``wm_noise_std`` σ, ``wm_decay`` λ,
    ``wm_steps`` and ``wm_batch``."""
    std = float(getattr(layer, "wm_noise_std", WM_NOISE_STD))
    decay = float(getattr(layer, "wm_decay", WM_DECAY))
    lr = getattr(layer, "wm_lr", None)
    return {"wm_lr": decay / std**2 if lr is None else float(lr), "wm_noise_std": std, "wm_decay": decay,
            "wm_steps": int(getattr(layer, "wm_steps", WM_STEPS)), "wm_batch": int(getattr(layer, "wm_batch", WM_BATCH))}


def check_mirrorable(layer: nn.Module, name: str = "layer") -> None:
    """Raise a one-line ConfigError unless ``layer`` is a linear or 1-3-D convolutional feedback layer."""
    if isinstance(layer, nn.Linear) or (isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed):
        return
    raise ConfigError(f"rule wm mirrors Linear and Conv1d/2d/3d layers; {name} is a {type(layer).__name__}: "
                      "use rule kp for it")


@torch.no_grad()
def mirror_step(layer: nn.Module, lr: float, std: float, decay: float, batch: int) -> None:
    """One mirror step of ``layer`` in place: noise ``x``, forward activity ``y = W x``, then
    ``B ← (1 − decay) B + (lr / batch) · corr(y, x)`` (module docstring). ``B`` is formed from
    ``x`` and ``y`` only."""
    check_mirrorable(layer)
    w, b = layer.weight, layer.feedback
    if isinstance(layer, nn.Linear):
        x = torch.randn(batch, w.shape[1], device=w.device, dtype=w.dtype).mul_(std)
        y = F.linear(x, w)  # the layer's forward activity, (batch, out)
        hebb = y.t() @ x  # (out, in): what the feedback synapse B[o, i] sees, y_o x_i summed over samples
    else:
        x = torch.randn(batch, w.shape[1] * layer.groups, *w.shape[2:], device=w.device, dtype=w.dtype).mul_(std)
        y = _CONV[w.dim()](x, w, None, 1, 0, 1, layer.groups)  # one receptive field -> (batch, C_out, 1, ...)
        hebb = _CONV_WEIGHT[w.dim()](x, b.shape, y, 1, 0, 1, layer.groups)
    b.mul_(1.0 - decay).add_(hebb, alpha=lr / batch)


def _mirror_layers(layers) -> None:
    for layer in layers:
        s = wm_settings(layer)
        for _ in range(s["wm_steps"]):
            mirror_step(layer, s["wm_lr"], s["wm_noise_std"], s["wm_decay"], s["wm_batch"])


def _after_step(optimizer, args, kwargs) -> None:
    if not _LEARNING:
        return
    by_weight = {id(layer.weight): layer for layer in list(_LEARNING)
                 if (r := RULES.get(layer.rule)) is not None and r.mirrors}
    if not by_weight:
        return
    # the layers this optimizer holds and just stepped (a parameter without a gradient is skipped), in the
    # optimizer's parameter order: the noise comes from the global RNG, so the order must be deterministic
    _mirror_layers(by_weight[id(p)] for group in optimizer.param_groups for p in group["params"]
                   if id(p) in by_weight and p.grad is not None)


register_optimizer_step_post_hook(_after_step)


def mirroring_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(name, layer)]`` of the feedback layers of ``model`` under a rule that mirrors."""
    from .convert import feedback_layers

    return [(name, layer) for name, layer in feedback_layers(model) if RULES[layer.rule].mirrors]


_RANGES = {"wm_lr": (lambda v: v > 0, "> 0"), "wm_noise_std": (lambda v: v > 0, "> 0"),
           "wm_decay": (lambda v: 0 <= v < 1, "in [0, 1) per mirror step"),
           "wm_steps": (lambda v: v >= 1 and v.is_integer(), "an integer >= 1"),
           "wm_batch": (lambda v: v >= 1 and v.is_integer(), "an integer >= 1")}


def check_wm_setting(what: str, key: str, value) -> None:
    """Raise a one-line ConfigError naming ``what`` unless ``value`` is in range for the setting ``key``."""
    ok, need = _RANGES[key]
    try:
        good = not isinstance(value, bool) and math.isfinite(float(value)) and ok(float(value))
    except (TypeError, ValueError):
        good = False
    if not good:
        raise ConfigError(f"{what} must be {need}, got {value!r}")


def set_wm(model: nn.Module, *, lr: float | None = None, noise_std: float | None = None, decay: float | None = None,
           steps: int | None = None, batch: int | None = None) -> nn.Module:
    """Set the weight-mirror settings (module docstring) of every layer of ``model`` under ``wm``;
    ``None`` keeps a setting as it is. Raises a one-line ConfigError for a value out of range
    (``lr > 0``, ``noise_std > 0``, ``0 <= decay < 1``, ``steps >= 1``, ``batch >= 1``) or when the
    model has no ``wm`` layer (the settings would be ignored). Returns ``model``."""
    given = {"wm_lr": lr, "wm_noise_std": noise_std, "wm_decay": decay, "wm_steps": steps, "wm_batch": batch}
    for key, value in given.items():
        if value is not None:
            check_wm_setting(key, key, value)
    layers = mirroring_layers(model)
    if not layers:
        from .convert import feedback_layers
        rules = sorted({layer.rule for _, layer in feedback_layers(model)}) or ["no feedback layers"]
        raise ConfigError(f"weight-mirror settings apply only to layers under wm; this model has {', '.join(rules)}: "
                          "drop the wm settings or use method wm")
    for name, layer in layers:
        check_mirrorable(layer, name)
        for key, value in given.items():
            if value is not None:
                setattr(layer, key, int(value) if key in ("wm_steps", "wm_batch") else float(value))
    return model
