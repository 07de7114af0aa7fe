"""Runs trained side by side (prealign.run.batched) are bitwise the runs prealign.train trains alone."""
import copy
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

import prealign as pa
from prealign.run.batched import pretrain_noise_batched, train_batched, train_runs
from prealign.run.stacked import StackedMLP
from prealign.data import holdout_validation
from prealign.errors import ConfigError, PrealignError
from prealign.run.trainer import FileCheckpoint, TensorData, evaluate, train

DIMS = [20, 16, 12, 3]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny workloads: 1 thread is fastest on shared cores


def _data(n=230, n_test=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_test, 1, 4, 5, generator=g)
    y = (x.flatten(1) @ torch.randn(20, 3, generator=g)).argmax(1)
    return TensorData(x[:n], y[:n], x[n:], y[n:], 3)


def _models(activation="relu", methods=("bp", "fa", "ifa@30", "rnp", "fa"), bias=True):
    """Methods bp, fa, ifa@30, rnp (FA after a short noise pretraining) and FA at α_W = 1."""
    out = []
    for i, method in enumerate(methods):
        g = torch.Generator().manual_seed(100 + i)
        model = pa.mlp(DIMS, rule="fa", generator=g, alpha_w=1.0 if i == 4 else 2.0, activation=activation, bias=bias)
        pa.get_method(method).with_options(noise_samples=128).prepare(model, generator=g, progress=False)
        out.append(model)
    return out


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def assert_bitwise(expected, got, models_a, models_b):
    """TrainResults and final weights equal bit for bit (wall times aside)."""
    for k, (r, b) in enumerate(zip(expected, got)):
        for field in ("best_test_acc", "best_epoch", "epochs_run", "stopped_early", "diverged", "diverged_epoch"):
            assert _same(getattr(r, field), getattr(b, field)), (k, field)
        assert len(r.curves) == len(b.curves), k
        for er, eb in zip(r.curves, b.curves):
            assert list(er) == list(eb), (k, er["epoch"])
            for key in er:
                if not key.endswith("seconds"):
                    assert _same(er[key], eb[key]), (k, er["epoch"], key, er[key], eb[key])
        for (name, p), q in zip(models_a[k].state_dict().items(), models_b[k].state_dict().values()):
            assert torch.equal(p, q), (k, name)


@pytest.mark.parametrize("activation,bias,threads", [("relu", True, 1), ("sigmoid", True, 1), ("tanh", False, 1),
                                                     ("relu", True, 2)])
def test_batched_equals_separate_bitwise(activation, bias, threads):
    """bp, fa, ifa@30, rnp and FA at α_W=1 side by side = five prealign.train runs, bit for bit:
    records (losses, accuracies, angles, gradient alignment), selection, early stops, weights. Sigmoid
    runs per model (its stacked form rounds differently); with 2 threads both sides run under the
    same setting (on this CPU a 2-thread mm of a 784-wide layer rounds differently from a bmm slice,
    which the former engine used; those shapes are too slow for a unit test on shared cores)."""
    torch.set_num_threads(threads)  # the one_thread fixture restores the count
    data = _data() if threads == 1 else _data(n=96, n_test=32)
    models = _models(activation, bias=bias)
    seeds, epochs, patience = [3, 1, 4, 1, 5], [3, 3, 2, 3, 3], [1, None, None, 1, None]
    if threads > 1:  # 2 threads crawl on loaded shared cores: bp and fa, 2 short epochs
        models, seeds, epochs, patience = models[:2], [3, 1], [2, 2], [None, 1]
    refs = [copy.deepcopy(m) for m in models]
    kw = {"batch_size": 16, "lr": 3e-2, "weight_decay": 1e-3, "device": "cpu", "progress": False}
    expected = [train(m, data, epochs=e, patience=p, seed=s, **kw) for m, s, e, p in zip(refs, seeds, epochs, patience)]
    got = train_runs(models, data, epochs=epochs, patience=patience, seeds=seeds, **kw)
    assert_bitwise(expected, got, refs, models)
    assert all(any(k.startswith("grad_angle/") for k in r.curves[1]) for r in got)


