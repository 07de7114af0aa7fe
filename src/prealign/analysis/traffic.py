"""Memory traffic of error propagation per training step, per rule (IFA paper Fig. 1d; SPEC §5).

For one training step of a model, count the weight-sized tensors each rule *reads* and *writes*
to send the error backward — independent of the batch size (weights are read once per step).
Counted from the model's layer shapes and the rule metadata in
:data:`prealign.feedback.rules.RULES` (``transports``, ``direct``, ``learns_feedback``):

==========  ===================================================================================
``bp``      reads ``W`` of every layer that passes the error on (weight transport)
``fa``      reads the layer's fixed local ``B`` (same size as ``W``); ``W`` is never read backward
``dfa``     reads the layer's direct matrix ``D`` (``n_classes × inputs of the layer``)
``usf``     reads ``sign(W)`` (weight transport of signs) and one stored scale
``frsf``    reads ``sign(W)`` and the fixed magnitudes ``|B|``
``brsf``    reads ``sign(W)``; the magnitudes are drawn afresh (``numel`` random numbers)
``kp``      reads ``B`` and writes ``B`` (it receives ``W``'s update every step)
``wm``      reads ``B`` and writes ``B`` (the mirror step after each optimizer step), drawing
            ``steps · batch · fan-in`` noise numbers per layer (:mod:`prealign.feedback.wm`)
==========  ===================================================================================

Only layers whose input error is needed count: the first layer's error would go to the
pixels and is not computed in training. The forward pass (reads ``W``) and the weight update
(writes ``W``) are the same for every rule and are listed once per row for scale. Bytes assume
float32 storage (4 bytes per element) for every tensor, signs included; a sign-only store could
pack signs at 1 bit (the ``sign_bits`` column lets you compute that).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..feedback import RULES, feedback_layers, get_rule
from ..feedback.wm import random_draws

BYTES_PER_ELEMENT = 4  # float32


@torch.no_grad()
def _input_sizes(model: nn.Module) -> dict[str, int]:
    """Elements of one sample's input to every feedback layer (a dry forward pass on zeros)."""
    sizes: dict[str, int] = {}
    layers = feedback_layers(model)
    hooks = [layer.register_forward_hook(lambda m, inp, out, n=name: sizes.__setitem__(n, inp[0][0].numel()))
             for name, layer in layers]
    shape = getattr(model, "input_shape", None)
    if shape is None:
        first = layers[0][1]
        shape = (first.in_features,) if isinstance(first, nn.Linear) else None
    if shape is None:
        raise ValueError("set model.input_shape to count DFA traffic for a convolutional model")
    param = next(model.parameters())
    was = model.training
    model.eval()
    try:
        model(torch.zeros((1, *shape), device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return sizes


def traffic_table(model: nn.Module, rules: Sequence[str] | None = None) -> list[dict]:
    """One row per rule: element counts per training step for error propagation.

    Keys: ``rule``, ``weight_transport`` (``"weights"``/``"signs"``/``"nothing"``),
    ``w_reads`` (elements of ``W`` read in the backward pass, values or signs),
    ``feedback_reads`` (elements of ``B``/``D``/scales read), ``feedback_writes``,
    ``random_draws``, ``backward_bytes`` (reads + writes, float32), ``sign_bits`` (elements read
    as signs only), ``forward_w_reads`` and ``update_w_writes`` (all layers, same for all rules).
    """
    layers = feedback_layers(model)
    if not layers:
        raise ValueError("model has no feedback layers; build it with prealign or convert it first")
    rules = list(rules) if rules is not None else list(RULES)
    n_out = layers[-1][1].weight.shape[0]
    inputs = _input_sizes(model)
    passing = layers[1:]  # layers that send the error on to a lower layer
    total_w = sum(layer.weight.numel() for _, layer in layers)
    rows = []
    for name in rules:
        r = get_rule(name)
        w_reads = fb_reads = fb_writes = draws = signs = 0
        for lname, layer in passing:
            n = layer.weight.numel()
            if r.direct:
                fb_reads += n_out * inputs[lname]
            elif r.transports == "weights":
                w_reads += n
            elif r.transports == "signs":
                w_reads += n
                signs += n
                if name == "usf":
                    fb_reads += 1
                elif name == "brsf":
                    draws += n
                else:
                    fb_reads += n
            else:
                fb_reads += n
            if r.learns_feedback or r.mirrors:
                fb_writes += n
            if r.mirrors:  # wm: the mirror's noise per optimizer step (prealign.feedback.wm.random_draws)
                draws += random_draws(layer)
        rows.append({"rule": name, "weight_transport": r.transports, "w_reads": w_reads, "feedback_reads": fb_reads,
                     "feedback_writes": fb_writes, "random_draws": draws,
                     "backward_bytes": (w_reads + fb_reads + fb_writes) * BYTES_PER_ELEMENT, "sign_bits": signs,
                     "forward_w_reads": total_w, "update_w_writes": total_w})
    return rows


def format_traffic(rows: Sequence[dict]) -> str:
    """The table as aligned text (elements; bytes in KiB)."""
    head = ["rule", "transport", "W reads", "B/D reads", "B writes", "random", "backward KiB", "fwd W reads", "update W writes"]
    body = [[r["rule"], r["weight_transport"], f'{r["w_reads"]:,}', f'{r["feedback_reads"]:,}', f'{r["feedback_writes"]:,}',
             f'{r["random_draws"]:,}', f'{r["backward_bytes"] / 1024:,.1f}', f'{r["forward_w_reads"]:,}',
             f'{r["update_w_writes"]:,}'] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in [head, *body]]
    return "\n".join(lines)
