"""Generalization: out-of-distribution tests, generalization error, effective dimensionality.

Noise paper C.2–C.5 (SPEC §5):

- **OOD** (C.5): accuracy on translated (±5 % of the image size), scaled (0.8–1.2) and rotated
  (±25°) copies of the test set (:func:`prealign.data.transforms.ood_sets`) and on a second
  handwritten-digit source: USPS (16×16 resized to 28×28) where its files are present, otherwise
  scikit-learn's UCI digits (8×8 resized to 28×28), reported under that name.
- **Generalization error** (C.3, C.4): test loss − train loss after training, across
  training-set sizes and depths.
- **Effective dimensionality** (C.2, C.4): singular-value spectrum and effective rank of every
  weight matrix and of the learned features (hidden activations on test data). The supplement
  does not define "effective dimensionality"; we use the entropy effective rank of Roy &
  Vetterli (2007): with ``p_k = σ_k / Σ_j σ_j``, ``erank = exp(−Σ_k p_k log p_k)``. It is ``n``
  for ``n`` equal singular values, 1 for a rank-one matrix, and continuous in between.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError, PrealignError
from ..feedback import feedback_layers
from .robustness import accuracy

# -- effective dimensionality ------------------------------------------------------------------


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values (descending, float64) of ``matrix``; a conv kernel ``(out, in, kH, kW)`` is
    read as the ``(out, in·kH·kW)`` matrix of its flattened filters."""
    m = matrix.detach().double()
    if m.ndim != 2:
        m = m.reshape(m.shape[0], -1)
    return torch.linalg.svdvals(m.cpu())


def effective_rank(x: torch.Tensor, *, is_spectrum: bool = False) -> float:
    """Entropy effective rank (Roy & Vetterli 2007) of a matrix, or of its singular values when
    ``is_spectrum=True``: ``exp(H(p))`` with ``p = σ / Σσ`` (0·log 0 = 0). 0 for the zero matrix."""
    s = x.detach().double().flatten() if is_spectrum else singular_values(x)
    if (s < 0).any():
        raise ValueError("singular values must be non-negative")
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def weight_spectra(model: nn.Module) -> dict[str, list[float]]:
    """``{layer name: singular values of W (descending)}`` for every feedback/Linear/Conv layer."""
    layers = feedback_layers(model) or [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return {name: singular_values(layer.weight).tolist() for name, layer in layers}


def weight_effective_ranks(model: nn.Module) -> dict[str, float]:
    """``{layer name: effective rank of W}``."""
    return {name: effective_rank(torch.tensor(sv), is_spectrum=True) for name, sv in weight_spectra(model).items()}


_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU)


@torch.no_grad()
def hidden_features(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> dict[str, torch.Tensor]:
    """Hidden activations: ``{module name: (N, features)}`` — the output of every activation
    module (features after the nonlinearity; conv maps flattened per sample). Models without
    activation modules (linear networks) give the outputs of every layer but the last."""
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, _ACTIVATIONS)]
    if not mods:
        mods = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]
    feats: dict[str, list[torch.Tensor]] = {n: [] for n, _ in mods}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: feats[n].append(out.detach().flatten(1).cpu()))
             for n, m in mods]
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {n: torch.cat(v) for n, v in feats.items()}


def feature_effective_ranks(model: nn.Module, x: torch.Tensor, center: bool = False) -> dict[str, float]:
    """``{activation module: effective rank of the (N, features) activation matrix on x}``.
    ``center=True`` subtracts each feature's mean first (rank of the covariance structure)."""
    if len(x) < 1:
        raise ConfigError("feature_effective_ranks needs at least one probe input, got none")
    out = {}
    for name, f in hidden_features(model, x).items():
        if center:
            f = f - f.mean(0, keepdim=True)
        out[name] = effective_rank(f)
    return out


