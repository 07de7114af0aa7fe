"""The model registry: names and import paths → factories → initialised, converted networks.

A **factory** builds a plain PyTorch network for one data set::

    factory(input_shape: tuple[int, ...], num_classes: int, **options) -> nn.Module

``input_shape`` is one sample without the batch (``(C, H, W)`` for images), ``num_classes`` the
width of the output. ``options`` are the config keys that shape a network, passed only to a
factory whose signature names them (or takes ``**kwargs``):

- ``hidden``: ``tuple[int, ...]``, hidden widths (``mlp``);
- ``activation``: ``str``, a key of :data:`ACTIVATIONS`.

A config that sets one of them to a non-default value for a factory that does not take it is an
error (the setting would be ignored). The factory does **not** get the learning rule or a
random generator: :func:`build_model` converts every ``Linear``/``Conv*`` to the rule with
:func:`prealign.convert` (strict: a module it cannot convert is an error naming it) and then
initialises them with :func:`prealign.init_weights` (``W ~ N(0, α_W/fan_in)``, ``B ~ N(0,
α_B/fan_in)``, biases 0) from the run's generator, the same for built-in and custom models, so
``same_init``, ``alpha_w`` and ``alpha_b`` mean the same everywhere. Norm layers keep PyTorch's
init (scale 1, shift 0).

A model is named by a registered name (:func:`register_model`) or an **import path**
``"package.module:attribute"`` (e.g. ``"my_pkg.nets:build"``), imported on first use.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, UnknownNameError

ACTIVATIONS = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "linear": nn.Identity,
}
OPTION_DEFAULTS = {"hidden": (100,), "activation": "relu"}  # RunConfig's defaults for the factory options

Factory = Callable[..., nn.Module]
MODELS: dict[str, Factory] = {}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (:data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise UnknownNameError("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def register_model(name: str, factory: Factory | None = None):
    """Register ``factory`` under ``name`` (see the module docstring for the contract).

    ``register_model("mynet", build)`` or, as a decorator, ``@register_model("mynet")``. Names are
    plain identifiers (no ``:``, which marks an import path); registering a taken name replaces it.
    Returns the factory.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ConfigError(f"model name {name!r} must be a non-empty string without ':' (':' marks an import path)")

    def add(f: Factory) -> Factory:
        if not callable(f):
            raise ConfigError(f"register_model({name!r}, ...) needs a callable factory, got {type(f).__name__}")
        MODELS[name] = f
        return f

    return add if factory is None else add(factory)


def _valid() -> str:
    return f"{', '.join(MODELS)}, or an import path 'package.module:function'"


def resolve_model(name: str) -> Factory:
    """The factory of a registered ``name`` or of an import path ``"package.module:attribute"``.

    Raises :class:`~prealign.errors.ConfigError` (one line) for an unknown name, a module that
    fails to import, a missing attribute or one that is not callable.
    """
    if not isinstance(name, str):
        raise ConfigError(f"model must be a name or an import path string, got {type(name).__name__}; valid models: {_valid()}")
    if name in MODELS:
        return MODELS[name]
    module_name, colon, attr = name.partition(":")
    if not colon:
        raise ConfigError(f"unknown model {name!r}; valid models: {_valid()}")
    if not module_name or not attr:
        raise ConfigError(f"model import path {name!r} must read 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any failure while importing user code is the user's to fix
        first = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(f"model {name!r}: module {module_name!r} cannot be imported ({type(err).__name__}: {first}); "
                          f"make it importable (installed, or on PYTHONPATH in every worker)") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model {name!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model {name!r} is a {type(obj).__name__}, not a callable factory(input_shape, num_classes, **options)")
    return obj


def _accepted(factory: Factory) -> set[str] | None:
    """Names of the options ``factory`` takes; ``None`` if it takes ``**kwargs`` (all of them)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} & set(OPTION_DEFAULTS)


def model_options(name: str, **values) -> dict:
    """The options (``hidden``, ``activation``) to pass to ``name``'s factory: those its signature
    takes. A non-default value for an option it does not take raises a one-line ConfigError."""
    factory = resolve_model(name)
    accepted = _accepted(factory)
    out = {}
    for key, value in values.items():
        if key not in OPTION_DEFAULTS:
            raise ConfigError(f"unknown model option {key!r}; valid: {', '.join(OPTION_DEFAULTS)}")
        if accepted is None or key in accepted:
            out[key] = tuple(value) if key == "hidden" else value
        elif _differs(value, OPTION_DEFAULTS[key]):
            takes = ", ".join(sorted(accepted)) or "none"
            raise ConfigError(f"model {name!r} takes no option {key!r} (got {value!r}; its options: {takes}); "
                              f"leave {key!r} at its default for this model")
    return out


def _differs(value, default) -> bool:
    if isinstance(default, tuple):
        return tuple(int(v) for v in value) != default
    return value != default


def build_model(name: str, input_shape: Sequence[int], num_classes: int, *, hidden: Sequence[int] = (100,),
                rule: str = "fa", activation: str = "relu", generator: torch.Generator | None = None,
                alpha_w: float = 2.0, alpha_b: float = 2.0) -> nn.Module:
    """Build model ``name`` (registered name or import path) for data of ``input_shape`` and
    ``num_classes``, converted to ``rule`` and initialised from ``generator``.

    The factory builds the plain network; :func:`prealign.convert` (strict) switches every
    ``Linear``/``Conv*`` to ``rule``; :func:`prealign.init_weights` draws ``W``, ``B`` and the DFA
    seeds from ``generator``. The result carries ``input_shape`` and ``num_classes`` attributes
    (what :func:`prealign.pretrain_noise` reads). For ``mlp``, ``hidden=(100,)`` on MNIST is 784-100-10.
    """
    options = model_options(name, hidden=hidden, activation=activation)
    model = resolve_model(name)(tuple(int(d) for d in input_shape), int(num_classes), **options)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned a {type(model).__name__}, not an nn.Module; "
                          f"a factory must return the network")
    return finish(model, input_shape, num_classes, rule=rule, generator=generator, alpha_w=alpha_w, alpha_b=alpha_b)


def finish(model: nn.Module, input_shape: Sequence[int], num_classes: int, *, rule: str = "fa",
           generator: torch.Generator | None = None, alpha_w: float = 2.0, alpha_b: float = 2.0) -> nn.Module:
    """A factory's plain network → converted to ``rule`` (strict :func:`prealign.convert`: a module
    the rule cannot follow raises, naming it), ``input_shape``/``num_classes`` attributes set,
    ``W``, ``B`` and DFA seeds drawn by :func:`prealign.init_weights` from ``generator``. In place."""
    from ..feedback import convert
    from ..init import init_weights

    convert(model, rule)
    model.input_shape = tuple(int(d) for d in input_shape)
    model.num_classes = int(num_classes)
    return init_weights(model, alpha_w, alpha_b, generator=generator)
