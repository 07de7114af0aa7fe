"""Where data sets are found, and checksummed, atomic downloads.

Search order for a data set NAME (first folder holding all its files wins):

  1. ``root`` (the argument / ``--root``): ``root/NAME/`` or ``root/`` itself
  2. ``$PREALIGN_DATA/NAME/``
  3. the user cache: ``$XDG_CACHE_HOME/prealign/NAME/`` (default ``~/.cache/prealign/NAME/``)
  4. Debian's ``/usr/share/datasets/NAME/`` (e.g. ``apt install dataset-fashion-mnist``), skipped when
     ``PREALIGN_NO_SYSTEM_DATA=1`` (a fresh machine, simulated)
  5. a download from the publisher, only when asked (``download=True`` / ``prealign datasets fetch``),
     into ``root/NAME/`` if a root was given, else the user cache.

Downloads use urllib only. Each file is streamed to a temporary file in the target folder,
its md5/sha256 compared with the publisher's, and only then renamed into place with
``os.replace`` — an interrupted or corrupted download never leaves a file a later load accepts.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import PrealignError, UnknownNameError
from ..progress import progress_bar
from .cache import cache_dir
from .readers import reader_of
from .registry import DATASETS, DatasetSpec, RemoteFile

SYSTEM_DIR = Path("/usr/share/datasets")
NO_SYSTEM_ENV = "PREALIGN_NO_SYSTEM_DATA"  # "1": leave SYSTEM_DIR out of the search (as on a fresh machine)
APT_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}
_urlopen = urllib.request.urlopen  # patched in tests; never reached by the test suite's network-free paths


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UnknownNameError("data set", name, DATASETS)
    return DATASETS[name]


class DataNotFoundError(PrealignError):
    """A data set is not on this machine (and no download was asked for)."""


def system_data_skipped() -> bool:
    """True when ``$PREALIGN_NO_SYSTEM_DATA`` is ``1``: the system folder is not searched."""
    value = os.environ.get(NO_SYSTEM_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise PrealignError(f"{NO_SYSTEM_ENV}={value!r} is not understood; set it to 1 (skip {SYSTEM_DIR}) or 0")
    return value == "1"


def search_dirs(name: str, root=None) -> list[tuple[str, Path]]:
    """(label, folder) pairs in search order for data set ``name``."""
    dirs = []
    if root is not None:
        dirs += [("root", Path(root).expanduser() / name), ("root", Path(root).expanduser())]
    if os.environ.get("PREALIGN_DATA"):
        dirs.append(("$PREALIGN_DATA", Path(os.environ["PREALIGN_DATA"]).expanduser() / name))
    dirs.append(("user cache", cache_dir() / name))
    if not system_data_skipped():
        dirs.append(("system", SYSTEM_DIR / name))
    return dirs


def found_files(spec: DatasetSpec, folder: Path) -> list[Path]:
    """The files of ``spec`` that a load from ``folder`` reads, sorted, as the reader of its format
    says (:mod:`.readers`: the published archives, or their extracted contents); [] if it lacks them."""
    return reader_of(spec).files(spec, folder) or []


def has_files(spec: DatasetSpec, folder: Path) -> bool:
    """True when ``folder`` holds what the reader of ``spec``'s format needs to load it."""
    return folder.is_dir() and reader_of(spec).files(spec, folder) is not None


def locate(name: str, root=None) -> tuple[Path | None, list[Path]]:
    """(the first folder holding the data set or None, every folder looked at)."""
    spec = get_spec(name)
    looked = []
    for _, folder in search_dirs(name, root):
        looked.append(folder)
        if has_files(spec, folder):
            return folder, looked
    return None, looked


def available(name: str, root=None) -> tuple[bool, str]:
    """(whether ``load(name)`` works here without a download, where it would load from)."""
    spec = get_spec(name)
    if spec.offline:
        return True, spec.offline
    folder, _ = locate(name, root)
    return (True, str(folder)) if folder else (False, "not found")


def not_found(name: str, looked: list[Path]) -> DataNotFoundError:
    spec = get_spec(name)
    ways = [f"`prealign datasets fetch {name}`", "load(..., download=True) / --download",
            f"put the files ({', '.join(f.filename for f in spec.files)}) in a folder and set PREALIGN_DATA "
            f"to its parent (files in $PREALIGN_DATA/{name}/)"]
    skipped = f" ({SYSTEM_DIR} skipped: {NO_SYSTEM_ENV}=1)" if system_data_skipped() else ""
    if name in APT_PACKAGES:
        ways.append(f"`apt install {APT_PACKAGES[name]}`" + (f" and unset {NO_SYSTEM_ENV}" if skipped else ""))
    return DataNotFoundError(f"data set {name!r} not found; looked in {', '.join(map(str, looked))}{skipped}; "
                             f"get it with " + " or ".join(ways))


def _hasher(checksum: str):
    algo, _, hexdigest = checksum.partition(":")
    if algo not in ("md5", "sha256") or not hexdigest:
        raise PrealignError(f"bad checksum {checksum!r} in the data set registry; use 'md5:<hex>' or 'sha256:<hex>'")
    return hashlib.new(algo), hexdigest.lower()


def file_checksum(path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{algo}:{h.hexdigest()}"


def download_file(remote: RemoteFile, folder: Path, timeout: float = 60.0) -> Path:
    """Download ``remote`` into ``folder`` (trying its mirrors in order), verify, rename into place."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.filename
    errors = []
    for url in remote.urls:
        hasher, expected = _hasher(remote.checksum)
        fd, tmp = tempfile.mkstemp(prefix=f".{remote.filename}.", suffix=".part", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out, _urlopen(url, timeout=timeout) as response:
                total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
                with progress_bar(int(total) if total else None, f"download {remote.filename}") as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        hasher.update(chunk)
                        bar.advance(len(chunk))
            if hasher.hexdigest() != expected:
                errors.append(f"{url}: checksum mismatch (got {hasher.hexdigest()}, expected {expected})")
                continue
            os.replace(tmp, target)
            return target
        except (urllib.error.URLError, OSError, ValueError) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise PrealignError(f"could not download {remote.filename}: {'; '.join(errors)}. If this machine is offline, "
                        f"download it elsewhere and copy it to {folder}/ (or set PREALIGN_DATA)")


def fetch(name: str, root=None) -> Path:
    """Make sure data set ``name`` is on disk; download missing files (checksum verified). Returns its folder."""
    spec = get_spec(name)
    if spec.offline:
        return Path(spec.offline)
    folder, _ = locate(name, root)
    if folder is not None:
        return folder
    target = (Path(root).expanduser() if root is not None else cache_dir()) / name
    for remote in spec.files:
        if not (target / remote.filename).is_file():
            download_file(remote, target)
    return target
