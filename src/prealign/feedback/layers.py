"""Feedback layers: ``nn.Linear``, ``nn.Bilinear``, ``nn.Conv*d``, ``nn.ConvTranspose*d`` and
``nn.MultiheadAttention``'s projections with a pluggable learning rule.

Each layer holds its forward weight ``W`` (``weight``), a ``feedback`` buffer ``B`` of the same
shape (never a parameter: the optimizer never sees it; saved in ``state_dict``; moved by
``.to()``), and a ``rule`` name from :data:`prealign.feedback.rules.RULES`. Under ``bp`` — or
inside :func:`prealign.exact_gradients`, or when no gradient is needed — ``forward`` is exactly
the parent's, so BP and evaluation cost nothing extra.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from ..errors import PrealignError
from .dfa import DirectRoute
from .functional import FeedbackBilinearFunction, FeedbackConvFunction, FeedbackLinearFunction
from . import learned
from .rules import _LEARNING, RULES, changed_learning, get_rule


KP_DECAY = 0.01
"""Default per-step Kolen–Pollack decay ``d`` (a fraction of ``B − W`` removed per optimizer step).

With ``d = 0.01``, ``B − W`` shrinks by ``(1 − d)`` per step: to 49 % after 71 steps (one epoch of
mnist5k at batch 64) and to ~10⁻⁶ after the 1,400 steps of ``prealign compare``'s 20 epochs."""


