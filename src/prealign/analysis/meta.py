"""Meta-loss during noise pretraining and task adaptation (noise paper D, Tables S10–S11; SPEC §5).

**Meta-loss** (MAML's definition, Finn et al. 2017, *measured only*): at a checkpoint, for each
task copy the network, adapt the copy for ``inner_steps`` (10) Adam steps at ``inner_lr`` (1e-3)
on a support batch of ``k`` (10) images per class from the task's training split, then measure
the copy's cross-entropy on a query batch of ``k`` images per class from the task's test split;
the meta-loss is the sum over tasks. The original network is never updated (the copies are
deep copies; the tests check the original's state bit for bit). Copies adapt under the network's
own rule (FA for a noise-pretrained FA network), as the network would learn.

Support and query batches are drawn once per tracker from a fixed seed, so every checkpoint is
scored on the same images and the curve shows the network changing, not the sample.

Tasks: the paper uses MNIST, Fashion-MNIST and Kuzushiji-MNIST. :func:`default_tasks` uses the
sets found here: ``mnist`` (else the always-present ``mnist5k``), ``fashion-mnist`` and ``kmnist``
when present. scikit-learn's UCI digits resized to 28×28 stand in for the first missing one,
named as such in every output; any further missing task is skipped, with a warning that names it
(a fresh machine has only ``mnist5k`` and ``digits``: two tasks).

**Task adaptation** (Table S11): full training of a copy on each task (5,000 training / 5,000
test images, 100 epochs, batch 64, Adam 1e-4 in the paper) with :func:`prealign.train`.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass
class Task:
    """A classification task: ``name`` and the data set it comes from (a :class:`prealign.data.Dataset`)."""

    name: str
    data: object


def _per_class(y: torch.Tensor, k: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of ``k`` random samples of every class (fewer where a class has fewer)."""
    idx = []
    for c in range(num_classes):
        members = torch.nonzero(y.cpu() == c).flatten()
        idx.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.cat(idx)


PAPER_TASKS = (("mnist", "mnist5k"), ("fashion-mnist",), ("kmnist",))  # noise paper D; alternatives in order


def default_tasks(train_size: int | None = None) -> list[Task]:
    """The noise paper's tasks that this machine has: MNIST (else MNIST-5k), Fashion-MNIST, KMNIST.

    UCI digits at 28×28 stand in for the first missing task (``"uci-digits-28 (stand-in for
    NAME)"``); every further missing task is left out and named in a ``UserWarning`` (with how to
    get it). ``train_size``: stratified subset of each training split (paper: 5,000); a split that
    is not larger is used whole. Returns 2 or 3 tasks, each ``1×28×28``, 10 classes."""
    import warnings

    from ..data import available, load

    tasks, missing = [], []
    for names in PAPER_TASKS:
        name = next((n for n in names if available(n)[0]), None)
        if name is None:
            missing.append(names[0])
            if len(missing) == 1:
                tasks.append(Task(f"uci-digits-28 (stand-in for {names[0]})", load("digits", size=28)))
        else:
            tasks.append(Task(name, load(name)))
    if len(missing) > 1:
        skipped = ", ".join(missing[1:])
        warnings.warn(f"meta-loss tasks: {skipped} not found on this machine, skipped (UCI digits stand in for "
                      f"{missing[0]}); get them with `prealign datasets fetch NAME`", UserWarning, stacklevel=2)
    if train_size is not None:
        tasks = [Task(t.name, t.data.subset(train_size, stratified=True, seed=0)) if train_size < len(t.data.y_train)
                 else t for t in tasks]
    return tasks


