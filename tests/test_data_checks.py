"""Files found on disk are checked against the registry (counts, image shape, label range) before use,
and PREALIGN_NO_SYSTEM_DATA=1 hides the system data folder (a fresh machine)."""
import dataclasses
import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest

import prealign.data as data
from prealign.cli import main
from prealign.run.config import RunConfig, run
from prealign.data import sources
from prealign.data.registry import DATASETS
from prealign.errors import PrealignError
from test_data_formats import idx_bytes

rng = np.random.default_rng(1)


@pytest.fixture(autouse=True)
def isolated(no_data_dirs, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tests must not touch the network")
    monkeypatch.setattr(sources, "_urlopen", no_network)


def write_idx(folder, n_train, n_test, *, size=28, classes=10, bad_label=None):
    """The four IDX files of an MNIST-style data set with the given counts (gzip, as published)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        y = (np.arange(n) % classes).astype(np.uint8)  # every class present, deterministic whatever ran before
        if bad_label is not None and split == "t10k":
            y[-1] = bad_label
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x), compresslevel=1))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y), compresslevel=1))


def small(monkeypatch, name, n_train, n_test):
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], sizes=(n_train, n_test)))


def one_line_error(call) -> str:
    with pytest.raises(PrealignError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_fashion_mnist_with_too_few_images_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "root" / "fashion-mnist"
    write_idx(folder, 1000, 10)  # the registry's Fashion-MNIST: 60,000 / 10,000
    msg = one_line_error(lambda: data.load("fashion-mnist", root=tmp_path / "root"))
    assert str(folder / "train-images-idx3-ubyte.gz") in msg
    assert "expected 60,000, found 1,000" in msg and "prealign datasets fetch fashion-mnist" in msg
    # the path users take: a run on these files fails with that line, nothing trains
    monkeypatch.setenv("PREALIGN_DATA", str(tmp_path / "root"))
    assert one_line_error(lambda: run(RunConfig(dataset="fashion-mnist", epochs=1, device="cpu"))) == msg


def test_labels_out_of_range_and_wrong_image_size_are_refused(tmp_path, monkeypatch):
    small(monkeypatch, "kmnist", 6, 4)
    write_idx(tmp_path / "kmnist", 6, 4, bad_label=12)
    msg = one_line_error(lambda: data.load("kmnist", root=tmp_path))
    assert str(tmp_path / "kmnist" / "t10k-labels-idx1-ubyte.gz") in msg
    assert "test labels in expected 0..9, found 0..12" in msg and "prealign datasets fetch kmnist" in msg
    write_idx(tmp_path / "kmnist", 6, 4, size=32)
    msg = one_line_error(lambda: data.load("kmnist", root=tmp_path))
    assert "train-images-idx3-ubyte.gz" in msg and "expected 1×28×28, found 1×32×32" in msg
    write_idx(tmp_path / "kmnist", 6, 4)
    assert data.load("kmnist", root=tmp_path).x_train.shape == (6, 1, 28, 28)  # the right files load


def test_labels_file_with_other_count_is_named(tmp_path, monkeypatch):
    small(monkeypatch, "mnist", 6, 4)
    write_idx(tmp_path / "mnist", 6, 4)
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    msg = one_line_error(lambda: data.load("mnist", root=tmp_path))
    assert "train-labels-idx1-ubyte.gz" in msg and "train labels expected 6, found 5" in msg


def test_cifar_svhn_usps_counts_checked(tmp_path, monkeypatch):
    from test_data_formats import write_cifar_tar

    (tmp_path / "cifar10").mkdir()
    write_cifar_tar(tmp_path / "cifar10" / "cifar-10-python.tar.gz", n=4)  # 5 batches of 4 + test 4
    msg = one_line_error(lambda: data.load("cifar10", root=tmp_path))
    assert "cifar-10-python.tar.gz" in msg and "train images expected 50,000, found 20" in msg
    small(monkeypatch, "cifar10", 20, 4)
    assert data.load("cifar10", root=tmp_path).x_test.shape == (4, 3, 32, 32)
    import scipy.io
    (tmp_path / "svhn").mkdir()
    for split, n in (("train", 3), ("test", 2)):
        scipy.io.savemat(tmp_path / "svhn" / f"{split}_32x32.mat",
                         {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": np.full((n, 1), 11)})
    small(monkeypatch, "svhn", 3, 2)
    msg = one_line_error(lambda: data.load("svhn", root=tmp_path))
    assert "train_32x32.mat" in msg and "expected 0..9, found 11..11" in msg
    import bz2
    (tmp_path / "usps").mkdir()
    for name, n in (("usps.bz2", 3), ("usps.t.bz2", 2)):
        rows = "".join(f"{k % 10 + 1} " + " ".join(f"{i + 1}:0.5" for i in range(256)) + "\n" for k in range(n))
        (tmp_path / "usps" / name).write_bytes(bz2.compress(rows.encode()))
    msg = one_line_error(lambda: data.load("usps", root=tmp_path))
    assert str(tmp_path / "usps" / "usps.bz2") in msg and "train images expected 7,291, found 3" in msg
    small(monkeypatch, "usps", 3, 2)
    assert data.load("usps", root=tmp_path).input_shape == (1, 16, 16)


def test_pickle_payload_in_cifar_found_on_disk_is_one_cli_line(tmp_path, capsys):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")
    blob = pickle.dumps({b"data": Payload(), b"labels": [0]})
    (tmp_path / "cifar10").mkdir()
    with tarfile.open(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    assert main(["datasets", "verify", "cifar10", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "Traceback" not in err and not marker.exists()


def test_no_system_data_env_hides_the_system_folder(tmp_path, monkeypatch):
    small(monkeypatch, "fashion-mnist", 6, 4)
    write_idx(tmp_path / "system" / "fashion-mnist", 6, 4)  # the fixture's stand-in for /usr/share/datasets
    assert data.available("fashion-mnist") == (True, str(tmp_path / "system" / "fashion-mnist"))
    monkeypatch.setenv("PREALIGN_NO_SYSTEM_DATA", "1")
    assert all(label != "system" for label, _ in data.search_dirs("fashion-mnist"))
    assert data.available("fashion-mnist") == (False, "not found")
    msg = one_line_error(lambda: data.load("fashion-mnist"))
    assert "PREALIGN_NO_SYSTEM_DATA=1" in msg and "apt install dataset-fashion-mnist" in msg
    assert data.load("mnist5k").x_train.shape == (4000, 1, 28, 28)  # the offline sets stay
    monkeypatch.setenv("PREALIGN_NO_SYSTEM_DATA", "0")
    assert data.available("fashion-mnist")[0]
    monkeypatch.setenv("PREALIGN_NO_SYSTEM_DATA", "yes")
    assert "set it to 1" in one_line_error(lambda: data.search_dirs("fashion-mnist"))
