"""Words the reports use for what was run, derived from the runs themselves, never typed by hand:

* :func:`data_note` — per data set of a budget: the training and test images its runs used
  (``train_subset`` of the registered sizes), and whether it is one of the paper's data sets or
  used in its place; the paper's grid values this budget does not run (data sets, depths …).
* :func:`layer_titles` — ``{module name: "layer 2 of 3: 100→100 (module 3)"}`` from a model, so a
  panel says which layer it shows in words a reader of the paper recognises.
"""
from __future__ import annotations

from collections import defaultdict

from .rowdata import key


def _count(n: int) -> str:
    return f"{n:,}"


def _data_set(name: str, subset: int | None, val_fraction: float, paper: list[str]) -> str:
    from ..data.registry import DATASETS

    spec = DATASETS.get(name)
    if spec is None or spec.sizes is None:
        used = f"the first {_count(subset)} training images" if subset else "all its training images"
        sizes = f"{used}, its whole test set"
    else:
        n_train, n_test = spec.sizes
        if subset and subset < n_train:
            used = f"the first {_count(subset)} of its {_count(n_train)} training images"
        else:
            used = f"all {_count(n_train)} training images"
        sizes = f"{used}, all {_count(n_test)} test images"
    if val_fraction:
        sizes += f" ({val_fraction:g} of the training images held out for model selection)"
    if name in paper:
        role = "one of the paper's data sets"
    else:
        what = f": {spec.description}" if spec is not None else ""
        role = f"used in place of the paper's data{what}"
    return f"{name} — {role}; {sizes}"


def data_note(exp, budget: str) -> str:
    """One paragraph: every data set the ``budget``'s runs use (how many images, the paper's own or
    not), then the values of the paper's grid this budget leaves out (``--budget paper`` runs them)."""
    points = exp.points(budget)
    paper = exp.paper.get("data") or exp.datasets("paper")
    paper = paper if isinstance(paper, list) else [paper]
    used = {}
    for p in points:
        c = p["config"]
        used.setdefault(c.get("dataset", "?"), set()).add((c.get("train_subset"), float(c.get("val_fraction") or 0.0)))
    parts = []
    for name in sorted(used):
        for subset, val in sorted(used[name], key=lambda t: (t[0] or 0, t[1])):
            parts.append(_data_set(name, subset, val, paper))
    text = f"Data at the `{budget}` budget: " + "; ".join(parts) + "."
    missing = not_run(exp, budget)
    if missing:
        text += (" Not run at this budget (the paper's grid has them; `--budget paper` runs them): "
                 + "; ".join(f"{axis} {', '.join(map(str, vals))}" for axis, vals in missing.items()) + ".")
    return text


def not_run(exp, budget: str) -> dict[str, list]:
    """``{axis: [values]}`` of the paper budget's grid (seeds aside) that ``budget`` does not run,
    including the paper's data sets (``dataset`` axis or not)."""
    if budget == "paper":
        return {}

    def levels(b):
        out = defaultdict(set)
        for p in exp.points(b):
            for axis, v in p["axes"].items():
                out[axis].add(v if isinstance(v, (int, float, str)) else str(v))
            out["dataset"].add(p["config"].get("dataset"))
        return out

    ours, theirs = levels(budget), levels("paper")
    return {axis: sorted(vals - ours.get(axis, set()), key=key) for axis, vals in theirs.items()
            if axis != "seed" and vals - ours.get(axis, set())}


def _shape(module) -> str:
    """``"100→100"`` for a linear map, ``"3→16 channels, 5×5"`` for a convolution (from its weight)."""
    w = module.weight
    groups = getattr(module, "groups", 1)
    n_in, n_out = w.shape[1] * groups, w.shape[0]
    if w.dim() == 2:
        return f"{n_in}→{n_out}"
    return f"{n_in}→{n_out} channels, {'×'.join(map(str, w.shape[2:]))}"


def layer_titles(model) -> dict[str, str]:
    """``{module name: "layer k of n: in→out (module name)"}`` for every weight layer of ``model``
    (Linear/Conv/Bilinear and their feedback versions, in ``named_modules`` order)."""
    from ..feedback import CONVERTIBLE, FeedbackLayer
    from ..viz.style import layer_title

    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, (*CONVERTIBLE, FeedbackLayer)) and getattr(m, "weight", None) is not None]
    return {name: layer_title(name, i + 1, len(layers), _shape(m)) for i, (name, m) in enumerate(layers)}


def run_layer_titles(ctx, runs) -> dict[str, str]:
    """:func:`layer_titles` of the runs' networks (one model per distinct architecture); a module
    name whose place or shape differs between them (a depth grid) is titled ``"module NAME"``."""
    seen, titles = set(), defaultdict(set)
    for r in runs:
        c = r.config
        arch = (c.get("model"), str(c.get("hidden")), c.get("dataset"), str(c.get("width")))
        if arch in seen or not hasattr(ctx, "model"):
            continue
        seen.add(arch)
        for name, t in layer_titles(ctx.model(r)).items():
            titles[name].add(t)
    return {name: next(iter(ts)) if len(ts) == 1 else f"module {name}" for name, ts in titles.items()}
