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
fractions in [0, 1]. A NaN/inf loss, or a training loss beyond :data:`DIVERGENCE_RATIO` × its
start (:func:`divergence`), stops training: the run is marked diverged with the reason, that epoch
is recorded, the curves are kept, nothing is raised (IFA paper A.2.2).

The loop is :func:`train`: a few named steps over two small objects, a :class:`_Run` (what the
call fixed before its first epoch) and a :class:`_State` (what changes epoch to epoch — what a
checkpoint saves besides the weights, the optimizer and the random streams). Its neighbours:
:mod:`.batches` (the data), :mod:`.optimizers`, :mod:`.measure` (every measurement) and
:mod:`.checkpoint` (the file and what a resume must match).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..device import resolve_device
from ..errors import ConfigError
from ..feedback import set_kp_decay, set_wm
from ..feedback.rng import rules_rng_state, seed_rules, set_rules_rng_state
from ..feedback.wm import mirror_phases, set_mirror_phases
from ..progress import progress_bar
from ..seeding import global_stream, stream_seed
from .batches import Batches, TensorData, cast_inputs, model_dtype, move_data
from .checkpoint import (CHECKPOINT_FORMAT, FileCheckpoint, as_checkpoint, check_resumable, checkpoint_settings,
                         data_fingerprint, read_checkpoint)
from .measure import GRAD_BATCH, evaluate, gradient_alignment, gradient_batch, measure_epoch, measurement_guard
from .optimizers import OPTIMIZERS, make_optimizer, name_of, resolve_optimizer, resolve_scheduler

_check_resumable, _make_optimizer = check_resumable, make_optimizer  # the names batched.py and bench/ import

# A run has diverged once an epoch's training loss exceeds DIVERGENCE_RATIO × max(epoch-0 training
# loss, 1). Measured on digits (64-100-100-10 MLPs, bp/fa/dfa/brsf/kp, Adam 1e-4..1 and SGD
# 1e-2..1000, 15 epochs): every run at a usable rate (Adam ≤ 0.1, SGD ≤ 1 under bp) peaked at ≤ 20×
# its start; the runs past 10⁴× had blown up (losses 10⁴..10²⁹, e.g. SGD at lr 1000: 10²²×).
DIVERGENCE_RATIO = 1e4


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
    diverged_reason: str | None = None  # e.g. "non-finite training loss", "training loss 5e+16 > 1e+04 × ..."
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
            "best_test_acc", "best_epoch", "best_val_acc", "selection", "diverged", "diverged_epoch", "diverged_reason",
            "stopped_early",
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



@dataclass
class _Run:
    """What one :func:`train` call fixed before its first epoch; the steps read it, none changes it."""

    model: nn.Module
    device: torch.device
    epochs: int
    batch_size: int
    patience: int | None
    opt: torch.optim.Optimizer
    sched: Any  # the LR scheduler or None
    loss: Any  # the training loss, (output, target) -> batch mean
    loss_fn: Any  # the measured loss (None: cross-entropy, as :func:`evaluate` sums it)
    loader: Batches | None  # the training loader, or None on the tensor path
    x: torch.Tensor | None  # the tensor path's training inputs and targets
    y: torch.Tensor | None
    splits: tuple  # (train, validation or None, test): (x, y) pairs or Batches, as measure_epoch reads them
    data: Any  # what on_epoch_end callbacks get
    grad_batch: tuple | None  # the fixed batch of gradient alignment (None: not measured)
    order: torch.Generator  # the tensor path's batch order
    step_callbacks: list
    epoch_callbacks: list
    eval_batch_size: int
    divergence_ratio: float | None  # see divergence()
    settings: dict  # what a checkpoint must match (checkpoint_settings)
    checkpoint: Any  # None or an object with load() and save(dict)

    @property
    def has_val(self) -> bool:
        return self.splits[1] is not None

    def batches(self):
        """One epoch's training batches: the loader's, or slices of a fresh permutation from ``order``."""
        if self.loader is not None:
            yield from self.loader
            return
        n = len(self.x)
        perm = torch.randperm(n, generator=self.order).to(self.device)
        for i in range(0, n, self.batch_size):
            idx = perm[i:i + self.batch_size]
            yield self.x[idx], self.y[idx]

    def measure(self, record: dict) -> dict:
        """:func:`measure_epoch` into ``record``; reading a loader for it never moves the loader's order."""
        with contextlib.ExitStack() as stack:
            for split in self.splits if self.loader is not None else ():
                if split is not None:
                    stack.enter_context(split.preserved())
            train, val, test = self.splits
            return measure_epoch(self.model, record, train=train, val=val, test=test, grad_batch=self.grad_batch,
                                 callbacks=self.epoch_callbacks, data=self.data, eval_batch_size=self.eval_batch_size,
                                 loss_fn=self.loss_fn)


