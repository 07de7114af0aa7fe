"""Real offline loads, search order, checksummed atomic downloads (local HTTP server, no network)."""
import gzip
import hashlib
import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import prealign.data as data
from prealign.data import sources
from prealign.data.registry import DATASETS, DatasetSpec, RemoteFile
from prealign.errors import PrealignError, UnknownNameError
from test_data_formats import idx_bytes, write_idx_folder

FASHION = Path("/usr/share/datasets/fashion-mnist")
# Debian's dataset-fashion-mnist is optional: a fresh machine (or PREALIGN_NO_SYSTEM_DATA=1) lacks it
needs_fashion = pytest.mark.skipif(not FASHION.is_dir() or sources.system_data_skipped(),
                                   reason="Debian dataset-fashion-mnist not installed (or PREALIGN_NO_SYSTEM_DATA=1)")


@pytest.fixture(autouse=True)
def isolated(no_data_dirs, monkeypatch):
    """Each test gets its own user cache, no $PREALIGN_DATA and (unless a test restores it) no system folder."""
    def no_network(*args, **kwargs):
        raise AssertionError("tests must not touch the network")
    monkeypatch.setattr(sources, "_urlopen", no_network)


def test_mnist5k_real_split_and_cache(tmp_path):
    ds = data.load("mnist5k")
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert torch.bincount(ds.y_train).tolist() == [400] * 10 and torch.bincount(ds.y_test).tolist() == [100] * 10
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1 and ds.input_shape == (1, 28, 28)
    assert (tmp_path / "cache" / "prealign" / "mnist5k").is_dir()  # parsed tensors cached
    start = time.perf_counter()
    again = data.load("mnist5k")
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"cached mnist5k load took {elapsed:.3f} s"
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)  # fixed split
    # train and test are disjoint images
    train_keys = {hash(r.numpy().tobytes()) for r in (ds.x_train.view(4000, -1) * 255).round().to(torch.uint8)}
    test_keys = {hash(r.numpy().tobytes()) for r in (ds.x_test.view(1000, -1) * 255).round().to(torch.uint8)}
    assert len(train_keys & test_keys) <= 2  # MNIST holds a few exact duplicates at most


def test_digits_real_and_resized():
    ds = data.load("digits")
    assert len(ds.y_train) + len(ds.y_test) == 1797 and ds.input_shape == (1, 8, 8)
    assert ds.x_train.max() == 1 and ds.x_train.min() == 0
    from sklearn.datasets import load_digits
    counts = np.bincount(load_digits().target)
    assert (torch.bincount(ds.y_test).numpy() == np.rint(0.2 * counts)).all()
    big = data.load("digits", size=28)
    assert big.input_shape == (1, 28, 28) and len(big.y_train) == len(ds.y_train)
    assert 0 <= big.x_test.min() and big.x_test.max() <= 1
    # bilinear upsampling preserves the mean brightness approximately
    assert abs(big.x_test.mean() - ds.x_test.mean()) < 0.02


@pytest.mark.optional_data
@needs_fashion
def test_fashion_mnist_from_debian(monkeypatch):
    monkeypatch.delenv("PREALIGN_NO_SYSTEM_DATA", raising=False)  # this test reads the system folder on purpose
    monkeypatch.setattr(sources, "SYSTEM_DIR", FASHION.parent)
    assert data.available("fashion-mnist") == (True, str(FASHION))
    ds = data.load("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10 and torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1 and ds.source == str(FASHION)
    assert ds.classes[0] == "T-shirt/top"


def tiny(monkeypatch, name, n_train, n_test):
    """Register a small copy of data set ``name``: the registry's entry with other sample counts
    (every load checks the counts, so test-made files need a spec that says how many they hold)."""
    import dataclasses
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], sizes=(n_train, n_test)))


def test_search_order_root_env_cache_system(tmp_path, monkeypatch):
    tiny(monkeypatch, "kmnist", 7, 3)
    for place in ("root/kmnist", "env/kmnist", "cache/prealign/kmnist", "system/kmnist"):
        (tmp_path / place).mkdir(parents=True)
        write_idx_folder(tmp_path / place)
    monkeypatch.setenv("PREALIGN_DATA", str(tmp_path / "env"))
    assert data.load("kmnist", root=tmp_path / "root").source == str(tmp_path / "root/kmnist")
    assert data.load("kmnist").source == str(tmp_path / "env/kmnist")
    monkeypatch.delenv("PREALIGN_DATA")
    assert data.load("kmnist").source == str(tmp_path / "cache/prealign/kmnist")
    import shutil
    shutil.rmtree(tmp_path / "cache/prealign/kmnist")
    assert data.load("kmnist").source == str(tmp_path / "system/kmnist")


def test_not_found_lists_places_and_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("PREALIGN_DATA", str(tmp_path / "env"))
    with pytest.raises(PrealignError) as err:
        data.load("fashion-mnist", root=tmp_path / "r")
    msg = str(err.value)
    for part in (str(tmp_path / "r"), str(tmp_path / "env/fashion-mnist"), "cache/prealign/fashion-mnist",
                 "system/fashion-mnist", "prealign datasets fetch fashion-mnist", "--download", "PREALIGN_DATA",
                 "apt install dataset-fashion-mnist"):
        assert part in msg
    with pytest.raises(UnknownNameError, match="valid data sets"):
        data.load("imagenet")
    assert data.available("svhn") == (False, "not found")


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    import urllib.request
    monkeypatch.setattr(sources, "_urlopen", urllib.request.urlopen)  # real urllib, but only to 127.0.0.1
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _tiny_spec(base, files, checksums, name="tiny-mnist"):
    remote = tuple(RemoteFile(f, (f"{base}/{f}",), c) for f, c in zip(files, checksums))
    return DatasetSpec(name, "test data", (1, 28, 28), 10, "idx", remote, None, (4, 2))


