"""What :func:`prealign.train` measures at the end of every epoch, without changing what it measures.

:func:`evaluate` (loss and accuracy in no-grad batches), :func:`gradient_alignment` (the angle
between the error a rule delivers and the true backprop error, SPEC §5), :func:`measure_epoch`
(one epoch's record: losses, accuracies, alignment angles in degrees, callbacks) and
:func:`measurement_guard`, under which every measurement runs: RNGs, modes, BatchNorm statistics
and ``.grad`` are restored on exit. Used by :func:`prealign.train` and by
:func:`prealign.run.batched.train_runs`, so both record exactly the same.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..feedback import exact_gradients, feedback_layers
from ..feedback.rng import rules_rng_state, set_rules_rng_state
from ..init import alignment_angles
from ..seeding import cuda_devices

GRAD_BATCH = 256  # size of the fixed batch used for gradient alignment


def _batch_sums(out: torch.Tensor, yb: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(summed loss (float64), correct count or None)`` of one batch: cross-entropy summed as the papers'
    (``loss_fn`` None), else ``loss_fn(out, yb) · len(yb)`` (``loss_fn`` returns the batch mean);
    accuracy only where ``yb`` are class indices ``(N,)`` of ``out``'s ``(N, C)`` scores."""
    if loss_fn is None:
        loss = F.cross_entropy(out.float(), yb, reduction="sum").double()
    else:
        loss = loss_fn(out, yb).detach().double() * len(yb)
    classes = yb.dim() == 1 and not yb.is_floating_point() and out.dim() == 2
    return loss, (out.argmax(1) == yb).sum() if classes else None


@torch.no_grad()
def evaluate(model: nn.Module, x, y: torch.Tensor | None = None, batch_size: int = 4096,
             loss_fn=None) -> tuple[float, float]:
    """``(mean loss, accuracy fraction)`` of ``model`` on ``(x, y)`` tensors in no-grad batches of
    ``batch_size``, or on ``x`` an iterable of ``(x, y)`` batches (``y`` None; see :func:`prealign.train`).
    The loss is cross-entropy (``loss_fn`` None) or ``loss_fn(output, target)`` (a batch mean);
    the accuracy is NaN where the targets are not class indices."""
    was = model.training
    model.eval()
    batches = ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)) if y is not None else x
    loss, correct, n, classes = None, None, 0, True
    for xb, yb in batches:
        batch_loss, batch_correct = _batch_sums(model(xb), yb, loss_fn)
        loss = batch_loss if loss is None else loss + batch_loss
        classes = classes and batch_correct is not None
        if classes:
            correct = batch_correct if correct is None else correct + batch_correct
        n += len(yb)
    model.train(was)
    n = max(n, 1)
    return (0.0 if loss is None else float(loss) / n), (int(correct if correct is not None else 0) / n if classes else float("nan"))