ALL_METHODS = ("bp", "fa", "ifa@30", "rnp", "dfa", "usf", "brsf", "frsf", "kp", "wm")


def _method_model(method: str, dims, seed: int, activation: str = "relu") -> torch.nn.Module:
    """``method``'s network as prealign.run.config.prepare makes it (rule, alignment, a short noise
    pretraining for rnp); rules that draw at each step get their own streams (prealign.seed_rules), wm
    mirrors every 2 steps so that a short run mirrors several times."""
    g = torch.Generator().manual_seed(100 + seed)
    m = pa.get_method(method)
    model = pa.mlp(dims, rule=m.rule, generator=g, activation=activation)
    m.with_options(noise_samples=96 if m.noise_samples else 0).prepare(model, generator=g, noise_batch_size=32,
                                                                       progress=False)
    pa.seed_rules(model, 1000 + seed)
    if m.rule == "wm":
        pa.set_wm(model, every=2)
    return model


@pytest.mark.parametrize("dims,activation", [([20, 3], "relu"), ([20, 16, 12, 3], "relu"), ([20, 9, 7, 5, 3], "gelu"),
                                             ([20, 16, 12, 3], "leaky_relu"), ([20, 16, 12, 3], "elu"),
                                             ([20, 16, 12, 3], "linear")])
def test_every_rule_in_one_group_equals_alone(dims, activation):
    """Issue 22: one group of all ten methods (bp, fa, ifa, rnp, dfa, usf, brsf, frsf, kp, wm), MLPs of
    1-4 layers and every activation class: each model's records, selection and final weights (W, B,
    dfa's D) equal its own prealign.train run bit for bit; batches of 32 and a last batch of 6, so
    both batch sizes' stacks and odd widths (9, 7, 5: slabs padded to 64-byte lines) are used."""
    data = _data(n=102, n_test=40)
    models = [_method_model(m, dims, k, activation) for k, m in enumerate(ALL_METHODS)]
    refs = [copy.deepcopy(m) for m in models]
    seeds, patience = list(range(len(models))), [None, 1] * (len(models) // 2)
    kw = {"epochs": 3, "batch_size": 32, "lr": 2e-2, "device": "cpu", "progress": False}
    expected = [train(m, data, seed=s, patience=p, **kw) for m, s, p in zip(refs, seeds, patience)]
    got = train_runs(models, data, seeds=seeds, patience=patience, **kw)
    assert_bitwise(expected, got, refs, models)
    kp = ALL_METHODS.index("kp")
    assert not torch.equal(models[kp][-1].feedback, _method_model("kp", dims, kp, activation)[-1].feedback)  # B learned


def test_a_run_is_the_same_in_any_group():
    """Issue 12 (2): one model trained with two different sets of group mates stores identical numbers."""
    data = _data()
    pool = _models(methods=("bp", "fa", "ifa@30", "fa"))
    a = [copy.deepcopy(m) for m in pool[:3]]
    b = [copy.deepcopy(pool[3]), copy.deepcopy(pool[2])]
    kw = {"epochs": 2, "batch_size": 16, "lr": 3e-2, "device": "cpu", "progress": False}
    in_a = train_runs(a, data, seeds=[0, 1, 2], **kw)[2]
    in_b = train_runs(b, data, seeds=[5, 2], **kw)[1]
    assert_bitwise([in_a], [in_b], [a[2]], [b[1]])


def test_noise_pretraining_batched_equals_alone():
    """pretrain_noise_batched = pretrain_noise per model, bitwise (its own stream, its own Adam; ELU per
    model: 50 x 12 activations leave a scalar tail that the stacked ELU would round differently)."""
    models = [pa.mlp(DIMS, rule="fa", generator=torch.Generator().manual_seed(i), activation="elu") for i in range(3)]
    refs = [copy.deepcopy(m) for m in models]
    pretrain_noise_batched(models, [torch.Generator().manual_seed(10 + i) for i in range(3)], 300, batch_size=50, lr=1e-2)
    for i, ref in enumerate(refs):
        pa.pretrain_noise(ref, 300, batch_size=50, lr=1e-2, generator=torch.Generator().manual_seed(10 + i), progress=False)
    for m, ref in zip(models, refs):
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), ref.parameters()))
    assert not torch.equal(models[0][1].weight, models[1][1].weight)