class FeedbackLayer:
    """Mixin with the state and rule dispatch shared by the feedback layers."""

    kp_decay: float = KP_DECAY  # kp: per-step decay d of (B - W); see prealign.feedback.rules and set_kp_decay
    _plain: type[nn.Module] | None = None  # the torch class it was converted from (prealign.unconvert turns it back)

    def _setup_feedback(self, rule: str = "fa", generator: torch.Generator | None = None, alpha_b: float = 2.0) -> None:
        get_rule(rule)
        w = self.weight
        std = math.sqrt(alpha_b / w[0].numel())
        feedback = torch.randn(w.shape, generator=generator) * std
        self.register_buffer("feedback", feedback.to(device=w.device, dtype=w.dtype))
        self.register_buffer("dfa_feedback", torch.empty(0, device=w.device, dtype=w.dtype))
        self.rule = rule
        self._exact = False
        self._dfa_hook = None  # the model's DirectFeedbackHook under dfa (set by convert)
        self.reseed_direct_feedback(generator)
        self._kp_gap = None  # scratch for prealign.feedback.kp: B - W before an update (prealign.feedback.learned)

    @property
    def rule(self) -> str:
        """The rule's name (:data:`~prealign.feedback.rules.RULES`)."""
        return self._rule

    @rule.setter
    def rule(self, name: str) -> None:
        self._rule = name
        learned.close_cycle(self)
        if (r := RULES.get(name)) is not None and (r.learns_feedback or r.mirrors):
            _LEARNING.add(self)  # from now on the optimizer-step hooks (prealign.feedback.step) update B
        changed_learning()

    def __setstate__(self, state):  # copy.deepcopy / pickle: a copy under kp follows its own optimizer too
        super().__setstate__(state)
        for key in learned.STATE:  # a copy starts without an open update cycle
            self.__dict__.pop(key, None)
        if (r := RULES.get(self._rule)) is not None and (r.learns_feedback or r.mirrors):
            _LEARNING.add(self)
            changed_learning()

    def reseed_direct_feedback(self, generator: torch.Generator | None) -> None:
        """Draw the seed of this layer's DFA matrix ``D`` from ``generator`` (``None``: the global RNG);
        ``D`` itself is drawn from that seed on first use (its shape needs the output size)."""
        self._dfa_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.dfa_feedback = torch.empty(0, device=self.weight.device, dtype=self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule}"

    def _uses_feedback(self) -> bool:
        """Whether this forward's backward differs from autograd's (not under bp, exact_gradients or no_grad)."""
        if self._exact or not torch.is_grad_enabled():
            return False
        return (RULES.get(self.rule) or get_rule(self.rule)).feedback is not None

    def _step_feedback(self, sends_error: bool = True) -> tuple[torch.Tensor | None, list | None]:
        """The matrix the error travels through on this step (None for the plain op), and the
        buffer pool the backward pass returns it to (per-step rules only).

        ``sends_error``: whether this forward's backward sends an error to the layer's input (an
        input requires grad). When it does not (the first layer of a network), nothing reads the
        matrix, so a per-step rule does not form it (brsf draws nothing for that layer)."""
        if self._exact or not torch.is_grad_enabled():
            return None, None
        rule = RULES.get(self._rule) or get_rule(self._rule)
        if rule.feedback is None:
            return None, None
        if not rule.per_step:
            if rule.learns_feedback or rule.mirrors:
                learned.before_forward(self)  # B follows W's updates: open or check this layer's update cycle
            return rule.feedback(self), None
        if not sends_error:
            return self.feedback, None  # a placeholder of the right shape; the backward never reads it
        pool = self.__dict__.setdefault("_feedback_pool", [])
        w = self.weight
        out = pool.pop() if pool else None
        if out is None or out.shape != w.shape or out.dtype != w.dtype or out.device != w.device:
            out = torch.empty_like(w, requires_grad=False)
        return rule.feedback(self, out), pool

    def _route(self) -> DirectRoute | None:
        """Under a direct rule: the route to this forward's output error (:mod:`prealign.feedback.dfa`)."""
        if not RULES[self.rule].direct:
            return None
        hook = self._dfa_hook
        return DirectRoute(self, hook.current if hook is not None else None)

    # -- DFA: the output error projected straight to this layer's input ----------------
    def direct_error(self, error: torch.Tensor, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``e D`` split and reshaped like ``xs``: ``e`` the model's output error ``(N, n_out)``, ``D`` this
        layer's fixed ``(n_out, n_in)`` matrix, ``n_in`` = the per-sample numel of all ``xs`` together
        (one input for most layers, two for ``Bilinear``). ``D`` is drawn from the layer's seed at the
        scale (std) of ``B`` when first needed and again if ``n_out`` or ``n_in`` change."""
        sizes = [x[0].numel() if x.dim() else 0 for x in xs]
        if any(x.dim() == 0 or x.shape[0] != error.shape[0] for x in xs):
            raise PrealignError(f"dfa treats dim 0 as the batch: the output error has batch {error.shape[0]} but a "
                                f"{type(self).__name__} got input of shape {[tuple(x.shape) for x in xs]}; make the "
                                "model and its layers batch-first (e.g. batch_first=True for attention)")
        if self.dfa_feedback.shape != (error.shape[1], sum(sizes)):
            gen = torch.Generator().manual_seed(self._dfa_seed)
            d = torch.randn(error.shape[1], sum(sizes), generator=gen) * self.feedback.std().item()
            self.dfa_feedback = d.to(device=xs[0].device, dtype=xs[0].dtype)
        out = error.to(xs[0].dtype) @ self.dfa_feedback
        return tuple(part.reshape(x.shape) for part, x in zip(out.split(sizes, 1), xs))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "dfa_feedback"
        if key in state_dict and state_dict[key].shape != self.dfa_feedback.shape:
            self.dfa_feedback = torch.empty_like(state_dict[key], device=self.weight.device, dtype=self.weight.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        learned.close_cycle(self)  # loaded W and B are not an update B should follow


class FeedbackLinear(FeedbackLayer, nn.Linear):
    """``nn.Linear`` whose backward sends the error through the rule's feedback matrix.

    Shapes: input ``(..., in_features)``, ``weight``/``feedback`` ``(out_features, in_features)``.
    """

    _plain = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rule: str = "fa", *,
                 generator: torch.Generator | None = None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup_feedback(rule, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feedback, pool = self._step_feedback(x.requires_grad)
        if feedback is None:
            return F.linear(x, self.weight, self.bias)
        return FeedbackLinearFunction.apply(x, self.weight, self.bias, feedback, self._route(), pool)


class _FeedbackConv(FeedbackLayer):
    """Shared by the feedback convolutions: the parent's op, or :class:`FeedbackConvFunction`
    (``conv_transpose`` with ``B`` in the backward) when the rule needs it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", rule: str = "fa", *,
                 generator: torch.Generator | None = None, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self._setup_feedback(rule, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feedback, pool = self._step_feedback(x.requires_grad)
        if feedback is None:
            return self._conv_forward(x, self.weight, self.bias)
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            padding = (0,) * len(self.kernel_size)
        return FeedbackConvFunction.apply(x, self.weight, self.bias, feedback, self.stride, padding,
                                          self.dilation, self.groups, self._route(), pool)


class FeedbackConv1d(_FeedbackConv, nn.Conv1d):
    """``nn.Conv1d`` whose backward sends the error through ``conv_transpose1d`` with ``B``.

    Shapes: input ``(N, C_in, L)``, ``weight``/``feedback`` ``(C_out, C_in/groups, k)``.
    """

    _plain = nn.Conv1d


class FeedbackConv2d(_FeedbackConv, nn.Conv2d):
    """``nn.Conv2d`` whose backward sends the error through ``conv_transpose2d`` with ``B``.

    Shapes: input ``(N, C_in, H, W)``, ``weight``/``feedback`` ``(C_out, C_in/groups, kH, kW)``.
    """

    _plain = nn.Conv2d


class FeedbackConv3d(_FeedbackConv, nn.Conv3d):
    """``nn.Conv3d`` whose backward sends the error through ``conv_transpose3d`` with ``B``.

    Shapes: input ``(N, C_in, D, H, W)``, ``weight``/``feedback`` ``(C_out, C_in/groups, kD, kH, kW)``.
    """

    _plain = nn.Conv3d


class FeedbackOutProjection(FeedbackLinear):
    """``nn.MultiheadAttention.out_proj`` (torch's ``NonDynamicallyQuantizableLinear``) as a :class:`FeedbackLinear`."""

    _plain = NonDynamicallyQuantizableLinear


class FeedbackBilinear(FeedbackLayer, nn.Bilinear):
    """``nn.Bilinear`` whose backward sends the error through ``B``: ``∂x₁ = Σ_k δ_k B_k x₂``, ``∂x₂ = Σ_k δ_k B_kᵀ x₁``.

    Shapes: inputs ``(..., in1_features)`` and ``(..., in2_features)``, ``weight``/``feedback``
    ``(out_features, in1_features, in2_features)``. Under dfa, ``D`` covers both inputs (``n_in = in1 + in2``).
    """

    _plain = nn.Bilinear

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        feedback, pool = self._step_feedback(x1.requires_grad or x2.requires_grad)
        if feedback is None:
            return F.bilinear(x1, x2, self.weight, self.bias)
        return FeedbackBilinearFunction.apply(x1, x2, self.weight, self.bias, feedback, self._route(), pool)


class _FeedbackConvTranspose(FeedbackLayer):
    """Shared by the feedback transposed convolutions: the input error is the plain convolution of
    ``δ`` with ``B`` (instead of ``W``); weight and bias gradients as autograd's."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        dims = len(self.kernel_size)
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, dims,
                                              self.dilation)
        feedback, pool = self._step_feedback(x.requires_grad)
        if feedback is None:
            return _CONV_T[dims](x, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups,
                                 self.dilation)
        return FeedbackConvFunction.apply(x, self.weight, self.bias, feedback, self.stride, self.padding, self.dilation,
                                          self.groups, self._route(), pool, tuple(output_padding))


_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class FeedbackConvTranspose1d(_FeedbackConvTranspose, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` under a rule; ``weight``/``feedback`` ``(C_in, C_out/groups, k)``, input ``(N, C_in, L)``."""

    _plain = nn.ConvTranspose1d


class FeedbackConvTranspose2d(_FeedbackConvTranspose, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` under a rule; ``weight``/``feedback`` ``(C_in, C_out/groups, kH, kW)``, input ``(N, C_in, H, W)``."""

    _plain = nn.ConvTranspose2d


class FeedbackConvTranspose3d(_FeedbackConvTranspose, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` under a rule; ``weight``/``feedback`` ``(C_in, C_out/groups, kD, kH, kW)``."""

    _plain = nn.ConvTranspose3d


class _ReturnTo:
    """Hands the whole per-step feedback buffer back to its pool when a backward that used a slice of it is done."""

    __slots__ = ("buffer", "pool")

    def __init__(self, pool: list, buffer: torch.Tensor):
        self.pool, self.buffer = pool, buffer

    def append(self, _used) -> None:
        self.pool.append(self.buffer)


class AttentionProjection(FeedbackLayer, nn.Module):
    """One input projection of a :class:`FeedbackMultiheadAttention`, as a feedback layer.

    It owns no parameter: ``weight`` is its attention module's ``in_proj_weight`` (``(3E, E)``, packed
    q/k/v) or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` (``(E, kdim)`` …, when ``kdim``/``vdim``
    differ from ``E``), and ``bias`` the matching part of ``in_proj_bias`` — so the plain module's
    ``state_dict`` keys are unchanged and only this module's ``feedback``/``dfa_feedback`` buffers are
    added. Everything that works on feedback layers (rules, KP, ``align``, angles) works on it.
    """

    def __init__(self, owner: nn.MultiheadAttention, weight_name: str, bias_rows: slice | None):
        super().__init__()
        self.__dict__["_owner"] = owner  # not a submodule: the attention module owns this one
        self.weight_name, self.bias_rows = weight_name, bias_rows

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self._owner, self.weight_name)

    @property
    def bias(self) -> torch.Tensor | None:
        b = self._owner.in_proj_bias
        return None if b is None or self.bias_rows is None else b[self.bias_rows]

    def extra_repr(self) -> str:
        return f"{self.weight_name}, weight={tuple(self.weight.shape)}, rule={self.rule}"

    def forward(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """``x Wᵀ + b``, restricted to the weight rows ``rows`` (q, k or v of a packed weight) if given."""
        w, b = self.weight, self.bias
        if rows is not None:
            w, b = w[rows], (None if b is None else b[rows])
        feedback, pool = self._step_feedback(x.requires_grad)
        if feedback is None:
            return F.linear(x, w, b)
        if rows is not None:
            pool = None if pool is None else _ReturnTo(pool, feedback)
            feedback = feedback[rows]
        return FeedbackLinearFunction.apply(x, w, b, feedback, self._route(), pool)


class FeedbackMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose input projections (:class:`AttentionProjection` children
    ``in_proj``, or ``q_proj``/``k_proj``/``v_proj``) and output projection (``out_proj``, a
    :class:`FeedbackLinear`) follow the rule; ``softmax(QKᵀ/√d)V`` itself has no weights and
    back-propagates exactly. Same arguments, masks and outputs as ``nn.MultiheadAttention.forward``.
    Under ``torch.no_grad`` it *is* ``nn.MultiheadAttention.forward`` (torch's inference fast path
    included: the same weights, the same output, and no backward for a rule to change); with
    gradients, under every rule (``bp`` and :func:`~prealign.exact_gradients` too, so that hooks on the
    projections see every training forward), the batch-first path below, which calls the projections
    as modules. It equals torch's up to floating-point reassociation (~1e-16 relative in float64).
    Inside :func:`~prealign.exact_gradients` it forms the attention weights explicitly instead of
    calling ``scaled_dot_product_attention``, whose CPU kernel has no double backward: Hessian-vector
    products (``prealign analyze hessian``) work on attention models.
    """

    _plain = nn.MultiheadAttention

    def _setup_projections(self, rule: str, generator: torch.Generator | None, alpha_b: float) -> None:
        e = self.embed_dim
        if self._qkv_same_embed_dim:
            projections = {"in_proj": ("in_proj_weight", slice(0, 3 * e))}
        else:
            projections = {f"{n}_proj": (f"{n}_proj_weight", slice(i * e, (i + 1) * e)) for i, n in enumerate("qkv")}
        for name, (weight_name, rows) in projections.items():
            proj = AttentionProjection(self, weight_name, rows)
            proj._setup_feedback(rule, generator, alpha_b)
            self.add_module(name, proj)
        self._modules["out_proj"] = self._modules.pop("out_proj")  # module order = forward order: in, then out

    def _project(self, query, key, value):
        e = self.embed_dim
        if not self._qkv_same_embed_dim:
            return self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if query is key and key is value:
            return self.in_proj(query).chunk(3, dim=-1)
        return tuple(self.in_proj(t, slice(i * e, (i + 1) * e)) for i, t in enumerate((query, key, value)))

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not torch.is_grad_enabled():  # no backward: torch's own attention (and its inference fast path)
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                                   is_causal)
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if not self.batch_first or not batched:  # (L, N, E) -> (N, L, E): the projections see batch-first tensors
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        causal_only = is_causal and key_padding_mask is None and not need_weights
        attn_mask = None if causal_only else F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None,
                                                               other_name="", target_type=query.dtype,
                                                               check_other=False)
        n, h = query.shape[0], self.num_heads
        q, k, v = self._project(query, key, value)
        mask = None if attn_mask is None else (attn_mask.view(1, 1, *attn_mask.shape) if attn_mask.dim() == 2
                                               else attn_mask.view(n, h, *attn_mask.shape[1:]))
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.transpose(0, 1).expand(n, 1, -1)], 1)
            v = torch.cat([v, self.bias_v.transpose(0, 1).expand(n, 1, -1)], 1)
            mask, key_padding_mask = _pad_last(mask), _pad_last(key_padding_mask)
        q, k, v = (t.unflatten(-1, (h, self.head_dim)).transpose(1, 2) for t in (q, k, v))  # (N, H, L, d)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(n, h, 1, self.head_dim)], 2)
            v = torch.cat([v, v.new_zeros(n, h, 1, self.head_dim)], 2)
            mask, key_padding_mask = _pad_last(mask), _pad_last(key_padding_mask)
        if key_padding_mask is not None:
            pad = key_padding_mask.view(n, 1, 1, -1)
            mask = pad if mask is None else mask + pad
        dropout = self.dropout if self.training else 0.0
        weights = None
        exact = any(m._exact for m in self.children() if isinstance(m, FeedbackLayer))
        if need_weights or exact:  # exact_gradients (Hessians, attacks): a path that is twice differentiable
            scores = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            if dropout > 0:
                weights = F.dropout(weights, p=dropout)
            out = weights @ v
            weights = None if not need_weights else weights.mean(dim=1) if average_attn_weights else weights
        else:
            out = F.scaled_dot_product_attention(q, k, v, mask, dropout, is_causal=causal_only)
        out = self.out_proj(out.transpose(1, 2).flatten(2))  # (N, L, E)
        if not self.batch_first or not batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights


def _pad_last(mask: torch.Tensor | None) -> torch.Tensor | None:
    """One more (unmasked) key position for a float mask, as ``F.multi_head_attention_forward`` does."""
    return None if mask is None else F.pad(mask, (0, 1))
