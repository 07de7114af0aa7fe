"""What every ``prealign`` subcommand shares on its command line: the parser that reports errors in
one line, and the options every command accepts after its name (``--out``, ``--json``,
``--tensorboard``, ``--quiet``). Printing is :mod:`prealign.cli.output` (re-exported here).

A bad option is refused while the command line is parsed, with the option's name and what it allows,
in one line and exit status 2 (plus the subcommand's usage when stderr is a terminal)::

    prealign analyze landscape: error: argument --grid: must be an odd integer >= 3, got '0' (see prealign analyze landscape --help)

Options of a command group (``prealign --quiet``, ``prealign runs --out DIR``) are accepted after
every subcommand below it too (``prealign runs list --out DIR --quiet``): :meth:`OneLineParser.inherit`.
The option types (``POSITIVE``, ``STORE``, ...) live in :mod:`~prealign.cli.argtypes` and
:mod:`~prealign.cli.argpaths` and are re-exported here.
"""
from __future__ import annotations

import argparse

from .argpaths import DEVICE, FOLDER, IN_FILE, OUT_FILE, STORE, BatchModels, Device, PathArg
from .argtypes import (ANGLES, CORES, INT_MAX, NONNEG, NONNEG_FLOAT, POSITIVE, POSITIVE_FLOAT, SEED, SEED_MAX, THREADS,
                       WORKERS, Float, Floats, Int, Seeds, Widths)
from .output import console, print_json, stdout_closed
from .parser import OneLineParser

STORE_HELP = "output root holding the result store (default ./prealign-runs or $PREALIGN_RUNS)"


def add_out(parser: argparse.ArgumentParser, help: str = STORE_HELP) -> None:
    """``--out DIR``: the output root holding the result store (None: ``$PREALIGN_RUNS`` or ``./prealign-runs``)."""
    parser.add_argument("--out", type=STORE, default=None, metavar="DIR", help=help)


def add_json(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    """``--json``: ``what`` as JSON on stdout and nothing else there (progress and notes on stderr)."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout (nothing else there)")


def add_tensorboard(parser: argparse.ArgumentParser) -> None:
    """``--tensorboard DIR``: every run's per-epoch records to TensorBoard event files under DIR (one
    folder per run; :mod:`prealign.run.loggers`). Apply it with :func:`with_loggers` (a list of
    RunConfigs) or :func:`logger_fields` (the config fields, e.g. for a grid's base)."""
    parser.add_argument("--tensorboard", type=FOLDER, default=None, metavar="DIR",
                        help="log every run's per-epoch record (losses, accuracies, angles, ...) to TensorBoard "
                             "event files in DIR/<run> (needs the tensorboard extra)")


def logger_fields(args) -> dict:
    """The RunConfig fields the command line's loggers set (``{"tensorboard": DIR}``, or ``{}``); they are
    not part of the run key, so stored runs are found and resumed as before. A missing extra: one line."""
    folder = getattr(args, "tensorboard", None)
    if not folder:
        return {}
    from ..run.loggers import require_tensorboard

    require_tensorboard()  # before anything runs
    return {"tensorboard": str(folder)}


def with_loggers(configs: list, args) -> list:
    """``configs`` (RunConfigs) with the loggers the command line asked for (:func:`logger_fields`)."""
    fields = logger_fields(args)
    return [c.replace(**fields) for c in configs] if fields else configs


def add_cluster_options(p) -> None:
    """Where and with what a sweep's runs execute (issue 15; docs/cluster.md), one definition for every
    command that runs sweeps (``compare``, ``reproduce``, ``sweep``); :func:`cluster_options` turns
    them into :func:`prealign.run.sweep.run_sweep` keywords."""
    p.add_argument("--executor", default="local", choices=("local", "ray"), help="where the runs execute (default local)")
    p.add_argument("--address", default=None, help="Ray cluster address with --executor ray (HOST:PORT of `ray start "
                                                   "--head`, or auto); default: start a local Ray instance")
    p.add_argument("--storage", default=None, metavar="URI", help="checkpoint storage every worker can reach: a folder "
                   "or an fsspec URL (s3://bucket/prefix, gs://...); default: checkpoints/ next to the result store")
    p.add_argument("--gpus-per-run", type=NONNEG_FLOAT, default=None, help="GPUs each run asks for (fractions share a "
                   "GPU); default where GPUs exist: 1 for convolutional models, 0.25 for MLPs; a batched group asks for the sum")
    p.add_argument("--cpus-per-run", type=POSITIVE_FLOAT, default=None, help="CPUs each run asks for (default 1; "
                   "also its torch threads)")
    p.add_argument("--runtime-env", default=None, metavar="JSON|DIR", help="Ray runtime_env for the workers: a JSON "
                   "object (e.g. '{\"pip\": [\"prealign\"]}') or a folder shipped as their working_dir")


def add_batch_models(p, help: str) -> None:
    """``--batch-models auto|off|G`` (:class:`~prealign.cli.argtypes.BatchModels`)."""
    p.add_argument("--batch-models", type=BatchModels(), default="auto", metavar="auto|off|G", help=help)


def cluster_options(args) -> dict:
    """The :func:`add_cluster_options` values as :func:`prealign.run.sweep.run_sweep` keywords (the
    ``executor`` and ``address`` keywords included)."""
    return {"executor": args.executor, "address": args.address, "storage": args.storage, "gpus_per_run": args.gpus_per_run,
            "cpus_per_run": args.cpus_per_run, "runtime_env": args.runtime_env}


__all__ = ["add_batch_models", "add_cluster_options", "cluster_options", "CORES", "THREADS", "WORKERS", "BatchModels", "ANGLES", "DEVICE", "FOLDER", "INT_MAX", "IN_FILE", "NONNEG", "NONNEG_FLOAT", "OUT_FILE", "POSITIVE",
           "POSITIVE_FLOAT", "SEED", "SEED_MAX", "STORE", "STORE_HELP", "Device", "Float", "Floats", "Int",
           "OneLineParser", "PathArg", "Seeds", "Widths", "add_json", "add_out", "add_tensorboard", "console",
           "logger_fields", "print_json", "stdout_closed", "with_loggers"]
