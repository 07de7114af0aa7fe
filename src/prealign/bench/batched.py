"""Row 6, ``batched``: S seeds trained one after another / the same S runs as one batched group.

Both sides are complete :func:`prealign.train` runs (784-100-10 MLPs on 2,000 mnist5k images, 2
epochs, batch 64, Adam 1e-4; methods fa, ifa, bp and FA at α_W = 1 cycled, one seed each; test
loss/accuracy and angles measured every epoch, gradient alignment off): ``sequential`` trains them
with :func:`prealign.train` one after another, ``batched`` as one group
(:func:`prealign.run.batched.train_batched`). Repetitions are interleaved; the ratio is the median
of the paired ratios, the spread their interquartile range. Targets (issue 22): ≥ 2.0 at S = 8,
≥ 2.5 at S = 16.

Every row also times ``floor``: the matrix products those S runs compute (each training step's
forward, weight-gradient and input-error products, the evaluations' forward products) and their
fused Adam updates, as bare ATen calls with nothing else. A group keeps every run bitwise as alone
(:mod:`prealign.run.stacked`), so it must compute exactly these products per model, and
``details["ceiling"]`` = sequential / floor bounds what any such engine can reach on this machine.
``details["bitwise_equal"]``: the group's final weights equal the sequential runs' (checked on
the timed runs themselves).
"""
from __future__ import annotations

import copy
import statistics

import torch
from torch import nn

TARGETS = {8: ">= 2.0", 16: ">= 2.5"}
DIMS = [784, 100, 10]


def batched_models(s: int) -> list[nn.Module]:
    """S 784-100-10 models over methods fa, ifa, bp and FA at α_W = 1 (different seeds)."""
    from ..methods import get_method
    from ..models import mlp

    out = []
    for i in range(s):
        method, alpha = [("fa", 2.0), ("ifa", 2.0), ("bp", 2.0), ("fa", 1.0)][i % 4]
        gen = torch.Generator().manual_seed(i)
        model = mlp(DIMS, "fa", generator=gen, alpha_w=alpha)
        get_method(method).prepare(model, generator=torch.Generator().manual_seed(i))
        out.append(model)
    return out


def products_floor(models: list[nn.Module], x: torch.Tensor, x_test: torch.Tensor, *, epochs: int, batch_size: int,
                   lr: float) -> None:
    """The products and fused Adam updates of ``models``' training and evaluation, nothing else
    (module docstring): per model and step ``x Wᵀ + b`` per layer, ``δᵀ x`` per layer, ``δ F`` below
    the top layer; per evaluation (training set at epoch 0, test set every epoch) the forward
    products; ``torch._fused_adam_`` over the model's parameters each step. Values are not
    meaningful (random errors); only the time is."""
    n = len(x)
    for k, m in enumerate(models):
        layers = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
        params = [p.detach().clone() for p in m.parameters()]
        grads = [torch.zeros_like(p) for p in params]
        avg, sq = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
        steps = [torch.zeros((), dtype=torch.float32) for _ in params]
        ws = [(params[2 * i], params[2 * i + 1]) for i in range(len(layers))]
        order = torch.Generator().manual_seed(k)
        for split in [x] + [x_test] * (epochs + 1):  # evaluations: training set at epoch 0, test set each epoch
            h = split
            for w, b in ws:
                h = torch.addmm(b, h, w.t())
        for _ in range(epochs):
            perm = torch.randperm(n, generator=order)
            for i in range(0, n, batch_size):
                h = [x.index_select(0, perm[i:i + batch_size])]
                for w, b in ws:
                    h.append(torch.addmm(b, h[-1], w.t()))
                g = torch.randn_like(h[-1])
                for li in reversed(range(len(ws))):
                    torch.mm(g.t(), h[li], out=grads[2 * li])
                    torch.sum(g, 0, out=grads[2 * li + 1])
                    if li:
                        g = torch.mm(g, ws[li][0])
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(params, grads, avg, sq, [], steps, lr=lr, beta1=0.9, beta2=0.999, weight_decay=0.0,
                                   eps=1e-8, amsgrad=False, maximize=False)


def bench_batched(device: torch.device, quick: bool) -> list:
    from ..run.batched import train_batched
    from ..run.trainer import train
    from .base import _load, _row, interleaved  # the suite's shared pieces

    ds = _load("mnist5k", 500 if quick else 2000)
    epochs, reps = (1, 1) if quick else (2, 5)
    x, x_test = ds.x_train.reshape(len(ds.x_train), -1).to(device), ds.x_test.reshape(len(ds.x_test), -1).to(device)
    rows = []
    for s in ((4,) if quick else (8, 16)):
        models = batched_models(s)
        finals: dict[str, list[nn.Module]] = {}

        def sequential():
            finals["sequential"] = [copy.deepcopy(m) for m in models]
            for k, m in enumerate(finals["sequential"]):
                train(m, ds, epochs=epochs, batch_size=64, lr=1e-4, seed=k, device=device, progress=False,
                      grad_alignment=False)

        def batched():
            finals["batched"] = [copy.deepcopy(m) for m in models]
            train_batched(finals["batched"], ds, epochs=epochs, batch_size=64, lr=1e-4, seeds=range(s), device=device,
                          progress=False)

        def floor():
            products_floor(models, x, x_test, epochs=epochs, batch_size=64, lr=1e-4)

        times = interleaved({"sequential": sequential, "batched": batched, "floor": floor}, reps, device)
        row = _row(f"batched/{s}", f"{s} seeds one after another / one batched group, 784-100-10",
                   TARGETS.get(s, ">= 1"), times["sequential"], times["batched"])
        equal = all(torch.equal(p, q) for a, b in zip(finals["sequential"], finals["batched"])
                    for p, q in zip(a.state_dict().values(), b.state_dict().values()))
        row.details = {"models": s, "methods": "fa, ifa, bp, fa(alpha_w=1) cycled", "n_train": len(ds.x_train),
                       "epochs": epochs, "sequential_s": row.a_seconds, "batched_s": row.b_seconds,
                       "floor_s": statistics.median(times["floor"]),
                       "ceiling": statistics.median(a / f for a, f in zip(times["sequential"], times["floor"])),
                       "bitwise_equal": equal,
                       "note": "both evaluate test loss/accuracy and angles each epoch; gradient alignment off; "
                               "ceiling = sequential / the runs' products and Adam updates alone"}
        if not equal:
            row.passed = False
            row.details["error"] = "the batched group's weights differ from the sequential runs'"
        rows.append(row)
    return rows
