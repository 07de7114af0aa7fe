"""Checkpoints of a training run: the file format, its integrity checks, and what a resume must match.

:class:`FileCheckpoint` (one file, written atomically, bound to a run key, read as data only by
:func:`read_checkpoint`), :func:`checkpoint_settings` (every training argument that changes the
result, the model's architecture and the data, as fingerprints) and :func:`check_resumable`
(a checkpoint written by another run is refused in one line naming what differs).
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
import zlib
from pathlib import Path

import torch
from torch import nn

from ..errors import PrealignError
from ..feedback import RULES, FeedbackLayer
from ..feedback.wm import wm_settings

# version of the checkpoint dict below; older files are refused with a one-line fix. 3: the run's own
# random streams (prealign.seeding: torch_rng/cuda_rng are the run's stream, no longer the caller's
# global RNG; rules_rng), so a format-2 checkpoint cannot continue a run of this version bitwise
CHECKPOINT_FORMAT = 3


def _corrupt(path: Path) -> PrealignError:
    return PrealignError(f"{path}: a corrupt checkpoint of an unfinished run: "
                         f"discard it (delete {path}) and restart that run")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict in ``path``, read as data only.

    The file must be an intact torch zip archive (every member's CRC is checked first, so
    overwritten or truncated bytes are caught) and is unpickled with ``weights_only=True``: only
    tensors, numbers, strings, ``None``, lists, tuples and dicts load; a file holding any other
    object (a crafted ``__reduce__`` payload) is refused without running it. Raises a one-line
    :class:`PrealignError` naming the file and the fix.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.testzip() is not None:
                raise _corrupt(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error):
        raise _corrupt(path) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PrealignError(f"{path} holds objects other than tensors and plain data, so it is not a prealign "
                            f"checkpoint and was not loaded ({first[:160]}); delete {path}") from None
    except (RuntimeError, EOFError, OSError, ValueError):
        raise _corrupt(path) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise PrealignError(f"{path} is not a checkpoint of this prealign version (format {CHECKPOINT_FORMAT}); "
                            f"delete {path} and restart that run")
    return state


class FileCheckpoint:
    """One run's checkpoint in one file, written atomically (temp file + rename).

    ``key``: the run it belongs to (a store run's key); saved inside the file, and a file whose
    key differs is refused on load (another run's checkpoint). Loading goes through
    :func:`read_checkpoint` (integrity-checked, ``weights_only=True``).

    The file holds one dict, plain data only (written by :func:`prealign.train` and
    :func:`prealign.run.batched.train_runs`; every key is required):

    ==================  ============================================================================
    ``format``          :data:`CHECKPOINT_FORMAT` (int)
    ``key``             the run's key (str) or None outside a store
    ``settings``        :func:`checkpoint_settings` of the run (dict of str → number/str/None)
    ``model``           ``model.state_dict()`` (weights and feedback buffers)
    ``optimizer``       ``optimizer.state_dict()`` (adam/adamw/sgd over ``model.parameters()``, or the
                        user's optimizer); ``scheduler`` the LR scheduler's ``state_dict()`` or None
                        (:func:`prealign.train` only; absent from batched runs' checkpoints); ``loader_rng``
                        the states of a training loader's own generators (list of uint8 tensors)
    ``generator``       batch-order generator state (uint8 tensor); ``torch_rng``, ``cuda_rng``
                        (uint8 tensor or None) the run's global stream on the CPU and its CUDA
                        device (:func:`prealign.seeding.global_stream`: dropout and other module
                        randomness); ``rules_rng`` the rules' own streams
                        (:func:`prealign.rules_rng_state`; :func:`prealign.train` only so far)
    ``epoch``           last completed epoch (int; 0 = before training)
    ``curves``          the per-epoch records so far (list of dicts)
    ``best_epoch``      selected epoch; ``best_test_acc``, ``best_val_acc`` (NaN without validation)
    ``selection``       ``"val"`` or ``"test"``
    ``bad_epochs``      epochs since the selected one (patience counter); ``step`` optimizer steps
    ``train_seconds``   summed training time
    ``done``            the run ended (budget, patience or divergence); ``diverged``,
                        ``diverged_epoch`` (int or None), ``diverged_reason`` (str or None;
                        :func:`prealign.train` only), ``stopped_early`` say how
    ==================  ============================================================================

    :func:`prealign.run.config.run` adds ``noise_seconds``.
    """

    def __init__(self, path: str | os.PathLike, key: str | None = None):
        self.path = Path(path)
        self.key = key

    def load(self) -> dict | None:
        """The saved dict, or None when there is no file yet."""
        if not self.path.exists():
            return None
        state = read_checkpoint(self.path)
        if self.key is not None and state.get("key") != self.key:
            raise PrealignError(f"{self.path} belongs to another run (key {state.get('key')}, this run is {self.key}); "
                                f"delete {self.path} or use another output folder")
        return state

    def save(self, state: dict) -> None:
        state = {**state, "format": CHECKPOINT_FORMAT}
        if self.key is not None:
            state["key"] = self.key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(state, buf)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, self.path)


def as_checkpoint(checkpoint):
    if checkpoint is None or hasattr(checkpoint, "save"):
        return checkpoint
    return FileCheckpoint(checkpoint)


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the architecture: every module's name, class and ``extra_repr`` (sizes, rule,
    dropout rate...), a learned-feedback layer's ``kp_decay``, a weight-mirror layer's settings, and every parameter's name, shape
    and dtype. Not the weights' values."""
    h = hashlib.sha256()
    for name, module in model.named_modules():
        h.update(f"{name}|{type(module).__name__}|{module.extra_repr()}\n".encode())
        if isinstance(module, FeedbackLayer) and RULES[module.rule].learns_feedback:
            h.update(f"kp_decay={float(module.kp_decay)!r}\n".encode())  # changes the result, as lr does
        if isinstance(module, FeedbackLayer) and RULES[module.rule].mirrors:
            h.update(f"wm={sorted(wm_settings(module).items())!r}\n".encode())
    for name, p in model.named_parameters():
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}\n".encode())
    return h.hexdigest()[:16]


def data_fingerprint(data) -> str:
    """Hash of the data set, device-independent: shapes, dtypes and every label of each split,
    and the bytes of up to 64 evenly spaced samples of each input tensor."""
    from ..data.base import TENSOR_FIELDS

    h = hashlib.sha256(str(int(getattr(data, "num_classes", 0))).encode())
    for name in TENSOR_FIELDS:
        t = getattr(data, name, None)
        if t is None:
            continue
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        if name.startswith("x") and len(t):
            t = t[torch.linspace(0, len(t) - 1, min(64, len(t))).long().to(t.device)]
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_settings(model: nn.Module, data, *, batch_size: int, lr: float, optimizer: str, weight_decay: float,
                        momentum: float, seed: int, patience: int | None, val_fraction: float) -> dict:
    """What a checkpoint must match to be resumed: every training argument that changes the
    result (not ``epochs``: see :func:`prealign.train`), the model's architecture (:func:`model_fingerprint`)
    and the data as given to :func:`prealign.train` (:func:`data_fingerprint`; ``data`` None: left for the
    caller to record, as :func:`prealign.train` does for a loader)."""
    return {"batch_size": int(batch_size), "lr": float(lr), "optimizer": str(optimizer),
            "weight_decay": float(weight_decay), "momentum": float(momentum), "seed": int(seed),
            "patience": None if patience is None else int(patience), "val_fraction": float(val_fraction),
            "model": model_fingerprint(model), "data": None if data is None else data_fingerprint(data)}


def check_resumable(ckpt, state: dict, settings: dict, epochs: int) -> None:
    """Raise a one-line PrealignError unless ``state`` was written by this very training run."""
    where = getattr(ckpt, "path", ckpt)
    saved = state.get("settings") or {}
    diff = [f"{k} {saved.get(k)!r} there, {v!r} now" for k, v in settings.items() if saved.get(k) != v]
    if not diff and state["epoch"] > epochs:
        diff = [f"epochs: it has trained {state['epoch']}, now epochs={epochs}"]
    if diff:
        raise PrealignError(f"checkpoint {where} is from another training run ({'; '.join(diff)}); "
                            f"delete it or use another checkpoint path")


__all__ = ["CHECKPOINT_FORMAT", "FileCheckpoint", "as_checkpoint", "check_resumable", "checkpoint_settings",
           "data_fingerprint", "model_fingerprint", "read_checkpoint"]
