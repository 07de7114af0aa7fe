"""Row 3, ``flops``: achieved training FLOP/s of an FA step / FLOP/s of a large float32 GEMM."""
from __future__ import annotations

import torch

from .base import MLP_DIMS, BenchRow, _gen, _row, _steps, interleaved, mlp_flops_per_step


# -- row 3: achieved FLOP/s / GEMM FLOP/s -------------------------------------------------------------
def bench_flops(device: torch.device, quick: bool) -> BenchRow:
    """FA training steps of 784-512-512-10 (batch 128) interleaved with a square float32 GEMM."""
    from ..models import mlp

    batch, n = 128, (3 if quick else 10)
    size = (1024 if quick else 2048) if device.type == "cpu" else 8192
    x = torch.randn(batch, 784, generator=_gen(1)).to(device)
    y = torch.randint(0, 10, (batch,), generator=_gen(2)).to(device)
    train = _steps(mlp(MLP_DIMS, "fa", generator=_gen(0)).to(device), x, y, n)
    a = torch.randn(size, size, generator=_gen(3)).to(device)
    b = torch.randn(size, size, generator=_gen(4)).to(device)
    c = torch.empty(size, size, device=device)
    gemm_reps = 1 if device.type == "cpu" else 20

    def gemm():
        for _ in range(gemm_reps):
            torch.mm(a, b, out=c)

    times = interleaved({"train": train, "gemm": gemm}, 3 if quick else 7, device)
    step_flops = mlp_flops_per_step(MLP_DIMS, batch)
    gemm_flops = 2 * size ** 3 * gemm_reps
    # achieved/peak = (step_flops·n / t_train) / (gemm_flops / t_gemm) = scale · t_gemm / t_train
    row = _row("flops/mlp/fa", "achieved FA training FLOP/s / GEMM FLOP/s, 784-512-512-10, batch 128", ">= 0.5",
               times["train"], times["gemm"], invert=True, scale=step_flops * n / gemm_flops)
    row.details = {"flops_per_step": step_flops, "flop_count": "6*batch*sum(n_in*n_out)",
                   "train_gflops": step_flops * n / row.a_seconds / 1e9, "gemm_gflops": gemm_flops / row.b_seconds / 1e9,
                   "gemm_size": size}
    return row
