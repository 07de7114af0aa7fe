"""pa.train beyond prealign's own tensors: loaders, a loss function, optimizer objects/factories,
LR schedulers, float64 models; checkpoints with all of them; one-line errors."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, TensorDataset

import prealign as pa
from prealign.run.trainer import TensorData, train

N, D, K, B = 96, 10, 3, 16


def _data(seed=0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N + 32, D, generator=g)
    y = (x @ torch.randn(D, K, generator=g)).argmax(1)
    return TensorData(x[:N], y[:N], x[N:], y[N:], K)


def _model(rule="fa"):
    return pa.mlp([D, 12, K], rule=rule, generator=torch.Generator().manual_seed(0))


class SeededOrder(Sampler):
    """The tensor path's batch order: torch.randperm(n) from a generator seeded like train()'s."""

    def __init__(self, n, seed):
        self.n, self.gen = n, torch.Generator().manual_seed(seed)

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.gen).tolist())

    def __len__(self):
        return self.n


def _kw(**extra):
    return {"epochs": 3, "batch_size": B, "seed": 5, "device": "cpu", "progress": False, "grad_alignment": False, **extra}


def test_dataloader_gives_the_tensor_path_result_for_the_same_batches():
    """Same batches in the same order: bitwise-equal weights and training losses; the measured test
    loss/accuracy agree (they are summed over other batch splits, so to rounding)."""
    data = _data()
    a, b = _model(), _model()
    ra = train(a, data, lr=1e-2, **_kw())
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=B, sampler=SeededOrder(N, 5))
    test = DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=7)
    rb = train(b, loader, test=test, lr=1e-2, **_kw())
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    for ca, cb in zip(ra.curves, rb.curves):
        assert ca["test_acc"] == cb["test_acc"]
        assert ca["test_loss"] == pytest.approx(cb["test_loss"], rel=1e-6)
        assert ca["train_loss"] == (cb["train_loss"] if ca["epoch"] else pytest.approx(cb["train_loss"], rel=1e-6))
    assert ra.best_test_acc == rb.best_test_acc


def test_measurements_do_not_move_a_shuffling_loader():
    """A DataLoader shuffling from the global RNG: gradient alignment (which reads the first training
    batches) and the epoch-0 pass over the training loader leave the batch order untouched."""
    data = _data()
    runs = []
    for grad in (False, True):
        torch.manual_seed(11)
        model = _model()
        loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=B, shuffle=True)
        res = train(model, loader, test=[(data.x_test, data.y_test)], lr=1e-2, **_kw(grad_alignment=grad))
        runs.append((model, res))
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(p, q)
    assert any(k.startswith("grad_angle/") for k in runs[1][1].final) and not any(
        k.startswith("grad_angle/") for k in runs[0][1].final)


def test_float64_model_trains_on_float32_data_as_on_float64_data():
    data = _data()
    a, b = _model().double(), _model().double()
    ra = train(a, data, lr=1e-2, **_kw())
    as64 = TensorData(data.x_train.double(), data.y_train, data.x_test.double(), data.y_test, K)
    train(b, as64, lr=1e-2, **_kw())
    assert all(p.dtype == torch.float64 for p in a.parameters()) and ra.final["test_loss"] == ra.final["test_loss"]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    c = _model().double()  # and from a loader of float32 batches
    train(c, [(data.x_train[i:i + B], data.y_train[i:i + B]) for i in range(0, N, B)], test=[(data.x_test, data.y_test)],
          lr=1e-2, **_kw())
    assert all(p.dtype == torch.float64 and torch.isfinite(p).all() for p in c.parameters())


def test_optimizer_object_and_factory_are_the_ones_used():
    """An SGD object (and a factory) trains exactly as a plain loop with that optimizer over the
    trainer's batch order; lr given beside an object is an error."""
    data = _data()
    model, twin, fact = _model("bp"), _model("bp"), _model("bp")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    train(model, data, optimizer=opt, **_kw())
    train(fact, data, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True), **_kw())
    plain = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        perm = torch.randperm(N, generator=gen)
        for i in range(0, N, B):
            idx = perm[i:i + B]
            plain.zero_grad(set_to_none=True)
            F.cross_entropy(twin(data.x_train[idx]), data.y_train[idx]).backward()
            plain.step()
    for p, q, r in zip(model.parameters(), twin.parameters(), fact.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert torch.equal(p, r)
    assert opt.state[next(model.parameters())]["momentum_buffer"] is not None  # the object itself stepped
    with pytest.raises(pa.ConfigError, match="^lr apply to a named optimizer"):
        train(_model(), data, optimizer=torch.optim.SGD(_model().parameters(), lr=0.1), lr=0.1, **_kw())
    with pytest.raises(pa.ConfigError, match="holds none of the model's parameters"):
        train(_model(), data, optimizer=torch.optim.SGD(_model().parameters(), lr=0.1), **_kw())


def test_scheduler_changes_lr_per_epoch_and_resumes(tmp_path):
    data = _data()
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.04)
    res = train(model, data, optimizer=opt, scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5), **_kw())
    assert [r["lr"] for r in res.curves] == [0.04, 0.04, 0.02, 0.01]  # the rate each epoch trained with
    assert opt.param_groups[0]["lr"] == 0.005

    def run(epochs, ckpt):
        m = _model()
        train(m, data, optimizer=lambda ps: torch.optim.Adam(ps, lr=0.04),
              scheduler=lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.7), checkpoint=ckpt,
              **_kw(epochs=epochs))
        return m

    straight = run(3, None)
    run(2, tmp_path / "c.pt")
    resumed = run(3, tmp_path / "c.pt")  # the scheduler's state comes back: lr 0.04·0.7² in epoch 3
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 3 and "scheduler" in state["settings"]["unverified"]
    other = torch.optim.SGD(_model().parameters(), lr=0.1)
    with pytest.raises(pa.ConfigError, match="drives another optimizer"):
        train(_model(), data, scheduler=torch.optim.lr_scheduler.StepLR(other, 1), **_kw())


