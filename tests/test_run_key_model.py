"""The run key sees the model (issue 24): a network built from a replaced name or an edited factory is a
new run, never a stored result of another network; replacing a registered name needs replace=True;
runs stored before keys saw the network are reported, not served; key() leaves torch's RNG alone."""
from __future__ import annotations

import importlib
import shutil
import sys
import warnings

import pytest
import torch
from torch import nn

from prealign.cli import main
from prealign.errors import ConfigError, PrealignWarning
from prealign.models import MODELS, register_model
from prealign.models.fingerprint import difference, fingerprint, layout
from prealign.run.config import RunConfig, build, load_data, run
from prealign.run.store import Store

TINY = dict(method="fa", dataset="digits", hidden=(8,), epochs=1, train_subset=64, batch_size=32, lr=1e-2,
            val_fraction=0.0, device="cpu")


def _other_mlp(input_shape, num_classes, hidden=(100,), activation="relu"):
    """Not the built-in mlp: one more hidden layer of 4 (what a user's `register_model("mlp")(f)` might do)."""
    n = int(torch.tensor(input_shape).prod())
    return nn.Sequential(nn.Flatten(), nn.Linear(n, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], 4), nn.ReLU(),
                         nn.Linear(4, num_classes))


@pytest.fixture
def restore_mlp():
    builtin = MODELS["mlp"]
    yield
    MODELS["mlp"] = builtin


def test_replacing_a_registered_name_needs_replace_and_trains_anew(tmp_path, restore_mlp):
    cfg = RunConfig(**TINY)
    store = Store(tmp_path)
    old = run(cfg, store, progress=False)
    with pytest.raises(ConfigError, match=r"model name 'mlp' is taken by prealign\.models\.classic\.mlp_factory.*"
                                          r"replace=True"):
        register_model("mlp", _other_mlp)
    assert MODELS["mlp"] is not _other_mlp  # refused: nothing replaced
    register_model("mlp", _other_mlp, replace=True)
    assert cfg.key() != old_key(old, store)
    with pytest.warns(PrealignWarning, match="trained another network"):
        new = run(cfg, store, progress=False)
    assert new.run_id != old.run_id and len(store.runs()) == 2  # trained, not served from the store
    fresh = run(cfg, Store(tmp_path / "fresh"), progress=False)
    assert new.curves[-1]["test_acc"] == fresh.curves[-1]["test_acc"]  # what a fresh store gives for the new network
    assert run(cfg, store, progress=False).run_id == new.run_id  # and now it is served, as any stored run


def old_key(result, store) -> str:
    return store.get(result.run_id)["key"]


def test_registering_the_same_definition_again_needs_no_replace():
    def net(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    try:
        register_model("again_for_test", net)
        first = MODELS["again_for_test"]

        def net(input_shape, num_classes):  # noqa: F811 - a re-run notebook cell: same module and qualname
            return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

        register_model("again_for_test", net)
        assert MODELS["again_for_test"] is net is not first
    finally:
        MODELS.pop("again_for_test", None)


NET_V1 = '''
from torch import nn
def build(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, num_classes))
'''


def _edit(path, text, name):
    path.write_text(text)
    shutil.rmtree(path.parent / "__pycache__", ignore_errors=True)  # an edit within the same second and of the
    # same size would otherwise be served from the bytecode cache (it checks mtime in seconds and size)
    sys.modules.pop(name, None)  # what a new process (the user re-running) sees
    importlib.invalidate_caches()


@pytest.mark.parametrize("edit", [
    NET_V1.replace("nn.Linear(64, 8), nn.ReLU(), nn.Linear(8,", "nn.Linear(64, 6), nn.ReLU(), nn.Linear(6,"),  # width
    NET_V1.replace("nn.ReLU()", "nn.Tanh()"),  # no parameter changes: the architecture still differs
    NET_V1.replace("    return nn.Sequential(", "    import torch\n    net = nn.Sequential(") +  # same layout, init differs
    "    net.register_buffer('scale', torch.full((1,), 2.0))\n    return net\n",
])
def test_an_edited_factory_behind_an_import_path_is_a_new_run(tmp_path, monkeypatch, capsys, edit):
    name = f"edited_nets_{abs(hash(edit)) % 10**8}"
    monkeypatch.syspath_prepend(str(tmp_path))
    _edit(tmp_path / f"{name}.py", NET_V1, name)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'model = "{name}:build"\nmethod = "fa"\ndataset = "digits"\nepochs = 1\ntrain_subset = 64\n'
                   'batch_size = 32\nlr = 0.01\nval_fraction = 0.0\ndevice = "cpu"\n')
    assert main(["--quiet", "train", "--config", str(cfg), "--out", str(tmp_path / "st"), "--json"]) == 0
    before = RunConfig.from_toml(str(cfg)).key()
    _edit(tmp_path / f"{name}.py", edit, name)
    assert RunConfig.from_toml(str(cfg)).key() != before
    capsys.readouterr()
    assert main(["--quiet", "train", "--config", str(cfg), "--out", str(tmp_path / "st"), "--json"]) == 0
    err = capsys.readouterr().err
    assert "prealign: warning:" in err and "trained another network" in err, err
    rows = Store(tmp_path / "st").runs()
    assert len(rows) == 2 and rows[0]["config_key"] == rows[1]["config_key"] and rows[0]["key"] != rows[1]["key"]


