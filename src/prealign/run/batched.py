"""Many small runs of one MLP architecture trained side by side, each bitwise as if trained alone.

Sweeps in the papers are many small runs of the same network (seeds × methods × angles × variance
scales). On their own such runs are dominated by per-op overhead. :func:`train_runs` trains S of
them in one loop — one hand-written training step over activation stacks ``(S, N, features)``
(:class:`prealign.run.stacked.StackedMLP`), one optimizer step, one batch gather, element-wise
work done once for the whole stack — and gives every model exactly (bitwise) the numbers
:func:`prealign.train` gives it alone, so a batched sweep stores what separate runs store and a
run's numbers never depend on its group mates.

Bitwise equality holds by construction, not by luck of rounding (:mod:`prealign.run.stacked` says
how for the step: per-model GEMMs on 64-byte-aligned operands, stacked work only where it is one
IEEE operation per element or row-wise); around the step:

- the parameters are the models' own tensors under one optimizer: the fused Adam/AdamW/SGD kernels
  update each tensor on its own (fused SGD with momentum over a stacked tensor does *not* equal
  separate updates on this CPU: vector/scalar tails again); the rules' optimizer-step hooks update
  ``B`` under kp and wm per layer, as alone;
- measurements (evaluation, angles, gradient alignment) are the trainer's own public functions
  applied to each model;
- each model draws its batch order from ``torch.Generator().manual_seed(seed)`` and its gradient
  alignment batch from seed ``seed + 7919``, as :func:`prealign.train` does; rules that draw random
  numbers at each step (brsf, wm) draw from each layer's own stream (:func:`prealign.seed_rules`).

Results depend on the torch thread count exactly as the single trainer's do (a multi-threaded GEMM
may split its sums), so equality holds between runs under the same thread setting (a sweep's
workers use one thread each). Tested: records, summaries and weights bitwise equal to
:func:`prealign.train` for every rule, depths 1-4, every activation, and to the same run in another
group (``tests/test_batched.py``).

Usage::

    models = [pa.mlp([784, 100, 10], rule="fa", generator=torch.Generator().manual_seed(s)) for s in range(8)]
    results = pa.batched.train_runs(models, data, epochs=10, seeds=range(8), patience=3)  # = 8 prealign.train runs

Sweeps use :func:`train_runs` for groups of compatible runs (:mod:`prealign.run.sweep_batched`).

Shapes: activations ``(S, N, features)``; each model keeps its own ``W (out, in)``, ``b (out,)``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..data import holdout_validation
from ..device import resolve_device
from ..errors import ConfigError, PrealignError
from ..feedback import set_kp_decay, set_wm
from ..feedback.rng import rules_rng_state, seed_rules, set_rules_rng_state
from ..feedback.wm import mirror_phases, set_mirror_phases
from ..progress import progress_bar
from ..seeding import stream_seed
from .batches import TensorData, cast_inputs, model_dtype, move_data
from .checkpoint import CHECKPOINT_FORMAT, check_resumable, checkpoint_settings, data_fingerprint
from .measure import gradient_batch, measure_epoch
from .optimizers import make_optimizer
from .stacked import StackedMLP
from .trainer import DIVERGENCE_RATIO, TrainResult, divergence


def run_stream_state(seed: int, device: torch.device | None = None) -> torch.Tensor:
    """The state of the global stream :func:`prealign.train` runs ``seed`` inside
    (:func:`prealign.seeding.global_stream`) on the CPU, or on ``device``, as a run that draws
    nothing from it leaves it: freshly seeded. What a group member's checkpoint records, so that its
    lone resume continues exactly as its lone run would."""
    gen = torch.Generator(device=device if device is not None else "cpu")
    gen.manual_seed(stream_seed(seed, "modules"))
    return gen.get_state()


@contextmanager
def untouched_global_rng(device: torch.device) -> Iterator[None]:
    """Within the block nothing may draw from torch's global RNG (CPU, and ``device`` if CUDA): a
    group's models share it, where each lone run draws from a stream of its own. A draw is a
    one-line PrealignError after the block (the sweep then trains those runs alone), never a
    silently different result."""
    cuda = device.type == "cuda"
    before = torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None
    yield
    if not torch.equal(before[0], torch.get_rng_state()) or (cuda and not torch.equal(before[1], torch.cuda.get_rng_state(device))):
        raise PrealignError("a model drew from torch's global RNG during batched training (a module or rule drawing "
                            "outside its own stream), where its lone run draws from a stream of its own: train these "
                            "runs alone (batch_models off)")


def _train_epoch(stack: StackedMLP, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 gens: Sequence[torch.Generator], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of every stacked model: model ``s`` draws its order ``torch.randperm(N, generator=gens[s])``
    (CPU) and takes steps on the mean cross-entropy of its own batches of ``batch_size`` (``x``:
    ``(N, in)``). Returns the summed ``loss × batch size`` (float64) and correct counts (int64) over
    the epoch, ``(S,)`` on the CPU (one host sync), accumulated as :func:`prealign.train` accumulates them."""
    n, s = x.shape[0], len(gens)
    order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(x.device)  # (S, N)
    loss_sum = torch.zeros(s, dtype=torch.float64, device=x.device)
    correct = torch.zeros(s, dtype=torch.int64, device=x.device)
    for b0 in range(0, n, batch_size):
        idx = order[:, b0:b0 + batch_size]  # (S, B): model s's batch
        b = idx.shape[1]
        buf = stack.gather(x, idx)
        yb = y[idx]
        losses = stack.step(buf, buf.xs, yb)
        opt.step()
        loss_sum += losses.double() * b
        correct += (buf.z[-1][0][:, :b].argmax(-1) == yb).sum(1)
    return loss_sum.cpu(), correct.cpu()


