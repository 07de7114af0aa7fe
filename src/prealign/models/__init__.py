"""The papers' models, built from feedback layers (SPEC §6).

Every builder returns an ``nn.Module`` with ``input_shape`` (C, H, W) and ``num_classes``
attributes, layers initialised by :func:`prealign.init_weights` (He, α = 2) from ``generator``,
and every Linear/Conv2d under ``rule``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError, UnknownNameError
from ..feedback import FeedbackConv2d, FeedbackLinear, convert, get_rule
from ..init import init_weights

ACTIVATIONS = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "linear": nn.Identity,
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UnknownNameError("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def _finish(model: nn.Module, input_shape, num_classes, generator, alpha_w=2.0, alpha_b=2.0) -> nn.Module:
    rules = {m.rule for m in model.modules() if hasattr(m, "rule")}
    convert(model, rules.pop())  # installs model-level machinery (the DFA output-error hook)
    model.input_shape = tuple(input_shape)
    model.num_classes = int(num_classes)
    return init_weights(model, alpha_w, alpha_b, generator=generator)


def mlp(dims: Sequence[int], rule: str = "fa", activation: str = "relu", *, input_shape: Sequence[int] | None = None,
        bias: bool = True, generator: torch.Generator | None = None, alpha_w: float = 2.0, alpha_b: float = 2.0) -> nn.Sequential:
    """Fully connected network ``dims[0] → … → dims[-1]`` (e.g. ``[784, 100, 10]``).

    Inputs of any shape with ``dims[0]`` elements per sample are flattened first, so an
    ``(N, 1, 28, 28)`` batch feeds ``[784, …]`` directly.
    """
    dims = [int(d) for d in dims]
    if len(dims) < 2 or min(dims) < 1:
        raise ValueError(f"mlp needs at least input and output sizes, all positive; got {dims}")
    get_rule(rule)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(FeedbackLinear(n_in, n_out, bias=bias, rule=rule))
        if i < len(dims) - 2:
            layers.append(_activation(activation))
    model = nn.Sequential(*layers)
    return _finish(model, input_shape or (dims[0],), dims[-1], generator, alpha_w, alpha_b)


def _conv_out(size: int, k: int, s: int = 1, p: int = 0) -> int:
    return (size + 2 * p - k) // s + 1


def lenet(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, rule: str = "fa", activation: str = "relu", *,
          generator: torch.Generator | None = None, alpha_w: float = 2.0, alpha_b: float = 2.0) -> nn.Sequential:
    """LeNet variant (IFA paper Fig. S3a): 2 conv (6, 16 filters of 5×5, max-pool 2) + 3 FC (120, 84, classes)."""
    c, h, w = input_shape
    get_rule(rule)
    h1, w1 = _conv_out(h, 5, 1, 2) // 2, _conv_out(w, 5, 1, 2) // 2
    h2, w2 = _conv_out(h1, 5) // 2, _conv_out(w1, 5) // 2
    if min(h2, w2) < 1:
        raise ConfigError(f"lenet needs inputs of at least 12×12 pixels, got {tuple(input_shape)}; use model mlp for this data")
    act = lambda: _activation(activation)  # noqa: E731
    model = nn.Sequential(
        FeedbackConv2d(c, 6, 5, padding=2, rule=rule), act(), nn.MaxPool2d(2),
        FeedbackConv2d(6, 16, 5, rule=rule), act(), nn.MaxPool2d(2), nn.Flatten(),
        FeedbackLinear(16 * h2 * w2, 120, rule=rule), act(),
        FeedbackLinear(120, 84, rule=rule), act(),
        FeedbackLinear(84, num_classes, rule=rule),
    )
    return _finish(model, input_shape, num_classes, generator, alpha_w, alpha_b)


def alexnet(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, rule: str = "fa", activation: str = "relu", *,
            width: int = 64, hidden: int = 512, generator: torch.Generator | None = None,
            alpha_w: float = 2.0, alpha_b: float = 2.0) -> nn.Sequential:
    """AlexNet variant for small images (IFA paper Fig. S3e): 5 conv (3×3) + 3 FC.

    Channels ``width·(1, 3, 6, 4, 4)`` (64 → 64-192-384-256-256, as in the CIFAR AlexNet), max-pool
    after conv 1, 2 and 5, then FC ``hidden → hidden → classes``.
    """
    c, h, w = input_shape
    get_rule(rule)
    ch = [width, 3 * width, 6 * width, 4 * width, 4 * width]
    if min(h, w) < 8:
        raise ConfigError(f"alexnet needs inputs of at least 8×8 pixels, got {tuple(input_shape)}; use model mlp for this data")
    act = lambda: _activation(activation)  # noqa: E731
    model = nn.Sequential(
        FeedbackConv2d(c, ch[0], 3, padding=1, rule=rule), act(), nn.MaxPool2d(2),
        FeedbackConv2d(ch[0], ch[1], 3, padding=1, rule=rule), act(), nn.MaxPool2d(2),
        FeedbackConv2d(ch[1], ch[2], 3, padding=1, rule=rule), act(),
        FeedbackConv2d(ch[2], ch[3], 3, padding=1, rule=rule), act(),
        FeedbackConv2d(ch[3], ch[4], 3, padding=1, rule=rule), act(), nn.MaxPool2d(2), nn.Flatten(),
        FeedbackLinear(ch[4] * (h // 8) * (w // 8), hidden, rule=rule), act(),
        FeedbackLinear(hidden, hidden, rule=rule), act(),
        FeedbackLinear(hidden, num_classes, rule=rule),
    )
    return _finish(model, input_shape, num_classes, generator, alpha_w, alpha_b)


MODELS = {"mlp": mlp, "lenet": lenet, "alexnet": alexnet}


def build_model(name: str, input_shape: Sequence[int], num_classes: int, *, hidden: Sequence[int] = (100,),
                rule: str = "fa", activation: str = "relu", generator: torch.Generator | None = None,
                alpha_w: float = 2.0, alpha_b: float = 2.0) -> nn.Module:
    """Build a registered model for data of ``input_shape`` (C, H, W) and ``num_classes``.

    For ``mlp``, ``hidden`` gives the hidden widths: ``mlp`` on MNIST with ``hidden=(100,)`` is
    784-100-10.
    """
    if name not in MODELS:
        raise UnknownNameError("model", name, MODELS)
    kw = dict(rule=rule, activation=activation, generator=generator, alpha_w=alpha_w, alpha_b=alpha_b)
    if name == "mlp":
        n_in = 1
        for d in input_shape:
            n_in *= int(d)
        return mlp([n_in, *hidden, num_classes], input_shape=input_shape, **kw)
    return MODELS[name](input_shape, num_classes, **kw)
