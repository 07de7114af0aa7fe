"""``convert(model, rule)`` and ``exact_gradients(model)``: rules for any ``nn.Module``, in place."""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import PrealignError
from . import dfa
from .layers import FeedbackConv1d, FeedbackConv2d, FeedbackConv3d, FeedbackLayer, FeedbackLinear
from .rules import get_rule

_FEEDBACK_CLASS = {nn.Linear: FeedbackLinear, nn.Conv1d: FeedbackConv1d, nn.Conv2d: FeedbackConv2d,
                   nn.Conv3d: FeedbackConv3d}
CONVERTIBLE = tuple(_FEEDBACK_CLASS)  # the layer types convert() turns into feedback layers

# Modules whose parameters legitimately keep their ordinary gradient under every rule. Their
# parameters act elementwise (a norm's scale and shift, PReLU's slopes) or are looked up
# (embeddings), so their gradient is already local, and the error they pass back involves no
# weight matrix to transport (a diagonal at most; an embedding passes nothing back at all).
# Biases of converted layers likewise keep their ordinary gradient Σ δ (SPEC §1).
LOCAL_GRADIENT_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm,
    nn.Embedding, nn.EmbeddingBag, nn.PReLU,
)


def feedback_layers(model: nn.Module) -> list[tuple[str, FeedbackLayer]]:
    """``[(qualified name, layer)]`` of every feedback layer, in forward-definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, FeedbackLayer)]


def unconverted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(qualified name, module)]`` of modules that own parameters but are neither feedback layers,
    nor convertible (``nn.Linear``/``nn.Conv1d``/``2d``/``3d``), nor in :data:`LOCAL_GRADIENT_MODULES`: their
    weights would learn by exact backprop under any rule (e.g. ``ConvTranspose2d``,
    ``MultiheadAttention``'s projections, a not yet materialized ``LazyLinear``, custom parameters)."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (FeedbackLayer, *LOCAL_GRADIENT_MODULES)) or type(m) in _FEEDBACK_CLASS:
            continue
        if next(m.parameters(recurse=False), None) is not None:
            out.append((name or "<root>", m))
    return out


def _describe(layers: list[tuple[str, nn.Module]]) -> str:
    return ", ".join(f"{name} ({type(m).__name__})" for name, m in layers)


def convert(model: nn.Module, rule: str = "fa", *, generator: torch.Generator | None = None,
            alpha_b: float = 2.0, strict: bool = True) -> nn.Module:
    """Switch every ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` of ``model`` to ``rule``, in
    place; return ``model``.

    Plain layers become :class:`FeedbackLinear`/:class:`FeedbackConv2d`/… (same object, same
    weights, hooks and parameters) and get a feedback matrix ``B ~ N(0, alpha_b / fan_in)`` and a
    DFA seed, both from ``generator``. Layers already converted keep ``W``, ``B`` and ``D`` and only
    change rule, so a second call changes the rule without losing state. ``dfa`` also installs
    the model-level output-error hook.

    Any other module with parameters of its own (:func:`unconverted_layers`: ``ConvTranspose*``,
    ``MultiheadAttention``, ``LazyLinear`` before its first forward, subclasses of ``nn.Linear``,
    custom parameters) cannot follow ``rule`` and would silently stay on exact backprop:
    ``strict=True`` (default) raises :class:`~prealign.errors.PrealignError` naming them before
    anything is changed; ``strict=False`` warns (``UserWarning`` naming them) and leaves them on
    backprop, and :func:`rule_of` then reports ``"mixed"``. Norm layers, embeddings, PReLU
    (:data:`LOCAL_GRADIENT_MODULES`) and biases keep their ordinary gradient: it is local already.
    """
    r = get_rule(rule)
    left = unconverted_layers(model) if rule != "bp" else []
    if left:
        msg = (f"convert(model, {rule!r}) cannot convert {_describe(left)}: their weights would learn by exact "
               f"backprop; replace them with Linear/Conv1d/Conv2d/Conv3d, or pass strict=False to leave them on backprop")
        if strict:
            raise PrealignError(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    for module in model.modules():
        if isinstance(module, FeedbackLayer):
            module.rule = rule
        elif type(module) in _FEEDBACK_CLASS:
            module.__class__ = _FEEDBACK_CLASS[type(module)]
            module._setup_feedback(rule, generator, alpha_b)
    hook = dfa.install(model) if r.direct else None
    if not r.direct:
        dfa.remove(model)
    for _, layer in feedback_layers(model):
        layer._dfa_hook = hook
    return model


def rule_of(model: nn.Module) -> str | None:
    """The rule every weight of ``model`` learns by: ``None`` if it has no feedback layers,
    ``"mixed"`` if its feedback layers differ or if some weight layers were left unconverted
    (:func:`unconverted_layers`, on exact backprop) while the feedback layers are not ``bp``."""
    rules = {layer.rule for _, layer in feedback_layers(model)}
    if not rules:
        return None
    if len(rules) > 1 or (rules != {"bp"} and unconverted_layers(model)):
        return "mixed"
    return rules.pop()


@contextmanager
def exact_gradients(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` computes true autograd gradients (for Hessians, attacks,
    gradient alignment); its rules are restored on exit, also when the body raises.
    """
    layers = [layer for _, layer in feedback_layers(model)]
    previous = [layer._exact for layer in layers]
    for layer in layers:
        layer._exact = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous):
            layer._exact = was
