"""The learning rules: exact backward formulas, B = W against autograd, B fixed, KP, DFA."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prealign as pa
from prealign.feedback import FeedbackConv2d, FeedbackLinear


def _double(m):
    return m.double()


def test_fa_linear_backward_formulas(gen):
    layer = FeedbackLinear(5, 3, rule="fa", generator=gen).double()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True, generator=gen)
    delta = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    layer(x).backward(delta)
    assert torch.allclose(x.grad, delta @ layer.feedback)
    assert torch.allclose(layer.weight.grad, delta.t() @ x.detach())
    assert torch.allclose(layer.bias.grad, delta.sum(0))
    assert not torch.allclose(x.grad, delta @ layer.weight)  # really not backprop


def _feedback_seen(layer, n_in):
    """The matrix the layer's backward sent the error through: with δ = I, x.grad = I·F = F."""
    x = torch.randn(layer.out_features, n_in, dtype=layer.weight.dtype, requires_grad=True)
    layer(x).backward(torch.eye(layer.out_features, dtype=layer.weight.dtype))
    return x.grad


def test_sign_rules_backward_formulas(gen):
    """USF: mean|B|·sign(W); FRSF: |B|·sign(W); BRSF: random magnitudes at B's scale, W's signs, new each step."""
    usf = FeedbackLinear(200, 50, rule="usf", generator=gen).double()
    torch.testing.assert_close(_feedback_seen(usf, 200), usf.feedback.abs().mean() * torch.sign(usf.weight.detach()))
    frsf = FeedbackLinear(200, 50, rule="frsf", generator=gen).double()
    torch.testing.assert_close(_feedback_seen(frsf, 200), frsf.feedback.abs() * torch.sign(frsf.weight.detach()))
    brsf = FeedbackLinear(200, 50, rule="brsf", generator=gen).double()
    first, second = _feedback_seen(brsf, 200), _feedback_seen(brsf, 200)
    for f in (first, second):
        assert torch.equal(torch.sign(f), torch.sign(brsf.weight.detach()))
        # |N(0, σ)| has mean σ·sqrt(2/π); σ = std(B); 10,000 draws: ±2 %
        assert f.abs().mean().item() == pytest.approx(brsf.feedback.std().item() * (2 / torch.pi) ** 0.5, rel=0.05)
    assert not torch.allclose(first.abs(), second.abs())


def test_per_step_feedback_buffer_is_reused_never_aliased(gen):
    """Sign rules compute F into a pooled buffer: the same memory every step once backward has
    finished, but a fresh one while an earlier graph still needs its F."""
    layer = FeedbackLinear(6, 4, rule="usf", generator=gen).double()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True, generator=gen)
    layer(x).sum().backward()
    ptr = layer._feedback_pool[0].data_ptr()
    layer(x).sum().backward()
    assert [b.data_ptr() for b in layer._feedback_pool] == [ptr]  # reused, not reallocated
    expected = layer.feedback.abs().mean() * torch.sign(layer.weight.detach())
    eye = torch.eye(4, dtype=torch.float64)
    x1, x2 = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    y1 = layer(x1)  # graph 1 holds F(W)
    with torch.no_grad():
        layer.weight.neg_()
    y2 = layer(x2)  # graph 2 must not overwrite graph 1's F
    y2.backward(eye)
    y1.backward(eye)
    torch.testing.assert_close(x1.grad, expected)
    torch.testing.assert_close(x2.grad, -expected)


def test_fa_linear_leading_dims(gen):
    layer = FeedbackLinear(5, 3, generator=gen).double()
    x = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True, generator=gen)
    delta = torch.randn(2, 4, 3, dtype=torch.float64, generator=gen)
    layer(x).backward(delta)
    assert torch.allclose(x.grad, delta @ layer.feedback)
    assert torch.allclose(layer.weight.grad, torch.einsum("abo,abi->oi", delta, x.detach()))


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 2), (1, "same", 1, 1)])
def test_fa_conv_backward_formulas(gen, stride, padding, dilation, groups):
    layer = FeedbackConv2d(4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups,
                           generator=gen).double()
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True, generator=gen)
    out = layer(x)
    delta = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    out.backward(delta)
    # reference: autograd of the same conv with the feedback kernel gives the FA input error
    xr = x.detach().clone().requires_grad_(True)
    wr = layer.weight.detach().clone().requires_grad_(True)
    F.conv2d(xr, layer.feedback, None, stride, padding, dilation, groups).backward(delta)
    assert torch.allclose(x.grad, xr.grad)
    F.conv2d(x.detach(), wr, None, stride, padding, dilation, groups).backward(delta)
    assert torch.allclose(layer.weight.grad, wr.grad)
    assert torch.allclose(layer.bias.grad, delta.sum((0, 2, 3)))


