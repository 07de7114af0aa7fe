"""Batched sweeps: groups of compatible runs trained side by side (issue 8), each bitwise as alone.

Many runs of a sweep differ only in what :func:`prealign.run.batched.train_runs` can vary per model
(seed, method among bp/fa/ifa/rnp, alignment angle, noise pretraining, init scales, epochs,
patience). :func:`group_key` says which configs may share one batched training;
:func:`plan` cuts a sweep's pending configs into groups; :func:`train_group_task` is the sweep
worker that trains one group and stores every run exactly as :func:`prealign.run.config.run` would:
status, per-epoch records with the same keys and the same numbers, bitwise (wall times aside),
summary (``best_test_acc``, ``best_epoch``, ``epochs_run``, ``diverged``, ``noise_seconds`` ...),
final weights, and a :func:`prealign.train`-compatible checkpoint after every epoch (so
``store.load_model(run_id)`` works, and a group killed mid-way resumes each of its runs from its
last epoch, in a group again or alone, with the numbers of an uninterrupted run).

Because a batched run equals its separate run bit for bit (:mod:`prealign.run.batched` says how, and
``tests/test_batched.py`` checks it), grouping is invisible in the results: a run's stored numbers
depend on its key (and, as for any run, on the machine and torch thread count), never on which
other runs shared its group. ``batch_models`` changes only the wall time.

Batchable (:func:`group_key` is not None; else :func:`alone_reason` says why, one line) — all of:

- ``model = "mlp"`` (any depth, widths and activation) under any rule: bp, fa, ifa/ifa@θ, rnp, dfa,
  usf, brsf, frsf, kp, wm (brsf's and wm's per-step draws come from per-layer streams seeded from
  the run's seed, :func:`prealign.seed_rules`, alone and in a group alike); IFA, RNP and noise
  warm-ups (``X+noise``) are a one-time preparation,
  done per model before training with the same seeds and generators as
  :func:`prealign.run.config.run`; the noise pretraining is itself batched across the group's
  members with equal noise settings, each model on its own noise stream. Not batchable: lenet,
  alexnet and other convolutional or custom models;
- every RunConfig field this module does not know is at its default (a field added later is never
  silently ignored);
- the sweep runs the plain training task (no trainer callbacks such as Hessian or trajectory
  trackers: they need every step or the exact RNG stream of a lone run).

Configs are grouped when they agree on everything the models share in one training loop: data set,
``train_subset``, ``val_fraction`` (one validation split, one training set), ``hidden``,
``activation``, ``batch_size``, ``lr``, ``optimizer``, ``weight_decay``, ``momentum``,
``grad_alignment``, ``device``. ``epochs`` and ``patience`` may differ: each model's run ends at its
own epoch (it leaves the stack) and is stored finished at once; so may the method and its options
(angle, noise, ``alpha_*``, ``kp_decay``, ``wm_*``) and the seed.

:func:`pack` cuts a sweep into groups and says which runs train alone and why;
:func:`describe_packing` is the line a sweep logs about it.

Per-epoch ``seconds`` and the summary's ``seconds`` of a batched run are its share of the batched
wall time (the group's time divided by the models trained in it); ``eval_seconds`` its own.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Sequence

DEFAULT_GROUP = 8  # models per batched training (re-measured for issue 22: BENCHMARKS.md, batched section)
MAX_GROUP = 256  # the largest group size --batch-models accepts (a group's stacks grow with it)
# "auto" on a CPU batches only networks this small (multiply-adds per model and training step,
# batch_size x sum(in x out)); measured with the stacked engine (issue 22): 8 models, 1 thread, one
# epoch of 1,024 mnist5k images with the epoch-0 and epoch-1 evaluations, process CPU time, median
# of 4 interleaved repetitions, sequential/batched: 1.48x at 5.1M (784-100-10, batch 64), 1.35x at
# 15M (784-128-128-10, 128), 1.10x at 34M (784-256-256-10, 128), 1.03x at 86M (784-512-512-10, 128),
# 0.85x at 238M (784-1024-1024-10, 128): large networks are bound by the same GEMMs in a group as
# alone, and a group's models evict each other's weights from the cache.
AUTO_MAX_MACS = 40_000_000
BATCH_OPTIMIZERS = ("adam", "adamw", "sgd")
# RunConfig fields by how a batched group treats them
SHARED_FIELDS = ("dataset", "train_subset", "model", "hidden", "activation", "batch_size", "lr", "optimizer",
                 "weight_decay", "momentum", "val_fraction", "grad_alignment", "device")
PER_MODEL_FIELDS = ("method", "angle", "noise_samples", "alpha_w", "alpha_b", "same_init", "epochs", "patience", "seed",
                    "noise_batch_size", "noise_lr", "noise_distribution", "noise_std", "name", "tensorboard",
                    "kp_decay", "wm_lr", "wm_noise_std", "wm_decay", "wm_steps", "wm_batch", "wm_noise", "wm_every")
GROUP_TASK = "prealign.run.sweep_batched:train_group_task"


def alone_reason(config) -> str | None:
    """Why ``config`` (a RunConfig) must train alone, in a few words, or None when it may share a
    batched training (see the module docstring for the rule)."""
    from .config import RunConfig

    if not isinstance(config, RunConfig):
        return "not a RunConfig"
    if config.model != "mlp":
        return f"model {config.model} is not an MLP (groups stack MLPs)"
    if config.optimizer not in BATCH_OPTIMIZERS:
        return f"optimizer {config.optimizer} has no batched form"
    for f in dataclasses.fields(RunConfig):
        if f.name in SHARED_FIELDS or f.name in PER_MODEL_FIELDS:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if getattr(config, f.name) != default:
            return f"{f.name} = {getattr(config, f.name)!r} is not a setting groups know"
    return None


def item_alone_reason(item) -> str:
    """Why a sweep item that is not a plain run (its task attaches trackers, or is a task of its own)
    trains alone, in a few words."""
    track = [t.get("kind", "?") for t in getattr(item, "track", None) or () if isinstance(t, dict)]
    if track:
        return f"trackers ({', '.join(track)}) follow every training step of a lone run"
    return "its task is not the plain training task"


def group_key(config) -> tuple | None:
    """The key under which ``config`` (a RunConfig) may share a batched training, or None if it must
    train alone (:func:`alone_reason` says why)."""
    if alone_reason(config) is not None:
        return None
    return tuple((name, tuple(v) if isinstance(v, list) else v) for name, v in
                 ((name, getattr(config, name)) for name in SHARED_FIELDS))


def resolve_batch(batch_models) -> tuple[int, bool]:
    """``batch_models`` → ``(largest group size, auto)``; size 0 = no batching.

    ``"auto"``/``True``/``None``: groups of :data:`DEFAULT_GROUP` where batching wins (:func:`wins`);
    ``False``/``"off"``/``1``: every run alone; an int ``2 <= G <=`` :data:`MAX_GROUP`: every batchable
    config, groups of at most ``G``. Anything else (``0``, negative, too large, not a number) is a
    one-line PrealignError."""
    from ..errors import PrealignError

    if batch_models is None or batch_models is True or (isinstance(batch_models, str) and batch_models.lower() in ("auto", "on")):
        return DEFAULT_GROUP, True
    if batch_models is False or (isinstance(batch_models, str) and batch_models.lower() in ("off", "no", "false")):
        return 0, False
    try:
        size = int(str(batch_models).strip()) if not isinstance(batch_models, float) else -1
    except (TypeError, ValueError):
        size = -1
    if not 1 <= size <= MAX_GROUP:
        raise PrealignError(f"--batch-models must be auto, off or a group size from 1 (each run alone) to {MAX_GROUP}, "
                            f"got {batch_models!r}")
    return (size if size >= 2 else 0), False


def step_macs(config) -> int | None:
    """Multiply-adds of one training step's forward pass of ``config``'s MLP (``batch_size × Σ in·out``),
    from the data set's registered shape; None for a data set without one."""
    from ..data.registry import DATASETS

    spec = DATASETS.get(config.dataset)
    if spec is None:
        return None
    dims = [math.prod(spec.shape), *config.hidden, spec.num_classes]
    return config.batch_size * sum(a * b for a, b in itertools.pairwise(dims))


