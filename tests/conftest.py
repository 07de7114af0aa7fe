import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("PREALIGN_QUIET", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def private_ray_token(tmp_path_factory):
    """Every Ray process the suite starts (a test's local ``ray.init``, the two-node cluster of
    tests/test_cluster.py, a CLI run with ``--executor ray``) authenticates with a token made for this
    session: Ray 2.60 needs one (token auth), a fresh machine has none, and the user's own
    ``~/.ray/auth_token`` is neither read nor written (a local ``ray.init`` creates it there when
    missing). ``RAY_AUTH_TOKEN_PATH`` points at it; the file path is yielded."""
    import secrets

    path = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    path.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes: 256 random bits, hex
    path.chmod(0o600)
    saved = {name: os.environ.pop(name, None) for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    yield path
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


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


@pytest.fixture
def drawn(monkeypatch):
    """Keep the figures the plotting functions save (they close them) so a test can inspect them."""
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    monkeypatch.undo()
    plt.close("all")
