"""Autograd Functions for linear, bilinear, convolution and transposed-convolution layers that take a feedback tensor.

Forward is the ordinary op. Backward computes, with the same FLOPs as autograd:

- input error ``δ B`` (``conv_transpose`` with ``B`` for convolutions, the plain convolution with
  ``B`` for transposed ones) — or, when a :class:`~prealign.feedback.dfa.DirectRoute` is given, the
  network's output error projected through the layer's direct-feedback matrix;
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
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class FeedbackConvFunction(torch.autograd.Function):
    """1-, 2- or 3-D convolution; ``x: (N, C_in, *spatial)``, ``W, B: (C_out, C_in/groups, *kernel)``.

    With ``output_padding`` given (a tuple) it is the transposed convolution instead, ``W, B:
    (C_in, C_out/groups, *kernel)``, whose FA input error is the plain convolution of ``δ`` with ``B``.
    ``padding`` must be a tuple of ints here (the layer pads explicitly for other modes).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, stride, padding, dilation, groups, route=None, pool=None,
                output_padding=None):
        ctx.save_for_backward(x, feedback)
        ctx.conf = (stride, padding, dilation, groups, output_padding)
        ctx.route, ctx.pool = route, pool
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)
        if output_padding is not None:
            return _CONV_T[weight.dim() - 2](x, weight, bias, stride, padding, output_padding, groups, dilation)
        return _CONV[weight.dim() - 2](x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, feedback = ctx.saved_tensors
        if grad_out is None:
            return _unused(ctx, feedback, 11)
        stride, padding, dilation, groups, output_padding = ctx.conf
        transposed = output_padding is not None
        need_x = ctx.needs_input_grad[0] and ctx.route is None
        mask = [need_x, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        grad_x = grad_w = grad_b = None
        if any(mask):
            # convolution_backward forms grad_input from its `weight` argument (here B) and
            # grad_weight from the input alone: exactly the FA split, in one fused call
            # (for a transposed convolution too: its input error is the plain convolution with B).
            n_out = feedback.shape[1] * groups if transposed else feedback.shape[0]
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x, feedback, [n_out] if mask[2] else None, list(stride), list(padding), list(dilation),
                transposed, list(output_padding) if transposed else [0] * (feedback.dim() - 2), groups, mask)
        if ctx.needs_input_grad[0] and ctx.route is not None:
            grad_x = ctx.route.direct_error(x)
        if ctx.pool is not None:
            ctx.pool.append(feedback)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None, None


class FeedbackBilinearFunction(torch.autograd.Function):
    """``y_k = x₁ᵀ W_k x₂ + b_k``; ``x₁: (..., in1)``, ``x₂: (..., in2)``, ``W, B: (out, in1, in2)``.

    Input errors ``∂x₁ = Σ_k δ_k B_k x₂`` and ``∂x₂ = Σ_k δ_k B_kᵀ x₁`` (backprop's with ``B`` for ``W``;
    each reads the other input, a local activation, never ``W``); weight gradient ``δ_k x₁ x₂ᵀ``.
    """

    @staticmethod
    def forward(ctx, x1, x2, weight, bias, feedback, route=None, pool=None):
        ctx.save_for_backward(x1, x2, feedback)
        ctx.route, ctx.pool = route, pool
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)
        return F.bilinear(x1, x2, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x1, x2, feedback = ctx.saved_tensors
        if grad_out is None:
            return _unused(ctx, feedback, 7)
        g1 = g2 = grad_w = grad_b = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            if ctx.route is not None:
                g1, g2 = ctx.route.direct_error(x1, x2)
            else:
                g1 = torch.einsum("...k,kij,...j->...i", grad_out, feedback, x2) if ctx.needs_input_grad[0] else None
                g2 = torch.einsum("...k,kij,...i->...j", grad_out, feedback, x1) if ctx.needs_input_grad[1] else None
        if ctx.needs_input_grad[2]:
            grad_w = torch.einsum("...k,...i,...j->kij", grad_out, x1, x2)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        if ctx.pool is not None:
            ctx.pool.append(feedback)
        return (g1 if ctx.needs_input_grad[0] else None), (g2 if ctx.needs_input_grad[1] else None), grad_w, grad_b, \
            None, None, None
