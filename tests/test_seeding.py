"""``seed=`` alone fixes a run (issue 24): dropout, brsf's magnitudes, wm's noise, noise pretraining
and a loader's shuffling draw from streams of the seed, whatever the caller did to torch's global
RNG before, and the caller's global RNG is exactly as it was after the call — through
``pa.train``, ``pa.pretrain_noise``, a RunConfig run, and a resume after an interruption."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prealign as pa
from prealign.run.config import RunConfig, run
from prealign.run.store import Store
from prealign.run.trainer import TensorData, read_checkpoint, train

D, K = 12, 3
CASES = ("dropout", "brsf", "wm-gaussian")


def dropout_net(input_shape, num_classes):
    """A user factory (import path "test_seeding:dropout_net") with a Dropout layer."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), 24), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(24, num_classes))


def _data() -> TensorData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, D, generator=g)
    y = (x @ torch.randn(D, K, generator=g)).argmax(1)
    return TensorData(x[:128], y[:128], x[128:], y[128:], K)


def _model(case: str) -> nn.Module:
    """The same network every time (nn.Linear draws its W from the global RNG: seeded here, as a user would)."""
    gen = torch.Generator().manual_seed(1)
    if case == "dropout":
        torch.manual_seed(1)
        return pa.convert(dropout_net((D,), K), "fa", generator=gen)
    return pa.mlp([D, 16, 16, K], rule=case.split("-")[0], generator=gen)


def _train_kw(case: str, **extra) -> dict:
    wm = {"wm": {"noise": "gaussian"}} if case == "wm-gaussian" else {}
    return {"epochs": 2, "batch_size": 32, "lr": 1e-2, "seed": 0, "device": "cpu", "progress": False,
            "grad_alignment": False, **wm, **extra}


def _weights(model) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in model.state_dict().values() if t.is_floating_point()])


def _metrics(curves):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in curves]


def _after(global_seed: int, fn):
    """``fn()`` after ``torch.manual_seed(global_seed)``; asserts the caller's global RNG is untouched
    (the next draw is the one it would have been without the call). Returns what ``fn`` returned."""
    torch.manual_seed(global_seed)
    out = fn()
    drawn = torch.rand(4)
    torch.manual_seed(global_seed)
    assert torch.equal(drawn, torch.rand(4)), "the call moved the caller's global RNG"
    return out


class _Interrupt:
    def __init__(self, at: int):
        self.at = at

    def on_epoch_end(self, epoch, model, data, record):
        if epoch == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("case", CASES)
def test_train_seed_fixes_the_weights_whatever_the_global_rng(case):
    """Global RNG at 0 or at 999 before pa.train(seed=0): the same weights, bitwise (they differed
    by 0.34 / 4.8e-3 / 1.6e-2); another seed gives other weights, so the run does draw."""
    def trained(global_seed, seed=0):
        model = _model(case)
        _after(global_seed, lambda: train(model, _data(), **_train_kw(case, seed=seed)))
        return _weights(model)

    a = trained(0)
    assert torch.equal(a, trained(999))
    assert not torch.equal(a, trained(0, seed=1))


@pytest.mark.parametrize("case", CASES)
def test_train_resumes_bitwise_whatever_the_global_rng(case, tmp_path):
    """Interrupted after epoch 1 (global RNG at 999), resumed (global RNG at 7): the weights and
    curves of an uninterrupted run (global RNG at 0). The checkpoint carries the rules' streams."""
    data = _data()
    straight, first = _model(case), _model(case)
    full = _after(0, lambda: train(straight, data, **_train_kw(case)))
    ckpt = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        _after(999, lambda: train(first, data, checkpoint=ckpt, callbacks=[_Interrupt(2)], **_train_kw(case)))
    state = read_checkpoint(ckpt)
    assert state["epoch"] == 1 and bool(state["rules_rng"]) == (case != "dropout")
    resumed_model = _model(case)
    resumed = _after(7, lambda: train(resumed_model, data, checkpoint=ckpt, **_train_kw(case)))
    assert torch.equal(_weights(resumed_model), _weights(straight))
    assert _metrics(resumed.curves) == _metrics(full.curves)


