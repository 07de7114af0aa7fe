"""Per-step draws of rules (brsf magnitudes, wm noise) from seeded per-layer streams (issue 24):
``seed_rules`` fixes them whatever the global RNG, layers get distinct streams, a saved state
continues bitwise, the global RNG is left alone, ``.to()`` keeps working."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import prealign as pa
from prealign.errors import PrealignError
from prealign.feedback import rng

# brsf, wm with Gaussian noise, wm with orthogonal noise (every mirror step)
CASES = {"brsf": ("brsf", {}), "wm-gaussian": ("wm", {"noise": "gaussian", "batch": 16}),
         "wm-orthogonal": ("wm", {"noise": "orthogonal", "every": 1})}


def _model(case: str) -> torch.nn.Module:
    rule, wm = CASES[case]
    model = pa.mlp([8, 6, 6, 3], rule, generator=torch.Generator().manual_seed(0))
    if wm:
        pa.set_wm(model, **wm)
    return model


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def _train(model, steps: int, opt=None):
    """``steps`` SGD steps; returns the optimizer and the input errors seen (brsf's draws show there)."""
    x, y = _data()
    x = x.requires_grad_()
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    for _ in range(steps):
        opt.zero_grad()
        x.grad = None
        F.cross_entropy(model(x), y).backward()
        grads.append(x.grad.clone())
        opt.step()
    return opt, grads


def _state(model, grads):
    return [t.detach().clone() for t in (*model.state_dict().values(), *grads)]


def _equal(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(s, t) for s, t in zip(a, b))


@pytest.mark.parametrize("case", CASES)
def test_same_seed_same_draws_whatever_the_global_rng(case):
    runs = []
    for global_seed in (0, 999):
        torch.manual_seed(global_seed)
        model = _model(case)
        pa.seed_rules(model, 7)
        runs.append(_state(model, _train(model, 3)[1]))
    assert _equal(*runs)
    torch.manual_seed(0)
    other = _model(case)
    pa.seed_rules(other, 8)
    assert not _equal(runs[0], _state(other, _train(other, 3)[1]))  # the seed matters


@pytest.mark.parametrize("case", CASES)
def test_without_seed_rules_draws_come_from_the_global_rng(case):
    """The documented plain-loop convention: unseeded layers follow torch.manual_seed."""
    runs = []
    for global_seed in (0, 0, 999):
        model = _model(case)
        torch.manual_seed(global_seed)
        runs.append(_state(model, _train(model, 3)[1]))
    assert _equal(runs[0], runs[1]) and not _equal(runs[0], runs[2])


@pytest.mark.parametrize("case", CASES)
def test_seeded_draws_leave_the_global_rng_alone(case):
    model = _model(case)
    pa.seed_rules(model, 3)
    before = torch.get_rng_state()
    _train(model, 3)
    assert torch.equal(torch.get_rng_state(), before)


def test_layers_get_distinct_streams():
    """Two brsf layers of the same shape, same W and B: different magnitudes each step (own streams,
    seeded from the layer's index); the same model built again gets the same streams."""
    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(pa.FeedbackLinear(5, 5, rule="brsf"), pa.FeedbackLinear(5, 5, rule="brsf"))
        model[1].load_state_dict(model[0].state_dict())
        pa.seed_rules(model, 11)
        return model

    def seen(layer):
        x = torch.randn(5, 5, requires_grad=True)
        layer(x).backward(torch.eye(5))
        return x.grad

    model = build()
    first, second = seen(model[0]), seen(model[1])
    assert torch.equal(first.sign(), second.sign()) and not torch.equal(first, second)
    again = build()
    assert torch.equal(seen(again[0]), first) and torch.equal(seen(again[1]), second)
    assert rng.layer_seed(11, 0) != rng.layer_seed(11, 1) != rng.layer_seed(12, 1)
    assert set(pa.rules_rng_state(model)) == {"0", "1"}


def test_only_layers_that_draw_get_a_stream():
    model = pa.mlp([4, 3, 2], "brsf")
    model[-1].rule = "fa"
    pa.seed_rules(model, 0)
    names = [name for name, layer in pa.feedback_layers(model) if layer.rule == "brsf"]
    assert list(pa.rules_rng_state(model)) == names
    assert pa.rules_rng_state(pa.mlp([4, 3, 2], "kp")) == {}


@pytest.mark.parametrize("case", CASES)
def test_state_round_trip_continues_bitwise(case, tmp_path):
    model = _model(case)
    pa.seed_rules(model, 5)
    opt, _ = _train(model, 2)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rules": pa.rules_rng_state(model),
                "phases": pa.feedback.wm.mirror_phases(model)}, path)
    _, grads = _train(model, 3, opt)
    uninterrupted = _state(model, grads)

    ckpt = torch.load(path, weights_only=True)
    resumed = _model(case)
    pa.seed_rules(resumed, 5)
    resumed.load_state_dict(ckpt["model"])
    pa.set_rules_rng_state(resumed, ckpt["rules"])
    pa.feedback.wm.set_mirror_phases(resumed, ckpt["phases"])
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.1)
    opt2.load_state_dict(ckpt["opt"])
    torch.manual_seed(123)  # the global RNG plays no part
    _, grads = _train(resumed, 3, opt2)
    assert _equal(_state(resumed, grads), uninterrupted)


def test_state_that_does_not_fit_is_a_one_line_error():
    model = pa.mlp([4, 3, 2], "brsf")
    pa.seed_rules(model, 0)
    state = pa.rules_rng_state(model)
    with pytest.raises(PrealignError, match="lacks: 9"):
        pa.set_rules_rng_state(model, {**state, "9": state["1"]})
    with pytest.raises(PrealignError, match="no stream for 1"):
        pa.set_rules_rng_state(model, {k: v for k, v in state.items() if k != "1"})
    with pytest.raises(PrealignError, match="another kind of device"):
        pa.set_rules_rng_state(model, {k: torch.zeros(3, dtype=torch.uint8) for k in state})
    with pytest.raises(PrealignError, match="seed must be an int"):
        pa.seed_rules(model, 1.5)


@pytest.mark.parametrize("case", CASES)
def test_to_and_copies_keep_the_stream(case):
    """``.to(dtype)``, ``.to('cpu')`` and ``deepcopy`` keep the layer's stream (same device: no re-creation)."""
    ref = _model(case)
    pa.seed_rules(ref, 2)
    moved = copy.deepcopy(ref).to("cpu").double().float()
    want, got = _state(ref, _train(ref, 3)[1]), _state(moved, _train(moved, 3)[1])
    assert _equal(want, got)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES)
def test_stream_follows_the_layer_to_another_device(case):
    """After ``.to('cuda')`` the generator is re-created on the GPU, seeded from the old stream:
    deterministic, and the global CUDA RNG is left alone."""
    runs = []
    for global_seed in (0, 999):
        model = _model(case)
        pa.seed_rules(model, 4)
        model.cuda()
        torch.cuda.manual_seed(global_seed)
        x, y = _data()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x.cuda()), y.cuda()).backward()
            opt.step()
        assert all(g.device.type == "cuda" for g in (rng.generator(m) for _, m in pa.feedback_layers(model)))
        runs.append([t.cpu() for t in model.state_dict().values()])
    assert _equal(*runs)
