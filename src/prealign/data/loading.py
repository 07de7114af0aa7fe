"""``load(name)``: a data set as whole tensors (see :mod:`prealign.data`, which re-exports it).

Kept out of the package's ``__init__`` so the data modules that load (corruptions, identity,
verification) import it without importing their own package (no import cycle).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PrealignError
from . import checks, formats
from .base import Dataset, to_float, to_labels
from .registry import CORRUPTIONS, DatasetSpec
from .sources import fetch, get_spec, locate, not_found


def _from_splits(spec: DatasetSpec, splits, source, classes=None, scale=255.0, name=None) -> Dataset:
    """``splits``: (train, test), each (images N×C×H×W, labels N, images file, labels file).
    Both are checked against the registry (counts, shape, labels) before they become tensors."""
    for split, (x, y, x_file, y_file) in zip(checks.SPLITS, splits):
        checks.check_split(spec, split, x, y, x_file, y_file)
    (x_train, y_train, _, _), (x_test, y_test, _, _) = splits
    classes = list(classes) if classes else (list(spec.classes) if spec.classes else None)
    return Dataset(name or spec.name, to_float(x_train, scale), to_labels(y_train), to_float(x_test, scale),
                   to_labels(y_test), spec.num_classes, str(source), classes)


def _read(spec: DatasetSpec, folder: Path, corruption=None, severity=None) -> Dataset:
    fmt = spec.format
    if fmt == "idx":
        return _from_splits(spec, [formats.idx_split(folder, p) for p in ("train", "t10k")], folder)
    if fmt in ("cifar10", "cifar100"):
        path = formats.find_file(folder, spec.files[0].filename)
        x_train, y_train, x_test, y_test, classes = formats.read_cifar_tarball(path, fine=fmt == "cifar100")
        return _from_splits(spec, [(x_train, y_train, path, path), (x_test, y_test, path, path)], path, classes)
    if fmt == "svhn":
        files = [folder / "train_32x32.mat", folder / "test_32x32.mat"]
        return _from_splits(spec, [(*formats.read_svhn_mat(f), f, f) for f in files], folder)
    if fmt == "stl10":
        extracted = folder / "stl10_binary"
        path = extracted if (extracted / "train_X.bin").is_file() else folder / spec.files[0].filename
        x_train, y_train, x_test, y_test, classes = formats.read_stl10(path)
        return _from_splits(spec, [(x_train, y_train, path, path), (x_test, y_test, path, path)], path, classes)
    if fmt == "usps":
        files = [formats.find_file(folder, n) or folder / n for n in ("usps.bz2", "usps.t.bz2")]
        return _from_splits(spec, [(*formats.read_usps(f), f, f) for f in files], folder, scale=1.0)
    if fmt == "cifar-c":
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
        train = (np.empty((0, *x.shape[1:]), np.uint8), np.empty(0, np.int64), tar, tar)
        return _from_splits(spec, [train, (x, y, images_file, labels_file)], location,
                            name=f"{spec.name}/{corruption}/{severity}")
    raise PrealignError(f"data set {spec.name!r} has unknown format {fmt!r}; fix the registry entry")


def load(name: str, root=None, download: bool = False, *, size: int | None = None,
         corruption: str | None = None, severity: int | None = None) -> Dataset:
    """Load data set ``name`` as tensors (float32 in [0, 1], N×C×H×W; labels int64).

    Looks in ``root`` → ``$PREALIGN_DATA`` → the user cache → ``/usr/share/datasets/NAME``,
    then downloads from the publisher (checksum verified) when ``download=True``.
    ``size``: resize every image to size×size (bilinear, antialiased when shrinking), e.g.
    ``load("digits", size=28)`` or ``load("usps", size=28)``.
    ``corruption``/``severity``: which CIFAR-10-C / CIFAR-100-C test set to load (cifar10-c, cifar100-c).
    Raises UnknownNameError for an unknown name, DataNotFoundError (a PrealignError listing where
    it looked and how to get the data) when the data set is not here, and PrealignError naming the
    file when a file is corrupt or does not hold what the registry says (counts, shape, labels)."""
    spec = get_spec(name)
    if spec.format == "mnist5k":
        from .offline import load_mnist5k

        ds = load_mnist5k()
        checks.check_dataset(spec, ds, ds.source)
    elif spec.format == "digits":
        from .offline import load_digits

        ds = load_digits()
        checks.check_dataset(spec, ds, ds.source)
    else:
        folder, looked = locate(name, root)
        if folder is None:
            if not download:
                raise not_found(name, looked)
            folder = fetch(name, root)
        ds = _read(spec, folder, corruption, severity)
    if size is not None:
        from .transforms import resize

        if not isinstance(size, int) or size < 1:
            raise PrealignError(f"size must be a positive integer (pixels), got {size!r}")
        ds = Dataset(f"{ds.name}@{size}", resize(ds.x_train, size), ds.y_train, resize(ds.x_test, size), ds.y_test,
                     ds.num_classes, ds.source, ds.classes)
    return ds
