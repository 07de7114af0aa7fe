"""Weight mirror (rule ``wm``, Akrout et al. 2019 §4): B learns W from noise-driven activity only.

The per-step algebra under every optimizer path is in tests/test_invariants.py (wm is one of its
rules); here: B is formed from the activity alone (W's values hidden), the angle closes over
training while FA's does not, the step-hook bookkeeping, settings and checkpoint/resume.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prealign as pa
from prealign.feedback import wm
from prealign.run.config import RunConfig
from prealign.run.trainer import TensorData


def _angle(w, b) -> float:
    w, b = w.detach().flatten().double(), b.detach().flatten().double()
    return math.degrees(math.acos(float((w @ b / (w.norm() * b.norm())).clamp(-1, 1))))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_b_is_formed_from_activity_never_from_w(kind, monkeypatch):
    """With W's values hidden (NaN) and the layer's forward activity produced by another matrix
    W̃, a mirror step gives exactly (1 − λ) B + (η/N) corr(W̃ x, x): B only ever saw x and y."""
    layer = (pa.convert(nn.Sequential(nn.Linear(5, 4)), "wm")[0] if kind == "linear"
             else pa.convert(nn.Sequential(nn.Conv2d(2, 4, 3, groups=2)), "wm")[0]).double()
    w_tilde = torch.randn_like(layer.weight)
    b0 = layer.feedback.clone()
    with torch.no_grad():
        layer.weight.fill_(float("nan"))
    op, linear = wm._CONV[4], F.linear
    monkeypatch.setattr(wm.F, "linear", lambda x, w: linear(x, w_tilde))
    monkeypatch.setitem(wm._CONV, 4, lambda x, w, *a: op(x, w_tilde, *a))
    state = torch.get_rng_state()
    wm.mirror_step(layer, lr=0.2, std=0.7, decay=0.1, batch=32)
    torch.set_rng_state(state)
    monkeypatch.undo()
    if kind == "linear":
        x = torch.randn(32, 5, dtype=torch.float64) * 0.7
        hebb = F.linear(x, w_tilde).t() @ x
    else:
        x = torch.randn(32, 2, 3, 3, dtype=torch.float64) * 0.7
        y = F.conv2d(x, w_tilde, groups=2)
        hebb = torch.stack([(y[:, o, 0, 0, None, None, None] * x[:, (o // 2):(o // 2) + 1]).sum(0) for o in range(4)])
    torch.testing.assert_close(layer.feedback, 0.9 * b0 + 0.2 / 32 * hebb)
    assert torch.isfinite(layer.feedback).all()


def test_mirror_converges_to_w_and_its_scale():
    """Many mirror steps on a fixed W: B → (η σ² / λ) W; with the default η = λ/σ², B → W."""
    torch.manual_seed(0)
    layer = pa.convert(nn.Sequential(nn.Linear(20, 6)), "wm")[0].double()
    for _ in range(300):  # sampling error per row ≈ sqrt(in · λ / (2 N)) = 1.6°
        wm.mirror_step(layer, lr=0.02 / 0.25, std=0.5, decay=0.02, batch=256)
    assert _angle(layer.weight, layer.feedback) < 3.0
    assert float(layer.feedback.norm() / layer.weight.detach().norm()) == pytest.approx(1.0, rel=0.05)


def _data(n=512, d=20, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, k, generator=g)).argmax(1)
    return TensorData(x[:384], y[:384], x[384:], y[384:], k)


def test_angle_closes_over_training_where_fa_does_not():
    """pa.train: ∠(W, B) of every wm layer falls from ~90° to a few degrees; FA's stays near 90°;
    the angles are reported per epoch (reads_feedback)."""
    data = _data()
    out = {}
    for rule in ("fa", "wm"):
        model = pa.mlp([20, 32, 16, 4], rule=rule, generator=torch.Generator().manual_seed(0))
        res = pa.train(model, data, epochs=3, batch_size=32, lr=1e-3, seed=0, device="cpu", progress=False,
                       grad_alignment=False, wm={"decay": 0.1, "batch": 256} if rule == "wm" else None)
        out[rule] = [v for k, v in res.final.items() if k.startswith("angle/")]
        assert len(out[rule]) == 3 and all(k.startswith("angle/") for k in res.curves[0] if "angle" in k)
    assert min(out["fa"]) > 60 and max(out["wm"]) < 15, out


def test_one_mirror_per_optimizer_step_accumulation_and_frozen_layers(monkeypatch):
    """Several forwards per step mirror once per step; a layer without a gradient does not mirror;
    LBFGS (a closure re-evaluating the model inside step()) mirrors once, after the step."""
    calls = []
    real = wm.mirror_step
    monkeypatch.setattr(wm, "mirror_step", lambda layer, *a, **k: (calls.append(layer), real(layer, *a, **k)))
    model = pa.mlp([6, 5, 5, 3], rule="wm", generator=torch.Generator().manual_seed(0))
    pa.set_wm(model, steps=2)
    layers = [layer for _, layer in pa.feedback_layers(model)]
    layers[0].weight.requires_grad_(False)
    x, y = torch.randn(12, 6), torch.randint(0, 3, (12,))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for i in range(3):
        F.cross_entropy(model(x[4 * i:4 * i + 4]), y[4 * i:4 * i + 4]).backward()
    assert calls == []
    opt.step()
    assert calls == [layers[1], layers[1], layers[2], layers[2]]  # optimizer order, 2 steps each, frozen skipped
    calls.clear()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
    seen = []

    def closure():
        seen.append(len(calls))
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert len(seen) > 1 and set(seen) == {0} and calls == [layers[1], layers[1], layers[2], layers[2]]


def test_settings_errors_and_config():
    model = pa.mlp([6, 5, 3], rule="wm", generator=torch.Generator().manual_seed(0))
    layer = pa.feedback_layers(model)[0][1]
    assert wm.wm_settings(layer) == {"wm_lr": wm.WM_DECAY / wm.WM_NOISE_STD**2, "wm_noise_std": wm.WM_NOISE_STD,
                                     "wm_decay": wm.WM_DECAY, "wm_steps": wm.WM_STEPS, "wm_batch": wm.WM_BATCH}
    pa.set_wm(model, decay=0.2, noise_std=2.0, steps=3)
    assert wm.wm_settings(layer)["wm_lr"] == pytest.approx(0.05) and wm.wm_settings(layer)["wm_steps"] == 3
    for bad in ({"decay": 1.0}, {"steps": 0}, {"batch": 2.5}, {"lr": -1}, {"noise_std": float("nan")}):
        with pytest.raises(pa.ConfigError, match="wm_"):
            pa.set_wm(model, **bad)
    with pytest.raises(pa.ConfigError, match="only to layers under wm"):
        pa.set_wm(pa.mlp([6, 5, 3], rule="kp"), decay=0.1)
    with pytest.raises(pa.ConfigError, match="only to method wm"):
        RunConfig(method="kp", wm_decay=0.1)
    with pytest.raises(pa.ConfigError, match="wm_batch"):
        RunConfig(method="wm", wm_batch=0)
    assert RunConfig(method="wm", wm_steps=2).wm_settings() == {"wm_steps": 2}
    assert "wm" in pa.METHODS and pa.RULES["wm"].reads_feedback and pa.RULES["wm"].mirrors


def test_resume_gives_the_uninterrupted_run_and_settings_are_checked(tmp_path):
    """The mirror noise comes from the checkpointed global RNG: 1 + 1 epochs resumed equal 2 epochs;
    resuming with other wm settings is refused (they change the result)."""
    data = _data(n=256)

    def run(epochs, ckpt, **wm_kw):
        torch.manual_seed(3)
        model = pa.mlp([20, 8, 4], rule="wm", generator=torch.Generator().manual_seed(1))
        pa.train(model, data, epochs=epochs, lr=1e-3, seed=0, device="cpu", progress=False, checkpoint=ckpt,
                 wm=wm_kw or {"batch": 64})
        return model

    straight = run(2, None)
    run(1, tmp_path / "c.pt")
    torch.manual_seed(99)  # the global RNG at resume time does not matter: the checkpoint's is restored
    resumed = run(2, tmp_path / "c.pt")
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(pa.PrealignError, match="from another training run"):
        run(3, tmp_path / "c.pt", batch=32)


def test_unsupported_layer_is_a_one_line_error():
    layer = nn.ConvTranspose2d(2, 2, 3)
    with pytest.raises(pa.ConfigError, match="mirrors Linear and Conv1d/2d/3d layers; up is a ConvTranspose2d"):
        wm.check_mirrorable(layer, "up")
