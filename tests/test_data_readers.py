"""One reader per data format, registered by format name (issue 23): every registry entry has its
reader, a new format is one entry that `load`, `locate`, the checks and the fingerprint all use,
and options a reader does not take are refused instead of ignored."""
import numpy as np
import pytest
import torch

import prealign.data as data
from prealign.data import readers
from prealign.data.readers import READERS, Read, Reader, Split
from prealign.data.registry import DATASETS, DatasetSpec
from prealign.errors import PrealignError


@pytest.fixture(autouse=True)
def isolated(no_data_dirs):
    """Own user cache, no $PREALIGN_DATA, no system folder."""


def test_every_registry_entry_has_the_reader_of_its_format():
    for name, spec in DATASETS.items():
        reader = readers.reader_of(spec)
        assert reader is READERS[spec.format]
        assert reader.offline == bool(spec.offline), f"{name}: the registry and its reader disagree on offline"


def _npy_reader(calls):
    """A format new to prealign: ``train.npy`` / ``test.npy`` holding uint8 images, labels in ``*_y.npy``."""
    def files(spec, folder):
        found = sorted(folder.glob("*.npy"))
        return found if len(found) == 4 else None

    def read(spec, folder):
        calls.append(folder)
        splits = [Split(np.load(folder / f"{s}.npy"), np.load(folder / f"{s}_y.npy"), folder / f"{s}.npy",
                        folder / f"{s}_y.npy") for s in ("train", "test")]
        return Read(*splits, folder, classes=["zero", "one"])

    return Reader(read, files)


@pytest.fixture
def npy_set(tmp_path, monkeypatch):
    """Data set ``tiny-npy`` (format ``npy-pair``, 6 train / 4 test 1×3×3 images) in tmp_path/root/tiny-npy."""
    calls = []
    monkeypatch.setitem(READERS, "npy-pair", _npy_reader(calls))
    monkeypatch.setitem(DATASETS, "tiny-npy", DatasetSpec("tiny-npy", "test set", (1, 3, 3), 2, "npy-pair",
                                                           sizes=(6, 4)))
    folder = tmp_path / "root" / "tiny-npy"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        np.save(folder / f"{split}.npy", rng.integers(0, 256, (n, 1, 3, 3), dtype=np.uint8))
        np.save(folder / f"{split}_y.npy", np.arange(n) % 2)
    return folder, calls


def test_a_new_format_is_one_reader_entry(npy_set, monkeypatch):
    """Registered by format name, the reader is what locate, load (with the registry's checks) and
    the fingerprint use: one hop, no dispatch elsewhere to extend."""
    from prealign.data.identity import files_state, tensors_sha256

    folder, calls = npy_set
    root = folder.parent
    assert data.locate("tiny-npy", root)[0] == folder
    ds = data.load("tiny-npy", root)
    assert calls == [folder] and ds.name == "tiny-npy" and ds.classes == ["zero", "one"]
    x = np.load(folder / "train.npy")
    assert torch.equal(ds.x_train, torch.from_numpy(x).float() / 255) and ds.y_test.tolist() == [0, 1, 0, 1]
    monkeypatch.setenv("PREALIGN_DATA", str(root))
    assert [s[0] for s in files_state("tiny-npy")] == [str(p) for p in sorted(folder.glob("*.npy"))]
    assert data.fingerprint("tiny-npy") == tensors_sha256(ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    (folder / "test_y.npy").unlink()  # the reader says which files a load needs
    assert data.locate("tiny-npy", root)[0] is None


def test_the_registry_checks_apply_to_every_reader(npy_set, monkeypatch):
    folder, _ = npy_set
    spec = DATASETS["tiny-npy"]
    monkeypatch.setitem(DATASETS, "tiny-npy", DatasetSpec(spec.name, spec.description, spec.shape, spec.num_classes,
                                                           spec.format, sizes=(7, 4)))
    with pytest.raises(PrealignError, match=r"train\.npy does not hold tiny-npy as published: train images expected 7"):
        data.load("tiny-npy", folder.parent)


@pytest.mark.parametrize("options", [{"corruption": "fog"}, {"severity": 3}, {"corruption": "fog", "severity": 1}])
def test_options_a_reader_does_not_take_are_refused(options):
    """`corruption=`/`severity=` select a CIFAR-C test set; on any other data set they were ignored."""
    with pytest.raises(PrealignError, match=r"'digits' has no corruptions .* cifar10-c, cifar100-c"):
        data.load("digits", **options)


def test_an_unknown_format_names_the_registry_entry(monkeypatch):
    monkeypatch.setitem(DATASETS, "odd", DatasetSpec("odd", "test", (1, 2, 2), 2, "no-such-format", sizes=(1, 1)))
    with pytest.raises(PrealignError, match="data set 'odd' has unknown format 'no-such-format'.*fix the registry entry"):
        data.load("odd")