def test_conv_padding_modes(gen):
    layer = FeedbackConv2d(2, 3, 3, padding=1, padding_mode="reflect", generator=gen).double()
    with torch.no_grad():
        layer.feedback.copy_(layer.weight)
    ref = copy.deepcopy(layer)
    pa.convert(ref, "bp")
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    layer(x).sum().backward()
    ref(x2).sum().backward()
    assert torch.allclose(x.grad, x2.grad) and torch.allclose(layer.weight.grad, ref.weight.grad)


def _grads(model, x, y):
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]


@pytest.mark.parametrize("builder", ["mlp", "lenet"])
@pytest.mark.parametrize("rule", ["fa", "kp", "frsf"])
def test_feedback_equal_weights_matches_autograd(gen, builder, rule):
    if builder == "mlp":
        model = pa.mlp([64, 20, 15, 10], rule=rule, generator=gen)
        x = torch.randn(8, 64, generator=gen)
    else:
        model = pa.lenet((1, 16, 16), 10, rule=rule, generator=gen)
        x = torch.randn(8, 1, 16, 16, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    with torch.no_grad():
        for _, layer in pa.feedback_layers(model):
            layer.feedback.copy_(layer.weight.abs() if rule == "frsf" else layer.weight)
    ref = pa.convert(copy.deepcopy(model), "bp")
    for g, r in zip(_grads(model, x, y), _grads(ref, x, y)):
        assert torch.allclose(g, r, atol=1e-6, rtol=1e-5)


def test_independent_feedback_differs_from_autograd(gen):
    model = pa.mlp([20, 15, 10], generator=gen)
    x, y = torch.randn(8, 20, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    ref = pa.convert(copy.deepcopy(model), "bp")
    g, r = _grads(model, x, y), _grads(ref, x, y)
    assert torch.allclose(g[2], r[2]) and torch.allclose(g[3], r[3])  # last layer: local rule is exact
    assert not torch.allclose(g[0], r[0], atol=1e-4)  # first layer got the FA error


@pytest.mark.parametrize("rule", ["fa", "dfa", "usf", "brsf", "frsf"])
def test_feedback_fixed_under_training(gen, rule):
    model = pa.mlp([20, 15, 10], rule=rule, generator=gen)
    pa.convert(model, rule)
    before = [l.feedback.clone() for _, l in pa.feedback_layers(model)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    assert all(not any(p is l.feedback for p in model.parameters()) for _, l in pa.feedback_layers(model))
    for _ in range(20):
        x, y = torch.randn(16, 20, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for b, (_, l) in zip(before, pa.feedback_layers(model)):
        assert torch.equal(b, l.feedback)


def test_kp_feedback_follows_weights(gen, one_thread):
    model = pa.mlp([20, 30, 10], rule="kp", generator=gen)
    w_true = torch.randn(10, 20, generator=gen)
    before = pa.alignment_angles(model)
    for _, l in pa.feedback_layers(model):
        l.kp_decay = 1e-3
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    b0 = model[1].feedback.clone()
    for _ in range(300):
        x = torch.randn(32, 20, generator=gen)
        y = (x @ w_true.t()).argmax(1)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    after = pa.alignment_angles(model)
    assert not torch.equal(b0, model[1].feedback)
    for name in before:
        assert after[name] < before[name] - 10


def test_kp_update_rule_exact(gen):
    """One optimizer step: B ← B + ΔW − d (B − W_before); W changed outside a step (loading, init, a
    hand edit) is not an update B follows (a hand edit after a training forward says so in a
    warning naming the layer), and extra forwards do not apply anything."""
    layer = FeedbackLinear(4, 3, rule="kp", generator=gen)
    layer.kp_decay = 0.1
    x = torch.randn(5, 4, generator=gen)
    layer(x)  # a training forward registers the layer with the optimizer-step hooks
    w0, b0 = layer.weight.detach().clone(), layer.feedback.clone()
    opt = torch.optim.SGD([layer.weight], lr=0.5)
    layer.weight.grad = torch.full_like(layer.weight, -1.0)  # the step adds 0.5 to W
    opt.step()
    expected = b0 + (layer.weight.detach() - w0) - 0.1 * (b0 - w0)
    torch.testing.assert_close(layer.feedback, expected)
    b1 = layer.feedback.clone()
    layer(x), layer(x)
    with torch.no_grad():
        layer.weight.mul_(2)
    with pytest.warns(pa.FeedbackNotUpdatedWarning, match=r"FeedbackLinear \(3, 4\) layer under kp: W changed"):
        layer(x)
    assert torch.equal(layer.feedback, b1)


def test_dfa_sends_output_error_to_every_layer(gen):
    model = pa.mlp([12, 8, 6, 4], rule="dfa", generator=gen).double()
    x = torch.randn(5, 12, dtype=torch.float64, generator=gen)
    h1_in = {}
    model[3].register_forward_hook(lambda m, i, o: h1_in.update(x=i[0]))
    out = model(x)
    h1_in["x"].retain_grad()
    e = torch.randn_like(out)
    out.backward(e)
    d = model[3].dfa_feedback
    assert d.shape == (4, 8)
    assert torch.allclose(h1_in["x"].grad, e @ d)
    # the layer-1 weight gradient is the local rule applied to (e D1) ⊙ relu'(a1)
    a1 = model[1](model[0](x)).detach()
    delta1 = (e @ model[3].dfa_feedback) * (a1 > 0)
    assert torch.allclose(model[1].weight.grad, delta1.t() @ x)


def test_dfa_conv_and_switching_back(gen):
    model = pa.lenet((1, 16, 16), 10, rule="dfa", generator=gen)
    x, y = torch.randn(4, 1, 16, 16, generator=gen), torch.randint(0, 10, (4,), generator=gen)
    F.cross_entropy(model(x), y).backward()
    assert model[3].dfa_feedback.shape == (10, 6 * 8 * 8)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    pa.convert(model, "fa")
    assert not model._forward_hooks
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()


def test_exact_gradients_and_restore(gen):
    model = pa.mlp([20, 15, 10], generator=gen)
    ref = pa.convert(copy.deepcopy(model), "bp")
    x, y = torch.randn(8, 20, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    fa = _grads(model, x, y)
    with pa.exact_gradients(model):
        exact = _grads(model, x, y)
    for g, r in zip(exact, _grads(ref, x, y)):
        assert torch.allclose(g, r)
    assert pa.rule_of(model) == "fa"
    for g, r in zip(_grads(model, x, y), fa):
        assert torch.allclose(g, r)
    with pytest.raises(RuntimeError):
        with pa.exact_gradients(model):
            raise RuntimeError("boom")
    for g, r in zip(_grads(model, x, y), fa):
        assert torch.allclose(g, r)


def test_convert_any_module_keeps_state(gen):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 10))

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)))

    net = Net()
    w = net.conv.weight.detach().clone()
    pa.convert(net, "fa", generator=gen)
    assert isinstance(net.conv, FeedbackConv2d) and isinstance(net.head[1], FeedbackLinear)
    assert torch.equal(net.conv.weight, w)
    b = net.conv.feedback.clone()
    pa.convert(net, "usf")
    assert net.conv.rule == "usf" and torch.equal(net.conv.feedback, b)
    net(torch.randn(2, 1, 8, 8)).sum().backward()


