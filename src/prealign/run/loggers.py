"""Loggers: every per-epoch record of a run, sent where researchers already look (TensorBoard).

A logger is any object with ``log(record, step)`` and ``close()`` (:class:`Logger`). The trainer
callback :class:`LogRecords` hands each epoch's record — losses, accuracies (fractions), alignment
angles and gradient angles (degrees), Hessian tracking, whatever the other callbacks add — to its
loggers, with the epoch as the step (0 = before training)::

    from prealign.run.loggers import LogRecords, TensorBoardLogger
    logs = LogRecords([TensorBoardLogger("tb/fa-seed0")])
    result = pa.train(model, data, epochs=20, callbacks=[logs])
    logs.close(result.curves)

A :class:`~prealign.run.config.RunConfig` with ``tensorboard = "DIR"`` (the CLI's ``--tensorboard DIR``)
logs each run to ``DIR/<label>-seed<seed>-<key prefix>`` (:func:`run_logger`): through
:func:`prealign.run.config.run` and the batched sweep alike; a run served from the store is written
from its stored records (:func:`replay`). The field is not part of the run key.

Measuring never changes what is measured: loggers get a copy of the record, after every
measurement, and draw no random numbers, so the curves are bitwise those of a run without them
(``tests/test_loggers.py``).
"""
from __future__ import annotations

import numbers
import weakref
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import PrealignError


@runtime_checkable
class Logger(Protocol):
    """Receives one run's per-epoch records."""

    def log(self, record: dict, step: int) -> None:
        """``record``: the epoch's metrics (name → number); ``step``: the epoch (0 = before training)."""

    def close(self) -> None:
        """Write out what is buffered and release the destination."""


def require_tensorboard():
    """``torch.utils.tensorboard.SummaryWriter``, or one line naming the missing extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise PrealignError("logging to TensorBoard needs the tensorboard package, which is not installed; "
                            "pip install 'prealign[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter


class TensorBoardLogger:
    """Each numeric entry of a record as a TensorBoard scalar: tag = the record's key (``test_acc``,
    ``angle/fc1``, ``grad_angle/fc1``, ``hessian_top_eig``, ...), step = the epoch. Event files go to
    ``logdir`` (one folder per run); written out after every epoch, so TensorBoard shows a run live."""

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        try:
            self.writer = require_tensorboard()(log_dir=str(self.logdir))
        except OSError as err:
            raise PrealignError(f"cannot write TensorBoard logs to {str(self.logdir)!r} ({err.strerror or err}); "
                                "choose another folder with --tensorboard") from None
        self._closer = weakref.finalize(self, self.writer.close)  # closed even if the owner never calls close()

    def log(self, record: dict, step: int) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(key, float(value), global_step=int(step))
        self.writer.flush()

    def close(self) -> None:
        self._closer()


class LogRecords:
    """Trainer callback: every epoch's record to ``loggers`` (add it after the callbacks whose
    measurements it should carry), all but ``eval_seconds``. :meth:`close` sends the records the
    trainer kept from the callbacks (the epoch a run diverged at) and closes the loggers."""

    def __init__(self, loggers):
        self.loggers = list(loggers)
        self.last = -1  # last epoch sent
        self.closed = False

    def on_epoch_end(self, epoch, model, data, record) -> None:
        self._send(record)

    def _send(self, record: dict) -> None:
        step = int(record["epoch"])
        # eval_seconds times the measurements, loggers included, so it is set after them: never sent,
        # also not from stored records, so a run logs the same keys live and replayed
        record = {k: v for k, v in record.items() if k != "eval_seconds"}
        for logger in self.loggers:
            logger.log(dict(record), step)
        self.last = max(self.last, step)

    def close(self, curves=()) -> None:
        """Send each record of ``curves`` (the run's per-epoch records) after the last one sent, then close."""
        if self.closed:
            return
        for record in curves:
            if int(record["epoch"]) > self.last:
                self._send(record)
        for logger in self.loggers:
            logger.close()
        self.closed = True


def run_name(config) -> str:
    """A run's folder under the log root: ``<label>-seed<seed>-<first 8 of its key>`` (unique per run)."""
    return f"{config.label}-seed{config.seed}-{config.key()[:8]}"


def run_logger(config) -> LogRecords | None:
    """The :class:`LogRecords` callback ``config`` asks for (its ``tensorboard`` folder), or None."""
    folder = getattr(config, "tensorboard", "")
    if not folder:
        return None
    return LogRecords([TensorBoardLogger(Path(folder) / run_name(config))])


def replay(config, result):
    """Log a run served from the store (``result``: its :class:`~prealign.run.trainer.TrainResult`,
    curves included) to ``config``'s loggers, as if it had just trained; returns ``result``."""
    logs = run_logger(config)
    if logs is not None:
        logs.close(result.curves)
    return result


__all__ = ["LogRecords", "Logger", "TensorBoardLogger", "replay", "require_tensorboard", "run_logger", "run_name"]
