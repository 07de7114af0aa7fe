"""``convert(model, rule)`` and ``exact_gradients(model)``: rules for any ``nn.Module``, in place."""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from ..errors import PrealignError
from . import dfa
from . import learned
from .rules import _LEARNING, changed_learning
from .layers import (AttentionProjection, FeedbackBilinear, FeedbackConv1d, FeedbackConv2d, FeedbackConv3d,
                     FeedbackConvTranspose1d, FeedbackConvTranspose2d, FeedbackConvTranspose3d, FeedbackLayer,
                     FeedbackLinear, FeedbackMultiheadAttention, FeedbackOutProjection)
from .rules import get_rule

_FEEDBACK_CLASS = {nn.Linear: FeedbackLinear, NonDynamicallyQuantizableLinear: FeedbackOutProjection,
                   nn.Bilinear: FeedbackBilinear, nn.Conv1d: FeedbackConv1d, nn.Conv2d: FeedbackConv2d,
                   nn.Conv3d: FeedbackConv3d, nn.ConvTranspose1d: FeedbackConvTranspose1d,
                   nn.ConvTranspose2d: FeedbackConvTranspose2d, nn.ConvTranspose3d: FeedbackConvTranspose3d,
                   nn.MultiheadAttention: FeedbackMultiheadAttention}
# the layer types convert() turns into feedback layers themselves (each has a ``weight``); it also converts
# nn.MultiheadAttention, whose projections become feedback layers (AttentionProjection, out_proj)
CONVERTIBLE = tuple(t for t in _FEEDBACK_CLASS if t is not nn.MultiheadAttention)
# the exact classes convert() handles (subclasses are custom modules: they may change the computation)
CONVERTIBLE_TYPES = tuple(_FEEDBACK_CLASS)

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
    nor convertible (:data:`CONVERTIBLE_TYPES`, exact classes), nor in :data:`LOCAL_GRADIENT_MODULES`:
    their weights would learn by exact backprop under any rule (e.g. ``LSTM``/``GRU``/``RNN``, whose
    fused kernels take no feedback matrix, a not yet materialized ``LazyLinear``, subclasses of
    ``nn.Linear``, custom parameters)."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (FeedbackLayer, FeedbackMultiheadAttention, *LOCAL_GRADIENT_MODULES)) or type(m) in _FEEDBACK_CLASS:
            continue
        if next(m.parameters(recurse=False), None) is not None:
            out.append((name or "<root>", m))
    return out


def _describe(layers: list[tuple[str, nn.Module]]) -> str:
    return ", ".join(f"{name} ({type(m).__name__})" for name, m in layers)


def _unconvertible_message(rule: str, left: list[tuple[str, nn.Module]]) -> str:
    lazy = [(n, m) for n, m in left if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()]
    other = [(n, m) for n, m in left if (n, m) not in lazy]
    parts = []
    if other:
        parts.append(f"cannot convert {_describe(other)}: their weights would learn by exact backprop; replace them "
                     f"with Linear/Conv*/ConvTranspose*/MultiheadAttention layers")
    if lazy:
        parts.append(f"{_describe(lazy)} have no weights yet: run one forward pass (model(example_batch)) before convert")
    return f"convert(model, {rule!r}): {'; '.join(parts)}; or pass strict=False to leave them on backprop"


def _check_dfa_batch_first(model: nn.Module) -> None:
    seq_first = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention) and not m.batch_first]
    if seq_first:
        raise PrealignError(f"convert(model, 'dfa'): {_describe(seq_first)} use batch_first=False, but dfa treats dim 0 of "
                            "the outputs and of every layer input as the batch; build them with batch_first=True")


