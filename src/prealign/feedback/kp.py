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
(``register_optimizer_step_pre_hook``/``post_hook``). The pre-hook stores the gap
``G = B − W_before`` of each KP layer whose weight the stepping optimizer holds and which has a
gradient (an optimizer skips a parameter without one; with a closure, as LBFGS takes, the
gradient is checked after the step instead); the post-hook sets ``B = W_after + (1 − d) G``.
So ``B`` moves exactly once per optimizer step — several forwards per step (gradient
accumulation, measurements) change nothing, and changes of ``W`` outside an optimizer step
(loading a checkpoint, :func:`prealign.init_weights`, :func:`prealign.align`) are not updates
``B`` follows. A layer joins the hooks' registry when its rule is set to one that learns its
feedback, and so do its copies (``copy.deepcopy``, pickling). Nothing relies on
``Tensor._version``, which fused optimizers do not bump. Cost per step: two elementwise passes
over ``W``-sized tensors (``B`` is untouched while the optimizer runs, so closures that
re-evaluate the model inside ``step()``, as LBFGS does, see it).
"""
from __future__ import annotations

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from ..errors import ConfigError
from .rules import _LEARNING, RULES

# optimizer -> the layers whose gap its running step() stored in the pre-hook
_PENDING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _held_layers(optimizer: torch.optim.Optimizer) -> list:
    """KP layers whose ``W`` this optimizer holds."""
    layers = [layer for layer in list(_LEARNING) if (r := RULES.get(layer.rule)) is not None and r.learns_feedback]
    if not layers:
        return []
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [layer for layer in layers if id(layer.weight) in held]


def _has_closure(args, kwargs) -> bool:
    """Whether ``step()`` got a closure (``args`` starts with the optimizer itself)."""
    return kwargs.get("closure") is not None or (len(args) > 1 and args[1] is not None)


@torch.no_grad()
def _before_step(optimizer, args, kwargs) -> None:
    if not _LEARNING:
        return
    layers = _held_layers(optimizer)
    if not _has_closure(args, kwargs):  # an optimizer skips a parameter without a gradient
        layers = [layer for layer in layers if layer.weight.grad is not None]
    for layer in layers:  # the gap G = B - W_before, into a scratch buffer (B itself stays intact during the step)
        w, gap = layer.weight, getattr(layer, "_kp_gap", None)
        if gap is None or gap.shape != w.shape or gap.dtype != w.dtype or gap.device != w.device:
            layer._kp_gap = torch.sub(layer.feedback, w)
        else:
            torch.sub(layer.feedback, w, out=gap)
    if layers:
        _PENDING[optimizer] = layers


@torch.no_grad()
def _after_step(optimizer, args, kwargs) -> None:
    layers = _PENDING.pop(optimizer, None) if _PENDING else None
    for layer in layers or ():  # B = W_after + (1 - d) G; with a closure, only where it produced a gradient
        if layer.weight.grad is not None:
            torch.add(layer.weight, layer._kp_gap, alpha=1.0 - float(layer.kp_decay), out=layer.feedback)


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
        raise ConfigError(f"kp_decay applies only to layers under kp; this model has {', '.join(rules)}: "
                          "drop kp_decay or use method kp")
    for layer in layers:
        layer.kp_decay = decay
    return model
