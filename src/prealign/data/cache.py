"""The user cache of prealign: where downloads land (:mod:`.sources`) and where the parsed offline
MNIST-5k is kept (:mod:`.offline`). Below both, so neither imports the other."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user cache of prealign: ``$XDG_CACHE_HOME/prealign`` or ``~/.cache/prealign``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prealign"
