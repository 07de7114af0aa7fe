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
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UnknownNameError
from .feedback import convert
from .init import align
from .pretrain import NoisePretrainResult, pretrain_noise


@dataclass(frozen=True)
class Method:
    """A named recipe that turns an initialised network into a method's starting point."""

    name: str
    rule: str
    description: str
    angle: float | None = None  # degrees; IFA's one-time soft alignment
    noise_samples: int = 0  # RNP's random-noise pretraining samples
    copy: bool = False  # with angle 0: W = B exactly (noise paper B.7)

    @property
    def label(self) -> str:
        """Display name: ``ifa@30`` for IFA at 30°, the plain name otherwise."""
        if self.angle is not None and self.angle != 0:
            return f"{self.name}@{self.angle:g}"
        return self.name

    def with_options(self, *, angle: float | None = None, noise_samples: int | None = None) -> Method:
        """A copy with the angle / noise budget replaced, where this method uses them."""
        changes = {}
        if angle is not None and self.angle is not None:
            changes["angle"] = float(angle)
        if noise_samples is not None and self.noise_samples:
            changes["noise_samples"] = int(noise_samples)
        return dataclasses.replace(self, **changes)

    def prepare(self, model: nn.Module, *, generator: torch.Generator | None = None, noise_batch_size: int = 64,
                noise_lr: float = 1e-4, noise_distribution: str = "gaussian", noise_std: float = 1.0,
                callback=None, progress: bool | None = None) -> NoisePretrainResult | None:
        """Convert ``model`` to this method's rule and apply its initial condition, in place.

        Returns the noise-pretraining record for ``rnp``-like methods, else ``None``.
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


def get_method(name: str) -> Method:
    """Look up a method; ``"ifa@30"`` gives IFA at 30°. Unknown names raise a ``ValueError``
    that lists the valid ones."""
    base, _, angle = str(name).partition("@")
    if base not in METHODS:
        raise UnknownNameError("method", name, METHODS)
    method = METHODS[base]
    if angle:
        if method.angle is None:
            raise UnknownNameError("method", name, [m for m in METHODS if METHODS[m].angle is not None])
        try:
            return method.with_options(angle=float(angle))
        except ValueError:
            raise UnknownNameError("method", name, METHODS) from None
    return method


register_method(Method("bp", "bp", "backpropagation (weight transport)"))
register_method(Method("fa", "fa", "feedback alignment, W and B independent"))
register_method(Method("ifa", "fa", "FA after a one-time soft alignment of W to B", angle=0.0))
register_method(Method("rnp", "fa", "FA after random-noise pretraining", noise_samples=500_000))
register_method(Method("dfa", "dfa", "direct feedback alignment"))
register_method(Method("usf", "usf", "uniform sign-concordant feedback"))
register_method(Method("brsf", "brsf", "batchwise random-magnitude sign-concordant feedback"))
register_method(Method("frsf", "frsf", "fixed random-magnitude sign-concordant feedback"))
register_method(Method("kp", "kp", "Kolen-Pollack: B learns W's updates"))
register_method(Method("wm", "wm", "weight mirror: B learns W from noise-driven activity (Akrout et al. 2019)"))
