"""Every common layer under every rule, DFA on any graph, summary and unconvert.

References are computed independently of prealign's backward: plain autograd on plain modules,
``torch.func.vjp`` against ``B``, and hand-written formulas.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prealign as pa
from prealign.feedback import RULES, AttentionProjection, FeedbackLayer


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
    loss_fn = lambda out: F.cross_entropy(out, y)
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


# ---- every layer type: FA with B = W is autograd; FA with random B sends δ B -------------------------------------

def _set_feedback_to_weights(model):
    with torch.no_grad():
        for _, layer in pa.feedback_layers(model):
            layer.feedback.copy_(layer.weight)


class _Seq2(nn.Module):
    """Wraps a module taking two inputs (attention: query and key/value; Bilinear; decoder layers)."""

    def __init__(self, inner, call):
        super().__init__()
        self.inner, self.call = inner, call

    def forward(self, a, b):
        return self.call(self.inner, a, b)


def _attn_out(m, a, b):
    return m(a, b, b, need_weights=False)[0]


def _attn_weights_out(m, a, b):  # sequence-first; need_weights path, masks, per-head weights
    mask = torch.zeros(a.shape[0], b.shape[0], dtype=a.dtype)  # (L, S)
    mask[0, -1] = float("-inf")
    pad = torch.zeros(a.shape[1], b.shape[0], dtype=a.dtype)  # (N, S)
    pad[0, 0] = float("-inf")
    out, w = m(a, b, b, attn_mask=mask, key_padding_mask=pad, average_attn_weights=False)
    return out + w.sum()


def _self_attn(m, a, b):
    return m(a, a, a, need_weights=False)[0] + 0 * b.sum()


LAYERS = {  # name: (module factory, call(module, a, b), shapes of a and b)
    "bilinear": (lambda: nn.Bilinear(4, 3, 5), lambda m, a, b: m(a, b), (6, 4), (6, 3)),
    "convT1d": (lambda: nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1, output_padding=1), lambda m, a, b: m(a), (2, 2, 5), (1,)),
    "convT2d": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), lambda m, a, b: m(a),
                (2, 4, 4, 5), (1,)),
    "convT3d": (lambda: nn.ConvTranspose3d(2, 2, 2, stride=2), lambda m, a, b: m(a), (2, 2, 2, 3, 2), (1,)),
    "convT2d-output-size": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2), lambda m, a, b: m(a, output_size=[10, 10]),
                            (2, 2, 4, 4), (1,)),
    "mha-self": (lambda: nn.MultiheadAttention(6, 2, batch_first=True), _self_attn, (2, 4, 6), (1,)),
    "mha-cross": (lambda: nn.MultiheadAttention(6, 3, batch_first=True), _attn_out, (2, 4, 6), (2, 5, 6)),
    "mha-kdim": (lambda: nn.MultiheadAttention(6, 2, kdim=3, vdim=5, batch_first=True),
                 lambda m, a, b: m(a, b[..., :3], b, need_weights=False)[0], (2, 4, 6), (2, 5, 5)),
    "mha-seq-first-weights": (lambda: nn.MultiheadAttention(6, 2, add_bias_kv=True, add_zero_attn=True), _attn_weights_out,
                              (4, 2, 6), (5, 2, 6)),
    "encoder-layer": (lambda: nn.TransformerEncoderLayer(6, 2, 8, dropout=0.0, batch_first=True),
                      lambda m, a, b: m(a, src_mask=nn.Transformer.generate_square_subsequent_mask(4, dtype=a.dtype),
                                        is_causal=True), (2, 4, 6), (1,)),
    "decoder-layer": (lambda: nn.TransformerDecoderLayer(6, 2, 8, dropout=0.0, batch_first=True, norm_first=True),
                      lambda m, a, b: m(a, b), (2, 4, 6), (2, 5, 6)),
    "transformer": (lambda: nn.Transformer(6, 2, 1, 1, 8, dropout=0.0, batch_first=True), lambda m, a, b: m(b, a),
                    (2, 4, 6), (2, 5, 6)),
}


def _inputs(name, gen):
    _, _, sa, sb = LAYERS[name]
    a = torch.randn(sa, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(sb, dtype=torch.float64, generator=gen, requires_grad=True)
    return a, b


@pytest.mark.parametrize("name", list(LAYERS))
def test_fa_with_b_equal_w_is_autograd(name, gen):
    make, call, _, _ = LAYERS[name]
    torch.manual_seed(0)
    plain = _Seq2(make(), call).double()
    model = pa.convert(copy.deepcopy(plain), "fa", generator=gen)
    assert pa.rule_of(model) == "fa" and pa.feedback_layers(model)
    _set_feedback_to_weights(model)
    a, b = _inputs(name, gen)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    out, ref = model(a, b), plain(a2, b2)
    torch.testing.assert_close(out, ref)
    delta = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    out.backward(delta)
    ref.backward(delta)
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def _vjp_x(fn, x, delta):
    return torch.func.vjp(fn, x.detach())[1](delta)[0]


@pytest.mark.parametrize("name", ["bilinear", "convT1d", "convT2d", "convT3d", "convT2d-output-size"])
def test_fa_single_op_layers_send_delta_through_b(name, gen):
    """Input errors are the op's vjp with B in place of W (torch.func.vjp); the weight gradient is autograd's."""
    make, call, _, _ = LAYERS[name]
    layer = pa.convert(make(), "fa", generator=gen).double()
    a, b = _inputs(name, gen)
    out = call(layer, a, b)
    delta = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    out.backward(delta)
    w, fb = layer.weight.detach(), layer.feedback

    def op(weight, x1, x2):
        if name == "bilinear":
            return F.bilinear(x1, x2, weight)
        conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[weight.dim() - 2]
        pad = layer._output_padding(x1, [10, 10] if "size" in name else None, layer.stride, layer.padding,
                                    layer.kernel_size, weight.dim() - 2, layer.dilation)
        return conv(x1, weight, None, layer.stride, layer.padding, pad, layer.groups, layer.dilation)

    torch.testing.assert_close(a.grad, _vjp_x(lambda x: op(fb, x, b.detach()), a, delta))
    assert not torch.allclose(a.grad, _vjp_x(lambda x: op(w, x, b.detach()), a, delta))
    if name == "bilinear":
        torch.testing.assert_close(b.grad, _vjp_x(lambda x: op(fb, a.detach(), x), b, delta))
    torch.testing.assert_close(layer.weight.grad, _vjp_x(lambda v: op(v, a.detach(), b.detach()), w, delta))
    torch.testing.assert_close(layer.bias.grad, delta.sum([d for d in range(delta.dim()) if d != (1 if name != "bilinear" else delta.dim() - 1)]))


@pytest.mark.parametrize("name", ["mha-self", "mha-cross", "mha-kdim"])
def test_fa_attention_projections_send_delta_through_b(name, gen):
    """Each projection's input receives its δ times its B (the vjp of x ↦ x Bᵀ); out_proj's input likewise."""
    make, call, _, _ = LAYERS[name]
    model = pa.convert(_Seq2(make(), call), "fa", generator=gen).double()
    attn = model.inner
    seen = {}

    def capture(key):
        def hook(m, inputs, output):
            rows = inputs[1] if len(inputs) > 1 else None
            rec = seen.setdefault(key, [])
            entry = {"x": inputs[0], "rows": rows}
            rec.append(entry)
            output.register_hook(lambda g: entry.__setitem__("delta", g))
            if key == "out_proj":
                inputs[0].register_hook(lambda g: entry.__setitem__("grad_x", g))
        return hook

    for n, m in attn.named_children():
        m.register_forward_hook(capture(n))
    a, b = _inputs(name, gen)
    out = model(a, b)
    out.backward(torch.randn(out.shape, dtype=torch.float64, generator=gen))
    if name == "mha-self":
        (e,) = seen["in_proj"]
        torch.testing.assert_close(a.grad, _vjp_x(lambda x: F.linear(x, attn.in_proj.feedback), a, e["delta"]))
    elif name == "mha-cross":  # three calls on row blocks of the packed weight: q from a, k and v from b
        q, k, v = seen["in_proj"]
        fb = attn.in_proj.feedback
        torch.testing.assert_close(a.grad, _vjp_x(lambda x: F.linear(x, fb[q["rows"]]), a, q["delta"]))
        torch.testing.assert_close(b.grad, _vjp_x(lambda x: F.linear(x, fb[k["rows"]]), b, k["delta"])
                                   + _vjp_x(lambda x: F.linear(x, fb[v["rows"]]), b, v["delta"]))
        torch.testing.assert_close(attn.in_proj_weight.grad, torch.cat(  # the packed weight's gradient, block by block
            [t["delta"].flatten(0, 1).t() @ t["x"].flatten(0, 1) for t in (q, k, v)]))
    else:
        (k,), (v,) = seen["k_proj"], seen["v_proj"]
        assert attn.k_proj.feedback.shape == (6, 3) and attn.v_proj.feedback.shape == (6, 5)
        expected = _vjp_x(lambda x: F.linear(x, attn.v_proj.feedback), b, v["delta"])
        expected[..., :3] += _vjp_x(lambda x: F.linear(x, attn.k_proj.feedback), b[..., :3], k["delta"])
        torch.testing.assert_close(b.grad, expected)
    (o,) = seen["out_proj"]
    torch.testing.assert_close(o["grad_x"], _vjp_x(lambda x: F.linear(x, attn.out_proj.feedback), o["x"], o["delta"]))
    assert not torch.allclose(o["grad_x"], _vjp_x(lambda x: F.linear(x, attn.out_proj.weight), o["x"], o["delta"]))


def test_transformer_eval_fast_path_gives_the_same_output(gen):
    """Under no_grad in eval, torch's fused encoder path may run: same weights, same output; no gradient is involved."""
    layer = pa.convert(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), "fa", generator=gen).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64, generator=gen)
    layer.eval()
    with torch.no_grad():
        fast = layer(x)
    slow = layer(x.requires_grad_())  # grad needed: prealign's path
    torch.testing.assert_close(fast, slow.detach())
    slow.sum().backward()
    assert layer.self_attn.in_proj_weight.grad is not None


