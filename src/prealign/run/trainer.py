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

import dataclasses
import hashlib
import io
import math
import os
import pickle
import time
import zipfile
import zlib
from collections.abc import Sequence
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
from ..feedback.wm import wm_settings
from ..init import alignment_angles
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
    ``optimizer``       ``optimizer.state_dict()`` (adam/adamw/sgd over ``model.parameters()``)
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
    and the data as given to :func:`train` (:func:`_data_fingerprint`)."""
    return {"batch_size": int(batch_size), "lr": float(lr), "optimizer": str(optimizer),
            "weight_decay": float(weight_decay), "momentum": float(momentum), "seed": int(seed),
            "patience": None if patience is None else int(patience), "val_fraction": float(val_fraction),
            "model": _model_fingerprint(model), "data": _data_fingerprint(data)}


def _check_resumable(ckpt, state: dict, settings: dict, epochs: int) -> None:
    """Raise a one-line PrealignError unless ``state`` was written by this very training run."""
    where = getattr(ckpt, "path", ckpt)
    saved = state.get("settings") or {}
    diff = [f"{k} {saved.get(k)!r} there, {v!r} now" for k, v in settings.items() if saved.get(k) != v]
    if not diff and state["epoch"] > epochs:
        diff = [f"epochs: it has trained {state['epoch']}, now epochs={epochs}"]
    if diff:
        raise PrealignError(f"checkpoint {where} is from another training run ({'; '.join(diff)}); "
                            f"delete it or use another checkpoint path")


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


def gradient_alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``{layer: degrees}`` for every feedback layer but the last (the output layer, whose error
    is the loss gradient under any rule): the angle between the error the model's rule delivers
    to the layer's output ``∂L/∂y_l`` and the true backprop error (under
    :func:`prealign.exact_gradients`), on the batch ``(x, y)``, whole batch flattened.

    Both passes run in training mode from the same RNG state, so they see the same dropout masks
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
                loss = F.cross_entropy(model(x), y)
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
                  eval_batch_size: int = 4096) -> dict:
    """The end-of-epoch measurements of one run, added to ``record`` (the per-epoch record of
    :func:`train`, in its key order), all under :func:`measurement_guard`: at epoch 0 the training
    loss/accuracy (one no-grad pass over ``train = (x, y)``), the validation (``val``, or None) and
    test loss/accuracy, the angles of :func:`prealign.alignment_angles`, gradient alignment on
    ``grad_batch = (x, y)`` (None: not measured), then each ``callbacks`` entry
    ``fn(epoch, model, data, record)``; ``eval_seconds`` last. Used by :func:`train` and by
    :func:`prealign.run.batched.train_runs`, so both record exactly the same."""
    t = time.perf_counter()
    with measurement_guard(model):
        if record["epoch"] == 0:
            record["train_loss"], record["train_acc"] = evaluate(model, *train, eval_batch_size)
        if val is not None:
            record["val_loss"], record["val_acc"] = evaluate(model, *val, eval_batch_size)
        record["test_loss"], record["test_acc"] = evaluate(model, *test, eval_batch_size)
        for name, deg in alignment_angles(model).items():
            record[f"angle/{name}"] = deg
        if grad_batch is not None:
            for name, deg in gradient_alignment(model, *grad_batch).items():
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


def train(model: nn.Module, data, *, epochs: int, batch_size: int = 64, lr: float = 1e-4, optimizer: str = "adam",
          weight_decay: float = 0.0, momentum: float = 0.0, patience: int | None = None, seed: int = 0,
          device: str | torch.device = "auto", callbacks: Sequence[Any] = (), progress: bool | None = None,
          eval_batch_size: int = 4096, checkpoint=None, grad_alignment: bool = True, description: str = "train",
          val_fraction: float = 0.0, kp_decay: float | None = None, wm: dict | None = None) -> TrainResult:
    """Train ``model`` on ``data`` (``x_train, y_train, x_test, y_test`` tensors) with cross-entropy.

    ``epochs``: maximum epochs; ``patience``: stop once the selection accuracy has not improved for
    that many epochs (SPEC §4 "until convergence"); ``seed`` seeds the batch permutation, so the same
    seed on the same machine gives identical curves.

    Model selection: ``val_fraction > 0`` holds that fraction of the training set out
    (:func:`prealign.data.holdout_validation`, a fixed seed-0 split), as does data that already has
    ``x_val``/``y_val``; records gain ``val_loss``/``val_acc``, the selected epoch
    (``best_epoch``) is the best validation epoch, patience counts validation epochs,
    ``best_test_acc`` is the test accuracy at that epoch and ``selection`` is ``"val"``. Without
    validation (``val_fraction=0``, the papers' protocol) the best test epoch is selected and
    ``selection`` is ``"test"``.

    ``callbacks``: objects with optional ``on_epoch_end(epoch, model, data, record)`` (may add keys
    to ``record``) and ``on_step_end(step, model)``. The epoch measurements and the
    ``on_epoch_end`` callbacks run inside :func:`measurement_guard`, so they leave the training
    (RNGs, BatchNorm statistics, modes, gradients) exactly as it would be without them.

    ``checkpoint``: a path or an object with ``load() -> dict|None`` and ``save(dict)``; the full
    state (model, optimizer, RNGs, curves, counters; layout in :class:`FileCheckpoint`) is saved
    after every epoch (epoch 0 included, which also preserves any noise pretraining done before)
    and an existing checkpoint is resumed, giving the same final result as an uninterrupted run.
    The checkpoint records :func:`checkpoint_settings` (every argument that changes the result,
    the model's architecture, the data); resuming with any of them changed raises a one-line
    PrealignError naming the file and the differences. ``epochs`` alone may grow: a run that
    ended on its epoch budget continues to the new budget, and one that stopped early or
    diverged is returned as it ended — both exactly what an uninterrupted run with the new
    budget gives (nothing depends on the budget but where training stops). A checkpoint past
    the new ``epochs`` is refused. The weights come from the checkpoint, not from ``model``.

    ``kp_decay``: the per-step Kolen–Pollack decay of ``B − W`` for ``kp`` layers (None: each layer's
    own, default :data:`prealign.feedback.KP_DECAY`; a model without ``kp`` layers raises).
    ``wm``: weight-mirror settings for ``wm`` layers, keyword arguments of :func:`prealign.set_wm`
    (``{"lr", "noise_std", "decay", "steps", "batch"}``; None: each layer's own, defaults in
    :mod:`prealign.feedback.wm`; a model without ``wm`` layers raises). Never raises on divergence.
    """
    from ..data.base import holdout_validation

    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"train() needs epochs >= 0, batch_size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    start = time.perf_counter()
    dev = resolve_device(device)
    model.to(dev)
    data = _move_data(data, dev)
    if kp_decay is not None:
        set_kp_decay(model, kp_decay)
    if wm is not None:
        set_wm(model, **wm)
    settings = checkpoint_settings(model, data, batch_size=batch_size, lr=lr, optimizer=optimizer,
                                   weight_decay=weight_decay, momentum=momentum, seed=seed, patience=patience,
                                   val_fraction=val_fraction)
    data = holdout_validation(data, val_fraction)
    xtr, ytr, xte, yte = data.x_train, data.y_train, data.x_test, data.y_test
    xva, yva = getattr(data, "x_val", None), getattr(data, "y_val", None)
    has_val = xva is not None
    n = len(xtr)
    if n == 0:
        raise ConfigError("train() got an empty training set")
    opt = _make_optimizer(optimizer, model.parameters(), lr, weight_decay, momentum)
    gen = torch.Generator().manual_seed(int(seed))
    # one fixed batch for gradient alignment, drawn from its own stream (does not move `gen`)
    grad_xy = gradient_batch(xtr, ytr, seed)
    step_cbs = [cb.on_step_end for cb in callbacks if hasattr(cb, "on_step_end")]
    epoch_cbs = [cb.on_epoch_end for cb in callbacks if hasattr(cb, "on_epoch_end")]
    ckpt = _as_checkpoint(checkpoint)

    res = TrainResult(selection="val" if has_val else "test")
    state = ckpt.load() if ckpt is not None else None
    bad_epochs, step, first_epoch = 0, 0, 0
    if state is not None:
        _check_resumable(ckpt, state, settings, epochs)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
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
        return measure_epoch(model, record, train=(xtr, ytr), val=(xva, yva) if has_val else None, test=(xte, yte),
                             grad_batch=grad_xy if grad_alignment else None, callbacks=epoch_cbs, data=data,
                             eval_batch_size=eval_batch_size)

    def save(epoch: int, done: bool = False) -> None:
        if ckpt is None:
            return
        ckpt.save({
            "format": CHECKPOINT_FORMAT, "key": None, "settings": settings,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
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

    model.train()
    if first_epoch == 0:
        record = measure(0, {"epoch": 0, "seconds": 0.0})
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
                for k in ("val_loss", "val_acc", "test_loss", "test_acc") if has_val else ("test_loss", "test_acc"):
                    record[k] = float("nan")
                res.curves.append(record)
                res.diverged, res.diverged_epoch = True, epoch
            else:
                measure(epoch, record)
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


__all__ = ["train", "TrainResult", "TensorData", "evaluate", "gradient_alignment", "measurement_guard",
           "FileCheckpoint", "read_checkpoint", "checkpoint_settings", "CHECKPOINT_FORMAT", "OPTIMIZERS"]
