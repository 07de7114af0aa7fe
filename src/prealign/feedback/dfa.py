"""Direct feedback alignment (Nøkland 2016): the model-level mechanism.

A forward hook on the root module wraps the model's output in an identity whose backward
stores the output error ``e = ∂L/∂output`` (shape ``(N, n_out)``) in a shared
:class:`ErrorSink`. Backward runs from the output down, so by the time any layer's backward
runs, ``e`` is known; a layer under ``dfa`` then sends ``e D`` to its input instead of
``δ B`` (``D``: ``(n_out, numel of one input sample)``, fixed random, drawn on first use from
the layer's own seed at the scale of its ``B``). Works for any stack of Linear/Conv layers:
the error reaches a convolution's input as a full ``(C, *spatial)`` map.
"""
from __future__ import annotations

import torch


class ErrorSink:
    """Holds the most recent output error of the model, shape ``(N, n_out)``."""

    def __init__(self):
        self.error: torch.Tensor | None = None


class _CaptureError(torch.autograd.Function):
    @staticmethod
    def forward(ctx, output, sink):
        ctx.sink = sink
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad):
        ctx.sink.error = grad.detach().reshape(grad.shape[0], -1)
        return grad, None


class DirectFeedbackHook:
    """Forward hook (installed by ``convert(model, "dfa")``) that captures the output error."""

    def __init__(self):
        self.sink = ErrorSink()

    def __call__(self, module, inputs, output):
        if isinstance(output, torch.Tensor) and output.requires_grad and torch.is_grad_enabled():
            return _CaptureError.apply(output, self.sink)
        return None


def find_hook(model: torch.nn.Module):
    """The model's DFA hook and its key in ``model._forward_hooks``, or ``(None, None)``."""
    for key, hook in model._forward_hooks.items():
        if isinstance(hook, DirectFeedbackHook):
            return key, hook
    return None, None


def install(model: torch.nn.Module) -> ErrorSink:
    _, hook = find_hook(model)
    if hook is None:
        hook = DirectFeedbackHook()
        model.register_forward_hook(hook)
    return hook.sink


def remove(model: torch.nn.Module) -> None:
    key, _ = find_hook(model)
    if key is not None:
        del model._forward_hooks[key]