def wins(config) -> bool:
    """Whether ``batch_models="auto"`` batches this (batchable) config: on a CPU when the network is small
    enough that per-op overhead, which batching removes, is a large part of a step (:data:`AUTO_MAX_MACS`,
    measured); on a GPU always (a small run there is bound by kernel launches, which batching divides by
    the group size — the reason, not a measurement: no GPU was available to measure it)."""
    from ..device import resolve_device
    from ..errors import PrealignError

    try:
        device = resolve_device(config.device)
    except PrealignError:
        return False  # the run itself will report the device problem
    if device.type == "cuda":
        return True
    macs = step_macs(config)
    return macs is not None and macs <= AUTO_MAX_MACS


def run_cost(config) -> float:
    """Samples one run passes through its network: ``epochs × training-set size + noise samples``
    (training and noise steps cost the same per sample for one architecture). The training-set size
    is ``train_subset`` or the data set's registered size (1 if unknown: then epochs alone count)."""
    from ..data.registry import DATASETS

    spec = DATASETS.get(config.dataset)
    n = config.train_subset or (spec.sizes[0] if spec is not None and spec.sizes else 1)
    return config.epochs * n + (config.noise_samples or 0)


def _balanced(items: list[int], costs: list[float], parts: int, cap: int) -> list[list[int]]:
    """``items`` dealt into ``parts`` groups of at most ``cap`` with nearly equal total cost: most
    expensive first, each to the cheapest group with room (greedy longest-processing-time), so the
    workers finish together. Groups keep the items' original order."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    load = [0.0] * parts
    for k in sorted(range(len(items)), key=lambda k: -costs[k]):
        g = min((g for g in range(parts) if len(groups[g]) < cap), key=lambda g: (load[g], len(groups[g]), g))
        groups[g].append(k)
        load[g] += costs[k]
    return [[items[k] for k in sorted(group)] for group in groups if group]


@dataclasses.dataclass
class Packing:
    """How a sweep's pending configs are dispatched: ``units`` (lists of indices into the configs; a
    list of one is a plain run, longer ones are batched groups, in the order of their first config)
    and, for every config that trains alone, ``alone[index]``: why, in a few words."""

    units: list[list[int]]
    alone: dict[int, str]

    @property
    def groups(self) -> list[list[int]]:
        return [u for u in self.units if len(u) > 1]


def pack(configs: Sequence, group_size: int, workers: int = 1, auto: bool = False,
         reasons: Sequence[str | None] | None = None) -> Packing:
    """Cut a sweep into dispatch units (``configs``: RunConfigs, or None for "never batch" with
    ``reasons[i]`` saying why). The ``n`` batchable configs of one :func:`group_key` are cut into
    ``ceil(n / group_size)`` groups, rounded up to a multiple of ``workers`` (so the workers finish
    together) while every group keeps at least 2 configs; a group of one is a plain run. ``auto``:
    only configs where batching :func:`wins` are grouped. ``group_size < 2``: every config alone."""
    alone: dict[int, str] = {}
    if group_size < 2:
        return Packing([[i] for i in range(len(configs))], {i: "batching is off" for i in range(len(configs))})
    groups: dict[tuple, list[int]] = {}
    units: list[list[int]] = []
    for i, cfg in enumerate(configs):
        key = group_key(cfg) if cfg is not None else None
        if key is None:
            alone[i] = (reasons[i] if reasons is not None and reasons[i] else None) or alone_reason(cfg)
        elif auto and not wins(cfg):
            alone[i] = _auto_reason(cfg)
        else:
            groups.setdefault(key, []).append(i)
            continue
        units.append([i])
    for members in groups.values():
        n, w = len(members), max(workers, 1)
        parts = math.ceil(n / group_size)
        parts = max(parts, min(math.ceil(parts / w) * w, n // 2))
        for chunk in _balanced(members, [run_cost(configs[i]) for i in members], parts, group_size):
            if len(chunk) == 1:
                alone[chunk[0]] = "no other pending run shares its data, widths and optimizer settings"
            units.append(chunk)
    units.sort(key=lambda u: u[0])
    return Packing(units, alone)


def pack_items(items: Sequence, configs: Sequence, group_size: int, workers: int, auto: bool, log=None) -> Packing:
    """:func:`pack` for a sweep's pending ``items`` (``configs[i]``: the RunConfig item ``i`` may train
    under in a group, or None: :func:`item_alone_reason` says why), with the line of
    :func:`describe_packing` to ``log`` (a callable, or None)."""
    packing = pack(configs, group_size, workers, auto=auto,
                   reasons=[None if c is not None else item_alone_reason(i) for i, c in zip(items, configs)])
    if log is not None and items:
        run_configs = [i if hasattr(i, "label") else getattr(i, "config", None) for i in items]
        log(describe_packing(packing, [f"{c.label} seed {c.seed}" if c is not None else i.key()
                                       for i, c in zip(items, run_configs)]))
    return packing


def plan(configs: Sequence, group_size: int, workers: int = 1, auto: bool = False) -> list[list[int]]:
    """The dispatch units of :func:`pack` (lists of indices into ``configs``)."""
    return pack(configs, group_size, workers, auto).units


def _auto_reason(config) -> str:
    macs = step_macs(config)
    return (f"{macs / 1e6:.0f} M multiply-adds per step: above {AUTO_MAX_MACS / 1e6:.0f} M a group of CPU runs gains "
            "nothing (batch_models auto; a group size batches it anyway)")


def describe_packing(packing: Packing, labels: Sequence[str] | None = None) -> str:
    """One line for a sweep's log: how many runs, in how many groups of what size, and which train
    alone and why (``labels[i]``: how to name config ``i``, e.g. ``"fa seed 0"``; counted by reason)."""
    n = sum(len(u) for u in packing.units)
    sizes: dict[int, int] = {}
    for g in packing.groups:
        sizes[len(g)] = sizes.get(len(g), 0) + 1
    grouped = sum(len(g) for g in packing.groups)
    parts = [f"{n} run{'s' if n != 1 else ''} to train"]
    if packing.groups:
        shapes = ", ".join(f"{count} × {size}" for size, count in sorted(sizes.items(), reverse=True))
        parts.append(f"{grouped} in {len(packing.groups)} batched group{'s' if len(packing.groups) != 1 else ''} ({shapes})")
    if packing.alone:
        by_reason: dict[str, list[int]] = {}
        for i, why in packing.alone.items():
            by_reason.setdefault(why, []).append(i)
        said = []
        for why, idx in by_reason.items():
            names = ""
            if labels is not None:
                shown = ", ".join(labels[i] for i in idx[:3]) + (", ..." if len(idx) > 3 else "")
                names = f" ({shown})"
            said.append(f"{len(idx)}{names}: {why}")
        parts.append(f"{len(packing.alone)} alone — " + "; ".join(said))
    return "batching: " + "; ".join(parts)


def _noise_key(config) -> tuple | None:
    """Configs with one noise key can share a batched noise pretraining (None: no noise)."""
    if not config.noise_samples:
        return None
    return (config.noise_samples, config.noise_batch_size, config.noise_lr, config.noise_distribution, config.noise_std)


def _pretrain_noise(members: list, data, device) -> None:
    """Noise pretraining of the members that need it, batched per :func:`_noise_key` (in place:
    ``members[k][4]`` becomes the noise seconds); a batch that raises is redone one model at a time."""
    from .batched import pretrain_noise_batched
    from .config import prepare

    groups: dict[tuple, list[int]] = {}
    for k, (_, cfg, *_rest) in enumerate(members):
        key = _noise_key(cfg)
        if key is not None:
            groups.setdefault(key, []).append(k)
    for (samples, batch_size, lr, distribution, std), ks in groups.items():
        try:
            seconds = pretrain_noise_batched([members[k][3] for k in ks], [members[k][6] for k in ks], samples,
                                             batch_size=batch_size, lr=lr, distribution=distribution, std=std)
            share = seconds / len(ks)
            for k in ks:
                members[k][4] = share
        except Exception:  # noqa: BLE001 - e.g. out of memory: prepare these from scratch, one by one
            for k in ks:
                members[k][3], members[k][4], _ = prepare(members[k][1], data, device, progress=False)


def train_group(configs: Sequence, store) -> list[dict | None]:
    """Train ``configs`` (RunConfigs with one :func:`group_key`) side by side into ``store``.

    Returns one worker outcome dict per config (as :func:`prealign.run.sweep.train_task` returns), or
    None for a config this function left to a plain run: every unfinished one if the batched
    training itself raised (the error is in ``summary["batched_error"]`` of their outcomes). A run
    with a checkpoint (an interrupted group) resumes from its last epoch inside the group, as
    :func:`prealign.run.config.run` would resume it. A config that fails to build or prepare is recorded
    ``failed`` on its own; the others train.
    """
    from .batched import train_runs
    from .config import build, load_data, prepare
    from .loggers import run_logger
    from .worker import DONE, describe_device, record_failure, run_device, run_summary

    outs: list[dict | None] = [None] * len(configs)
    try:
        data = load_data(configs[0])
        device = run_device(configs[0], store)  # a GPU asked for and absent: every run reports it alone
        name = describe_device(device)
    except Exception:  # noqa: BLE001 - every run will report this error itself when it runs alone
        return outs
    start = time.perf_counter()
    members = []  # [index, config, run_id, model, noise_seconds, checkpoint, noise generator or None (resumed)]
    for i, cfg in enumerate(configs):
        row = store.find(cfg.key())
        if row is not None and row["status"] in DONE:
            outs[i] = {"key": cfg.key(), "status": row["status"], "summary": run_summary(store.result(row["id"])), "seconds": 0.0}
            continue
        if hasattr(store, "devices"):
            store.devices[cfg.key()] = name
        try:
            run_id = store.start(cfg)
            ckpt = store.checkpointer(run_id)
            state = ckpt.load()
            if state is None:
                model, _, prep_gen = prepare(cfg, data, device, noise=False, progress=False)
                noise_seconds = 0.0
            else:  # resumed: train_runs restores the weights (and feedback) from the checkpoint, as config.run
                model, prep_gen, noise_seconds = build(cfg, data).to(device), None, state.get("noise_seconds", 0.0)
        except Exception as exc:  # noqa: BLE001 - one bad config must not stop its group
            error = f"{type(exc).__name__}: {exc}"
            record_failure(store, cfg, error)
            outs[i] = {"key": cfg.key(), "status": "failed", "error": error, "seconds": time.perf_counter() - start}
            continue
        members.append([i, cfg, run_id, model, noise_seconds, ckpt, prep_gen])
    if not members:
        return outs
    _pretrain_noise([m for m in members if m[6] is not None], data, device)  # RNP: noise pretraining, batched too
    for m in members:
        m[5].extra = {"noise_seconds": m[4]}
    first = members[0][1]
    finished = {}  # position -> its TrainResult, stored as soon as the run ends
    logs = [run_logger(m[1]) for m in members]  # config.tensorboard (prealign.run.loggers), None where unset

    def done(position: int, result) -> None:  # store each run as soon as it ends, as config.run would
        _, cfg, run_id, _, noise_seconds, *_ = members[position]
        result.noise_seconds = noise_seconds
        result.config = cfg.to_dict()
        result.run_id = run_id
        store.finish(run_id, result, device=name)
        finished[position] = result
        if logs[position]:
            logs[position].close(result.curves)

    try:
        results = train_runs([m[3] for m in members], data, epochs=[m[1].epochs for m in members],
                             patience=[m[1].patience for m in members], seeds=[m[1].seed for m in members],
                             batch_size=first.batch_size, lr=first.lr, optimizer=first.optimizer,
                             weight_decay=first.weight_decay, momentum=first.momentum, val_fraction=first.val_fraction,
                             device=device, grad_alignment=first.grad_alignment, checkpoints=[m[5] for m in members],
                             callbacks=[[store.epoch_logger(m[2]), *filter(None, [lg])] for m, lg in zip(members, logs)],
                             on_done=done, progress=False, description=f"{len(members)} runs batched",
                             kp_decay=[m[1].kp_decay for m in members],
                             wm=[{k.removeprefix("wm_"): v for k, v in m[1].wm_settings().items()} or None
                                 for m in members])
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: train the rest one by one (they resume from their checkpoints)
        error = f"{type(exc).__name__}: {exc}"
        for position, (i, cfg, run_id, *_) in enumerate(members):
            if position in finished:
                outs[i] = _outcome(cfg, finished[position], len(members), name, store)
            else:
                outs[i] = {"batched_error": error}
        return outs
    except BaseException as exc:  # interrupted: mark the open runs as config.run does; checkpoints stay for resuming
        for position, (_, _, run_id, *_) in enumerate(members):
            if position not in finished:
                store.fail(run_id, f"{type(exc).__name__}: {exc}")
        raise
    for (i, cfg, *_), result in zip(members, results):
        outs[i] = _outcome(cfg, result, len(members), name, store)
    return outs


def _outcome(cfg, result, group: int, device: str, store) -> dict:
    """A member's outcome. ``seconds`` is the member's own time, not the group's: train_runs gives each
    model its share of every stacked step (the epoch's wall time / models still training, plus its own
    evaluations), so the members' times add up to the group's wall time and compare's "wall (s)"
    counts a batched group once."""
    from .worker import run_summary

    resumed = getattr(store, "resumed", {}).get(cfg.key())
    return {"key": cfg.key(), "status": result.status, "summary": run_summary(result, device, resumed),
            "seconds": result.seconds + result.noise_seconds, "batched": group}


def train_group_task(configs: list[dict], store) -> list[dict]:
    """Sweep task for one group (config dicts): :func:`train_group`, then a plain
    :func:`prealign.run.worker.train_task` for every config it left (resumed or fallback runs).
    ``store``: the sweep's :class:`~prealign.run.storage.WorkerStore` (a store path opens that store).
    Never raises for a training problem; returns one outcome dict per config."""
    from .config import RunConfig
    from .worker import _as_store, train_task

    cfgs = [RunConfig.from_dict(c) for c in configs]
    store, own = _as_store(store)
    try:
        outs = train_group(cfgs, store)
        for i, out in enumerate(outs):
            if out is None or "status" not in out:
                alone = train_task(configs[i], store)
                if out is not None:  # the batched training raised: say so next to the plain run's outcome
                    alone.setdefault("summary", {})["batched_error"] = out["batched_error"]
                outs[i] = alone
    finally:
        if own:
            store.close()
    return outs


# ------------------------------------------------------------------------------------ benchmark
__all__ = [
    "AUTO_MAX_MACS",
    "DEFAULT_GROUP",
    "GROUP_TASK",
    "MAX_GROUP",
    "Packing",
    "alone_reason",
    "describe_packing",
    "group_key",
    "item_alone_reason",
    "pack",
    "pack_items",
    "plan",
    "resolve_batch",
    "step_macs",
    "train_group",
    "train_group_task",
    "wins",
]
