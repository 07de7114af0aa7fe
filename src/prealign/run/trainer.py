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
``val_loss/_acc``      with a validation set (``val_fraction > 0``): no-grad pass over it
``test_loss/_acc``     no-grad pass over the whole test set at the end of the epoch
``angle/<layer>``      alignment angle between W and B per feedback layer whose rule reads B (fa, kp),
                       degrees (IFA paper B.4, mean over output neurons; :func:`prealign.alignment_angles`)
``grad_angle/<layer>`` gradient alignment per hidden layer, degrees: the angle between the error the
                       rule delivers to the layer's output and the true backprop error, on one fixed
                       training batch (whole batch flattened; SPEC §5, beyond the papers)
``seconds``            wall time of the epoch's training steps; ``eval_seconds`` the measurements
=====================  ===========================================================================

Measurements never change what they measure (:func:`measurement_guard`). Accuracies are
fractions in [0, 1]. A NaN/inf loss stops training: the run is marked diverged,
that epoch is recorded, the curves are kept, nothing is raised (IFA paper A.2.2).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import math
import os
import pickle
import time
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..device import resolve_device
from ..errors import ConfigError, PrealignError
from ..feedback import RULES, FeedbackLayer, exact_gradients, feedback_layers, set_kp_decay, set_wm
from ..feedback.wm import mirror_phases, set_mirror_phases, wm_settings
from ..init import alignment_angles
from ..models.fingerprint import difference, layout
from ..progress import progress_bar

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
        from ..data.base import TENSOR_FIELDS
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in TENSOR_FIELDS if getattr(self, k) is not None})


@dataclass
class TrainResult:
    """What :func:`train` returns. Accuracies are fractions; times in seconds."""

    curves: list[dict[str, float]] = field(default_factory=list)
    best_test_acc: float = float("nan")  # test accuracy at the selected epoch
    best_epoch: int = 0  # the selected epoch: best validation accuracy ("val") or best test accuracy ("test")
    best_val_acc: float = float("nan")  # validation accuracy at the selected epoch (NaN without validation)
    selection: str = "test"  # "val": selected and stopped on the validation set; "test": the papers' protocol
    diverged: bool = False
    diverged_epoch: int | None = None
    stopped_early: bool = False  # patience ran out
    epochs_run: int = 0
    seconds: float = 0.0  # wall time of train(), measurements included
    train_seconds: float = 0.0  # training steps only (sum of per-epoch "seconds")
    noise_seconds: float = 0.0  # noise pretraining before train() (set by prealign.run.config.run)
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
            "best_test_acc", "best_epoch", "best_val_acc", "selection", "diverged", "diverged_epoch", "stopped_early",
            "epochs_run", "seconds", "train_seconds", "noise_seconds", "config", "run_id")}
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
CHECKPOINT_FORMAT = 2  # version of the checkpoint dict below; older files are refused with a one-line fix


def _corrupt(path: Path) -> PrealignError:
    return PrealignError(f"{path}: a corrupt checkpoint of an unfinished run: "
                         f"discard it (delete {path}) and restart that run")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict in ``path``, read as data only.

    The file must be an intact torch zip archive (every member's CRC is checked first, so
    overwritten or truncated bytes are caught) and is unpickled with ``weights_only=True``: only
    tensors, numbers, strings, ``None``, lists, tuples and dicts load; a file holding any other
    object (a crafted ``__reduce__`` payload) is refused without running it. Raises a one-line
    :class:`PrealignError` naming the file and the fix.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.testzip() is not None:
                raise _corrupt(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error):
        raise _corrupt(path) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PrealignError(f"{path} holds objects other than tensors and plain data, so it is not a prealign "
                            f"checkpoint and was not loaded ({first[:160]}); delete {path}") from None
    except (RuntimeError, EOFError, OSError, ValueError):
        raise _corrupt(path) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise PrealignError(f"{path} is not a checkpoint of this prealign version (format {CHECKPOINT_FORMAT}); "
                            f"delete {path} and restart that run")
    return state


