"""Row 6, ``batched``: S sequential :func:`prealign.train` runs / one vectorised
:func:`prealign.run.batched.train_batched` run of the same S models."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .base import SMALL_DIMS, BenchRow, _gen, _load, _row, interleaved


# -- row 6: vectorized multi-seed training ----------------------------------------------------------------
def batched_models(s: int) -> list[nn.Module]:
    """S 784-100-10 models over methods fa, ifa, bp and FA at α_W = 1 (different seeds)."""
    from ..methods import get_method
    from ..models import mlp

    out = []
    for i in range(s):
        method, alpha = [("fa", 2.0), ("ifa", 2.0), ("bp", 2.0), ("fa", 1.0)][i % 4]
        model = mlp(SMALL_DIMS, "fa", generator=_gen(i), alpha_w=alpha)
        get_method(method).prepare(model, generator=_gen(i))
        out.append(model)
    return out


def bench_batched(device: torch.device, quick: bool) -> list[BenchRow]:
    from ..run.batched import train_batched
    from ..run.trainer import train

    ds = _load("mnist5k", 500 if quick else 2000)
    epochs = 1 if quick else 2
    rows = []
    for s in ((4,) if quick else (8, 16)):
        models = batched_models(s)

        def sequential():
            for k, m in enumerate(models):
                train(copy.deepcopy(m), ds, epochs=epochs, batch_size=64, lr=1e-4, seed=k, device=device,
                      progress=False, grad_alignment=False)

        def batched():
            train_batched([copy.deepcopy(m) for m in models], ds, epochs=epochs, batch_size=64, lr=1e-4,
                          seeds=range(s), device=device, progress=False)

        times = interleaved({"sequential": sequential, "batched": batched}, 1 if quick else 3, device, warmup=0)
        row = _row(f"batched/{s}", f"{s} sequential prealign.train runs / one batched run, 784-100-10", ">= 1",
                   times["sequential"], times["batched"])
        row.details = {"models": s, "methods": "fa, ifa, bp, fa(alpha_w=1) cycled", "n_train": len(ds.x_train),
                       "epochs": epochs, "sequential_s": row.a_seconds, "batched_s": row.b_seconds,
                       "note": "both evaluate test loss/accuracy and angles each epoch; gradient alignment off"}
        rows.append(row)
    return rows
