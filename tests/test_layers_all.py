"""Every common layer under every rule, DFA on any graph, summary and unconvert.

References are computed independently of prealign's backward: plain autograd on plain modules,
``torch.func.vjp`` against ``B``, and hand-written formulas.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prealign as pa
from prealign.feedback import FeedbackLayer


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def _plain_twin(model: nn.Module) -> nn.Module:
    """A plain-PyTorch copy of a converted model (hooks dropped, feedback classes turned back)."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
        if isinstance(m, FeedbackLayer):
            m.__class__ = next(c for c in type(m).__mro__ if c.__module__.startswith("torch.nn"))
    return twin


def _dfa_reference(model: nn.Module, x: torch.Tensor, loss_fn) -> dict[str, torch.Tensor]:
    """Parameter gradients DFA must produce, by plain autograd on a plain twin of ``model``.

    ``model`` has already run one DFA backward (so its ``D`` exist). Pass 1: ``e = ∂L/∂outputs``
    (all differentiable outputs, flattened per sample and concatenated). Pass 2: every converted
    layer reads its input detached, and the surrogate ``Σ_l ⟨x_l, e D_l⟩`` sends exactly ``e D_l``
    into ``x_l``; everything else back-propagates as usual."""
    names = [name for name, _ in pa.feedback_layers(model)]
    twin = _plain_twin(model)
    twin.load_state_dict(model.state_dict(), strict=False)
    modules = dict(twin.named_modules())
    outs = {}  # which layers' outputs reach the loss at all (the others send nothing back)
    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: outs.__setitem__(n, o)) for n in names]
    out = twin(x)
    for h in handles:
        h.remove()
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(loss_fn(out), leaves + [outs[n] for n in names], allow_unused=True)
    used = {n for n, g in zip(names, grads[len(leaves):]) if g is not None}
    e = torch.cat([g.reshape(t.shape[0], -1) if g is not None else t.new_zeros(t.shape[0], t[0].numel())
                   for g, t in zip(grads, leaves)], 1)
    seen = {}
    handles = [modules[n].register_forward_pre_hook(lambda m, a, n=n: (seen.setdefault(n, a[0]), a[0].detach())[1])
               for n in names]
    for m in twin.modules():  # BatchNorm: the same batch statistics as the DFA pass, running stats aside
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    twin.zero_grad()
    total = loss_fn(twin(x))
    layers = dict(pa.feedback_layers(model))
    for n in names:
        xi = seen[n]
        if xi.requires_grad and n in used:
            total = total + (xi * (e @ layers[n].dfa_feedback).view_as(xi)).sum()
    total.backward()
    for h in handles:
        h.remove()
    return {k: p.grad for k, p in twin.named_parameters()}


