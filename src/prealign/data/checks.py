"""What a data set's files must hold, checked on every load: the registry's sample counts,
image shape and label range (:class:`~prealign.data.registry.DatasetSpec` ``sizes``, ``shape``,
``num_classes``).

A file that parses but holds something else (1,000 images where Fashion-MNIST has 60,000,
label 12 in a 10-class set, 32×32 images in a 28×28 set) raises one :class:`PrealignError`
naming the file, what was expected and what was found, and how to get a good copy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PrealignError
from .registry import DatasetSpec
from .sources import APT_PACKAGES, NO_SYSTEM_ENV, SYSTEM_DIR

SPLITS = ("train", "test")


def fix_for(spec: DatasetSpec, path) -> str:
    """How to replace a bad file ``path`` of ``spec`` (download, reinstall the package that ships it)."""
    if spec.offline:
        return f"reinstall {spec.offline.split(' ')[0]} (it ships {spec.name}) or clear the cache of prealign"
    fetch = f"remove it and download a good copy with `prealign datasets fetch {spec.name}`"
    try:
        in_system = Path(path).resolve().is_relative_to(SYSTEM_DIR.resolve())
    except OSError:
        in_system = False
    if in_system and spec.name in APT_PACKAGES:
        return (f"reinstall it (`apt install --reinstall {APT_PACKAGES[spec.name]}`) or set {NO_SYSTEM_ENV}=1 "
                f"and download a good copy with `prealign datasets fetch {spec.name}`")
    return fetch


def mismatch(spec: DatasetSpec, path, what: str, expected, found) -> PrealignError:
    """The one-line error for a file whose content disagrees with the registry."""
    return PrealignError(f"data file {path} does not hold {spec.name} as published: {what} expected {expected}, "
                         f"found {found}; {fix_for(spec, path)}")


def check_split(spec: DatasetSpec, split: str, images, labels, images_file, labels_file=None) -> None:
    """Compare one split with the registry: ``images`` N×C×H×W (numpy or torch), ``labels`` N.

    ``split``: ``"train"`` or ``"test"`` (which of ``spec.sizes`` applies). ``labels_file``
    defaults to ``images_file`` (formats that keep both in one file)."""
    labels_file = images_file if labels_file is None else labels_file
    if spec.sizes is None:
        raise PrealignError(f"the registry entry of {spec.name!r} lacks sizes (train, test sample counts); add them")
    expected = spec.sizes[SPLITS.index(split)]
    if len(images) != expected:
        raise mismatch(spec, images_file, f"{split} images", f"{expected:,}", f"{len(images):,}")
    if len(labels) != expected:
        raise mismatch(spec, labels_file, f"{split} labels", f"{expected:,}", f"{len(labels):,}")
    shape = tuple(images.shape[1:])
    if shape != tuple(spec.shape):
        raise mismatch(spec, images_file, "image shape (C×H×W)", "×".join(map(str, spec.shape)),
                       "×".join(map(str, shape)))
    if expected:
        lo, hi = int(np.asarray(labels).min()), int(np.asarray(labels).max())
        if lo < 0 or hi >= spec.num_classes:
            raise mismatch(spec, labels_file, f"{split} labels in", f"0..{spec.num_classes - 1}", f"{lo}..{hi}")


def check_read(spec: DatasetSpec, read) -> None:
    """:func:`check_split` on both splits a reader returned (:class:`prealign.data.readers.Read`)."""
    for split, part in zip(SPLITS, (read.train, read.test)):
        check_split(spec, split, part.images, part.labels, part.images_file, part.labels_file)


def check_dataset(spec: DatasetSpec, ds, source) -> None:
    """:func:`check_split` on both splits of a loaded :class:`~prealign.data.Dataset` (offline sets)."""
    check_split(spec, "train", ds.x_train, ds.y_train, source)
    check_split(spec, "test", ds.x_test, ds.y_test, source)
