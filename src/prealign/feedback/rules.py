"""Registry of learning rules: how the backward pass forms the error sent to a layer's input.

SPEC §1. For a layer ``y = W x + b`` with upstream error ``δ = ∂L/∂y`` every rule keeps the local
weight update ``δᵀ x`` and the ordinary bias gradient ``Σ δ``; rules differ only in the matrix the
error travels back through:

=========  ====================================================================
``bp``     ``δ W`` (weight transport; plain autograd)
``fa``     ``δ B`` with ``B`` fixed random (Lillicrap et al. 2016)
``dfa``    the output error ``e`` sent straight to the layer through its own fixed ``D``
           (Nøkland 2016); see :mod:`prealign.feedback.dfa`
``usf``    ``δ (sign(W)·s)``: uniform sign-concordant feedback, ``s`` = mean ``|B|`` (Liao et al. 2016)
``brsf``   ``δ (|R|·sign(W))``, ``R`` re-drawn every batch at the scale of ``B`` (Xiao et al. 2019)
``frsf``   ``δ (|B|·sign(W))``, fixed random magnitudes (Xiao et al. 2019)
``kp``     ``δ B`` where ``B`` receives the same update as ``W`` (Kolen & Pollack 1994, Akrout 2019)
``wm``     ``δ B`` where ``B`` learns ``W`` from noise-driven activity after every optimizer step
           (weight mirror, Akrout et al. 2019 §4); see :mod:`prealign.feedback.wm`
=========  ====================================================================

Kolen–Pollack decay. Per optimizer step ``B ← B + ΔW − d·(B − W)`` (``W`` before the step), so
``B − W`` shrinks by ``(1 − d)`` every step even under Adam without weight decay; ``d`` is the
layer attribute ``kp_decay`` (default :data:`~prealign.feedback.layers.KP_DECAY` = 0.01), set for a
model with :func:`~prealign.feedback.kp.set_kp_decay`, ``prealign.train(..., kp_decay=d)`` or
``RunConfig.kp_decay``; giving it for a model without ``kp`` layers is an error. ``d = lr·λ`` with
SGD and ``weight_decay = λ`` is Akrout et al.'s form. Mechanism: :mod:`prealign.feedback.kp`.

A rule is one registry entry; adding one is ``register_rule(Rule(...))`` and its tests.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UnknownNameError

# feedback layers whose rule was set to one that learns its feedback (weakly held); kept here, not in
# .kp (whose optimizer hooks read it), so .layers can register into it without importing .kp (no cycle)
_LEARNING: weakref.WeakSet = weakref.WeakSet()
_GENERATION = [0]  # bumped whenever a layer's rule or _LEARNING changes (optimizer hooks cache on it)


def changed_learning() -> None:
    """Invalidate what the optimizer-step hooks cached about which layers learn their feedback."""
    _GENERATION[0] += 1


def learning_generation() -> int:
    return _GENERATION[0]


@dataclass(frozen=True)
class Rule:
    """One learning rule.

    ``feedback(layer) -> Tensor`` returns the matrix (weight-shaped) the error travels back
    through on this step, or is ``None`` for exact backpropagation. ``per_step`` marks rules that
    compute that matrix afresh every step (the sign rules): they are called as
    ``feedback(layer, out)`` and write it into ``out``, a buffer the layer reuses once the backward
    pass that read it has finished (no allocation per step). ``direct`` marks rules that
    send the network's output error straight to every layer (DFA). ``learns_feedback`` marks
    rules whose ``B`` follows ``W``'s updates (KP). ``transports`` says what of ``W`` the backward
    pass reads (``"weights"``, ``"signs"`` or ``"nothing"``), used by the memory-traffic analysis.
    ``reads_feedback`` says whether the error travels back through ``B`` itself (fa, kp): only then
    does the angle ∠(W, B) (:func:`prealign.alignment_angles`) describe the rule; bp never reads
    ``B``, dfa reads its own ``D``, the sign rules read ``sign(W)`` (with ``|B|`` magnitudes at most).
    ``mirrors`` marks rules whose ``B`` learns ``W`` from the layer's noise-driven activity after
    each optimizer step (weight mirror, :mod:`prealign.feedback.wm`). ``draws`` marks rules that draw
    random numbers at each step (brsf's magnitudes, wm's noise): :func:`prealign.seed_rules` gives
    their layers seeded streams of their own (:mod:`prealign.feedback.rng`).
    """

    name: str
    description: str
    feedback: Callable[..., torch.Tensor] | None
    per_step: bool = False
    direct: bool = False
    learns_feedback: bool = False
    transports: str = "nothing"
    reads_feedback: bool = True
    mirrors: bool = False
    draws: bool = False


RULES: dict[str, Rule] = {}


def register_rule(rule: Rule) -> Rule:
    RULES[rule.name] = rule
    return rule


def get_rule(name: str) -> Rule:
    """Look a rule up by name; unknown names raise a ``ValueError`` listing the valid ones."""
    try:
        return RULES[name]
    except (KeyError, TypeError):
        raise UnknownNameError("rule", name, RULES) from None


_RNG_ATTR = "_rules_rng"  # a layer's own torch.Generator (prealign.feedback.rng.seed_rules); absent/None: global RNG


def generator(layer) -> torch.Generator | None:
    """The generator ``layer``'s rule draws from (``None``: torch's global RNG), on the layer's device."""
    gen = layer.__dict__.get(_RNG_ATTR)
    if gen is None:
        return None
    device = layer.weight.device
    if gen.device != device:  # the layer moved (.to(device)): a stream on its new device, seeded from the old one
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=gen, device=gen.device))
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        layer.__dict__[_RNG_ATTR] = gen
    return gen