class DimensionalityTracker:
    """Effective ranks over noise pretraining and data training.

    Use as the ``callback`` of :func:`prealign.pretrain_noise` (``tracker(step, seen, model)``)
    and as a trainer callback (``on_epoch_end(epoch, model, data, record)``, which adds
    ``erank/<layer>`` and ``feature_erank/<module>`` to the epoch record). Each call appends to
    ``history`` a dict ``{"phase": "noise"|"data", "step"/"epoch", "seen", "weights": {layer:
    erank}, "features": {module: erank}, "spectra": {layer: [σ…]} (if keep_spectra)}``.
    ``probe``: inputs for the feature ranks (e.g. 1,000 test images); ``None`` skips them.
    """

    def __init__(self, probe: torch.Tensor | None = None, keep_spectra: bool = False):
        self.probe, self.keep_spectra = probe, keep_spectra
        self.history: list[dict] = []

    def _measure(self, model: nn.Module) -> dict:
        spectra = weight_spectra(model)
        entry = {"weights": {n: effective_rank(torch.tensor(s), is_spectrum=True) for n, s in spectra.items()}}
        if self.probe is not None:
            probe = self.probe.to(next(model.parameters()).device)
            entry["features"] = feature_effective_ranks(model, probe)
        if self.keep_spectra:
            entry["spectra"] = spectra
        return entry

    def __call__(self, step: int, seen: int, model: nn.Module) -> None:
        self.history.append({"phase": "noise", "step": int(step), "seen": int(seen), **self._measure(model)})

    def on_epoch_end(self, epoch: int, model: nn.Module, data, record: dict) -> None:
        entry = {"phase": "data", "epoch": int(epoch), **self._measure(model)}
        self.history.append(entry)
        record.update({f"erank/{n}": v for n, v in entry["weights"].items()})
        record.update({f"feature_erank/{n}": v for n, v in entry.get("features", {}).items()})


# -- generalization error -----------------------------------------------------------------------


def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    """Mean cross-entropy of ``model`` on ``(x, y)`` (nats), eval mode."""
    from ..run.trainer import evaluate

    return evaluate(model, x, y, batch_size)[0]


def generalization_error(model: nn.Module, data) -> dict[str, float]:
    """``{"train_loss", "test_loss", "gap": test − train, "train_acc", "test_acc"}`` of ``model``
    on ``data`` (both losses measured in one no-grad pass after training, nats)."""
    tr, te = mean_loss(model, data.x_train, data.y_train), mean_loss(model, data.x_test, data.y_test)
    return {"train_loss": tr, "test_loss": te, "gap": te - tr,
            "train_acc": accuracy(model, data.x_train, data.y_train), "test_acc": accuracy(model, data.x_test, data.y_test)}


def _train_one(method: str, data, hidden: Sequence[int], *, epochs: int, seed: int, lr: float, batch_size: int,
               noise_samples: int | None, probe: torch.Tensor | None, device: str) -> dict:
    from ..methods import get_method
    from ..models import mlp
    from ..run.trainer import train

    gen = torch.Generator().manual_seed(seed)
    n_in = math.prod(data.x_train.shape[1:])
    model = mlp([n_in, *hidden, data.num_classes], rule="bp", input_shape=data.x_train.shape[1:], generator=gen)
    m = get_method(method)
    if noise_samples is not None and m.noise_samples:  # the budget of methods with noise; bp/fa stay noise-free
        m = m.with_options(noise_samples=noise_samples)
    m.prepare(model, generator=gen, progress=False)
    result = train(model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                   progress=False, grad_alignment=False)
    out = {"method": m.label, "seed": seed, "diverged": result.diverged, **generalization_error(model, data)}
    if probe is not None:
        out["feature_erank"] = feature_effective_ranks(model, probe.to(next(model.parameters()).device))
    out["weight_erank"] = weight_effective_ranks(model)
    return out