@dataclass
class _State:
    """What changes as the run goes: the result so far and the counters a checkpoint saves."""

    result: TrainResult
    epoch: int = -1  # the last completed epoch (0: the measurement before training; -1: not even that)
    bad_epochs: int = 0  # epochs since the selected one (the patience counter)
    step: int = 0  # optimizer steps taken

    def ended(self, epochs: int) -> bool:
        return self.result.diverged or self.result.stopped_early or self.epoch >= epochs


def train(model: nn.Module, data, *, epochs: int, batch_size: int = 64, lr: float | None = None, optimizer="adam",
          weight_decay: float | None = None, momentum: float | None = None, patience: int | None = None, seed: int = 0,
          device: str | torch.device = "auto", callbacks: Sequence[Any] = (), progress: bool | None = None,
          eval_batch_size: int = 4096, checkpoint=None, grad_alignment: bool = True, description: str = "train",
          val_fraction: float = 0.0, kp_decay: float | None = None, wm: dict | None = None, test=None, val=None,
          loss_fn=None, scheduler=None, divergence_ratio: float | None = DIVERGENCE_RATIO) -> TrainResult:
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
    loss, else the training loss); records then carry ``lr``, the first parameter group's rate that
    epoch trained with (read before its first step; epoch 0: the initial rate).

    ``epochs``: maximum epochs; ``patience``: stop once the selection accuracy has not improved for
    that many epochs (SPEC §4 "until convergence").

    ``seed`` alone fixes every random draw of the run (:mod:`prealign.seeding`): the batch
    permutation, the rules' per-step draws (brsf magnitudes, wm noise: :func:`prealign.seed_rules`
    ``(model, seed)``, left seeded afterwards), and everything else that draws from torch's global
    RNG — dropout, any module's own draws, a ``DataLoader``'s shuffling — which draws, for the
    call, from a stream of the seed on the CPU and the model's device. Whatever the caller did to
    the global RNG before, the same seed on the same machine gives identical curves and weights, and
    the caller's global RNG is exactly as it was when train() returns (or raises).

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
    does — the run's stream, checkpointed — or from ``torch.Generator`` objects the loader or its
    sampler hold, which are checkpointed and restored around measurements; other RNGs, e.g. numpy's
    in a custom dataset, are not), a
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
    :mod:`prealign.feedback.wm`; a model without ``wm`` layers raises).

    Divergence (:func:`divergence`): an epoch whose loss is not finite, or whose training loss
    exceeds ``divergence_ratio × max(epoch-0 training loss, 1)`` (default :data:`DIVERGENCE_RATIO`
    = 10⁴; None: only a non-finite loss), ends the run: ``diverged``, ``diverged_epoch`` and
    ``diverged_reason`` say when and why, the curves keep every epoch up to it (that one included),
    and the selected epoch is one before it. Never raises on divergence.
    """
    start = time.perf_counter()
    _check_arguments(epochs, batch_size, lr, optimizer, divergence_ratio)
    dev = resolve_device(device)
    with global_stream(stream_seed(seed, "modules"), dev):  # the caller's global RNG is back on return
        run = _setup(model, data, dev, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                     weight_decay=weight_decay, momentum=momentum, patience=patience, seed=seed, callbacks=callbacks,
                     eval_batch_size=eval_batch_size, checkpoint=checkpoint, grad_alignment=grad_alignment,
                     val_fraction=val_fraction, kp_decay=kp_decay, wm=wm, test=test, val=val, loss_fn=loss_fn,
                     scheduler=scheduler, divergence_ratio=divergence_ratio)
        state = _resume(run)
        if state.epoch < 0:
            _measure_initial(run, state)
            _checkpoint(run, state)
        with progress_bar(0 if state.ended(epochs) else epochs - state.epoch, description, enabled=progress) as bar:
            while not state.ended(epochs):
                record = _train_epoch(run, state)
                _measure(run, record)
                _select(run, state, record)
                _checkpoint(run, state)
                bar.advance(1, test_acc=record["test_acc"], loss=record["train_loss"])
    res = state.result
    res.epochs_run = res.curves[-1]["epoch"] if res.curves else 0
    res.seconds = time.perf_counter() - start
    return res


# -- the steps ------------------------------------------------------------------------------
def _check_arguments(epochs, batch_size, lr, optimizer, divergence_ratio) -> None:
    if epochs < 0 or batch_size < 1 or not (lr is None or lr > 0):
        raise ConfigError(f"train() needs epochs >= 0, batch_size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    if isinstance(optimizer, str) and optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    if divergence_ratio is not None and not divergence_ratio > 1:
        raise ConfigError(f"divergence_ratio must be > 1 (a bound on the training loss relative to its start) or None "
                          f"(only a non-finite loss diverges); got {divergence_ratio}")


def _setup(model: nn.Module, data, dev: torch.device, *, epochs, batch_size, lr, optimizer, weight_decay, momentum,
           patience, seed, callbacks, eval_batch_size, checkpoint, grad_alignment, val_fraction, kp_decay, wm, test, val,
           loss_fn, scheduler, divergence_ratio) -> _Run:
    """Move the model and the data to the device, give the rules their seeded streams, build the
    optimizer and scheduler, record what a checkpoint must match: the :class:`_Run` of this call.
    Runs inside the run's global stream (a shuffling loader's first batch, for gradient alignment)."""
    from ..data.base import holdout_validation

    model.to(dev)
    dtype = model_dtype(model)
    loader = not hasattr(data, "x_train")
    unverified = []
    if loader:
        if val_fraction:
            raise ConfigError("val_fraction splits prealign's tensor data; with a loader give the validation loader as val=")
        if test is None:
            raise ConfigError("train() on a loader needs test= (a loader or iterable of (x, y) test batches)")
        splits = (Batches(data, "training data", dev, dtype), None if val is None else Batches(val, "validation data", dev, dtype),
                  Batches(test, "test data", dev, dtype))
        data_record = " | ".join(b.describe() for b in (splits[0], splits[2], splits[1]) if b is not None)
        unverified.append("data (a loader: recorded by type and length, contents not fingerprinted)")
    else:
        if test is not None or val is not None:
            raise ConfigError("test= and val= go with a loader; prealign data brings its own test (and x_val/y_val) tensors")
        data = move_data(data, dev)
        data_record = data_fingerprint(data)
        data = cast_inputs(data, dtype)
    if kp_decay is not None:
        set_kp_decay(model, kp_decay)
    if wm is not None:
        set_wm(model, **wm)
    seed_rules(model, int(seed))  # brsf magnitudes, wm noise: per-layer streams on the layer's device
    opt, opt_record = resolve_optimizer(optimizer, model, lr, weight_decay, momentum)
    sched = resolve_scheduler(scheduler, opt)
    if not isinstance(optimizer, str):
        unverified.append("optimizer (an object or factory: recorded by class and defaults)")
    if loss_fn is not None:
        unverified.append("loss_fn (recorded by name)")
    if sched is not None:
        unverified.append("scheduler (recorded by class)")
    settings = checkpoint_settings(model, None, batch_size=batch_size, lr=1e-4 if lr is None else lr,
                                   optimizer=opt_record, weight_decay=weight_decay or 0.0, momentum=momentum or 0.0,
                                   seed=seed, patience=patience, val_fraction=val_fraction)
    settings["data"] = data_record
    if divergence_ratio != DIVERGENCE_RATIO:  # where the run stops (recorded only when not the default one)
        settings["divergence_ratio"] = divergence_ratio
    if loss_fn is not None or sched is not None or loader or not isinstance(optimizer, str):
        settings.update(loss_fn=None if loss_fn is None else name_of(loss_fn),
                        scheduler=None if sched is None else name_of(type(sched)), unverified="; ".join(unverified))
    x = y = None
    if not loader:
        data = holdout_validation(data, val_fraction)
        x, y = data.x_train, data.y_train
        has_val = getattr(data, "x_val", None) is not None
        splits = ((x, y), (data.x_val, data.y_val) if has_val else None, (data.x_test, data.y_test))
        if len(x) == 0:
            raise ConfigError("train() got an empty training set")
    grad_batch = None  # drawn from its own stream: does not move the batch order
    if grad_alignment:
        grad_batch = splits[0].first(GRAD_BATCH) if loader else gradient_batch(x, y, seed)
    model.train()
    return _Run(model=model, device=dev, epochs=epochs, batch_size=batch_size, patience=patience, opt=opt, sched=sched,
                loss=loss_fn or F.cross_entropy, loss_fn=loss_fn, loader=splits[0] if loader else None, x=x, y=y,
                splits=splits, data=data, grad_batch=grad_batch, order=torch.Generator().manual_seed(int(seed)),
                step_callbacks=[cb.on_step_end for cb in callbacks if hasattr(cb, "on_step_end")],
                epoch_callbacks=[cb.on_epoch_end for cb in callbacks if hasattr(cb, "on_epoch_end")],
                eval_batch_size=eval_batch_size, divergence_ratio=divergence_ratio, settings=settings,
                checkpoint=as_checkpoint(checkpoint))


def _resume(run: _Run) -> _State:
    """The run's state at its start: fresh, or where its checkpoint left it (weights, optimizer,
    scheduler, every random stream, curves and counters), so it goes on as if never interrupted."""
    state = _State(TrainResult(selection="val" if run.has_val else "test"))
    saved = run.checkpoint.load() if run.checkpoint is not None else None
    if saved is None:
        return state
    check_resumable(run.checkpoint, saved, run.settings, run.epochs)
    run.model.load_state_dict(saved["model"])
    run.opt.load_state_dict(saved["optimizer"])
    set_mirror_phases(run.model, saved.get("wm_phases", {}))
    if run.sched is not None:
        run.sched.load_state_dict(saved["scheduler"])
    for g, s in zip(run.loader.generators() if run.loader is not None else (), saved.get("loader_rng", ())):
        g.set_state(s)
    run.order.set_state(saved["generator"])
    set_rules_rng_state(run.model, saved.get("rules_rng", {}))  # (absent from a batched run's checkpoint)
    torch.set_rng_state(saved["torch_rng"])  # the run's global stream (global_stream), not the caller's
    if run.device.type == "cuda" and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], run.device)
    res = state.result
    res.curves = saved["curves"]
    res.best_test_acc, res.best_val_acc, res.best_epoch = saved["best_test_acc"], saved["best_val_acc"], saved["best_epoch"]
    res.train_seconds = saved["train_seconds"]
    res.diverged, res.diverged_epoch, res.stopped_early = saved["diverged"], saved["diverged_epoch"], saved["stopped_early"]
    res.diverged_reason = saved.get("diverged_reason")  # (absent from a batched run's checkpoint)
    state.epoch, state.bad_epochs, state.step = saved["epoch"], saved["bad_epochs"], saved["step"]
    return state


def _measure_initial(run: _Run, state: _State) -> None:
    """Epoch 0: the network before any data training, measured (training loss included) and judged."""
    record = run.measure({"epoch": 0, "seconds": 0.0, **_lr(run)})
    _select(run, state, record)


def _train_epoch(run: _Run, state: _State) -> dict:
    """One pass of optimizer steps over the training data. Returns the epoch's record so far: its
    training loss and accuracy are running means over its batches (read once, at the end)."""
    lr = _lr(run)  # read before the first step: the rate this epoch trains with
    t = time.perf_counter()
    loss_sum = torch.zeros((), device=run.device, dtype=torch.float64)
    correct = torch.zeros((), device=run.device, dtype=torch.int64)
    seen, classes = 0, True
    for xb, yb in run.batches():
        out = run.model(xb)
        loss = run.loss(out, yb)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        loss_sum += loss.detach().double() * len(yb)
        classes = classes and yb.dim() == 1 and not yb.is_floating_point() and out.dim() == 2
        if classes:
            correct += (out.detach().argmax(1) == yb).sum()
        seen += len(yb)
        state.step += 1
        for cb in run.step_callbacks:
            cb(state.step, run.model)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    seconds = time.perf_counter() - t
    state.result.train_seconds += seconds
    return {"epoch": state.epoch + 1, "seconds": seconds, **lr, "train_loss": float(loss_sum) / seen,
            "train_acc": int(correct) / seen if classes else float("nan")}


def _lr(run: _Run) -> dict:
    """``{"lr": the first parameter group's rate now}`` with a scheduler, else ``{}``."""
    return {} if run.sched is None else {"lr": float(run.opt.param_groups[0]["lr"])}


def _measure(run: _Run, record: dict) -> None:
    """The end-of-epoch measurements, then the scheduler's step (for the next epoch: the record's
    ``lr`` is the rate this epoch trained with); an epoch whose training loss is not finite is not
    measured (its losses and accuracies are NaN)."""
    if not math.isfinite(record["train_loss"]):
        for k in ("val_loss", "val_acc", "test_loss", "test_acc") if run.has_val else ("test_loss", "test_acc"):
            record[k] = float("nan")
        return
    run.measure(record)
    if run.sched is not None:
        if isinstance(run.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            run.sched.step(record["val_loss" if run.has_val else "train_loss"])
        else:
            run.sched.step()


def _select(run: _Run, state: _State, record: dict) -> None:
    """Add the measured epoch to the curves and judge it: divergence (:func:`divergence`), the
    selected epoch (best validation accuracy, else best test accuracy) and patience."""
    res, epoch = state.result, record["epoch"]
    res.curves.append(record)
    state.epoch = epoch
    reason = divergence(record, res.curves[0]["train_loss"], run.divergence_ratio)
    if epoch == 0 or reason is None:  # epoch 0 is the first selected epoch whatever it measured
        acc = record["val_acc" if run.has_val else "test_acc"]
        if not (res.best_val_acc if run.has_val else res.best_test_acc) >= acc:  # also true while the best is NaN
            res.best_test_acc, res.best_epoch, state.bad_epochs = record["test_acc"], epoch, 0
            if run.has_val:
                res.best_val_acc = acc
        else:
            state.bad_epochs += 1
    if reason is not None:
        res.diverged, res.diverged_epoch, res.diverged_reason = True, epoch, reason
    elif epoch > 0:
        res.stopped_early = run.patience is not None and state.bad_epochs >= run.patience


def divergence(record: dict, start_loss: float, ratio: float | None = DIVERGENCE_RATIO) -> str | None:
    """Why the epoch of ``record`` (a :func:`train` record) counts as diverged, or None: a loss that
    is not finite (training, validation or test), or — from epoch 1, unless ``ratio`` is None — a
    training loss above ``ratio × max(start_loss, 1)``, ``start_loss`` being the epoch-0 training
    loss (the floor of 1 keeps a run that starts near zero loss, e.g. a fine-tuned one, from
    diverging on an ordinary rise; cross-entropy at chance is ln C, 2.3 for 10 classes)."""
    for key, name in (("train_loss", "training"), ("val_loss", "validation"), ("test_loss", "test")):
        if key in record and not math.isfinite(record[key]):
            return f"non-finite {name} loss"
    loss = record["train_loss"]
    if ratio is not None and record["epoch"] > 0 and loss > ratio * max(start_loss, 1.0):
        return f"training loss {loss:.3g} > {ratio:g} × max(epoch-0 training loss {start_loss:.3g}, 1)"
    return None


def _checkpoint(run: _Run, state: _State) -> None:
    """Save everything a resume needs (layout: :class:`FileCheckpoint`), after every epoch."""
    if run.checkpoint is None:
        return
    res = state.result
    run.checkpoint.save({
        "format": CHECKPOINT_FORMAT, "key": None, "settings": run.settings,
        "model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "generator": run.order.get_state(),
        "wm_phases": mirror_phases(run.model),
        "scheduler": None if run.sched is None else run.sched.state_dict(),
        "loader_rng": [g.get_state() for g in run.loader.generators()] if run.loader is not None else [],
        "rules_rng": rules_rng_state(run.model), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
        "epoch": state.epoch, "curves": res.curves, "best_test_acc": res.best_test_acc,
        "best_val_acc": res.best_val_acc, "best_epoch": res.best_epoch, "selection": res.selection,
        "bad_epochs": state.bad_epochs, "step": state.step, "train_seconds": res.train_seconds,
        "done": state.ended(run.epochs), "diverged": res.diverged, "diverged_epoch": res.diverged_epoch,
        "diverged_reason": res.diverged_reason, "stopped_early": res.stopped_early,
    })


__all__ = ["train", "TrainResult", "divergence", "DIVERGENCE_RATIO", "TensorData", "Batches", "evaluate",
           "gradient_alignment", "measurement_guard", "FileCheckpoint", "read_checkpoint", "checkpoint_settings", "CHECKPOINT_FORMAT", "OPTIMIZERS"]