class FileCheckpoint:
    """One run's checkpoint in one file, written atomically (temp file + rename).

    ``key``: the run it belongs to (a store run's key); saved inside the file, and a file whose
    key differs is refused on load (another run's checkpoint). Loading goes through
    :func:`read_checkpoint` (integrity-checked, ``weights_only=True``).

    The file holds one dict, plain data only (written by :func:`train` and
    :func:`prealign.run.batched.train_runs`; every key is required):

    ==================  ============================================================================
    ``format``          :data:`CHECKPOINT_FORMAT` (int)
    ``key``             the run's key (str) or None outside a store
    ``settings``        :func:`checkpoint_settings` of the run (dict of str → number/str/None)
    ``model``           ``model.state_dict()`` (weights and feedback buffers)
    ``optimizer``       ``optimizer.state_dict()`` (adam/adamw/sgd over ``model.parameters()``, or the
                        user's optimizer); ``scheduler`` the LR scheduler's ``state_dict()`` or None
                        (:func:`train` only; absent from batched runs' checkpoints); ``loader_rng``
                        the states of a training loader's own generators (list of uint8 tensors)
    ``generator``       batch-order generator state (uint8 tensor); ``torch_rng``, ``cuda_rng``
                        (uint8 tensor or None) the global RNGs
    ``epoch``           last completed epoch (int; 0 = before training)
    ``curves``          the per-epoch records so far (list of dicts)
    ``best_epoch``      selected epoch; ``best_test_acc``, ``best_val_acc`` (NaN without validation)
    ``selection``       ``"val"`` or ``"test"``
    ``bad_epochs``      epochs since the selected one (patience counter); ``step`` optimizer steps
    ``train_seconds``   summed training time
    ``done``            the run ended (budget, patience or divergence); ``diverged``,
                        ``diverged_epoch`` (int or None), ``stopped_early`` say how
    ==================  ============================================================================

    :func:`prealign.run.config.run` adds ``noise_seconds``.
    """

    def __init__(self, path: str | os.PathLike, key: str | None = None):
        self.path = Path(path)
        self.key = key

    def load(self) -> dict | None:
        """The saved dict, or None when there is no file yet."""
        if not self.path.exists():
            return None
        state = read_checkpoint(self.path)
        if self.key is not None and state.get("key") != self.key:
            raise PrealignError(f"{self.path} belongs to another run (key {state.get('key')}, this run is {self.key}); "
                                f"delete {self.path} or use another output folder")
        return state

    def save(self, state: dict) -> None:
        state = {**state, "format": CHECKPOINT_FORMAT}
        if self.key is not None:
            state["key"] = self.key
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


def _model_fingerprint(model: nn.Module) -> str:
    """Hash of the architecture: every module's name, class and ``extra_repr`` (sizes, rule,
    dropout rate...), a learned-feedback layer's ``kp_decay``, a weight-mirror layer's settings, and every parameter's name, shape
    and dtype. Not the weights' values."""
    h = hashlib.sha256()
    for name, module in model.named_modules():
        h.update(f"{name}|{type(module).__name__}|{module.extra_repr()}\n".encode())
        if isinstance(module, FeedbackLayer) and RULES[module.rule].learns_feedback:
            h.update(f"kp_decay={float(module.kp_decay)!r}\n".encode())  # changes the result, as lr does
        if isinstance(module, FeedbackLayer) and RULES[module.rule].mirrors:
            h.update(f"wm={sorted(wm_settings(module).items())!r}\n".encode())
    for name, p in model.named_parameters():
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}\n".encode())
    return h.hexdigest()[:16]


