"""``train()``: the fast, deterministic training loop (SPEC §4).

Airbench-style: the whole data set lives as tensors on the device, moved once; every epoch's
batches are slices of a seeded ``torch.randperm``; evaluation runs in large no-grad batches;
there is no DataLoader and no per-step host sync (loss and correct counts accumulate as device
tensors and are read once per epoch), so the training step costs what the rule costs.

Per-epoch record (``TrainResult.curves[i]``, epoch 0 = before any data training):

=====================  ===========================================================================
``epoch``              0, 1, 2, ...
``train_loss/_acc``    epochs >= 1: running mean over that epoch's mini-batches (the model changes
                       while it is measured, as in most training logs; cheaper than a second pass);
                       epoch 0: one no-grad pass over the whole training set
``test_loss/_acc``     no-grad pass over the whole test set at the end of the epoch
``angle/<layer>``      alignment angle between W and B per feedback layer whose rule reads B (fa, kp),
                       degrees (IFA paper B.4, mean over output neurons; :func:`prealign.alignment_angles`)
``grad_angle/<layer>`` gradient alignment per hidden layer, degrees: the angle between the error the
                       rule delivers to the layer's output and the true backprop error, on one fixed
                       training batch (whole batch flattened; SPEC §5, beyond the papers)
``seconds``            wall time of the epoch's training steps; ``eval_seconds`` the measurements
=====================  ===========================================================================

Accuracies are fractions in [0, 1]. A NaN/inf loss stops training: the run is marked diverged,
that epoch is recorded, the curves are kept, nothing is raised (IFA paper A.2.2).
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .device import resolve_device
from .errors import ConfigError
from .feedback import exact_gradients, feedback_layers, set_kp_decay
from .init import alignment_angles
from .progress import progress_bar

OPTIMIZERS = ("adam", "adamw", "sgd")
GRAD_BATCH = 256  # size of the fixed batch used for gradient alignment


@dataclass
class TensorData:
    """A minimal in-memory data set: ``x`` float (N, ...) and ``y`` int64 (N,) for train and test.

    :func:`prealign.data.load` returns a richer object with the same attributes; anything with
    ``x_train, y_train, x_test, y_test`` works with :func:`train`.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int = 10
    name: str = "tensors"
    x_val: torch.Tensor | None = None  # optional validation set (prealign.data.holdout_validation)
    y_val: torch.Tensor | None = None

    def to(self, device) -> TensorData:
        from .data.base import TENSOR_FIELDS
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in TENSOR_FIELDS if getattr(self, k) is not None})


@dataclass
class TrainResult:
    """What :func:`train` returns. Accuracies are fractions; times in seconds."""

    curves: list[dict[str, float]] = field(default_factory=list)
    best_test_acc: float = float("nan")
    best_epoch: int = 0
    diverged: bool = False
    diverged_epoch: int | None = None
    stopped_early: bool = False  # patience ran out
    epochs_run: int = 0
    seconds: float = 0.0  # wall time of train(), measurements included
    train_seconds: float = 0.0  # training steps only (sum of per-epoch "seconds")
    noise_seconds: float = 0.0  # noise pretraining before train() (set by prealign.config.run)
    config: dict[str, Any] | None = None
    run_id: int | None = None

    @property
    def status(self) -> str:
        return "diverged" if self.diverged else "finished"

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's record."""
        return self.curves[-1] if self.curves else {}

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in (
            "best_test_acc", "best_epoch", "diverged", "diverged_epoch", "stopped_early", "epochs_run",
            "seconds", "train_seconds", "noise_seconds", "config", "run_id")}
        out["status"] = self.status
        out["final"] = self.final
        if curves:
            out["curves"] = self.curves
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# -- checkpoints ----------------------------------------------------------------------------
class FileCheckpoint:
    """Checkpoint in one file, written atomically (temp file + rename)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(state, buf)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, self.path)


def _as_checkpoint(checkpoint):
    if checkpoint is None or hasattr(checkpoint, "save"):
        return checkpoint
    return FileCheckpoint(checkpoint)


# -- measurements ---------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy fraction)`` of ``model`` on ``(x, y)`` in no-grad batches."""
    was = model.training
    model.eval()
    loss = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        yb = y[i:i + batch_size]
        loss += F.cross_entropy(out.float(), yb, reduction="sum").double()
        correct += (out.argmax(1) == yb).sum()
    model.train(was)
    n = max(len(x), 1)
    return float(loss) / n, int(correct) / n


