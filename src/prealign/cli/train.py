"""``prealign train --config run.toml [--set key=value ...]``: one run from a TOML config.

The TOML file holds :class:`prealign.run.config.RunConfig` keys at top level (or under ``[run]``)::

    method = "rnp"
    dataset = "fashion-mnist"
    hidden = [100]
    epochs = 200
    patience = 10
    noise_samples = 500000

The run is recorded in the result store (``--out``); running the same config again returns the
stored result, and an interrupted run resumes from its last checkpoint. ``--tensorboard DIR`` (or
``tensorboard = "DIR"`` in the TOML) also logs every epoch's record to TensorBoard; ``--json`` prints
the summary as JSON on stdout and nothing else there.
"""
from __future__ import annotations

import argparse
import sys

from .args import IN_FILE, POSITIVE, add_json, add_out, add_tensorboard, print_json, with_loggers


def register(sub) -> None:
    p = sub.add_parser("train", help="one run from a TOML config (validated), stored and resumable",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=IN_FILE, required=True, metavar="FILE", help="TOML file with RunConfig keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config key, e.g. --set lr=1e-3 --set hidden=100,100 (repeatable)")
    add_out(p)
    p.add_argument("--threads", type=POSITIVE, default=None, help="torch CPU threads (default: torch's)")
    add_tensorboard(p)
    add_json(p, "the result summary")
    p.set_defaults(func=main)


def main(args) -> int:
    from ..run.config import RunConfig, build, load_data, run
    from ..run.store import Store

    [config] = with_loggers([RunConfig.from_toml(args.config, args.overrides)], args)
    data = load_data(config)  # unknown / missing data set: one clear error before anything is stored
    build(config, data)  # a model that does not fit the data (lenet on 8×8 digits): one line, nothing stored
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    store = Store(args.out)
    result = run(config, store, data=data)
    summary = result.to_dict(curves=False)
    if args.json:
        print_json(summary)
        return 0
    angles = "".join(f"∠{k.split('/', 1)[1]}={v:.1f}°; " for k, v in result.final.items() if k.startswith("angle/"))
    why = f" at epoch {result.diverged_epoch} ({result.diverged_reason})" if result.diverged and result.diverged_reason else ""
    print(f"run {result.run_id} ({config.key()}): {config.label} on {config.dataset}, seed {config.seed} — "
          f"{result.status}{why}; best test accuracy {100 * result.best_test_acc:.2f}% at epoch {result.best_epoch} "
          f"of {result.epochs_run}; {angles}{result.seconds + result.noise_seconds:.1f} s "
          f"(noise pretraining {result.noise_seconds:.1f} s)")
    print(f"store: {store.path}", file=sys.stderr)
    return 0
