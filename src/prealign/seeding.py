"""Seeded random streams that leave the caller's global RNG alone: ``seed=`` alone fixes a run.

A run of :func:`prealign.train` with ``seed = s`` draws from these streams only:

=====================  ==========================================================================
batch order            ``torch.Generator().manual_seed(s)`` (a ``torch.randperm`` per epoch)
gradient-alignment     ``torch.Generator().manual_seed(s + 7919)`` (one fixed batch)
batch
rules' per-step draws  :func:`prealign.seed_rules` ``(model, s)``: one generator per feedback layer
                       whose rule draws at each step (brsf magnitudes, wm noise), on its device
everything else        torch's global RNG of the CPU and of the model's device, set for the call to
                       a stream seeded with :func:`stream_seed` ``(s, "modules")`` by
                       :func:`global_stream`: dropout masks, any module's ``torch.rand*``, a
                       ``DataLoader``'s shuffling and worker seeds (unless it holds a generator of
                       its own)
=====================  ==========================================================================

and the caller's global RNG states are exactly what they were when the call returns (or
raises). :func:`prealign.pretrain_noise` does the same from the seed it draws from its
``generator``. Streams are derived by SHA-256, never by drawing from another torch RNG, so no
stream depends on how much another one was used.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def stream_seed(seed: int, stream: str) -> int:
    """The 63-bit seed of the stream named ``stream`` of a run seeded ``seed`` (the first 8 bytes
    of SHA-256 of ``"prealign.{stream}:{seed}"``; independent of torch's RNG)."""
    digest = hashlib.sha256(f"prealign.{stream}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def cuda_devices() -> list[int]:
    """The CUDA devices whose RNG may have been used (the initialised ones; none before CUDA starts)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


@contextmanager
def global_stream(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Within the block, torch's global RNG of the CPU and of ``device`` (a CUDA or MPS device;
    None or CPU: the CPU's alone) is a stream seeded with ``seed``; on exit every global RNG state
    the caller had (CPU, every initialised CUDA device, MPS) is back, also when the block raises.
    The block may set the states itself (a resumed run restores its stream)."""
    device = torch.device("cpu" if device is None else device)
    forked = cuda_devices()
    index = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        forked = sorted({*forked, index})
    mps = torch.mps.get_rng_state() if device.type == "mps" else None
    try:
        with torch.random.fork_rng(devices=forked):
            torch.default_generator.manual_seed(int(seed))
            if index is not None:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(int(seed))
            if mps is not None:
                torch.mps.manual_seed(int(seed))
            yield
    finally:
        if mps is not None:
            torch.mps.set_rng_state(mps)


__all__ = ["cuda_devices", "global_stream", "stream_seed"]
