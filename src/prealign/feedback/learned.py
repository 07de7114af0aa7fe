"""Bookkeeping of rules whose ``B`` follows ``W``'s updates (kp, wm): one *update cycle* per layer.

A cycle opens at a layer's first training forward after its last feedback update (grad enabled,
not inside :func:`~prealign.exact_gradients`, ``W`` requiring grad): the layer records a *mark*
(``W``'s and ``B``'s version counters and a few probed values of ``W``) and, under kp, the gap
``G = B − W_before`` that the Kolen–Pollack update needs (:mod:`prealign.feedback.kp`). The cycle
closes with the feedback update: the post-hook of a ``torch.optim`` step
(:mod:`prealign.feedback.step`) or :func:`prealign.feedback_step` in a loop of one's own.

If a later training forward finds the cycle still open and ``W`` changed since its mark, ``W``
was updated without a feedback update (a hand-written ``p -= lr * p.grad`` loop without
:func:`prealign.feedback_step`): that is a one-line :class:`FeedbackNotUpdatedWarning` naming the
layer, once per layer, never a silent FA. Changes of ``W`` that are not training updates do not
warn: loading a state dict closes the cycle, re-initialising ``B`` too (:func:`prealign.init_weights`)
opens a new one, and changes between a feedback update and the next forward are outside any cycle.

"Changed" is judged from the version counters (bumped by in-place updates such as ``p -= …``)
*and* one probed element per row of ``W`` (at most 1,024; fused optimizers and ``p.data`` updates
bump no version counter): a few microseconds per layer and step. Bitwise comparison: NaNs compare
equal to themselves.
"""
from __future__ import annotations

import warnings

import torch

from .rules import RULES

MAX_PROBES = 1024
STATE = ("_fb_mark", "_fb_in_step", "_fb_warned", "_fb_probe_index")
"""Per-layer attributes of the bookkeeping (dropped by copies and by ``prealign.unconvert``)."""


class FeedbackNotUpdatedWarning(UserWarning):
    """``W`` of a kp/wm layer changed after a training forward without a feedback update."""


_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _probes(w: torch.Tensor, d: dict) -> torch.Tensor:
    """One element of each row of ``W`` (columns spread, at most :data:`MAX_PROBES` rows) as raw bits;
    ``d``: the layer's ``__dict__`` (caches the indices)."""
    cached = d.get("_fb_probe_index")
    if cached is None or cached[0] != w.shape or cached[1] != w.device:
        rows = w.shape[0]
        cols = w.numel() // rows
        r = torch.linspace(0, rows - 1, min(rows, MAX_PROBES), device=w.device).long()
        bits = _BITS.get(w.element_size()) if not w.is_complex() else None
        cached = d["_fb_probe_index"] = (w.shape, w.device, r * cols + (r * 7919) % cols, bits)
    values = torch.take(w.detach(), cached[2])
    return values if cached[3] is None else values.view(cached[3])


def w_changed(layer) -> bool:
    """Whether ``W`` changed since the open cycle's mark (True when no cycle is open): its version
    counter, or one of its probed values."""
    d, w = layer.__dict__, layer.weight
    mark = d.get("_fb_mark")
    return mark is None or w._version != mark[0] or not torch.equal(_probes(w, d), mark[2])


def open_cycle(layer, w: torch.Tensor | None = None) -> None:
    """Open an update cycle now: the mark, and under kp the gap ``B − W`` (into a reused buffer)."""
    d = layer.__dict__
    w = layer.weight if w is None else w
    b = layer.feedback
    rule = RULES.get(d["_rule"])
    if rule is not None and rule.learns_feedback:
        gap = d.get("_kp_gap")
        if gap is None or gap.shape != w.shape or gap.dtype != w.dtype or gap.device != w.device:
            d["_kp_gap"] = torch.sub(b, w.detach())
        else:
            torch.sub(b, w.detach(), out=gap)
    d["_fb_mark"] = (w._version, b._version, _probes(w, d))


def close_cycle(layer) -> None:
    layer.__dict__["_fb_mark"] = None


def is_open(layer) -> bool:
    return layer.__dict__.get("_fb_mark") is not None


def versions_moved(layer) -> bool:
    """Whether ``W``'s or ``B``'s version counter moved since the open cycle's mark (True when none is open)."""
    mark = layer.__dict__.get("_fb_mark")
    return mark is None or layer.weight._version != mark[0] or layer.feedback._version != mark[1]


def _name(layer) -> str:
    name = layer.__dict__.get("_fb_name")
    what = f"{type(layer).__name__} {tuple(layer.weight.shape)}"
    return f"layer {name!r} ({what})" if name else f"a {what} layer"


def before_forward(layer) -> None:
    """At a training forward of a kp/wm layer: check the open cycle, or open one."""
    d = layer.__dict__
    if d.get("_fb_in_step"):
        return  # inside an optimizer step (LBFGS closures): the step's own hooks handle it
    w = layer.weight
    if not w.requires_grad:
        return  # no gradient, no update to follow
    mark = d.get("_fb_mark")
    if mark is not None:
        if w._version == mark[0] and torch.equal(_probes(w, d), mark[2]):
            return  # a further forward of the same update (gradient accumulation, measurements)
        if layer.feedback._version == mark[1] and not d.get("_fb_warned"):  # B re-initialised too: not an update
            d["_fb_warned"] = True
            warnings.warn(f"{_name(layer)} under {layer._rule}: W changed after a training forward without a feedback "
                          "update, so B did not follow it (a loop without a torch.optim step?): call "
                          "prealign.feedback_step(model) after each update", FeedbackNotUpdatedWarning, stacklevel=4)
    open_cycle(layer, w)