# -------------------------------------------------------------------- S prealign.train runs in one
def _per_model(value, s: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != s:
            raise ConfigError(f"got {len(value)} values of {name} for {s} models; pass one per model (or one for all)")
        return list(value)
    return [value] * s


def _as_data(data):
    """``data`` as an object with ``x_train, y_train, x_test, y_test`` (a 4-tuple or dict becomes a TensorData)."""
    if isinstance(data, (tuple, list)):
        if len(data) != 4:
            raise ConfigError("data must be a Dataset or (x_train, y_train, x_test, y_test)")
        return TensorData(*data)
    if isinstance(data, dict):
        return TensorData(*(data.get(k) for k in ("x_train", "y_train", "x_test", "y_test")))
    return data


class _GroupStep:
    """The fused Adam/AdamW step of a group's optimizer without torch's per-parameter Python work.

    With S models a group's optimizer holds 4·S tensors; torch's step walks them in Python
    (``_init_group``) and bumps each step counter through ``_foreach_add_``'s per-tensor fallback on
    the CPU, about as long as the fused kernel itself. After one ordinary step this class keeps the
    lists and makes every parameter's ``state["step"]`` a view of one tensor: a step is then one
    ``add_`` on the counters and the fused kernel torch's step calls, with the same arguments
    (:func:`torch.optim.adam._fused_adam`), so the update is torch's, bitwise (every group test
    compares with :func:`prealign.train`'s torch optimizer). It is an ``Optimizer.step`` like any
    other: the step hooks (kp, wm) fire once around it. Anything else (a closure, a parameter
    without a gradient, AMSGrad, a tensor lr, another parameter list) takes torch's own step."""

    def step(self, closure=None):
        fast = self.__dict__.get("_group_fast")
        group = self.param_groups[0]
        if fast is not None and closure is None and len(self.param_groups) == 1 and fast[0] == tuple(map(id, group["params"])):
            grads = [p.grad for p in group["params"]]
            if not any(g is None for g in grads):  # (`None in grads` would compare tensors with None)
                ids, counters, steps, avgs, sqs = fast
                counters.add_(1)
                beta1, beta2 = group["betas"]
                kernel = torch._fused_adamw_ if group.get("decoupled_weight_decay") else torch._fused_adam_
                kernel(group["params"], grads, avgs, sqs, [], steps, amsgrad=False, lr=group["lr"], beta1=beta1,
                       beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], maximize=False, grad_scale=None,
                       found_inf=None)
                return None
        base = self._base.step  # torch's step, without the hook wrapper (this step's own wrapper ran the hooks)
        out = (base.__wrapped__ if getattr(base, "hooked", False) else base)(self, closure)
        self._keep_lists()
        return out

    def _keep_lists(self) -> None:
        group = self.param_groups[0]
        params = group["params"]
        plain = (len(self.param_groups) == 1 and group.get("fused") and not group["amsgrad"] and not group["maximize"]
                 and not group["capturable"] and not group["differentiable"] and not torch.is_tensor(group["lr"]))
        if not plain or any("step" not in self.state.get(p, {}) for p in params):
            self.__dict__["_group_fast"] = None
            return
        counters = torch.stack([self.state[p]["step"] for p in params])
        for p, view in zip(params, counters.unbind(0)):
            self.state[p]["step"] = view
        self.__dict__["_group_fast"] = (tuple(map(id, params)), counters, [self.state[p]["step"] for p in params],
                                        [self.state[p]["exp_avg"] for p in params],
                                        [self.state[p]["exp_avg_sq"] for p in params])