# ---- strict conversion, lazy layers, summary, unconvert --------------------------------------------------------

class _Rnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.LSTM(4, 5, batch_first=True)
        self.gru = nn.GRU(5, 5)
        self.head = nn.Linear(5, 2)


def test_strict_convert_names_recurrent_layers():
    net = _Rnn()
    with pytest.raises(pa.PrealignError, match=r"encoder \(LSTM\), gru \(GRU\).*strict=False") as err:
        pa.convert(net, "fa")
    assert "\n" not in str(err.value) and type(net.head) is nn.Linear  # one line; nothing changed
    with pytest.warns(UserWarning, match=r"encoder \(LSTM\)"):
        pa.convert(net, "fa", strict=False)
    rows = {r["name"]: r["rule"] for r in pa.summary(net)}
    assert rows == {"encoder": "backprop: not converted", "gru": "backprop: not converted", "head": "fa"}
    assert pa.rule_of(net) == "mixed"


def test_lazy_layers_need_one_forward_first(gen):
    net = nn.Sequential(nn.LazyConv2d(3, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(pa.PrealignError, match=r"0 \(LazyConv2d\), 3 \(LazyLinear\) have no weights yet: run one forward"):
        pa.convert(net, "fa")
    net(torch.randn(1, 1, 5, 5))
    pa.convert(net, "fa", generator=gen)
    assert pa.rule_of(net) == "fa" and net[0].feedback.shape == (3, 1, 3, 3) and net[3].feedback.shape == (2, 27)


def test_summary_lists_a_transformer_block(gen):
    block = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    plain_rows = pa.summary(block)
    assert {r["rule"] for r in plain_rows if r["name"] != "norm1" and r["name"] != "norm2"} == {"backprop: not converted"}
    pa.convert(block, "fa", generator=gen)
    pa.convert(block.linear2, "usf")  # one layer under a rule that does not read B
    rows = pa.summary(block)
    by_name = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows] == ["self_attn", "self_attn.in_proj", "self_attn.out_proj", "linear1", "linear2",
                                         "norm1", "norm2"]
    assert by_name["self_attn.in_proj"]["rule"] == "fa" and by_name["self_attn.in_proj"]["weight_shape"] == [24, 8]
    assert by_name["linear2"]["rule"] == "usf" and by_name["linear2"]["angle_deg"] is None
    assert by_name["norm1"]["rule"] == "local gradient" and by_name["self_attn"]["rule"] == "local gradient"
    angles = pa.alignment_angles(block)
    assert by_name["linear1"]["angle_deg"] == angles["linear1"] and 60 < angles["self_attn.in_proj"] < 120
    json.dumps(rows)  # JSON-able rows
    text = str(rows)
    assert "self_attn.in_proj" in text and "AttentionProjection[in_proj_weight]" in text and "24×8" in text
    assert text.splitlines()[0].split() == ["name", "type", "rule", "weight", "shape", "∠(W,B)", "°"]
    assert next(line for line in text.splitlines() if line.startswith("linear2")).rstrip().endswith("—")


class _Everything(nn.Module):
    """One of every convertible layer type (batch-first), plus norms and an embedding."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.enc = nn.TransformerEncoderLayer(6, 2, 8, dropout=0.0, batch_first=True)
        self.cross = nn.MultiheadAttention(6, 2, kdim=3, vdim=3, batch_first=True)
        self.bil = nn.Bilinear(6, 6, 4)
        self.up = nn.ConvTranspose1d(1, 2, 3, stride=2)
        self.bn = nn.BatchNorm1d(2)
        self.conv = nn.Conv1d(2, 2, 3)
        self.head = nn.Linear(2 * 7, 3)

    def forward(self, tokens):
        h = self.enc(self.emb(tokens))  # (N, 4, 6)
        memory = h[..., :3]
        a = self.cross(h, memory, memory, need_weights=False)[0]
        z = self.bil(h.mean(1), a.mean(1)).unsqueeze(1)  # (N, 1, 4)
        z = self.conv(torch.relu(self.bn(self.up(z))))  # (N, 2, 7)
        return self.head(z.flatten(1))


def test_unconvert_round_trip_and_plain_state_dict(gen):
    torch.manual_seed(0)
    plain0 = _Everything().double()
    model = pa.convert(copy.deepcopy(plain0), "kp", generator=gen)
    tokens = torch.randint(0, 10, (5, 4), generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    F.cross_entropy(model(tokens), torch.arange(5) % 3).backward()
    opt.step()  # trained weights, B moved by KP
    model.eval()
    before = copy.deepcopy(model.state_dict())
    plain = pa.unconvert(model)
    assert not pa.feedback_layers(plain) and not any(isinstance(m, AttentionProjection) for m in plain.modules())
    assert type(plain.enc.self_attn) is nn.MultiheadAttention and type(plain.bil) is nn.Bilinear
    assert type(plain.up) is nn.ConvTranspose1d and type(plain.head) is nn.Linear
    assert type(plain.cross.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert set(plain.state_dict()) == set(plain0.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(tokens), model(tokens), rtol=0, atol=0)
    for k, v in model.state_dict().items():  # the original is untouched and still converted
        assert torch.equal(v, before[k])
    assert pa.rule_of(model) == "kp"
    fresh = copy.deepcopy(plain0)  # loading a converted model's weights into a plain model
    fresh.load_state_dict(pa.plain_state_dict(model))
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens), model(tokens), rtol=0, atol=0)
    fresh2 = copy.deepcopy(plain0)
    result = fresh2.load_state_dict(model.state_dict(), strict=False)
    assert not result.missing_keys and all(k.endswith(("feedback", "dfa_feedback")) for k in result.unexpected_keys)
    F.cross_entropy(plain(tokens), torch.arange(5) % 3).backward()  # an ordinary torch model from here on


@pytest.mark.parametrize("rule", list(RULES))
def test_every_rule_trains_every_layer_type(rule, gen, one_thread):
    """Every rule on a model with every layer type: gradients on all weights, B fixed (kp: B' - B = ΔW - d(B - W)),
    angles exactly where the rule reads B, and IFA's align() reaches 0° on every layer (attention projections too)."""
    torch.manual_seed(0)
    model = pa.convert(_Everything(), rule, generator=gen).double()
    names = [n for n, _ in pa.feedback_layers(model)]
    assert {"enc.self_attn.in_proj", "cross.q_proj", "cross.k_proj", "cross.v_proj", "bil", "up"} <= set(names)
    if RULES[rule].learns_feedback:
        pa.set_kp_decay(model, 0.1)
    layers = [layer for _, layer in pa.feedback_layers(model)]
    before = [(layer.weight.detach().clone(), layer.feedback.clone()) for layer in layers]
    tokens, y = torch.randint(0, 10, (6, 4), generator=gen), torch.randint(0, 3, (6,), generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    F.cross_entropy(model(tokens), y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    for layer, (w, b) in zip(layers, before):
        if RULES[rule].learns_feedback:
            torch.testing.assert_close(layer.feedback - b, (layer.weight - w) - 0.1 * (b - w), rtol=1e-9, atol=1e-12)
        else:
            assert torch.equal(layer.feedback, b)
    assert set(pa.alignment_angles(model)) == (set(names) if RULES[rule].reads_feedback else set())
    pa.convert(model, "fa")
    pa.init_weights(model, generator=gen)
    pa.align(model, 0.0, generator=gen)
    assert max(pa.alignment_angles(model).values()) < 1e-5
    model.zero_grad()
    F.cross_entropy(model(tokens), y).backward()


def test_dfa_bilinear_splits_d_over_both_inputs(gen):
    model = pa.convert(nn.ModuleDict({"a": nn.Linear(3, 4), "b": nn.Linear(3, 2), "bil": nn.Bilinear(4, 2, 5)}), "dfa",
                       generator=gen).double()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m["bil"](self.m["a"](x), self.m["b"](x))

    net = pa.convert(Net(), "dfa")
    x = torch.randn(5, 3, dtype=torch.float64, generator=gen)
    ins = {}
    net.m["bil"].register_forward_hook(lambda m, i, o: ins.update(x1=i[0], x2=i[1]))
    out = net(x)
    for t in ins.values():
        t.retain_grad()
    e = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    out.backward(e)
    d = net.m["bil"].dfa_feedback
    assert d.shape == (5, 4 + 2)
    torch.testing.assert_close(ins["x1"].grad, e @ d[:, :4])
    torch.testing.assert_close(ins["x2"].grad, e @ d[:, 4:])


def test_dfa_refuses_sequence_first_attention():
    with pytest.raises(pa.PrealignError, match=r"self_attn \(MultiheadAttention\) use batch_first=False"):
        pa.convert(nn.TransformerEncoderLayer(8, 2, 16), "dfa")
    pa.convert(nn.TransformerEncoderLayer(8, 2, 16), "fa")  # other rules do not care about the layout


def test_attention_exact_gradients_and_gradient_alignment(gen, one_thread):
    """exact_gradients on attention is autograd, and the trainer's gradient alignment sees every projection."""
    from prealign.run.trainer import gradient_alignment

    torch.manual_seed(0)
    plain = nn.Sequential(nn.TransformerEncoderLayer(6, 2, 8, dropout=0.0, batch_first=True), nn.Flatten(),
                          nn.Linear(24, 3)).double()
    model = pa.convert(copy.deepcopy(plain), "fa", generator=gen)
    x, y = torch.randn(5, 4, 6, dtype=torch.float64, generator=gen), torch.randint(0, 3, (5,), generator=gen)
    with pa.exact_gradients(model):
        F.cross_entropy(model(x), y).backward()
    F.cross_entropy(plain(x), y).backward()
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)
    angles = gradient_alignment(model, x, y)
    assert set(angles) == {"0.self_attn.out_proj", "0.self_attn.in_proj", "0.linear1", "0.linear2"}
    assert all(0 < a < 180 for a in angles.values())  # finite, and FA is not backprop


def test_attention_hessian_vector_products_under_exact_gradients(gen):
    """Inside exact_gradients attention is twice differentiable (torch's SDPA CPU kernel is not): Hv matches
    central differences of the gradient."""
    torch.manual_seed(0)
    model = pa.convert(nn.TransformerEncoderLayer(6, 2, 8, dropout=0.0, batch_first=True), "fa", generator=gen).double()
    x = torch.randn(3, 4, 6, dtype=torch.float64, generator=gen)
    params = list(model.parameters())
    v = [torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in params]

    def grads():
        return torch.autograd.grad(model(x).pow(2).sum(), params, create_graph=True)

    with pa.exact_gradients(model):
        hv = torch.autograd.grad(sum((g * w).sum() for g, w in zip(grads(), v)), params)
        eps = 1e-5
        with torch.no_grad():
            for p, w in zip(params, v):
                p.add_(eps * w)
        plus = [g.detach() for g in grads()]
        with torch.no_grad():
            for p, w in zip(params, v):
                p.sub_(2 * eps * w)
        minus = [g.detach() for g in grads()]
    for h, a, b in zip(hv, plus, minus):
        torch.testing.assert_close(h, (a - b) / (2 * eps), rtol=1e-5, atol=1e-7)


def test_attention_deepcopy_and_state_dict(gen):
    """A deep copy's projections stand for the copy's weights; a converted state_dict loads into a fresh conversion."""
    model = pa.convert(nn.MultiheadAttention(6, 2, kdim=3, vdim=3, batch_first=True), "kp", generator=gen)
    clone = copy.deepcopy(model)
    assert clone.q_proj.weight is clone.q_proj_weight and clone.q_proj._owner is clone
    w0 = model.q_proj_weight.detach().clone()
    q, kv = torch.randn(2, 4, 6, generator=gen), torch.randn(2, 5, 3, generator=gen)
    opt = torch.optim.SGD(clone.parameters(), lr=0.1)
    clone(q, kv, kv)[0].sum().backward()
    opt.step()
    assert torch.equal(model.q_proj_weight, w0) and not torch.equal(clone.q_proj_weight, w0)
    assert not torch.equal(clone.q_proj.feedback, model.q_proj.feedback)  # kp moved the copy's B only
    fresh = pa.convert(nn.MultiheadAttention(6, 2, kdim=3, vdim=3, batch_first=True), "kp")
    fresh.load_state_dict(clone.state_dict())
    assert torch.equal(fresh.q_proj.feedback, clone.q_proj.feedback) and torch.equal(fresh.q_proj_weight, clone.q_proj_weight)