def _idx_payload():
    x = np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28)
    return {
        "train-images-idx3-ubyte.gz": gzip.compress(idx_bytes(x)),
        "train-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(np.array([0, 1, 2, 3], np.uint8))),
        "t10k-images-idx3-ubyte.gz": gzip.compress(idx_bytes(x[:2])),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(np.array([4, 5], np.uint8))),
    }


def test_download_verifies_and_loads(tmp_path, server, monkeypatch):
    payload = _idx_payload()
    _Handler.files = {f"/{k}": v for k, v in payload.items()}
    sums = [("md5:" if i % 2 else "sha256:") + hashlib.new("md5" if i % 2 else "sha256", v).hexdigest()
            for i, v in enumerate(payload.values())]
    monkeypatch.setitem(DATASETS, "tiny-mnist", _tiny_spec(server, payload, sums))
    with pytest.raises(PrealignError, match="not found"):
        data.load("tiny-mnist")
    ds = data.load("tiny-mnist", download=True)
    assert ds.x_train.shape == (4, 1, 28, 28) and ds.y_test.tolist() == [4, 5]
    folder = tmp_path / "cache/prealign/tiny-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(payload)  # no temp files left behind
    assert data.load("tiny-mnist").source == str(folder)


def test_checksum_mismatch_leaves_nothing_loadable(tmp_path, server, monkeypatch):
    payload = _idx_payload()
    _Handler.files = {f"/{k}": v for k, v in payload.items()}
    sums = ["md5:" + hashlib.md5(v).hexdigest() for v in payload.values()]
    sums[2] = "md5:" + "0" * 32  # the publisher's checksum does not match what the server sends
    monkeypatch.setitem(DATASETS, "tiny-mnist", _tiny_spec(server, payload, sums))
    with pytest.raises(PrealignError, match="checksum mismatch"):
        data.load("tiny-mnist", download=True, root=tmp_path / "r")
    folder = tmp_path / "r" / "tiny-mnist"
    assert not (folder / "t10k-images-idx3-ubyte.gz").exists()
    assert not any(p.name.endswith(".part") for p in folder.iterdir())
    with pytest.raises(PrealignError, match="not found"):
        data.load("tiny-mnist", root=tmp_path / "r")
    # a missing file on the server (offline-like failure) is one clear error too
    _Handler.files.pop("/t10k-images-idx3-ubyte.gz")
    sums[2] = "md5:" + hashlib.md5(payload["t10k-images-idx3-ubyte.gz"]).hexdigest()
    monkeypatch.setitem(DATASETS, "tiny-mnist", _tiny_spec(server, payload, sums))
    with pytest.raises(PrealignError, match="could not download t10k-images"):
        data.fetch("tiny-mnist", root=tmp_path / "r")


def test_offline_fetch_is_clear_error(tmp_path, monkeypatch):
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(sources, "_urlopen", offline)
    with pytest.raises(PrealignError, match="offline"):
        data.fetch("usps")
    assert not any((tmp_path / "cache/prealign/usps").iterdir())


def test_subset_and_validation_split():
    ds = data.load("digits")
    first = ds.subset(100)
    assert torch.equal(first.x_train, ds.x_train[:100]) and torch.equal(first.x_test, ds.x_test)
    strat = ds.subset(105, stratified=True, seed=3)
    counts = torch.bincount(strat.y_train, minlength=10)
    assert counts.sum() == 105 and counts.min() == 10 and counts.max() == 11
    assert torch.equal(strat.x_train, ds.subset(105, stratified=True, seed=3).x_train)
    assert not torch.equal(strat.x_train, ds.subset(105, stratified=True, seed=4).x_train)
    val = ds.split_validation(200, seed=1)
    assert val.name.endswith("[val]") and len(val.y_test) == 200 and len(val.y_train) == len(ds.y_train) - 200
    both = torch.cat([val.x_train, val.x_test]).view(len(ds.y_train), -1)
    assert torch.equal(torch.sort(both.sum(1)).values, torch.sort(ds.x_train.view(len(ds.y_train), -1).sum(1)).values)
    with pytest.raises(PrealignError):
        ds.subset(10 ** 6)
    moved = ds.to("cpu")
    assert moved.x_train.device.type == "cpu" and moved.num_classes == 10


def test_mnist5k_first_n_subset_holds_every_class():
    from prealign.data import load

    ds = load("mnist5k")
    for n in (100, 500):
        counts = torch.bincount(ds.subset(n).y_train, minlength=10)
        assert (counts > 0).all() and counts.max() < 0.2 * n, counts
    assert (torch.bincount(ds.y_test[:100], minlength=10) > 0).all()


def test_mnist5k_cache_with_other_content_is_rebuilt(tmp_path):
    ds = data.load("mnist5k")
    (cached,) = (tmp_path / "cache" / "prealign" / "mnist5k").glob("*.pt")
    torch.save({"x_train": (ds.x_train[:10] * 255).to(torch.uint8)}, cached)  # a loadable file, not the split
    again = data.load("mnist5k")
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)
    assert torch.load(cached, weights_only=True)["x_test"].shape == (1000, 1, 28, 28)  # rewritten
