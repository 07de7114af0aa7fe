"""Vectorized multi-seed training equals S separate runs (prealign.batched)."""
import copy

import pytest
import torch
import torch.nn.functional as F

import prealign as pa
from prealign.batched import BatchedFeedbackLinear, BatchedMLP, train_batched
from prealign.errors import PrealignError

DIMS = [20, 16, 12, 3]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny workloads: 1 thread is fastest on shared cores


def _data(n=90, n_test=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_test, 1, 4, 5, generator=g)
    w = torch.randn(20, 3, generator=g)
    y = (x.flatten(1) @ w).argmax(1)
    return x[:n], y[:n], x[n:], y[n:]


def _models():
    """Methods bp, fa, ifa@30, rnp (FA after a short noise pretraining) and FA at α_W = 1."""
    out = []
    for i, (method, alpha) in enumerate([("bp", 2.0), ("fa", 2.0), ("ifa@30", 2.0), ("rnp", 2.0), ("fa", 1.0)]):
        g = torch.Generator().manual_seed(100 + i)
        model = pa.mlp(DIMS, rule="fa", generator=g, alpha_w=alpha)
        pa.get_method(method).with_options(noise_samples=128).prepare(model, generator=g, progress=False)
        out.append(model)
    return out


def test_batched_equals_separate_prealign_runs():
    """S models (bp, fa, ifa@30, rnp, fa at α_W=1) trained as one batched model = S prealign.train runs."""
    from prealign.trainer import TensorData, train

    x, y, xt, yt = _data()
    data = TensorData(x, y, xt, yt, 3)
    models = _models()
    seeds = [3, 1, 4, 1, 5]
    refs = [copy.deepcopy(m) for m in models]
    results = [train(m, data, epochs=3, batch_size=16, lr=3e-3, weight_decay=1e-3, seed=s, device="cpu",
                     progress=False, grad_alignment=False) for m, s in zip(refs, seeds)]
    curves = train_batched(models, data, epochs=3, batch_size=16, lr=3e-3, seeds=seeds, weight_decay=1e-3,
                           device="cpu", progress=False)
    for k, (model, ref, res) in enumerate(zip(models, refs, results)):
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"model {k}")
        assert len(curves[k]) == len(res.curves) == 4
        for mine, theirs in zip(curves[k], res.curves):
            assert mine["epoch"] == theirs["epoch"]
            assert {k for k in mine if k.startswith("angle/")} == {k for k in theirs if k.startswith("angle/")}
            for key in ("train_loss", "test_loss", "angle/1", "angle/3", "angle/5")[:2 if k == 0 else 5]:  # bp: no angles
                assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), (k, key, mine["epoch"])
            for key in ("train_acc", "test_acc"):
                assert mine[key] == pytest.approx(theirs[key], abs=1e-9), (k, key, mine["epoch"])
    # the rules really differ: the bp model trained under fa would not match
    swapped = copy.deepcopy(_models()[0])
    pa.convert(swapped, "fa")
    train_batched([swapped], data, epochs=3, batch_size=16, lr=3e-3, seeds=[3], weight_decay=1e-3, device="cpu")
    assert not torch.allclose(swapped[1].weight, models[0][1].weight, atol=1e-4)


def test_epoch_zero_and_orders_per_seed():
    data = _data()
    model = pa.mlp(DIMS, rule="fa", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = F.cross_entropy(model(data[0]), data[1]).item()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    curves = train_batched([a, b], data, epochs=1, batch_size=8, lr=1e-2, seeds=[0, 1], device="cpu")
    assert curves[0][0]["epoch"] == 0 and curves[0][0]["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert set(curves[0][1]) >= {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "angle/1", "angle/3", "seconds"}
    assert not torch.allclose(a[1].weight, b[1].weight)  # different seeds, different batch orders


def test_batched_function_gradients_match_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, generator=g, requires_grad=True)
    w = torch.randn(3, 2, 4, generator=g, requires_grad=True)
    b = torch.randn(3, 2, generator=g, requires_grad=True)
    fb = torch.randn(3, 2, 4, generator=g)
    y = BatchedFeedbackLinear.apply(x, w, b, fb)
    torch.testing.assert_close(y, x @ w.transpose(1, 2) + b[:, None])
    delta = torch.randn(3, 5, 2, generator=g)
    y.backward(delta)
    torch.testing.assert_close(x.grad, delta @ fb)
    torch.testing.assert_close(w.grad, delta.transpose(1, 2) @ x.detach())
    torch.testing.assert_close(b.grad, delta.sum(1))


def test_to_models_and_errors():
    models = _models()[:2]
    before = [m[1].weight.clone() for m in models]
    net = BatchedMLP.from_models(models)
    with torch.no_grad():
        net.weights[0].add_(1.0)
    out = net.to_models()
    assert torch.equal(models[0][1].weight, before[0])  # from_models copies
    torch.testing.assert_close(out[1][1].weight, before[1] + 1.0)
    assert out[1][1].rule == "fa" and out[0][1].rule == "bp"
    x = torch.randn(7, 20)
    with torch.no_grad():
        torch.testing.assert_close(net(x, shared=True)[1], out[1](x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net(x.expand(2, 7, 20))[0], out[0](x), rtol=1e-5, atol=1e-6)
    with pytest.raises(PrealignError, match="rule 'kp'"):
        BatchedMLP.from_models([pa.mlp(DIMS, rule="kp")])
    with pytest.raises(PrealignError, match="one architecture"):
        BatchedMLP.from_models([pa.mlp(DIMS), pa.mlp([20, 8, 3])])
    with pytest.raises(PrealignError, match="MLP"):
        BatchedMLP.from_models([pa.lenet((1, 28, 28), 10)])


@pytest.mark.parametrize("rules", [("bp", "bp"), ("fa", "fa")])
def test_uniform_batches_equal_separate_runs(rules):
    """All-BP (W as feedback) and all-FA batches take their own fast paths; both must still match."""
    from prealign.trainer import TensorData, train

    data = TensorData(*_data(), 3)
    models = [pa.mlp(DIMS, rule=r, generator=torch.Generator().manual_seed(i)) for i, r in enumerate(rules)]
    refs = [copy.deepcopy(m) for m in models]
    for m, s in zip(refs, (0, 1)):
        train(m, data, epochs=2, batch_size=32, lr=1e-2, seed=s, device="cpu", progress=False, grad_alignment=False)
    train_batched(models, data, epochs=2, batch_size=32, lr=1e-2, seeds=(0, 1), device="cpu")
    for model, ref in zip(models, refs):
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
