"""Data sets as whole tensors: ``load(name)`` → :class:`Dataset` (float32 [0, 1], N×C×H×W).

    >>> from prealign.data import load
    >>> ds = load("mnist5k")            # offline, 4,000/1,000, 1×28×28
    >>> ds = load("digits", size=28)    # scikit-learn's 8×8 digits resized to 28×28 (bilinear)
    >>> ds = load("usps", size=28)      # USPS 16×16 → 28×28, the second digit source for OOD tests
    >>> ds = load("cifar10-c", corruption="fog", severity=3)   # the published CIFAR-10-C test set

Search order and downloads: see :mod:`prealign.data.sources` and docs/data.md; one reader per
file format, registered by format name: :mod:`prealign.data.readers`.
"""
from __future__ import annotations

from . import checks, formats, readers  # noqa: F401  (public submodules)
from .base import Dataset, holdout_validation, stratified_indices, to_float, to_labels  # noqa: F401
from .registry import DATASETS, DatasetSpec, RemoteFile
from .identity import fingerprint
from .loading import load
from .cache import cache_dir
from .sources import DataNotFoundError, available, fetch, get_spec, locate, not_found, search_dirs  # noqa: F401

__all__ = ["Dataset", "holdout_validation", "DATASETS", "DatasetSpec", "RemoteFile", "load", "available", "fetch", "locate",
           "search_dirs", "cache_dir", "load_corrupted", "corrupt", "CORRUPTIONS", "ood_sets",
           "stratified_indices", "fingerprint", "DataNotFoundError", "verify"]


def __getattr__(attr):  # lazy re-exports, so `import prealign.data` stays light
    if attr in ("corrupt", "CORRUPTIONS", "load_corrupted"):
        from . import corruptions

        return getattr(corruptions, attr)
    if attr == "verify":
        from .verification import verify

        return verify
    if attr in ("ood_sets", "translate", "scale", "rotate", "resize"):
        from . import transforms

        return getattr(transforms, attr)
    raise AttributeError(f"module 'prealign.data' has no attribute {attr!r}")