def test_state_dict_device_dtype_deepcopy(gen):
    model = pa.mlp([20, 15, 10], generator=gen)
    sd = model.state_dict()
    assert "1.feedback" in sd and "3.feedback" in sd
    fresh = pa.mlp([20, 15, 10], generator=torch.Generator().manual_seed(1))
    fresh.load_state_dict(sd)
    assert torch.equal(fresh[1].feedback, model[1].feedback)
    model.to(torch.float64)
    assert model[1].feedback.dtype == torch.float64
    model.to("cpu")
    clone = copy.deepcopy(model)
    assert torch.equal(clone[1].feedback, model[1].feedback) and clone[1].feedback is not model[1].feedback
    dfa_model = pa.convert(copy.deepcopy(model), "dfa")
    twin = copy.deepcopy(dfa_model)
    twin(torch.randn(3, 20, dtype=torch.float64)).sum().backward()  # its own hook and sink
    sd = twin.state_dict()
    restored = pa.convert(pa.mlp([20, 15, 10]).double(), "dfa")
    restored.load_state_dict(sd)
    assert torch.equal(restored[1].dfa_feedback, twin[1].dfa_feedback)


def test_unknown_names_list_valid():
    with pytest.raises(ValueError, match="valid rules: .*bp.*fa"):
        pa.convert(pa.mlp([4, 2]), "backprop")
    with pytest.raises(ValueError, match="valid methods: .*ifa.*rnp"):
        pa.get_method("ifaa")
    assert pa.get_method("ifa@30").angle == 30.0


