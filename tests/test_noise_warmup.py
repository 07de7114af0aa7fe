"""Noise warm-up for any method (issue 17; Cheon & Paik, arXiv 2412.17411): ``noise_samples`` on bp,
dfa, kp, ifa ... really pretrains on noise before data, is labelled ``bp+noise``, changes the run key;
a noise setting that cannot apply is an error; the shipped experiments keep their meaning."""
from __future__ import annotations

import pytest
import torch

from prealign import experiments
from prealign.cli import main as cli_main
from prealign.errors import ConfigError
from prealign.init import align
from prealign.methods import get_method
from prealign.pretrain import pretrain_noise
from prealign.run.config import RunConfig, _seed_for, build, load_data, prepare, run
from prealign.run.store import Store
from prealign.run.sweep import run_sweep
from prealign.run.trainer import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(method="bp", **kw) -> RunConfig:
    base = {"method": method, "dataset": "digits", "train_subset": 128, "hidden": [16], "epochs": 1, "batch_size": 32,
            "lr": 1e-2, "seed": 3, "device": "cpu", "val_fraction": 0.0}
    return RunConfig.from_dict({**base, **kw})


def weights(model) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def test_bp_with_noise_samples_is_noise_pretrained_exactly_as_a_manual_pretrain_noise_call():
    cfg = tiny("bp", noise_samples=320)
    assert cfg.method == "bp" and cfg.label == "bp+noise" and cfg.noise_samples == 320
    data = load_data(cfg)
    warmed, _, _ = prepare(cfg, data)
    plain, _, _ = prepare(tiny("bp"), data)
    assert any(not torch.equal(a, b) for a, b in zip(weights(warmed), weights(plain)))
    # the same network by hand: the seed's initial draw, then pretrain_noise from the preparation seed
    manual = build(cfg, data)
    assert all(torch.equal(a, b) for a, b in zip(weights(manual), weights(plain)))  # same initial network
    pretrain_noise(manual, 320, generator=torch.Generator().manual_seed(_seed_for(3, "bp+noise", "prepare")), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(weights(warmed), weights(manual)))
    # through run(): epoch 0 of the curves is the warmed-up network
    result = run(tiny("bp", noise_samples=320, epochs=0), progress=False)
    assert result.curves[0]["test_loss"] == pytest.approx(evaluate(manual, data.x_test, data.y_test)[0], abs=1e-12)
    assert result.noise_seconds > 0


@pytest.mark.parametrize("method", ["bp+noise", "dfa+noise", "kp+noise", "usf+noise", "ifa@30+noise"])
def test_every_method_takes_noise_warm_up_after_its_own_preparation(method):
    cfg = tiny(method, noise_samples=128)
    base = method.removesuffix("+noise")
    assert cfg.label == method and RunConfig.from_dict(cfg.to_dict()).label == method  # round trip keeps it
    data = load_data(cfg)
    warmed, _, _ = prepare(cfg, data)
    manual = build(cfg, data)
    gen = torch.Generator().manual_seed(_seed_for(3, method, "prepare"))
    m = get_method(base)
    if m.angle is not None:  # IFA: the one-time alignment first, then the noise warm-up (methods.py docstring)
        align(manual, m.angle, generator=gen)
    pretrain_noise(manual, 128, generator=gen, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(weights(warmed), weights(manual)))
    unwarmed, _, _ = prepare(tiny(base), data)
    assert any(not torch.equal(a, b) for a, b in zip(weights(warmed), weights(unwarmed)))


def test_run_keys_and_labels():
    assert tiny("bp").key() != tiny("bp", noise_samples=320).key() == tiny("bp+noise", noise_samples=320).key()
    assert tiny("bp+noise").noise_samples == 500_000
    assert tiny("fa", noise_samples=64).method == "rnp" and tiny("fa+noise", noise_samples=64).label == "rnp"
    assert tiny("rnp", noise_samples=64).label == "rnp"
    # keys of plain configs are those of the code before noise warm-up (computed there); since run keys see the
    # network (issue 24) that formula is config_key(), which the store keeps beside each run's key
    assert RunConfig(method="bp", dataset="digits", hidden=(16,)).config_key() == "756c1e3bd1bcc245"
    assert RunConfig(method="rnp", dataset="digits", noise_samples=1024).config_key() == "290263b31e56d14c"
    assert RunConfig(method="ifa@30", dataset="digits").config_key() == "1023e8b9b6788a80"


