"""Adversarial and corruption robustness (IFA paper §4.3–4.4, A.3.4, A.4, B.9–B.10; SPEC §5).

Attacks are L∞ on inputs in ``[0, 1]`` (every iterate is clamped to the box):

- **FGSM** (Goodfellow et al. 2014): ``x' = clip(x + ε·sign(g))``, one step.
- **BIM** (Kurakin et al. 2016): ``steps`` FGSM steps of size ``step_size`` from ``x``, each
  projected back into the ε-ball around ``x``.
- **PGD** (Madry et al. 2017): BIM from a uniform random start in the ε-ball.

``g`` is the gradient of the summed cross-entropy with respect to the input, and where it
comes from is explicit — neither paper says, and for a network trained without weight
transport it matters (a robustness gain that exists only for one source is gradient masking):

=============  ==============================================================================
``exact``      true input gradients, computed under :func:`prealign.exact_gradients` (default;
               the honest white-box attack)
``feedback``   the model's own backward pathway: what its rule delivers to the input (for FA,
               ``δ₁ B₁`` at the first layer, errors carried by the ``B`` of every layer above)
``transfer``   exact gradients of a *surrogate* model (normally BP-trained on the same data);
               the perturbation is applied to, and scored on, the target model
=============  ==============================================================================

The attacks are written here (≈ 60 lines) rather than taken from a library: torchattacks
requires torchvision (which would replace this project's torch), and ART/foolbox compute input
gradients with plain autograd through the model, which silently gives the ``feedback`` source
for a feedback-alignment model — the very ambiguity this module exists to remove.

Corruption robustness evaluates the 15 corruptions × 5 severities of
:mod:`prealign.data.corruptions` (Hendrycks & Dietterich 2019) and reports the mean corruption
accuracy per severity (IFA paper B.9), per type and per category.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, UnknownNameError
from ..feedback import exact_gradients

GRADIENT_SOURCES = ("exact", "feedback", "transfer")
ATTACKS = ("fgsm", "bim", "pgd")
DEFAULT_EPSILONS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05)  # IFA paper B.10: ε from 0 to 0.05


# -- evaluation ----------------------------------------------------------------------------
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` (``(N, …)``) that ``model`` classifies as ``y`` (``(N,)``), in [0, 1]."""
    from ..run.trainer import evaluate

    return evaluate(model, x, y, batch_size)[1]


@contextmanager
def _frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters stop requiring grad (the attack needs only ∂L/∂x), eval mode; restored on exit."""
    params = [p for p in model.parameters() if p.requires_grad]
    was = model.training
    for p in params:
        p.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was)


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, source: str = "exact",
                   surrogate: nn.Module | None = None) -> torch.Tensor:
    """``∂ Σ_n CE(f(x_n), y_n) / ∂x`` as delivered by ``source``; shape of ``x``.

    ``exact``: true gradient of ``model``; ``feedback``: ``model``'s own backward pathway (its
    rule); ``transfer``: true gradient of ``surrogate``. Parameters are never touched.
    """
    if source not in GRADIENT_SOURCES:
        raise UnknownNameError("gradient source", source, GRADIENT_SOURCES)
    if source == "transfer":
        if surrogate is None:
            raise ConfigError("the transfer attack needs a surrogate model (a BP-trained network); pass surrogate=")
        model = surrogate
    exact = source in ("exact", "transfer")
    with _frozen(model), (exact_gradients(model) if exact else nullcontext()), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def gradient_agreement(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """How well the model's own backward pathway points along its true input gradient.

    Per sample, the cosine between the ``exact`` and ``feedback`` input gradients and the
    fraction of pixels whose signs agree (what FGSM uses); returns their means over ``x``:
    ``{"cosine", "sign_agreement"}``. 1 and 1 for BP; near 0 and 0.5 when the feedback
    pathway carries no information about the true gradient (an attack along it is then as
    weak as random sign noise: gradient masking).
    """
    cos, agree = [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        ge = input_gradient(model, xb, yb, "exact").flatten(1)
        gf = input_gradient(model, xb, yb, "feedback").flatten(1)
        cos.append(F.cosine_similarity(ge, gf, dim=1, eps=1e-30))
        nz = (ge != 0) | (gf != 0)
        agree.append(((ge.sign() == gf.sign()) & nz).sum(1) / nz.sum(1).clamp_min(1))
    return {"cosine": float(torch.cat(cos).mean()), "sign_agreement": float(torch.cat(agree).mean())}


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not 0 <= eps <= 1:
        raise ConfigError(f"attack strength eps must be in [0, 1] (inputs live in [0, 1]); got {eps}")
    return eps


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, source: str = "exact",
         surrogate: nn.Module | None = None) -> torch.Tensor:
    """Fast gradient sign method: ``clip₀¹(x + ε·sign(∂L/∂x))``; shape of ``x``."""
    eps = _check_eps(eps)
    g = input_gradient(model, x, y, source, surrogate)
    return (x + eps * g.sign()).clamp_(0.0, 1.0).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 10,
        step_size: float | None = None, random_start: bool = True, source: str = "exact",
        surrogate: nn.Module | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent on the loss, L∞ ball of radius ``eps`` around ``x``, box [0, 1].

    ``steps`` sign-gradient steps of ``step_size`` (default ``2.5·ε/steps``, Madry et al.), each
    followed by projection onto the ball and the box. ``random_start`` begins at a uniform draw
    from the ball (PGD); without it this is BIM. Returns ``x_adv`` (shape of ``x``).
    """
    eps = _check_eps(eps)
    if steps < 1:
        raise ConfigError(f"attack steps must be >= 1; got {steps}")
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    x = x.detach()
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_adv = (x + (2 * noise - 1) * eps).clamp(0.0, 1.0)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        g = input_gradient(model, x_adv, y, source, surrogate)
        x_adv = x_adv + alpha * g.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


