"""Vectorized multi-seed training: S copies of one MLP architecture trained as one batched model.

Sweeps in the papers are many small runs of the same network (seeds × methods × angles × variance
scales). On their own, such runs are dominated by per-op overhead; stacked along a leading
*model* dimension they become a few ``torch.bmm`` calls per layer. The stacked run is the same
computation as S separate runs:

- forward of layer ``l``: ``y[s] = x[s] W[s]ᵀ + b[s]`` for every model ``s`` (``baddbmm``);
- backward (:class:`BatchedFeedbackLinear`): ``∂W[s] = δ[s]ᵀ x[s]``, ``∂b[s] = Σ δ[s]`` and the input
  error ``δ[s] F[s]`` with ``F[s] = B[s]`` for feedback alignment (``fa``; also IFA and RNP, which are
  FA from another starting point) or ``F[s] = W[s]`` for backpropagation (``bp``, weight transport);
- the loss is ``Σ_s ℓ_s`` with ``ℓ_s`` model ``s``'s mean cross-entropy, so model ``s``'s
  parameters receive exactly ``∂ℓ_s``;
- Adam (and SGD, and L2 weight decay) act elementwise, so one ``torch.optim.Adam`` over the stacked
  tensors is S independent Adams;
- each model draws its own batch order from its own seed (an index gather per model).

Usage::

    models = [pa.mlp([784, 100, 10], rule="fa", generator=torch.Generator().manual_seed(s)) for s in range(8)]
    curves = pa.batched.train_batched(models, data, epochs=10, seeds=range(8))   # models updated in place
    # what 8 prealign.train runs return (TrainResults: same records, patience, divergence, checkpoints)
    results = pa.batched.train_runs(models, data, epochs=10, seeds=range(8), patience=3)

Sweeps use :func:`train_runs` for groups of compatible runs (:mod:`prealign.sweep_batched`).

Shapes: weights ``(S, out, in)``, biases ``(S, out)``, activations ``(S, N, features)``.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .device import resolve_device
from .errors import ConfigError, PrealignError
from .feedback import RULES, FeedbackLayer
from .init import _row_angles
from .models import ACTIVATIONS
from .progress import progress_bar
from .trainer import GRAD_BATCH, TrainResult, _make_optimizer

BATCHED_RULES = ("bp", "fa")
_ACTIVATION_TYPES = tuple(ACTIVATIONS.values())


class BatchedFeedbackLinear(torch.autograd.Function):
    """``y = x Wᵀ + b`` for S models at once; the input error travels through ``feedback``.

    Shapes: ``x (S, N, in)``, ``weight, feedback (S, out, in)``, ``bias (S, out)`` or None.
    Backward: ``∂x = δ F``, ``∂W = δᵀ x``, ``∂b = Σ_N δ`` per model — the FLOPs of autograd's own
    backward for ``bmm``; ``weight`` is not saved (no weight transport unless ``feedback`` is ``W``).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, feedback):
        ctx.save_for_backward(x, feedback)
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad_out):
        x, feedback = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(grad_out, feedback)
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(grad_out.transpose(1, 2), x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(1)
        return grad_x, grad_w, grad_b, None


def _mlp_structure(model: nn.Module, index: int):
    """``(linear layers with their names, activation module, signature)`` of a plain MLP, or PrealignError."""
    if not isinstance(model, nn.Sequential):
        raise PrealignError(f"batched training needs nn.Sequential MLPs (as built by prealign.mlp); model {index} is "
                            f"{type(model).__name__}; train it with prealign.train instead")
    linears, activation, signature = [], None, []
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            linears.append((name, module))
            signature.append(("linear", module.in_features, module.out_features, module.bias is not None))
        elif isinstance(module, nn.Flatten):
            signature.append(("flatten",))
        elif isinstance(module, _ACTIVATION_TYPES):
            if activation is not None and repr(activation) != repr(module):
                raise PrealignError(f"batched training needs one activation per model; model {index} mixes "
                                    f"{activation} and {module}")
            activation = module
            signature.append(("act", repr(module)))
        else:
            raise PrealignError(f"batched training supports MLPs of Linear layers and activations; model {index} has "
                                f"a {type(module).__name__}; train it with prealign.train instead")
    if not linears:
        raise PrealignError(f"model {index} has no Linear layer to train")
    return linears, activation, tuple(signature)


def _rule(layer: nn.Linear, index: int) -> str:
    rule = getattr(layer, "rule", "bp") if isinstance(layer, FeedbackLayer) else "bp"
    if getattr(layer, "_exact", False):
        rule = "bp"
    if rule not in BATCHED_RULES:
        raise PrealignError(f"batched training supports the rules {', '.join(BATCHED_RULES)} (methods bp, fa, ifa, rnp); "
                            f"model {index} uses rule {rule!r}; train it with prealign.train instead")
    return rule


class BatchedMLP(nn.Module):
    """S MLPs of one architecture stacked along a leading model dimension.

    Parameters ``weights[l]``: ``(S, out_l, in_l)``; ``biases[l]``: ``(S, out_l)``; buffers
    ``feedbacks[l]``: ``(S, out_l, in_l)`` (each model's ``B``; zeros where the model has none) and
    ``transport[l]``: ``(S,)`` bool, True where model ``s`` layer ``l`` learns by backpropagation
    (its input error goes through its own ``W``).
    """

    def __init__(self, weights, biases, feedbacks, transport, activation: nn.Module | None, templates=(),
                 layer_names=()):
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(w) for w in weights])
        self.biases = nn.ParameterList([nn.Parameter(b) for b in biases if b is not None])
        self.has_bias = [b is not None for b in biases]
        for i, (fb, tr) in enumerate(zip(feedbacks, transport)):
            self.register_buffer(f"feedback{i}", fb)
            self.register_buffer(f"transport{i}", tr)
        # which feedback each layer uses, decided once on the host (no device sync per step)
        self._modes = ["bp" if bool(t.all()) else "fa" if not bool(t.any()) else "mixed" for t in transport]
        self.activation = activation if activation is not None else nn.Identity()
        self.templates = list(templates)
        self.layer_names = list(layer_names)

    @property
    def num_models(self) -> int:
        return self.weights[0].shape[0]

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    def feedback(self, i: int) -> torch.Tensor:
        return getattr(self, f"feedback{i}")

    def transport(self, i: int) -> torch.Tensor:
        return getattr(self, f"transport{i}")

    def bias(self, i: int) -> torch.Tensor | None:
        if not self.has_bias[i]:
            return None
        return self.biases[sum(self.has_bias[:i])]

    @classmethod
    def from_models(cls, models: Sequence[nn.Module], device: str | torch.device | None = None) -> BatchedMLP:
        """Stack copies of ``models`` (same MLP architecture; rules ``bp``/``fa``) into one BatchedMLP.

        The models are not changed; :meth:`to_models` / :meth:`write_back` return the trained weights.
        """
        models = list(models)
        if not models:
            raise ConfigError("batched training needs at least one model")
        structures = [_mlp_structure(m, i) for i, m in enumerate(models)]
        for i, s in enumerate(structures[1:], 1):
            if s[2] != structures[0][2]:
                raise PrealignError(f"batched training needs one architecture; model {i} differs from model 0 "
                                    f"({s[2]} vs {structures[0][2]})")
        n_layers = len(structures[0][0])
        weights, biases, feedbacks, transport = [], [], [], []
        ref = structures[0][0][0][1].weight
        dev = torch.device(device) if device is not None else ref.device
        for layer in range(n_layers):
            layers = [s[0][layer][1] for s in structures]
            rules = [_rule(lin, i) for i, lin in enumerate(layers)]
            weights.append(torch.stack([lin.weight.detach() for lin in layers]).to(dev, torch.float32).clone())
            biases.append(torch.stack([lin.bias.detach() for lin in layers]).to(dev, torch.float32).clone()
                          if layers[0].bias is not None else None)
            feedbacks.append(torch.stack([lin.feedback.detach() if isinstance(lin, FeedbackLayer)
                                          else torch.zeros_like(lin.weight) for lin in layers]).to(dev, torch.float32).clone())
            transport.append(torch.tensor([r == "bp" for r in rules], device=dev))
        names = [name for name, _ in structures[0][0]]
        return cls(weights, biases, feedbacks, transport, copy.deepcopy(structures[0][1]),
                   templates=[copy.deepcopy(m) for m in models], layer_names=names)

    def _step_feedback(self, i: int) -> torch.Tensor:
        w, mode = self.weights[i], self._modes[i]
        if mode == "bp":
            return w.detach()
        if mode == "fa":
            return self.feedback(i)
        return torch.where(self.transport(i)[:, None, None], w.detach(), self.feedback(i))

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """Logits ``(S, N, classes)``.

        ``x``: ``(S, N, ...)``, each model its own batch; or, with ``shared=True``, ``(N, ...)``, one
        batch for all models (evaluation), whose first layer runs as one ``(N, in) × (in, S·out)`` GEMM.
        """
        s = self.num_models
        start = 0
        if shared:
            x = x.reshape(x.shape[0], -1)
            w, b = self.weights[0], self.bias(0)
            h = (x @ w.reshape(-1, w.shape[2]).t()).view(x.shape[0], s, w.shape[1]).transpose(0, 1)
            if b is not None:
                h = h + b.unsqueeze(1)
            h = self.activation(h) if self.num_layers > 1 else h
            start = 1
        else:
            h = x.reshape(s, x.shape[1], -1)
        for i in range(start, self.num_layers):
            if torch.is_grad_enabled():
                # the input layer's error is never used: skip building its (mixed) feedback
                feedback = self._step_feedback(i) if h.requires_grad else self.feedback(i)
                h = BatchedFeedbackLinear.apply(h, self.weights[i], self.bias(i), feedback)
            else:
                b = self.bias(i)
                h = torch.bmm(h, self.weights[i].transpose(1, 2)) if b is None else \
                    torch.baddbmm(b.unsqueeze(1), h, self.weights[i].transpose(1, 2))
            if i < self.num_layers - 1:
                h = self.activation(h)
        return h

    @torch.no_grad()
    def alignment_angles(self) -> list[dict[str, float]]:
        """Per model ``{layer name: mean row angle between W and B in degrees}`` (as :func:`prealign.alignment_angles`),
        for the layers that are feedback layers in the original models under a rule that reads ``B`` (not bp)."""
        out = [{} for _ in range(self.num_models)]
        for i, name in enumerate(self.layer_names):
            w, b = self.weights[i], self.feedback(i)
            s, rows = w.shape[0], w.shape[1]
            angles = _row_angles(w.reshape(s * rows, -1), b.reshape(s * rows, -1)).view(s, rows).mean(1)
            for k in range(s):
                layer = dict(self.templates[k].named_children())[name] if self.templates else None
                if isinstance(layer, FeedbackLayer) and RULES[layer.rule].reads_feedback:  # as prealign.alignment_angles
                    out[k][name] = float(angles[k])
        return out

    def gradient_alignment(self, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, float]]:
        """Per model ``{layer name: degrees}`` as :func:`prealign.trainer.gradient_alignment` gives for
        each model alone: for every layer but the last, the angle between the error the model's rule
        delivers to the layer's output and the true backprop error (``W`` as feedback), on model
        ``s``'s batch ``x[s]`` (``(S, N, ...)``), ``y[s]`` (``(S, N)``), the whole batch flattened.
        Parameters and their ``.grad`` are left alone."""
        s, n_layers = self.num_models, self.num_layers
        if n_layers < 2:
            return [{} for _ in range(s)]
        x = x.reshape(s, x.shape[1], -1)

        def errors(exact: bool) -> tuple[torch.Tensor, ...]:
            with torch.enable_grad():
                h, outputs = x, []
                for i in range(n_layers):
                    feedback = self.weights[i].detach() if exact or not h.requires_grad else self._step_feedback(i)
                    h = BatchedFeedbackLinear.apply(h, self.weights[i], self.bias(i), feedback)
                    if i < n_layers - 1:
                        outputs.append(h)
                        h = self.activation(h)
                loss = F.cross_entropy(h.reshape(-1, h.shape[-1]), y.reshape(-1), reduction="none").view(s, -1).mean(1)
                return torch.autograd.grad(loss.sum(), outputs)

        delivered, true = errors(False), errors(True)
        out = [{} for _ in range(s)]
        for i, name in enumerate(self.layer_names[:-1]):
            a, b = delivered[i].double().reshape(s, -1), true[i].double().reshape(s, -1)
            na, nb = a.norm(dim=1), b.norm(dim=1)
            cos = ((a * b).sum(1) / (na * nb)).clamp(-1.0, 1.0)
            angles = torch.rad2deg(torch.acos(cos))
            bad = ~(torch.isfinite(na) & torch.isfinite(nb)) | (na == 0) | (nb == 0)
            angles = torch.where(bad, torch.full_like(angles, math.nan), angles).tolist()
            for k in range(s):
                if not self.templates or isinstance(dict(self.templates[k].named_children())[name], FeedbackLayer):
                    out[k][name] = angles[k]
        return out

    @torch.no_grad()
    def write_back(self, models: Sequence[nn.Module]) -> list[nn.Module]:
        """Copy each model's trained ``W`` and ``b`` into ``models[s]`` (same architecture) in place."""
        for k, model in enumerate(models):
            linears, _, _ = _mlp_structure(model, k)
            for i, (_, lin) in enumerate(linears):
                lin.weight.copy_(self.weights[i][k].to(lin.weight))
                if lin.bias is not None:
                    lin.bias.copy_(self.bias(i)[k].to(lin.bias))
                if isinstance(lin, FeedbackLayer):
                    lin._kp_last = None
        return list(models)

    def select(self, keep: Sequence[int]) -> BatchedMLP:
        """A new BatchedMLP of models ``keep`` (positions in this stack, in that order); tensors copied."""
        idx = torch.as_tensor(list(keep), dtype=torch.long, device=self.weights[0].device)
        return BatchedMLP([w.detach()[idx].clone() for w in self.weights],
                          [None if b is None else b.detach()[idx].clone() for b in (self.bias(i) for i in range(self.num_layers))],
                          [self.feedback(i)[idx].clone() for i in range(self.num_layers)],
                          [self.transport(i)[idx].clone() for i in range(self.num_layers)],
                          copy.deepcopy(self.activation), templates=[self.templates[k] for k in keep] if self.templates else (),
                          layer_names=self.layer_names)

    def to_models(self) -> list[nn.Module]:
        """Unstack: fresh copies of the original models carrying the current weights."""
        return self.write_back([copy.deepcopy(t) for t in self.templates])


