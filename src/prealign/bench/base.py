"""What every row of the bench uses: :class:`BenchRow`, interleaved timing, the paired-ratio row
(median of the per-repetition ratios, interquartile spread), and the shared models, steps and data."""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


MLP_DIMS = [784, 512, 512, 10]
SMALL_DIMS = [784, 100, 10]
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # torchvision's MNIST Normalize constants


@dataclass
class BenchRow:
    """One line of the table. ``ratio``: median(A)/median(B) oriented as the target says;
    ``spread``: (25th, 75th percentile) of the per-repetition paired ratios."""

    key: str
    title: str
    ratio: float | None
    target: str
    spread: tuple[float, float] | None = None
    passed: bool | None = None
    reps: int = 0
    a_seconds: float | None = None  # median time of one repetition of A
    b_seconds: float | None = None
    details: dict = field(default_factory=dict)
    skipped: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spread"] = list(self.spread) if self.spread is not None else None
        return d


# -- timing ------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], float | None]], reps: int, device: torch.device,
                warmup: int = 1) -> dict[str, list[float]]:
    """Time each callable ``reps`` times, interleaved, order reversed every repetition.

    A callable may return its own measured seconds (e.g. a trainer's epoch time without its
    set-up); otherwise its wall time is used. Returns ``{name: [seconds per repetition]}``.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            start = time.perf_counter()
            own = fns[name]()
            _sync(device)
            times[name].append(own if own is not None else time.perf_counter() - start)
    return times


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def _row(key, title, target, a: list[float], b: list[float], *, invert: bool = False, scale: float = 1.0,
         details: dict | None = None) -> BenchRow:
    """Ratio: the median over repetitions of the paired ratio ``scale · a_i/b_i`` (``invert``: ``b_i/a_i``),
    robust to load drifting between repetitions; spread: its interquartile range."""
    ma, mb = statistics.median(a), statistics.median(b)
    pairs = [scale * ((y / x) if invert else (x / y)) for x, y in zip(a, b)]
    ratio = statistics.median(pairs)
    op, bound = target.split()
    passed = ratio <= float(bound) if op == "<=" else ratio >= float(bound)
    return BenchRow(key, title, ratio, target, _quartiles(pairs), passed, len(a), ma, mb, details or {})


# -- shared pieces -------------------------------------------------------------------------------
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _adam_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _steps(model, x, y, n):
    from ..run.trainer import _make_optimizer  # the trainer's own Adam, so the bench follows what users run

    opt = _make_optimizer("adam", model.parameters(), 1e-4, 0.0, 0.0)

    def run():
        for _ in range(n):
            _adam_step(model, opt, x, y)
    return run


def _load(name: str, n_train: int | None = None):
    from ..data import load

    ds = load(name)
    if n_train is not None and n_train < len(ds.x_train):
        ds = ds.subset(n_train, stratified=True, seed=0)
    return ds


def mlp_flops_per_step(dims, batch: int) -> int:
    """``6 · batch · Σ n_in·n_out``: forward, input error and weight gradient, 2 FLOPs per multiply-add.

    (FA's and BP's first layer skip the input error, so the work done is ``2·batch·dims[0]·dims[1]``
    less; the convention counts it, as FLOP/s figures for training usually do.)"""
    return 6 * batch * sum(a * b for a, b in zip(dims[:-1], dims[1:]))


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
