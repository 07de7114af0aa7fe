"""The invariants matrix: every rule × every optimizer path × an MLP and a small CNN (plus 1-D/3-D convolutions,
a transposed convolution and batch-first self-attention).

Each training step is checked against the rule's defining property, computed independently of
prealign's backward (plain ``F.linear``/``F.conv2d`` autograd on the tensors the layer saw):

- every rule: the weight gradient is the local ``δᵀx`` (bias ``Σ δ``);
- ``bp``: the input error is ``δ W`` (autograd), and training equals a plain-PyTorch copy;
- ``fa``: the input error is ``δ B`` and ``B`` never changes;
- ``kp``: the input error is ``δ B`` and per optimizer step ``B' − B = ΔW − d (B − W)`` exactly,
  so the angle ∠(W, B) shrinks;
- ``wm``: the input error is ``δ B`` and per optimizer step each mirror step is exactly
  ``B ← (1 − λ) B + (η/N) yᵀ x`` with ``x`` the noise replayed from the RNG and ``y`` the layer's
  output on it with the *new* ``W`` (plain ``F.linear``/``F.conv`` autograd), so ∠(W, B) shrinks;
- ``usf``/``frsf``/``brsf``: the feedback's signs equal ``sign(W)`` (usf/frsf: exact magnitudes);
- ``dfa``: the input error of every layer is ``e D`` (``e`` the output error), ``D`` fixed.

Optimizer paths: ``prealign.train`` (whose ``_make_optimizer`` picks the fused kernels, which do
not bump ``Tensor._version``) with adam, adamw (+decay), sgd and sgd (+momentum, decay); and a
plain user loop with the user's own optimizers, unfused (for-loop and foreach) and fused.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import prealign as pa
from prealign.feedback import RULES, AttentionProjection, FeedbackLayer
from prealign.run.trainer import TensorData, _make_optimizer

KP_DECAY = 0.1
WM = {"lr": 0.3, "noise_std": 0.5, "decay": 0.1, "steps": 2, "batch": 16, "noise": "gaussian"}  # wm settings (replayed below)
LR = 1e-2
STEPS = 3
BATCH = 8


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 4))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16, 4))


def _cnn1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 3, 3, padding="same"), nn.ReLU(), nn.Conv1d(3, 2, 3, stride=2), nn.Flatten(),
                         nn.Linear(12, 4))


def _cnn3d() -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 2, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                         nn.Conv3d(2, 2, 2, stride=2, dilation=1), nn.Flatten(), nn.Linear(16, 4))


def _cnn_transposed() -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(1, 2, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
                         nn.Conv2d(2, 2, 3, stride=2), nn.Flatten(), nn.Linear(8, 4))


class _Attention(nn.Module):
    """Token embedding → batch-first self-attention (packed in_proj, out_proj) → head."""

    def __init__(self):
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(4, 6), nn.MultiheadAttention(6, 2, batch_first=True), nn.Linear(18, 4)

    def forward(self, x):
        h = self.embed(x)
        return self.head(self.attn(h, h, h, need_weights=False)[0].flatten(1))


MODELS = {"mlp": (_mlp, (12,)), "cnn": (_cnn, (1, 8, 8)), "cnn1d": (_cnn1d, (2, 13)), "cnn3d": (_cnn3d, (1, 4, 4, 4)),
          "cnn-transposed": (_cnn_transposed, (1, 3, 3)), "attention": (_Attention, (3, 4))}

# (name, optimizer name for prealign.train, weight_decay, momentum)
TRAINER_PATHS = {"train-adam": ("adam", 0.0, 0.0), "train-adamw": ("adamw", 1e-2, 0.0),
                 "train-sgd": ("sgd", 0.0, 0.0), "train-sgd-momentum-decay": ("sgd", 1e-3, 0.9)}
USER_OPTIMIZERS = {
    "user-adam": lambda ps: torch.optim.Adam(ps, lr=LR, foreach=False),
    "user-adam-fused": lambda ps: torch.optim.Adam(ps, lr=LR, fused=True),
    "user-adamw-foreach": lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=1e-2, foreach=True),
    "user-sgd": lambda ps: torch.optim.SGD(ps, lr=LR, foreach=False),
    "user-sgd-nesterov-decay": lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9, nesterov=True, weight_decay=1e-3,
                                                          foreach=False),
}


def _build(model_name: str, rule: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    make, shape = MODELS[model_name]
    torch.manual_seed(seed)
    model = pa.convert(make(), rule, generator=torch.Generator().manual_seed(seed)).double()
    if RULES[rule].learns_feedback:
        pa.set_kp_decay(model, KP_DECAY)
    if RULES[rule].mirrors:
        pa.set_wm(model, **WM)
    return model, shape


def _op(layer, x, weight):
    """The layer's forward with ``weight`` in place of ``W`` (no bias), plain PyTorch autograd."""
    if isinstance(layer, (nn.Linear, AttentionProjection)):
        return F.linear(x, weight)
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        conv = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}[weight.dim()]
        return conv(x, weight, None, layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation)
    if layer.padding_mode != "zeros":
        return layer._conv_forward(x, weight, None)
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[weight.dim()]
    return conv(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def _single_position(layer):
    """A conv layer's op on one receptive field: no padding, stride 1 (groups and kernel kept)."""
    plain = next(c for c in type(layer).__mro__ if c.__module__.startswith("torch.nn"))  # no feedback buffer drawn
    return layer if isinstance(layer, (nn.Linear, AttentionProjection)) else plain(
        layer.in_channels, layer.out_channels, layer.kernel_size, groups=layer.groups, bias=False, device="meta")


def _vjp(layer, x, weight, delta, wrt: str) -> torch.Tensor:
    x = x.detach().requires_grad_(wrt == "x")
    weight = weight.detach().requires_grad_(wrt == "w")
    return torch.autograd.grad(_op(layer, x, weight), x if wrt == "x" else weight, delta)[0]


def _matrix_angle(w: torch.Tensor, b: torch.Tensor) -> float:
    w, b = w.detach().flatten().double(), b.detach().flatten().double()
    return math.degrees(math.acos(float((w @ b / (w.norm() * b.norm())).clamp(-1, 1))))


class Checker:
    """Captures, per training forward, each feedback layer's input ``x``, ``W`` and ``B`` as they were,
    its output error ``δ`` and input error, and the model's output error ``e``; ``check()`` (after
    each optimizer step) asserts the rule's defining property for that step."""

    def __init__(self, model: nn.Module, rule: str):
        self.model, self.rule = model, rule
        self.names, self.layers = zip(*pa.feedback_layers(model))
        self.seen: dict[int, dict] = {}
        self.e = None
        self.steps = 0
        self.b0 = [layer.feedback.clone() for layer in self.layers]
        self.d0 = None
        self.prev = [(layer.weight.detach().clone(), layer.feedback.clone()) for layer in self.layers]
        self.angle0 = [_matrix_angle(w, b) for w, b in self.prev]
        # wm: the global RNG state and the layers' own streams (pa.train seeds them: pa.seed_rules) before each
        # optimizer step; the mirror noise is replayed from them
        self.rng, self.streams = None, {}
        if RULES[rule].mirrors:
            self._hook = register_optimizer_step_pre_hook(self._keep_streams)
        for i, layer in enumerate(self.layers):
            layer.register_forward_hook(self._layer_hook(i))
        model.register_forward_hook(self._output_hook)  # after convert: sees the model's final output

    def _keep_streams(self, *_) -> None:
        self.rng, self.streams = torch.get_rng_state(), pa.rules_rng_state(self.model)

    def _layer_hook(self, i):
        def hook(layer, inputs, output):
            if not (torch.is_grad_enabled() and output.requires_grad):
                return
            rec = {"x": inputs[0].detach().clone(), "w": layer.weight.detach().clone(), "b": layer.feedback.clone()}
            self.seen[i] = rec
            output.register_hook(lambda g: rec.__setitem__("delta", g.detach().clone()))
            if inputs[0].requires_grad:
                inputs[0].register_hook(lambda g: rec.__setitem__("grad_x", g.detach().clone()))
        return hook

    def _output_hook(self, module, inputs, output):
        if torch.is_grad_enabled() and output.requires_grad:
            output.register_hook(lambda g: setattr(self, "e", g.detach().clone()))

    def _mirrored(self) -> list[torch.Tensor]:
        """wm: ``B`` after this step's mirror steps, recomputed from the replayed noise and each layer's
        own output on it (plain autograd: ``Δ B`` is the weight-VJP of ``y`` at the noise ``x``)."""
        out = []
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng)
            for name, layer, (_, b) in zip(self.names, self.layers, self.prev):  # the optimizer's parameter order
                w = layer.weight.detach()
                gen = None  # the layer's own stream, else the global RNG
                if name in self.streams:
                    gen = torch.Generator()
                    gen.set_state(self.streams[name])
                for _ in range(WM["steps"]):
                    if w.dim() == 2:
                        shape = (w.shape[1],)
                    elif isinstance(layer, nn.modules.conv._ConvTransposeNd):  # one input pixel
                        shape = (w.shape[0], *([1] * (w.dim() - 2)))
                    else:  # one receptive field
                        shape = (w.shape[1] * layer.groups, *w.shape[2:])
                    x = torch.randn(WM["batch"], *shape, dtype=w.dtype, generator=gen) * WM["noise_std"]
                    y = F.linear(x, w) if w.dim() == 2 else _op(_single_position(layer), x, w)
                    b = (1 - WM["decay"]) * b + WM["lr"] / WM["batch"] * _vjp(_single_position(layer), x, w, y, "w")
                out.append(b)
        return out

    def check(self, *_):
        self.steps += 1
        rule = self.rule
        mirrored = self._mirrored() if RULES[rule].mirrors else None
        for i, layer in enumerate(self.layers):
            rec = self.seen[i]
            x, delta = rec["x"], rec["delta"]
            # every rule: the local weight update δᵀx and bias Σ δ (grads are still there after step())
            torch.testing.assert_close(layer.weight.grad, _vjp(layer, x, rec["w"], delta, "w"))
            bias_grad = layer._owner.in_proj_bias.grad if isinstance(layer, AttentionProjection) else layer.bias.grad
            channel = delta.dim() - 1 if isinstance(layer, (nn.Linear, AttentionProjection)) else 1
            torch.testing.assert_close(bias_grad, delta.sum(dim=[d for d in range(delta.dim()) if d != channel]))
            grad_x = rec.get("grad_x")
            assert (grad_x is not None) == (i > 0), "only the first layer's input error is never formed"
            if grad_x is not None:
                self._check_input_error(layer, rec, grad_x)
            w_prev, b_prev = self.prev[i]
            w, b = layer.weight.detach(), layer.feedback
            if RULES[rule].learns_feedback:  # kp: B' - B = ΔW - d (B - W), after this optimizer step
                torch.testing.assert_close(b - b_prev, (w - w_prev) - KP_DECAY * (b_prev - w_prev), rtol=1e-9, atol=1e-12)
                assert not torch.equal(b, b_prev)
            elif mirrored is not None:  # wm: B' from the noise and W' x only
                torch.testing.assert_close(b, mirrored[i], rtol=1e-9, atol=1e-12)
            else:
                assert torch.equal(b, self.b0[i]), "B never changes"
            self.prev[i] = (w.clone(), b.clone())
        if rule == "dfa":
            d = [layer.dfa_feedback.clone() for layer in self.layers[1:]]
            if self.d0 is None:
                self.d0 = d
            assert all(torch.equal(a, b) for a, b in zip(d, self.d0)), "D never changes"

    def _check_input_error(self, layer, rec, grad_x):
        rule, x, delta, w, b = self.rule, rec["x"], rec["delta"], rec["w"], rec["b"]
        if rule == "bp":
            torch.testing.assert_close(grad_x, _vjp(layer, x, w, delta, "x"))
        elif rule in ("fa", "kp", "wm"):
            torch.testing.assert_close(grad_x, _vjp(layer, x, b, delta, "x"))
            assert not torch.allclose(grad_x, _vjp(layer, x, w, delta, "x"))  # really not backprop
        elif rule == "dfa":
            assert self.e is not None and layer.dfa_feedback.shape == (self.e.shape[1], x[0].numel())
            torch.testing.assert_close(grad_x, (self.e @ layer.dfa_feedback).view_as(x))
        else:  # sign rules: the feedback F the backward used (returned to the layer's pool) has W's signs
            f = layer._feedback_pool[-1]
            torch.testing.assert_close(grad_x, _vjp(layer, x, f, delta, "x"))
            assert torch.equal(torch.sign(f), torch.sign(w))
            if rule == "usf":
                torch.testing.assert_close(f, b.abs().mean() * torch.sign(w))
            elif rule == "frsf":
                torch.testing.assert_close(f, b.abs() * torch.sign(w))
            else:  # brsf: magnitudes re-drawn, not B's
                assert not torch.allclose(f.abs(), b.abs())

    def finish(self):
        assert self.steps == STEPS
        if RULES[self.rule].mirrors:
            self._hook.remove()
        if RULES[self.rule].learns_feedback or RULES[self.rule].mirrors:
            for layer, before in zip(self.layers, self.angle0):
                assert _matrix_angle(layer.weight, layer.feedback) < before - 1.0


