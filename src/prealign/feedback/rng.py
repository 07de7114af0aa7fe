"""Seeded random streams for rules that draw random numbers at every step (``Rule.draws``).

``brsf`` re-draws its feedback magnitudes every step and ``wm`` drives its mirror with fresh
noise at every mirroring (:mod:`prealign.feedback.wm`). By default (a plain user loop's
convention, as for dropout) those draws come from torch's global RNG of the layer's device.
:func:`seed_rules` gives each such layer a :class:`torch.Generator` of its own, so the draws
depend on the seed alone, never on what else drew from the global RNG before or in between:

- the stream of a layer is seeded from ``(seed, index)``, ``index`` being the layer's position
  among the model's feedback layers in ``model.modules()`` order (:func:`layer_seed`): two
  layers never share a stream, and the same model built twice gets the same streams;
- the generator lives on the layer's device. After ``model.to(device)`` moves the layer to
  another device it is re-created there (at the layer's next draw, or :func:`rules_rng_state`),
  seeded with one 63-bit number drawn from the old stream: still a function of the seed and of
  the draws made before the move (CPU and CUDA generators are different algorithms: the numbers
  drawn on either are not the same);
- :func:`rules_rng_state` / :func:`set_rules_rng_state` save and restore the streams (checkpoints),
  so a resumed run continues bitwise.

``prealign.train(seed=s)`` calls :func:`seed_rules` itself. In a loop of your own call it once
after building (and converting) the model::

    pa.seed_rules(model, 0)
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..errors import ConfigError, PrealignError
from .layers import FeedbackLayer
from .rules import _RNG_ATTR as _ATTR
from .rules import RULES, generator

__all__ = ["seed_rules", "rules_rng_state", "set_rules_rng_state", "layer_seed", "generator"]


def layer_seed(seed: int, index: int) -> int:
    """The 63-bit seed of the stream of the ``index``-th feedback layer of a model under ``seed``
    (the first 8 bytes of SHA-256 of ``"prealign.rules:{seed}:{index}"``: independent of torch's RNG)."""
    digest = hashlib.sha256(f"prealign.rules:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _feedback_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, FeedbackLayer)]


def _draws(layer: nn.Module) -> bool:
    rule = RULES.get(layer.rule)
    return rule is not None and rule.draws


def seed_rules(model: nn.Module, seed: int) -> None:
    """Give every feedback layer of ``model`` whose rule draws at each step (``Rule.draws``: brsf,
    wm) its own generator, seeded from ``(seed, layer index)`` (:func:`layer_seed`), on the layer's
    device; other feedback layers draw nothing and get none. Call it again after changing a
    layer's rule. ``seed``: an int."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed_rules: seed must be an int, got {seed!r}")
    for index, (_, layer) in enumerate(_feedback_layers(model)):
        gen = None
        if _draws(layer):
            gen = torch.Generator(device=layer.weight.device)
            gen.manual_seed(layer_seed(seed, index))
        layer.__dict__[_ATTR] = gen


def rules_rng_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer name: generator state (uint8 tensor, CPU)}`` of every layer with its own stream
    (:func:`seed_rules`); ``{}`` when the rules draw from the global RNG. Loads with
    ``torch.load(weights_only=True)``."""
    out = {}
    for name, layer in _feedback_layers(model):
        gen = generator(layer)
        if gen is not None:
            out[name] = gen.get_state()
    return out


def set_rules_rng_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`rules_rng_state` returned: afterwards the layers draw exactly what the
    saved model would have drawn next. The state must name the same layers that have streams
    now (after :func:`seed_rules`, or none for neither); a different set raises a one-line
    :class:`~prealign.errors.PrealignError` naming them, and so does a state saved on another
    kind of device."""
    layers = dict(_feedback_layers(model))
    have = {name for name, layer in layers.items() if layer.__dict__.get(_ATTR) is not None}
    unknown = sorted(set(state) - set(layers))
    if unknown:
        raise PrealignError(f"rules RNG state names layers this model lacks: {', '.join(unknown)}; "
                            "restore it into the model it was saved from")
    missing = sorted(have - set(state))
    if missing:
        raise PrealignError(f"rules RNG state has no stream for {', '.join(missing)}, which are seeded here; "
                            "restore a state saved after seed_rules, or build the model without seed_rules")
    for name, saved in state.items():
        layer = layers[name]
        gen = torch.Generator(device=layer.weight.device)
        try:
            gen.set_state(saved)
        except (RuntimeError, TypeError) as err:
            raise PrealignError(f"rules RNG state of {name} does not fit a {gen.device.type} generator "
                                f"(saved on another kind of device?): {err}") from None
        layer.__dict__[_ATTR] = gen
