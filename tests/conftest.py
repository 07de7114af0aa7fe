import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("PREALIGN_QUIET", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny workloads (fastest, and steady when other processes load the CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_data_dirs(tmp_path, monkeypatch):
    """A private user cache, no $PREALIGN_DATA and no system data folder: data lookups see only what the test makes
    (the stand-in system folder tmp_path/system is searched even under PREALIGN_NO_SYSTEM_DATA=1)."""
    from prealign.data import sources

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PREALIGN_DATA", raising=False)
    monkeypatch.delenv("PREALIGN_NO_SYSTEM_DATA", raising=False)
    monkeypatch.setattr(sources, "SYSTEM_DIR", tmp_path / "system")
    return sources