def test_grad_alignment_never_moves_a_rules_stream():
    """brsf draws its magnitudes at every forward with gradients, gradient alignment's included:
    the measurement restores the layer streams, so it leaves the training as it was."""
    with_it, without = _model("brsf"), _model("brsf")
    _after(0, lambda: train(with_it, _data(), **_train_kw("brsf", grad_alignment=True)))
    _after(0, lambda: train(without, _data(), **_train_kw("brsf", grad_alignment=False)))
    assert torch.equal(_weights(with_it), _weights(without))


def test_a_shuffling_loader_without_a_generator_follows_the_seed():
    """A DataLoader(shuffle=True) with no generator of its own draws its order from the global RNG:
    inside train() that is the run's stream, so the order depends on seed= alone."""
    data = _data()

    def trained(global_seed):
        model = _model("dropout")
        loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=32, shuffle=True)
        _after(global_seed, lambda: train(model, loader, test=[(data.x_test, data.y_test)], **_train_kw("dropout")))
        return _weights(model)

    assert torch.equal(trained(0), trained(999))


@pytest.mark.parametrize("case", ("dropout", "brsf"))
def test_pretrain_noise_generator_fixes_everything(case):
    """pa.pretrain_noise(generator=g): the noise, dropout and the rules' draws all follow g, and the
    caller's global RNG is untouched."""
    def pretrained(global_seed):
        model = _model(case)
        gen = torch.Generator().manual_seed(3)
        _after(global_seed, lambda: pa.pretrain_noise(model, 256, batch_size=32, lr=1e-2, generator=gen,
                                                      input_shape=(D,), num_classes=K))
        return _weights(model)

    assert torch.equal(pretrained(0), pretrained(999))


def _config(case: str) -> RunConfig:
    method = {"dropout": "fa", "brsf": "brsf", "wm-gaussian": "wm"}[case]
    model = {"model": "test_seeding:dropout_net"} if case == "dropout" else {"hidden": (16,)}
    return RunConfig(method=method, **model, dataset="digits", train_subset=160, epochs=2, batch_size=32, lr=1e-2,
                     device="cpu", grad_alignment=False, wm_noise="gaussian" if case == "wm-gaussian" else None)


@pytest.mark.parametrize("case", CASES + ("rnp-dropout",))
def test_runconfig_run_fixed_by_its_seed_and_resumes_bitwise(case, tmp_path):
    """`prealign train`'s path (RunConfig → build → prepare → train): the same curves whatever the
    global RNG, the caller's global RNG untouched (build used to torch.manual_seed it), and a run
    killed after epoch 1 resumes from the store to the uninterrupted curves. rnp-dropout: noise
    pretraining of a network with dropout first."""
    cfg = _config("dropout").replace(method="rnp", noise_samples=128) if case == "rnp-dropout" else _config(case)
    plain = _after(0, lambda: run(cfg, progress=False))
    assert _metrics(_after(999, lambda: run(cfg, progress=False)).curves) == _metrics(plain.curves)
    with pytest.raises(KeyboardInterrupt):
        _after(5, lambda: run(cfg, Store(tmp_path), progress=False, callbacks=[_Interrupt(2)]))
    resumed = _after(11, lambda: run(cfg, Store(tmp_path), progress=False))
    assert _metrics(resumed.curves) == _metrics(plain.curves)


def test_global_stream_gives_the_callers_rng_back_even_on_error():
    from prealign.seeding import global_stream, stream_seed

    torch.manual_seed(42)
    want = torch.get_rng_state()
    with pytest.raises(RuntimeError), global_stream(stream_seed(0, "modules")):
        first = torch.rand(3)
        raise RuntimeError
    assert torch.equal(torch.get_rng_state(), want)
    with global_stream(stream_seed(0, "modules")):
        assert torch.equal(torch.rand(3), first)  # the stream is the seed's, not the caller's
    assert stream_seed(0, "modules") != stream_seed(0, "rules") != stream_seed(1, "modules")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CASES)
def test_train_on_cuda_is_fixed_by_its_seed_and_keeps_the_global_cuda_rng(case):
    def on_both(global_seed):
        model = _model(case)
        torch.cuda.manual_seed_all(global_seed)
        cuda_before = torch.cuda.get_rng_state()
        _after(global_seed, lambda: train(model, _data(), **_train_kw(case, device="cuda")))
        assert torch.equal(torch.cuda.get_rng_state(), cuda_before)
        return _weights(model).cpu()

    assert torch.equal(on_both(0), on_both(999))