@pytest.mark.parametrize("kw, words", [
    ({"method": "bp", "noise_lr": 1e-3}, "noise_lr"),
    ({"method": "fa", "noise_std": 0.5}, "noise_std"),
    ({"method": "ifa", "noise_distribution": "uniform"}, "noise_distribution"),
    ({"method": "rnp", "noise_samples": 0, "noise_batch_size": 32}, "noise_batch_size"),
    ({"method": "bp+noise", "noise_samples": 0}, "noise_samples = 0"),
    ({"method": "rnp+noise"}, "already pretrains"),
    ({"method": "bp", "angle": 30}, "angle"),
])
def test_a_noise_setting_that_cannot_apply_is_an_error(kw, words):
    with pytest.raises(ConfigError, match=words) as err:
        RunConfig(**kw)
    assert "\n" not in str(err.value)


def test_cli_rejects_an_inapplicable_noise_setting(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('method = "bp"\ndataset = "digits"\nepochs = 0\n')
    code = cli_main(["train", "--config", str(cfg), "--set", "noise_std=2", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "noise_std" in err and len(err.splitlines()) == 1


def test_shipped_experiments_keep_bp_fa_ifa_noise_free():
    """A [base] noise budget is for rnp only: bp/fa/ifa points of every experiment of the two papers
    have no noise (rnp_uncertainty, of the follow-up, asks for warm-up in its grid)."""
    seen = 0
    for exp in experiments.load_all():
        if exp.paper["paper"] not in ("ifa", "rnp"):
            continue
        for budget in experiments.BUDGETS:
            for p in exp.points(budget):
                cfg = RunConfig.from_dict(p["config"])
                assert "+noise" not in cfg.label, (exp.name, budget, p)
                if cfg.method != "rnp":
                    assert cfg.noise_samples == 0, (exp.name, budget, p)
                    seen += 1
    assert seen > 100


def test_experiment_base_noise_budget_applies_to_warm_up_methods_only():
    exp = experiments.parse("""
[paper]
paper = "rnp"
ref = "x"
title = "t"
[base]
dataset = "digits"
noise_samples = 256
noise_lr = 1e-3
[grid]
method = ["bp", "bp+noise", "fa", "rnp", "ifa@30+noise"]
[budget.smoke]
[budget.quick]
[budget.paper]
""")
    configs = {p["axes"]["method"]: RunConfig.from_dict(p["config"]) for p in exp.points("smoke")}
    assert {k: (c.label, c.noise_samples, c.noise_lr) for k, c in configs.items()} == {
        "bp": ("bp", 0, 1e-4), "bp+noise": ("bp+noise", 256, 1e-3), "fa": ("fa", 0, 1e-4),
        "rnp": ("rnp", 256, 1e-3), "ifa@30+noise": ("ifa@30+noise", 256, 1e-3)}
    assert experiments.method_label(configs["bp+noise"].to_dict()) == "bp+noise"


def test_compare_noise_samples_is_the_budget_of_noise_methods_only():
    from prealign.cli import build_parser
    from prealign.cli.compare import build_configs

    args = build_parser().parse_args(["compare", "--methods", "bp,fa,rnp,bp+noise", "--hidden", "16", "--dataset", "digits",
                                      "--epochs", "1", "--batch-size", "32", "--lr", "1e-3", "--noise-samples", "1000",
                                      "--seeds", "1", "--device", "cpu"])
    got = {c.label: c.noise_samples for c in build_configs(args)}
    assert got == {"bp": 0, "fa": 0, "rnp": 1000, "bp+noise": 1000}


def test_batched_sweep_warms_up_bp_as_a_lone_run(tmp_path):
    configs = [tiny("bp", noise_samples=160, seed=s) for s in (0, 1)] + [tiny("rnp", noise_samples=160)]
    lone, batched = Store(tmp_path / "lone"), Store(tmp_path / "batched")
    assert all(o.status == "finished" for o in run_sweep(configs, lone, workers=1, progress=False, batch_models=False))
    assert all(o.status == "finished" for o in run_sweep(configs, batched, workers=1, progress=False, batch_models=3))
    for cfg in configs:
        a, b = (s.result(s.find(cfg.key())["id"]) for s in (lone, batched))
        assert [r["test_loss"] for r in a.curves] == [r["test_loss"] for r in b.curves]