class _ResidualBN(nn.Module):
    """stem conv → BN → ReLU → residual block (conv, BN, ReLU, conv, + skip) → head."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c1, self.bn2, self.c2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = torch.relu(self.bn1(self.stem(x)))
        h = torch.relu(h + self.c2(torch.relu(self.bn2(self.c1(h)))))
        return self.head(h.flatten(1))


class _TwoHeads(nn.Module):
    def __init__(self, as_dict=False):
        super().__init__()
        self.trunk, self.h1, self.h2 = nn.Linear(6, 5), nn.Linear(5, 3), nn.Linear(5, 2)
        self.as_dict = as_dict

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        o1, o2 = self.h1(h), self.h2(h)
        return {"cls": o1, "reg": o2} if self.as_dict else (o1, o2)


def _assert_grads(model, ref):
    for name, p in model.named_parameters():
        assert (p.grad is None) == (ref[name] is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, ref[name], rtol=1e-10, atol=1e-12, msg=name)


def test_dfa_residual_batchnorm_matches_reference(gen):
    model = pa.convert(_ResidualBN(), "dfa", generator=gen).double()
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (5,), generator=gen)
    loss_fn = lambda out: F.cross_entropy(out, y)  # noqa: E731
    loss_fn(model(x)).backward()
    # every converted layer but the stem (whose input needs no error) drew a D from the output error's width
    assert [tuple(layer.dfa_feedback.shape) for _, layer in pa.feedback_layers(model)] == [
        (0,), (3, 64), (3, 64), (3, 64)]
    _assert_grads(model, _dfa_reference(model, x, loss_fn))
    bp = _plain_twin(model)  # and it is not backprop
    F.cross_entropy(bp(x), y).backward()
    assert not torch.allclose(model.stem.weight.grad, bp.stem.weight.grad)


@pytest.mark.parametrize("as_dict", [False, True])
def test_dfa_two_heads_hand_computation(gen, as_dict):
    """e = [∂L/∂o1 | ∂L/∂o2]; the trunk's output receives e D_h1 + e D_h2; heads get their true δ."""
    model = pa.convert(_TwoHeads(as_dict), "dfa", generator=gen).double()
    x = torch.randn(4, 6, dtype=torch.float64, generator=gen)
    y, t = torch.randint(0, 3, (4,), generator=gen), torch.randn(4, 2, dtype=torch.float64, generator=gen)
    out = model(x)
    o1, o2 = (out["cls"], out["reg"]) if as_dict else out
    (F.cross_entropy(o1, y) + F.mse_loss(o2, t)).backward()
    with torch.no_grad():
        e1 = (torch.softmax(o1, 1) - F.one_hot(y, 3)) / 4
        e2 = 2 * (o2 - t) / o2.numel()
        e = torch.cat([e1, e2], 1)
        a = F.linear(x, model.trunk.weight, model.trunk.bias)
        h = torch.relu(a)
        assert model.h1.dfa_feedback.shape == (5, 5) and model.h2.dfa_feedback.shape == (5, 5)
        delta = (e @ model.h1.dfa_feedback + e @ model.h2.dfa_feedback) * (a > 0)
    torch.testing.assert_close(model.h1.weight.grad, e1.t() @ h)
    torch.testing.assert_close(model.h2.weight.grad, e2.t() @ h)
    torch.testing.assert_close(model.trunk.weight.grad, delta.t() @ x)
    torch.testing.assert_close(model.trunk.bias.grad, delta.sum(0))


def test_dfa_unused_output_sends_nothing(gen):
    """An output the loss does not use: its part of e is 0, its head gets no gradient and sends no error (as under bp)."""
    model = pa.convert(_TwoHeads(), "dfa", generator=gen).double()
    x, y = torch.randn(4, 6, dtype=torch.float64, generator=gen), torch.randint(0, 3, (4,), generator=gen)
    F.cross_entropy(model(x)[0], y).backward()
    assert model.h2.weight.grad is None and model.h2.dfa_feedback.numel() == 0
    _assert_grads(model, _dfa_reference(model, x, lambda out: F.cross_entropy(out[0], y)))


def test_dfa_two_forwards_one_backward(gen):
    """Each forward's layers receive that forward's output error (gradient accumulation, summed losses)."""
    model = pa.convert(nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)),
                       "dfa", generator=gen).double()
    xa, xb = torch.randn(2, 3, 6, dtype=torch.float64, generator=gen)
    ya, yb = torch.randint(0, 3, (2, 3), generator=gen)
    (F.cross_entropy(model(xa), ya) + F.cross_entropy(model(xb), yb)).backward()
    ra = _dfa_reference(model, xa, lambda out: F.cross_entropy(out, ya))
    rb = _dfa_reference(model, xb, lambda out: F.cross_entropy(out, yb))
    _assert_grads(model, {k: ra[k] + rb[k] for k in ra})


def test_dfa_errors_are_one_line_and_name_the_fix(gen):
    model = pa.convert(_TwoHeads(), "dfa", generator=gen)
    x = torch.randn(4, 6, generator=gen)
    with pytest.raises(pa.PrealignError, match="outside the forward of the model"):
        model.h1(torch.relu(model.trunk(x))).sum().backward()  # layers called on their own: no output error

    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 3)

        def forward(self, x):
            out = self.lin(x)
            return out, out.pow(2).mean()  # a scalar output has no batch

    with pytest.raises(pa.PrealignError, match=r"batch in dim 0.*\(4, 3\), \(\)"):
        pa.convert(Aux(), "dfa")(x)
