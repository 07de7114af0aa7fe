"""The training step of S MLPs of one architecture, each bitwise the step :func:`prealign.train` takes alone.

:class:`StackedMLP` runs one optimizer step of S models (their own parameters, any learning rules
among bp, fa, ifa, rnp, dfa, usf, brsf, frsf, kp and wm, one per model) as a hand-written forward
and backward pass over activation stacks ``(S, B, features)``: no autograd graph, no per-step
allocation, every per-model view made once. Each model gets exactly (bitwise) the numbers its
own training step gives it, by construction:

- every matrix product is the one the single step computes, on the same operands and with the
  same memory alignment: ``x Wᵀ + b`` (``addmm``), ``δᵀ x`` (``mm``), ``Σ_N δ`` (``sum``) and the
  input error ``δ F`` (``mm``) with ``F`` what the model's rule sends the error back through: ``W``
  (bp), ``B`` (fa, ifa, rnp, kp, wm), the matrix a per-step rule forms from ``W`` at this step
  (usf, frsf, brsf: the rule's own function), or, under dfa, the output error through the
  layer's ``D`` (the layer's own :meth:`~prealign.feedback.FeedbackLayer.direct_error`). Each
  model's slice of a stack starts on a 64-byte boundary, as a fresh tensor does: MKL's GEMM
  rounds differently on an input that is only 4- or 8-byte aligned (measured on this CPU);
- element-wise work with one IEEE operation per element (ReLU and its backward, leaky ReLU, the
  identity) and row-wise work (``log_softmax`` and its backward) runs once on the whole stack:
  each element or row sees only its own model's numbers, in the same arithmetic; activations
  with vectorised and scalar code paths that round differently (tanh, sigmoid, GELU, ELU) run
  per model, so every element takes the path it takes alone;
- the loss is each model's ``nll_loss`` (mean cross-entropy), its gradient ``-(1/B)`` at the
  targets, as autograd's ``NllLossBackward`` forms it; the backward ops of the activations are the
  ones autograd records for them (:data:`ACTIVATION_OPS`);
- the optimizer step, the Kolen–Pollack update of ``B`` and the weight mirror are not touched
  here: the caller steps one optimizer over every model's own parameters (its fused kernels update
  each tensor on its own), and the rules' optimizer-step hooks (:mod:`prealign.feedback.kp`,
  :mod:`prealign.feedback.wm`) update each layer as they do alone. Rules that draw random numbers
  each step (brsf, wm) must draw from each layer's own stream (:func:`prealign.seed_rules`); from
  the global RNG the models' draws would interleave, so such a model is refused here.

Tested against :func:`prealign.train` per rule, depth and activation (``tests/test_batched.py``).
Shapes: activations ``(S, B, features)``; model ``s`` keeps its own ``W (out, in)``, ``b (out,)``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, PrealignError
from ..feedback import RULES, FeedbackLayer
from ..feedback.rules import generator as rule_generator

_aten = torch.ops.aten


def _leaky_backward(module):
    return lambda g, z, a, out: _aten.leaky_relu_backward.grad_input(
        g, a if module.inplace else z, module.negative_slope, bool(module.inplace), grad_input=out)


def _elu_backward(module):
    return lambda g, z, a, out: _aten.elu_backward.grad_input(
        g, module.alpha, 1, 1, bool(module.inplace), a if module.inplace else z, grad_input=out)


# activation class -> (stackable, forward(module) -> f(z, out), backward(module) -> f(grad_a, z, a, out)):
# the forward op of the module and the backward op autograd records for it (derivatives.yaml), as out= calls
ACTIVATION_OPS = {
    nn.ReLU: (True, lambda m: lambda z, out: torch.clamp_min(z, 0, out=out),  # torch.relu is clamp_min(x, 0)
              lambda m: lambda g, z, a, out: _aten.threshold_backward.grad_input(g, a, 0, grad_input=out)),
    nn.LeakyReLU: (True, lambda m: lambda z, out: torch._C._nn.leaky_relu(z, m.negative_slope, out=out), _leaky_backward),
    nn.Tanh: (False, lambda m: lambda z, out: torch.tanh(z, out=out),
              lambda m: lambda g, z, a, out: _aten.tanh_backward.grad_input(g, a, grad_input=out)),
    nn.Sigmoid: (False, lambda m: lambda z, out: torch.sigmoid(z, out=out),
                 lambda m: lambda g, z, a, out: _aten.sigmoid_backward.grad_input(g, a, grad_input=out)),
    nn.GELU: (False, lambda m: lambda z, out: torch._C._nn.gelu(z, approximate=m.approximate, out=out),
              lambda m: lambda g, z, a, out: _aten.gelu_backward.grad_input(g, z, approximate=m.approximate,
                                                                            grad_input=out)),
    nn.ELU: (False, lambda m: lambda z, out: torch._C._nn.elu(z, m.alpha, out=out), _elu_backward),
}


def mlp_layers(model: nn.Module, index: int = 0) -> tuple[list[nn.Linear], nn.Module | None, tuple]:
    """``(linear layers, activation module or None, signature)`` of a plain MLP
    (``Flatten? Linear (act Linear)*``, one activation type), or a one-line PrealignError saying why
    ``model`` (number ``index`` of its group) cannot be stacked."""
    if not isinstance(model, nn.Sequential):
        raise PrealignError(f"batched training needs nn.Sequential MLPs (as built by prealign.mlp); model {index} is "
                            f"{type(model).__name__}; train it with prealign.train instead")
    linears, activation, signature = [], None, []
    for module in model.children():
        if isinstance(module, nn.Linear):
            linears.append(module)
            signature.append(("linear", module.in_features, module.out_features, module.bias is not None))
        elif isinstance(module, nn.Flatten) and not signature:
            signature.append(("flatten",))
        elif isinstance(module, tuple(ACTIVATION_OPS)) or isinstance(module, nn.Identity):
            if activation is not None and repr(activation) != repr(module):
                raise PrealignError(f"batched training needs one activation per model; model {index} mixes "
                                    f"{activation} and {module}")
            activation = module
            signature.append(("act", repr(module)))
        else:
            raise PrealignError(f"batched training supports MLPs of Linear layers and the activations "
                                f"{', '.join(c.__name__ for c in (*ACTIVATION_OPS, nn.Identity))}; model {index} has a "
                                f"{type(module).__name__}; train it with prealign.train instead")
    kinds = "".join(item[0][0] for item in signature if item[0] != "flatten")  # "l", "a"
    if not linears or kinds != "la" * (len(linears) - 1) + "l":
        raise PrealignError(f"batched training needs MLPs of the form Linear (activation Linear)*; model {index} is "
                            f"{[item[0] for item in signature]}; train it with prealign.train instead")
    return linears, activation, tuple(signature)


def check_layer(layer: nn.Linear, index: int) -> None:
    """A one-line PrealignError for a layer of model ``index`` that cannot train in a stack: a rule
    that is not registered, or one that draws at every step from torch's global RNG."""
    if not isinstance(layer, FeedbackLayer) or getattr(layer, "_exact", False):
        return
    rule = RULES.get(layer.rule)
    if rule is None:
        raise PrealignError(f"model {index} uses rule {layer.rule!r}, which is not registered")
    if rule.draws and rule_generator(layer) is None:
        raise PrealignError(f"model {index}: rule {layer.rule} draws random numbers at every step and this layer draws "
                            "them from torch's global RNG, which a group would share between its models; call "
                            "prealign.seed_rules(model, seed) first (prealign.train does), or train it alone")


