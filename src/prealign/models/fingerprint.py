"""What a built network is, as text and as a hash: part of every run key (issue 24).

A run key must change whenever the network a run starts from changes — a factory edited behind
``"my_pkg.nets:build"``, a registered name replaced — or a stored result of another network would
be served. So :meth:`prealign.run.config.RunConfig.key` includes :func:`fingerprint` of the network
:func:`prealign.run.config.build` makes for the config:

- :func:`layout`: one line per module (qualified name, class, ``extra_repr``: sizes, rule, dropout
  rate, ...) and one per tensor of the ``state_dict`` (name, shape, dtype): the architecture;
- the bytes of every tensor of the ``state_dict`` (weights ``W``, feedback ``B``, DFA matrices,
  norm statistics): the initial values the seed gives.

:func:`difference` says in words where two layouts differ (a checkpoint of another network names
the layer and what it is there and now, not two hashes).
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn


def layout(model: nn.Module) -> list[str]:
    """The architecture as lines: ``"module <name>: <Class>(<extra_repr>)"`` for every module (the root
    is ``<root>``), then ``"tensor <name>: <shape> <dtype>"`` for every tensor of the ``state_dict``."""
    lines = [f"module {name or '<root>'}: {type(m).__name__}({m.extra_repr()})" for name, m in model.named_modules()]
    lines += [f"tensor {name}: {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
              for name, t in model.state_dict().items()]
    return lines


def fingerprint(model: nn.Module) -> str:
    """16 hex digits of sha256 over :func:`layout` and the bytes of every ``state_dict`` tensor (on the CPU)."""
    h = hashlib.sha256()
    for line in layout(model):
        h.update(line.encode() + b"\n")
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}=".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def first_value_difference(a: nn.Module, b: nn.Module) -> str | None:
    """The first ``state_dict`` tensor whose values differ between two networks of one layout, or None."""
    sb = b.state_dict()
    for name, t in a.state_dict().items():
        if name not in sb or t.shape != sb[name].shape or not torch.equal(t.cpu(), sb[name].cpu()):
            return name
    return None


def _kind(line: str) -> tuple[str, str]:
    head, _, rest = line.partition(": ")
    return head, rest


def difference(before: list[str] | None, now: list[str], *, limit: int = 2) -> str:
    """Where layout ``now`` differs from ``before``, in words: ``"layer 1: FeedbackLinear(in_features=784,
    out_features=100, ...) there, FeedbackLinear(in_features=784, out_features=50, ...) now; tensor
    1.weight: (100, 784) there, (50, 784) now; 3 more differences"``. ``before`` None (a file written before
    layouts were recorded): says so. Identical layouts: ``"same layout, other initial values"``."""
    if before is None:
        return "the architecture recorded there predates layout records, so only its hash is known"
    old, new = dict(map(_kind, before)), dict(map(_kind, now))
    out = []
    for head in [*dict.fromkeys([*old, *new])]:
        a, b = old.get(head), new.get(head)
        if a == b:
            continue
        what = head.replace("module ", "layer ", 1)
        out.append(f"{what}: {a or 'absent'} there, {b or 'absent'} now")
    if not out:
        return "same layout, other initial values"
    more = f"; {len(out) - limit} more differences" if len(out) > limit else ""
    return "; ".join(out[:limit]) + more


__all__ = ["difference", "fingerprint", "first_value_difference", "layout"]