def _flat_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle in degrees between two tensors flattened (float64); NaN if either is zero/non-finite."""
    a, b = a.double().flatten(), b.double().flatten()
    na, nb = a.norm(), b.norm()
    if not (torch.isfinite(na) and torch.isfinite(nb)) or na == 0 or nb == 0:
        return float("nan")
    cos = (a @ b / (na * nb)).clamp(-1.0, 1.0)
    return math.degrees(math.acos(float(cos)))


def gradient_alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``{layer: degrees}`` for every feedback layer but the last (the output layer, whose error
    is the loss gradient under any rule): the angle between the error the model's rule delivers
    to the layer's output ``∂L/∂y_l`` and the true backprop error (under
    :func:`prealign.exact_gradients`), on the batch ``(x, y)``, whole batch flattened.

    Leaves parameters, their ``.grad`` and the global RNG as they were (it runs an extra
    forward/backward of its own).
    """
    layers = feedback_layers(model)[:-1]
    if not layers:
        return {}
    params = [p for p in model.parameters()]
    saved_grads = [p.grad for p in params]
    rng = torch.get_rng_state()

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
            with torch.enable_grad():
                loss = F.cross_entropy(model(x), y)
                loss.backward()
        finally:
            for h in handles:
                h.remove()
        return captured

    was = model.training
    model.train()
    try:
        delivered = errors()
        with exact_gradients(model):
            true = errors()
    finally:
        model.train(was)
        for p, g in zip(params, saved_grads):
            p.grad = g
        torch.set_rng_state(rng)
    return {name: _flat_angle(delivered[name], true[name]) if name in delivered and name in true else float("nan")
            for name, _ in layers}


def _make_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
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


