"""The optimizer and LR scheduler :func:`prealign.train` steps: by name, or the user's own.

:func:`make_optimizer` builds ``adam``/``adamw``/``sgd`` (fused kernels where possible; the batched
trainer and the benchmarks use the same); :func:`resolve_optimizer` and :func:`resolve_scheduler`
accept an object or a factory and check it drives this model's parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")


def make_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    params = list(params)
    # the fused kernels update every tensor in one pass (on CPU ~6x faster than the per-tensor default)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None)
    raise ConfigError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")


def resolve_optimizer(optimizer, model: nn.Module, lr, weight_decay, momentum) -> tuple[torch.optim.Optimizer, str]:
    """``(the optimizer, what the checkpoint records of it)`` for a name, an object or a factory."""
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
        return make_optimizer(optimizer, model.parameters(), 1e-4 if lr is None else lr,
                               weight_decay or 0.0, momentum or 0.0), optimizer
    given = [k for k, v in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum)) if v is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to a named optimizer ({', '.join(OPTIMIZERS)}); "
                          "with an optimizer object or factory set them in the optimizer itself")
    opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
    if opt is None and callable(optimizer):
        opt = optimizer(model.parameters())
        if not isinstance(opt, torch.optim.Optimizer):
            raise ConfigError(f"the optimizer factory returned a {type(opt).__name__}, not a torch.optim.Optimizer")
    if opt is None:
        raise ConfigError(f"optimizer must be a name ({', '.join(OPTIMIZERS)}), a torch.optim.Optimizer or a factory "
                          f"params -> Optimizer; got a {type(optimizer).__name__}")
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    if not any(id(p) in held for p in model.parameters()):
        raise ConfigError("the optimizer holds none of the model's parameters; build it from model.parameters()")
    defaults = ", ".join(f"{k}={v!r}" for k, v in sorted(opt.defaults.items()) if isinstance(v, (int, float, str, tuple)))
    return opt, f"{type(opt).__module__}.{type(opt).__qualname__}({defaults})"


def resolve_scheduler(scheduler, opt: torch.optim.Optimizer):
    """The LR scheduler (an object bound to ``opt`` or a factory ``optimizer -> scheduler``), or None."""
    if scheduler is None:
        return None
    sched = scheduler if hasattr(scheduler, "step") and hasattr(scheduler, "state_dict") else None
    if sched is None and callable(scheduler):
        sched = scheduler(opt)
    if sched is None or not (hasattr(sched, "step") and hasattr(sched, "state_dict")):
        raise ConfigError(f"scheduler must be an LR scheduler (with step() and state_dict()) or a factory "
                          f"optimizer -> scheduler; got a {type(sched if sched is not None else scheduler).__name__}")
    if getattr(sched, "optimizer", opt) is not opt:
        raise ConfigError("the scheduler drives another optimizer than the one train() uses; build it from that optimizer "
                          "(or pass a factory: scheduler=lambda opt: ...)")
    return sched


def name_of(fn) -> str:
    return f"{getattr(fn, '__module__', None) or type(fn).__module__}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


__all__ = ["OPTIMIZERS", "make_optimizer", "name_of", "resolve_optimizer", "resolve_scheduler"]