def test_validation_split_selection_and_patience():
    """val_fraction: the trainer's held-out split (prealign.data.holdout_validation), val_loss/val_acc
    per epoch, selection by validation (best_epoch, best_test_acc there, best_val_acc), patience on
    validation; training itself is that of the reduced training set."""
    data = _data(n=200)
    held = holdout_validation(data, 0.25)
    models = _models(methods=("bp", "fa", "fa"))
    plain = [copy.deepcopy(m) for m in models]
    checked = []

    class Check:  # the record's validation numbers are the model's, on the held-out split
        def on_epoch_end(self, epoch, model, d, record):
            assert torch.equal(d.x_val, held.x_val)
            assert (record["val_loss"], record["val_acc"]) == evaluate(model, held.x_val, held.y_val)
            checked.append(epoch)

    kw = {"batch_size": 16, "lr": 3e-2, "device": "cpu", "progress": False, "seeds": [0, 1, 2]}
    got = train_runs(models, data, epochs=6, patience=[None, 1, 2], val_fraction=0.25, callbacks=[[Check()]] * 3, **kw)
    assert len(checked) == sum(len(r.curves) for r in got)
    reduced = TensorData(held.x_train, held.y_train, held.x_test, held.y_test, 3)
    ref = train_runs(plain, reduced, epochs=[len(r.curves) - 1 for r in got], **kw)
    stopped = 0
    for r, p, patience in zip(got, ref, (None, 1, 2)):
        assert r.selection == "val" and p.selection == "test" and "val_acc" not in p.curves[1]
        assert list(r.curves[1])[:6] == ["epoch", "seconds", "train_loss", "train_acc", "val_loss", "val_acc"]
        for rv, rp in zip(r.curves, p.curves):  # the same training, measured on validation too
            assert all(rv[k] == rp[k] for k in rp if not k.endswith("seconds"))
        val = [c["val_acc"] for c in r.curves]
        assert r.best_epoch == val.index(max(val)) and r.best_val_acc == max(val)
        assert r.best_test_acc == r.curves[r.best_epoch]["test_acc"]
        if patience is not None and r.stopped_early:
            stopped += 1
            assert r.epochs_run - r.best_epoch == patience and r.epochs_run < 6
        assert all(abs(c["val_acc"] * 50 - round(c["val_acc"] * 50)) < 1e-9 for c in r.curves)  # 50 held out
    assert stopped >= 1


@pytest.mark.skipif("val_fraction" not in inspect.signature(train).parameters,
                    reason="this branch's prealign.train has no val_fraction yet (the trainer's branch adds it)")
def test_validation_equals_the_trainer_bitwise():
    data = _data(n=200)
    models = _models(methods=("bp", "fa", "ifa@30"))
    refs = [copy.deepcopy(m) for m in models]
    kw = {"batch_size": 16, "lr": 3e-2, "device": "cpu", "progress": False, "val_fraction": 0.25}
    expected = [train(m, data, epochs=4, patience=p, seed=s, **kw) for m, s, p in zip(refs, (0, 1, 2), (None, 1, 2))]
    got = train_runs(models, data, epochs=4, patience=[None, 1, 2], seeds=[0, 1, 2], **kw)
    assert_bitwise(expected, got, refs, models)
    assert [r.best_val_acc for r in expected] == [r.best_val_acc for r in got]
    assert [r.selection for r in expected] == [r.selection for r in got] == ["val"] * 3