def _move_data(data, device):
    for attr in ("x_train", "y_train", "x_test", "y_test"):
        if not hasattr(data, attr):
            raise ConfigError(f"train() needs data with x_train, y_train, x_test, y_test tensors; {type(data).__name__} has no {attr}")
    if hasattr(data, "to"):
        moved = data.to(device)
        if moved is not None:
            return moved
    return TensorData(data.x_train.to(device), data.y_train.to(device), data.x_test.to(device), data.y_test.to(device),
                      int(getattr(data, "num_classes", 10)), str(getattr(data, "name", "tensors")))


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def train(model: nn.Module, data, *, epochs: int, batch_size: int = 64, lr: float = 1e-4, optimizer: str = "adam",
          weight_decay: float = 0.0, momentum: float = 0.0, patience: int | None = None, seed: int = 0,
          device: str | torch.device = "auto", callbacks: Sequence[Any] = (), progress: bool | None = None,
          eval_batch_size: int = 4096, checkpoint=None, grad_alignment: bool = True, description: str = "train",
          kp_decay: float | None = None) -> TrainResult:
    """Train ``model`` on ``data`` (``x_train, y_train, x_test, y_test`` tensors) with cross-entropy.

    ``epochs``: maximum epochs; ``patience``: stop once test accuracy has not improved for that
    many epochs (SPEC §4 "until convergence"); ``seed`` seeds the batch permutation, so the same
    seed on the same machine gives identical curves. ``callbacks``: objects with optional
    ``on_epoch_end(epoch, model, data, record)`` (may add keys to ``record``) and
    ``on_step_end(step, model)``. ``checkpoint``: a path or an object with ``load() -> dict|None``
    and ``save(dict)``; the full state (model, optimizer, RNGs, curves, counters) is saved after
    every epoch (epoch 0 included, which also preserves any noise pretraining done before) and an
    existing checkpoint is resumed, giving the same final result as an uninterrupted run.
    ``kp_decay``: the per-step Kolen–Pollack decay of ``B − W`` for ``kp`` layers (None: each layer's
    own, default :data:`prealign.feedback.KP_DECAY`; a model without ``kp`` layers raises). Never
    raises on divergence.
    """
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"train() needs epochs >= 0, batch_size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    start = time.perf_counter()
    dev = resolve_device(device)
    model.to(dev)
    data = _move_data(data, dev)
    xtr, ytr, xte, yte = data.x_train, data.y_train, data.x_test, data.y_test
    n = len(xtr)
    if n == 0:
        raise ConfigError("train() got an empty training set")
    if kp_decay is not None:
        set_kp_decay(model, kp_decay)
    opt = _make_optimizer(optimizer, model.parameters(), lr, weight_decay, momentum)
    gen = torch.Generator().manual_seed(int(seed))
    # one fixed batch for gradient alignment, drawn from its own stream (does not move `gen`)
    grad_idx = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7919))[:GRAD_BATCH].to(dev)
    grad_x, grad_y = xtr[grad_idx], ytr[grad_idx]
    step_cbs = [cb.on_step_end for cb in callbacks if hasattr(cb, "on_step_end")]
    epoch_cbs = [cb.on_epoch_end for cb in callbacks if hasattr(cb, "on_epoch_end")]
    ckpt = _as_checkpoint(checkpoint)

    res = TrainResult()
    state = ckpt.load() if ckpt is not None else None
    bad_epochs, step, first_epoch = 0, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
        res.curves = state["curves"]
        res.best_test_acc, res.best_epoch = state["best_test_acc"], state["best_epoch"]
        bad_epochs, step = state["bad_epochs"], state["step"]
        res.train_seconds = state.get("train_seconds", 0.0)
        first_epoch = state["epoch"] + 1
        if state.get("done"):
            first_epoch = epochs + 1
            res.diverged, res.diverged_epoch = state.get("diverged", False), state.get("diverged_epoch")
            res.stopped_early = state.get("stopped_early", False)

    def measure(epoch: int, record: dict) -> dict:
        t = time.perf_counter()
        if epoch == 0:
            record["train_loss"], record["train_acc"] = evaluate(model, xtr, ytr, eval_batch_size)
        record["test_loss"], record["test_acc"] = evaluate(model, xte, yte, eval_batch_size)
        for name, deg in alignment_angles(model).items():
            record[f"angle/{name}"] = deg
        if grad_alignment:
            for name, deg in gradient_alignment(model, grad_x, grad_y).items():
                record[f"grad_angle/{name}"] = deg
        for cb in epoch_cbs:
            cb(epoch, model, data, record)
        record["eval_seconds"] = time.perf_counter() - t
        return record

    def save(epoch: int, done: bool = False) -> None:
        if ckpt is None:
            return
        ckpt.save({
            "model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
            "epoch": epoch, "curves": res.curves, "best_test_acc": res.best_test_acc, "best_epoch": res.best_epoch,
            "bad_epochs": bad_epochs, "step": step, "train_seconds": res.train_seconds, "done": done,
            "diverged": res.diverged, "diverged_epoch": res.diverged_epoch, "stopped_early": res.stopped_early,
        })

    def update_best(record: dict) -> None:
        nonlocal bad_epochs
        acc = record["test_acc"]
        if not res.best_test_acc >= acc:  # also true while best is NaN
            res.best_test_acc, res.best_epoch, bad_epochs = acc, record["epoch"], 0
        else:
            bad_epochs += 1

    model.train()
    if first_epoch == 0:
        record = measure(0, {"epoch": 0, "seconds": 0.0})
        res.curves.append(record)
        update_best(record)
        bad_epochs = 0
        if not _finite(record["train_loss"], record["test_loss"]):
            res.diverged, res.diverged_epoch = True, 0
        first_epoch = 1
        save(0, done=res.diverged)

    with progress_bar(max(epochs - first_epoch + 1, 0), description, enabled=progress) as bar:
        for epoch in range(first_epoch, epochs + 1):
            if res.diverged:
                break
            t = time.perf_counter()
            perm = torch.randperm(n, generator=gen).to(dev)
            loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
            correct = torch.zeros((), device=dev, dtype=torch.int64)
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                xb, yb = xtr[idx], ytr[idx]
                out = model(xb)
                loss = F.cross_entropy(out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach().double() * len(idx)
                correct += (out.detach().argmax(1) == yb).sum()
                step += 1
                for cb in step_cbs:
                    cb(step, model)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds = time.perf_counter() - t
            res.train_seconds += seconds
            record = {"epoch": epoch, "seconds": seconds, "train_loss": float(loss_sum) / n, "train_acc": int(correct) / n}
            if not math.isfinite(record["train_loss"]):
                record["test_loss"], record["test_acc"] = float("nan"), float("nan")
                res.curves.append(record)
                res.diverged, res.diverged_epoch = True, epoch
            else:
                measure(epoch, record)
                res.curves.append(record)
                if not math.isfinite(record["test_loss"]):
                    res.diverged, res.diverged_epoch = True, epoch
                else:
                    update_best(record)
            stop = patience is not None and bad_epochs >= patience and not res.diverged
            res.stopped_early = stop
            save(epoch, done=res.diverged or stop or epoch == epochs)
            bar.advance(1, test_acc=record["test_acc"], loss=record["train_loss"])
            if stop:
                break

    res.epochs_run = res.curves[-1]["epoch"] if res.curves else 0
    res.seconds = time.perf_counter() - start
    return res


__all__ = ["train", "TrainResult", "TensorData", "evaluate", "gradient_alignment", "FileCheckpoint", "OPTIMIZERS"]
