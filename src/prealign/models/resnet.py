"""CIFAR-style ResNets (He et al. 2016, §4.2): ResNet-20 and ResNet-56, as in BioTorch's benchmark.

A 3×3 convolution with 16 filters, then three stages of ``n`` basic blocks with 16, 32 and 64
filters (the first block of stages 2 and 3 halves the feature map by stride 2), global average
pooling and a fully connected layer: ``6n + 2`` weight layers (n = 3: ResNet-20, 0.27M
parameters; n = 9: ResNet-56, 0.85M, for 3-channel inputs and 10 classes, as the paper's Table 6).

Shortcuts are **option A** of the paper (§3.3, the one it uses on CIFAR-10, and BioTorch's
default): the identity, and where the shape changes the input subsampled by 2 and zero-padded
to the new channel count. The shortcuts thus hold no weights, so every weight of the network is
a convolution or the last linear layer, and all of them follow the rule. BatchNorm after every
convolution keeps its ordinary, local gradient (see :func:`prealign.convert`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .registry import finish, register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::2, ::2]`` zero-padded from ``c_in`` to ``c_out`` channels
    (half the extra channels before, half after). Input ``(N, c_in, H, W)`` → ``(N, c_out, ⌈H/2⌉, ⌈W/2⌉)``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.before = (c_out - c_in) // 2
        self.after = c_out - c_in - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.before, self.after))


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; 3×3 convolutions without bias."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = PadShortcut(c_in, c_out) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: input ``(N, C, H, W)`` → logits ``(N, num_classes)``."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, n: int, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        c, h, w = (int(d) for d in input_shape)
        if min(h, w) < 4:
            raise ConfigError(f"resnet needs inputs of at least 4×4 pixels, got {tuple(input_shape)}; use model mlp for this data")
        self.conv1 = nn.Conv2d(c, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, c_in = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(n):
                blocks.append(BasicBlock(c_in, width, stride=2 if stage > 0 and i == 0 else 1))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(out.mean(dim=(2, 3)))


@register_model("resnet20")
def resnet20_factory(input_shape: Sequence[int], num_classes: int) -> CifarResNet:
    """Plain ResNet-20 (n = 3), option-A shortcuts."""
    return CifarResNet(input_shape, num_classes, 3)


@register_model("resnet56")
def resnet56_factory(input_shape: Sequence[int], num_classes: int) -> CifarResNet:
    """Plain ResNet-56 (n = 9), option-A shortcuts."""
    return CifarResNet(input_shape, num_classes, 9)


def resnet20(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, rule: str = "fa", *,
             generator: torch.Generator | None = None, alpha_w: float = 2.0, alpha_b: float = 2.0) -> CifarResNet:
    """ResNet-20 under ``rule``, initialised by :func:`prealign.init_weights` from ``generator``."""
    return finish(resnet20_factory(input_shape, num_classes), input_shape, num_classes, rule=rule,
                  generator=generator, alpha_w=alpha_w, alpha_b=alpha_b)


def resnet56(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, rule: str = "fa", *,
             generator: torch.Generator | None = None, alpha_w: float = 2.0, alpha_b: float = 2.0) -> CifarResNet:
    """ResNet-56 under ``rule``, initialised by :func:`prealign.init_weights` from ``generator``."""
    return finish(resnet56_factory(input_shape, num_classes), input_shape, num_classes, rule=rule,
                  generator=generator, alpha_w=alpha_w, alpha_b=alpha_b)
