"""Feedback updates of the rules whose ``B`` follows ``W`` (kp, wm), after every update of ``W``.

Two ways in, doing exactly the same per layer (:func:`prealign.feedback.kp.update`, then the
weight mirror's phase, :func:`prealign.feedback.wm.mirror_layers`):

- every ``torch.optim`` optimizer's ``step()`` (global pre- and post-hooks, any optimizer: SGD,
  Adam, AdamW, fused or not, LBFGS with its closure): for the layers whose ``W`` it holds and
  which have a gradient;
- :func:`feedback_step` in a loop that updates ``W`` itself (``p -= lr * p.grad``): for the layers
  whose ``W`` changed since their last training forward.

The per-layer update cycle (what is stored at the forward, how a missing feedback update is
detected and reported) is :mod:`prealign.feedback.learned`.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from ..errors import ConfigError
from . import kp, learned, wm
from .rules import _LEARNING, RULES, learning_generation

# optimizer -> (key, weak references to the learning layers whose W it holds, in its parameter order)
_HELD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# optimizer -> the layers its running step() will update (set by the pre-hook)
_PENDING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _learns(layer) -> bool:
    r = RULES.get(layer._rule)
    return r is not None and (r.learns_feedback or r.mirrors)


def _held(optimizer: torch.optim.Optimizer) -> list:
    """The kp/wm layers whose ``W`` ``optimizer`` holds, in its parameter order (cached until a rule
    or the optimizer's parameters change)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    key = (learning_generation(), tuple(map(id, params)))
    hit = _HELD.get(optimizer)
    if hit is not None and hit[0] == key:
        layers = [ref() for ref in hit[1]]
        if None not in layers:
            return layers
    by_weight: dict[int, list] = {}
    for layer in list(_LEARNING):
        if _learns(layer):
            by_weight.setdefault(id(layer.weight), []).append(layer)
    layers = [layer for p in params for layer in by_weight.get(id(p), ())]
    _HELD[optimizer] = (key, [weakref.ref(layer) for layer in layers])
    return layers


def _has_closure(args, kwargs) -> bool:
    """Whether ``step()`` got a closure (``args`` starts with the optimizer itself)."""
    return kwargs.get("closure") is not None or (len(args) > 1 and args[1] is not None)


def _before_step(optimizer, args, kwargs) -> None:
    if not _LEARNING:
        return
    layers = _held(optimizer)
    if not layers:
        return
    if not _has_closure(args, kwargs):  # an optimizer skips a parameter without a gradient
        layers = [layer for layer in layers if layer.weight.grad is not None]
    for layer in layers:  # W_before is W now: (re)open the cycle if no forward opened it or W or B were set since
        if learned.versions_moved(layer):  # (no optimizer ran in between, so version counters tell)
            learned.open_cycle(layer)
        layer.__dict__["_fb_in_step"] = True  # forwards inside step() (LBFGS closures) are not new cycles
    if layers:
        _PENDING[optimizer] = layers


def _after_step(optimizer, args, kwargs) -> None:
    layers = _PENDING.pop(optimizer, None) if _PENDING else None
    if not layers:
        return
    for layer in layers:
        layer.__dict__["_fb_in_step"] = False
    _update([layer for layer in layers if layer.weight.grad is not None])  # with a closure: where it made a gradient


def _update(layers: list) -> None:
    """Close each layer's update cycle with its feedback update: kp's, then the mirror phase of the wm layers (in order)."""
    mirroring = []
    for layer in layers:
        rule = RULES[layer._rule]
        if rule.learns_feedback:
            kp.update(layer)
        learned.close_cycle(layer)
        if rule.mirrors:
            mirroring.append(layer)
    if mirroring:
        wm.mirror_layers(mirroring)


register_optimizer_step_pre_hook(_before_step)
register_optimizer_step_post_hook(_after_step)


@torch.no_grad()
def feedback_step(model: nn.Module) -> None:
    """The feedback update of ``model``'s kp and wm layers, for a loop that updates ``W`` without a
    ``torch.optim`` optimizer. Call it once after each update of the weights::

        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
        prealign.feedback_step(model)

    Per layer it does exactly what an optimizer step's hooks do (kp: ``B`` receives ``W``'s update
    since the layer's last training forward, minus the decay; wm: the mirror phase), for every
    layer whose ``W`` changed since that forward (others, frozen or unused, are skipped, as an
    optimizer skips a parameter without a gradient). Do not also call it after a ``torch.optim``
    step, which already did it (it would find nothing to do). Without it, a loop that changes
    ``W`` gets a :class:`~prealign.feedback.learned.FeedbackNotUpdatedWarning` naming the layer at
    the next forward. Raises :class:`~prealign.errors.ConfigError` if ``model`` has no kp or wm layer.
    """
    layers = [(name, m) for name, m in model.named_modules() if m in _LEARNING and _learns(m)]
    if not layers:
        rules = sorted({m._rule for m in model.modules() if hasattr(m, "_rule")}) or ["no feedback layers"]
        raise ConfigError(f"feedback_step updates layers under kp or wm; this model has {', '.join(rules)}: "
                          "nothing to update (drop the call, or use method kp or wm)")
    for name, layer in layers:
        layer.__dict__["_fb_name"] = name
    _update([layer for _, layer in layers if learned.is_open(layer) and learned.w_changed(layer)])
