"""An audit of a report's verdicts, re-checked from what each verdict recorded, not from its wording.

:func:`audit` returns the problems it finds (an empty list: the report passes):

1. **units** — a part tests more units than there are distinct seeds among the runs it read;
2. **decidable** — a held / not held verdict where a part's design could not reach p ≤ α;
3. **one test, one row** — two counted claims share a test on the same numbers (a part signature:
   the declared test and the run keys it read);
4. **health** — a held / not held verdict comparing a method at chance (the recorded seed-mean
   best test accuracy per cell against chance + :data:`.health.CHANCE_MARGIN`).

:func:`audit_folder` reads the ``claims.json`` files a reproduction wrote (one folder per
experiment, or a folder of them) and audits them together.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import health

VERDICTS = ("held", "not held")


def _get(v, key):
    return v.get(key) if isinstance(v, dict) else getattr(v, key)


def audit(verdicts) -> list[str]:
    """Problems of ``verdicts`` (:class:`~prealign.experiments.claims.Verdict` or their ``to_dict()``)."""
    problems, owner = [], {}
    for v in verdicts:
        vid, status = f"{_get(v, 'experiment')}/{_get(v, 'id')}", _get(v, "status")
        if _get(v, "same_as"):
            continue  # a pointer to the claim that is counted
        for i, part in enumerate(_get(v, "parts") or []):
            where = f"{vid} part {i + 1}"
            if part.get("status") == "not run" or part.get("exact"):
                continue
            n, seeds = part.get("n"), part.get("seeds") or []
            if n is not None and n > len(seeds):
                problems.append(f"{where}: tests {n} units but its runs hold {len(seeds)} distinct seed(s)")
            sp, alpha = part.get("smallest_p"), part.get("alpha", 0.05)
            if status in VERDICTS and (sp is None or sp > alpha):
                problems.append(f"{where}: {status} although its design's smallest p {sp} exceeds α = {alpha}")
            if status in VERDICTS:
                learns = part.get("learns", "each")
                for m in part.get("methods") or []:
                    if health.at_chance(m, learns):
                        problems.append(f"{where}: {status} compares {m['method']}, which is at chance")
            sig = part.get("signature")
            if sig:
                if sig in owner and owner[sig] != vid:
                    problems.append(f"{vid} and {owner[sig]} share a test on the same numbers")
                owner.setdefault(sig, vid)
    return problems


def audit_folder(*folders) -> tuple[list[str], list[dict]]:
    """``(problems, verdicts)`` of every ``claims.json`` under ``folders`` (each experiment's folder
    of a reproduction, or its output folder), the same claim read once."""
    seen, verdicts = set(), []
    for folder in folders:
        folder = Path(folder)
        files = [folder / "claims.json"] if (folder / "claims.json").exists() else sorted(folder.glob("*/claims.json"))
        for f in files:
            for v in json.loads(f.read_text())["claims"]:
                key = (v["experiment"], v["id"])
                if key not in seen:
                    seen.add(key)
                    verdicts.append(v)
    return audit(verdicts), verdicts


__all__ = ["audit", "audit_folder"]
