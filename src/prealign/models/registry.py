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
import sys
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, PrealignError, UnknownNameError

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


def register_model(name: str, factory: Factory | None = None, *, replace: bool = False):
    """Register ``factory`` under ``name`` (see the module docstring for the contract).

    ``register_model("mynet", build)`` or, as a decorator, ``@register_model("mynet")``. Names are
    plain identifiers (no ``:``, which marks an import path). A name that is taken by another factory
    (a built-in such as ``mlp`` included) raises :class:`~prealign.errors.ConfigError` unless
    ``replace=True``; registering the same definition again (same module and qualified name, e.g. a
    re-run notebook cell) replaces it without asking. Either way the run key sees the network the
    new factory builds (:mod:`prealign.models.fingerprint`), so no stored result of the old one is
    served for it. Returns the factory.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ConfigError(f"model name {name!r} must be a non-empty string without ':' (':' marks an import path)")

    def add(f: Factory) -> Factory:
        if not callable(f):
            raise ConfigError(f"register_model({name!r}, ...) needs a callable factory, got {type(f).__name__}")
        old = MODELS.get(name)
        if old is not None and old is not f and not replace and _where(old) != _where(f):
            raise ConfigError(f"model name {name!r} is taken by {_where(old)}; register {_where(f)} under another "
                              f"name, or pass replace=True to replace it")
        MODELS[name] = f
        return f

    return add if factory is None else add(factory)


def _where(f) -> str:
    """``module.qualname`` of a factory (what a message names it by)."""
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__name__)}"


def _valid() -> str:
    return f"{', '.join(MODELS)}, or an import path 'package.module:function'"


def check_model_name(name) -> str:
    """``name`` if it is a registered name or reads ``"package.module:attribute"``; a one-line
    ConfigError otherwise. Imports nothing: a config read from someone else's file, grid or store
    is checked without running their code (the module is imported when the model is built)."""
    if not isinstance(name, str):
        raise ConfigError(f"model must be a name or an import path string, got {type(name).__name__}; valid models: {_valid()}")
    if name in MODELS:
        return name
    module_name, colon, attr = name.partition(":")
    if not colon:
        raise ConfigError(f"unknown model {name!r}; valid models: {_valid()}")
    dotted = lambda text: bool(text) and all(part.isidentifier() for part in text.split("."))  # noqa: E731
    if not dotted(module_name) or not dotted(attr):
        raise ConfigError(f"model import path {name!r} must read 'package.module:function'")
    return name


def is_loaded(name: str) -> bool:
    """Whether the factory of ``name`` is at hand without importing anything: a registered name, or an
    import path whose module is imported already (``builtins:dict``: yes; ``my_pkg.nets:build``: once used)."""
    if name in MODELS:
        return True
    module_name, colon, _ = str(name).partition(":")
    return bool(colon) and module_name in sys.modules


def resolve_model(name: str) -> Factory:
    """The factory of a registered ``name`` or of an import path ``"package.module:attribute"``
    (imported here, on first use: only building a model imports its module).

    Raises :class:`~prealign.errors.ConfigError` (one line) for an unknown name, a module that
    fails to import, a missing attribute, or an attribute that cannot be a factory (not callable, or a
    class other than an ``nn.Module`` subclass, such as ``builtins:dict``).
    """
    check_model_name(name)
    if name in MODELS:
        return MODELS[name]
    module_name, _, attr = name.partition(":")
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
    if isinstance(obj, type) and not issubclass(obj, nn.Module):
        raise ConfigError(f"model {name!r} is the class {obj.__name__}, not a factory(input_shape, num_classes, **options) "
                          f"returning an nn.Module (nor an nn.Module subclass); name a function that builds the network")
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
                alpha_w: float = 2.0, alpha_b: float = 2.0, batch_size: int = 1) -> nn.Module:
    """Build model ``name`` (registered name or import path) for data of ``input_shape`` and
    ``num_classes``, converted to ``rule`` and initialised from ``generator``.

    The factory builds the plain network; :func:`prealign.convert` (strict) switches every
    ``Linear``/``Conv*`` to ``rule``; :func:`prealign.init_weights` draws ``W``, ``B`` and the DFA
    seeds from ``generator``. The result carries ``input_shape`` and ``num_classes`` attributes
    (what :func:`prealign.pretrain_noise` reads) and ``memory_estimate`` (the
    :class:`prealign.models.memory.Estimate` of training it, or None). For ``mlp``, ``hidden=(100,)`` on
    MNIST is 784-100-10.

    Before anything is allocated the factory runs once on the meta device, and after the build one
    zero sample goes through the plain network (:mod:`prealign.models.memory`): a network whose
    training (in batches of ``batch_size``) needs more memory than this machine has available, that
    cannot take a sample of ``input_shape`` or whose output is not ``num_classes`` wide is a one-line
    :class:`~prealign.errors.ConfigError`; so is a factory that raises, returns something other than
    an ``nn.Module`` or holds a layer the rule cannot follow.
    """
    from .memory import estimate, with_activations

    options = model_options(name, hidden=hidden, activation=activation)
    factory = resolve_model(name)
    shape = tuple(int(d) for d in input_shape)
    what = f"model {name!r}" + "".join(f" {k}={v!r}" for k, v in options.items() if _differs(v, OPTION_DEFAULTS[k]))
    est = estimate(factory, shape, int(num_classes), options, batch_size)
    available = _check_memory(what, est)  # the parameters alone, before anything is allocated
    try:
        model = factory(shape, int(num_classes), **options)
    except PrealignError:
        raise
    except Exception as err:  # noqa: BLE001 - the factory is user code: its failure is one line naming it
        raise ConfigError(f"{what} cannot be built for inputs {shape} and {num_classes} classes: its factory raised "
                          f"{_first_line(err)}; fix the factory or choose a model that fits the data") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned a {type(model).__name__}, not an nn.Module; "
                          f"a factory must return the network")
    try:
        est, out = with_activations(est, model, shape)
    except Exception as err:  # noqa: BLE001 - the network cannot take one sample of the data
        raise ConfigError(f"{what} cannot take one sample of the data (shape {shape}): {_first_line(err)}; its factory "
                          f"must build a network for inputs of shape {shape} (it is called as factory(input_shape, "
                          "num_classes, **options))") from None
    if out is None or len(out) != 2 or out[1] != num_classes:
        got = "no tensor" if out is None else f"outputs of shape {out[1:]}"
        raise ConfigError(f"{what} gives {got} per sample, but the data has {num_classes} classes; its factory must "
                          f"build a network with {num_classes} outputs (it is called as factory(input_shape, "
                          "num_classes, **options))")
    _check_memory(what, est, available)  # with a batch's activations
    _check_convertible(name, model, rule)
    model = finish(model, input_shape, num_classes, rule=rule, generator=generator, alpha_w=alpha_w, alpha_b=alpha_b)
    model.memory_estimate = est  # what training it needs (prealign.models.memory.Estimate; None: unknown)
    return model


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"


def check_device_memory(model: nn.Module, device) -> None:
    """Refuse (one line) to train ``model`` (built by :func:`build_model`) on a CUDA ``device`` whose free
    memory is below its ``memory_estimate``, before it is moved there."""
    from .memory import gb

    device = torch.device(device)
    est = getattr(model, "memory_estimate", None)
    if est is None or device.type != "cuda":
        return
    free, total = torch.cuda.mem_get_info(device)
    if est.bytes > free:
        raise ConfigError(f"training this network on {device} needs about {gb(est.bytes)} ({est.parameters:.3g} "
                          f"parameters, a batch of {est.batch_size}), but the GPU has {gb(free)} free ({gb(total)} in "
                          "all); use a smaller network or batch, or another GPU")


def _check_memory(what: str, est, available: int | None = None) -> int | None:
    """Refuse (one line) a network whose training needs more memory than this machine has available
    (:mod:`prealign.models.memory`; ``available`` as measured before the build). Returns ``available``."""
    from .memory import gb, machine_memory

    if est is None:
        return available
    free, total = machine_memory()
    available = free if available is None else available
    if est.bytes > available:
        batch = f", a batch of {est.batch_size}" if est.activations else ""
        raise ConfigError(f"{what} has {est.parameters:.3g} parameters; training it needs about {gb(est.bytes)} "
                          f"(weights, feedback, gradients, optimizer state{batch}), but this machine has "
                          f"{gb(available)} available ({gb(total)} in all); use a smaller network"
                          f"{' or batch' if est.activations else ''} or a machine with more memory")
    return available


def _check_convertible(name: str, model: nn.Module, rule: str) -> None:
    """A factory's layer that ``rule`` cannot follow, as a config user fixes it (no ``strict=False`` there)."""
    from ..feedback.convert import unconverted_layers

    left = unconverted_layers(model) if rule != "bp" else []
    if left:
        layers = ", ".join(f"{n} ({type(m).__name__})" for n, m in left)
        raise ConfigError(f"model {name!r}: rule {rule!r} cannot convert {layers}: its weights would learn by exact "
                          f"backprop; a run from a config or the command line converts every layer, so replace it in "
                          f"the factory with Linear/Conv*/ConvTranspose*/MultiheadAttention layers (from Python, "
                          f"prealign.convert(model, {rule!r}, strict=False) leaves it on backprop, and rule_of says 'mixed')")


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
