"""The suite: which rows exist (:data:`ROWS`), running them (:func:`run_bench`) and the Markdown table."""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..device import resolve_device
from ..errors import ConfigError, UnknownNameError
from .base import BenchRow, machine_info
from .batched import bench_batched
from .flops import bench_flops
from .hessian import bench_hessian
from .recipe import bench_recipe
from .step import bench_step, bench_zoo
from .sweep import bench_sweep, bench_sweep_store


# -- the suite --------------------------------------------------------------------------------------------
#: Every row family, in table order: name -> ``(device, quick) -> [BenchRow]``. A new family is one
#: entry here (its function in the module of its family, or a new module).
ROWS: dict[str, Callable[[torch.device, bool], list[BenchRow]]] = {
    "step": bench_step,
    "recipe": lambda dev, quick: [bench_recipe(dev, quick)],
    "flops": lambda dev, quick: [bench_flops(dev, quick)],
    "hessian": lambda dev, quick: [bench_hessian(dev, quick)],
    "sweep": lambda dev, quick: [*bench_sweep(quick), bench_sweep_store(quick)],
    "batched": bench_batched,
    "zoo": bench_zoo,
}


def run_bench(quick: bool = False, device: str | torch.device = "auto", only=None, threads: int | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Run the suite; returns ``{"machine": {...}, "quick": bool, "rows": [BenchRow.to_dict()], "seconds": float}``.

    ``only``: row names from :data:`ROWS`; ``threads``: torch intra-op threads for the run (default:
    torch's choice, one per core; 1 with ``quick`` on the CPU; the sweep row's single process always
    uses all cores).
    """
    dev = resolve_device(device)
    previous_threads = torch.get_num_threads()
    if threads is None and quick and dev.type == "cpu":
        threads = 1  # the CI smoke mode: small workloads, and steady under other processes' load
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        return _run(quick, dev, only, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run(quick, dev, only, log) -> dict:
    only = tuple(only) if only else tuple(ROWS)
    unknown = [name for name in only if name not in ROWS]
    if unknown:
        raise UnknownNameError("benchmark row", unknown[0], ROWS)
    start = time.perf_counter()
    rows: list[BenchRow] = []
    for name, bench in ROWS.items():
        if name not in only:
            continue
        t = time.perf_counter()
        rows.extend(bench(dev, quick))
        if log:
            log(f"{name}: {time.perf_counter() - t:.1f} s")
    order = {name: i for i, name in enumerate(ROWS)}
    rows.sort(key=lambda r: order[r.key.split("/")[0]])
    return {"machine": machine_info(dev), "quick": quick, "rows": [r.to_dict() for r in rows],
            "seconds": time.perf_counter() - start}


def format_table(result: dict) -> str:
    """The rows as a Markdown table (ratio, spread, target, pass)."""
    lines = ["| row | ratio | spread (IQR of paired ratios) | target | ok |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["skipped"]:
            lines.append(f"| {r['title']} | skipped | {r['skipped']} | {r['target']} | – |")
            continue
        lo, hi = r["spread"]
        ok = "yes" if r["passed"] else "no"
        lines.append(f"| {r['title']} | {r['ratio']:.2f} | {lo:.2f}–{hi:.2f} | {r['target'].replace('<=', '≤').replace('>=', '≥')} | {ok} |")
    m = result["machine"]
    lines.append("")
    lines.append(f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), device {m['device']}"
                 f"{', ' + m['gpu'] if 'gpu' in m else ''}; {'quick' if result['quick'] else 'full'} suite in {result['seconds']:.0f} s")
    return "\n".join(lines)
