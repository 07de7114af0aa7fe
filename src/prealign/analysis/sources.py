"""Where an analysis's networks come from (see :data:`prealign.reports.registry.NEEDS`).

``runs``: stored run ids or key prefixes, read only (measuring never writes the store).
``models``: stored runs grouped by method label, or configs trained on the fly through the store
(``--method … --dataset … --epochs … --seeds …``; a finished run with the same config is reused,
never retrained). ``surrogates``: BP-trained networks for the transfer attack — given with
``--surrogate``, taken from the BP runs among the models, or else trained and stored like the
targets (same data, model and budget, method ``bp``; their own run keys, so the next call reuses
them).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import PrealignError

#: Defaults of the model-source options (the CLI adds them for entries that need ``models``).
MODEL_DEFAULTS = {"runs": [], "method": None, "dataset": "mnist5k", "epochs": 20, "seeds": 3, "hidden": [100],
                  "model": "mlp", "batch_size": 64, "lr": 1e-4, "test_size": None, "device": "cpu",
                  "surrogate": None, "out": None, "save": None}


@dataclass
class Inputs:
    """What ``compute`` measures. ``models``: ``{method label: [model per seed]}`` (CPU, eval mode;
    empty for ``runs`` entries, which load one run at a time); ``data``: their data set;
    ``store``; ``root``: the output root; ``what``: a one-line description for titles; ``notes``:
    what the user should know (printed on stderr, e.g. a skipped gradient source)."""

    store: Any = None
    root: Path = Path(".")
    models: dict = field(default_factory=dict)
    data: Any = None
    what: str = ""
    notes: list = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)


def options(entry, given: Mapping | argparse.Namespace | None) -> argparse.Namespace:
    """``entry``'s options with every default filled (model-source ones too)."""
    ns = entry.options(given)
    for k, v in MODEL_DEFAULTS.items():
        if not hasattr(ns, k):
            setattr(ns, k, v)
    return ns


def gather(entry, ns: argparse.Namespace) -> Inputs:
    """The :class:`Inputs` of ``entry`` for options ``ns`` (an unknown RUN fails before any output)."""
    from ..run.store import Store, default_root

    if "runs" in entry.needs:
        store = Store(ns.out, read_only=True)
        for run in ns.runs:
            store.resolve(run)
        return Inputs(store=store, root=store.root)
    if "models" not in entry.needs:  # trains its own networks, stores nothing
        return Inputs(root=Path(ns.out) if ns.out else default_root())
    if bool(ns.runs) == bool(ns.method):
        raise PrealignError(f"`analyze {entry.name}` needs either stored RUN ids or --method (with --dataset/--epochs/"
                            f"--seeds), not both and not neither; e.g. `prealign analyze {entry.name} --method bp fa ifa "
                            "--epochs 20 --seeds 3`")
    if ns.method and "own-training" in entry.needs:
        store = Store(ns.out)
        return Inputs(store=store, root=store.root, what=f"{ns.model} {ns.hidden} {ns.epochs} epochs")
    # stored runs are only read, unless BP surrogates may have to be trained into the store
    writes = bool(ns.method) or ("surrogates" in entry.needs and "transfer" in ns.sources and not ns.surrogate)
    store = Store(ns.out, read_only=not writes)
    return _models(store, ns)


def config(ns: argparse.Namespace, method: str, seed: int):
    """The RunConfig ``--method`` trains for ``method`` and ``seed``."""
    from ..run.config import RunConfig

    return RunConfig(method=method, dataset=ns.dataset, model=ns.model, hidden=tuple(ns.hidden), epochs=ns.epochs,
                     batch_size=ns.batch_size, lr=ns.lr, seed=seed, device=ns.device, grad_alignment=False)


def train_or_load(store, config):
    """The network of ``config``: trained into ``store``, or the stored finished run reused."""
    from ..run.config import run

    result = run(config, store, progress=None)
    run_id = result.run_id if result.run_id is not None else store.find(config.key())["id"]
    return store.load_model(run_id).cpu().eval()


def _models(store, ns) -> Inputs:
    from ..run.config import load_data

    models: dict[str, list] = {}
    if ns.runs:
        datasets = set()
        for run in ns.runs:
            model = store.load_model(run, device="cpu")
            models.setdefault(model.run_config.label, []).append(model)
            datasets.add((model.run_config.dataset, model.run_config.train_subset))
        if len(datasets) > 1:
            raise PrealignError(f"the runs use different data sets {sorted(map(str, datasets))}; analyse one data set at a time")
        cfg = next(iter(models.values()))[0].run_config
        what = f"runs {' '.join(map(str, ns.runs))}"
    else:
        for method in ns.method:
            for seed in range(ns.seeds):
                cfg = config(ns, method, seed)
                models.setdefault(cfg.label, []).append(train_or_load(store, cfg))
        what = f"{ns.model} {ns.hidden} {ns.epochs} epochs, {ns.seeds} seeds"
    data = load_data(cfg)
    if ns.test_size:
        data = replace(data, x_test=data.x_test[:ns.test_size], y_test=data.y_test[:ns.test_size])
    for seeds in models.values():
        for m in seeds:
            m.cpu().eval()
    return Inputs(store=store, root=store.root, models=models, data=data, what=f"{data.name}, {what}")


def surrogates(inputs: Inputs, ns: argparse.Namespace) -> list | None:
    """BP networks for the transfer attack on ``inputs.models`` (``None`` without ``transfer``).

    ``--surrogate RUN…`` first; else the BP models among the targets; else one BP network per
    target seed, trained (or reused) in the store with the target's data, model and budget. A BP
    target is attacked through a BP network of another seed, so a lone BP model gets one trained
    at seed + 1. Where no surrogate can be trained the transfer source is skipped with a note that
    says how to get it."""
    if "transfer" not in ns.sources:
        return None
    if ns.surrogate:
        return [inputs.store.load_model(r, device="cpu").eval() for r in ns.surrogate]
    bp = list(inputs.models.get("bp", []))
    if len(bp) > 1:
        return bp
    have = {m.run_config.key() for m in bp}
    need = {}  # surrogate config key -> config, in target order
    for m in (m for seeds in inputs.models.values() for m in seeds):
        cfg = _surrogate_config(m.run_config, ns.device)
        if _is_bp(m):
            cfg = cfg.replace(seed=cfg.seed + 1)
        if cfg.key() not in have:
            need.setdefault(cfg.key(), cfg)
    trained = list(bp)
    try:
        for cfg in need.values():
            print(f"transfer attack: training (or reusing) the BP surrogate {cfg.label} seed {cfg.seed}, "
                  f"{cfg.epochs} epochs, in {inputs.store.root}", file=sys.stderr)
            trained.append(train_or_load(inputs.store, cfg))
    except PrealignError as err:
        inputs.note(f"skipped the transfer source: no BP surrogate could be trained ({err}); pass --surrogate RUN "
                    "(a BP run on the same data) to include it")
        return []
    return trained


def _is_bp(model) -> bool:
    return model.run_config.method == "bp"


def _surrogate_config(cfg, device: str):
    """``cfg`` trained with backpropagation: same data, model, budget and seed; no method options."""
    return cfg.replace(method="bp", angle=None, noise_samples=None, kp_decay=None, device=device, name="")


def save_folder(save: str | None, root: Path, command: str) -> Path:
    """``save`` (default ``<root>/analysis/<command>``), created; one clear error where it cannot be."""
    path = Path(save) if save else Path(root) / "analysis" / command
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PrealignError(f"cannot create the output folder {str(path)!r} ({err.strerror or err}); "
                            "choose another one with --save") from None
    return path
