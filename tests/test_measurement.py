"""Measuring never changes what is measured (#12): every measurement the trainer and the library's
epoch callbacks take leaves training bitwise unchanged, on a model with Dropout and BatchNorm,
and gradient alignment compares the two errors under the same dropout masks."""
import pytest
import torch
from torch import nn

import prealign as pa
from prealign.analysis.generalization import DimensionalityTracker
from prealign.analysis.hessian import HessianTracker
from prealign.analysis.landscape import TrajectoryRecorder
from prealign.analysis.trajectory import WeightTrajectory
from prealign.run.callbacks import EpochFunction, MatrixAngles, WeightDistance
from prealign.run.trainer import TensorData, gradient_alignment, measurement_guard, train


def _data(n_train=192, n_test=64, dim=12, classes=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_test, dim, generator=g)
    y = (x @ torch.randn(dim, classes, generator=g)).argmax(1)
    return TensorData(x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)


def _dropout_bn_model(rule="fa", seed=3, dim=12, classes=3):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(dim, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, classes))
    pa.convert(model, rule, generator=torch.Generator().manual_seed(seed))
    model.input_shape, model.num_classes = (dim,), classes
    return model


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _shipped_callbacks(data):
    def stochastic(model, d):  # a user function that runs the model in training mode (dropout + BN stats)
        was = model.training
        model.train()
        out = float(model(d.x_train[:16]).sum().detach())
        model.train(was)
        return out + float(torch.rand(()))

    return [MatrixAngles(), WeightDistance(), EpochFunction("stochastic", stochastic),
            HessianTracker(every=2, n_samples=16, probes=1, tol=0.1), WeightTrajectory(),
            DimensionalityTracker(probe=data.x_test[:32]), TrajectoryRecorder(every_steps=3)]


@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_measurements_leave_training_bitwise_unchanged(rule):
    data = _data()
    runs = {}
    for measured in (False, True):
        model = _dropout_bn_model(rule)
        torch.manual_seed(123)  # the global RNG drives the dropout masks of training
        cbs = _shipped_callbacks(data) if measured else []
        res = train(model, data, epochs=2, batch_size=32, lr=1e-2, seed=1, device="cpu", progress=False,
                    grad_alignment=measured, callbacks=cbs, val_fraction=0.25)
        runs[measured] = (res, _state(model), torch.get_rng_state())
    (off, off_state, off_rng), (on, on_state, on_rng) = runs[False], runs[True]
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
    assert [[r[k] for k in keys] for r in on.curves] == [[r[k] for k in keys] for r in off.curves]
    assert on_state.keys() == off_state.keys()
    for k in off_state:
        assert torch.equal(on_state[k], off_state[k]), k
    assert torch.equal(on_rng, off_rng)
    assert "hessian_top_eig" in on.curves[-1] and "grad_angle/1" in on.curves[-1]  # they did measure


def test_bp_with_dropout_has_zero_gradient_angle():
    model = _dropout_bn_model("bp")
    data = _data()
    angles = gradient_alignment(model, data.x_train[:64], data.y_train[:64])
    assert set(angles) == {"1", "5"}
    assert all(deg < 1e-3 for deg in angles.values()), angles


def test_gradient_alignment_restores_batchnorm_rng_and_grads():
    model = _dropout_bn_model("fa")
    data = _data()
    model.eval()
    before = _state(model)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    rng = torch.get_rng_state()
    gradient_alignment(model, data.x_train[:64], data.y_train[:64])
    assert not model.training and all(not m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_measurement_guard_restores_on_error():
    model = _dropout_bn_model("fa")
    before = _state(model)
    rng = torch.get_rng_state()
    with pytest.raises(ZeroDivisionError), measurement_guard(model):
        model.train()(torch.randn(8, 12))
        1 / 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
