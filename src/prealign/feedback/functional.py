"""Autograd Functions for linear and 2-D convolution layers that take a feedback tensor.

Forward is the ordinary op. Backward computes, with the same FLOPs as autograd:

- input error ``δ B`` (``conv_transpose`` with ``B`` for convolutions) — or, when a
  :class:`~prealign.feedback.dfa.DirectRoute` is given, the network's output error projected
  through the layer's direct-feedback matrix;
- weight gradient ``δᵀ x`` and bias gradient ``Σ δ`` exactly as backprop would.

``W`` is never saved for backward: nothing in the backward pass reads it (no weight transport).
A layer whose output does not reach the loss gets no gradient and sends no error (``grad_out``
is not materialised as zeros). ``pool``: when given (a list), ``B`` is appended to it once the backward pass has used it, so the
layer can compute the next step's per-step feedback (sign rules) into the same memory.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _unused(ctx, feedback, n_inputs: int) -> tuple[None, ...]:
    """Backward of a layer whose output the loss does not use: no gradient, no error sent (as under
    backprop, where such a layer's parameters keep ``grad = None``); a per-step ``B`` returns to its pool."""
    if ctx.pool is not None:
        ctx.pool.append(feedback)
    return (None,) * n_inputs


class FeedbackLinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b``; shapes ``x: (..., in)``, ``W, B: (out, in)``, ``b: (out,)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, route=None, pool=None):
        ctx.save_for_backward(x, feedback)
        ctx.route, ctx.pool = route, pool
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, feedback = ctx.saved_tensors
        if grad_out is None:
            return _unused(ctx, feedback, 6)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if ctx.route is None:
                grad_x = grad_out @ feedback
            else:
                grad_x = ctx.route.direct_error(x)
        if ctx.needs_input_grad[1]:
            g2 = grad_out.reshape(-1, grad_out.shape[-1])
            grad_w = g2.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        if ctx.pool is not None:
            ctx.pool.append(feedback)
        return grad_x, grad_w, grad_b, None, None, None


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class FeedbackConvFunction(torch.autograd.Function):
    """1-, 2- or 3-D convolution; ``x: (N, C_in, *spatial)``, ``W, B: (C_out, C_in/groups, *kernel)``.

    ``padding`` must be a tuple of ints here (the layer pads explicitly for other modes).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, stride, padding, dilation, groups, route=None, pool=None):
        ctx.save_for_backward(x, feedback)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.route, ctx.pool = route, pool
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)
        return _CONV[weight.dim() - 2](x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, feedback = ctx.saved_tensors
        if grad_out is None:
            return _unused(ctx, feedback, 10)
        stride, padding, dilation, groups = ctx.conf
        need_x = ctx.needs_input_grad[0] and ctx.route is None
        mask = [need_x, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        grad_x = grad_w = grad_b = None
        if any(mask):
            # convolution_backward forms grad_input from its `weight` argument (here B) and
            # grad_weight from the input alone: exactly the FA split, in one fused call.
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x, feedback, [feedback.shape[0]] if mask[2] else None,
                list(stride), list(padding), list(dilation), False, [0] * (feedback.dim() - 2), groups, mask)
        if ctx.needs_input_grad[0] and ctx.route is not None:
            grad_x = ctx.route.direct_error(x)
        if ctx.pool is not None:
            ctx.pool.append(feedback)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None