def _fixed(layer):
    return layer.feedback


def _abs_feedback(layer) -> torch.Tensor:
    """``|B|``, cached while ``B`` is unchanged (it is fixed under every sign rule)."""
    b = layer.feedback
    key = (b.data_ptr(), b._version, b.dtype)
    cache = getattr(layer, "_abs_cache", None)
    if cache is None or cache[0] != key:
        cache = (key, b.abs(), float(b.abs().mean()), float(b.std()))
        layer._abs_cache = cache
    return cache


def _uniform_sign(layer, out=None):
    return torch.sign(layer.weight.detach(), out=out).mul_(_abs_feedback(layer)[2])


def _fixed_random_sign(layer, out=None):
    return torch.copysign(_abs_feedback(layer)[1], layer.weight.detach(), out=out)


def _batchwise_random_sign(layer, out=None):
    out = torch.empty_like(layer.weight, requires_grad=False) if out is None else out
    return out.normal_(generator=generator(layer)).abs_().mul_(_abs_feedback(layer)[3]).copysign_(layer.weight.detach())


register_rule(Rule("bp", "backpropagation: the error travels back through W (weight transport)", None, transports="weights",
                   reads_feedback=False))
register_rule(Rule("fa", "feedback alignment: the error travels back through a fixed random B", _fixed))
register_rule(Rule("dfa", "direct feedback alignment: the output error reaches every layer through its own fixed matrix", _fixed,
                   direct=True, reads_feedback=False))
register_rule(Rule("usf", "uniform sign-concordant feedback: sign(W) scaled by mean |B|", _uniform_sign, per_step=True,
                   transports="signs", reads_feedback=False))
register_rule(Rule("brsf", "batchwise random-magnitude sign-concordant feedback: |R|·sign(W), R re-drawn each batch",
                   _batchwise_random_sign, per_step=True, transports="signs", reads_feedback=False, draws=True))
register_rule(Rule("frsf", "fixed random-magnitude sign-concordant feedback: |B|·sign(W)", _fixed_random_sign, per_step=True,
                   transports="signs", reads_feedback=False))
register_rule(Rule("kp", "Kolen-Pollack: B receives W's update minus a decay d·(B - W) per optimizer step, so B -> W", _fixed,
                   learns_feedback=True))
register_rule(Rule("wm", "weight mirror: after each optimizer step B learns W from the layer's noise-driven activity "
                   "(B <- (1 - decay) B + lr y x^T, y = W x)", _fixed, mirrors=True, draws=True))
