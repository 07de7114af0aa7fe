"""The model zoo: ResNet-20/56 and the ViT under every rule and method; custom models by import
path through the CLI, the store (kill and resume) and `analyze hessian`; one-line errors."""
import json

import pytest
import torch
from torch import nn

import prealign as pa
from prealign.cli import main
from prealign.errors import ConfigError, PrealignError
from prealign.feedback import feedback_layers
from prealign.models import MODELS, build_model, register_model
from prealign.models.resnet import resnet20_factory, resnet56_factory
from prealign.run.config import RunConfig, build, prepare, run
from prealign.run.store import Store
from prealign.run.trainer import TensorData

CIFAR = (3, 32, 32)
METHODS = ["bp", "fa", "dfa", "usf", "kp", "ifa", "rnp"]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def cifar_like():
    """CIFAR-shaped random data: 64 training and 32 test images of 3×32×32, 10 classes."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, *CIFAR, generator=g), torch.randint(0, 10, (96,), generator=g)
    return TensorData(x[:64], y[:64], x[64:], y[64:], num_classes=10)


def test_resnet_parameter_counts_match_the_paper():
    """He et al. 2016 Table 6: ResNet-20 0.27M, ResNet-56 0.85M parameters (option-A shortcuts, CIFAR-10)."""
    n20, n56 = _count(resnet20_factory(CIFAR, 10)), _count(resnet56_factory(CIFAR, 10))
    assert round(n20 / 1e6, 2) == 0.27 and round(n56 / 1e6, 2) == 0.85
    # 6n+2 weight layers: 6n+1 convolutions and the classifier
    assert len(feedback_layers(build_model("resnet20", CIFAR, 10))) == 20
    assert len(feedback_layers(build_model("resnet56", CIFAR, 10))) == 56


@pytest.mark.parametrize("name", ["resnet20", "vit"])
def test_align_and_noise_pretraining_work_on_the_zoo(name, one_thread):
    model = build_model(name, CIFAR, 10, rule="fa", generator=torch.Generator().manual_seed(0))
    pa.align(model, 30.0)
    angles = pa.alignment_angles(model)
    assert len(angles) == len(feedback_layers(model)) and all(abs(a - 30.0) < 1e-3 for a in angles.values())
    before = [p.detach().clone() for p in model.parameters()]
    result = pa.pretrain_noise(model, 64, batch_size=32, generator=torch.Generator().manual_seed(1))
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["resnet20", "vit"])
def test_zoo_trains_under_every_method(name, method, cifar_like, one_thread):
    """Every Linear/Conv follows the method's rule, and 2 epochs change every parameter (the error
    reaches every layer, DFA's through the residual connections included) with a finite loss."""
    noise = {"noise_samples": 64, "noise_batch_size": 32} if method == "rnp" else {}  # on bp it would be a warm-up
    cfg = RunConfig(method=method, model=name, epochs=2, batch_size=32, lr=1e-3, val_fraction=0, **noise)
    initial = build(cfg, cifar_like)
    model, _, _ = prepare(cfg, cifar_like)
    rule = cfg.method_object().rule
    layers = feedback_layers(model)
    n_weights = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    assert len(layers) == n_weights and {layer.rule for _, layer in layers} == {rule}
    if method == "ifa":
        assert max(pa.alignment_angles(model).values()) < 1e-3
    moved = {n: not torch.equal(a, b) for (n, a), b in zip(initial.named_parameters(), model.parameters())}
    aligned = {n for n, _ in initial.named_parameters() if n.rsplit(".", 1)[0] in dict(layers) and n.endswith("weight")}
    expected = {"rnp": set(moved), "ifa": aligned}.get(method, set())  # RNP trains on noise, IFA aligns the weights
    assert {n for n, m in moved.items() if m} == expected
    before = [p.detach().clone() for p in model.parameters()]
    feedback = [layer.feedback.clone() for _, layer in layers]
    result = pa.train(model, cifar_like, epochs=2, batch_size=32, lr=1e-3, device="cpu", grad_alignment=False)
    assert not result.diverged and result.epochs_run == 2
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.curves)
    unchanged = [n for (n, p), b in zip(model.named_parameters(), before) if torch.equal(p, b)]
    assert unchanged == []
    b_moved = [not torch.equal(b, layer.feedback) for b, (_, layer) in zip(feedback, layers)]
    assert all(b_moved) if method == "kp" else not any(b_moved)  # only KP's feedback learns


