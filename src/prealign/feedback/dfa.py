"""Direct feedback alignment (Nøkland 2016): the model-level mechanism, for any graph.

What a ``dfa`` layer receives. ``convert(model, "dfa")`` installs two hooks on ``model`` (the
module whose output the loss uses). Every forward of ``model`` opens a fresh :class:`ErrorSink`;
at its end every differentiable tensor of the output — a tensor, or the tensors of a tuple,
list, dict or other pytree in ``torch.utils._pytree`` flattening order (dicts in key insertion
order) — passes through one identity whose backward stores the **output error**

    ``e = [∂L/∂out₁ | ∂L/∂out₂ | …]``,  shape ``(N, Σₖ numel(outₖ[0]))``,

each ``∂L/∂outₖ`` flattened per sample (zeros for an output the loss does not use; outputs that
do not require grad, e.g. integer tensors, are left out). Every differentiable output must
have the batch ``N`` in dim 0. Backward runs from the outputs down, so ``e`` is known before any
layer's backward runs. A ``dfa`` layer then sends ``e D`` to its input instead of ``δ B``:
``D`` has shape ``(n_out, n_in)`` with ``n_in`` the numel of one sample of the layer's input
(for a layer with two inputs, as ``Bilinear``, of both, concatenated), fixed random, drawn on
first use from the layer's own seed at the scale of its ``B`` (:meth:`FeedbackLayer.direct_error`);
the layer's own weight gradient stays the local ``δᵀ x``.

Any topology: everything between converted layers (activations, BatchNorm, residual additions,
pooling, attention's softmax(QKᵀ)V) back-propagates exactly — it has no weights to transport
— so a tensor consumed by several converted layers or by a skip connection receives the sum of
what each consumer sends back: ``e D₁ + e D₂`` for two heads fed by one trunk, ``e D`` plus the
skip path's error for a residual block. The output layers themselves receive the true ``∂L/∂out``
as their ``δ`` (the local rule is exact there).

Each forward has its own sink, so several forwards before one backward (gradient accumulation,
a loss over two forwards) each send their own output error. A layer whose backward runs without
its forward's output error (called outside ``model``'s forward, or feeding the loss other than
through ``model``'s outputs) raises :class:`~prealign.errors.PrealignError` instead of using a
stale error.
"""
from __future__ import annotations

import torch
from torch.utils import _pytree as pytree

from ..errors import PrealignError


class ErrorSink:
    """The output error ``e`` (shape ``(N, n_out)``) of one forward of the model, once backward has reached it."""

    __slots__ = ("error",)

    def __init__(self):
        self.error: torch.Tensor | None = None


class DirectRoute:
    """What a ``dfa`` layer's backward needs: the layer (for its ``D``) and the sink of the forward it ran in."""

    __slots__ = ("layer", "sink")

    def __init__(self, layer, sink: ErrorSink | None):
        self.layer, self.sink = layer, sink

    def direct_error(self, *xs: torch.Tensor):
        """``e D`` split and shaped like ``xs`` (one tensor for one input, else a tuple)."""
        if self.sink is None or self.sink.error is None:
            raise PrealignError(f"a dfa layer ({type(self.layer).__name__}) got no output error: it ran outside the forward of "
                                "the model convert(model, 'dfa') was called on, or its output reaches the loss other "
                                "than through that model's outputs; convert the model whose outputs the loss uses")
        out = self.layer.direct_error(self.sink.error, *xs)
        return out[0] if len(xs) == 1 else out


class _CaptureError(torch.autograd.Function):
    """Identity on the model's differentiable outputs; its backward stores ``e`` in the sink."""

    @staticmethod
    def forward(ctx, sink, *outputs):
        ctx.sink = sink
        ctx.shapes = [o.shape for o in outputs]
        ctx.set_materialize_grads(False)  # an output the loss does not use sends nothing back (as under backprop)
        return tuple(o.view_as(o) for o in outputs)

    @staticmethod
    def backward(ctx, *grads):
        ref = next(g for g in grads if g is not None)
        n = ref.shape[0]
        parts = [g.detach().reshape(n, -1).to(ref.dtype) if g is not None else ref.new_zeros(n, shape[1:].numel())
                 for g, shape in zip(grads, ctx.shapes)]
        ctx.sink.error = torch.cat(parts, 1)
        return (None, *grads)


class DirectFeedbackHook:
    """Forward hook (installed by ``convert(model, "dfa")``) that routes the output error to the sink
    its forward opened (:class:`_OpenSink`, the matching pre-hook)."""

    def __init__(self):
        self.current: ErrorSink | None = None  # the sink of the forward in progress; None between forwards

    def __call__(self, module, inputs, output):
        sink, self.current = self.current, None  # a layer called after this forward gets no sink, never a stale one
        if not torch.is_grad_enabled():
            return None
        leaves, spec = pytree.tree_flatten(output)
        idx = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not idx:
            return None
        batch = {tuple(leaves[i].shape[:1]) for i in idx}
        if len(batch) != 1 or () in batch:
            shapes = ", ".join(str(tuple(leaves[i].shape)) for i in idx)
            raise PrealignError(f"dfa needs the batch in dim 0 of every differentiable model output; got outputs of shapes "
                                f"{shapes}: detach outputs that carry no error, or return them batch-first")
        sink = sink if sink is not None else ErrorSink()
        for i, t in zip(idx, _CaptureError.apply(sink, *[leaves[i] for i in idx])):
            leaves[i] = t
        return pytree.tree_unflatten(leaves, spec)


class _OpenSink:
    """Forward pre-hook: a fresh :class:`ErrorSink` for each forward of the model."""

    def __init__(self, hook: DirectFeedbackHook):
        self.hook = hook

    def __call__(self, module, inputs):
        self.hook.current = ErrorSink()


def find_hook(model: torch.nn.Module):
    """The model's DFA hook and its key in ``model._forward_hooks``, or ``(None, None)``."""
    for key, hook in model._forward_hooks.items():
        if isinstance(hook, DirectFeedbackHook):
            return key, hook
    return None, None


def install(model: torch.nn.Module) -> DirectFeedbackHook:
    """Install the DFA hooks on ``model`` (once); return the hook whose ``current`` sink layers read."""
    _, hook = find_hook(model)
    if hook is None:
        hook = DirectFeedbackHook()
        model.register_forward_pre_hook(_OpenSink(hook))
        model.register_forward_hook(hook)
    return hook


def remove(model: torch.nn.Module) -> None:
    """Remove the DFA hooks from ``model``, if any."""
    key, _ = find_hook(model)
    if key is not None:
        del model._forward_hooks[key]
    for key in [k for k, h in model._forward_pre_hooks.items() if isinstance(h, _OpenSink)]:
        del model._forward_pre_hooks[key]
