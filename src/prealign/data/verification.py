"""``verify(name)``: the files found for a data set against the publisher's checksums and the registry.

Each published file is compared with the registry's checksum (md5 or sha256, as the publisher
gives it); a ``.gz`` copy that was recompressed (Debian) or stored unpacked passes when its
uncompressed content matches ``RemoteFile.content``. Then the data set is loaded, which runs the
structural checks of :mod:`prealign.data.checks` (sample counts, image shape, label range). CLI:
``prealign datasets verify NAME [--root DIR] [--json]``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import PrealignError
from .checks import fix_for
from .formats import find_file, read_bytes
from .identity import tensors_sha256
from .registry import RemoteFile
from .sources import file_checksum, found_files, get_spec, locate, not_found


def check_file(remote: RemoteFile, path: Path) -> dict:
    """``{"file", "status": "ok" | "mismatch", "detail"}`` for one published file found at ``path``."""
    algo, _, expected = remote.checksum.partition(":")
    found = file_checksum(path, algo)
    if found == remote.checksum:
        return {"file": str(path), "status": "ok", "detail": f"{algo} matches the publisher's"}
    detail = f"{algo} expected {expected}, found {found.partition(':')[2]}"
    if remote.content:
        content = hashlib.new(algo, read_bytes(path)).hexdigest()
        if f"{algo}:{content}" == remote.content:
            return {"file": str(path), "status": "ok",
                    "detail": f"{algo} of the uncompressed content matches the publisher's (a recompressed copy)"}
        detail += f"; uncompressed {algo} expected {remote.content.partition(':')[2]}, found {content}"
    return {"file": str(path), "status": "mismatch", "detail": detail}


def verify(name: str, root=None) -> dict:
    """Check data set ``name`` where :func:`prealign.data.load` would find it (``root`` first).

    Returns ``{"name", "folder", "files": [{"file", "status", "detail"}], "contents": {"status",
    "detail"}, "fingerprint", "problems": [one line each], "ok"}``; ``status`` is ``ok``,
    ``mismatch`` or ``unchecked`` (an extracted copy: the publisher checksums only the archive).
    Raises UnknownNameError / DataNotFoundError when the data set is unknown or not here."""
    from .loading import load
    from .corruptions import CORRUPTIONS

    spec = get_spec(name)
    folder, files, problems = None, [], []
    if not spec.offline:
        folder, looked = locate(name, root)
        if folder is None:
            raise not_found(name, looked)
        for remote in spec.files:
            path = find_file(folder, remote.filename)
            if path is not None:
                files.append(check_file(remote, path))
        if not files:  # an extracted archive (CIFAR-C .npy files, stl10_binary/)
            files = [{"file": str(p), "status": "unchecked",
                      "detail": f"extracted copy; the publisher checksums only {spec.files[0].filename}"}
                     for p in found_files(spec, folder)]
    problems += [f"data file {f['file']} differs from the published file ({f['detail']}); {fix_for(spec, f['file'])}"
                 for f in files if f["status"] == "mismatch"]
    fingerprint = None
    try:
        if spec.format == "cifar-c":
            for corruption in CORRUPTIONS:
                load(name, root, corruption=corruption, severity=1)
            detail = f"{len(CORRUPTIONS)} corruptions x 5 severities of {spec.sizes[1]:,} test images"
        else:
            ds = load(name, root)
            fingerprint = tensors_sha256(ds.x_train, ds.y_train, ds.x_test, ds.y_test)
            detail = (f"{len(ds.y_train):,} train / {len(ds.y_test):,} test, {'x'.join(map(str, spec.shape))}, "
                      f"labels in 0..{spec.num_classes - 1}")
        contents = {"status": "ok", "detail": detail + " as the registry says"}
    except PrealignError as err:
        contents = {"status": "mismatch", "detail": str(err)}
        problems.append(str(err))
    return {"name": name, "folder": str(folder) if folder else spec.offline, "files": files, "contents": contents,
            "fingerprint": fingerprint, "problems": problems, "ok": not problems}


__all__ = ["check_file", "verify"]
