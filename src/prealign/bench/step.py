"""Rows 1 and 7, step time per rule / BP: the IFA paper's MLP and LeNet (``step``), ResNet-20 and the
ViT of the model zoo (``zoo``). Same weights, same batch, same Adam on both sides."""
from __future__ import annotations

import statistics

import torch

from .base import MLP_DIMS, BenchRow, _gen, _row, _steps, interleaved


# -- row 1: step time per rule / BP ----------------------------------------------------------------
STEP_TARGETS = {"brsf": "<= 1.10", "wm": "<= 1.10"}
"""Step-time targets over BP (issue 22) where a rule's definition costs work BP does not do: brsf
draws W-sized random magnitudes every step, wm runs its mirror (two noise-driven products per
layer) every tenth; every other rule ``<= 1.05``."""


def bench_step(device: torch.device, quick: bool) -> list[BenchRow]:
    """Every rule vs BP: same weights, same batch, same Adam; one repetition = ``n`` training steps."""
    from ..models import lenet, mlp
    from ..feedback import RULES

    batch = 128
    reps = 3 if quick else 15
    specs = [
        ("mlp", "784-512-512-10", lambda rule: mlp(MLP_DIMS, rule, generator=_gen(0)), (batch, 784), 3 if quick else 20),
        ("lenet", "LeNet", lambda rule: lenet((1, 28, 28), 10, rule, generator=_gen(0)), (batch, 1, 28, 28), 2 if quick else 6),
    ]
    rules = ["bp", "fa"] if quick else list(RULES)
    rows = []
    for key, label, build, shape, n in specs:
        x = torch.randn(shape, generator=_gen(1)).to(device)
        y = torch.randint(0, 10, (batch,), generator=_gen(2)).to(device)
        fns = {rule: _steps(build(rule).to(device), x, y, n) for rule in rules}
        times = interleaved(fns, reps, device)
        for rule in rules:
            if rule == "bp":
                continue
            rows.append(_row(f"step/{key}/{rule}", f"{rule.upper()} / BP step time, {label}, batch {batch}",
                             STEP_TARGETS.get(rule, "<= 1.05"), times[rule], times["bp"],
                             details={"steps_per_rep": n, "ms_per_step": statistics.median(times[rule]) / n * 1e3,
                                      "bp_ms_per_step": statistics.median(times["bp"]) / n * 1e3}))
    return rows


# -- row 7: step time of the model zoo per rule / BP ----------------------------------------------------
ZOO = (("resnet20", "ResNet-20"), ("vit", "ViT"))


def bench_zoo(device: torch.device, quick: bool) -> list[BenchRow]:
    """FA and DFA vs BP on ResNet-20 and the ViT: same weights, same batch, same Adam (as row 1)."""
    from ..models import build_model

    batch = 8 if quick else 128
    reps, n = (3, 1) if quick else (9, 3)
    x = torch.rand(batch, 3, 32, 32, generator=_gen(1)).to(device)
    y = torch.randint(0, 10, (batch,), generator=_gen(2)).to(device)
    rows = []
    for key, label in ZOO:
        fns = {rule: _steps(build_model(key, (3, 32, 32), 10, rule=rule, generator=_gen(0)).to(device), x, y, n)
               for rule in ("bp", "fa", "dfa")}
        times = interleaved(fns, reps, device)
        for rule in ("fa", "dfa"):
            rows.append(_row(f"zoo/{key}/{rule}", f"{rule.upper()} / BP step time, {label}, batch {batch}", "<= 1.05",
                             times[rule], times["bp"], details={"steps_per_rep": n,
                                                                "ms_per_step": statistics.median(times[rule]) / n * 1e3,
                                                                "bp_ms_per_step": statistics.median(times["bp"]) / n * 1e3}))
    return rows