def _batches(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((STEPS * BATCH, *shape), generator=g, dtype=torch.float64)
    return x, torch.randint(0, 4, (STEPS * BATCH,), generator=g)


def _plain_copy(model: nn.Module) -> nn.Module:
    """An independent plain-PyTorch twin: every feedback layer turned back into its nn class (prealign.unconvert)."""
    twin = pa.unconvert(model)
    assert not any(isinstance(m, FeedbackLayer) or m._forward_hooks for m in twin.modules())
    return twin


def _user_loop(model, make_opt, x, y, after_step=None):
    opt = make_opt(model.parameters())
    for i in range(STEPS):
        xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        if after_step is not None:
            after_step()


CASES = ([(m, p) for m in ("mlp", "cnn") for p in [*TRAINER_PATHS, *USER_OPTIMIZERS]]
         + [(m, p) for m in ("cnn1d", "cnn3d", "cnn-transposed", "attention") for p in ("train-adam", "user-sgd-nesterov-decay")])


@pytest.mark.parametrize("model_name,path", CASES)
@pytest.mark.parametrize("rule", list(RULES))
def test_rule_invariants(rule, path, model_name, one_thread):
    model, shape = _build(model_name, rule)
    twin = _plain_copy(model) if rule == "bp" else None
    checker = Checker(model, rule)
    x, y = _batches(shape)
    if path in TRAINER_PATHS:
        name, wd, momentum = TRAINER_PATHS[path]
        assert _make_optimizer(name, model.parameters(), LR, wd, momentum).defaults["fused"], "the trainer's path is fused"

        class Step:
            def on_step_end(self, step, m):
                checker.check()

        data = TensorData(x, y, x[:BATCH], y[:BATCH], 4)
        pa.train(model, data, epochs=1, batch_size=BATCH, lr=LR, optimizer=name, weight_decay=wd, momentum=momentum,
                 seed=0, device="cpu", grad_alignment=False, progress=False, callbacks=[Step()])
        if twin is not None:  # same batches in the trainer's order
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
            x, y = x[perm], y[perm]
            _user_loop(twin, lambda ps: _make_optimizer(name, ps, LR, wd, momentum), x, y)
    else:
        _user_loop(model, USER_OPTIMIZERS[path], x, y, checker.check)
        if twin is not None:
            _user_loop(twin, USER_OPTIMIZERS[path], x, y)
    checker.finish()
    if twin is not None:  # bp trains exactly as plain PyTorch does (attention: prealign's own path, reassociated sums)
        tol = {"rtol": 1e-9, "atol": 1e-12} if model_name == "attention" else {"rtol": 1e-12, "atol": 1e-14}
        for p, q in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, **tol)


