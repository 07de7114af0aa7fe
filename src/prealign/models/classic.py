"""The IFA papers' models (SPEC §6): an MLP, the LeNet variant and the AlexNet variant.

Each has a plain factory in the registry (``mlp``, ``lenet``, ``alexnet``; contract in
:mod:`prealign.models.registry`) and a builder (:func:`mlp`, :func:`lenet`, :func:`alexnet`) that
returns the network converted to ``rule`` and initialised by :func:`prealign.init_weights`
(He, α = 2) from ``generator``, with ``input_shape`` (C, H, W) and ``num_classes`` attributes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .registry import activation as _activation
from .registry import finish, register_model


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _mlp_layers(dims: Sequence[int], activation: str = "relu", bias: bool = True) -> nn.Sequential:
    dims = [int(d) for d in dims]
    if len(dims) < 2 or min(dims) < 1:
        raise ValueError(f"mlp needs at least input and output sizes, all positive; got {dims}")
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(n_in, n_out, bias=bias))
        if i < len(dims) - 2:
            layers.append(_activation(activation))
    return nn.Sequential(*layers)


@register_model("mlp")
def mlp_factory(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (100,),
                activation: str = "relu") -> nn.Sequential:
    """Plain fully connected network ``numel(input_shape) → *hidden → num_classes``."""
    return _mlp_layers([_numel(input_shape), *hidden, num_classes], activation)


def _conv_out(size: int, k: int, s: int = 1, p: int = 0) -> int:
    return (size + 2 * p - k) // s + 1


@register_model("lenet")
def lenet_factory(input_shape: Sequence[int], num_classes: int, activation: str = "relu") -> nn.Sequential:
    """Plain LeNet variant (IFA paper Fig. S3a): 2 conv (6, 16 filters of 5×5, max-pool 2) + 3 FC (120, 84, classes)."""
    c, h, w = input_shape
    h1, w1 = _conv_out(h, 5, 1, 2) // 2, _conv_out(w, 5, 1, 2) // 2
    h2, w2 = _conv_out(h1, 5) // 2, _conv_out(w1, 5) // 2
    if min(h2, w2) < 1:
        raise ConfigError(f"lenet needs inputs of at least 12×12 pixels, got {tuple(input_shape)}; use model mlp for this data")
    act = lambda: _activation(activation)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2), act(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), act(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * h2 * w2, 120), act(),
        nn.Linear(120, 84), act(),
        nn.Linear(84, num_classes),
    )


def _alexnet_layers(input_shape, num_classes, activation="relu", width=64, hidden=512) -> nn.Sequential:
    c, h, w = input_shape
    ch = [width, 3 * width, 6 * width, 4 * width, 4 * width]
    if min(h, w) < 8:
        raise ConfigError(f"alexnet needs inputs of at least 8×8 pixels, got {tuple(input_shape)}; use model mlp for this data")
    act = lambda: _activation(activation)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(c, ch[0], 3, padding=1), act(), nn.MaxPool2d(2),
        nn.Conv2d(ch[0], ch[1], 3, padding=1), act(), nn.MaxPool2d(2),
        nn.Conv2d(ch[1], ch[2], 3, padding=1), act(),
        nn.Conv2d(ch[2], ch[3], 3, padding=1), act(),
        nn.Conv2d(ch[3], ch[4], 3, padding=1), act(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(ch[4] * (h // 8) * (w // 8), hidden), act(),
        nn.Linear(hidden, hidden), act(),
        nn.Linear(hidden, num_classes),
    )


@register_model("alexnet")
def alexnet_factory(input_shape: Sequence[int], num_classes: int, activation: str = "relu") -> nn.Sequential:
    """Plain AlexNet variant for small images (IFA paper Fig. S3e), default width 64 and FC width 512."""
    return _alexnet_layers(input_shape, num_classes, activation)


def mlp(dims: Sequence[int], rule: str = "fa", activation: str = "relu", *, input_shape: Sequence[int] | None = None,
        bias: bool = True, generator: torch.Generator | None = None, alpha_w: float = 2.0, alpha_b: float = 2.0) -> nn.Sequential:
    """Fully connected network ``dims[0] → … → dims[-1]`` (e.g. ``[784, 100, 10]``) under ``rule``.

    Inputs of any shape with ``dims[0]`` elements per sample are flattened first, so an
    ``(N, 1, 28, 28)`` batch feeds ``[784, …]`` directly.
    """
    model = _mlp_layers(dims, activation, bias)
    return finish(model, input_shape or (int(dims[0]),), int(dims[-1]), rule=rule, generator=generator,
                  alpha_w=alpha_w, alpha_b=alpha_b)


def lenet(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, rule: str = "fa", activation: str = "relu", *,
          generator: torch.Generator | None = None, alpha_w: float = 2.0, alpha_b: float = 2.0) -> nn.Sequential:
    """LeNet variant (IFA paper Fig. S3a) under ``rule``: 2 conv (6, 16 filters of 5×5, max-pool 2) + 3 FC (120, 84, classes)."""
    return finish(lenet_factory(input_shape, num_classes, activation), input_shape, num_classes, rule=rule,
                  generator=generator, alpha_w=alpha_w, alpha_b=alpha_b)


def alexnet(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, rule: str = "fa", activation: str = "relu", *,
            width: int = 64, hidden: int = 512, generator: torch.Generator | None = None,
            alpha_w: float = 2.0, alpha_b: float = 2.0) -> nn.Sequential:
    """AlexNet variant for small images (IFA paper Fig. S3e) under ``rule``: 5 conv (3×3) + 3 FC.

    Channels ``width·(1, 3, 6, 4, 4)`` (64 → 64-192-384-256-256, as in the CIFAR AlexNet), max-pool
    after conv 1, 2 and 5, then FC ``hidden → hidden → classes``.
    """
    return finish(_alexnet_layers(input_shape, num_classes, activation, width, hidden), input_shape, num_classes,
                  rule=rule, generator=generator, alpha_w=alpha_w, alpha_b=alpha_b)