def _tensors(data):
    """``(x_train, y_train, x_test, y_test)`` from a prealign Dataset, a dict or a 2-/4-tuple."""
    if isinstance(data, (tuple, list)):
        if len(data) == 2:
            return data[0], data[1], None, None
        if len(data) == 4:
            return tuple(data)
        raise ConfigError("data must be a Dataset or (x_train, y_train[, x_test, y_test])")
    get = data.get if isinstance(data, dict) else lambda k: getattr(data, k, None)
    return get("x_train"), get("y_train"), get("x_test"), get("y_test")


@torch.no_grad()
def _evaluate(net: BatchedMLP, x: torch.Tensor, y: torch.Tensor, batch_size: int):
    """Per model ``(mean loss, accuracy)`` on one shared set, as float64 tensors ``(S,)``."""
    s = net.num_models
    loss = torch.zeros(s, dtype=torch.float64, device=x.device)
    correct = torch.zeros(s, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        logits = net(xb, shared=True)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.repeat(s), reduction="none").view(s, -1)
        loss += ce.double().sum(1)
        correct += (logits.argmax(-1) == yb).double().sum(1)
    n = max(x.shape[0], 1)
    return loss / n, correct / n


def _train_epoch(net: BatchedMLP, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 gens: Sequence[torch.Generator], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of every stacked model: model ``s`` draws its order ``torch.randperm(N, generator=gens[s])``
    (CPU) and takes ``batch_size`` steps on the mean cross-entropy of its own batches. Returns the
    running mean train loss and accuracy over the epoch, ``(S,)`` float64 on the CPU (one host sync)."""
    n, s = x.shape[0], len(gens)
    order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(x.device)  # (S, N)
    loss_sum = torch.zeros(s, dtype=torch.float64, device=x.device)
    correct = torch.zeros(s, dtype=torch.float64, device=x.device)
    for b0 in range(0, n, batch_size):
        idx = order[:, b0:b0 + batch_size]  # (S, B): model s's batch
        xb, yb = x[idx], y[idx]
        logits = net(xb)
        per_model = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1),
                                    reduction="none").view(s, -1).mean(1)
        opt.zero_grad(set_to_none=True)
        per_model.sum().backward()
        opt.step()
        with torch.no_grad():
            loss_sum += per_model.detach().double() * idx.shape[1]
            correct += (logits.detach().argmax(-1) == yb).double().sum(1)
    return (loss_sum / n).cpu(), (correct / n).cpu()


def train_batched(models: Sequence[nn.Module], data, *, epochs: int, batch_size: int = 64, lr: float = 1e-4,
                  seeds: Sequence[int] | None = None, optimizer: str = "adam", weight_decay: float = 0.0,
                  momentum: float = 0.0, device: str | torch.device = "auto", eval_batch_size: int = 2048, evaluate: bool = True,
                  progress: bool | None = None) -> list[list[dict]]:
    """Train ``models`` (one MLP architecture, rules bp/fa) side by side as one batched model; return their curves.

    Each model ``s`` sees the training set in its own order: every epoch a fresh
    ``torch.randperm(N, generator=g_s)`` with ``g_s = torch.Generator().manual_seed(seeds[s])`` (CPU),
    batches of ``batch_size`` (the last one smaller). ``optimizer``: ``"adam"``, ``"adamw"`` or ``"sgd"``
    (with ``momentum``) at ``lr`` with ``weight_decay``, the trainer's own (fused) optimizers; the result equals S separate runs with the same batch orders up to float
    rounding (tested). The trained weights are written back into ``models`` in place.

    Returns one curve per model: a list of per-epoch dicts ``epoch`` (0 = before training),
    ``train_loss``, ``train_acc`` (running mean over the epoch's batches; at epoch 0 evaluated on the
    training set), ``test_loss``, ``test_acc`` (when the data has a test set), ``angle/<layer>``
    (degrees) and ``seconds`` (wall time of the whole batched epoch). Accuracies are fractions.
    A model whose loss becomes non-finite gets ``diverged=True`` in its records from then on.
    """
    if epochs < 0 or batch_size <= 0 or lr <= 0:
        raise ConfigError(f"epochs must be >= 0, batch_size and lr > 0 (got {epochs}, {batch_size}, {lr})")
    dev = resolve_device(device)
    x_train, y_train, x_test, y_test = _tensors(data)
    if x_train is None or y_train is None:
        raise ConfigError("data has no x_train / y_train tensors")
    net = BatchedMLP.from_models(models, device=dev)
    s = net.num_models
    seeds = [0] * s if seeds is None else [int(v) for v in seeds]
    if len(seeds) != s:
        raise ConfigError(f"got {len(seeds)} seeds for {s} models; pass one seed per model")
    x_train = x_train.to(dev, torch.float32).reshape(x_train.shape[0], -1)
    y_train = y_train.to(dev)
    if x_test is not None:
        x_test = x_test.to(dev, torch.float32).reshape(x_test.shape[0], -1)
        y_test = y_test.to(dev)
    # the trainer's optimizers, fused: one pass over the stacked tensors per step (6x faster than the
    # per-tensor loop torch picks on the CPU); every update is elementwise, so S models stacked = S optimizers
    opt = _make_optimizer(optimizer, net.parameters(), lr, weight_decay, momentum)
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    curves: list[list[dict]] = [[] for _ in range(s)]
    diverged = [False] * s

    def record(epoch, train_loss, train_acc, seconds):
        test = _evaluate(net, x_test, y_test, eval_batch_size) if evaluate and x_test is not None else None
        angles = net.alignment_angles()
        for k in range(s):
            rec = {"epoch": epoch, "train_loss": float(train_loss[k]), "train_acc": float(train_acc[k])}
            if test is not None:
                rec["test_loss"], rec["test_acc"] = float(test[0][k]), float(test[1][k])
            rec.update({f"angle/{name}": a for name, a in angles[k].items()})
            rec["seconds"] = seconds
            if not math.isfinite(rec["train_loss"]):
                diverged[k] = True
            if diverged[k]:
                rec["diverged"] = True
            curves[k].append(rec)

    net.eval()
    record(0, *_evaluate(net, x_train, y_train, eval_batch_size) if evaluate else (torch.full((s,), math.nan),) * 2, 0.0)
    net.train()
    with progress_bar(epochs, f"batched training ×{s}", enabled=progress) as bar:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            loss, acc = _train_epoch(net, opt, x_train, y_train, gens, batch_size)
            record(epoch, loss, acc, time.perf_counter() - start)
            bar.advance(1, loss=float(loss.mean()))
    net.write_back(models)
    return curves


# -------------------------------------------------------------------- S prealign.train runs in one
def _per_model(value, s: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != s:
            raise ConfigError(f"got {len(value)} values of {name} for {s} models; pass one per model (or one for all)")
        return list(value)
    return [value] * s


def _sliced_state(state: dict, index) -> dict:
    """Optimizer state of some models out of a stacked parameter's state: tensors with a leading
    model dimension are indexed, scalars (Adam's shared ``step``) copied."""
    out = {}
    for key, value in state.items():
        if torch.is_tensor(value):
            out[key] = value[index].clone() if value.dim() >= 1 else value.clone()
        else:
            out[key] = value
    return out


def _restack(net: BatchedMLP, opt, keep: list[int], make_opt) -> tuple[BatchedMLP, torch.optim.Optimizer]:
    """Drop the models not in ``keep`` (stack positions) from ``net`` and from its optimizer state."""
    new = net.select(keep)
    new_opt = make_opt(new.parameters())
    idx = torch.as_tensor(keep, dtype=torch.long, device=net.weights[0].device)
    for old_p, new_p in zip(net.parameters(), new.parameters()):
        if opt.state.get(old_p):
            new_opt.state[new_p] = _sliced_state(opt.state[old_p], idx)
    return new, new_opt


def _model_optimizer_state(net: BatchedMLP, opt, position: int, model: nn.Module, make_opt) -> dict:
    """``state_dict()`` of the optimizer :func:`prealign.train` would hold for ``model`` (= stack
    position ``position``): the same optimizer over ``model.parameters()`` carrying that model's
    slice of the stacked state, so a checkpoint resumes under :func:`prealign.train`."""
    model_opt = make_opt(model.parameters())
    linears, _, _ = _mlp_structure(model, position)
    for i, (_, lin) in enumerate(linears):
        pairs = [(lin.weight, net.weights[i])]
        if lin.bias is not None:
            pairs.append((lin.bias, net.bias(i)))
        for p, stacked in pairs:
            if opt.state.get(stacked):
                model_opt.state[p] = _sliced_state(opt.state[stacked], position)
    return model_opt.state_dict()


def train_runs(models: Sequence[nn.Module], data, *, epochs: int | Sequence[int], seeds: Sequence[int],
               patience: int | None | Sequence[int | None] = None, batch_size: int = 64, lr: float = 1e-4,
               optimizer: str = "adam", weight_decay: float = 0.0, momentum: float = 0.0,
               device: str | torch.device = "auto", grad_alignment: bool = True, eval_batch_size: int = 4096,
               checkpoints: Sequence | None = None, callbacks: Sequence[Sequence] | None = None,
               on_done=None, progress: bool | None = None, description: str = "batched runs") -> list[TrainResult]:
    """S :func:`prealign.train` runs (MLPs of one architecture, rules bp/fa) trained as one batched model.

    Returns what ``[train(models[s], data, epochs=epochs[s], patience=patience[s], seed=seeds[s], ...)
    for s in range(S)]`` returns, up to float rounding (tested): the same per-epoch records
    (``epoch``, ``seconds``, ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``,
    ``angle/<layer>`` and, with ``grad_alignment``, ``grad_angle/<layer>`` in degrees, ``eval_seconds``;
    epoch 0 = before training), ``best_test_acc``/``best_epoch``, early stopping (``patience``),
    divergence (a NaN/inf loss stops that model only), and each model's trained weights written back
    into ``models[s]`` in place — those of the epoch where *its* run stops.

    ``epochs`` and ``patience`` may differ per model (a sequence, one per model): a model whose run
    ends is taken out of the stack (with its optimizer state), so the others go on at S−1 models' cost.
    Each model draws its batch order from ``torch.Generator().manual_seed(seeds[s])`` and its gradient-
    alignment batch from seed ``seeds[s] + 7919``, as :func:`prealign.train` does.

    ``checkpoints[s]``: None or an object with ``save(state)``; after every epoch of model ``s`` it gets
    the state :func:`prealign.train` saves (model, optimizer of the same kind over that model's
    parameters, batch-order generator, RNGs, curves, counters), so an interrupted batched run resumes
    under plain :func:`prealign.train`. ``callbacks[s]``: objects with ``on_epoch_end(epoch, model, data,
    record)`` (``model`` = model ``s`` carrying the current weights); ``on_step_end`` is not supported
    (raises PrealignError). ``on_done(s, result)`` is called as soon as model ``s``'s run ends (its
    result complete), while the others may go on. ``optimizer``: adam, adamw or sgd (with
    ``momentum``), the trainer's fused optimizers over the stacked tensors (elementwise updates).
    Times in the records are the batched wall times divided by the number of models trained in that
    epoch (each model's share).
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
    x_train, y_train, x_test, y_test = _tensors(data)
    if x_train is None or y_train is None or x_test is None or y_test is None:
        raise ConfigError("train_runs needs data with x_train, y_train, x_test, y_test tensors")
    for m in models:
        m.to(dev)
    net = BatchedMLP.from_models(models, device=dev)
    x_train = x_train.to(dev, torch.float32).reshape(x_train.shape[0], -1)
    x_test = x_test.to(dev, torch.float32).reshape(x_test.shape[0], -1)
    y_train, y_test = y_train.to(dev), y_test.to(dev)
    n = x_train.shape[0]
    if n == 0:
        raise ConfigError("train_runs got an empty training set")

    def make_opt(params):
        return _make_optimizer(optimizer, params, lr, weight_decay, momentum)

    opt = make_opt(net.parameters())
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    # prealign.train's fixed gradient-alignment batch, per model: (S, GRAD_BATCH, features), (S, GRAD_BATCH)
    grad_idx = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))[:GRAD_BATCH]
                            for seed in seeds]).to(dev)
    grad_x, grad_y = x_train[grad_idx], y_train[grad_idx]
    model_data = data
    torch_rng = torch.get_rng_state()  # prealign.train leaves the global RNG alone; its checkpoints carry it
    cuda_rng = torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None
    results = [TrainResult() for _ in range(s)]
    bad = [0] * s
    steps = [0] * s
    active = list(range(s))  # model index at each stack position

    def measure_rest(j: int, record: dict, test, angles, grad_angles, position: int) -> None:
        """test loss/acc, angles, gradient alignment and callbacks for model j (weights written back)."""
        record["test_loss"], record["test_acc"] = float(test[0][position]), float(test[1][position])
        for name, deg in angles[position].items():
            record[f"angle/{name}"] = deg
        if grad_alignment:
            for name, deg in grad_angles[position].items():
                record[f"grad_angle/{name}"] = deg
        for cb in callbacks[j]:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(record["epoch"], models[j], model_data, record)

    def update_best(j: int, record: dict) -> None:
        res, acc = results[j], record["test_acc"]
        if not res.best_test_acc >= acc:  # also true while best is NaN
            res.best_test_acc, res.best_epoch, bad[j] = acc, record["epoch"], 0
        else:
            bad[j] += 1

    def save(j: int, position: int, epoch: int, done: bool) -> None:
        if checkpoints[j] is None:
            return
        res = results[j]
        checkpoints[j].save({
            "model": models[j].state_dict(), "optimizer": _model_optimizer_state(net, opt, position, models[j], make_opt),
            "generator": gens[j].get_state(), "torch_rng": torch_rng, "cuda_rng": cuda_rng,
            "epoch": epoch, "curves": res.curves, "best_test_acc": res.best_test_acc, "best_epoch": res.best_epoch,
            "bad_epochs": bad[j], "step": steps[j], "train_seconds": res.train_seconds, "done": done,
            "diverged": res.diverged, "diverged_epoch": res.diverged_epoch, "stopped_early": res.stopped_early,
        })

    def finish_epoch(epoch: int, train_loss, train_acc, seconds: float) -> None:
        """Records for every model in the stack, checkpoints, then drop the models whose run ended."""
        nonlocal net, opt, active
        t = time.perf_counter()
        net.write_back([models[j] for j in active])
        with torch.no_grad():
            test = _evaluate(net, x_test, y_test, eval_batch_size)
            test = (test[0].cpu(), test[1].cpu())
        angles = net.alignment_angles()
        grad_angles = net.gradient_alignment(grad_x[active], grad_y[active]) if grad_alignment else None
        share = 1.0 / len(active)
        records, keep = [], []
        for position, j in enumerate(active):
            res = results[j]
            record = {"epoch": epoch, "seconds": seconds * share}
            if epoch == 0 or math.isfinite(float(train_loss[position])):
                record["train_loss"], record["train_acc"] = float(train_loss[position]), float(train_acc[position])
                measure_rest(j, record, test, angles, grad_angles, position)
                records.append(record)  # eval_seconds added below, once the shared time is known
            else:
                record["train_loss"], record["train_acc"] = float(train_loss[position]), float(train_acc[position])
                record["test_loss"], record["test_acc"] = math.nan, math.nan
            res.curves.append(record)
        eval_share = (time.perf_counter() - t) * share
        for record in records:
            record["eval_seconds"] = eval_share
        for position, j in enumerate(active):
            res, record = results[j], results[j].curves[-1]
            if epoch == 0:
                update_best(j, record)
                bad[j] = 0
                if not (math.isfinite(record["train_loss"]) and math.isfinite(record["test_loss"])):
                    res.diverged, res.diverged_epoch = True, 0
                stop = False
            else:
                res.train_seconds += record["seconds"]
                if not math.isfinite(record["train_loss"]) or not math.isfinite(record["test_loss"]):
                    res.diverged, res.diverged_epoch = True, epoch
                else:
                    update_best(j, record)
                stop = patience_of[j] is not None and bad[j] >= patience_of[j] and not res.diverged
                res.stopped_early = stop
            done = res.diverged or stop or epoch >= epochs_of[j]
            save(j, position, epoch, done)
            res.seconds += record["seconds"] + record.get("eval_seconds", 0.0)
            if not done:
                keep.append(position)
            else:
                res.epochs_run = record["epoch"]
                if on_done is not None:
                    on_done(j, res)
        if len(keep) < len(active):
            active = [active[p] for p in keep]
            if keep:
                net, opt = _restack(net, opt, keep, make_opt)

    setup = (time.perf_counter() - start) / s  # each model's share of building the stack
    for res in results:
        res.seconds = setup
    # epoch 0: the state before any data training
    with torch.no_grad():
        tr = _evaluate(net, x_train, y_train, eval_batch_size)
    net.train()
    finish_epoch(0, tr[0].cpu(), tr[1].cpu(), 0.0)
    with progress_bar(max(epochs_of), description, enabled=progress) as bar:
        for epoch in range(1, max(epochs_of) + 1):
            if not active:
                break
            t = time.perf_counter()
            train_loss, train_acc = _train_epoch(net, opt, x_train, y_train, [gens[j] for j in active], batch_size)
            for j in active:
                steps[j] += -(-n // batch_size)
            finish_epoch(epoch, train_loss, train_acc, time.perf_counter() - t)
            bar.advance(1, models=len(active))
    return results


def pretrain_noise_batched(models: Sequence[nn.Module], generators: Sequence[torch.Generator | None], samples: int, *,
                           batch_size: int = 64, lr: float = 1e-4, distribution: str = "gaussian",
                           std: float = 1.0) -> float:
    """S :func:`prealign.pretrain_noise` runs (MLPs of one architecture, rules bp/fa) as one batched model.

    Model ``s`` sees the noise :func:`prealign.pretrain_noise` would draw for it with
    ``generator=generators[s]`` (its own noise stream, seeded from that generator the same way; labels
    uniform over the classes) and gets the same fresh Adam at ``lr``, so each model ends where its
    own ``pretrain_noise(models[s], samples, ...)`` ends, up to float rounding (tested through
    sweeps of RNP runs). The weights are written back into ``models`` in place; returns the wall time
    in seconds (noise paper A.1, B.8).
    """
    from .pretrain import check_noise_options, infer_io, noise_batch, noise_stream

    check_noise_options(distribution, samples, batch_size)
    models = list(models)
    if len(generators) != len(models):
        raise ConfigError(f"pass one generator per model ({len(models)})")
    start = time.perf_counter()
    shape, classes = infer_io(models[0])
    device = next(models[0].parameters()).device
    net = BatchedMLP.from_models(models, device=device)
    s = net.num_models
    streams = [noise_stream(g, device) for g in generators]  # each model's own stream, as pretrain_noise seeds it
    opt = torch.optim.Adam(net.parameters(), lr=lr)  # the optimizer pretrain_noise uses
    seen = 0
    net.train()
    for _ in range(math.ceil(samples / batch_size)):
        n = min(batch_size, samples - seen)
        xs, ys = zip(*(noise_batch(n, shape, classes, gen, device, torch.float32, distribution, std) for gen in streams))
        logits = net(torch.stack(xs).reshape(s, n, -1))
        per_model = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.stack(ys).reshape(-1),
                                    reduction="none").view(s, n).mean(1)
        opt.zero_grad(set_to_none=True)
        per_model.sum().backward()
        opt.step()
        seen += n
    net.write_back(models)
    return time.perf_counter() - start