def _data_fingerprint(data) -> str:
    """Hash of the data set, device-independent: shapes, dtypes and every label of each split,
    and the bytes of up to 64 evenly spaced samples of each input tensor."""
    from ..data.base import TENSOR_FIELDS

    h = hashlib.sha256(str(int(getattr(data, "num_classes", 0))).encode())
    for name in TENSOR_FIELDS:
        t = getattr(data, name, None)
        if t is None:
            continue
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        if name.startswith("x") and len(t):
            t = t[torch.linspace(0, len(t) - 1, min(64, len(t))).long().to(t.device)]
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_settings(model: nn.Module, data, *, batch_size: int, lr: float, optimizer: str, weight_decay: float,
                        momentum: float, seed: int, patience: int | None, val_fraction: float) -> dict:
    """What a checkpoint must match to be resumed: every training argument that changes the
    result (not ``epochs``: see :func:`train`), the model's architecture (:func:`_model_fingerprint`)
    and the data as given to :func:`train` (:func:`_data_fingerprint`; ``data`` None: left for the
    caller to record, as :func:`train` does for a loader)."""
    return {"batch_size": int(batch_size), "lr": float(lr), "optimizer": str(optimizer),
            "weight_decay": float(weight_decay), "momentum": float(momentum), "seed": int(seed),
            "patience": None if patience is None else int(patience), "val_fraction": float(val_fraction),
            "model": _model_fingerprint(model), "data": None if data is None else _data_fingerprint(data),
            "layout": layout(model)}  # not compared: says what differs when "model" does (issue 24)


def _check_resumable(ckpt, state: dict, settings: dict, epochs: int) -> None:
    """Raise a one-line PrealignError unless ``state`` was written by this very training run."""
    where = getattr(ckpt, "path", ckpt)
    saved = state.get("settings") or {}
    diff = [f"{k} {saved.get(k)!r} there, {v!r} now" if k != "model" else f"model: {difference(saved.get('layout'), settings['layout'])}"
            for k, v in settings.items() if k != "layout" and saved.get(k) != v]
    if not diff and state["epoch"] > epochs:
        diff = [f"epochs: it has trained {state['epoch']}, now epochs={epochs}"]
    if diff:
        raise PrealignError(f"checkpoint {where} is from another training run ({'; '.join(diff)}); "
                            f"delete it or use another checkpoint path")


# -- measurements ---------------------------------------------------------------------------
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
    ``batch_size``, or on ``x`` an iterable of ``(x, y)`` batches (``y`` None; see :func:`train`).
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


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


@contextmanager
def measurement_guard(model: nn.Module):
    """Within the block, measure ``model`` freely: on exit the global RNGs (CPU and every
    initialised CUDA device), every module's train/eval mode, the running statistics of its
    normalisation layers (BatchNorm ``running_mean``/``running_var``/``num_batches_tracked``) and
    every parameter's ``.grad`` are as they were on entry, also when the body raises. So a
    measurement never changes the training it measures (weights and feedback are not restored:
    a measurement must not write them)."""
    modes = [(m, m.training) for m in model.modules()]
    norms = [(m, {k: b.detach().clone() for k, b in m.named_buffers(recurse=False) if b is not None})
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    grads = [(p, p.grad) for p in model.parameters()]
    with torch.random.fork_rng(devices=_cuda_devices()):
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
            with torch.enable_grad(), torch.random.fork_rng(devices=_cuda_devices()):  # same masks for both passes
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
    :func:`train`, in its key order), all under :func:`measurement_guard`: at epoch 0 the training
    loss/accuracy (one no-grad pass over ``train = (x, y)``), the validation (``val``, or None) and
    test loss/accuracy (each an ``(x, y)`` pair of tensors or an iterable of batches; loss ``loss_fn``
    as in :func:`evaluate`), the angles of :func:`prealign.alignment_angles`, gradient alignment on
    ``grad_batch = (x, y)`` (None: not measured), then each ``callbacks`` entry
    ``fn(epoch, model, data, record)``; ``eval_seconds`` last. Used by :func:`train` and by
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
    x_val, y_val = getattr(data, "x_val", None), getattr(data, "y_val", None)
    return TensorData(data.x_train.to(device), data.y_train.to(device), data.x_test.to(device), data.y_test.to(device),
                      int(getattr(data, "num_classes", 10)), str(getattr(data, "name", "tensors")),
                      None if x_val is None else x_val.to(device), None if y_val is None else y_val.to(device))


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 for a model without one)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _cast_inputs(data, dtype: torch.dtype):
    """``data`` with its floating-point inputs (``x_train``, ``x_test``, ``x_val``) in ``dtype``."""
    changes = {k: t.to(dtype) for k in ("x_train", "x_test", "x_val")
               if (t := getattr(data, k, None)) is not None and t.is_floating_point() and t.dtype != dtype}
    if not changes:
        return data
    if dataclasses.is_dataclass(data):
        return dataclasses.replace(data, **changes)
    return TensorData(changes.get("x_train", data.x_train), data.y_train, changes.get("x_test", data.x_test), data.y_test,
                      int(getattr(data, "num_classes", 10)), str(getattr(data, "name", "tensors")),
                      changes.get("x_val", getattr(data, "x_val", None)), getattr(data, "y_val", None))


