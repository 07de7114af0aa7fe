"""Golden numbers: the default ``prealign compare`` at a small budget, every method, bitwise (issue 12).

The per-epoch metrics of each run — losses, accuracies, alignment and gradient angles, on one
torch thread on the CPU — must equal ``tests/golden/compare_small.json`` exactly. A change that
moves any of them (a rule, an initialisation, the trainer, the data pipeline) fails here; if the
move is intended, regenerate the file in the same commit and say why in its message::

    PREALIGN_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

Bitwise holds for one torch version on one CPU instruction set (GEMM kernels differ between
AVX2 and AVX-512): the file records both, and on another one the numbers are compared to a
relative 1e-4 instead, with a warning saying so (never a silent pass).

The configs are the ones ``prealign compare`` builds from its own parser (so its defaults are what
is pinned), shrunk to 2 epochs, one seed, 600 training samples and 2,000 noise samples, and go
through ``run_sweep`` into a store, as ``compare`` does.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "compare_small.json"
TIMING = ("seconds", "eval_seconds")


def _configs():
    from prealign.cli import build_parser
    from prealign.cli.compare import build_configs
    from prealign.methods import METHODS

    args = build_parser().parse_args(["compare", "--methods", ",".join(METHODS), "--angles", "30", "--seeds", "1",
                                      "--epochs", "2", "--noise-samples", "2000", "--device", "cpu"])
    return [dataclasses.replace(c, train_subset=600) for c in build_configs(args)]


def _clean(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _measure(tmp_path) -> dict:
    from prealign.run.store import Store
    from prealign.run.sweep import run_sweep

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        configs = _configs()
        with Store(tmp_path / "store") as store:
            outcomes = run_sweep(configs, store, workers=1, progress=False)
            assert all(o.status == "finished" for o in outcomes), [(o.config["method"], o.error) for o in outcomes]
            out = {}
            for cfg in configs:
                records = store.epochs(store.find(cfg.key())["id"])
                out[cfg.label] = [{k: _clean(v) for k, v in r.items() if k not in TIMING} for r in records]
            return out
    finally:
        torch.set_num_threads(threads)


def _platform() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _same(a, b, exact: bool) -> bool:
    if a is None or b is None or not exact and not isinstance(a, float):
        return a == b
    return a == b if exact else math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9)


def test_default_compare_metrics_are_bitwise_golden(tmp_path):
    got = _measure(tmp_path)
    if os.environ.get("PREALIGN_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"platform": _platform(), "runs": got}, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"wrote {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    want, exact = golden["runs"], golden["platform"] == _platform()
    if not exact:
        import warnings

        warnings.warn(f"golden numbers were recorded on {golden['platform']}, this is {_platform()}: "
                      "compared to a relative 1e-4, not bitwise", UserWarning)
    assert sorted(got) == sorted(want), "the set of methods changed"
    for label in want:
        assert len(got[label]) == len(want[label]), label
        for mine, theirs in zip(got[label], want[label]):
            assert sorted(mine) == sorted(theirs), (label, mine["epoch"])
            moved = {k: (theirs[k], mine[k]) for k in theirs if not _same(mine[k], theirs[k], exact)}
            assert not moved, f"{label} epoch {mine['epoch']}: golden -> now {moved}"