def bim(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 10,
        step_size: float | None = None, source: str = "exact", surrogate: nn.Module | None = None) -> torch.Tensor:
    """Basic iterative method: :func:`pgd` without the random start."""
    return pgd(model, x, y, eps, steps=steps, step_size=step_size, random_start=False, source=source,
               surrogate=surrogate)


def attack(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, source: str = "exact",
           surrogate: nn.Module | None = None, steps: int = 10, step_size: float | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Run the attack ``name`` (``fgsm``, ``bim``, ``pgd``) and return the adversarial inputs."""
    if name == "fgsm":
        return fgsm(model, x, y, eps, source=source, surrogate=surrogate)
    if name == "bim":
        return bim(model, x, y, eps, steps=steps, step_size=step_size, source=source, surrogate=surrogate)
    if name == "pgd":
        return pgd(model, x, y, eps, steps=steps, step_size=step_size, source=source, surrogate=surrogate,
                   generator=generator)
    raise UnknownNameError("attack", name, ATTACKS)


def adversarial_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float] = DEFAULT_EPSILONS,
                         *, attack_name: str = "fgsm", source: str = "exact", surrogate: nn.Module | None = None,
                         steps: int = 10, step_size: float | None = None, batch_size: int = 1000,
                         seed: int = 0) -> list[float]:
    """Accuracy (fraction) of ``model`` on ``attack_name`` examples at each ε of ``epsilons``."""
    if attack_name not in ATTACKS:
        raise UnknownNameError("attack", attack_name, ATTACKS)
    if source not in GRADIENT_SOURCES:
        raise UnknownNameError("gradient source", source, GRADIENT_SOURCES)
    out = []
    for eps in epsilons:
        gen = torch.Generator().manual_seed(seed)
        correct = 0
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            x_adv = attack(attack_name, model, xb, yb, eps, source=source, surrogate=surrogate, steps=steps,
                           step_size=step_size, generator=gen)
            correct += accuracy(model, x_adv, yb, batch_size) * len(xb)
        out.append(correct / max(len(x), 1))
    return out


def _pick_surrogate(surrogates: Sequence[nn.Module], i: int, target: nn.Module) -> nn.Module:
    """Surrogate ``i`` (cyclically), skipping the target itself so a BP target is attacked through
    another BP network; raises if the only surrogate is the target."""
    for k in range(len(surrogates)):
        sur = surrogates[(i + k) % len(surrogates)]
        if sur is not target:
            return sur
    raise ConfigError("the transfer attack on a BP model needs a second BP surrogate (another seed); pass more surrogates")


def adversarial_report(models: Mapping[str, Sequence[nn.Module]], x: torch.Tensor, y: torch.Tensor, *,
                       epsilons: Sequence[float] = DEFAULT_EPSILONS, attacks: Sequence[str] = ("fgsm", "pgd"),
                       sources: Sequence[str] = GRADIENT_SOURCES, surrogates: Sequence[nn.Module] | None = None,
                       steps: int = 10, step_size: float | None = None, batch_size: int = 1000, seed: int = 0,
                       progress: bool | None = None) -> dict:
    """Accuracy vs ε for every method × attack × gradient source, one value per model (seed).

    ``models``: ``{method label: [model per seed]}``. ``surrogates``: BP models for the
    ``transfer`` source; seed ``i`` of every method is attacked through ``surrogates[i % len]``,
    or the next one when that is the target itself (a BP target is attacked through a BP network
    of another seed). Without surrogates the ``transfer`` source is left out.
    Returns a JSON-ready dict: ``{"epsilons", "attacks", "sources", "steps", "step_size",
    "results": {method: {attack: {source: [[acc per ε] per seed]}}}, "gradient_agreement":
    {method: [{"cosine", "sign_agreement"} per seed]}}`` (accuracies in [0, 1]; see
    :func:`gradient_agreement`).
    """
    from ..progress import progress_bar

    sources = [s for s in sources if s != "transfer" or surrogates]
    for s in sources:
        if s not in GRADIENT_SOURCES:
            raise UnknownNameError("gradient source", s, GRADIENT_SOURCES)
    total = sum(len(v) for v in models.values()) * len(attacks) * len(sources)
    results: dict = {}
    with progress_bar(total, "adversarial attacks", enabled=progress) as bar:
        for label, seeds in models.items():
            results[label] = {}
            for name in attacks:
                results[label][name] = {}
                for source in sources:
                    rows = []
                    for i, model in enumerate(seeds):
                        sur = _pick_surrogate(surrogates, i, model) if source == "transfer" else None
                        rows.append(adversarial_accuracy(model, x, y, epsilons, attack_name=name, source=source,
                                                         surrogate=sur, steps=steps, step_size=step_size,
                                                         batch_size=batch_size, seed=seed + i))
                        bar.advance(1)
                    results[label][name][source] = rows
    agreement = {label: [gradient_agreement(m, x, y, batch_size) for m in seeds] for label, seeds in models.items()}
    return {"epsilons": [float(e) for e in epsilons], "attacks": list(attacks), "sources": list(sources),
            "steps": steps, "step_size": step_size, "results": results, "gradient_agreement": agreement}


# -- corruption robustness -------------------------------------------------------------------
def _corruption_backend():
    from ..data import corruptions  # the data layer's 15 corruptions

    return corruptions.corrupt, dict(corruptions.CORRUPTIONS)


def corruption_report(models: Mapping[str, Sequence[nn.Module]], x: torch.Tensor, y: torch.Tensor, *,
                      corruptions: Sequence[str] | None = None, severities: Sequence[int] = (1, 2, 3, 4, 5),
                      seed: int = 0, batch_size: int = 1000, corrupt_fn: Callable | None = None,
                      categories: Mapping[str, str] | None = None, progress: bool | None = None) -> dict:
    """Accuracy of every model on ``x`` under each corruption and severity (IFA paper B.9).

    Each corrupted test set is generated once (seeded) and shared by all models.
    ``corrupt_fn(x, name, severity, seed=)`` and ``categories`` ``{name: category}`` default to
    :mod:`prealign.data.corruptions`. Returns a JSON-ready dict ``{"severities", "categories",
    "results": {method: [{"clean": acc, "table": {name: {severity: acc}}} per seed]}}``;
    :func:`summarize_corruption` turns one entry into means per severity/type/category.
    """
    from ..progress import progress_bar

    if corrupt_fn is None or categories is None:
        default_fn, default_cats = _corruption_backend()
        corrupt_fn = corrupt_fn or default_fn
        categories = categories or default_cats
    names = list(corruptions) if corruptions is not None else list(categories)
    for name in names:
        if name not in categories:
            raise UnknownNameError("corruption", name, categories)
    severities = [int(s) for s in severities]
    results = {label: [{"clean": accuracy(m, x, y, batch_size), "table": {n: {} for n in names}} for m in seeds]
               for label, seeds in models.items()}
    with progress_bar(len(names) * len(severities), "corruptions", enabled=progress) as bar:
        for name in names:
            for sev in severities:
                xc = torch.cat([corrupt_fn(x[i:i + batch_size], name, sev, seed=seed + i)
                                for i in range(0, len(x), batch_size)]).to(x.device, x.dtype)
                for label, seeds in models.items():
                    for entry, model in zip(results[label], seeds):
                        entry["table"][name][sev] = accuracy(model, xc, y, batch_size)
                bar.advance(1)
    return {"severities": severities, "categories": {n: categories[n] for n in names}, "results": results}


def corruption_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> dict:
    """One model's corruption table: ``{"clean", "table": {name: {severity: acc}}, "categories"}``
    (keyword arguments as :func:`corruption_report`)."""
    rep = corruption_report({"model": [model]}, x, y, **kwargs)
    return {**rep["results"]["model"][0], "categories": rep["categories"]}


def summarize_corruption(result: Mapping, categories: Mapping[str, str] | None = None) -> dict:
    """Mean corruption accuracy per severity (the papers' measure), per type (over severities)
    and per category (over its types and all severities), from one :func:`corruption_accuracy`
    result (or one per-seed entry of :func:`corruption_report` plus its ``categories``)."""
    table = {n: {int(s): v for s, v in row.items()} for n, row in result["table"].items()}  # JSON keys are str
    cats = categories or result["categories"]
    severities = sorted({int(s) for row in table.values() for s in row})
    per_sev = {s: sum(table[n][s] for n in table) / len(table) for s in severities}
    per_type = {n: sum(row.values()) / len(row) for n, row in table.items()}
    per_cat: dict[str, list[float]] = {}
    for n, row in table.items():
        per_cat.setdefault(cats[n], []).extend(row.values())
    return {"clean": result["clean"], "per_severity": per_sev, "per_type": per_type,
            "per_category": {c: sum(v) / len(v) for c, v in per_cat.items()},
            "mean": sum(per_sev.values()) / len(per_sev)}