def convert(model: nn.Module, rule: str = "fa", *, generator: torch.Generator | None = None,
            alpha_b: float = 2.0, strict: bool = True) -> nn.Module:
    """Switch every weight layer of ``model`` to ``rule``, in place; return ``model``.

    Converted (exact classes, :data:`CONVERTIBLE_TYPES`): ``nn.Linear``, ``nn.Bilinear``,
    ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d`` and ``nn.MultiheadAttention`` (its packed
    ``in_proj_weight`` or separate q/k/v weights as :class:`AttentionProjection` children, and
    ``out_proj``) — hence ``nn.TransformerEncoderLayer``/``DecoderLayer``/``Transformer`` — and lazy
    layers once materialised. Plain layers become :class:`FeedbackLinear`/:class:`FeedbackConv2d`/…
    (same object, same weights, hooks and parameters) and get a feedback matrix
    ``B ~ N(0, alpha_b / fan_in)`` (``fan_in`` = numel of ``weight[0]``) and a DFA seed, both from
    ``generator``. Layers already converted keep ``W``, ``B`` and ``D`` and only
    change rule, so a second call changes the rule without losing state. ``dfa`` also installs
    the model-level output-error hook.

    Any other module with parameters of its own (:func:`unconverted_layers`: ``LSTM``/``GRU``/``RNN``,
    ``LazyLinear`` before its first forward, subclasses of ``nn.Linear``, custom parameters) cannot
    follow ``rule`` and would silently stay on exact backprop:
    ``strict=True`` (default) raises :class:`~prealign.errors.PrealignError` naming them before
    anything is changed; ``strict=False`` warns (``UserWarning`` naming them) and leaves them on
    backprop, and :func:`rule_of` then reports ``"mixed"``. Norm layers, embeddings, PReLU
    (:data:`LOCAL_GRADIENT_MODULES`) and biases keep their ordinary gradient: it is local already.
    ``dfa`` refuses attention with ``batch_first=False`` (it treats dim 0 as the batch everywhere).
    """
    r = get_rule(rule)
    if r.direct:
        _check_dfa_batch_first(model)
    left = unconverted_layers(model) if rule != "bp" else []
    if left:
        msg = _unconvertible_message(rule, left)
        if strict:
            raise PrealignError(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    for module in list(model.modules()):  # a snapshot: attention modules gain projection children
        if isinstance(module, FeedbackLayer):
            module.rule = rule
        elif type(module) in _FEEDBACK_CLASS:
            module.__class__ = _FEEDBACK_CLASS[type(module)]
            if isinstance(module, FeedbackMultiheadAttention):
                module._setup_projections(rule, generator, alpha_b)
            else:
                module._setup_feedback(rule, generator, alpha_b)
    hook = dfa.install(model) if r.direct else None
    if not r.direct:
        dfa.remove(model)
    for name, layer in feedback_layers(model):
        layer._dfa_hook = hook
        layer.__dict__["_fb_name"] = name  # named in prealign.feedback.learned's warnings
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


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the feedback state (``B``, ``D``): exactly the keys of the plain
    torch model it was converted from, so ``plain.load_state_dict(plain_state_dict(model))`` works with
    ``strict=True`` (``plain.load_state_dict(model.state_dict(), strict=False)`` does too, ignoring them)."""
    extra = {f"{name}.{key}" if name else key for name, _ in feedback_layers(model) for key in ("feedback", "dfa_feedback")}
    return {k: v for k, v in model.state_dict().items() if k not in extra}


_FEEDBACK_STATE = ("_rule", "_exact", "_dfa_hook", "_dfa_seed", "_kp_gap", "_feedback_pool", "_abs_cache", "kp_decay",
                   "_rules_rng", "_fb_name", *learned.STATE)


def unconvert(model: nn.Module) -> nn.Module:
    """A plain-torch deep copy of ``model`` with its trained weights: every feedback layer back to its
    torch class (``nn.Linear``, ``nn.Bilinear``, ``nn.Conv*``, ``nn.ConvTranspose*``,
    ``nn.MultiheadAttention``), ``B``/``D`` and the DFA hooks dropped. ``model`` is untouched.
    For export; training the copy is ordinary backprop."""
    plain = copy.deepcopy(model)
    for parent in list(plain.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, AttentionProjection):
                delattr(parent, name)
    for m in plain.modules():
        if isinstance(m, FeedbackLayer):
            _LEARNING.discard(m)
            changed_learning()
            for key in ("feedback", "dfa_feedback"):
                m._buffers.pop(key, None)
            for key in _FEEDBACK_STATE:
                m.__dict__.pop(key, None)
        if isinstance(m, (FeedbackLayer, FeedbackMultiheadAttention)):
            m.__class__ = type(m)._plain
    dfa.remove(plain)
    return plain
