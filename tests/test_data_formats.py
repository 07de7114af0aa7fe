"""Each reader on small files written here in the publisher's true format; corrupt/truncated → error naming the file."""
import bz2
import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
import scipy.io

from prealign.data import formats
from prealign.errors import PrealignError

rng = np.random.default_rng(0)


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    return header + arr.tobytes()


def write_idx_folder(folder, n_train=7, n_test=3):
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(y))  # raw (not gz) also accepted
        arrays[split] = (x, y)
    return arrays


def test_idx_roundtrip_gz_and_raw(tmp_path):
    arrays = write_idx_folder(tmp_path)
    x_train, y_train, x_test, y_test = formats.read_idx_folder(tmp_path)
    assert x_train.shape == (7, 1, 28, 28) and x_test.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(x_train[:, 0], arrays["train"][0])
    np.testing.assert_array_equal(y_test, arrays["t10k"][1])


def test_idx_truncated_names_file(tmp_path):
    x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(x)[:-100]))
    with pytest.raises(PrealignError, match="train-images-idx3-ubyte.gz"):
        formats.read_idx(path)
    path.write_bytes(gzip.compress(idx_bytes(x))[:-30])  # truncated gzip stream
    with pytest.raises(PrealignError, match="corrupt or truncated"):
        formats.read_idx(path)
    path.write_bytes(b"\x01\x02garbage")
    with pytest.raises(PrealignError, match="bad magic"):
        formats.read_idx(path)


def write_cifar_tar(path, hundred=False, n=4):
    truth = {}
    with tarfile.open(path, "w:gz") as tar:
        names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, 100 if hundred else 10, n)]  # the real batches hold Python ints
            batch = {b"data": x, (b"fine_labels" if hundred else b"labels"): y}
            truth[name] = (x, y)
            blob = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-{'100' if hundred else '10'}-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        meta = pickle.dumps({b"fine_label_names" if hundred else b"label_names": [b"a", b"b"]})
        info = tarfile.TarInfo("x/meta" if hundred else "x/batches.meta")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    return truth


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_tarball(tmp_path, hundred):
    path = tmp_path / "c.tar.gz"
    truth = write_cifar_tar(path, hundred)
    x_train, y_train, x_test, y_test, classes = formats.read_cifar_tarball(path)
    assert x_train.shape == ((4 if hundred else 20), 3, 32, 32) and x_test.shape == (4, 3, 32, 32)
    first = "train" if hundred else "data_batch_1"
    np.testing.assert_array_equal(x_train[:4].reshape(4, -1), truth[first][0])
    assert list(y_test) == list(truth["test" if hundred else "test_batch"][1])
    assert classes == ["a", "b"]
    # channel-first layout: the first 1024 bytes are the red plane
    assert x_train[0, 0, 0, 1] == truth[first][0][0, 1] and x_train[0, 1, 0, 0] == truth[first][0][0, 1024]


def test_cifar_truncated(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_tar(path)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(PrealignError, match="cifar-10-python.tar.gz"):
        formats.read_cifar_tarball(path)


def test_svhn_mat(tmp_path):
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [10], [9]], np.uint8)
    path = tmp_path / "train_32x32.mat"
    scipy.io.savemat(path, {"X": x, "y": y})
    images, labels = formats.read_svhn_mat(path)
    assert images.shape == (5, 3, 32, 32)
    assert list(labels) == [0, 1, 2, 0, 9]
    np.testing.assert_array_equal(images[2, 1, 3, 4], x[3, 4, 1, 2])  # X[row, col, channel, n]
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(PrealignError, match="train_32x32.mat"):
        formats.read_svhn_mat(path)