def _comparable(value):
    """A checkpoint value with wall times dropped (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if not str(k).endswith("seconds")}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _assert_same_value(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), (where, list(a), list(b))
        for k in a:
            _assert_same_value(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_value(x, y, f"{where}[{i}]")
    else:
        assert _same(a, b), (where, a, b)


@pytest.mark.parametrize("method", ["fa", "brsf", "wm"])
def test_a_groups_checkpoint_is_the_one_train_writes(tmp_path, method):
    """A group member's checkpoint holds what prealign.train's holds for the same run after the same
    epoch, key by key and bitwise (wall times aside): model, optimizer state, batch-order generator,
    the rules' streams (brsf, wm), the mirror phases, the run's own global stream, counters, curves."""
    from prealign.run.checkpoint import read_checkpoint

    data = _data(n=96, n_test=32)
    models = [_method_model(method, DIMS, k) for k in range(2)]
    refs = [copy.deepcopy(m) for m in models]
    kw = {"epochs": 2, "batch_size": 16, "lr": 2e-2, "device": "cpu", "progress": False}
    for k, ref in enumerate(refs):
        train(ref, data, seed=k, checkpoint=FileCheckpoint(tmp_path / f"alone{k}.pt"), **kw)
    train_runs(models, data, seeds=[0, 1], checkpoints=[FileCheckpoint(tmp_path / f"group{k}.pt") for k in range(2)], **kw)
    for k in range(2):
        alone, group = (_comparable(read_checkpoint(tmp_path / f"{w}{k}.pt")) for w in ("alone", "group"))
        assert set(alone) == set(group)
        for key in alone:
            _assert_same_value(alone[key], group[key], key)
        if method != "fa":
            assert alone["rules_rng"]  # the rule's own streams are there to compare


def test_a_draw_from_the_global_rng_stops_a_group(monkeypatch):
    """Nothing in a group may draw from torch's global RNG (its runs alone draw from streams of their
    own): a draw is a one-line PrealignError, never silently different numbers."""
    from prealign.run.stacked import StackedMLP as Stack

    real = Stack.step

    def drawing(self, *args):
        torch.rand(1)
        return real(self, *args)

    monkeypatch.setattr(Stack, "step", drawing)
    with pytest.raises(PrealignError, match="global RNG"):
        train_runs(_models(methods=("fa", "bp")), _data(), epochs=1, seeds=[0, 1], batch_size=32, device="cpu")


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    """Checkpoints after every epoch; a kill after some models' epoch 2 (raised from a callback)
    resumes in train_runs (models at different epochs) with the uninterrupted numbers, bitwise."""
    data = _data()
    models = _models(methods=("bp", "fa", "rnp"))
    whole = [copy.deepcopy(m) for m in models]
    kw = {"epochs": 4, "batch_size": 16, "lr": 3e-2, "device": "cpu", "progress": False, "seeds": [0, 1, 2],
          "patience": [None, 1, None]}
    expected = train_runs(whole, data, **kw)

    class Kill(BaseException):
        pass

    class KillAt:
        def on_epoch_end(self, epoch, model, d, record):
            if epoch == 2:
                raise Kill

    ckpts = [FileCheckpoint(tmp_path / f"{k}.pt") for k in range(3)]
    with pytest.raises(Kill):
        train_runs([copy.deepcopy(m) for m in models], data, checkpoints=ckpts, callbacks=[[], [], [KillAt()]], **kw)
    assert [c.load()["epoch"] for c in ckpts] == [2, 2, 1]
    fresh = [copy.deepcopy(m) for m in models]  # weights come from the checkpoints
    got = train_runs(fresh, data, checkpoints=ckpts, **kw)
    assert_bitwise(expected, got, whole, fresh)


def test_train_batched_curves_and_orders_per_seed():
    data = _data()
    model = pa.mlp(DIMS, rule="fa", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = F.cross_entropy(model(data.x_train), data.y_train).item()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    curves = train_batched([a, b], data, epochs=1, batch_size=8, lr=1e-2, seeds=[0, 1], device="cpu")
    assert curves[0][0]["epoch"] == 0 and curves[0][0]["train_loss"] == pytest.approx(expected, rel=1e-6)
    assert set(curves[0][1]) >= {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "angle/1", "angle/3", "seconds"}
    assert not torch.equal(a[1].weight, b[1].weight)  # different seeds, different batch orders


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_one_stacked_step_equals_autograd(activation):
    """One StackedMLP.step: each model's loss and every parameter's gradient equal autograd's for the
    model alone (F.cross_entropy then backward through its feedback layers), bitwise, for bp, fa,
    dfa and usf side by side; the parameters and feedback matrices themselves are untouched."""
    g = torch.Generator().manual_seed(0)
    models = [pa.mlp([6, 5, 4, 3], rule=r, generator=g, activation=activation) for r in ("bp", "fa", "dfa", "usf")]
    x = torch.randn(4, 7, 6, generator=g)
    y = torch.randint(0, 3, (4, 7), generator=g)
    refs = [copy.deepcopy(m) for m in models]
    before = [copy.deepcopy(m.state_dict()) for m in models]
    stack = StackedMLP(models)
    losses = stack.step(stack.buffers(7), list(x.unbind(0)), y)
    for k, (m, ref) in enumerate(zip(models, refs)):
        loss = F.cross_entropy(ref(x[k]), y[k])
        loss.backward()
        assert torch.equal(losses[k], loss.detach()), k
        for (name, p), q in zip(m.named_parameters(), ref.parameters()):
            assert torch.equal(p.grad, q.grad), (k, name)
        after = m.state_dict()  # (dfa's D is drawn on first use, here as alone: dfa_feedback is not compared)
        assert all(torch.equal(after[key], v) for key, v in before[k].items() if "dfa_feedback" not in key)


def test_errors():
    with pytest.raises(PrealignError, match="seed_rules"):
        StackedMLP([pa.mlp(DIMS, rule="brsf")])
    with pytest.raises(PrealignError, match="one architecture"):
        StackedMLP([pa.mlp(DIMS), pa.mlp([20, 8, 3])])
    with pytest.raises(PrealignError, match="MLP"):
        StackedMLP([pa.lenet((1, 28, 28), 10)])
    with pytest.raises(PrealignError, match=r"Linear \(activation Linear\)"):
        StackedMLP([torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())])
    m = pa.mlp(DIMS)
    with pytest.raises(ConfigError, match="same model"):
        StackedMLP([m, m])

    class PerStep:
        def on_step_end(self, step, model):
            pass

    with pytest.raises(PrealignError, match="on_step_end"):
        train_runs([pa.mlp(DIMS)], _data(), epochs=1, seeds=[0], callbacks=[[PerStep()]])


def test_bench_batched_row_checks_the_invariant_and_its_ceiling():
    """The bench's batched row (quick: 4 seeds) times sequential runs, the group and the products'
    floor, and checks on the timed runs that the group's weights equal the sequential ones."""
    from prealign.bench.batched import TARGETS, bench_batched

    (row,) = bench_batched(torch.device("cpu"), quick=True)
    assert row.key == "batched/4" and row.details["bitwise_equal"] is True
    assert row.details["ceiling"] > 0 and row.details["floor_s"] > 0 and row.reps == 1
    assert TARGETS == {8: ">= 2.0", 16: ">= 2.5"}


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_group_optimizer_step_is_torchs(name):
    """The group's fused Adam/AdamW step (one kernel call, step counters as views of one tensor) updates
    parameters and state bitwise as torch's optimizer does, and runs the step hooks once per step."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    from prealign.run.batched import _group_optimizer
    from prealign.run.optimizers import make_optimizer

    g = torch.Generator().manual_seed(0)
    a = [torch.randn(5, 3, generator=g).requires_grad_() for _ in range(4)]
    b = [p.detach().clone().requires_grad_() for p in a]
    group, plain = _group_optimizer(name, a, 1e-2, 1e-3, 0.0), make_optimizer(name, b, 1e-2, 1e-3, 0.0)
    calls = []
    handles = [register_optimizer_step_pre_hook(lambda o, *_: calls.append(("pre", o))),
               register_optimizer_step_post_hook(lambda o, *_: calls.append(("post", o)))]
    try:
        for _ in range(4):
            grads = [torch.randn(5, 3, generator=g) for _ in a]
            for p, q, gr in zip(a, b, grads):
                p.grad, q.grad = gr.clone(), gr.clone()
            group.step()
            plain.step()
    finally:
        for h in handles:
            h.remove()
    assert group.__dict__["_group_fast"] is not None  # the steps after the first took the short path
    assert [c for c in calls if c[1] is group] == [("pre", group), ("post", group)] * 4
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(group.state[p][key], plain.state[q][key]), key