class Batches:
    """An iterable of ``(x, y)`` batches (a ``DataLoader``, a list, any re-iterable object) as
    :func:`train` reads it: each batch is checked (a pair of tensors of equal length) and moved to
    ``device``; floating-point ``x`` (and floating ``y``, e.g. regression targets) are cast to the
    model's ``dtype``. ``name`` ("training data", "test data"...) appears in the one-line errors."""

    def __init__(self, source, name: str, device: torch.device, dtype: torch.dtype):
        if isinstance(source, torch.Tensor) or not hasattr(source, "__iter__"):
            raise ConfigError(f"{name} must be prealign data (x_train, y_train, x_test, y_test tensors), a DataLoader or "
                              f"an iterable of (x, y) batches; got a {type(source).__name__}")
        if isinstance(source, Iterator):  # (not iter(source) is source: that would start a DataLoader's workers)
            raise ConfigError(f"{name} is a one-shot iterator ({type(source).__name__}); give something iterable once "
                              "per epoch: a DataLoader, a list of (x, y) batches or an object with __iter__")
        self.source, self.name, self.device, self.dtype = source, name, device, dtype

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, self.dtype if t.is_floating_point() else None, non_blocking=True)

    def __iter__(self):
        empty = True
        for i, item in enumerate(self.source):
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, torch.Tensor) for t in item)):
                what = f"a {len(item)}-item {type(item).__name__}" if isinstance(item, (tuple, list)) else f"a {type(item).__name__}"
                raise ConfigError(f"{self.name}: batch {i} is {what}; a loader must yield (x, y) pairs of tensors")
            x, y = item
            if len(x) != len(y):
                raise ConfigError(f"{self.name}: batch {i} has {len(x)} inputs but {len(y)} targets")
            empty = False
            yield self._cast(x), self._cast(y)
        if empty:
            raise ConfigError(f"{self.name} yielded no batches")

    def generators(self) -> list[torch.Generator]:
        """The ``torch.Generator`` objects the source holds (a ``DataLoader``'s ``generator``, its
        sampler's, a custom sampler's attributes): they choose its order besides the global RNG."""
        found: list[torch.Generator] = []
        batch_sampler = getattr(self.source, "batch_sampler", None)
        for obj in (self.source, getattr(self.source, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
            for value in getattr(obj, "__dict__", {}).values():
                if isinstance(value, torch.Generator) and not any(value is g for g in found):
                    found.append(value)
        return found

    @contextmanager
    def preserved(self):
        """Within the block, read the source freely: its generators' states (:meth:`generators`) and
        the global RNGs are restored on exit, so the next epoch's order is as if it had not been read."""
        states = [(g, g.get_state()) for g in self.generators()]
        try:
            with torch.random.fork_rng(devices=_cuda_devices()):
                yield self
        finally:
            for g, state in states:
                g.set_state(state)

    def first(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` samples (fewer if there are fewer), concatenated; read under
        :meth:`preserved`, so a shuffling loader's next epoch is not moved by it."""
        xs, ys, got = [], [], 0
        with self.preserved():
            for x, y in self:
                xs.append(x), ys.append(y)
                got += len(x)
                if got >= n:
                    break
        return torch.cat(xs)[:n], torch.cat(ys)[:n]

    def describe(self) -> str:
        """What a checkpoint records of this source (its contents are not fingerprinted)."""
        size = getattr(getattr(self.source, "dataset", None), "__len__", None) or getattr(self.source, "__len__", None)
        return f"{type(self.source).__name__} (len {size()})" if size is not None else type(self.source).__name__


def _resolve_optimizer(optimizer, model: nn.Module, lr, weight_decay, momentum) -> tuple[torch.optim.Optimizer, str]:
    """``(the optimizer, what the checkpoint records of it)`` for a name, an object or a factory."""
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
        return _make_optimizer(optimizer, model.parameters(), 1e-4 if lr is None else lr,
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


def _resolve_scheduler(scheduler, opt: torch.optim.Optimizer):
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


def _name_of(fn) -> str:
    return f"{getattr(fn, '__module__', None) or type(fn).__module__}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def train(model: nn.Module, data, *, epochs: int, batch_size: int = 64, lr: float | None = None, optimizer="adam",
          weight_decay: float | None = None, momentum: float | None = None, patience: int | None = None, seed: int = 0,
          device: str | torch.device = "auto", callbacks: Sequence[Any] = (), progress: bool | None = None,
          eval_batch_size: int = 4096, checkpoint=None, grad_alignment: bool = True, description: str = "train",
          val_fraction: float = 0.0, kp_decay: float | None = None, wm: dict | None = None, test=None, val=None,
          loss_fn=None, scheduler=None) -> TrainResult:
    """Train ``model`` on ``data`` with cross-entropy (or ``loss_fn``).

    ``data``: prealign's data (``x_train, y_train, x_test, y_test`` tensors; the fast path: moved to
    the device once, batches are slices of a seeded permutation), or a ``DataLoader`` / any
    re-iterable of ``(x, y)`` batches, read once per epoch in its own order (``batch_size`` and
    ``seed`` then do not choose the batches), with ``test=`` (required) and optionally ``val=``
    loaders for the measurements. Either way the inputs (and floating targets) are moved to the
    model's device and cast to its dtype (a float64 model trains on float64 data). The training
    loss/accuracy of epoch 0 and gradient alignment (on the first :data:`GRAD_BATCH` training
    samples) read the loader under a forked RNG, so they do not move its shuffling.

    ``loss_fn(output, target) -> scalar`` (a batch mean): the training and measured loss (default
    cross-entropy); accuracies are NaN where the targets are not class indices (selection then
    keeps the last epoch). ``optimizer``: ``"adam"``, ``"adamw"``, ``"sgd"`` (with ``lr``, default
    1e-4, ``weight_decay``, ``momentum``; fused kernels where possible), a ``torch.optim.Optimizer``
    over the model's parameters, or a factory ``params -> Optimizer`` (``lr``/``weight_decay``/
    ``momentum`` then belong in the optimizer; giving them here raises). ``scheduler``: an LR
    scheduler on that optimizer, or a factory ``optimizer -> scheduler``, stepped once per epoch
    after the epoch's training steps and measurements (``ReduceLROnPlateau`` gets the validation
    loss, else the training loss); records then carry ``lr``, the first parameter group's rate for
    the next epoch (epoch 0: the initial rate).

    ``epochs``: maximum epochs; ``patience``: stop once the selection accuracy has not improved for
    that many epochs (SPEC §4 "until convergence"); ``seed`` seeds the batch permutation, so the same
    seed on the same machine gives identical curves.

    Model selection: ``val_fraction > 0`` holds that fraction of the training set out
    (:func:`prealign.data.holdout_validation`, a fixed seed-0 split; tensor data only), as does data
    that already has ``x_val``/``y_val`` or a ``val=`` loader; records gain ``val_loss``/``val_acc``,
    the selected epoch (``best_epoch``) is the best validation epoch, patience counts validation
    epochs, ``best_test_acc`` is the test accuracy at that epoch and ``selection`` is ``"val"``.
    Without validation (the papers' protocol) the best test epoch is selected and ``selection`` is
    ``"test"``.

    ``callbacks``: objects with optional ``on_epoch_end(epoch, model, data, record)`` (may add keys
    to ``record``) and ``on_step_end(step, model)``. The epoch measurements and the
    ``on_epoch_end`` callbacks run inside :func:`measurement_guard`, so they leave the training
    (RNGs, BatchNorm statistics, modes, gradients) exactly as it would be without them.

    ``checkpoint``: a path or an object with ``load() -> dict|None`` and ``save(dict)``; the full
    state (model, optimizer, scheduler, RNGs, curves, counters; layout in :class:`FileCheckpoint`)
    is saved after every epoch (epoch 0 included, which also preserves any noise pretraining done
    before) and an existing checkpoint is resumed, giving the same final result as an
    uninterrupted run. The checkpoint records :func:`checkpoint_settings` (every argument that
    changes the result, the model's architecture, the data); resuming with any of them changed
    raises a one-line PrealignError naming the file and the differences. What cannot be verified
    is recorded as far as it can be and listed under ``unverified``: a loader by its type and length
    (not its contents; its order may come from the global RNG, as a ``DataLoader``'s shuffling
    does, or from ``torch.Generator`` objects the loader or its sampler hold, which are checkpointed
    and restored around measurements; other RNGs, e.g. numpy's in a custom dataset, are not), a
    custom ``loss_fn`` by its name, an optimizer object/factory by its class and defaults, a scheduler by its class.
    ``epochs`` alone may grow: a run that ended on its epoch budget continues to the new budget, and
    one that stopped early or diverged is returned as it ended — both exactly what an
    uninterrupted run with the new budget gives (nothing depends on the budget but where training
    stops). A checkpoint past the new ``epochs`` is refused. The weights come from the checkpoint,
    not from ``model``.

    ``kp_decay``: the per-step Kolen–Pollack decay of ``B − W`` for ``kp`` layers (None: each layer's
    own, default :data:`prealign.feedback.KP_DECAY`; a model without ``kp`` layers raises).
    ``wm``: weight-mirror settings for ``wm`` layers, keyword arguments of :func:`prealign.set_wm`
    (``{"lr", "noise_std", "decay", "steps", "batch"}``; None: each layer's own, defaults in
    :mod:`prealign.feedback.wm`; a model without ``wm`` layers raises). Never raises on divergence.
    """
    from ..data.base import holdout_validation

    if epochs < 0 or batch_size < 1 or not (lr is None or lr > 0):
        raise ConfigError(f"train() needs epochs >= 0, batch_size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    if isinstance(optimizer, str) and optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    start = time.perf_counter()
    dev = resolve_device(device)
    model.to(dev)
    dtype = _model_dtype(model)
    loader = not hasattr(data, "x_train")
    unverified = []
    if loader:
        if val_fraction:
            raise ConfigError("val_fraction splits prealign's tensor data; with a loader give the validation loader as val=")
        if test is None:
            raise ConfigError("train() on a loader needs test= (a loader or iterable of (x, y) test batches)")
        train_batches = Batches(data, "training data", dev, dtype)
        test_batches = Batches(test, "test data", dev, dtype)
        val_batches = None if val is None else Batches(val, "validation data", dev, dtype)
        data_record = " | ".join(b.describe() for b in (train_batches, test_batches, val_batches) if b is not None)
        unverified.append("data (a loader: recorded by type and length, contents not fingerprinted)")
    else:
        if test is not None or val is not None:
            raise ConfigError("test= and val= go with a loader; prealign data brings its own test (and x_val/y_val) tensors")
        data = _move_data(data, dev)
        data_record = _data_fingerprint(data)
        data = _cast_inputs(data, dtype)
    if kp_decay is not None:
        set_kp_decay(model, kp_decay)
    if wm is not None:
        set_wm(model, **wm)
    opt, opt_record = _resolve_optimizer(optimizer, model, lr, weight_decay, momentum)
    sched = _resolve_scheduler(scheduler, opt)
    if not isinstance(optimizer, str):
        unverified.append("optimizer (an object or factory: recorded by class and defaults)")
    if loss_fn is not None:
        unverified.append("loss_fn (recorded by name)")
    if sched is not None:
        unverified.append("scheduler (recorded by class)")
    settings = checkpoint_settings(model, None, batch_size=batch_size,
                                   lr=1e-4 if lr is None else lr, optimizer=opt_record,
                                   weight_decay=weight_decay or 0.0, momentum=momentum or 0.0, seed=seed,
                                   patience=patience, val_fraction=val_fraction)
    settings["data"] = data_record
    if loss_fn is not None or sched is not None or loader or not isinstance(optimizer, str):
        settings.update(loss_fn=None if loss_fn is None else _name_of(loss_fn),
                        scheduler=None if sched is None else _name_of(type(sched)), unverified="; ".join(unverified))
    if loader:
        xtr = ytr = None
        train_eval, val_eval, test_eval, has_val = train_batches, val_batches, test_batches, val_batches is not None
        n = None
    else:
        data = holdout_validation(data, val_fraction)
        xtr, ytr, xte, yte = data.x_train, data.y_train, data.x_test, data.y_test
        xva, yva = getattr(data, "x_val", None), getattr(data, "y_val", None)
        has_val = xva is not None
        train_eval, val_eval, test_eval = (xtr, ytr), (xva, yva) if has_val else None, (xte, yte)
        n = len(xtr)
        if n == 0:
            raise ConfigError("train() got an empty training set")
    gen = torch.Generator().manual_seed(int(seed))
    # one fixed batch for gradient alignment, drawn from its own stream (does not move `gen`)
    grad_xy = None
    if grad_alignment:
        grad_xy = train_batches.first(GRAD_BATCH) if loader else gradient_batch(xtr, ytr, seed)
    step_cbs = [cb.on_step_end for cb in callbacks if hasattr(cb, "on_step_end")]
    epoch_cbs = [cb.on_epoch_end for cb in callbacks if hasattr(cb, "on_epoch_end")]
    ckpt = _as_checkpoint(checkpoint)
    compute_loss = loss_fn or F.cross_entropy

    res = TrainResult(selection="val" if has_val else "test")
    state = ckpt.load() if ckpt is not None else None
    bad_epochs, step, first_epoch = 0, 0, 0
    if state is not None:
        _check_resumable(ckpt, state, settings, epochs)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_mirror_phases(model, state.get("wm_phases", {}))
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        for g, saved in zip(train_batches.generators() if loader else (), state.get("loader_rng", ())):
            g.set_state(saved)
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
        res.curves = state["curves"]
        res.best_test_acc, res.best_val_acc = state["best_test_acc"], state["best_val_acc"]
        res.best_epoch = state["best_epoch"]
        bad_epochs, step = state["bad_epochs"], state["step"]
        res.train_seconds = state["train_seconds"]
        first_epoch = state["epoch"] + 1
        res.diverged, res.diverged_epoch = state["diverged"], state["diverged_epoch"]
        res.stopped_early = state["stopped_early"]
        if res.diverged or res.stopped_early:
            first_epoch = epochs + 1

    def measure(epoch: int, record: dict) -> dict:
        with contextlib.ExitStack() as stack:  # reading a loader for measurements never moves its order
            for batches in (train_eval, val_eval, test_eval) if loader else ():
                if batches is not None:
                    stack.enter_context(batches.preserved())
            return measure_epoch(model, record, train=train_eval, val=val_eval, test=test_eval, grad_batch=grad_xy,
                                 callbacks=epoch_cbs, data=data, eval_batch_size=eval_batch_size, loss_fn=loss_fn)

    def save(epoch: int, done: bool = False) -> None:
        if ckpt is None:
            return
        ckpt.save({
            "format": CHECKPOINT_FORMAT, "key": None, "settings": settings,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
            "wm_phases": mirror_phases(model),
            "scheduler": None if sched is None else sched.state_dict(),
            "loader_rng": [g.get_state() for g in train_batches.generators()] if loader else [],
            "torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
            "epoch": epoch, "curves": res.curves, "best_test_acc": res.best_test_acc, "best_val_acc": res.best_val_acc,
            "best_epoch": res.best_epoch, "selection": res.selection,
            "bad_epochs": bad_epochs, "step": step, "train_seconds": res.train_seconds, "done": done,
            "diverged": res.diverged, "diverged_epoch": res.diverged_epoch, "stopped_early": res.stopped_early,
        })

    def update_best(record: dict) -> None:
        nonlocal bad_epochs
        acc = record["val_acc" if has_val else "test_acc"]
        best = res.best_val_acc if has_val else res.best_test_acc
        if not best >= acc:  # also true while best is NaN
            res.best_test_acc, res.best_epoch, bad_epochs = record["test_acc"], record["epoch"], 0
            if has_val:
                res.best_val_acc = acc
        else:
            bad_epochs += 1

    def finite_losses(record: dict) -> bool:
        return _finite(record["train_loss"], record["test_loss"], record.get("val_loss", 0.0))

    def epoch_batches():
        if loader:
            yield from train_batches
            return
        perm = torch.randperm(n, generator=gen).to(dev)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            yield xtr[idx], ytr[idx]

    def step_scheduler(record: dict) -> None:
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(record["val_loss" if has_val else "train_loss"])
        else:
            sched.step()
        record["lr"] = float(opt.param_groups[0]["lr"])

    model.train()
    if first_epoch == 0:
        record = measure(0, {"epoch": 0, "seconds": 0.0})
        if sched is not None:
            record["lr"] = float(opt.param_groups[0]["lr"])
        res.curves.append(record)
        update_best(record)
        bad_epochs = 0
        if not finite_losses(record):
            res.diverged, res.diverged_epoch = True, 0
        first_epoch = 1
        save(0, done=res.diverged or epochs == 0)

    with progress_bar(max(epochs - first_epoch + 1, 0), description, enabled=progress) as bar:
        for epoch in range(first_epoch, epochs + 1):
            if res.diverged:
                break
            t = time.perf_counter()
            loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
            correct = torch.zeros((), device=dev, dtype=torch.int64)
            seen, classes = 0, True
            for xb, yb in epoch_batches():
                out = model(xb)
                loss = compute_loss(out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach().double() * len(yb)
                classes = classes and yb.dim() == 1 and not yb.is_floating_point() and out.dim() == 2
                if classes:
                    correct += (out.detach().argmax(1) == yb).sum()
                seen += len(yb)
                step += 1
                for cb in step_cbs:
                    cb(step, model)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds = time.perf_counter() - t
            res.train_seconds += seconds
            record = {"epoch": epoch, "seconds": seconds, "train_loss": float(loss_sum) / seen,
                      "train_acc": int(correct) / seen if classes else float("nan")}
            if not math.isfinite(record["train_loss"]):
                for k in ("val_loss", "val_acc", "test_loss", "test_acc") if has_val else ("test_loss", "test_acc"):
                    record[k] = float("nan")
                res.curves.append(record)
                res.diverged, res.diverged_epoch = True, epoch
            else:
                measure(epoch, record)
                if sched is not None:
                    step_scheduler(record)
                res.curves.append(record)
                if not finite_losses(record):
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


__all__ = ["train", "TrainResult", "TensorData", "Batches", "evaluate", "gradient_alignment", "measurement_guard",
           "FileCheckpoint", "read_checkpoint", "checkpoint_settings", "CHECKPOINT_FORMAT", "OPTIMIZERS"]