class _Odd(nn.Module):
    """A model with weight layers convert cannot turn into feedback layers, beside ones it can."""

    def __init__(self):
        super().__init__()
        self.conv1d = nn.Conv1d(2, 3, 3)  # converts
        self.up = nn.ConvTranspose2d(3, 2, 2)  # converts
        self.attn = nn.MultiheadAttention(4, 2)  # converts (its projections)
        self.rnn = nn.GRU(4, 4)
        self.lazy = nn.LazyLinear(5)
        self.norm = nn.LayerNorm(4)
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(4))


def test_convert_strict_names_every_unconvertible_layer():
    net = _Odd()
    with pytest.raises(pa.PrealignError) as err:
        pa.convert(net, "fa")
    msg = str(err.value)
    for part in ("rnn (GRU)", "<root> (_Odd)", "lazy (LazyLinear) have no weights yet: run one forward pass", "strict=False"):
        assert part in msg
    for part in ("conv1d", "up", "attn", "norm", "emb", "\n"):  # converted; norms, embeddings: local
        assert part not in msg
    assert type(net.head) is nn.Linear and pa.rule_of(net) is None  # nothing was changed


def test_convert_non_strict_warns_and_rule_of_says_mixed():
    net = _Odd()
    with pytest.warns(UserWarning, match=r"rnn \(GRU\).*strict=False"):
        pa.convert(net, "fa", strict=False)
    assert isinstance(net.head, FeedbackLinear) and isinstance(net.conv1d, pa.feedback.FeedbackConv1d)
    assert isinstance(net.up, pa.feedback.FeedbackConvTranspose2d) and type(net.rnn) is nn.GRU
    assert pa.rule_of(net) == "mixed"  # the GRU & co. still learn by backprop: not an "fa" model
    pa.convert(net, "bp")  # every weight on backprop now: that is exactly bp
    assert pa.rule_of(net) == "bp"
    plain = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.PReLU(), nn.Linear(4, 2))
    pa.convert(plain, "fa")
    assert pa.rule_of(plain) == "fa"


def test_lazy_linear_converts_once_materialized(gen):
    net = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    net(torch.randn(1, 6))  # LazyLinear becomes nn.Linear on its first forward
    pa.convert(net, "fa", generator=gen)
    assert pa.rule_of(net) == "fa" and net[0].feedback.shape == (4, 6)


def test_angles_only_for_rules_that_read_feedback(gen, one_thread):
    """∠(W, B) is reported only where the error travels through B (fa, kp, wm), also per epoch in train()."""
    from prealign.run.callbacks import MatrixAngles
    from prealign.run.trainer import TensorData, train

    assert {name for name, r in pa.RULES.items() if r.reads_feedback} == {"fa", "kp", "wm"}
    model = pa.mlp([6, 5, 4, 3], generator=gen)
    model[3].rule = "usf"  # one hidden layer under a sign rule
    assert set(pa.alignment_angles(model)) == {"1", "5"}
    assert set(pa.alignment_angles(model, reduce="matrix")) == {"1", "5"}
    for rule in ("bp", "dfa", "usf", "brsf", "frsf"):
        assert pa.alignment_angles(pa.convert(pa.mlp([6, 5, 3], generator=gen), rule)) == {}
    x, y = torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    res = train(pa.mlp([6, 5, 3], rule="dfa", generator=gen), TensorData(x, y, x, y, 3), epochs=1, batch_size=8,
                device="cpu", callbacks=[MatrixAngles()], grad_alignment=False)
    assert not [k for r in res.curves for k in r if k.startswith(("angle/", "angle_matrix/"))]