def _aligned_rows(rows: int, width: int, element_size: int) -> int:
    """``rows`` rounded up so that ``rows × width`` elements fill whole 64-byte lines: each model's
    slab of a stack then starts where a fresh tensor starts (torch's CPU allocator aligns to 64)."""
    per_line = max(64 // element_size, 1)
    step = per_line // math.gcd(width, per_line)
    return -(-rows // step) * step


class _Buffers:
    """The stacks of one batch size ``b``: ``(S, b_pad, width)`` tensors, zero-filled once, and each
    model's ``(b, width)`` view of them (made once, reused every step)."""

    def __init__(self, widths: list[int], s: int, b: int, like: torch.Tensor):
        def stack(width):
            t = like.new_zeros((s, _aligned_rows(b, width, like.element_size()), width))
            return t, [t[k, :b] for k in range(s)]

        n = len(widths) - 1  # layers
        self.b = b
        self.x, self.xs = stack(widths[0])
        self.z = [stack(w) for w in widths[1:]]  # pre-activations; z[-1] = logits
        self.a = [stack(w) for w in widths[1:-1]]  # activations of the hidden layers
        self.ga = [stack(w) for w in widths[1:-1]]  # error at each hidden layer's output
        self.gz = [stack(w) for w in widths[1:]]  # error at each layer's pre-activation; gz[-1] = logits' gradient
        self.logp, self.logps = stack(widths[-1])
        self.nll = stack(widths[-1])[0]
        self.losses = like.new_zeros(s)
        self.total_weight = like.new_zeros(())
        # NllLossBackward of a batch mean with upstream gradient 1: -(1 / b) at each target, in the dtype's arithmetic
        self.nll_grad = -(torch.ones((), dtype=like.dtype) / torch.full((), b, dtype=like.dtype)).item()
        self.gt = [[v.t() for v in self.gz[i][1]] for i in range(n)]


class StackedMLP:
    """S MLPs of one architecture trained side by side, each step bitwise as alone (module docstring).

    ``models``: ``nn.Sequential`` MLPs (:func:`mlp_layers`) with the same layer sizes and
    activation, on one device and dtype, each with its own rule (:func:`check_layer`). The parameters
    stay the models' own tensors; :meth:`step` writes each parameter's gradient into its ``.grad``
    (a tensor kept for the run). ``len(stack)`` is S.
    """

    def __init__(self, models: Sequence[nn.Module]):
        self.models = list(models)
        if not self.models:
            raise ConfigError("batched training needs at least one model")
        if len({id(m) for m in self.models}) != len(self.models):
            raise ConfigError("batched training got the same model object twice; pass separate models")
        structures = [mlp_layers(m, i) for i, m in enumerate(self.models)]
        for i, st in enumerate(structures[1:], 1):
            if st[2] != structures[0][2]:
                raise PrealignError(f"batched training needs one architecture; model {i} differs from model 0 "
                                    f"({st[2]} vs {structures[0][2]})")
        params = [p for m in self.models for p in m.parameters()]
        first = params[0]
        if any(p.device != first.device or p.dtype != first.dtype for p in params):
            raise PrealignError("batched training needs every model on one device and in one dtype; "
                                f"got {sorted({(str(p.device), str(p.dtype)) for p in params})}")
        self.like = first.detach()
        self.layers = [[st[0][i] for st in structures] for i in range(len(structures[0][0]))]  # [layer][model]
        for layer in self.layers:
            for k, lin in enumerate(layer):
                check_layer(lin, k)
        activation = structures[0][1]
        if activation is None or isinstance(activation, nn.Identity):
            self.stack_act, self.act_fwd, self.act_bwd = True, None, None
        else:
            stackable, fwd, bwd = ACTIVATION_OPS[type(activation)]
            self.stack_act, self.act_fwd, self.act_bwd = stackable, fwd(activation), bwd(activation)
        self.widths = [self.layers[0][0].in_features] + [layer[0].out_features for layer in self.layers]
        self.bias = self.layers[0][0].bias is not None
        self.weights_t = [[lin.weight.detach().t() for lin in layer] for layer in self.layers]
        self.biases = [[lin.bias.detach() for lin in layer] if self.bias else None for layer in self.layers]
        self._buffers: dict[int, _Buffers] = {}
        for p in params:  # each parameter's gradient lives in one tensor for the whole run
            if p.grad is None or p.grad.shape != p.shape:
                p.grad = torch.zeros_like(p)

    def __len__(self) -> int:
        return len(self.models)

    def parameters(self) -> list[torch.Tensor]:
        return [p for m in self.models for p in m.parameters()]

    def select(self, keep: Sequence[int]) -> StackedMLP:
        """The stack of models ``keep`` (positions in this stack, in that order)."""
        return StackedMLP([self.models[k] for k in keep])

    def train(self, mode: bool = True) -> StackedMLP:
        for m in self.models:
            m.train(mode)
        return self

    def buffers(self, b: int) -> _Buffers:
        """The stacks for batches of ``b`` samples (made on first use)."""
        buf = self._buffers.get(b)
        if buf is None:
            buf = self._buffers[b] = _Buffers(self.widths, len(self.models), b, self.like)
        return buf

    def gather(self, x: torch.Tensor, idx: torch.Tensor) -> _Buffers:
        """Model ``s``'s batch ``x[idx[s]]`` (``x``: ``(N, in)``, ``idx``: ``(S, B)``) into the input stack."""
        s, b = idx.shape
        buf = self.buffers(b)
        if buf.x.shape[1] == b:  # rows of whole 64-byte lines: one gather for every model
            torch.index_select(x, 0, idx.reshape(-1), out=buf.x.view(s * b, -1))
        else:
            for k in range(s):
                torch.index_select(x, 0, idx[k], out=buf.xs[k])
        return buf

    def _feedbacks(self, i: int) -> tuple[list[torch.Tensor | None], list]:
        """What each model's layer ``i`` sends its error back through at this step (None: dfa's
        direct route), formed now, before the layer's forward, by the layer's own
        :meth:`~prealign.feedback.FeedbackLayer._step_feedback` (a per-step rule's matrix, kp's and wm's
        update cycle), as its forward forms it; and ``(pool, buffer)`` pairs: where the per-step
        buffers go back once the backward has read them."""
        out, back = [], []
        with torch.enable_grad():  # _step_feedback forms nothing without gradients (it is the layer's training forward)
            for lin in self.layers[i]:
                fb, pool = lin._step_feedback(i > 0) if isinstance(lin, FeedbackLayer) else (None, None)
                if pool is not None:
                    back.append((pool, fb))
                if fb is None:
                    out.append(lin.weight.detach())
                else:
                    out.append(None if RULES[lin.rule].direct else fb)
        return out, back
    @torch.no_grad()
    def step(self, buf: _Buffers, inputs: Sequence[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Forward and backward of every model on its batch (``inputs[s]``: ``(B, in)``, ``y``: ``(S, B)``
        class indices): the gradients go into the parameters' ``.grad``; returns the losses ``(S,)``
        (each model's mean cross-entropy); the logits stay in ``buf.z[-1][0][:, :B]``."""
        s, b, n = len(self.models), buf.b, len(self.layers)
        feedbacks, pools = [], []
        h = inputs
        for i in range(n):
            fbs, back = self._feedbacks(i)
            feedbacks.append(fbs)
            pools += back
            z, zs = buf.z[i]
            for k in range(s):
                if self.bias:
                    torch.addmm(self.biases[i][k], h[k], self.weights_t[i][k], out=zs[k])
                else:
                    torch.mm(h[k], self.weights_t[i][k], out=zs[k])
            if i < n - 1:
                a, as_ = buf.a[i]
                if self.act_fwd is None:
                    a.copy_(z)
                elif self.stack_act:
                    self.act_fwd(z, a)
                else:
                    for k in range(s):
                        self.act_fwd(zs[k], as_[k])
                h = as_
        logits, logit_views = buf.z[-1]
        torch._log_softmax(logits, -1, False, out=buf.logp)
        for k in range(s):
            _aten.nll_loss_forward.output(buf.logps[k], y[k], None, 1, -100, output=buf.losses[k],
                                          total_weight=buf.total_weight)
        nll = buf.nll[:, :b]
        nll.zero_()
        nll.scatter_(2, y.unsqueeze(-1), buf.nll_grad)
        _aten._log_softmax_backward_data.out(buf.nll, buf.logp, -1, buf.nll.dtype, out=buf.gz[-1][0])
        error = buf.gz[-1][1]  # dfa's output error e (the logits' gradient), per model
        for i in reversed(range(n)):
            gz, gzs = buf.gz[i]
            inp = inputs if i == 0 else buf.a[i - 1][1]
            for k, lin in enumerate(self.layers[i]):
                torch.mm(buf.gt[i][k], inp[k], out=lin.weight.grad)
                if self.bias:
                    torch.sum(gzs[k], 0, out=lin.bias.grad)
            if i == 0:
                break
            ga, gas = buf.ga[i - 1]
            for k, (lin, fb) in enumerate(zip(self.layers[i], feedbacks[i])):
                if fb is None:
                    gas[k].copy_(lin.direct_error(error[k], inp[k])[0])
                else:
                    torch.mm(gzs[k], fb, out=gas[k])
            below, belows = buf.gz[i - 1]
            if self.act_bwd is None:
                below.copy_(ga)
            elif self.stack_act:
                self.act_bwd(ga, buf.z[i - 1][0], buf.a[i - 1][0], below)
            else:
                for k in range(s):
                    self.act_bwd(gas[k], buf.z[i - 1][1][k], buf.a[i - 1][1][k], belows[k])
        for pool, used in pools:  # as FeedbackLinearFunction's backward: the per-step buffers go back to their layers
            pool.append(used)
        return buf.losses
