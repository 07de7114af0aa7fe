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


def _hidden_w_layer(kind: str, n_in: int, monkeypatch):
    """A float64 wm layer (Linear(n_in, 4), or a grouped Conv2d) whose W is NaN and whose forward
    activity is produced by another matrix W̃ (the mirror must form B from x and y only). Returns
    ``(layer, W̃, B before)``; ``monkeypatch.undo()`` restores the real forward."""
    layer = (pa.convert(nn.Sequential(nn.Linear(n_in, 4)), "wm")[0] if kind == "linear"
             else pa.convert(nn.Sequential(nn.Conv2d(2, 4, 3, groups=2)), "wm")[0]).double()
    w_tilde = torch.randn_like(layer.weight)
    b0 = layer.feedback.clone()
    with torch.no_grad():
        layer.weight.fill_(float("nan"))
    op, linear, factored = wm._CONV[4], F.linear, wm.OrthogonalDesign.forward
    monkeypatch.setattr(wm.F, "linear", lambda x, w: linear(x, w_tilde))
    monkeypatch.setitem(wm._CONV, 4, lambda x, w, *a: op(x, w_tilde, *a))
    monkeypatch.setattr(wm.OrthogonalDesign, "forward", lambda self, w: factored(self, w_tilde.flatten(1)))
    return layer, w_tilde, b0


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_b_is_formed_from_activity_never_from_w(kind, monkeypatch):
    """With W's values hidden (NaN) and the layer's forward activity produced by another matrix
    W̃, a mirror step gives exactly (1 − λ) B + (η/N) corr(W̃ x, x): B only ever saw x and y."""
    layer, w_tilde, b0 = _hidden_w_layer(kind, 5, monkeypatch)
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


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("batch", [None, 40])
def test_orthogonal_noise_mirrors_w_exactly_from_activity(kind, batch, monkeypatch):
    """Orthogonal noise with N >= fan-in: one mirror step is exactly B ← (1 − λ) B + λ W̃ (η = λ/σ²),
    W̃ being the matrix that produced the activity y (W's own values hidden as NaN): no sampling
    error, and B is computed from x and y = layer(x) only."""
    layer, w_tilde, b0 = _hidden_w_layer(kind, 12, monkeypatch)
    assert wm.fan_in(layer) in (12, 18)
    pa.set_wm(nn.Sequential(layer), noise="orthogonal", decay=0.3, noise_std=0.7, **({} if batch is None else {"batch": batch}))
    s = wm.wm_settings(layer)
    assert s["wm_batch"] == (batch or wm.fan_in(layer)) and s["wm_lr"] == pytest.approx(0.3 / 0.49)
    wm.mirror_step(layer, s["wm_lr"], s["wm_noise_std"], s["wm_decay"], s["wm_batch"], s["wm_noise"])
    torch.testing.assert_close(layer.feedback, 0.7 * b0 + 0.3 * w_tilde, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer", ["linear", "conv", "conv-grouped", "conv-transposed"])
@pytest.mark.parametrize("batch", [None, 5, 40])
def test_factored_mirror_step_equals_the_dense_products(layer, batch):
    """Under orthogonal noise the mirror multiplies by x in factored form (FFT-based DCTs) where the
    layer is linear in W.flatten(1) on one sample: the same B as the dense y = layer(x), yᵀx
    computed from the very same draws (an independent dense reimplementation), to float64 rounding."""
    torch.manual_seed(0)
    plain = {"linear": nn.Linear(12, 5), "conv": nn.Conv2d(2, 4, 3), "conv-grouped": nn.Conv2d(2, 4, 3, groups=2),
             "conv-transposed": nn.ConvTranspose2d(3, 2, 2)}[layer]
    m = pa.convert(nn.Sequential(plain), "wm")[0].double()
    n, b0 = wm.fan_in(m), m.feedback.clone()
    batch = batch or n
    torch.manual_seed(3)
    wm.mirror_step(m, lr=0.3, std=0.7, decay=0.2, batch=batch, kind="orthogonal")
    torch.manual_seed(3)
    x = wm.noise("orthogonal", batch, n, 0.7, dtype=torch.float64)
    w = m.weight.detach()
    if layer == "conv-transposed":
        hebb = (x.t() @ (x @ w.flatten(1))).view_as(w)
    elif layer == "conv-grouped":
        xs = x.view(batch, 2, 3, 3)
        y = F.conv2d(xs, w, groups=2).flatten(1)
        hebb = torch.stack([(y[:, o, None, None, None] * xs[:, (o // 2):(o // 2) + 1]).sum(0) for o in range(4)])
    else:
        hebb = ((x @ w.flatten(1).t()).t() @ x).view_as(w)
    torch.testing.assert_close(m.feedback, 0.8 * b0 + 0.3 / batch * hebb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,batch", [(30, 30), (30, 45), (30, 8)])
def test_orthogonal_noise_design(n, batch):
    """x: (N, n) with xᵀx = N σ² I when N >= n; for N < n orthogonal rows (x xᵀ = n σ² I), xᵀx = n σ²
    times a projection, and the mean of xᵀx over draws is N σ² I (unbiased) with about (1 − N/n)
    of Gaussian noise's error."""
    torch.manual_seed(0)
    x = wm.noise("orthogonal", batch, n, 0.5, dtype=torch.float64)
    assert x.shape == (batch, n)
    if batch >= n:
        torch.testing.assert_close(x.t() @ x, batch * 0.25 * torch.eye(n, dtype=torch.float64))
        return
    torch.testing.assert_close(x @ x.t(), n * 0.25 * torch.eye(batch, dtype=torch.float64))
    def gram(kind):
        x = wm.noise(kind, batch, n, 0.5, dtype=torch.float64)
        return x.t() @ x / (batch * 0.25)

    draws = torch.stack([gram("orthogonal") for _ in range(1500)])
    eye = torch.eye(n, dtype=torch.float64)
    assert float((draws.mean(0) - eye).abs().max()) < 0.1
    gauss = torch.stack([gram("gaussian") for _ in range(300)])
    ratio = float(((draws - eye) ** 2).mean() / ((gauss - eye) ** 2).mean())
    assert ratio == pytest.approx(1 - batch / n, rel=0.1)


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


@pytest.mark.parametrize("settings,bound", [({"noise": "gaussian", "decay": 0.1, "batch": 256}, 15.0),
                                            ({"noise": "orthogonal", "every": 2}, 0.5)])
def test_angle_closes_over_training_where_fa_does_not(settings, bound):
    """pa.train (36 optimizer steps): ∠(W, B) of every wm layer falls from ~90° to a few degrees with
    Gaussian noise (its sampling error) and below 0.5° with orthogonal noise (18 mirrorings at
    λ = 0.5: only the lag behind W is left); FA's stays near 90°; the angles are reported per
    epoch (reads_feedback)."""
    data = _data()
    out = {}
    for rule in ("fa", "wm"):
        model = pa.mlp([20, 32, 16, 4], rule=rule, generator=torch.Generator().manual_seed(0))
        res = pa.train(model, data, epochs=3, batch_size=32, lr=1e-3, seed=0, device="cpu", progress=False,
                       grad_alignment=False, wm=settings if rule == "wm" else None)
        out[rule] = [v for k, v in res.final.items() if k.startswith("angle/")]
        assert len(out[rule]) == 3 and all(k.startswith("angle/") for k in res.curves[0] if "angle" in k)
    assert min(out["fa"]) > 60 and max(out["wm"]) < bound, out


def test_one_mirror_per_optimizer_step_accumulation_and_frozen_layers(monkeypatch):
    """Several forwards per step mirror once per step; a layer without a gradient does not mirror;
    LBFGS (a closure re-evaluating the model inside step()) mirrors once, after the step."""
    calls = []
    real = wm.mirror_step
    monkeypatch.setattr(wm, "mirror_step", lambda layer, *a, **k: (calls.append(layer), real(layer, *a, **k)))
    model = pa.mlp([6, 5, 5, 3], rule="wm", generator=torch.Generator().manual_seed(0))
    pa.set_wm(model, steps=2, every=1)
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
    calls.clear()  # every k optimizer steps: steps k, 2k, ... mirror, the others do not
    pa.set_wm(model, steps=1, every=3)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for layer in layers:
        layer.wm_phase = 0
    mirrored = []
    for _ in range(7):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        mirrored.append(len(calls))
    names = [name for name, _ in pa.feedback_layers(model)]
    assert mirrored == [0, 0, 2, 2, 2, 4, 4] and wm.mirror_phases(model) == dict(zip(names, [0, 1, 1]))


def test_settings_errors_and_config():
    model = pa.mlp([6, 5, 3], rule="wm", generator=torch.Generator().manual_seed(0))
    layer = pa.feedback_layers(model)[0][1]
    assert wm.WM_NOISE == "orthogonal"
    assert wm.wm_settings(layer) == {"wm_lr": wm.WM_DECAY / wm.WM_NOISE_STD**2, "wm_noise_std": wm.WM_NOISE_STD,
                                     "wm_decay": wm.WM_DECAY, "wm_steps": wm.WM_STEPS, "wm_batch": 6,
                                     "wm_noise": "orthogonal", "wm_every": wm.WM_EVERY}
    pa.set_wm(model, noise="gaussian")  # an unset setting follows the noise kind's own default
    assert wm.wm_settings(layer) == {"wm_lr": 0.01, "wm_noise_std": 1.0, "wm_decay": 0.01, "wm_steps": 1,
                                     "wm_batch": wm.WM_BATCH, "wm_noise": "gaussian", "wm_every": 1}
    pa.set_wm(model, decay=0.2, noise_std=2.0, steps=3)
    assert wm.wm_settings(layer)["wm_lr"] == pytest.approx(0.05) and wm.wm_settings(layer)["wm_steps"] == 3
    for bad in ({"decay": 1.0}, {"steps": 0}, {"batch": 2.5}, {"lr": -1}, {"noise_std": float("nan")},
                {"every": 0}, {"noise": "uniform"}):
        with pytest.raises(pa.ConfigError, match="wm_"):
            pa.set_wm(model, **bad)
    with pytest.raises(pa.ConfigError, match="only to layers under wm"):
        pa.set_wm(pa.mlp([6, 5, 3], rule="kp"), decay=0.1)
    with pytest.raises(pa.ConfigError, match="only to method wm"):
        RunConfig(method="kp", wm_decay=0.1)
    with pytest.raises(pa.ConfigError, match="wm_batch"):
        RunConfig(method="wm", wm_batch=0)
    with pytest.raises(pa.ConfigError, match="'wm_noise' must be one of gaussian, orthogonal"):
        RunConfig(method="wm", wm_noise="sobol")
    config = RunConfig(method="wm", wm_noise="gaussian", wm_every=2)
    assert config.wm_settings() == {"wm_noise": "gaussian", "wm_every": 2}
    assert config.key() != RunConfig(method="wm").key()
    # the default noise is in a wm run's key (the Gaussian runs stored before it became the default are never
    # served for it), the explicit and the implicit default share their key, and other methods' keys are as before
    assert RunConfig(method="wm").key_fields()["wm_noise"] == "orthogonal"
    assert RunConfig(method="wm").key() == RunConfig(method="wm", wm_noise="orthogonal").key()
    assert not {"wm_noise", "wm_every"} & set(RunConfig(method="kp").key_fields())
    assert RunConfig(method="wm", wm_steps=2).wm_settings() == {"wm_steps": 2}
    assert "wm" in pa.METHODS and pa.RULES["wm"].reads_feedback and pa.RULES["wm"].mirrors


@pytest.mark.parametrize("settings", [{"batch": 64, "noise": "gaussian"}, {"noise": "orthogonal", "every": 5}])
def test_resume_gives_the_uninterrupted_run_and_settings_are_checked(tmp_path, settings):
    """The mirror noise comes from the checkpointed global RNG and the steps since the last
    mirroring (12 steps an epoch, every 5: mid-cycle at the epoch's end) from the checkpoint:
    1 + 1 epochs resumed equal 2 epochs; resuming with other wm settings is refused."""
    data = _data(n=512)

    def run(epochs, ckpt, **wm_kw):
        torch.manual_seed(3)
        model = pa.mlp([20, 8, 4], rule="wm", generator=torch.Generator().manual_seed(1))
        pa.train(model, data, epochs=epochs, lr=1e-3, seed=0, device="cpu", progress=False, checkpoint=ckpt,
                 wm=wm_kw or settings)
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
    with pytest.raises(pa.ConfigError, match="transposed: groups=1\\); up is a ConvTranspose2d: use rule kp"):
        wm.check_mirrorable(nn.ConvTranspose2d(2, 2, 3, groups=2), "up")
    with pytest.raises(pa.ConfigError, match="; bi is a Bilinear: use rule kp"):
        wm.check_mirrorable(nn.Bilinear(2, 2, 3), "bi")


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_transposed_conv_mirrors_its_weight_exactly_from_activity(dims):
    """Orthogonal noise with N ≥ C_in on one input pixel: the mirror step is exactly
    B ← (1 − λ) B + λ W, computed from the layer's response y to the noise only (W hidden)."""
    torch.manual_seed(0)
    conv = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims](3, 4, 2, stride=2).double()
    layer = pa.convert(nn.Sequential(conv), "wm")[0]
    w, b0 = layer.weight.detach().clone(), layer.feedback.clone()
    lam = 0.25
    wm.mirror_step(layer, lr=lam, std=1.0, decay=lam, batch=8, kind="orthogonal")
    torch.testing.assert_close(layer.feedback, (1 - lam) * b0 + lam * w, rtol=1e-10, atol=1e-12)


def test_grid_applies_wm_settings_to_wm_points_only():
    """A sweep grid crossing methods with a wm_* axis: the setting reaches the wm points and is
    dropped at the others (fa: one run), as angle is for ifa; an axis with no wm point is an error."""
    from prealign.run.grid import Grid

    configs = Grid({"dataset": "digits", "epochs": 1}, {"method": ["fa", "wm"], "wm_noise": ["orthogonal", "gaussian"]},
                   name="g").configs()
    assert [(c.method, c.wm_noise) for c in configs] == [("fa", None), ("wm", "orthogonal"), ("wm", "gaussian")]
    with pytest.raises(pa.ConfigError, match="applies to none of the grid's methods"):
        Grid({"dataset": "digits"}, {"method": ["fa", "kp"], "wm_every": [1, 5]}, name="g").configs()