@pytest.mark.parametrize("make", [
    lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
    lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.1),
    lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0, threshold=10.0),
])
def test_logged_lr_is_the_rate_each_epoch_trained_with(make):
    """Issue 24: every optimizer step of epoch e ran at record[e]["lr"] (read at each step by a
    callback); StepLR(γ = 0.5) on 0.1 logs 0.1 for epoch 1, not the 0.05 it steps to after it."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: dict[int, set] = {}

    class Rates:
        def on_step_end(self, step, m):
            seen.setdefault((step - 1) // (N // B) + 1, set()).add(opt.param_groups[0]["lr"])

    res = train(model, _data(), optimizer=opt, scheduler=make, callbacks=[Rates()], **_kw(epochs=4))
    assert res.curves[0]["lr"] == 0.1 and sorted(seen) == [1, 2, 3, 4]
    for record in res.curves[1:]:
        assert seen[record["epoch"]] == {record["lr"]}, record["epoch"]
    assert len({r["lr"] for r in res.curves}) > 1  # the schedule did change the rate


def test_loss_fn_is_used_for_training_and_measurement():
    data = _data()
    calls = []

    def doubled(out, y):
        calls.append(len(y))
        return 2 * F.cross_entropy(out, y)

    a, b = _model("bp"), _model("bp")
    ra = train(a, data, optimizer="sgd", lr=0.02, loss_fn=doubled, **_kw())
    rb = train(b, data, optimizer="sgd", lr=0.04, **_kw())  # SGD on 2·CE at lr is SGD on CE at 2·lr
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
    assert ra.final["test_loss"] == pytest.approx(2 * rb.final["test_loss"], rel=1e-5)
    assert ra.final["train_loss"] == pytest.approx(2 * rb.final["train_loss"], rel=1e-5)
    assert sum(c == B for c in calls) >= 3 * (N // B)
    # regression: float targets, MSE; accuracy is not defined
    x = data.x_train
    reg = [(x[i:i + B], x[i:i + B, :K].sum(1, keepdim=True).expand(-1, K)) for i in range(0, N, B)]
    res = train(_model("bp"), reg, test=reg[:2], loss_fn=F.mse_loss, lr=1e-2, **_kw())
    assert res.final["test_loss"] < res.curves[0]["test_loss"]
    assert res.final["test_acc"] != res.final["test_acc"]  # NaN


def test_loader_checkpoint_records_what_it_can(tmp_path):
    data = _data()
    batches = [(data.x_train[i:i + B], data.y_train[i:i + B]) for i in range(0, N, B)]
    kw = {"test": [(data.x_test, data.y_test)], "lr": 1e-2, "loss_fn": F.cross_entropy, "checkpoint": tmp_path / "c.pt"}
    straight = _model()
    train(straight, batches, **{**kw, "checkpoint": None}, **_kw())
    train(_model(), batches, **kw, **_kw(epochs=1))
    resumed = _model()
    train(resumed, batches, **kw, **_kw())
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    settings = torch.load(tmp_path / "c.pt", weights_only=True)["settings"]
    assert settings["data"].startswith("list (len 6)") and "loss_fn (recorded by name)" in settings["unverified"]
    assert settings["loss_fn"].endswith("cross_entropy")
    with pytest.raises(pa.PrealignError, match="from another training run.*loss_fn"):
        train(_model(), batches, **{**kw, "loss_fn": F.nll_loss}, **_kw())


def test_a_loaders_own_generator_is_checkpointed(tmp_path):
    """DataLoader(shuffle=True, generator=g): resuming restores g, so 1 + 2 epochs equal 3."""
    data = _data()

    def run(epochs, ckpt):
        loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=B, shuffle=True,
                            generator=torch.Generator().manual_seed(4))
        m = _model()
        train(m, loader, test=[(data.x_test, data.y_test)], lr=1e-2, checkpoint=ckpt, **_kw(epochs=epochs, grad_alignment=True))
        return m

    straight = run(3, None)
    run(1, tmp_path / "c.pt")
    resumed = run(3, tmp_path / "c.pt")
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("case,match", [
    ("one tensor per batch", r"training data: batch 0 is a Tensor; a loader must yield \(x, y\) pairs of tensors"),
    ("triples", r"training data: batch 0 is a 3-item tuple"),
    ("generator", r"one-shot iterator"),
    ("no test", r"needs test="),
    ("val_fraction", r"val_fraction splits prealign's tensor data"),
    ("lengths", r"batch 0 has 16 inputs but 3 targets"),
    ("empty", r"yielded no batches"),
    ("optimizer type", r"optimizer must be a name"),
    ("not data", r"training data must be prealign data"),
])
def test_errors_are_one_line(case, match):
    data = _data()
    x, y = data.x_train, data.y_train
    test = [(data.x_test, data.y_test)]
    args = {"one tensor per batch": ([x[:B]], {"test": test}),
            "triples": ([(x[:B], y[:B], y[:B])], {"test": test}),
            "generator": (((x[i:i + B], y[i:i + B]) for i in range(0, N, B)), {"test": test}),
            "no test": ([(x[:B], y[:B])], {}),
            "val_fraction": ([(x[:B], y[:B])], {"test": test, "val_fraction": 0.1}),
            "lengths": ([(x[:B], y[:3])], {"test": test}),
            "empty": ([], {"test": test}),
            "optimizer type": (data, {"optimizer": 3}),
            "not data": (3, {"test": test})}
    source, kw = args[case]
    with pytest.raises(pa.PrealignError, match=match) as err:
        train(_model(), source, **_kw(epochs=1), **kw)
    assert "\n" not in str(err.value)


def test_copy_of_a_model_with_its_own_optimizer_is_independent():
    """An optimizer object over one model is refused for another (its deep copy)."""
    model = _model()
    clone = copy.deepcopy(model)
    with pytest.raises(pa.ConfigError, match="holds none"):
        train(clone, _data(), optimizer=torch.optim.Adam(model.parameters()), **_kw(epochs=1))
