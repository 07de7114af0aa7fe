"""One reader per data format, registered by format name: ``READERS[spec.format]``.

:func:`prealign.data.load` goes through four places, once each: the registry entry
(:mod:`.registry`) → where its files are (:func:`.sources.locate`, which asks the reader which
files it needs) → the reader of its format (here) → the registry's checks (:mod:`.checks`) →
tensors (:meth:`Read.dataset`). A :class:`Reader` knows two things about its format: which files
of a folder a load reads (``files``: what ``locate`` looks for, what the fingerprint and
``prealign datasets verify`` stat) and how they become a train and a test split (``read``). The
byte-level parsers it calls are in :mod:`.formats`; the offline sets' loaders in :mod:`.offline`.

A new data set of a known format is one registry entry; a new format is one parser in
:mod:`.formats` and one :class:`Reader` in :data:`READERS`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PrealignError
from . import formats, offline
from .base import Dataset, to_float, to_labels
from .registry import CORRUPTIONS, DatasetSpec


@dataclass(frozen=True)
class Split:
    """One split as read: ``images`` N×C×H×W and ``labels`` N (numpy; float32 tensors in [0, 1]
    and int64 labels where :attr:`Read.scale` is None), and the files they came from, which the
    checks name when they disagree with the registry (``labels_file`` None: the images file)."""

    images: Any
    labels: Any
    images_file: Any
    labels_file: Any = None


@dataclass(frozen=True)
class Read:
    """What a reader returns: both splits, where they came from (``source``), the class names
    (None: the registry's), the value that maps pixels to [0, 1] (None: already tensors in [0, 1])
    and the data set's name where it is not the registry's (a CIFAR-C corruption)."""

    train: Split
    test: Split
    source: Any
    classes: list[str] | None = None
    scale: float | None = 255.0
    name: str | None = None

    def dataset(self, spec: DatasetSpec) -> Dataset:
        """The splits as a :class:`Dataset`: images float32 in [0, 1] (N×C×H×W), labels int64."""
        if self.scale is None:
            tensors = (self.train.images, self.train.labels, self.test.images, self.test.labels)
        else:
            tensors = (to_float(self.train.images, self.scale), to_labels(self.train.labels),
                       to_float(self.test.images, self.scale), to_labels(self.test.labels))
        classes = list(self.classes) if self.classes else (list(spec.classes) if spec.classes else None)
        return Dataset(self.name or spec.name, *tensors, spec.num_classes, str(self.source), classes)


def published_files(spec: DatasetSpec, folder: Path) -> list[Path] | None:
    """Every published file of ``spec`` in ``folder`` (also without or with ``.gz``), sorted; None
    when one is missing."""
    found = [formats.find_file(folder, f.filename) for f in spec.files]
    return None if None in found else sorted(found)


@dataclass(frozen=True)
class Reader:
    """One data format. ``read(spec, folder, **options) -> Read``; ``files(spec, folder)``: the
    files a load from ``folder`` reads, sorted (None: the folder does not hold the data set);
    ``options``: the keyword arguments of ``load`` it takes; ``offline``: it reads a copy that
    ships with an installed package (``folder`` is None), as the registry's ``offline`` says."""

    read: Callable[..., Read]
    files: Callable[[DatasetSpec, Path], list[Path] | None] = published_files
    options: tuple[str, ...] = ()
    offline: bool = False


# ---------------------------------------------------------------- the readers
def _pair(x_train, y_train, x_test, y_test, path) -> tuple[Split, Split]:
    """Both splits of a format that keeps everything in one file (or folder) ``path``."""
    return Split(x_train, y_train, path, path), Split(x_test, y_test, path, path)


def read_idx(spec: DatasetSpec, folder: Path) -> Read:
    """MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST): ``train-*`` and ``t10k-*``."""
    train, test = (Split(*formats.idx_split(folder, prefix)) for prefix in ("train", "t10k"))
    return Read(train, test, folder)


def _cifar(fine: bool) -> Callable[..., Read]:
    def read_cifar(spec: DatasetSpec, folder: Path) -> Read:
        """The CIFAR python tarball (fine labels for CIFAR-100), read without extracting it."""
        path = formats.find_file(folder, spec.files[0].filename)
        x_train, y_train, x_test, y_test, classes = formats.read_cifar_tarball(path, fine=fine)
        return Read(*_pair(x_train, y_train, x_test, y_test, path), path, classes)
    return read_cifar


def read_svhn(spec: DatasetSpec, folder: Path) -> Read:
    """SVHN's ``train_32x32.mat`` and ``test_32x32.mat``."""
    train, test = (Split(*formats.read_svhn_mat(f), f, f) for f in (folder / "train_32x32.mat", folder / "test_32x32.mat"))
    return Read(train, test, folder)


def _stl10_path(spec: DatasetSpec, folder: Path) -> Path:
    extracted = folder / "stl10_binary"
    return extracted if (extracted / "train_X.bin").is_file() else folder / spec.files[0].filename


def read_stl10(spec: DatasetSpec, folder: Path) -> Read:
    """STL-10's binaries, from the published tarball or its extracted ``stl10_binary/``."""
    path = _stl10_path(spec, folder)
    x_train, y_train, x_test, y_test, classes = formats.read_stl10(path)
    return Read(*_pair(x_train, y_train, x_test, y_test, path), path, classes)


def stl10_files(spec: DatasetSpec, folder: Path) -> list[Path] | None:
    """The extracted ``stl10_binary/`` files where they are, else the published tarball."""
    if (folder / "stl10_binary" / "train_X.bin").is_file():
        return sorted(p for p in (folder / "stl10_binary").iterdir() if p.is_file())
    found = [p for p in (formats.find_file(folder, f.filename) for f in spec.files) if p is not None]
    return sorted(found) or None


def read_usps(spec: DatasetSpec, folder: Path) -> Read:
    """USPS in LIBSVM text (bz2): values already in [0, 1] after the parser (scale 1)."""
    files = [formats.find_file(folder, n) or folder / n for n in ("usps.bz2", "usps.t.bz2")]
    train, test = (Split(*formats.read_usps(f), f, f) for f in files)
    return Read(train, test, folder, scale=1.0)


def read_cifar_c(spec: DatasetSpec, folder: Path, corruption: str | None = None, severity: int | None = None) -> Read:
    """One corruption at one severity of CIFAR-10-C / CIFAR-100-C (a test set only; the train split is empty)."""
    if corruption not in CORRUPTIONS or severity not in (1, 2, 3, 4, 5):
        raise PrealignError(f"{spec.name} holds 15 corruptions x 5 severities; load it with "
                            f"corruption=one of {', '.join(CORRUPTIONS)} and severity=1..5 "
                            f"(got corruption={corruption!r}, severity={severity!r})")
    tar = folder / spec.files[0].filename
    members = formats.cifar_c_members(folder, spec.extra["folder"])
    location = folder if members else tar
    x, y = formats.read_cifar_c(location, corruption, severity, spec.extra["folder"])
    images_file = members.get(f"{corruption}.npy", tar) if members else tar
    labels_file = members.get("labels.npy", tar) if members else tar
    train = Split(np.empty((0, *x.shape[1:]), np.uint8), np.empty(0, np.int64), tar, tar)
    return Read(train, Split(x, y, images_file, labels_file), location, name=f"{spec.name}/{corruption}/{severity}")


def cifar_c_files(spec: DatasetSpec, folder: Path) -> list[Path] | None:
    """The ``.npy`` files where a folder (or its ``CIFAR-10-C/`` subfolder) holds them, else the published tar."""
    for d in (folder, folder / spec.extra["folder"]):
        if (d / "labels.npy").is_file():
            return sorted(d.glob("*.npy"))
    found = [p for p in (formats.find_file(folder, f.filename) for f in spec.files) if p is not None]
    return sorted(found) or None


def _offline(load: Callable[[], Dataset]) -> Callable[..., Read]:
    def read_offline(spec: DatasetSpec, folder: None) -> Read:
        """The copy that ships with an installed package, already as tensors in [0, 1]."""
        ds = load()
        return Read(Split(ds.x_train, ds.y_train, ds.source), Split(ds.x_test, ds.y_test, ds.source), ds.source,
                    ds.classes, scale=None, name=ds.name)
    return read_offline


READERS: dict[str, Reader] = {
    "idx": Reader(read_idx),
    "cifar10": Reader(_cifar(fine=False)),
    "cifar100": Reader(_cifar(fine=True)),
    "svhn": Reader(read_svhn),
    "stl10": Reader(read_stl10, stl10_files),
    "usps": Reader(read_usps),
    "cifar-c": Reader(read_cifar_c, cifar_c_files, options=("corruption", "severity")),
    "mnist5k": Reader(_offline(offline.load_mnist5k), offline=True),
    "digits": Reader(_offline(offline.load_digits), offline=True),
}


def reader_of(spec: DatasetSpec) -> Reader:
    """The reader of ``spec``'s format; a one-line error naming the registry entry to fix."""
    if spec.format not in READERS:
        raise PrealignError(f"data set {spec.name!r} has unknown format {spec.format!r} (known: "
                            f"{', '.join(READERS)}); fix the registry entry")
    return READERS[spec.format]


__all__ = ["READERS", "Reader", "Read", "Split", "reader_of", "published_files"]