def test_dfa_matrices_follow_the_generator():
    """Two models built from the same generator state get the same D (not the global RNG's)."""
    def d_of(model):
        x = torch.randn(4, 6)
        F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
        return [layer.dfa_feedback.clone() for _, layer in pa.feedback_layers(model)[1:]]

    torch.manual_seed(1)
    a = d_of(pa.mlp([6, 5, 4, 3], rule="dfa", generator=torch.Generator().manual_seed(7)))
    torch.manual_seed(2)
    b = d_of(pa.mlp([6, 5, 4, 3], rule="dfa", generator=torch.Generator().manual_seed(7)))
    c = d_of(pa.mlp([6, 5, 4, 3], rule="dfa", generator=torch.Generator().manual_seed(8)))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not any(torch.equal(p, q) for p, q in zip(a, c))
    torch.manual_seed(3)
    one = FeedbackLinear(5, 3, rule="dfa", generator=torch.Generator().manual_seed(7))
    torch.manual_seed(4)
    two = FeedbackLinear(5, 3, rule="dfa", generator=torch.Generator().manual_seed(7))
    assert one._dfa_seed == two._dfa_seed


def test_kp_decay_setting_and_its_errors(gen):
    model = pa.mlp([6, 5, 3], rule="kp", generator=gen)
    assert all(layer.kp_decay == pa.feedback.KP_DECAY for _, layer in pa.feedback_layers(model))
    pa.set_kp_decay(model, 0.2)
    assert all(layer.kp_decay == 0.2 for _, layer in pa.feedback_layers(model))
    for bad in (-0.1, 1.0):
        with pytest.raises(pa.ConfigError, match="kp_decay"):
            pa.set_kp_decay(model, bad)
    with pytest.raises(pa.ConfigError, match="only to layers under kp; this model has fa"):
        pa.set_kp_decay(pa.mlp([6, 5, 3], generator=gen), 0.1)
    from prealign.run.config import RunConfig
    assert RunConfig(method="kp", kp_decay=0.05).kp_decay == 0.05
    with pytest.raises(pa.ConfigError, match="'kp_decay' applies only to method kp"):
        RunConfig(method="fa", kp_decay=0.05)


def test_kp_closes_the_angle_under_adam_without_weight_decay(gen, one_thread):
    """The default decay closes ∠(W, B) under plain Adam (no weight decay) through prealign.train, where
    FA keeps it near 90°; with kp_decay=0 B − W never shrinks (B only copies W's updates)."""
    from prealign.run.trainer import TensorData, train

    x = torch.randn(256, 20, generator=gen)
    y = (x @ torch.randn(20, 4, generator=gen)).argmax(1)
    data = TensorData(x, y, x[:64], y[:64], 4)
    angles, gaps = {}, {}
    for rule, decay in (("fa", None), ("kp", None), ("kp", 0.0)):
        model = pa.mlp([20, 16, 4], rule=rule, generator=torch.Generator().manual_seed(0))
        gap0 = [(l.weight - l.feedback).detach().clone() for _, l in pa.feedback_layers(model)]
        res = train(model, data, epochs=5, batch_size=16, lr=1e-3, seed=0, device="cpu", grad_alignment=False,
                    kp_decay=decay)
        angles[rule, decay] = res.final["angle/3"]
        gaps[rule, decay] = [torch.dist(l.weight - l.feedback, g).item() for (_, l), g in zip(pa.feedback_layers(model), gap0)]
    assert angles["fa", None] > 80 and angles["kp", None] < 60
    assert max(gaps["kp", 0.0]) < 1e-5  # W - B exactly as drawn: no decay, no alignment


def test_compare_summary_keeps_angle_columns_when_bp_comes_first():
    """bp runs have no angle/ keys now; the compare table must still show the other methods' angles."""
    from prealign.viz.report import summarize, table
    from prealign.run.trainer import TrainResult

    bp = TrainResult(curves=[{"epoch": 0, "test_acc": 0.5}], best_test_acc=0.5)
    fa = TrainResult(curves=[{"epoch": 0, "test_acc": 0.4, "angle/1": 90.0, "angle/3": 80.0}], best_test_acc=0.4)
    rows = summarize({"bp": [bp], "fa": [fa]})
    assert rows[1]["final_angle"] == {"1": 90.0, "3": 80.0}
    columns, cells = table(rows)
    l2 = columns.index("∠W,B L2 (°)")
    assert cells[1][l2] == "80.0" and cells[0][l2] == "—"
