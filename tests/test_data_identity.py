"""The data set's identity (a fingerprint of its tensors) is part of every run key, so a result computed
on damaged data is never served for good data."""
import dataclasses
import time

import numpy as np
import pytest

import prealign.data as data
from prealign.cli import main
from prealign.run.config import RunConfig, run
from prealign.data import identity, sources
from prealign.data.registry import DATASETS
from prealign.run.store import Store
from test_data_checks import write_idx


# sha256 of mnist5k as loaded (float32 [0, 1], the fixed 4,000/1,000 split): run keys of stored results
# depend on it, so a change here means every stored mnist5k result would be recomputed
pytestmark = pytest.mark.usefixtures("one_thread")
MNIST5K = "d1be1b4244651c93ef53fe2ebbb85b094513f5766497d0e61e13279e8700f6cd"


@pytest.fixture(autouse=True)
def isolated(no_data_dirs, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tests must not touch the network")
    monkeypatch.setattr(sources, "_urlopen", no_network)
    monkeypatch.setitem(DATASETS, "kmnist", dataclasses.replace(DATASETS["kmnist"], sizes=(40, 12)))


def kmnist_folder(tmp_path):
    return tmp_path / "cache" / "prealign" / "kmnist"  # the user cache of the no_data_dirs fixture


def test_fingerprint_is_the_hash_of_the_tensors_a_run_sees(tmp_path):
    assert data.fingerprint("mnist5k") == MNIST5K
    np.random.seed(0)
    write_idx(kmnist_folder(tmp_path), 40, 12)
    ds = data.load("kmnist")
    whole, first = data.fingerprint("kmnist"), data.fingerprint("kmnist", 10)
    assert whole == identity.tensors_sha256(ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    sub = ds.subset(10)
    assert first == identity.tensors_sha256(sub.x_train, sub.y_train, sub.x_test, sub.y_test) != whole
    path = kmnist_folder(tmp_path) / "t10k-images-idx3-ubyte.gz"
    import gzip
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[-1] ^= 1  # one pixel of the last test image
    path.write_bytes(gzip.compress(bytes(raw)))
    assert data.fingerprint("kmnist") != whole  # same process: the cache notices the new file
    assert data.fingerprint("mnist5k", 100) != MNIST5K
    with pytest.raises(data.DataNotFoundError):
        data.fingerprint("svhn")


def test_key_changes_with_the_data_and_the_store_does_not_serve_damaged_results(tmp_path):
    folder = kmnist_folder(tmp_path)
    write_idx(folder, 40, 12)
    good = {p.name: p.read_bytes() for p in folder.iterdir()}
    labels = folder / "train-labels-idx1-ubyte.gz"
    import gzip
    raw = bytearray(gzip.decompress(good[labels.name]))
    raw[8:] = bytes(raw[8:][::-1])  # damaged: the training labels reversed (still a valid file)
    labels.write_bytes(gzip.compress(bytes(raw)))
    cfg = RunConfig(dataset="kmnist", epochs=1, hidden=(8,), batch_size=8, val_fraction=0.0, device="cpu")
    store = Store(tmp_path / "runs")
    damaged = run(cfg, store, progress=False)
    damaged_key = cfg.key()
    labels.write_bytes(good[labels.name])  # repaired
    repaired = run(cfg, store, progress=False)
    assert repaired.run_id != damaged.run_id and len(store.runs()) == 2  # trained again, not served
    assert cfg.key() != damaged_key
    fresh = run(cfg, progress=False)  # no store: what the good data gives
    losses = [[c["train_loss"] for c in r.curves] for r in (damaged, repaired, fresh)]
    assert losses[1] == losses[2] != losses[0] and repaired.best_test_acc == fresh.best_test_acc
    assert run(cfg, store, progress=False).run_id == repaired.run_id  # good data: served from the store


def test_key_of_a_data_set_not_here_is_stable_and_computing_it_costs_little(monkeypatch):
    a = RunConfig(dataset="svhn", epochs=1)
    assert a.key() == RunConfig(dataset="svhn", epochs=1).key() != RunConfig(dataset="svhn", epochs=2).key()
    cfg = RunConfig(dataset="mnist5k", train_subset=500)
    cfg.key()
    start = time.perf_counter()
    for _ in range(200):
        cfg.key()
    assert (time.perf_counter() - start) / 200 < 0.005  # cached: a few stat calls


def test_commands_that_need_no_data_do_not_load_it(tmp_path, monkeypatch, capsys):
    store = Store(tmp_path / "runs")
    run(RunConfig(dataset="mnist5k", epochs=1, hidden=(4,), train_subset=64, device="cpu"), store, progress=False)
    identity.forget()

    def no_load(*args, **kwargs):
        raise AssertionError("this command must not load a data set")
    monkeypatch.setattr(data, "load", no_load)
    monkeypatch.setattr(identity, "_loaded", no_load)
    for argv in (["runs", "--out", str(tmp_path / "runs"), "list"], ["runs", "--out", str(tmp_path / "runs"), "show", "1"],
                 ["datasets", "list"], ["datasets", "info", "fashion-mnist"]):
        assert main(argv) == 0, argv
    assert "mnist5k" in capsys.readouterr().out