def test_stl10_column_major(tmp_path):
    n = 2
    images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W) truth
    column_major = images.transpose(0, 1, 3, 2).tobytes()  # the file stores W-major (column-major) planes
    files = {"train_X.bin": column_major, "train_y.bin": bytes([1, 10]), "test_X.bin": column_major[: 3 * 96 * 96],
             "test_y.bin": bytes([3]), "class_names.txt": b"airplane\nbird\n"}
    path = tmp_path / "stl10_binary.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"stl10_binary/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    x_train, y_train, x_test, y_test, classes = formats.read_stl10(path)
    np.testing.assert_array_equal(x_train, images)
    assert list(y_train) == [0, 9] and list(y_test) == [2] and x_test.shape == (1, 3, 96, 96)
    assert classes == ["airplane", "bird"]
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PrealignError, match="bad.tar.gz"):
        formats.read_stl10(bad)


def test_usps_libsvm_bz2(tmp_path):
    values = rng.uniform(-1, 1, (3, 256)).round(6)
    labels = [1, 10, 5]
    lines = [f"{lab} " + " ".join(f"{i + 1}:{v}" for i, v in enumerate(row)) for lab, row in zip(labels, values)]
    path = tmp_path / "usps.bz2"
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    x, y = formats.read_usps(path)
    assert x.shape == (3, 1, 16, 16) and list(y) == [0, 9, 4]
    np.testing.assert_allclose(x.reshape(3, 256), (values + 1) / 2, atol=1e-6)
    path.write_bytes(bz2.compress(b"1 1:0.5 2:0.3\n")[:-10])
    with pytest.raises(PrealignError, match="usps.bz2"):
        formats.read_usps(path)


def test_cifar_c_folder_and_tar(tmp_path):
    n = 3  # images per severity
    x = rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
    y = np.tile(np.arange(n), 5)
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "fog.npy", x)
    np.save(folder / "labels.npy", y)
    images, labels = formats.read_cifar_c(tmp_path, "fog", 4)
    np.testing.assert_array_equal(images, x[3 * n: 4 * n].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(labels, y[3 * n: 4 * n])
    tar_path = tmp_path / "CIFAR-10-C.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(folder, arcname="CIFAR-10-C")
    images_tar, _ = formats.read_cifar_c(tar_path, "fog", 4)
    np.testing.assert_array_equal(images_tar, images)
    np.save(folder / "snow.npy", x[:7])  # not 5 severities
    with pytest.raises(PrealignError, match="snow.npy"):
        formats.read_cifar_c(tmp_path, "snow", 1)
    (folder / "frost.npy").write_bytes((folder / "fog.npy").read_bytes()[:500])
    with pytest.raises(PrealignError, match="frost.npy"):
        formats.read_cifar_c(tmp_path, "frost", 1)


def test_mnist5k_csv_corrupt(tmp_path):
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(PrealignError, match="mnist_5k.csv.gz"):
        formats.read_mnist5k_csv(path)


class _WritesMarker:
    """A pickled object whose unpickling creates ``marker``: what a malicious CIFAR file would hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_cifar_pickle_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "marker"
    assert pickle.loads(pickle.dumps(_WritesMarker(tmp_path / "proof"))) and (tmp_path / "proof").exists()  # it would run
    path = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_tar(path)
    with tarfile.open(path, "r:gz") as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for member, blob in members:
            if member.name.endswith("data_batch_1"):
                blob = pickle.dumps({b"data": _WritesMarker(marker), b"labels": [0]})
                member.size = len(blob)
            tar.addfile(member, io.BytesIO(blob))
    with pytest.raises(PrealignError) as err:
        formats.read_cifar_tarball(evil)
    msg = str(err.value)
    assert "\n" not in msg and str(evil) in msg and "io.open" in msg and "refused" in msg
    assert not marker.exists()


def test_cifar_unpickler_allows_only_numpy_array_globals():
    unpickler = formats.DataUnpickler(io.BytesIO(b""))
    from numpy._core.multiarray import _reconstruct
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x and 2.x pickles
        assert unpickler.find_class(module, "_reconstruct") is _reconstruct
    assert unpickler.find_class("numpy", "ndarray") is np.ndarray and unpickler.find_class("numpy", "dtype") is np.dtype
    for module, name in (("os", "system"), ("builtins", "eval"), ("numpy", "load"), ("subprocess", "Popen")):
        with pytest.raises(formats.ForbiddenPickle):
            unpickler.find_class(module, name)
