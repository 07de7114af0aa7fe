"""Trainer: determinism, exact per-epoch metrics, divergence, patience, gradient alignment, resume."""
import math

import pytest
import torch
import torch.nn.functional as F

import prealign as pa
from prealign.run.trainer import TensorData, TrainResult, evaluate, gradient_alignment, read_checkpoint, train


def _data(n_train=256, n_test=128, seed=0, classes=4, dim=20):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, dim, generator=g)
    teacher = torch.randn(dim, classes, generator=g)
    y = (x @ teacher).argmax(1)
    return TensorData(x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)


def _model(rule="fa", seed=1, dims=(20, 16, 4)):
    return pa.mlp(list(dims), rule=rule, generator=torch.Generator().manual_seed(seed))


def _metrics(curves):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in curves]


def test_exported_from_package():
    assert pa.train is train and pa.TrainResult is TrainResult


def test_same_seed_identical_curves_and_different_seed_differs():
    data = _data()
    a = train(_model(), data, epochs=3, batch_size=32, lr=1e-2, seed=5, device="cpu")
    b = train(_model(), data, epochs=3, batch_size=32, lr=1e-2, seed=5, device="cpu")
    c = train(_model(), data, epochs=3, batch_size=32, lr=1e-2, seed=6, device="cpu")
    assert _metrics(a.curves) == _metrics(b.curves)
    assert _metrics(a.curves) != _metrics(c.curves)
    assert [r["epoch"] for r in a.curves] == [0, 1, 2, 3]
    keys = set(a.curves[1])
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "angle/1", "angle/3", "grad_angle/1", "seconds"} <= keys
    assert "grad_angle/3" not in keys  # the output layer's error is exact under every rule


def test_epoch0_is_initial_state_and_test_metrics_are_exact():
    data = _data()
    model = _model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    res = train(model, data, epochs=1, batch_size=64, lr=1e-2, seed=0, device="cpu")
    fresh = _model()
    fresh.load_state_dict(init)
    with torch.no_grad():
        out0 = fresh(data.x_test)
        out1 = model(data.x_test)
    r0, r1 = res.curves
    assert r0["test_loss"] == pytest.approx(F.cross_entropy(out0, data.y_test).item(), rel=1e-5)
    assert r0["test_acc"] == pytest.approx((out0.argmax(1) == data.y_test).float().mean().item())
    assert r1["test_acc"] == pytest.approx((out1.argmax(1) == data.y_test).float().mean().item())
    assert r0["angle/3"] == pytest.approx(pa.alignment_angles(fresh)["3"])


