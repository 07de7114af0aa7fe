"""Learned feedback (kp, wm) in any loop (issue 24): ``pa.feedback_step(model)`` after a hand-written
update does exactly what a ``torch.optim`` step's hooks do, and an update of ``W`` without a feedback
update is a one-line warning naming the layer at the next forward — never a silent FA."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import prealign as pa
from prealign.errors import ConfigError

SETTINGS = {"kp": ("kp", {}), "wm-orthogonal": ("wm", {"noise": "orthogonal", "every": 2}),
            "wm-gaussian": ("wm", {"noise": "gaussian", "batch": 16})}
LR = 0.05


def _model(case: str, seed: int = 0) -> torch.nn.Module:
    rule, wm = SETTINGS[case]
    model = pa.mlp([8, 6, 5, 3], rule, generator=torch.Generator().manual_seed(seed))
    if wm:
        pa.set_wm(model, **wm)
    pa.seed_rules(model, 1)  # each layer's draws from its own stream: the two loops draw the same
    return model


def _batches(n: int):
    gen = torch.Generator().manual_seed(2)
    return [(torch.randn(16, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(n)]


def _angle(layer) -> float:
    w, b = layer.weight.detach().flatten().double(), layer.feedback.flatten().double()
    return math.degrees(math.acos(float((w @ b / (w.norm() * b.norm())).clamp(-1, 1))))


def _state(model):
    return [t.clone() for t in model.state_dict().values()]


@pytest.mark.parametrize("case", SETTINGS)
def test_plain_loop_with_feedback_step_equals_torch_optim_sgd_bitwise(case):
    """The same steps through torch.optim.SGD and through a loop that updates W itself (with SGD's own
    arithmetic, ``p.add_(p.grad, alpha=-lr)``) and calls feedback_step: W and B bitwise equal at every step."""
    opt_model, own_model = _model(case), _model(case)
    opt = torch.optim.SGD(opt_model.parameters(), lr=LR)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pa.FeedbackNotUpdatedWarning)
        for x, y in _batches(5):
            opt.zero_grad()
            F.cross_entropy(opt_model(x), y).backward()
            opt.step()
            own_model.zero_grad()
            F.cross_entropy(own_model(x), y).backward()
            with torch.no_grad():
                for p in own_model.parameters():
                    p.add_(p.grad, alpha=-LR)
            pa.feedback_step(own_model)
            for a, b in zip(_state(opt_model), _state(own_model)):
                assert torch.equal(a, b)
    b0 = _model(case).state_dict()
    assert not torch.equal(own_model[1].feedback, b0["1.feedback"])  # B moved


def test_plain_loop_with_feedback_step_closes_the_kp_angle():
    """The issue's loop, ``p -= lr * p.grad``: with feedback_step B follows W (B − W shrinks by
    (1 − d) per step: 50 steps at d = 0.1 leave 0.9^50 ≈ 0.5 % of it); without, B stays bit-identical."""
    model = pa.set_kp_decay(_model("kp"), 0.1)
    start = [_angle(layer) for _, layer in pa.feedback_layers(model)]
    for x, y in _batches(50):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= LR * p.grad
        pa.feedback_step(model)
    end = [_angle(layer) for _, layer in pa.feedback_layers(model)]
    assert min(start) > 60 and max(end) < 2, (start, end)


@pytest.mark.parametrize("case", ["kp", "wm-orthogonal"])
@pytest.mark.parametrize("update", ["inplace", "data"])
def test_update_without_feedback_step_warns_once_naming_each_layer(case, update):
    """``p -= lr * p.grad`` (bumps W's version counter) or ``p.data -= …`` (does not: found by the probed
    values) without feedback_step: one FeedbackNotUpdatedWarning per layer, naming it, at the next forward."""
    model = _model(case)
    b0 = [layer.feedback.clone() for _, layer in pa.feedback_layers(model)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, y in _batches(4):
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    if update == "inplace":
                        p -= LR * p.grad
                    else:
                        p.data -= LR * p.grad
    found = [str(w.message) for w in caught if issubclass(w.category, pa.FeedbackNotUpdatedWarning)]
    names = [name for name, _ in pa.feedback_layers(model)]
    assert len(found) == len(names) == 3
    for name, message in zip(names, found):
        assert message.startswith(f"layer '{name}' (FeedbackLinear") and "feedback_step" in message
        assert "\n" not in message
    if case == "kp":  # B never followed: KP would have silently been FA
        assert all(torch.equal(b, layer.feedback) for b, (_, layer) in zip(b0, pa.feedback_layers(model)))


def test_feedback_step_before_the_update_is_caught():
    """Calling feedback_step before the update (W not yet changed) updates nothing, and the update
    that follows is reported at the next forward."""
    model = _model("kp")
    (x, y), (x2, _) = _batches(2)
    F.cross_entropy(model(x), y).backward()
    pa.feedback_step(model)
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    with pytest.warns(pa.FeedbackNotUpdatedWarning):
        model(x2)


def _train(model, opt, steps=3, closure=False, accumulate=1):
    for x, y in _batches(steps):
        def loss_fn():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        if closure:
            opt.step(loss_fn)
            continue
        opt.zero_grad()
        for _ in range(accumulate):
            F.cross_entropy(model(x), y).backward()
        opt.step()
        with torch.no_grad():
            model(x)  # evaluation forwards change nothing
        F.cross_entropy(model(x), y)  # nor a training forward that is not followed by an update


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=LR),
    "sgd-momentum-foreach": lambda p: torch.optim.SGD(p, lr=LR, momentum=0.9, foreach=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3, foreach=False),
    "adam-fused": lambda p: torch.optim.Adam(p, lr=1e-3, fused=True),
    "adamw-fused": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
}


@pytest.mark.parametrize("case", SETTINGS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_torch_optim_paths_raise_no_false_warning(case, name):
    """Fused and unfused optimizers (fused ones bump no version counter), gradient accumulation,
    evaluation forwards, loading a state dict, re-initialising: no warning, and B follows W."""
    model = _model(case)
    b0 = model[1].feedback.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", pa.FeedbackNotUpdatedWarning)
        opt = OPTIMIZERS[name](model.parameters())
        _train(model, opt, accumulate=2)
        model.load_state_dict(copy.deepcopy(model.state_dict()))
        _train(model, opt)
        pa.init_weights(model, generator=torch.Generator().manual_seed(5))
        _train(model, opt)
    assert not torch.equal(model[1].feedback, b0)


@pytest.mark.parametrize("case", ["kp", "wm-orthogonal"])
def test_lbfgs_with_closure_raises_no_false_warning_and_updates_once(case):
    """LBFGS re-evaluates the model inside step() while W moves: no warning; KP's B moves once per
    step by the step's whole update: B − W shrinks by exactly (1 − d) per step."""
    model = _model(case)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=4)
    gap = (model[1].feedback - model[1].weight).detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", pa.FeedbackNotUpdatedWarning)
        _train(model, opt, steps=2, closure=True)
    if case == "kp":
        torch.testing.assert_close(model[1].feedback - model[1].weight.detach(), gap * 0.99 ** 2)


def test_feedback_step_after_a_torch_optim_step_changes_nothing_and_frozen_layers_are_skipped():
    model = _model("kp")
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    _train(model, opt, steps=1)
    after = _state(model)
    pa.feedback_step(model)  # the step's hook already did it
    assert all(torch.equal(a, b) for a, b in zip(after, _state(model)))
    model[3].weight.requires_grad_(False)  # a frozen layer in a loop of one's own: W unchanged, B unchanged
    b3 = model[3].feedback.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", pa.FeedbackNotUpdatedWarning)
        for x, y in _batches(2):
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p -= LR * p.grad
            pa.feedback_step(model)
    assert torch.equal(model[3].feedback, b3)


def test_feedback_step_on_a_model_without_learned_feedback_is_an_error():
    with pytest.raises(ConfigError, match="feedback_step updates layers under kp or wm; this model has fa"):
        pa.feedback_step(pa.mlp([4, 3, 2], "fa"))