def test_kp_gradient_accumulation_and_frozen_layers(one_thread):
    """Several forwards per optimizer step apply B's update once; a layer the optimizer does not
    update (no gradient) keeps its B — no decay without a step of its W."""
    model, shape = _build("mlp", "kp")
    layers = [layer for _, layer in pa.feedback_layers(model)]
    layers[0].weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR, fused=True)
    x, y = _batches(shape)
    before = [(layer.weight.detach().clone(), layer.feedback.clone()) for layer in layers]
    for i in range(STEPS):  # accumulate three micro-batches, then one step
        F.cross_entropy(model(x[i * BATCH:(i + 1) * BATCH]), y[i * BATCH:(i + 1) * BATCH]).backward()
    opt.step()
    model(x[:BATCH])  # more forwards after the step change nothing
    for layer, (w, b) in zip(layers, before):
        if layer is layers[0]:
            assert torch.equal(layer.feedback, b)
        else:
            torch.testing.assert_close(layer.feedback - b, (layer.weight - w) - KP_DECAY * (b - w), rtol=1e-9, atol=1e-12)


def test_kp_deepcopy_and_other_optimizers_are_independent(one_thread):
    """A deep copy trains its own B (it joins the step hooks on its first training forward), and one
    model's optimizer step never moves another model's B."""
    model, shape = _build("mlp", "kp")
    x, y = _batches(shape)
    F.cross_entropy(model(x[:BATCH]), y[:BATCH]).backward()  # registers the original
    clone = copy.deepcopy(model)
    clone.zero_grad()
    frozen = [layer.feedback.clone() for _, layer in pa.feedback_layers(model)]
    b0 = [layer.feedback.clone() for _, layer in pa.feedback_layers(clone)]
    _user_loop(clone, USER_OPTIMIZERS["user-adam-fused"], x, y)
    assert all(torch.equal(a, layer.feedback) for a, (_, layer) in zip(frozen, pa.feedback_layers(model)))
    assert all(not torch.equal(a, layer.feedback) for a, (_, layer) in zip(b0, pa.feedback_layers(clone)))


def test_kp_with_a_closure_optimizer(one_thread):
    """LBFGS re-evaluates the model inside step(): B stays intact during the step, then receives the
    step's whole ΔW once."""
    model, shape = _build("mlp", "kp")
    layers = [layer for _, layer in pa.feedback_layers(model)]
    x, y = _batches(shape)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    before = [(layer.weight.detach().clone(), layer.feedback.clone()) for layer in layers]
    seen = []

    def closure():
        seen.append([layer.feedback.clone() for layer in layers])
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert len(seen) > 1 and all(torch.equal(b, s) for fb in seen for b, s in zip((b for _, b in before), fb))
    for layer, (w, b) in zip(layers, before):
        assert not torch.equal(layer.weight, w)
        torch.testing.assert_close(layer.feedback - b, (layer.weight - w) - KP_DECAY * (b - w), rtol=1e-9, atol=1e-12)