def test_train_metrics_are_running_mean_over_batches():
    """Epoch 1's train loss = mean over the epoch's batches of each batch's loss before its step."""
    data = _data(n_train=96)
    model = _model(rule="bp")
    ref = _model(rule="bp")
    res = train(model, data, epochs=1, batch_size=32, lr=1e-2, seed=3, device="cpu", grad_alignment=False)
    perm = torch.randperm(96, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    losses, correct = [], 0
    for i in range(0, 96, 32):
        idx = perm[i:i + 32]
        out = ref(data.x_train[idx])
        loss = F.cross_entropy(out, data.y_train[idx])
        losses.append(loss.item())
        correct += int((out.argmax(1) == data.y_train[idx]).sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert res.curves[1]["train_loss"] == pytest.approx(sum(losses) / 3, rel=1e-6)
    assert res.curves[1]["train_acc"] == correct / 96
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_gradient_alignment_closed_form_and_no_side_effects():
    """For a 2-layer linear net under FA, the delivered hidden error is (e B2) and the true one (e W2)."""
    torch.manual_seed(0)
    model = pa.mlp([6, 5, 3], rule="fa", activation="linear", generator=torch.Generator().manual_seed(2))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    layer = model[3]
    with torch.no_grad():
        out = model(x)
        e = (torch.softmax(out, 1) - F.one_hot(y, 3).float()) / 8
        want = math.degrees(math.acos(float(F.cosine_similarity((e @ layer.feedback).flatten(), (e @ layer.weight).flatten(), 0))))
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    got = gradient_alignment(model, x, y)
    assert set(got) == {"1"}
    assert got["1"] == pytest.approx(want, abs=1e-3)
    assert all(bool((p.grad == 7.0).all()) for p in model.parameters())  # .grad untouched
    pa.convert(model, "bp")
    assert gradient_alignment(model, x, y)["1"] == pytest.approx(0.0, abs=1e-3)


def test_divergence_recorded_not_raised():
    class Poison:  # the weights blow up during epoch 1 (8 steps per epoch)
        def on_step_end(self, step, model):
            if step == 5:
                with torch.no_grad():
                    model[1].weight.fill_(float("inf"))

    res = train(_model(), _data(), epochs=5, batch_size=32, lr=1e-2, seed=0, device="cpu", callbacks=[Poison()])
    assert res.diverged and res.diverged_epoch == 1 and res.status == "diverged"
    assert len(res.curves) == 2 and math.isnan(res.curves[1]["test_acc"])
    assert res.epochs_run == 1 and res.best_epoch == 0


def test_non_finite_input_diverges_at_epoch_0():
    data = _data()
    data.x_train[5, 3] = float("inf")
    res = train(_model(), data, epochs=5, batch_size=32, seed=0, device="cpu")
    assert res.diverged and res.diverged_epoch == 0 and len(res.curves) == 1


def test_huge_lr_diverges_cleanly():
    data = _data()
    data = TensorData(data.x_train * 1e3, data.y_train, data.x_test * 1e3, data.y_test, 4)
    res = train(_model(rule="fa", dims=(20, 64, 64, 64, 4)), data, epochs=30, batch_size=16, lr=1e6,
                optimizer="sgd", seed=0, device="cpu", grad_alignment=False)
    assert res.diverged and 1 <= res.diverged_epoch <= 30
    assert res.curves[-1]["epoch"] == res.diverged_epoch


def test_a_loss_blown_far_past_its_start_diverges_with_the_reason(tmp_path):
    """Issue 24: SGD at lr 10 on bp drives the training loss from 2 to 1.5e8 at epoch 2 (7e18 by
    epoch 5), all finite; the run is diverged at the epoch it passes 10⁴ × its start, with the
    reason, its curves kept; without the bound (divergence_ratio=None) the same run goes on."""
    kw = dict(epochs=5, batch_size=32, lr=10.0, optimizer="sgd", seed=0, device="cpu", grad_alignment=False)
    res = train(_model("bp"), _data(), **kw)
    start, last = res.curves[0]["train_loss"], res.curves[-1]
    assert res.diverged and res.status == "diverged" and res.diverged_epoch == 2 == last["epoch"] == res.epochs_run
    assert math.isfinite(last["train_loss"]) and last["train_loss"] > 1e4 * start > res.curves[1]["train_loss"]
    assert math.isfinite(last["test_acc"])  # the diverged epoch is measured and kept...
    assert res.best_epoch < 2  # ...but never selected
    assert "training loss" in res.diverged_reason and "epoch-0" in res.diverged_reason
    assert res.to_dict()["diverged_reason"] == res.diverged_reason
    unbounded = train(_model("bp"), _data(), divergence_ratio=None, **kw)
    assert unbounded.status == "finished" and unbounded.curves[-1]["train_loss"] > 1e15
    assert _metrics(unbounded.curves[:3]) == _metrics(res.curves)  # the bound judges, never changes the training
    looser = train(_model("bp"), _data(), divergence_ratio=1e8, **kw)
    assert looser.diverged_epoch == 3
    ckpt = tmp_path / "c.pt"  # a resumed diverged run comes back as it ended, reason included
    train(_model("bp"), _data(), checkpoint=ckpt, **kw)
    again = train(_model("bp"), _data(), checkpoint=ckpt, **kw)
    assert again.diverged_epoch == 2 and again.diverged_reason == res.diverged_reason
    with pytest.raises(pa.ConfigError, match="divergence_ratio must be > 1"):
        train(_model("bp"), _data(), divergence_ratio=0.5, **kw)
    with pytest.raises(pa.PrealignError, match="divergence_ratio"):  # a checkpoint of another bound is refused
        train(_model("bp"), _data(), checkpoint=ckpt, divergence_ratio=1e8, **kw)


def test_a_non_finite_loss_is_named_as_the_reason():
    data = _data()
    data.x_train[5, 3] = float("inf")
    res = train(_model(), data, epochs=2, batch_size=32, seed=0, device="cpu")
    assert res.diverged_epoch == 0 and res.diverged_reason == "non-finite training loss"


def test_cli_train_marks_a_blown_up_run_diverged(tmp_path, capsys):
    """`prealign train --set optimizer=sgd --set lr=...`: a run whose loss explodes (but stays
    finite) is stored and printed as diverged, with the reason, its epochs kept."""
    from prealign.cli import main
    from prealign.run.store import Store

    (tmp_path / "run.toml").write_text('method = "fa"\nhidden = [100, 100]\nepochs = 4\ndataset = "digits"\n'
                                       'grad_alignment = false\n')
    code = main(["--quiet", "train", "--config", str(tmp_path / "run.toml"), "--set", "optimizer=sgd",
                 "--set", "lr=1000", "--out", str(tmp_path / "st")])
    out = capsys.readouterr().out
    assert code == 0 and "— diverged at epoch" in out and "epoch-0 training loss" in out, out
    store = Store(tmp_path / "st", read_only=True)
    [row] = store.runs()
    result = store.result(row["id"])
    assert row["status"] == "diverged" and result.diverged_reason and "training loss" in result.diverged_reason
    records = store.epochs(row["id"])
    assert len(records) == result.diverged_epoch + 1 and all(math.isfinite(r["train_loss"]) for r in records)


def test_patience_stops_and_reports_best():
    data = _data()

    class Freeze:  # after epoch 2 test accuracy is forced down: no improvement from then on
        def on_epoch_end(self, epoch, model, data, record):
            if epoch >= 3:
                record["test_acc"] = 0.0

    res = train(_model(), data, epochs=50, batch_size=32, lr=1e-2, seed=0, device="cpu", patience=2,
                callbacks=[Freeze()], grad_alignment=False)
    accs = [r["test_acc"] for r in res.curves]
    assert res.stopped_early and res.epochs_run == 4
    assert res.best_test_acc == max(accs) and accs[res.best_epoch] == max(accs)


def test_callbacks_see_every_step_and_epoch():
    data = _data(n_train=100)
    seen = {"steps": [], "epochs": []}

    class Spy:
        def on_step_end(self, step, model):
            seen["steps"].append(step)

        def on_epoch_end(self, epoch, model, data, record):
            seen["epochs"].append(epoch)
            record["extra"] = 1.0

    res = train(_model(), data, epochs=2, batch_size=32, seed=0, device="cpu", callbacks=[Spy()])
    assert seen["steps"] == list(range(1, 9)) and seen["epochs"] == [0, 1, 2]
    assert all(r["extra"] == 1.0 for r in res.curves)


def test_resume_after_interrupt_gives_identical_result(tmp_path):
    data = _data()
    full = train(_model("kp"), data, epochs=6, batch_size=32, lr=1e-2, weight_decay=1e-3, seed=4, device="cpu")

    class Boom:
        def on_epoch_end(self, epoch, model, data, record):
            if epoch == 3:
                raise KeyboardInterrupt

    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(_model("kp"), data, epochs=6, batch_size=32, lr=1e-2, weight_decay=1e-3, seed=4, device="cpu",
              checkpoint=ckpt, callbacks=[Boom()])
    assert read_checkpoint(ckpt)["epoch"] == 2
    other = _model("kp", seed=99)  # weights come from the checkpoint, not from this init
    resumed = train(other, data, epochs=6, batch_size=32, lr=1e-2, weight_decay=1e-3, seed=4, device="cpu",
                    checkpoint=ckpt)
    assert _metrics(resumed.curves) == _metrics(full.curves)
    assert resumed.best_test_acc == full.best_test_acc and resumed.best_epoch == full.best_epoch


def test_kp_decay_is_its_own_setting():
    """kp_decay is explicit (not lr·weight_decay); given for a model without kp layers it is an error."""
    model = _model("kp")
    train(model, _data(n_train=32), epochs=1, batch_size=32, lr=0.01, weight_decay=0.5, seed=0, device="cpu")
    assert all(layer.kp_decay == pa.feedback.KP_DECAY for _, layer in pa.feedback_layers(model))
    train(model, _data(n_train=32), epochs=1, batch_size=32, lr=0.01, seed=0, device="cpu", kp_decay=0.25)
    assert all(layer.kp_decay == 0.25 for _, layer in pa.feedback_layers(model))
    with pytest.raises(pa.ConfigError, match="kp_decay"):
        train(_model("fa"), _data(n_train=32), epochs=1, batch_size=32, seed=0, device="cpu", kp_decay=0.1)


def test_evaluate_batches_agree_with_one_pass():
    data = _data()
    model = _model()
    assert evaluate(model, data.x_test, data.y_test, 7) == pytest.approx(evaluate(model, data.x_test, data.y_test, 10_000))


def test_result_round_trip():
    res = train(_model(), _data(n_train=64), epochs=1, seed=0, device="cpu")
    back = TrainResult.from_dict(res.to_dict())
    assert back.curves == res.curves and back.best_test_acc == res.best_test_acc and back.status == "finished"


def test_ready_made_callbacks_add_their_keys():
    from prealign.run.callbacks import EpochFunction, MatrixAngles, WeightDistance

    model = _model()
    res = train(model, _data(n_train=64), epochs=1, seed=0, device="cpu", grad_alignment=False,
                callbacks=[MatrixAngles(), WeightDistance(), EpochFunction("n_test", lambda m, d: len(d.y_test))])
    last = res.curves[-1]
    layer = model[3]
    assert last["w_minus_b/3"] == pytest.approx(float((layer.weight - layer.feedback).detach().norm()), rel=1e-6)
    assert last["angle_matrix/3"] == pytest.approx(pa.alignment_angles(model, reduce="matrix")["3"])
    assert last["n_test"] == 128


# -- validation split (#12) --------------------------------------------------------------------
def test_val_fraction_holds_out_the_fixed_split_and_records_it():
    from prealign.data import holdout_validation

    data = _data()
    held = holdout_validation(data, 0.25)
    kw = dict(epochs=2, batch_size=32, lr=1e-2, seed=0, device="cpu", progress=False)
    a = train(_model(), data, val_fraction=0.25, **kw)
    b = train(_model(), held, **kw)  # data that already carries x_val: the same run
    assert _metrics(a.curves) == _metrics(b.curves) and a.selection == b.selection == "val"
    assert len(held.x_train) == 192 and len(held.x_val) == 64
    assert (a.curves[0]["val_loss"], a.curves[0]["val_acc"]) == evaluate(_model(), held.x_val, held.y_val)
    assert (a.curves[0]["train_loss"], a.curves[0]["train_acc"]) == evaluate(_model(), held.x_train, held.y_train)
    plain = train(_model(), data, **kw)
    assert plain.selection == "test" and math.isnan(plain.best_val_acc) and "val_acc" not in plain.curves[-1]


def test_validation_selects_and_stops_on_validation_not_test():
    class Freeze:  # from epoch 3 on, validation gets worse while the test accuracy looks perfect
        def on_epoch_end(self, epoch, model, data, record):
            if epoch >= 3:
                record["val_acc"], record["test_acc"] = 0.0, 1.0

    res = train(_model(), _data(), epochs=50, batch_size=32, lr=1e-2, seed=0, device="cpu", patience=2,
                callbacks=[Freeze()], grad_alignment=False, val_fraction=0.25, progress=False)
    vals = [r["val_acc"] for r in res.curves]
    assert res.selection == "val" and res.stopped_early and res.epochs_run == 4
    assert res.best_epoch == vals.index(max(vals)) and res.best_val_acc == max(vals)
    assert res.best_test_acc == res.curves[res.best_epoch]["test_acc"] < 1.0
    assert TrainResult.from_dict(res.to_dict()).selection == "val"
    assert TrainResult.from_dict(res.to_dict()).best_val_acc == res.best_val_acc


def test_resume_with_validation_keeps_selection(tmp_path):
    data = _data()
    kw = dict(epochs=5, batch_size=32, lr=1e-2, seed=4, device="cpu", val_fraction=0.25, patience=3, progress=False)
    full = train(_model(), data, **kw)

    class Boom:
        def on_epoch_end(self, epoch, model, data, record):
            if epoch == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_model(), data, checkpoint=tmp_path / "ck.pt", callbacks=[Boom()], **kw)
    resumed = train(_model(), data, checkpoint=tmp_path / "ck.pt", **kw)
    assert _metrics(resumed.curves) == _metrics(full.curves)
    assert (resumed.best_epoch, resumed.best_val_acc, resumed.best_test_acc, resumed.selection) == \
        (full.best_epoch, full.best_val_acc, full.best_test_acc, "val")
