"""Run health: no verdict on a budget artefact.

A claim compares methods; a comparison with a method that has not learned, or has not finished
learning, measures the budget, not the method. Every method a claim reads (its sides and the
partners of ``minus``) is checked on the runs' recorded curves (columns the runner adds to each
row, see :func:`prealign.experiments.runner._metrics`):

- **at chance** — its best test accuracy, averaged over seeds, is within ``CHANCE_MARGIN`` of
  chance (1 / number of classes) in a cell of the other grid axes. With ``learns = "somewhere"``
  (claims about *where* a method is trainable: IFA Fig. 3a–c, where failing in the hard cells is
  the finding) the method is at chance only if it is so in *every* cell of the experiment — the
  budget must let it learn in the easy ones;
- **still improving** — over the last fifth of its epochs it gained more than ``IMPROVING`` (2
  points: best test accuracy there minus the best before; seed mean, in some cell where it
  learns). FA at lr 1e-4 creeps up about log-linearly for hundreds of epochs — ≈ 1 point per
  fifth of any run past its start-up (mnist5k, 784-128-128-10: 1.8 points at 50 epochs, 0.9 at
  60, 1.1 at 80) — so a slope of one point per fifth is "converging", not a cut-off climb;
- **stopped by patience at epoch ≤ 1** — early stopping ended a run whose best epoch was 0 or 1.

Any of these makes the claim *inconclusive (budget-limited: …)*, whatever its test says. Runs
that trained on no data (``epochs = 0``) and claims on quantities measured before data training
(``trained = false``: the angle after noise, a meta-loss) have no such check.
"""
from __future__ import annotations

from .units import finite

CHANCE_MARGIN = 0.05  # within 5 points of chance accuracy is "at chance"
IMPROVING = 0.02  # more than 2 points gained over the last fifth of the epochs is "still improving"
LEARNS = ("each", "somewhere")


def methods(rows: list[dict], cell) -> list[dict]:
    """Per compared method (its ``method`` label): its cells with the seed-mean best test accuracy,
    chance, the seed-mean late gain, and its early-stopped runs — the record the audit re-checks."""
    by: dict = {}
    for r in rows:
        acc, chance = finite(r, "best_test_acc"), finite(r, "chance_acc")
        if acc is None or chance is None or not finite(r, "epochs_run"):
            continue  # trained on no data: nothing to check
        m = by.setdefault(str(r.get("method")), {"cells": {}, "stalled": 0})
        c = m["cells"].setdefault(repr(cell(r)), {"acc": [], "gain": [], "chance": chance})
        c["acc"].append(acc)
        gain = finite(r, "late_gain")
        if gain is not None:
            c["gain"].append(gain)
        best = finite(r, "best_epoch")
        if r.get("stopped_early") and best is not None and best <= 1:
            m["stalled"] += 1
    out = []
    for name, m in sorted(by.items()):
        cells = [{"cell": k, "acc": sum(c["acc"]) / len(c["acc"]), "chance": c["chance"],
                  "gain": sum(c["gain"]) / len(c["gain"]) if c["gain"] else None} for k, c in sorted(m["cells"].items())]
        out.append({"method": name, "cells": cells, "stalled": m["stalled"]})
    return out


def at_chance(record: dict, learns: str = "each") -> bool:
    """True when the method is at chance (in some cell; ``"somewhere"``: in every cell)."""
    flags = [c["acc"] < c["chance"] + CHANCE_MARGIN for c in record["cells"]]
    return bool(flags) and (all(flags) if learns == "somewhere" else any(flags))


def problems(records: list[dict], learns: str = "each", everywhere: list[dict] | None = None) -> list[str]:
    """The reasons a comparison of these methods is a budget artefact (empty: healthy).
    ``records``: the compared cells (:func:`methods`); ``everywhere``: with ``learns =
    "somewhere"``, each method's records over all its cells in the experiment, where it must learn
    somewhere (at chance in the compared cells is then the finding, not an artefact)."""
    out = []
    wide = {m["method"]: m for m in (everywhere or [])}
    for m in records:
        cells = m["cells"]
        chance = [c for c in cells if c["acc"] < c["chance"] + CHANCE_MARGIN]
        scope = wide.get(m["method"], m) if learns == "somewhere" else m
        if at_chance(scope, learns):
            worst = min(scope["cells"], key=lambda c: c["acc"])
            n_at = sum(c["acc"] < c["chance"] + CHANCE_MARGIN for c in scope["cells"])
            out.append(f"{m['method']} at chance in {n_at} of {len(scope['cells'])} cell(s) "
                       f"(best test acc {100 * worst['acc']:.1f}%, chance {100 * worst['chance']:.0f}%)")
        learning = [c for c in cells if c not in chance]
        rising = [c for c in learning if c["gain"] is not None and c["gain"] > IMPROVING]
        if rising:
            top = max(rising, key=lambda c: c["gain"])
            out.append(f"{m['method']} still improving at its last epoch in {len(rising)} of {len(cells)} cell(s) "
                       f"(+{100 * top['gain']:.1f} points over the last fifth of its epochs)")
        if m["stalled"]:
            out.append(f"{m['method']}: {m['stalled']} run(s) stopped by patience with best epoch ≤ 1")
    return out


__all__ = ["CHANCE_MARGIN", "IMPROVING", "LEARNS", "at_chance", "methods", "problems"]
