"""Random-noise pretraining (noise paper A.1, B.8; SPEC §3).

Before any data, the network learns under its own rule (FA) from pure noise: every step draws
a fresh batch ``x ~ N(0, σ² I)`` (or uniform) with labels drawn uniformly from the classes, so
no sample is ever reused. This aligns ``W`` to ``B`` on its own.

Every draw comes from one seed (:func:`noise_seed`, drawn from the ``generator`` given): the noise
and its labels, the rules' per-step draws (:func:`prealign.seed_rules`), and dropout or any other
module randomness (torch's global RNG, set to a stream of that seed for the call and given back
as it was: :func:`prealign.seeding.global_stream`).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .feedback import CONVERTIBLE
from .feedback.rng import seed_rules
from .progress import progress_bar
from .seeding import global_stream, stream_seed

DISTRIBUTIONS = ("gaussian", "uniform")


@dataclass
class NoisePretrainResult:
    samples: int
    steps: int
    seconds: float
    final_loss: float


def infer_io(model: nn.Module, input_shape: tuple[int, ...] | None = None,
             num_classes: int | None = None) -> tuple[tuple[int, ...], int]:
    """``(input shape without batch, number of classes)``: those given, else the model's
    ``input_shape``/``num_classes`` attributes (models built here), else a plain MLP's first/last Linear."""
    input_shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    num_classes = num_classes if num_classes is not None else getattr(model, "num_classes", None)
    layers = [m for m in model.modules() if isinstance(m, CONVERTIBLE)]
    if input_shape is None and layers and isinstance(layers[0], nn.Linear):
        input_shape = (layers[0].in_features,)
    if num_classes is None and layers and isinstance(layers[-1], nn.Linear):
        num_classes = layers[-1].out_features
    if input_shape is None or num_classes is None:
        raise ConfigError("cannot tell this model's input shape / class count; pass input_shape= and num_classes= "
                          "(or set model.input_shape and model.num_classes)")
    return tuple(input_shape), int(num_classes)


def check_noise_options(distribution: str, samples: int, batch_size: int) -> None:
    """Reject an unknown noise distribution or a negative sample count / non-positive batch size."""
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"unknown noise distribution {distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
    if samples < 0 or batch_size <= 0:
        raise ConfigError(f"noise samples must be >= 0 and batch size > 0 (got {samples}, {batch_size})")


def noise_seed(generator: torch.Generator | None) -> int:
    """The seed of a noise pretraining: one draw from ``generator`` (``None``: the global RNG)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def noise_stream(generator: torch.Generator | None, device) -> torch.Generator:
    """The generator the noise is drawn from: seeded with :func:`noise_seed` of ``generator``."""
    return torch.Generator(device=device).manual_seed(noise_seed(generator))


def noise_batch(n: int, shape, classes: int, gen: torch.Generator, device, dtype=torch.float32,
                distribution: str = "gaussian", std: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noise inputs ``(n, *shape)`` then their labels ``(n,)``, uniform over ``classes``, drawn from ``gen``."""
    if distribution == "gaussian":
        x = torch.randn((n, *shape), generator=gen, device=device, dtype=dtype).mul_(std)
    else:
        x = torch.rand((n, *shape), generator=gen, device=device, dtype=dtype).sub_(0.5).mul_(2 * math.sqrt(3) * std)
    return x, torch.randint(0, classes, (n,), generator=gen, device=device)


def pretrain_noise(model: nn.Module, samples: int = 500_000, batch_size: int = 64, lr: float = 1e-4,
                   distribution: str = "gaussian", std: float = 1.0, generator: torch.Generator | None = None,
                   callback: Callable[[int, int, nn.Module], None] | None = None, callback_every: int = 100,
                   input_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
                   progress: bool | None = None) -> NoisePretrainResult:
    """Train ``model`` (under its current rule) on ``samples`` fresh noise inputs with a fresh Adam.

    ``distribution="gaussian"``: ``x ~ N(0, std²)``; ``"uniform"``: ``x ~ U(-std·√3, std·√3)``
    (same variance). Labels are uniform over the classes. ``callback(step, samples_seen, model)``
    runs every ``callback_every`` steps and after the last (e.g. to track alignment angles).
    ``input_shape`` (one sample, without the batch) and ``num_classes`` are needed only where the
    model cannot tell them (:func:`infer_io`), e.g. a user CNN. Deterministic for a given
    ``generator`` on a given device, whatever the global RNG holds: the noise, the rules' per-step
    draws (brsf, wm: :func:`prealign.seed_rules`, left seeded afterwards; :func:`prealign.train`
    re-seeds them from its own ``seed``) and dropout all come from one draw of ``generator``
    (module docstring), and the global RNG is as it was when the call returns (``generator=None``:
    that one seed is drawn from the global RNG, its only use of it).
    """
    check_noise_options(distribution, samples, batch_size)
    shape, classes = infer_io(model, input_shape, num_classes)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    seed = noise_seed(generator)
    gen = torch.Generator(device=device).manual_seed(seed)  # the noise: noise_stream(generator, device)
    seed_rules(model, stream_seed(seed, "noise rules"))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = math.ceil(samples / batch_size)
    was_training = model.training
    model.train()
    start, seen, loss = time.perf_counter(), 0, torch.tensor(float("nan"))
    with global_stream(stream_seed(seed, "noise modules"), device), \
            progress_bar(steps, "noise pretraining", enabled=progress) as bar:
        for step in range(1, steps + 1):
            n = min(batch_size, samples - seen)
            x, y = noise_batch(n, shape, classes, gen, device, dtype, distribution, std)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += n
            if callback is not None and (step % callback_every == 0 or step == steps):
                callback(step, seen, model)
            if step % 50 == 0 or step == steps:
                bar.advance(50 if step % 50 == 0 else step % 50, loss=loss.item())
    model.train(was_training)
    return NoisePretrainResult(samples=seen, steps=steps, seconds=time.perf_counter() - start, final_loss=loss.item())
