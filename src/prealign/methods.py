"""Methods = learning rule + initial condition (+ noise pretraining) (SPEC §2).

=========  =====  ====================================================================
method     rule   before data training
=========  =====  ====================================================================
``bp``     bp     standard init
``fa``     fa     ``W`` and ``B`` drawn independently (≈ 90° apart)
``ifa``    fa     one-time soft alignment of ``W`` to ``B`` at ``angle`` degrees (default 0)
``rnp``    fa     random-noise pretraining (5×10⁵ samples), then data with a fresh optimizer
``dfa``    dfa    standard init
``usf`` …  …      the rule of the same name, standard init
=========  =====  ====================================================================

Names may carry an angle for IFA: ``"ifa@30"`` is IFA at 30°.

Noise warm-up for any method (Cheon & Paik, *Pretraining with Random Noise for Uncertainty
Calibration*, arXiv 2412.17411): a name ending in ``+noise`` (``"bp+noise"``, ``"kp+noise"``,
``"ifa@30+noise"``) is that method with random-noise pretraining under its own rule right before
data training (:data:`DEFAULT_NOISE_SAMPLES` samples unless set), labelled ``bp+noise`` in tables.
The order is fixed: rule conversion, then the one-time IFA alignment, then the noise warm-up, then
data — the warm-up is what the network does immediately before it sees data. FA with noise is RNP
itself, so ``"fa+noise"`` is ``rnp`` (label ``rnp``) and ``"rnp+noise"`` is an error.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError, UnknownNameError
from .feedback import convert
from .init import align
from .pretrain import NoisePretrainResult, pretrain_noise

DEFAULT_NOISE_SAMPLES = 500_000  # the noise paper's budget (A.1), also the warm-up's default
WARMUP = "+noise"  # method-name suffix asking for noise warm-up
NOISE_VERSION = {"fa": "rnp"}  # methods whose noise-pretrained version is a registered method of its own


@dataclass(frozen=True)
class Method:
    """A named recipe that turns an initialised network into a method's starting point."""

    name: str
    rule: str
    description: str
    angle: float | None = None  # degrees; IFA's one-time soft alignment
    noise_samples: int = 0  # random-noise pretraining samples before data (RNP; any method's warm-up)
    copy: bool = False  # with angle 0: W = B exactly (noise paper B.7)

    @property
    def label(self) -> str:
        """Display name: ``ifa@30`` for IFA at 30°, ``bp+noise`` for a method that pretrains on
        noise only as a warm-up (not ``rnp``, whose noise is part of the method), else the name."""
        label = self.name
        if self.angle is not None and self.angle != 0:
            label = f"{self.name}@{self.angle:g}"
        if self.warmup:
            label += WARMUP
        return label

    @property
    def warmup(self) -> bool:
        """True when this method pretrains on noise although its registered recipe does not."""
        return bool(self.noise_samples) and not METHODS[self.name].noise_samples

    def with_options(self, *, angle: float | None = None, noise_samples: int | None = None) -> Method:
        """A copy with the angle and/or noise budget replaced (``None``: keep). A noise budget applies
        to every method (``> 0`` on a method without noise = noise warm-up); an angle only to methods
        with an alignment angle (IFA) — elsewhere it is a ConfigError, never dropped."""
        changes = {}
        if angle is not None:
            if self.angle is None:
                raise ConfigError(f"an alignment angle applies only to methods with one (ifa); method is {self.name!r}")
            changes["angle"] = float(angle)
        if noise_samples is not None:
            if int(noise_samples) < 0:
                raise ConfigError(f"noise_samples must be >= 0, got {noise_samples}")
            changes["noise_samples"] = int(noise_samples)
            if noise_samples and self.name in NOISE_VERSION:  # FA with noise is RNP, also by name
                return dataclasses.replace(METHODS[NOISE_VERSION[self.name]], **changes)
        return dataclasses.replace(self, **changes)

    def prepare(self, model: nn.Module, *, generator: torch.Generator | None = None, noise_batch_size: int = 64,
                noise_lr: float = 1e-4, noise_distribution: str = "gaussian", noise_std: float = 1.0,
                callback=None, progress: bool | None = None) -> NoisePretrainResult | None:
        """Convert ``model`` to this method's rule and apply its initial condition, in place.

        Order: rule conversion, IFA alignment (if any), noise pretraining / warm-up (if
        ``noise_samples``). Returns the noise-pretraining record when there was noise, else ``None``.
        """
        convert(model, self.rule, generator=generator)
        if self.angle is not None:
            align(model, self.angle, generator=generator, copy=self.copy)
        if self.noise_samples:
            return pretrain_noise(model, self.noise_samples, batch_size=noise_batch_size, lr=noise_lr,
                                  distribution=noise_distribution, std=noise_std, generator=generator,
                                  callback=callback, progress=progress)
        return None


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def parse_method_name(name: str) -> tuple[str, float | None, bool]:
    """``"ifa@30+noise"`` → ``("ifa", 30.0, True)``: base name, angle in degrees (None: not given)
    and whether noise warm-up is asked for. Raises UnknownNameError for an unknown base or a bad angle."""
    text = str(name)
    warm = text.endswith(WARMUP)
    base, at, angle = text.removesuffix(WARMUP).partition("@")
    if base not in METHODS:
        raise UnknownNameError("method", name, METHODS)
    if not at:
        return base, None, warm
    if METHODS[base].angle is None:
        raise UnknownNameError("method", name, [m for m in METHODS if METHODS[m].angle is not None])
    try:
        return base, float(angle), warm
    except ValueError:
        raise UnknownNameError("method", name, METHODS) from None


def get_method(name: str) -> Method:
    """Look up a method; ``"ifa@30"`` gives IFA at 30°, ``"bp+noise"`` backprop with noise warm-up
    (:data:`DEFAULT_NOISE_SAMPLES`), ``"fa+noise"`` is ``rnp``. Unknown names raise a ``ValueError``
    that lists the valid ones; ``"rnp+noise"`` a ConfigError (rnp already pretrains on noise)."""
    base, angle, warm = parse_method_name(name)
    method = METHODS[base]
    if warm and method.noise_samples:
        raise ConfigError(f"method {name!r}: {base} already pretrains on noise; use {base!r}")
    return method.with_options(angle=angle, noise_samples=DEFAULT_NOISE_SAMPLES if warm else None)


register_method(Method("bp", "bp", "backpropagation (weight transport)"))
register_method(Method("fa", "fa", "feedback alignment, W and B independent"))
register_method(Method("ifa", "fa", "FA after a one-time soft alignment of W to B", angle=0.0))
register_method(Method("rnp", "fa", "FA after random-noise pretraining", noise_samples=DEFAULT_NOISE_SAMPLES))
register_method(Method("dfa", "dfa", "direct feedback alignment"))
register_method(Method("usf", "usf", "uniform sign-concordant feedback"))
register_method(Method("brsf", "brsf", "batchwise random-magnitude sign-concordant feedback"))
register_method(Method("frsf", "frsf", "fixed random-magnitude sign-concordant feedback"))
register_method(Method("kp", "kp", "Kolen-Pollack: B learns W's updates"))
register_method(Method("wm", "wm", "weight mirror: B learns W from noise-driven activity (Akrout et al. 2019)"))
