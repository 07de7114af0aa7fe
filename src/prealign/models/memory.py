"""How much memory a network needs to train, estimated before it is built (issue 24: bounded inputs).

:func:`prealign.models.build_model` refuses a network that cannot fit instead of growing until the
machine swaps or the kernel kills the process (``compare --hidden 10000000`` asked for ~190 GB).
The factory is run once on PyTorch's ``meta`` device, which allocates nothing, to count the
parameters before anything is allocated; once the network is built, one forward pass of a single
zero sample (eval mode, no gradient) measures the activations. Float32 throughout:

    bytes ≈ 4 · (5 · parameters + weights + 2 · batch · activations per sample)

five copies of every parameter (the values, their gradient, Adam's two moments, the selected
epoch's copy), one feedback matrix ``B`` per weight matrix of a layer the rule converts, and per
sample of a batch the output of every leaf module, kept for the backward pass, and its gradient.
It is compared with the memory available now (Linux ``MemAvailable``; elsewhere the physical
memory). A factory that cannot run on the meta device (it reads tensor values while building) gets
no estimate; its build goes ahead as before.

(A meta forward pass would measure the activations before the build too, but its first call imports
torch's Python decompositions: seconds added to every command that builds a model.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

FLOAT_BYTES = 4
PARAM_COPIES = 5  # values, gradient, two Adam moments, the selected epoch's copy


@dataclass(frozen=True)
class Estimate:
    parameters: int  # every parameter of the plain network
    weights: int  # elements of the weight matrices a rule converts (each gets a feedback matrix B)
    activations: int | None  # leaf-module outputs of one sample (None: the meta forward pass failed)
    batch_size: int

    @property
    def bytes(self) -> int:
        acts = 2 * self.batch_size * (self.activations or 0)
        return FLOAT_BYTES * (PARAM_COPIES * self.parameters + self.weights + acts)


def estimate(factory, input_shape, num_classes: int, options: dict, batch_size: int = 1) -> Estimate | None:
    """The parameters of ``factory(input_shape, num_classes, **options)``, from a build on the meta device
    (nothing allocated, a few milliseconds), as an :class:`Estimate` without activations (add them with
    :func:`with_activations` once the network exists); None when the factory cannot build there."""
    from ..feedback import CONVERTIBLE

    try:
        with torch.device("meta"):
            model = factory(tuple(input_shape), int(num_classes), **options)
    except Exception:  # noqa: BLE001 - a factory that needs real tensors: no estimate, the real build decides
        return None
    if not isinstance(model, nn.Module):
        return None
    params = sum(p.numel() for p in model.parameters())
    weights = sum(m.weight.numel() for m in model.modules()
                  if isinstance(m, CONVERTIBLE) and isinstance(getattr(m, "weight", None), torch.Tensor))
    return Estimate(params, weights, None, int(batch_size))


@torch.no_grad()
def with_activations(est: Estimate | None, model: nn.Module, input_shape) -> tuple[Estimate | None, tuple]:
    """``(est with the activations of one sample, the network's output shape for one sample)`` from one
    forward pass of a zero sample through the plain ``model`` (a factory's, before conversion and
    initialisation) in eval mode: no gradient, no running statistics, no random draw, so nothing the run
    starts from changes (a lazy layer gets its size, as its first batch would give it). A network that
    cannot take the sample raises whatever it raises."""
    total = [0]

    def count(module, inputs, output):
        for t in (output if isinstance(output, (tuple, list)) else (output,)):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    was, threads = model.training, torch.get_num_threads()
    model.eval()
    torch.set_num_threads(1)  # one sample: threads only add their start-up (100x slower on a busy machine)
    try:
        out = model(torch.zeros(1, *input_shape))
    finally:
        torch.set_num_threads(threads)
        model.train(was)
        for h in hooks:
            h.remove()
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if est is not None:
        est = Estimate(est.parameters, est.weights, total[0], est.batch_size)
    return est, shape


def machine_memory() -> tuple[int, int]:
    """``(available, total)`` bytes of this machine's memory (Linux: ``MemAvailable``/``MemTotal``)."""
    try:
        info = dict(line.split(":", 1) for line in open("/proc/meminfo", encoding="ascii"))
        kb = lambda key: int(info[key].split()[0]) * 1024  # noqa: E731
        return kb("MemAvailable"), kb("MemTotal")
    except (OSError, KeyError, ValueError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total, total


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


__all__ = ["Estimate", "estimate", "gb", "machine_memory", "with_activations"]
