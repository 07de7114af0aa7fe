"""Kolen–Pollack (Kolen & Pollack 1994; Akrout et al. 2019): ``B`` receives ``W``'s update, once per optimizer step.

Per optimizer step that changes ``W`` (by ``ΔW``, whatever the optimizer: Adam, AdamW, SGD,
fused or not, the trainer's or a user's own), every feedback layer under a rule that
``learns_feedback`` gets

    ``B ← B + ΔW − d · (B − W_before)``,   i.e.   ``B_after − W_after = (1 − d) · (B_before − W_before)``,

with ``d = layer.kp_decay`` (default :data:`prealign.feedback.layers.KP_DECAY`). ``B − W`` thus
shrinks by ``(1 − d)`` per step even when ``W`` itself has no weight decay (Adam), which is what
closes the angle (SPEC §1). Akrout's SGD form with L2 decay ``λ`` on both ``W`` and ``B`` is
``d = lr · λ`` with ``weight_decay = λ``.

Mechanism: two global hooks on ``torch.optim.Optimizer.step``
(``register_optimizer_step_pre_hook``/``post_hook``). The pre-hook snapshots ``W`` of each KP
layer whose weight the stepping optimizer holds and which has a gradient (an optimizer skips a
parameter without one); the post-hook applies the update above to those layers. So ``B`` moves
exactly once per optimizer step — several forwards per step (gradient accumulation,
measurements) change nothing, and changes of ``W`` outside an optimizer step (loading a
checkpoint, :func:`prealign.init_weights`, :func:`prealign.align`) are not updates ``B`` follows.
A layer joins the hooks' registry on its first training forward under KP (so copies made with
``copy.deepcopy`` join too). Nothing relies on ``Tensor._version``, which fused optimizers do not
bump. Cost per step: one copy of ``W`` and two elementwise passes over ``B``.
"""
from __future__ import annotations

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from ..errors import ConfigError
from .rules import RULES

# feedback layers that have run a training forward under a rule that learns its feedback
_LEARNING: weakref.WeakSet = weakref.WeakSet()
# optimizer -> the layers its running step() snapshotted in the pre-hook
_PENDING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stepped_layers(optimizer: torch.optim.Optimizer) -> list:
    """KP layers whose ``W`` this optimizer holds and will update (it has a gradient)."""
    layers = [layer for layer in list(_LEARNING)
              if (r := RULES.get(layer.rule)) is not None and r.learns_feedback and layer.weight.grad is not None]
    if not layers:
        return []
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [layer for layer in layers if id(layer.weight) in held]


@torch.no_grad()
def _before_step(optimizer, args, kwargs) -> None:
    if not _LEARNING:
        return
    layers = _stepped_layers(optimizer)
    for layer in layers:
        w, before = layer.weight, layer._kp_before
        if before is None or before.shape != w.shape or before.dtype != w.dtype or before.device != w.device:
            layer._kp_before = w.detach().clone()
        else:
            before.copy_(w)
    if layers:
        _PENDING[optimizer] = layers


@torch.no_grad()
def _after_step(optimizer, args, kwargs) -> None:
    layers = _PENDING.pop(optimizer, None) if _PENDING else None
    for layer in layers or ():
        fb = layer.feedback.sub_(layer._kp_before)  # B - W_before
        torch.add(layer.weight, fb, alpha=1.0 - float(layer.kp_decay), out=fb)  # W_after + (1 - d)(B - W_before)


register_optimizer_step_pre_hook(_before_step)
register_optimizer_step_post_hook(_after_step)


def set_kp_decay(model: torch.nn.Module, decay: float) -> torch.nn.Module:
    """Set the per-step Kolen–Pollack decay ``d`` (``0 <= d < 1``) of every layer of ``model`` whose
    rule learns its feedback; raises :class:`~prealign.errors.ConfigError` if ``d`` is out of range or
    the model has no such layer (the setting would be ignored). Returns ``model``."""
    from .convert import feedback_layers

    decay = float(decay)
    if not 0 <= decay < 1:
        raise ConfigError(f"kp_decay must be in [0, 1) per optimizer step, got {decay}")
    layers = [layer for _, layer in feedback_layers(model) if RULES[layer.rule].learns_feedback]
    if not layers:
        rules = sorted({layer.rule for _, layer in feedback_layers(model)}) or ["no feedback layers"]
        raise ConfigError(f"kp_decay applies only to layers under kp; this model has {', '.join(rules)}: drop kp_decay or use method kp")
    for layer in layers:
        layer.kp_decay = decay
    return model
