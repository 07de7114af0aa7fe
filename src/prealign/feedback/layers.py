"""``FeedbackLinear`` and ``FeedbackConv1d/2d/3d``: ``nn.Linear`` / ``nn.Conv*d`` with a pluggable learning rule.

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

from .functional import FeedbackConvFunction, FeedbackLinearFunction
from .rules import _LEARNING, RULES, get_rule


KP_DECAY = 0.01
"""Default per-step Kolen–Pollack decay ``d`` (a fraction of ``B − W`` removed per optimizer step).

With ``d = 0.01``, ``B − W`` shrinks by ``(1 − d)`` per step: to 49 % after 71 steps (one epoch of
mnist5k at batch 64) and to ~10⁻⁶ after the 1,400 steps of ``prealign compare``'s 20 epochs."""


class FeedbackLayer:
    """Mixin with the state and rule dispatch shared by the feedback layers."""

    kp_decay: float = KP_DECAY  # kp: per-step decay d of (B - W); see prealign.feedback.rules and set_kp_decay

    def _setup_feedback(self, rule: str = "fa", generator: torch.Generator | None = None, alpha_b: float = 2.0) -> None:
        get_rule(rule)
        w = self.weight
        std = math.sqrt(alpha_b / w[0].numel())
        feedback = torch.randn(w.shape, generator=generator) * std
        self.register_buffer("feedback", feedback.to(device=w.device, dtype=w.dtype))
        self.register_buffer("dfa_feedback", torch.empty(0, device=w.device, dtype=w.dtype))
        self.rule = rule
        self._exact = False
        self._dfa_sink = None
        self.reseed_direct_feedback(generator)
        self._kp_gap = None  # scratch for prealign.feedback.kp: B - W before an optimizer step

    @property
    def rule(self) -> str:
        """The rule's name (:data:`~prealign.feedback.rules.RULES`)."""
        return self._rule

    @rule.setter
    def rule(self, name: str) -> None:
        self._rule = name
        if (r := RULES.get(name)) is not None and r.learns_feedback:
            _LEARNING.add(self)  # from now on the optimizer-step hooks (prealign.feedback.kp) carry W's updates to B

    def __setstate__(self, state):  # copy.deepcopy / pickle: a copy under kp follows its own optimizer too
        super().__setstate__(state)
        if (r := RULES.get(self._rule)) is not None and r.learns_feedback:
            _LEARNING.add(self)

    def reseed_direct_feedback(self, generator: torch.Generator | None) -> None:
        """Draw the seed of this layer's DFA matrix ``D`` from ``generator`` (``None``: the global RNG);
        ``D`` itself is drawn from that seed on first use (its shape needs the output size)."""
        self._dfa_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.dfa_feedback = torch.empty(0, device=self.weight.device, dtype=self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule}"

    def _step_feedback(self) -> tuple[torch.Tensor | None, list | None]:
        """The matrix the error travels through on this step (None for the plain op), and the
        buffer pool the backward pass returns it to (per-step rules only)."""
        if self._exact or not torch.is_grad_enabled():
            return None, None
        rule = RULES.get(self.rule) or get_rule(self.rule)
        if rule.feedback is None:
            return None, None
        if not rule.per_step:
            return rule.feedback(self), None
        pool = self.__dict__.setdefault("_feedback_pool", [])
        w = self.weight
        out = pool.pop() if pool else None
        if out is None or out.shape != w.shape or out.dtype != w.dtype or out.device != w.device:
            out = torch.empty_like(w, requires_grad=False)
        return rule.feedback(self, out), pool

    def _route(self):
        rule = RULES[self.rule]
        return self if rule.direct else None

    # -- DFA: the output error projected straight to this layer's input ----------------
    def direct_error(self, x: torch.Tensor) -> torch.Tensor:
        """``e D`` reshaped like ``x``; ``e``: the model's output error ``(N, n_out)``."""
        sink = self._dfa_sink
        if sink is None or sink.error is None:
            raise RuntimeError("dfa layer has no output error: convert the whole model with convert(model, 'dfa')")
        e = sink.error
        n_in = x[0].numel()
        if self.dfa_feedback.shape != (e.shape[1], n_in):
            gen = torch.Generator().manual_seed(self._dfa_seed)
            d = torch.randn(e.shape[1], n_in, generator=gen) * self.feedback.std().item()
            self.dfa_feedback = d.to(device=x.device, dtype=x.dtype)
        return (e.to(x.dtype) @ self.dfa_feedback).view_as(x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "dfa_feedback"
        if key in state_dict and state_dict[key].shape != self.dfa_feedback.shape:
            self.dfa_feedback = torch.empty_like(state_dict[key], device=self.weight.device, dtype=self.weight.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class FeedbackLinear(FeedbackLayer, nn.Linear):
    """``nn.Linear`` whose backward sends the error through the rule's feedback matrix.

    Shapes: input ``(..., in_features)``, ``weight``/``feedback`` ``(out_features, in_features)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rule: str = "fa", *,
                 generator: torch.Generator | None = None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup_feedback(rule, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feedback, pool = self._step_feedback()
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
        feedback, pool = self._step_feedback()
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


class FeedbackConv2d(_FeedbackConv, nn.Conv2d):
    """``nn.Conv2d`` whose backward sends the error through ``conv_transpose2d`` with ``B``.

    Shapes: input ``(N, C_in, H, W)``, ``weight``/``feedback`` ``(C_out, C_in/groups, kH, kW)``.
    """


class FeedbackConv3d(_FeedbackConv, nn.Conv3d):
    """``nn.Conv3d`` whose backward sends the error through ``conv_transpose3d`` with ``B``.

    Shapes: input ``(N, C_in, D, H, W)``, ``weight``/``feedback`` ``(C_out, C_in/groups, kD, kH, kW)``.
    """
