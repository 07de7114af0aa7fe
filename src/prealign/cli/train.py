"""``prealign train --config run.toml [--set key=value ...]``: one run from a TOML config.

The TOML file holds :class:`prealign.run.config.RunConfig` keys at top level (or under ``[run]``)::

    method = "rnp"
    dataset = "fashion-mnist"
    hidden = [100]
    epochs = 200
    patience = 10
    noise_samples = 500000

The run is recorded in the result store (``--out``); running the same config again returns the
stored result, and an interrupted run resumes from its last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys

from .args import IN_FILE, POSITIVE, STORE


def register(sub) -> None:
    p = sub.add_parser("train", help="one run from a TOML config (validated), stored and resumable",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=IN_FILE, required=True, metavar="FILE", help="TOML file with RunConfig keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config key, e.g. --set lr=1e-3 --set hidden=100,100 (repeatable)")
    p.add_argument("--out", type=STORE, default=None, help="output root holding the result store (default ./prealign-runs or $PREALIGN_RUNS)")
    p.add_argument("--threads", type=POSITIVE, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the result summary as JSON on stdout")
    p.set_defaults(func=main)


def main(args) -> int:
    from ..run.config import RunConfig, build, load_data, run
    from ..viz.report import write_json  # noqa: F401  (json-safe writer shares the NaN handling)
    from ..run.store import Store

    config = RunConfig.from_toml(args.config, args.overrides)
    data = load_data(config)  # unknown / missing data set: one clear error before anything is stored
    build(config, data)  # a model that does not fit the data (lenet on 8×8 digits): one line, nothing stored
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    store = Store(args.out)
    result = run(config, store, data=data)
    summary = result.to_dict(curves=False)
    if args.json:
        from ..viz.report import _json_safe

        print(json.dumps(_json_safe(summary), indent=2))
        return 0
    final = result.final
    angles = "  ".join(f"∠{k.split('/', 1)[1]}={v:.1f}°" for k, v in final.items() if k.startswith("angle/"))
    print(f"run {result.run_id} ({config.key()}): {config.label} on {config.dataset}, seed {config.seed} — "
          f"{result.status}; best test accuracy {100 * result.best_test_acc:.2f}% at epoch {result.best_epoch} "
          f"of {result.epochs_run}; {angles}; {result.seconds + result.noise_seconds:.1f} s "
          f"(noise pretraining {result.noise_seconds:.1f} s)")
    print(f"store: {store.path}", file=sys.stderr)
    return 0