def size_sweep(methods: Sequence[str], data, sizes: Sequence[int] = (100, 200, 400, 800, 1600), *,
               hidden: Sequence[int] = (100, 100), seeds: Sequence[int] = (0,), epochs: int = 500, lr: float = 1e-4,
               batch_size: int = 64, noise_samples: int | None = None, device: str = "auto") -> list[dict]:
    """Generalization error vs training-set size (noise paper C.3: 784-100-100-10, sizes 100–1600).

    For each method, size and seed: a stratified subset of ``size`` training images (seeded),
    the method's initial condition, ``epochs`` of training, then :func:`generalization_error` and
    effective ranks (features on the test set). Returns one row per run.
    """
    rows = []
    for size in sizes:
        if size > len(data.x_train):
            raise ConfigError(f"training-set size {size} exceeds the {len(data.x_train)} training images of {data.name}")
        for seed in seeds:
            sub = data.subset(int(size), stratified=True, seed=seed)
            for method in methods:
                row = _train_one(method, sub, hidden, epochs=epochs, seed=seed, lr=lr, batch_size=batch_size,
                                 noise_samples=noise_samples, probe=data.x_test, device=device)
                rows.append({"size": int(size), **row})
    return rows


def depth_sweep(methods: Sequence[str], data, depths: Sequence[int] = (3, 4, 5, 6, 7), *, width: int = 100,
                train_size: int | None = 1600, seeds: Sequence[int] = (0,), epochs: int = 500, lr: float = 1e-4,
                batch_size: int = 64, noise_samples: int | None = None, device: str = "auto") -> list[dict]:
    """Generalization error vs depth (noise paper C.4: 3–7 layers of ``width`` units, 1,600 images).

    ``depth`` counts weight layers, as the paper does (3 layers = 784-100-100-10).
    """
    rows = []
    for seed in seeds:
        sub = data.subset(int(train_size), stratified=True, seed=seed) if train_size else data
        for depth in depths:
            if depth < 1:
                raise ConfigError(f"depth must be >= 1 weight layer, got {depth}")
            for method in methods:
                row = _train_one(method, sub, [width] * (depth - 1), epochs=epochs, seed=seed, lr=lr,
                                 batch_size=batch_size, noise_samples=noise_samples, probe=data.x_test, device=device)
                rows.append({"depth": int(depth), **row})
    return rows


# -- out-of-distribution ------------------------------------------------------------------------


def second_digit_source(input_shape: Sequence[int] = (1, 28, 28)) -> tuple[str, torch.Tensor, torch.Tensor]:
    """``(label, x, y)`` of a second handwritten-digit test set resized to ``input_shape``.

    USPS (test split, 16×16 → H×W) where its files are present; otherwise scikit-learn's UCI
    digits (8×8 → H×W, all 1,797 images), labelled ``"uci-digits (8x8 resized, USPS stand-in)"``.
    """
    from ..data import load

    c, h, w = input_shape
    if c != 1 or h != w:
        raise PrealignError(f"the second digit source is gray square digits; the model expects {tuple(input_shape)}")
    try:
        ds = load("usps", size=h)
        return f"usps (16x16 resized to {h}x{w})", ds.x_test, ds.y_test
    except PrealignError:
        ds = load("digits", size=h)
        x = torch.cat([ds.x_train, ds.x_test])
        y = torch.cat([ds.y_train, ds.y_test])
        return f"uci-digits (8x8 resized to {h}x{w}, USPS stand-in)", x, y


def ood_report(models: Mapping[str, Sequence[nn.Module]], data, *, seed: int = 0, second_source: bool = True) -> dict:
    """Accuracy of every model on the clean test set, the translated/scaled/rotated sets and
    (for 28×28 digit data) a second digit source. Returns ``{"sets": [names], "second_source":
    label|None, "results": {method: [{set: acc} per seed]}}`` (fractions)."""
    from ..data.transforms import ood_sets

    sets = {"clean": data.x_test, **ood_sets(data, seed)}
    label = None
    ys = {k: data.y_test for k in sets}
    if second_source and data.num_classes == 10 and tuple(data.x_test.shape[1:]) == (1, 28, 28):
        label, x2, y2 = second_digit_source((1, 28, 28))
        sets[label], ys[label] = x2, y2
    dev = data.x_test.device
    results = {m: [{k: accuracy(model, v.to(dev), ys[k].to(dev)) for k, v in sets.items()} for model in seeds]
               for m, seeds in models.items()}
    return {"sets": list(sets), "second_source": label, "results": results}


def clone(model: nn.Module) -> nn.Module:
    """A deep copy (feedback matrices, rules and DFA hooks included)."""
    return copy.deepcopy(model)
