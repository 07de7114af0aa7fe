#!/usr/bin/env python
"""Does a model's result depend on the size of its batched group? Measured on 1 and 2 threads (issue 22).

    python scripts/batched_invariance.py [--models 16] [--samples 1000] [--epochs 1]

Two measurements, each on 1 and 2 torch threads:

1. ``stacked``: the engine batched runs use (:mod:`prealign.run.stacked`). 16 784-100-10 runs
   (mnist5k, methods cycled over every rule, one seed each) are trained alone with
   :func:`prealign.train` and as groups of 1, 2, 4, 8 and 16 (:func:`prealign.run.batched.train_runs`);
   a model counts as *different* if any of its final weights, feedback matrices or per-epoch
   numbers differ from its lone run in any bit.
2. ``bmm``: the alternative kernel, one batched GEMM (``torch.bmm``/``baddbmm``) over stacked
   weights, for the three products of a training step (``x Wᵀ + b``, ``δᵀ x``, ``δ B``) of the
   papers' layer shapes (:data:`SHAPES`): a model's slice counts as different if it differs from
   the same product computed alone (``addmm``/``mm``, what :func:`prealign.train` computes) or from
   the same model's slice in a group of one.

Prints one table per measurement and exits 1 if a stacked model differs (the invariant).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

RULES = ("bp", "fa", "ifa", "dfa", "usf", "brsf", "frsf", "kp", "wm")
SIZES = (1, 2, 4, 8, 16)


def _models(n: int):
    import torch

    import prealign as pa

    out = []
    for k in range(n):
        method = pa.get_method(RULES[k % len(RULES)])
        model = pa.mlp([784, 100, 10], rule=method.rule, generator=torch.Generator().manual_seed(k))
        method.prepare(model, generator=torch.Generator().manual_seed(k), progress=False)
        out.append(model)
    return out


def _same(a, b) -> bool:
    import math

    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _differs(res_a, model_a, res_b, model_b) -> bool:
    import torch

    weights = all(torch.equal(p, q) for p, q in zip(model_a.state_dict().values(), model_b.state_dict().values()))
    curves = all(_same(ra[k], rb[k]) for ra, rb in zip(res_a.curves, res_b.curves) for k in ra if not k.endswith("seconds"))
    return not (weights and curves and len(res_a.curves) == len(res_b.curves))


def stacked(n: int, samples: int, epochs: int) -> dict[int, int]:
    """``{group size: models that differ from their lone run}`` at the current thread count."""
    from prealign.data import load
    from prealign.run.batched import train_runs
    from prealign.run.trainer import train

    data = load("mnist5k").subset(samples, stratified=True, seed=0)
    models = _models(n)
    kw = dict(epochs=epochs, batch_size=64, lr=1e-3, device="cpu", progress=False)
    alone = [copy.deepcopy(m) for m in models]
    results = [train(m, data, seed=k, **kw) for k, m in enumerate(alone)]
    out = {}
    for size in SIZES:
        trained = [copy.deepcopy(m) for m in models]
        got = []
        for start in range(0, n, size):
            got += train_runs(trained[start:start + size], data, seeds=range(start, min(start + size, n)), **kw)
        out[size] = sum(_differs(results[k], alone[k], got[k], trained[k]) for k in range(n))
    return out


SHAPES = ((64, 784, 100), (64, 100, 10), (128, 784, 512), (128, 512, 512), (128, 3072, 512))  # (batch, in, out)


def bmm(n: int) -> dict[int, tuple[int, int]]:
    """``{group size: (slices that differ from the lone product, slices that differ from a group of one)}``
    over the three products of a training step (``x Wᵀ + b``, ``δᵀ x``, ``δ B``) of each layer shape in
    :data:`SHAPES` (the papers' MLP layers) and ``n`` models."""
    import torch

    out = {size: [0, 0] for size in SIZES}
    for batch, fan_in, fan_out in SHAPES:
        g = torch.Generator().manual_seed(fan_in * fan_out)
        x = torch.randn(n, batch, fan_in, generator=g)
        w = torch.randn(n, fan_out, fan_in, generator=g)
        b = torch.randn(n, fan_out, generator=g)
        d = torch.randn(n, batch, fan_out, generator=g)
        fb = torch.randn(n, fan_out, fan_in, generator=g)

        def products(lo: int, hi: int):
            return (torch.baddbmm(b[lo:hi, None], x[lo:hi], w[lo:hi].transpose(1, 2)),
                    torch.bmm(d[lo:hi].transpose(1, 2), x[lo:hi]), torch.bmm(d[lo:hi], fb[lo:hi]))

        alone = [(torch.addmm(b[k], x[k], w[k].t()), torch.mm(d[k].t(), x[k]), torch.mm(d[k], fb[k])) for k in range(n)]
        single = [products(k, k + 1) for k in range(n)]
        for size in SIZES:
            for start in range(0, n, size):
                group = products(start, min(start + size, n))
                for j in range(group[0].shape[0]):
                    k = start + j
                    out[size][0] += sum(not torch.equal(group[i][j], alone[k][i]) for i in range(3))
                    out[size][1] += sum(not torch.equal(group[i][j], single[k][i][0]) for i in range(3))
    return {size: tuple(v) for size, v in out.items()}


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    bad = 0
    for threads in (1, 2):
        torch.set_num_threads(threads)
        got = stacked(args.models, args.samples, args.epochs)
        bad += sum(got.values())
        print(f"stacked engine, {threads} thread(s): models (of {args.models}) differing from their lone run, by group size: "
              + ", ".join(f"{s}: {v}" for s, v in got.items()), flush=True)
        got = bmm(args.models)
        print(f"bmm kernel, {threads} thread(s): products (of {3 * len(SHAPES) * args.models}) differing from the lone "
              "product / from a "
              "group of one, by group size: " + ", ".join(f"{s}: {a}/{o}" for s, (a, o) in got.items()), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