def meta_loss(model: nn.Module, tasks: Sequence[Task], *, inner_steps: int = 10, inner_lr: float = 1e-3, k: int = 10,
              seed: int = 0, batches: dict | None = None) -> dict[str, float]:
    """Sum over tasks of the query loss after adapting a *copy* of ``model`` on each task.

    Returns ``{task name: adapted query loss (nats), ..., "meta_loss": sum}``; ``model`` is left
    untouched. ``batches`` (from :func:`task_batches`) fixes the support/query images.
    """
    if inner_steps < 0 or not inner_lr > 0 or k < 1:
        raise ConfigError(f"meta-loss needs inner_steps >= 0, inner_lr > 0 and k >= 1 (got {inner_steps}, {inner_lr}, {k})")
    batches = batches or task_batches(tasks, k=k, seed=seed)
    device = next(model.parameters()).device
    out = {}
    for task in tasks:
        (xs, ys), (xq, yq) = batches[task.name]
        xs, ys, xq, yq = xs.to(device), ys.to(device), xq.to(device), yq.to(device)
        learner = copy.deepcopy(model)
        learner.train()
        opt = torch.optim.Adam(learner.parameters(), lr=inner_lr)
        for _ in range(inner_steps):
            loss = F.cross_entropy(learner(xs), ys)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        learner.eval()
        with torch.no_grad():
            out[task.name] = F.cross_entropy(learner(xq), yq).item()
    out["meta_loss"] = sum(out[t.name] for t in tasks)
    return out


def task_batches(tasks: Sequence[Task], *, k: int = 10, seed: int = 0) -> dict:
    """``{task name: ((x_support, y_support), (x_query, y_query))}``: ``k`` images per class from
    the training split (support) and from the test split (query), drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for task in tasks:
        d = task.data
        s = _per_class(d.y_train, k, d.num_classes, gen)
        q = _per_class(d.y_test, k, d.num_classes, gen)
        out[task.name] = ((d.x_train[s.to(d.x_train.device)], d.y_train[s.to(d.y_train.device)]),
                          (d.x_test[q.to(d.x_test.device)], d.y_test[q.to(d.y_test.device)]))
    return out


class MetaLossTracker:
    """Callback for :func:`prealign.pretrain_noise`: ``tracker(step, seen, model)`` appends
    ``{"step", "seen", <task>: loss, "meta_loss"}`` to ``history``. Use with ``callback_every``
    to choose the checkpoints; the same support/query images at every checkpoint."""

    def __init__(self, tasks: Sequence[Task], *, inner_steps: int = 10, inner_lr: float = 1e-3, k: int = 10, seed: int = 0):
        self.tasks, self.inner_steps, self.inner_lr, self.k = list(tasks), inner_steps, inner_lr, k
        self.batches = task_batches(self.tasks, k=k, seed=seed)
        self.history: list[dict] = []

    def __call__(self, step: int, seen: int, model: nn.Module) -> None:
        losses = meta_loss(model, self.tasks, inner_steps=self.inner_steps, inner_lr=self.inner_lr, k=self.k,
                           batches=self.batches)
        self.history.append({"step": int(step), "seen": int(seen), **losses})


def meta_loss_curve(model: nn.Module, tasks: Sequence[Task], *, noise_samples: int = 500_000, every: int = 50_000,
                    batch_size: int = 64, lr: float = 1e-4, generator: torch.Generator | None = None,
                    inner_steps: int = 10, inner_lr: float = 1e-3, k: int = 10, seed: int = 0,
                    progress: bool | None = None) -> list[dict]:
    """Noise-pretrain ``model`` in place (its current rule) for ``noise_samples`` and measure the
    meta-loss before the first step and every ``every`` samples. Returns the tracker history."""
    from ..pretrain import pretrain_noise

    if every < batch_size:
        raise ConfigError(f"meta-loss checkpoint spacing ({every} samples) must be at least one batch ({batch_size})")
    tracker = MetaLossTracker(tasks, inner_steps=inner_steps, inner_lr=inner_lr, k=k, seed=seed)
    tracker(0, 0, model)
    pretrain_noise(model, noise_samples, batch_size=batch_size, lr=lr, generator=generator, callback=tracker,
                   callback_every=max(1, every // batch_size), progress=progress)
    return tracker.history


def task_adaptation(model: nn.Module, tasks: Sequence[Task], *, epochs: int = 100, batch_size: int = 64, lr: float = 1e-4,
                    seed: int = 0, device: str = "auto", progress: bool | None = None) -> dict[str, list[dict]]:
    """Train a copy of ``model`` on every task (noise paper Table S11); ``{task: per-epoch curves}``
    (the trainer's records: epoch 0 before training, train/test loss and accuracy)."""
    from ..run.trainer import train

    out = {}
    for task in tasks:
        learner = copy.deepcopy(model)
        result = train(learner, task.data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                       progress=progress, grad_alignment=False, description=f"adapt {task.name}")
        out[task.name] = result.curves
    return out
