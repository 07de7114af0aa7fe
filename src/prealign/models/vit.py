"""A small Vision Transformer (Dosovitskiy et al. 2021) whose every weight matrix follows the rule.

Patch embedding by a strided convolution (kernel = stride = ``patch``), fixed 2-D sine-cosine
position embeddings and global mean pooling instead of a class token (the "simple ViT" of
Beyer et al. 2022, "Better plain ViT baselines for ImageNet-1k"), then ``depth`` pre-norm encoder
blocks ``x + Attn(LN(x))``, ``x + MLP(LN(x))``, a final LayerNorm and a linear head.

Attention is built from four ``nn.Linear`` projections (q, k, v, out) around
:func:`torch.nn.functional.scaled_dot_product_attention`, which holds no weights, so every
weight matrix is a ``Linear`` or the patch ``Conv2d`` and converts under every rule; LayerNorm
scales and shifts keep their ordinary, local gradient. No learned position embedding or class
token: either would be a free parameter outside any layer. Shapes: tokens ``(N, P, dim)`` with
``P = (H/patch)·(W/patch)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .registry import finish, register_model


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10_000.0) -> torch.Tensor:
    """Fixed position embeddings ``(h·w, dim)``: ``[sin(xω), cos(xω), sin(yω), cos(yω)]`` with
    ``ω_k = temperature^(−k/(dim/4 − 1))``, row-major over the patch grid. ``dim`` divisible by 4."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1))
    x, y = x.flatten()[:, None] * omega, y.flatten()[:, None] * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()


class Attention(nn.Module):
    """Multi-head self-attention from ``nn.Linear`` q/k/v/out projections: ``(N, P, dim)`` → ``(N, P, dim)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, p, d = x.shape

        def split(t):  # (N, P, dim) → (N, heads, P, dim/heads)
            return t.view(n, p, self.heads, d // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.out(a.transpose(1, 2).reshape(n, p, d))


class EncoderBlock(nn.Module):
    """Pre-norm Transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (MLP: dim → mlp_dim → dim, GELU)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Images ``(N, C, H, W)`` → logits ``(N, num_classes)``; H and W divisible by ``patch``."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, *, patch: int = 4, dim: int = 64, depth: int = 4,
                 heads: int = 4, mlp_dim: int = 128):
        super().__init__()
        c, h, w = (int(d) for d in input_shape)
        if h % patch or w % patch:
            raise ConfigError(f"vit with {patch}×{patch} patches needs image sides divisible by {patch}, got "
                              f"{tuple(input_shape)}; pad or resize the data (e.g. to 32×32)")
        if dim % heads or dim % 4:
            raise ConfigError(f"vit needs dim divisible by heads ({heads}) and by 4, got dim={dim}")
        self.patch_embed = nn.Conv2d(c, dim, patch, stride=patch)
        self.register_buffer("position", sincos_2d(h // patch, w // patch, dim), persistent=False)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.position.to(x.dtype)  # (N, P, dim)
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


@register_model("vit")
def vit_factory(input_shape: Sequence[int], num_classes: int) -> ViT:
    """Plain small ViT: 4×4 patches, width 64, 4 blocks of 4 heads, MLP width 128 (≈ 0.14M parameters)."""
    return ViT(input_shape, num_classes)


def vit(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, rule: str = "fa", *, patch: int = 4,
        dim: int = 64, depth: int = 4, heads: int = 4, mlp_dim: int = 128, generator: torch.Generator | None = None,
        alpha_w: float = 2.0, alpha_b: float = 2.0) -> ViT:
    """The ViT under ``rule``, initialised by :func:`prealign.init_weights` from ``generator``.
    Register another size for configs with ``register_model("vit_s", functools.partial(ViT, dim=128))``."""
    model = ViT(input_shape, num_classes, patch=patch, dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim)
    return finish(model, input_shape, num_classes, rule=rule, generator=generator, alpha_w=alpha_w, alpha_b=alpha_b)
