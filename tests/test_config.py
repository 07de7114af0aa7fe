"""RunConfig: validation messages, normalisation, TOML round trip, stable keys, same initial network."""
import math

import pytest
import torch

import prealign as pa
from prealign.run.config import RunConfig, build, parse_overrides, run
from prealign.errors import ConfigError, PrealignError, UnknownNameError
from prealign.run.trainer import TensorData


def test_unknown_key_names_key_and_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"method": "fa", "learning_rate": 0.1})
    msg = str(err.value)
    assert "'learning_rate'" in msg and "valid keys:" in msg and "lr" in msg and "batch_size" in msg


@pytest.mark.parametrize("key, value, words", [
    ("epochs", -1, ["'epochs'", ">= 0"]),
    ("lr", 0, ["'lr'", "> 0"]),
    ("batch_size", "many", ["'batch_size'", "int"]),
    ("optimizer", "adagrad", ["'optimizer'", "adam", "sgd"]),
    ("hidden", [100, 0], ["'hidden'"]),
    ("patience", 0, ["'patience'"]),
    ("same_init", "maybe", ["'same_init'", "true or false"]),
    ("same_init", "yes", ["'same_init'", "true or false"]),  # issue 24: "yes" was taken for true
    ("activation", "swish", ["'activation'", "relu"]),
])
def test_bad_values_name_the_key(key, value, words):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({key: value})
    for w in words:
        assert w in str(err.value)


def test_unknown_method_lists_methods():
    with pytest.raises(UnknownNameError) as err:
        RunConfig(method="backprop")
    assert "bp" in str(err.value) and "rnp" in str(err.value)


def test_method_normalisation_and_key():
    a = RunConfig(method="ifa@30")
    b = RunConfig(method="ifa", angle=30)
    assert a.method == "ifa" and a.angle == 30.0 and a.label == "ifa@30" and a.key() == b.key()
    assert RunConfig(method="ifa").angle == 0.0 and RunConfig(method="ifa").label == "ifa"
    assert RunConfig(method="rnp").noise_samples == 500_000
    assert RunConfig(method="bp", noise_samples=None).noise_samples == 0
    with pytest.raises(ConfigError, match="angle"):
        RunConfig(method="fa", angle=10)
    # key ignores device and name, and changes with anything that changes the result
    base = RunConfig(method="fa")
    assert base.key() == RunConfig(method="fa", device="cpu", name="x").key()
    assert base.key() != RunConfig(method="fa", seed=1).key() != RunConfig(method="fa", lr=1e-3).key()
    assert len(base.key()) == 16


def test_toml_round_trip_and_overrides(tmp_path):
    cfg = RunConfig(method="rnp", noise_samples=1000, hidden=(100, 50), patience=10, lr=3e-4, same_init=False)
    path = tmp_path / "run.toml"
    path.write_text(cfg.to_toml())
    back = RunConfig.from_toml(path)
    assert back == cfg and back.key() == cfg.key()
    over = RunConfig.from_toml(path, ["lr=1e-3", "hidden=64,64", "seed=3", "patience=none"])
    assert over.lr == 1e-3 and over.hidden == (64, 64) and over.seed == 3 and over.patience is None
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="'nope'"):
        RunConfig.from_toml(path, ["nope=1"])


def test_missing_or_invalid_toml_file(tmp_path):
    with pytest.raises(PrealignError, match="not found"):
        RunConfig.from_toml(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        RunConfig.from_toml(bad)


def _tiny_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    return TensorData(x[:64], y[:64], x[64:], y[64:], num_classes=3)


def test_same_init_gives_identical_initial_network_across_methods():
    data = _tiny_data()
    nets = {m: build(RunConfig(method=m, hidden=(8,), seed=4), data) for m in ("bp", "fa", "ifa", "rnp")}
    ref = nets["bp"].state_dict()
    for m, net in nets.items():
        sd = net.state_dict()
        assert all(torch.equal(ref[k], sd[k]) for k in ref), m
    assert pa.rule_of(nets["bp"]) == "bp" and pa.rule_of(nets["rnp"]) == "fa"
    other = build(RunConfig(method="bp", hidden=(8,), seed=5), data).state_dict()
    assert not torch.equal(ref["1.weight"], other["1.weight"])
    indep = {m: build(RunConfig(method=m, hidden=(8,), seed=4, same_init=False), data).state_dict() for m in ("bp", "fa")}
    assert not torch.equal(indep["bp"]["1.weight"], indep["fa"]["1.weight"])


def test_run_applies_method_and_is_deterministic():
    data = _tiny_data()
    cfg = RunConfig(method="ifa@20", hidden=(8,), epochs=2, batch_size=16, lr=1e-3, seed=1, device="cpu")
    a, b = run(cfg, data=data), run(cfg, data=data)
    strip = lambda c: [{k: v for k, v in r.items() if "seconds" not in k} for r in c]  # noqa: E731
    assert strip(a.curves) == strip(b.curves)
    assert a.curves[0]["angle/1"] == pytest.approx(20.0, abs=1e-4) and a.curves[0]["angle/3"] == pytest.approx(20.0, abs=1e-4)
    assert a.config["method"] == "ifa" and a.config["angle"] == 20.0
    rnp = run(RunConfig(method="rnp", noise_samples=640, hidden=(8,), epochs=1, seed=1, device="cpu"), data=data)
    assert rnp.noise_seconds > 0


def test_unknown_dataset_is_one_clear_error():
    with pytest.raises(UnknownNameError) as err:
        run(RunConfig(dataset="imagenet-9000", epochs=1))
    assert "mnist5k" in str(err.value)


def test_bad_device_raises_before_any_run_is_stored(tmp_path):
    from prealign.run.store import Store

    store = Store(tmp_path)
    cfg = RunConfig(method="fa", hidden=(8,), epochs=1, batch_size=16, seed=0, device="cpu")
    for bad in ("nonsense", "cuda:7"):  # unknown; absent here (no CUDA, or fewer GPUs)
        with pytest.raises(PrealignError, match=bad):
            run(cfg.replace(device=bad), store, data=_tiny_data())
    assert store.runs() == []
    good = run(cfg, store, data=_tiny_data())  # same key: a clean, finished run
    assert [r["status"] for r in store.runs()] == ["finished"] and store.get(good.run_id)["error"] is None


def test_run_selects_on_validation_by_default_and_stores_the_selection(tmp_path):
    from prealign.run.store import Store

    store = Store(tmp_path)
    cfg = RunConfig(method="fa", hidden=(8,), epochs=2, batch_size=16, lr=1e-2, seed=0, device="cpu")
    assert cfg.val_fraction == 0.1
    res = run(cfg, store, data=_tiny_data())
    assert res.selection == "val" and math.isfinite(res.best_val_acc) and "val_acc" in res.curves[-1]
    assert store.get(res.run_id)["summary"]["selection"] == "val"
    assert store.result(res.run_id).best_val_acc == res.best_val_acc
    papers = run(cfg.replace(val_fraction=0.0), store, data=_tiny_data())
    assert papers.selection == "test" and store.get(papers.run_id)["summary"]["selection"] == "test"


def test_reproduce_experiments_keep_the_papers_protocol():
    from prealign import experiments

    for exp in experiments.load_all():
        for point in exp.points("smoke"):
            assert RunConfig.from_dict(point["config"]).val_fraction == 0.0, exp.name
