"""Device selection: ``"auto"`` picks CUDA when present, else CPU."""
from __future__ import annotations

import torch

from .errors import PrealignError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``/``None``/``"cpu"``/``"cuda"``/``"cuda:1"``/``"mps"`` into a usable ``torch.device``."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PrealignError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type not in ("cpu", "cuda", "mps"):
        raise PrealignError(f"device {device!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrealignError(f"device {device!r} was asked for but CUDA is not available here; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise PrealignError(f"device {device!r} was asked for but this machine has {torch.cuda.device_count()} CUDA "
                            "device(s); use cuda:0 .. cuda:N-1, or auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PrealignError(f"device {device!r} was asked for but MPS is not available here; use --device cpu or auto")
    return dev


def describe_device(device) -> str:
    """``"cpu"``, or ``"cuda:0 (NVIDIA H200)"``: what the store's ``device`` column holds."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
