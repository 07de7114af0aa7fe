"""``load(name)``: a data set as whole tensors (see :mod:`prealign.data`, which re-exports it).

One hop through four places, each visited once: the registry entry (:func:`.sources.get_spec`)
→ where its files are (:func:`.sources.locate`, or a download when asked) → the reader of its
format (:data:`.readers.READERS`) → the registry's checks (:func:`.checks.check_read`) → tensors.
Kept out of the package's ``__init__`` so the data modules that load (corruptions, identity,
verification) import it without importing their own package (no import cycle).
"""
from __future__ import annotations

from ..errors import PrealignError
from . import checks
from .base import Dataset
from .readers import reader_of
from .registry import DATASETS
from .sources import fetch, get_spec, locate, not_found


def load(name: str, root=None, download: bool = False, *, size: int | None = None,
         corruption: str | None = None, severity: int | None = None) -> Dataset:
    """Load data set ``name`` as tensors (float32 in [0, 1], N×C×H×W; labels int64).

    Looks in ``root`` → ``$PREALIGN_DATA`` → the user cache → ``/usr/share/datasets/NAME``,
    then downloads from the publisher (checksum verified) when ``download=True``.
    ``size``: resize every image to size×size (bilinear, antialiased when shrinking), e.g.
    ``load("digits", size=28)`` or ``load("usps", size=28)``.
    ``corruption``/``severity``: which CIFAR-10-C / CIFAR-100-C test set to load (cifar10-c,
    cifar100-c; refused for any other data set).
    Raises UnknownNameError for an unknown name, DataNotFoundError (a PrealignError listing where
    it looked and how to get the data) when the data set is not here, and PrealignError naming the
    file when a file is corrupt or does not hold what the registry says (counts, shape, labels)."""
    spec = get_spec(name)
    reader = reader_of(spec)
    options = {k: v for k, v in (("corruption", corruption), ("severity", severity)) if v is not None}
    unknown = [f"{k}={v!r}" for k, v in options.items() if k not in reader.options]
    if unknown:
        takes = [n for n, s in DATASETS.items() if "corruption" in reader_of(s).options]
        raise PrealignError(f"data set {name!r} has no corruptions or severities ({', '.join(unknown)} given); "
                            f"they select a test set of {', '.join(takes)}")
    folder = None
    if not reader.offline:
        folder, looked = locate(name, root)
        if folder is None:
            if not download:
                raise not_found(name, looked)
            folder = fetch(name, root)
    read = reader.read(spec, folder, **options)
    checks.check_read(spec, read)
    ds = read.dataset(spec)
    if size is not None:
        from .transforms import resize

        if not isinstance(size, int) or size < 1:
            raise PrealignError(f"size must be a positive integer (pixels), got {size!r}")
        ds = Dataset(f"{ds.name}@{size}", resize(ds.x_train, size), ds.y_train, resize(ds.x_test, size), ds.y_test,
                     ds.num_classes, ds.source, ds.classes)
    return ds
