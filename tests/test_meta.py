"""Meta-loss (never touches the original), task adaptation, and weight trajectories."""
import copy

import pytest
import torch
import torch.nn.functional as F

import prealign as pa
from prealign.analysis import meta
from prealign.analysis import trajectory as tj
from prealign.data import Dataset, available


def _task(name, seed, n=40, d=12, classes=4):
    g = torch.Generator().manual_seed(seed)
    x_tr, x_te = torch.rand(n, 1, 3, 4, generator=g), torch.rand(n, 1, 3, 4, generator=g)
    return meta.Task(name, Dataset(name, x_tr, torch.arange(n) % classes, x_te, torch.arange(n) % classes, classes, "test"))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_meta_loss_never_modifies_original_and_matches_manual_adaptation(gen):
    tasks = [_task("a", 0), _task("b", 1)]
    model = pa.mlp([12, 8, 4], rule="fa", generator=gen)
    before = _state(model)
    out = meta.meta_loss(model, tasks, inner_steps=10, inner_lr=1e-3, k=3, seed=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert out["meta_loss"] == pytest.approx(out["a"] + out["b"])
    # reproduce task "a" by hand: 10 Adam steps at 1e-3 on the support batch, loss on the query batch
    (xs, ys), (xq, yq) = meta.task_batches(tasks, k=3, seed=5)["a"]
    assert len(ys) == 12 and torch.equal(torch.bincount(ys), torch.full((4,), 3))
    learner = copy.deepcopy(model)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    for _ in range(10):
        loss = F.cross_entropy(learner(xs), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert out["a"] == pytest.approx(F.cross_entropy(learner(xq), yq).item(), rel=1e-6)
    # adaptation actually happened: the adapted loss differs from the unadapted one
    with torch.no_grad():
        assert abs(out["a"] - F.cross_entropy(model(xq), yq).item()) > 1e-4


def test_meta_loss_curve_tracks_noise_pretraining(gen):
    tasks = [_task("a", 0)]
    model = pa.mlp([12, 8, 4], rule="fa", generator=gen)
    hist = meta.meta_loss_curve(model, tasks, noise_samples=256, every=128, batch_size=64, k=2, generator=gen,
                                progress=False)
    assert [h["seen"] for h in hist] == [0, 128, 256]
    # the tracker scores the same images every time: re-measuring the final model gives the last value
    tracker = meta.MetaLossTracker(tasks, k=2)
    tracker(0, 0, model)
    assert tracker.history[0]["meta_loss"] == pytest.approx(hist[-1]["meta_loss"], rel=1e-6)


def test_task_adaptation_trains_copies(gen):
    tasks = [_task("a", 0), _task("b", 1)]
    model = pa.mlp([12, 8, 4], rule="fa", generator=gen)
    before = _state(model)
    curves = meta.task_adaptation(model, tasks, epochs=2, batch_size=8, lr=1e-3, device="cpu", progress=False)
    assert set(curves) == {"a", "b"} and [r["epoch"] for r in curves["a"]] == [0, 1, 2]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_default_tasks_on_a_fresh_machine(no_data_dirs):
    """Only the embedded sets: MNIST-5k and UCI digits standing in for Fashion-MNIST; KMNIST is skipped, loudly."""
    with pytest.warns(UserWarning, match=r"kmnist not found on this machine, skipped"):
        tasks = meta.default_tasks(train_size=200)
    assert [t.name for t in tasks] == ["mnist5k", "uci-digits-28 (stand-in for fashion-mnist)"]
    assert all(t.data.x_train.shape[1:] == (1, 28, 28) and len(t.data.y_train) == 200 for t in tasks)
    assert all(torch.bincount(t.data.y_train).tolist() == [20] * 10 for t in tasks)  # stratified subset
    # a split no larger than train_size is used whole (UCI digits have 1,438 training images)
    with pytest.warns(UserWarning):
        whole = meta.default_tasks(train_size=5000)
    assert [len(t.data.y_train) for t in whole] == [4000, 1438]


@pytest.mark.optional_data
@pytest.mark.skipif(not available("fashion-mnist")[0], reason="Fashion-MNIST not on this machine (apt install dataset-fashion-mnist)")
def test_default_tasks_with_fashion_mnist(recwarn):
    tasks = meta.default_tasks(train_size=200)
    names = [t.name for t in tasks]
    assert names[0] in ("mnist", "mnist5k") and names[1] == "fashion-mnist" and len(tasks) == 3
    assert names[2] in ("kmnist", "uci-digits-28 (stand-in for kmnist)")
    assert not [w for w in recwarn if "meta-loss tasks" in str(w.message)]  # nothing skipped
    assert all(t.data.x_train.shape[1:] == (1, 28, 28) and len(t.data.y_train) == 200 for t in tasks)


def test_weight_trajectory_and_pca(gen):
    model = pa.mlp([12, 6, 4], rule="fa", generator=gen)
    traj = tj.WeightTrajectory()
    traj(0, 0, model)
    pa.pretrain_noise(model, 128, batch_size=32, generator=gen, callback=traj, callback_every=2, progress=False)
    record = {}
    traj.on_epoch_end(0, model, None, record)
    assert traj.phases == ["noise", "noise", "noise", "data"] and traj.positions == [0, 64, 128, 0]
    layer = model[1]
    assert record["w_minus_b/1"] == pytest.approx(float((layer.weight - layer.feedback).detach().norm()))
    res = tj.pca_trajectories({"run": traj})
    pcs = res["runs"]["run"]["pcs"]
    assert len(pcs) == 4 and len(pcs[0]) == 2 and sum(res["explained_variance"]) <= 1 + 1e-9
    # the projection reproduces distances in the plane when two PCs hold all the variance (3 snapshots)
    t3 = tj.WeightTrajectory()
    t3.snapshots, t3.phases, t3.positions = traj.snapshots[:3], traj.phases[:3], traj.positions[:3]
    t3.w_minus_b, t3.layer = traj.w_minus_b[:3], traj.layer
    p3 = torch.tensor(tj.pca_trajectories({"r": t3})["runs"]["r"]["pcs"], dtype=torch.float64)
    snaps = torch.stack(t3.snapshots).double()
    assert torch.allclose(torch.cdist(p3, p3), torch.cdist(snaps, snaps), atol=1e-4)


def test_order_dependence_runs_both_orders():
    g = torch.Generator().manual_seed(0)
    data = Dataset("tiny", torch.rand(40, 1, 3, 4, generator=g), torch.arange(40) % 4,
                   torch.rand(20, 1, 3, 4, generator=g), torch.arange(20) % 4, 4, "test")
    res = tj.order_dependence(data, hidden=(6,), noise_samples=128, epochs=2, batch_size=32, device="cpu")
    assert set(res["final"]) == {"noise→data", "data→noise"}
    phases = {k: v["phases"] for k, v in res["pca"]["runs"].items()}
    assert phases["noise→data"][0] == "noise" and phases["noise→data"][-1] == "data"
    assert phases["data→noise"][0] == "data" and phases["data→noise"][-1] == "noise"
    assert res["final_w1_distance"] > 0
