"""The analyses an experiment's ``[[analysis]]`` sections name, taken from the one analysis
registry (:mod:`prealign.reports.registry`): ``kind`` is an entry's name or alias, and the
entry's ``rows(ctx, params)`` adds its columns to the result rows (implementations in
:mod:`prealign.analysis.columns`). Tracked analyses (``track = true``) run *during* training as
the entry's ``tracker`` (:func:`callbacks_for`); their values land in the per-epoch curves.
"""
from __future__ import annotations

from ..analysis.columns import Unavailable, trajectory_file
from ..reports.registry import REGISTRY

#: ``kind`` -> ``rows(ctx, params)``, every name and alias of every entry that has an experiment form.
ANALYSES = {name: entry.rows for entry in REGISTRY.values() if entry.rows is not None
            for name in (entry.name, *entry.aliases)}

__all__ = ["ANALYSES", "Unavailable", "callbacks_for", "trackable", "trajectory_file"]


def callbacks_for(track: list[dict]) -> list:
    """Trainer callbacks for the ``track = true`` analyses (built inside the worker process)."""
    out = []
    for spec in track:
        entry = REGISTRY.get(spec["kind"])
        if entry is None or entry.tracker is None:
            raise Unavailable(f"analysis '{spec['kind']}' cannot be tracked during training")
        out.append(entry.tracker(spec))
    return out


def trackable(spec: dict) -> bool:
    """True when the tracker this spec asks for can be built here."""
    try:
        callbacks_for([spec])
    except (Unavailable, ImportError, AttributeError, TypeError):
        return False
    return True

