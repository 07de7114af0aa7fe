"""What :func:`prealign.train` reads its data from: tensors moved to the device once, or a loader.

:class:`TensorData` (train/test tensors, optionally validation), :func:`move_data` and
:func:`cast_inputs` (the fast path: the whole data set on the device, in the model's dtype), and
:class:`Batches` (a ``DataLoader`` or any re-iterable of ``(x, y)`` batches, checked, moved and cast
batch by batch, its own generators checkpointed and kept still while measurements read it).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..seeding import cuda_devices


@dataclass
class TensorData:
    """A minimal in-memory data set: ``x`` float (N, ...) and ``y`` int64 (N,) for train and test.

    :func:`prealign.data.load` returns a richer object with the same attributes; anything with
    ``x_train, y_train, x_test, y_test`` works with :func:`prealign.train`.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int = 10
    name: str = "tensors"
    x_val: torch.Tensor | None = None  # optional validation set (prealign.data.holdout_validation)
    y_val: torch.Tensor | None = None

    def to(self, device) -> TensorData:
        from ..data.base import TENSOR_FIELDS
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in TENSOR_FIELDS if getattr(self, k) is not None})


def move_data(data, device):
    for attr in ("x_train", "y_train", "x_test", "y_test"):
        if not hasattr(data, attr):
            raise ConfigError(f"train() needs data with x_train, y_train, x_test, y_test tensors; {type(data).__name__} has no {attr}")
    if hasattr(data, "to"):
        moved = data.to(device)
        if moved is not None:
            return moved
    x_val, y_val = getattr(data, "x_val", None), getattr(data, "y_val", None)
    return TensorData(data.x_train.to(device), data.y_train.to(device), data.x_test.to(device), data.y_test.to(device),
                      int(getattr(data, "num_classes", 10)), str(getattr(data, "name", "tensors")),
                      None if x_val is None else x_val.to(device), None if y_val is None else y_val.to(device))


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 for a model without one)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def cast_inputs(data, dtype: torch.dtype):
    """``data`` with its floating-point inputs (``x_train``, ``x_test``, ``x_val``) in ``dtype``."""
    changes = {k: t.to(dtype) for k in ("x_train", "x_test", "x_val")
               if (t := getattr(data, k, None)) is not None and t.is_floating_point() and t.dtype != dtype}
    if not changes:
        return data
    if dataclasses.is_dataclass(data):
        return dataclasses.replace(data, **changes)
    return TensorData(changes.get("x_train", data.x_train), data.y_train, changes.get("x_test", data.x_test), data.y_test,
                      int(getattr(data, "num_classes", 10)), str(getattr(data, "name", "tensors")),
                      changes.get("x_val", getattr(data, "x_val", None)), getattr(data, "y_val", None))


class Batches:
    """An iterable of ``(x, y)`` batches (a ``DataLoader``, a list, any re-iterable object) as
    :func:`prealign.train` reads it: each batch is checked (a pair of tensors of equal length) and moved to
    ``device``; floating-point ``x`` (and floating ``y``, e.g. regression targets) are cast to the
    model's ``dtype``. ``name`` ("training data", "test data"...) appears in the one-line errors."""

    def __init__(self, source, name: str, device: torch.device, dtype: torch.dtype):
        if isinstance(source, torch.Tensor) or not hasattr(source, "__iter__"):
            raise ConfigError(f"{name} must be prealign data (x_train, y_train, x_test, y_test tensors), a DataLoader or "
                              f"an iterable of (x, y) batches; got a {type(source).__name__}")
        if isinstance(source, Iterator):  # (not iter(source) is source: that would start a DataLoader's workers)
            raise ConfigError(f"{name} is a one-shot iterator ({type(source).__name__}); give something iterable once "
                              "per epoch: a DataLoader, a list of (x, y) batches or an object with __iter__")
        self.source, self.name, self.device, self.dtype = source, name, device, dtype

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, self.dtype if t.is_floating_point() else None, non_blocking=True)

    def __iter__(self):
        empty = True
        for i, item in enumerate(self.source):
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, torch.Tensor) for t in item)):
                what = f"a {len(item)}-item {type(item).__name__}" if isinstance(item, (tuple, list)) else f"a {type(item).__name__}"
                raise ConfigError(f"{self.name}: batch {i} is {what}; a loader must yield (x, y) pairs of tensors")
            x, y = item
            if len(x) != len(y):
                raise ConfigError(f"{self.name}: batch {i} has {len(x)} inputs but {len(y)} targets")
            empty = False
            yield self._cast(x), self._cast(y)
        if empty:
            raise ConfigError(f"{self.name} yielded no batches")

    def generators(self) -> list[torch.Generator]:
        """The ``torch.Generator`` objects the source holds (a ``DataLoader``'s ``generator``, its
        sampler's, a custom sampler's attributes): they choose its order besides the global RNG."""
        found: list[torch.Generator] = []
        batch_sampler = getattr(self.source, "batch_sampler", None)
        for obj in (self.source, getattr(self.source, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
            for value in getattr(obj, "__dict__", {}).values():
                if isinstance(value, torch.Generator) and not any(value is g for g in found):
                    found.append(value)
        return found

    @contextmanager
    def preserved(self):
        """Within the block, read the source freely: its generators' states (:meth:`generators`) and
        the global RNGs are restored on exit, so the next epoch's order is as if it had not been read."""
        states = [(g, g.get_state()) for g in self.generators()]
        try:
            with torch.random.fork_rng(devices=cuda_devices()):
                yield self
        finally:
            for g, state in states:
                g.set_state(state)

    def first(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` samples (fewer if there are fewer), concatenated; read under
        :meth:`preserved`, so a shuffling loader's next epoch is not moved by it."""
        xs, ys, got = [], [], 0
        with self.preserved():
            for x, y in self:
                xs.append(x), ys.append(y)
                got += len(x)
                if got >= n:
                    break
        return torch.cat(xs)[:n], torch.cat(ys)[:n]

    def describe(self) -> str:
        """What a checkpoint records of this source (its contents are not fingerprinted)."""
        size = getattr(getattr(self.source, "dataset", None), "__len__", None) or getattr(self.source, "__len__", None)
        return f"{type(self.source).__name__} (len {size()})" if size is not None else type(self.source).__name__


__all__ = ["Batches", "TensorData", "cast_inputs", "model_dtype", "move_data"]