# -- custom models by import path -------------------------------------------------------------------
def _cli(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_custom_model_through_train_compare_store_and_hessian(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('model = "custom_nets:build"\nmethod = "fa"\ndataset = "digits"\ntrain_subset = 128\n'
                   'epochs = 1\nbatch_size = 32\nlr = 1e-3\n')
    code, out, err = _cli(capsys, ["--quiet", "train", "--config", str(cfg), "--out", str(tmp_path), "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["status"] == "finished" and res["config"]["model"] == "custom_nets:build"
    store = Store(tmp_path)
    (row,) = store.runs()
    assert row["key"] == RunConfig.from_toml(str(cfg)).key()  # the key names the factory's import path
    model = store.load_model(row["id"])
    assert isinstance(model[0], pa.FeedbackConv2d) and model[0].rule == "fa" and model.input_shape == (1, 8, 8)
    store.close()
    code, out, err = _cli(capsys, ["analyze", "hessian", str(row["id"]), "--out", str(tmp_path), "--samples", "32",
                                   "--probes", "2", "--density-probes", "1", "--lanczos-steps", "4"])
    assert code == 0, err
    code, out, err = _cli(capsys, ["--quiet", "compare", "--model", "custom_nets:build", "--dataset", "digits",
                                   "--methods", "bp,fa", "--seeds", "1", "--epochs", "1", "--workers", "1",
                                   "--out", str(tmp_path), "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert [m["method"] for m in summary["methods"]] == ["bp", "fa"] and summary["settings"]["model"] == "custom_nets:build"
    assert sorted(r["config"]["model"] for r in Store(tmp_path).runs()) == ["custom_nets:build"] * 3


def test_custom_model_resumes_after_a_kill(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 6, 6, generator=g)
    data = TensorData(x[:64], x[:64].flatten(1)[:, :3].argmax(1), x[64:], x[64:].flatten(1)[:, :3].argmax(1), num_classes=3)
    cfg = RunConfig(method="rnp", model="custom_nets:build", noise_samples=64, epochs=4, batch_size=16, lr=1e-2,
                    val_fraction=0, device="cpu")
    plain = run(cfg, data=data)

    class Kill:
        def on_epoch_end(self, epoch, model, data, record):
            if epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, Store(tmp_path), data=data, callbacks=[Kill()])
    resumed = run(cfg, Store(tmp_path), data=data)
    strip = lambda curves: [{k: v for k, v in r.items() if "seconds" not in k} for r in curves]  # noqa: E731
    assert strip(resumed.curves) == strip(plain.curves) and len(Store(tmp_path).runs()) == 1


def test_factory_options_and_registration(tmp_path):
    wide = build_model("custom_nets:wide", (1, 4, 4), 3, hidden=(7, 5), activation="tanh")
    assert [m.out_features for m in wide if isinstance(m, nn.Linear)] == [7, 5, 3]
    assert isinstance(wide[2], nn.Tanh) and isinstance(wide[1], pa.FeedbackLinear)
    with pytest.raises(ConfigError, match="takes no option 'hidden'"):  # an import path's options are checked
        RunConfig(model="custom_nets:build", hidden=(32,)).key()  # when it is built (a config alone imports nothing)
    with pytest.raises(ConfigError, match="takes no option 'activation'"):
        RunConfig(model="resnet20", activation="tanh")
    assert RunConfig(model="custom_nets:build").key() != RunConfig(model="custom_nets:wide").key()

    @register_model("tiny_for_test")
    def tiny(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(16, num_classes))

    try:
        assert MODELS["tiny_for_test"] is tiny
        model = build(RunConfig(model="tiny_for_test", method="dfa"), TensorData(torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.long),
                                                                                   torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), 3))
        assert model[1].rule == "dfa" and model.num_classes == 3
    finally:
        del MODELS["tiny_for_test"]
    with pytest.raises(ConfigError, match="without ':'"):
        register_model("pkg:thing", tiny)


@pytest.mark.parametrize("model, words", [
    ("resnet", ["unknown model 'resnet'", "valid models: mlp, lenet, alexnet, resnet20, resnet56, vit", "import path"]),
    ("no_such_pkg_xyz.nets:build", ["module 'no_such_pkg_xyz.nets' cannot be imported", "ModuleNotFoundError", "PYTHONPATH"]),
    ("custom_nets:nope", ["module 'custom_nets' has no attribute 'nope'"]),
    ("custom_nets:NOT_CALLABLE", ["is a int, not a callable factory"]),
    ("custom_nets:not_a_module", ["returned a dict, not an nn.Module"]),
    ("custom_nets:recurrent", ["cannot convert", "lstm (LSTM)"]),
    (":build", ["must read 'package.module:function'"]),
])
def test_bad_model_is_one_line_exit_2(tmp_path, capsys, model, words):
    cfg = tmp_path / "run.toml"
    cfg.write_text('dataset = "digits"\nepochs = 1\n')
    code, _, err = _cli(capsys, ["train", "--config", str(cfg), "--set", f"model={model}", "--out", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err
    assert not (tmp_path / "runs.sqlite").exists() or not Store(tmp_path).runs()  # nothing stored


def test_strict_conversion_of_a_custom_model_names_the_layer():
    with pytest.raises(PrealignError, match=r"lstm \(LSTM\)"):
        build_model("custom_nets:recurrent", (1, 4, 4), 3, rule="fa")


def test_bench_zoo_rows_compare_fa_and_dfa_with_bp(one_thread):
    from prealign import bench

    rows = bench.bench_zoo(torch.device("cpu"), quick=True)
    assert [r.key for r in rows] == ["zoo/resnet20/fa", "zoo/resnet20/dfa", "zoo/vit/fa", "zoo/vit/dfa"]
    for r in rows:  # the ratio is the median paired ratio of the rule's and BP's times (timings themselves are noise)
        assert r.ratio > 0 and r.reps == 3 and r.details["bp_ms_per_step"] > 0 and r.target == "<= 1.05"
    assert "zoo" in bench.ROWS


def test_custom_model_in_a_reproduce_experiment(tmp_path, capsys):
    exp = tmp_path / "my_exp.toml"
    exp.write_text('''[paper]
paper = "ifa"
ref = "custom"
title = "A custom network by import path"
caption = "BP and FA on a user CNN."
data = ["digits"]

[base]
dataset = "digits"
model = "custom_nets:build"
epochs = 1
train_subset = 128

[grid]
method = ["bp", "fa"]
seed = [0]

[budget.smoke]

[budget.quick]

[budget.paper]

[[output]]
kind = "table"
panel = "T"
metric = "best_test_acc"
''')
    code, out, err = _cli(capsys, ["--quiet", "reproduce", str(exp), "--budget", "smoke", "--workers", "1",
                                   "--out", str(tmp_path / "out")])
    assert code == 0, err
    runs = Store(tmp_path / "out" / "store").runs()
    assert len(runs) == 2 and {r["config"]["model"] for r in runs} == {"custom_nets:build"}
    assert all(r["status"] == "finished" for r in runs)


@pytest.mark.parametrize("name", ["resnet20", "vit"])
def test_fa_with_feedback_equal_to_weights_is_backprop_on_the_zoo(name, one_thread):
    """With B = W, FA's gradients are autograd's in every layer (attention's 3-D projections, strided
    convolutions, BatchNorm and residual paths included); with B independent they differ."""
    g = torch.Generator().manual_seed(0)
    model = build_model(name, CIFAR, 10, rule="fa", generator=g).double()
    x, y = torch.rand(4, *CIFAR, generator=g, dtype=torch.float64), torch.tensor([0, 3, 7, 9])

    def grads():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return [p.grad.clone() for p in model.parameters()]

    with pa.exact_gradients(model):
        exact = grads()
    random_b = grads()
    assert not torch.allclose(random_b[0], exact[0])  # the first layer's weight gradient depends on B above it
    with torch.no_grad():
        for _, layer in feedback_layers(model):
            layer.feedback.copy_(layer.weight)
    for got, want in zip(grads(), exact):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