def test_a_factory_that_is_not_deterministic_given_the_seed_is_refused():
    import random

    def noisy(input_shape, num_classes):
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
        net.register_buffer("jitter", torch.tensor([random.random()]))  # an unseeded draw
        return net

    register_model("noisy_for_test", noisy)
    try:
        cfg = RunConfig(**{**TINY, "model": "noisy_for_test", "hidden": (100,)})
        cfg.key()
        with pytest.raises(ConfigError, match="built two different networks from the same seed 0.*deterministic"):
            build(cfg, load_data(cfg))
    finally:
        MODELS.pop("noisy_for_test", None)


def test_the_key_sees_seed_rule_and_init_but_leaves_the_global_rng_alone():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    keys = {RunConfig(**{**TINY, **kw}).key() for kw in ({}, {"seed": 1}, {"method": "bp"}, {"alpha_w": 1.0})}
    assert len(keys) == 4
    assert torch.equal(torch.get_rng_state(), state)  # computing keys builds networks without touching it
    cfg = RunConfig(**TINY)
    assert cfg.model_fingerprint() == fingerprint(build(cfg, load_data(cfg)))


def test_layout_difference_names_the_layer_and_what_changed():
    a = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    b = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 10))
    text = difference(layout(a), layout(b))
    assert text.startswith("layer 1: Linear(in_features=64, out_features=8, bias=True) there, "
                           "Linear(in_features=64, out_features=6, bias=True) now"), text
    assert "more differences" in text
    assert difference(layout(a), layout(a)) == "same layout, other initial values"


def test_runs_stored_before_keys_saw_the_network_are_reported_not_served(tmp_path, capsys):
    cfg = RunConfig(**TINY)
    store = Store(tmp_path)
    legacy = run(cfg, store, progress=False)
    with store._write() as c:  # as an older prealign stored it: key = the config key, no config_key column value
        c.execute("UPDATE runs SET key = ?, config_key = NULL WHERE id = ?", (cfg.config_key(), legacy.run_id))
    grid = tmp_path / "g.toml"
    grid.write_text('[base]\ndataset = "digits"\nhidden = [8]\nepochs = 1\ntrain_subset = 64\nbatch_size = 32\n'
                    'lr = 0.01\nval_fraction = 0.0\ndevice = "cpu"\n[grid]\nmethod = ["fa"]\n')
    assert main(["sweep", str(grid), "--dry-run", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "new*" in out and "before run keys saw the network" in err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = run(cfg, store, progress=False)
    assert again.run_id != legacy.run_id  # trained anew, not served
    [w] = [w for w in caught if issubclass(w.category, PrealignWarning)]
    assert f"run(s) {legacy.run_id} of the same config were stored before run keys saw the network" in str(w.message)
    assert "prealign runs remove" in str(w.message)


def test_a_dry_run_imports_no_model_module(tmp_path, monkeypatch, capsys):
    """Someone else's grid names model modules: listing its runs runs none of their code."""
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "imported"
    (tmp_path / "marker_nets.py").write_text(f"open({str(marker)!r}, 'a').write('x')\n" + NET_V1)
    grid = tmp_path / "g.toml"
    grid.write_text('[base]\ndataset = "digits"\nmodel = "marker_nets:build"\n[grid]\nseed = [0, 1]\n')
    assert main(["sweep", str(grid), "--dry-run", "--out", str(tmp_path / "st")]) == 0
    out, err = capsys.readouterr()
    assert not marker.exists()
    assert out.count("unchecked") == 2 and "does not import the model module(s) marker_nets:build" in err


def test_listing_and_showing_runs_imports_no_model_module(tmp_path, monkeypatch, capsys):
    """A store of someone else's runs names their model modules: runs list/show/export read the names only."""
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "imported"
    (tmp_path / "listed_nets.py").write_text(f"open({str(marker)!r}, 'a').write('x')\n" + NET_V1)
    cfg = RunConfig(**{**TINY, "model": "listed_nets:build", "hidden": (100,)})
    run(cfg, Store(tmp_path / "st"), progress=False)  # training imports it, of course
    marker.unlink()
    sys.modules.pop("listed_nets")
    for argv in (["list"], ["list", "--json"], ["show", "1"], ["show", "1", "--json"],
                 ["export", "--csv", str(tmp_path / "e.csv")]):
        assert main(["runs", "--out", str(tmp_path / "st"), *argv]) == 0
    assert "listed_nets:build" in capsys.readouterr().out
    assert not marker.exists() and "listed_nets" not in sys.modules


@pytest.mark.parametrize("model", ["mlp", "resnet20", "vit"])
def test_the_key_time_build_matches_a_training_build_on_any_thread_count(model):
    """key() builds on one thread; a run (or a sweep worker) builds on its own count: the same network."""
    cfg = RunConfig(**{**TINY, "model": model, "method": "dfa", "hidden": (8,) if model == "mlp" else (100,)})
    from prealign.run.config import _NETWORKS

    _NETWORKS.clear()
    key_time = cfg.model_fingerprint()  # built on one thread
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert fingerprint(build(cfg, load_data(cfg))) == key_time  # build() would also refuse a different network
    finally:
        torch.set_num_threads(before)
