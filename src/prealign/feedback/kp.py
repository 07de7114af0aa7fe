"""Kolen–Pollack (Kolen & Pollack 1994; Akrout et al. 2019): ``B`` receives ``W``'s update, once per optimizer step.

Per optimizer step that changes ``W`` (by ``ΔW``, whatever the optimizer: Adam, AdamW, SGD,
fused or not, the trainer's or a user's own), every feedback layer under a rule that
``learns_feedback`` gets

    ``B ← B + ΔW − d · (B − W_before)``,   i.e.   ``B_after − W_after = (1 − d) · (B_before − W_before)``,

with ``d = layer.kp_decay`` (default :data:`prealign.feedback.layers.KP_DECAY`). ``B − W`` thus
shrinks by ``(1 − d)`` per step even when ``W`` itself has no weight decay (Adam), which is what
closes the angle (SPEC §1). Akrout's SGD form with L2 decay ``λ`` on both ``W`` and ``B`` is
``d = lr · λ`` with ``weight_decay = λ``.

Mechanism (:mod:`prealign.feedback.step`, :mod:`prealign.feedback.learned`): at the layer's first
training forward after its last feedback update it stores the gap ``G = B − W_before``; after
``W``'s update, ``B = W_after + (1 − d) G``. The update runs in a post-hook of every
``torch.optim`` optimizer's ``step()`` (for layers whose ``W`` the optimizer holds and which have a
gradient — an optimizer skips a parameter without one; with a closure, as LBFGS takes, the gradient
is checked after the step; a pre-hook re-takes ``G`` if ``W`` changed since the forward), and in
:func:`prealign.feedback_step` in a loop that updates ``W`` itself. So ``B`` moves exactly once per
update — several forwards per step (gradient accumulation, measurements) change nothing, and
changes of ``W`` outside an update (loading a checkpoint, :func:`prealign.init_weights`,
:func:`prealign.align`) are not updates ``B`` follows; an update without a feedback update is a
warning at the next forward (:class:`~prealign.feedback.learned.FeedbackNotUpdatedWarning`). A layer
joins the hooks' registry when its rule is set to one that learns its feedback, and so do its copies
(``copy.deepcopy``, pickling). Cost per step: two elementwise passes over ``W``-sized tensors (``B``
is untouched while the optimizer runs, so closures that re-evaluate the model inside ``step()``, as
LBFGS does, see it).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .rules import RULES


def update(layer) -> None:
    """The Kolen–Pollack update of one layer after ``W``'s update: ``B = W_after + (1 − d) G``, ``G = B − W_before``
    having been stored when the update cycle opened (:mod:`prealign.feedback.learned`)."""
    torch.add(layer.weight.detach(), layer._kp_gap, alpha=1.0 - float(layer.kp_decay), out=layer.feedback)


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