def _flat_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle in degrees between two tensors flattened (float64); NaN if either is zero/non-finite."""
    a, b = a.double().flatten(), b.double().flatten()
    na, nb = a.norm(), b.norm()
    if not (torch.isfinite(na) and torch.isfinite(nb)) or na == 0 or nb == 0:
        return float("nan")
    cos = (a @ b / (na * nb)).clamp(-1.0, 1.0)
    return math.degrees(math.acos(float(cos)))


@contextmanager
def measurement_guard(model: nn.Module):
    """Within the block, measure ``model`` freely: on exit the global RNGs (CPU and every
    initialised CUDA device), the rules' own streams (:func:`prealign.seed_rules`: a brsf layer
    draws its magnitudes at every forward with gradients, e.g. in :func:`gradient_alignment`),
    every module's train/eval mode, the running statistics of its normalisation layers (BatchNorm
    ``running_mean``/``running_var``/``num_batches_tracked``) and every parameter's ``.grad`` are as
    they were on entry, also when the body raises. So a measurement never changes the training it
    measures (weights and feedback are not restored: a measurement must not write them)."""
    modes = [(m, m.training) for m in model.modules()]
    streams = rules_rng_state(model)
    norms = [(m, {k: b.detach().clone() for k, b in m.named_buffers(recurse=False) if b is not None})
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    grads = [(p, p.grad) for p in model.parameters()]
    with torch.random.fork_rng(devices=cuda_devices()):
        try:
            yield model
        finally:
            for m, was in modes:
                m.training = was
            with torch.no_grad():
                for m, saved in norms:
                    for k, b in saved.items():
                        getattr(m, k).copy_(b)
            for p, g in grads:
                p.grad = g
            if streams:
                set_rules_rng_state(model, streams)


def gradient_alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=None) -> dict[str, float]:
    """``{layer: degrees}`` for every feedback layer but the last (the output layer, whose error
    is the loss gradient under any rule): the angle between the error the model's rule delivers
    to the layer's output ``∂L/∂y_l`` and the true backprop error (under
    :func:`prealign.exact_gradients`), on the batch ``(x, y)``, whole batch flattened.

    The loss is cross-entropy, or ``loss_fn(output, y)``. Both passes run in training mode from the same RNG state, so they see the same dropout masks
    (and the same batch statistics in BatchNorm): under ``bp`` the angle is 0. Runs inside
    :func:`measurement_guard`: parameters, ``.grad``, BatchNorm running statistics, modes and the
    global RNGs are left as they were.
    """
    layers = feedback_layers(model)[:-1]
    if not layers:
        return {}
    params = list(model.parameters())

    def errors() -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        handles = []

        def make_hook(name):
            def fwd(_module, _inputs, output):
                if output.requires_grad:
                    output.register_hook(lambda g: captured.__setitem__(name, g.detach().clone()))
            return fwd

        for name, layer in layers:
            handles.append(layer.register_forward_hook(make_hook(name)))
        try:
            for p in params:
                p.grad = None
            with torch.enable_grad(), torch.random.fork_rng(devices=cuda_devices()):  # same masks for both passes
                loss = (loss_fn or F.cross_entropy)(model(x), y)
                loss.backward()
        finally:
            for h in handles:
                h.remove()
        return captured

    with measurement_guard(model):
        model.train()
        delivered = errors()
        with exact_gradients(model):
            true = errors()
    return {name: _flat_angle(delivered[name], true[name]) if name in delivered and name in true else float("nan")
            for name, _ in layers}


def gradient_batch(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed batch gradient alignment is measured on: :data:`GRAD_BATCH` training samples drawn
    from a stream of its own (``seed + 7919``), so drawing it never moves the batch-order generator."""
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed) + 7919))[:GRAD_BATCH].to(x.device)
    return x[idx], y[idx]


def measure_epoch(model: nn.Module, record: dict, *, train, val, test, grad_batch=None, callbacks=(), data=None,
                  eval_batch_size: int = 4096, loss_fn=None) -> dict:
    """The end-of-epoch measurements of one run, added to ``record`` (the per-epoch record of
    :func:`prealign.train`, in its key order), all under :func:`measurement_guard`: at epoch 0 the training
    loss/accuracy (one no-grad pass over ``train = (x, y)``), the validation (``val``, or None) and
    test loss/accuracy (each an ``(x, y)`` pair of tensors or an iterable of batches; loss ``loss_fn``
    as in :func:`evaluate`), the angles of :func:`prealign.alignment_angles`, gradient alignment on
    ``grad_batch = (x, y)`` (None: not measured), then each ``callbacks`` entry
    ``fn(epoch, model, data, record)``; ``eval_seconds`` last. Used by :func:`prealign.train` and by
    :func:`prealign.run.batched.train_runs`, so both record exactly the same."""
    t = time.perf_counter()
    with measurement_guard(model):
        def ev(split):
            return evaluate(model, *(split if isinstance(split, tuple) else (split, None)), eval_batch_size, loss_fn)

        if record["epoch"] == 0:
            record["train_loss"], record["train_acc"] = ev(train)
        if val is not None:
            record["val_loss"], record["val_acc"] = ev(val)
        record["test_loss"], record["test_acc"] = ev(test)
        for name, deg in alignment_angles(model).items():
            record[f"angle/{name}"] = deg
        if grad_batch is not None:
            for name, deg in gradient_alignment(model, *grad_batch, loss_fn=loss_fn).items():
                record[f"grad_angle/{name}"] = deg
        for fn in callbacks:
            fn(record["epoch"], model, data, record)
    record["eval_seconds"] = time.perf_counter() - t
    return record


__all__ = ["GRAD_BATCH", "evaluate", "gradient_alignment", "gradient_batch", "measure_epoch",
           "measurement_guard"]