class _GroupAdam(_GroupStep, torch.optim.Adam):
    _base = torch.optim.Adam


class _GroupAdamW(_GroupStep, torch.optim.AdamW):
    _base = torch.optim.AdamW


def _group_optimizer(name: str, params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """The optimizer :func:`prealign.run.optimizers.make_optimizer` makes, for a group: fused Adam and
    AdamW as :class:`_GroupStep` (the same update, less Python per step)."""
    opt = make_optimizer(name, params, lr, weight_decay, momentum)
    fast = {torch.optim.Adam: _GroupAdam, torch.optim.AdamW: _GroupAdamW}.get(type(opt))
    if fast is None or not opt.defaults.get("fused"):
        return opt
    return fast(opt.param_groups[0]["params"], lr=lr, weight_decay=weight_decay, fused=True)  # as make_optimizer


def _optimizer_over(params: list[torch.Tensor], opt, make_opt):
    """An optimizer over ``params`` carrying their state from ``opt`` (the state tensors are shared)."""
    new = make_opt(params)
    for p in params:
        if p in opt.state:
            new.state[p] = opt.state[p]
    return new


def _model_optimizer_state(model: nn.Module, opt, make_opt) -> dict:
    """``state_dict()`` of the optimizer :func:`prealign.train` would hold for ``model``: the same
    optimizer over ``model.parameters()`` carrying their state from ``opt`` (step counters copied:
    a group's are views of one tensor)."""
    params = list(model.parameters())
    lone = make_opt(params)
    for p in params:
        if p in opt.state:
            lone.state[p] = {k: v.clone() if k == "step" and torch.is_tensor(v) else v for k, v in opt.state[p].items()}
    return lone.state_dict()


def train_runs(models: Sequence[nn.Module], data, *, epochs: int | Sequence[int], seeds: Sequence[int],
               patience: int | None | Sequence[int | None] = None, batch_size: int = 64, lr: float = 1e-4,
               optimizer: str = "adam", weight_decay: float = 0.0, momentum: float = 0.0, val_fraction: float = 0.0,
               device: str | torch.device = "auto", grad_alignment: bool = True, eval_batch_size: int = 4096,
               checkpoints: Sequence | None = None, callbacks: Sequence[Sequence] | None = None,
               on_done=None, progress: bool | None = None, description: str = "batched runs",
               kp_decay: float | None | Sequence[float | None] = None,
               wm: dict | None | Sequence[dict | None] = None,
               divergence_ratio: float | None = DIVERGENCE_RATIO) -> list[TrainResult]:
    """S :func:`prealign.train` runs (MLPs of one architecture, any rules; :class:`~prealign.run.stacked.StackedMLP`) trained side by side.

    Returns, bitwise, what ``[train(models[s], data, epochs=epochs[s], patience=patience[s],
    seed=seeds[s], val_fraction=val_fraction, ...) for s in range(S)]`` returns (see the module
    docstring; wall times aside): the per-epoch records (``epoch``, ``seconds``, ``train_loss``,
    ``train_acc``, with validation ``val_loss``, ``val_acc``, then ``test_loss``, ``test_acc``,
    ``angle/<layer>`` and, with ``grad_alignment``, ``grad_angle/<layer>`` in degrees,
    ``eval_seconds``; epoch 0 = before training), model selection, early stopping (``patience``),
    divergence (a NaN/inf loss stops that model only), and the trained weights in ``models[s]``
    (updated in place; those of the epoch where *its* run stops).

    Validation (``val_fraction > 0``): the data goes through
    :func:`prealign.data.holdout_validation` (a fixed seed-0 split of the training set, the same for
    every run); the selected epoch (``best_epoch``) is the best validation accuracy, ``best_test_acc``
    the test accuracy at that epoch, ``best_val_acc`` the validation accuracy there, patience counts
    validation epochs, ``selection = "val"``; without, selection is on the test accuracy (the
    papers' protocol, ``selection = "test"``).

    ``epochs`` and ``patience`` may differ per model (a sequence, one per model): a model whose run
    ends leaves the stack, so the others go on at S−1 models' cost.

    ``checkpoints[s]``: None or an object with ``save(state)`` (and optionally ``load()``, e.g. a
    :class:`prealign.run.trainer.FileCheckpoint` or a store's checkpointer); after every epoch of model
    ``s`` it gets the state :func:`prealign.train` saves (model, optimizer of the same kind over that
    model's parameters, batch-order generator, RNG, curves, counters), so a run resumes under either
    trainer. A checkpoint that ``load()`` returns is resumed here, as :func:`prealign.train` resumes
    it (models of one group may resume from different epochs). ``callbacks[s]``: objects with
    ``on_epoch_end(epoch, model, data, record)``; ``on_step_end`` is not supported (raises
    PrealignError). ``on_done(s, result)`` is called as soon as model ``s``'s run ends (its result
    complete), while the others may go on. ``optimizer``: adam, adamw or sgd (with ``momentum``), the
    trainer's optimizers. ``kp_decay`` and ``wm`` (one value for all or one per model): as
    :func:`prealign.train`'s, applied to each model before it trains. Per-epoch ``seconds`` are each
    model's share of the stacked epoch's wall time; ``eval_seconds`` its own measurements.
    """
    models = list(models)
    s = len(models)
    if s == 0:
        raise ConfigError("train_runs needs at least one model")
    epochs_of = [int(e) for e in _per_model(epochs, s, "epochs")]
    patience_of = _per_model(patience, s, "patience")
    seeds = [int(v) for v in seeds]
    if len(seeds) != s:
        raise ConfigError(f"got {len(seeds)} seeds for {s} models; pass one seed per model")
    if min(epochs_of) < 0 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"train_runs needs epochs >= 0, batch_size >= 1 and lr > 0 (got {epochs}, {batch_size}, {lr})")
    checkpoints = list(checkpoints) if checkpoints is not None else [None] * s
    callbacks = [list(c) for c in callbacks] if callbacks is not None else [[] for _ in range(s)]
    if len(checkpoints) != s or len(callbacks) != s:
        raise ConfigError(f"pass one checkpoint and one callback list per model ({s})")
    for cbs in callbacks:
        for cb in cbs:
            if hasattr(cb, "on_step_end"):
                raise PrealignError(f"batched runs cannot call on_step_end ({type(cb).__name__}); "
                                    f"train this run with prealign.train instead")
    start = time.perf_counter()
    dev = resolve_device(device)
    data = _as_data(data)
    if any(getattr(data, k, None) is None for k in ("x_train", "y_train", "x_test", "y_test")):
        raise ConfigError("train_runs needs data with x_train, y_train, x_test, y_test tensors")
    data = move_data(data, dev)
    data_record = data_fingerprint(data)  # what a checkpoint must match, as in train()
    data = holdout_validation(cast_inputs(data, model_dtype(models[0])), val_fraction)
    for m, decay, mirror, seed in zip(models, _per_model(kp_decay, s, "kp_decay"), _per_model(wm, s, "wm"), seeds):
        m.to(dev)
        if decay is not None:
            set_kp_decay(m, decay)
        if mirror is not None:
            set_wm(m, **mirror)
        seed_rules(m, seed)  # brsf magnitudes, wm noise: the layer streams train(seed=seed) gives them
    settings = []
    for m, seed, pat in zip(models, seeds, patience_of):
        settings.append(checkpoint_settings(m, None, batch_size=batch_size, lr=lr, optimizer=optimizer,
                                            weight_decay=weight_decay, momentum=momentum, seed=seed, patience=pat,
                                            val_fraction=val_fraction) | {"data": data_record})
        if divergence_ratio != DIVERGENCE_RATIO:
            settings[-1]["divergence_ratio"] = divergence_ratio
    xtr, ytr, xte, yte = data.x_train, data.y_train, data.x_test, data.y_test
    has_val = getattr(data, "x_val", None) is not None
    splits = ((xtr, ytr), (data.x_val, data.y_val) if has_val else None, (xte, yte))
    n = len(xtr)
    if n == 0:
        raise ConfigError("train_runs got an empty training set")
    StackedMLP(models)  # a model that cannot train in a stack is refused here, before anything runs
    x_flat = xtr.reshape(n, -1)

    def make_opt(params):
        return _group_optimizer(optimizer, params, lr, weight_decay, momentum)

    opt = make_opt([p for m in models for p in m.parameters()])
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    results = [TrainResult(selection="val" if has_val else "test") for _ in range(s)]
    last = [-1] * s  # the last completed epoch of each run (0: measured before training; -1: not even that)
    bad, steps = [0] * s, [0] * s
    grad_batches = {}
    for j, ckpt in enumerate(checkpoints):
        saved = ckpt.load() if ckpt is not None and hasattr(ckpt, "load") else None
        if saved is None:
            continue
        check_resumable(ckpt, saved, settings[j], epochs_of[j])
        models[j].load_state_dict(saved["model"])
        model_opt = make_opt(models[j].parameters())
        model_opt.load_state_dict(saved["optimizer"])
        for p in models[j].parameters():
            if p in model_opt.state:
                opt.state[p] = model_opt.state[p]
        set_mirror_phases(models[j], saved.get("wm_phases", {}))
        gens[j].set_state(saved["generator"])
        set_rules_rng_state(models[j], saved.get("rules_rng", {}))
        res = results[j]
        res.curves = saved["curves"]
        res.best_test_acc, res.best_val_acc, res.best_epoch = saved["best_test_acc"], saved["best_val_acc"], saved["best_epoch"]
        res.train_seconds = saved["train_seconds"]
        res.diverged, res.diverged_epoch, res.stopped_early = saved["diverged"], saved["diverged_epoch"], saved["stopped_early"]
        res.diverged_reason = saved.get("diverged_reason")
        last[j], bad[j], steps[j] = saved["epoch"], saved["bad_epochs"], saved["step"]

    def ended(j: int) -> bool:  # as train(): only epochs may grow
        return results[j].diverged or results[j].stopped_early or last[j] >= epochs_of[j]

    def measure(j: int, record: dict) -> None:
        """The trainer's measurements of model j (:func:`prealign.run.measure.measure_epoch`)."""
        if record["epoch"] > 0 and not math.isfinite(record["train_loss"]):  # not measured, as in train()
            for k in ("val_loss", "val_acc", "test_loss", "test_acc") if has_val else ("test_loss", "test_acc"):
                record[k] = float("nan")
            return
        if grad_alignment and j not in grad_batches:
            grad_batches[j] = gradient_batch(xtr, ytr, seeds[j])
        measure_epoch(models[j], record, train=splits[0], val=splits[1], test=splits[2], grad_batch=grad_batches.get(j),
                      data=data, eval_batch_size=eval_batch_size,
                      callbacks=[cb.on_epoch_end for cb in callbacks[j] if hasattr(cb, "on_epoch_end")])

    def select(j: int, record: dict) -> None:
        """Add the measured epoch to model j's curves and judge it, as train() does: divergence
        (:func:`prealign.run.trainer.divergence`), the selected epoch, patience."""
        res, epoch = results[j], record["epoch"]
        res.curves.append(record)
        last[j] = epoch
        reason = divergence(record, res.curves[0]["train_loss"], divergence_ratio)
        if epoch == 0 or reason is None:  # epoch 0 is the first selected epoch whatever it measured
            acc = record["val_acc" if has_val else "test_acc"]
            if not (res.best_val_acc if has_val else res.best_test_acc) >= acc:  # also true while the best is NaN
                res.best_test_acc, res.best_epoch, bad[j] = record["test_acc"], epoch, 0
                if has_val:
                    res.best_val_acc = acc
            else:
                bad[j] += 1
        if reason is not None:
            res.diverged, res.diverged_epoch, res.diverged_reason = True, epoch, reason
        elif epoch > 0:
            res.stopped_early = patience_of[j] is not None and bad[j] >= patience_of[j]

    def save(j: int) -> None:
        if checkpoints[j] is None:
            return
        res = results[j]
        checkpoints[j].save({  # the layout of prealign.run.checkpoint.FileCheckpoint, as train() writes it
            "format": CHECKPOINT_FORMAT, "key": None, "settings": settings[j],
            "model": models[j].state_dict(), "optimizer": _model_optimizer_state(models[j], opt, make_opt),
            "generator": gens[j].get_state(), "wm_phases": mirror_phases(models[j]), "scheduler": None,
            "loader_rng": [], "rules_rng": rules_rng_state(models[j]),
            "torch_rng": run_stream_state(seeds[j]), "cuda_rng": run_stream_state(seeds[j], dev) if dev.type == "cuda" else None,
            "epoch": last[j], "curves": res.curves, "best_test_acc": res.best_test_acc,
            "best_val_acc": res.best_val_acc, "best_epoch": res.best_epoch, "selection": res.selection,
            "bad_epochs": bad[j], "step": steps[j], "train_seconds": res.train_seconds, "done": ended(j),
            "diverged": res.diverged, "diverged_epoch": res.diverged_epoch, "diverged_reason": res.diverged_reason,
            "stopped_early": res.stopped_early,
        })

    def finish(j: int) -> None:
        res = results[j]
        res.epochs_run = res.curves[-1]["epoch"] if res.curves else 0
        if on_done is not None:
            on_done(j, res)

    setup = (time.perf_counter() - start) / s  # each model's share of building the stack
    for res in results:
        res.seconds = setup
    for j in range(s):
        if last[j] < 0:  # epoch 0: the network before any data training, measured and judged
            record = {"epoch": 0, "seconds": 0.0}
            measure(j, record)
            results[j].seconds += record["eval_seconds"]
            select(j, record)
            save(j)
        if ended(j):
            finish(j)
    active = [j for j in range(s) if not ended(j)]
    stack = StackedMLP([models[j] for j in active]).train() if active else None
    if active and len(active) < s:
        opt = _optimizer_over(stack.parameters(), opt, make_opt)
    with progress_bar(max([epochs_of[j] - last[j] for j in active], default=0), description, enabled=progress) as bar:
        while active:
            t = time.perf_counter()
            with untouched_global_rng(dev):
                loss_sum, correct = _train_epoch(stack, opt, x_flat, ytr, [gens[j] for j in active], batch_size)
            share = (time.perf_counter() - t) / len(active)
            keep = []
            for position, j in enumerate(active):
                res = results[j]
                steps[j] += -(-n // batch_size)
                res.train_seconds += share
                record = {"epoch": last[j] + 1, "seconds": share, "train_loss": float(loss_sum[position]) / n,
                          "train_acc": int(correct[position]) / n}
                measure(j, record)
                res.seconds += share + record.get("eval_seconds", 0.0)
                select(j, record)
                save(j)
                if ended(j):
                    finish(j)
                else:
                    keep.append(position)
            bar.advance(1, models=len(active))
            if len(keep) < len(active):
                active = [active[p] for p in keep]
                if keep:
                    stack = stack.select(keep)
                    opt = _optimizer_over(stack.parameters(), opt, make_opt)
    return results


def train_batched(models: Sequence[nn.Module], data, *, epochs: int, batch_size: int = 64, lr: float = 1e-4,
                  seeds: Sequence[int] | None = None, optimizer: str = "adam", weight_decay: float = 0.0,
                  momentum: float = 0.0, device: str | torch.device = "auto", eval_batch_size: int = 4096,
                  progress: bool | None = None) -> list[list[dict]]:
    """Train ``models`` side by side (:func:`train_runs` without gradient alignment, validation or
    early stopping); return their curves (per-epoch records of :func:`prealign.train`). Seeds
    default to 0 for every model. The trained weights stay in ``models``."""
    seeds = [0] * len(models) if seeds is None else list(seeds)
    results = train_runs(models, data, epochs=epochs, seeds=seeds, batch_size=batch_size, lr=lr, optimizer=optimizer,
                         weight_decay=weight_decay, momentum=momentum, device=device, grad_alignment=False,
                         eval_batch_size=eval_batch_size, progress=progress, description=f"batched training ×{len(models)}")
    return [r.curves for r in results]


def pretrain_noise_batched(models: Sequence[nn.Module], generators: Sequence[torch.Generator | None], samples: int, *,
                           batch_size: int = 64, lr: float = 1e-4, distribution: str = "gaussian",
                           std: float = 1.0) -> float:
    """S :func:`prealign.pretrain_noise` runs (MLPs of one architecture, any rules :class:`StackedMLP` takes) side by side.

    Model ``s`` sees the noise :func:`prealign.pretrain_noise` would draw for it with
    ``generator=generators[s]`` (its own noise stream, seeded from that generator the same way; labels
    uniform over the classes) under the same Adam at ``lr`` over its own parameters, so each model
    ends bitwise where its own ``pretrain_noise(models[s], samples, ...)`` ends (tested). The models
    are trained in place; returns the wall time in seconds (noise paper A.1, B.8).
    """
    from ..pretrain import check_noise_options, infer_io, noise_batch, noise_seed

    check_noise_options(distribution, samples, batch_size)
    models = list(models)
    if len(generators) != len(models):
        raise ConfigError(f"pass one generator per model ({len(models)})")
    start = time.perf_counter()
    shape, classes = infer_io(models[0])
    param = next(models[0].parameters())
    device, dtype = param.device, param.dtype
    streams = []
    for m, g in zip(models, generators):  # each model's own noise and rule streams, as pretrain_noise seeds them
        seed = noise_seed(g)
        streams.append(torch.Generator(device=device).manual_seed(seed))
        seed_rules(m, stream_seed(seed, "noise rules"))
    stack = StackedMLP(models)
    opt = torch.optim.Adam(stack.parameters(), lr=lr)  # the optimizer pretrain_noise uses, each tensor on its own
    was_training = [m.training for m in models]
    stack.train()
    seen = 0
    with untouched_global_rng(device):  # pretrain_noise draws nothing from its global stream for an MLP
        for _ in range(math.ceil(samples / batch_size)):
            n = min(batch_size, samples - seen)
            xs, ys = zip(*(noise_batch(n, shape, classes, gen, device, dtype, distribution, std) for gen in streams))
            stack.step(stack.buffers(n), [x.reshape(n, -1) for x in xs], torch.stack(ys))
            opt.step()
            seen += n
    for m, mode in zip(models, was_training):
        m.train(mode)
    return time.perf_counter() - start


__all__ = ["StackedMLP", "pretrain_noise_batched", "train_batched", "train_runs"]
