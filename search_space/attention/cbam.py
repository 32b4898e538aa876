"""Convolutional Block Attention Module (CBAM).

Woo, Park, Lee & Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521. Channel attention (a shared MLP over the avg- and
max-pooled descriptors, summed, sigmoid) followed by spatial attention (a k x k conv over the
channel-wise mean and max maps, BatchNorm, sigmoid), as in the paper.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from search_space.layers import ACTIVATIONS, check_choice, create_act, reduced_channels
from search_space.registry import register


class _ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int, min_channels: int, act: str):
        super().__init__()
        mid = reduced_channels(channels, reduction, min_channels)
        self.fc1 = nn.Conv2d(channels, mid, 1)
        self.act = create_act(act)
        self.fc2 = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))  # (N, C, 1, 1)
        mx = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))
        return x * torch.sigmoid(avg + mx)


class _SpatialGate(nn.Module):
    def __init__(self, kernel_size: int):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size!r} must be a positive odd integer")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)  # (N, 2, H, W)
        return x * torch.sigmoid(self.bn(self.conv(s)))


@register("attention", "cbam")
class CbamModule(nn.Module):
    """CBAM: channel gate then spatial gate.

    Args:
        channels: input (= output) channels.
        reduction: channel-MLP squeeze ratio (mid width ``max(min_channels, channels // reduction)``).
        min_channels: lower bound of the mid width.
        act: activation in the channel MLP.
        kernel_size: spatial conv kernel (odd).
    """

    NAME = "cbam"

    def __init__(self, channels: int, reduction: int = 24, min_channels: int = 8, act: str = "relu",
                 kernel_size: int = 7):
        super().__init__()
        check_choice("act", act, ACTIVATIONS)
        self.channel = _ChannelGate(channels, reduction, min_channels, act)
        self.spatial = _SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


ConvBlockAttention = CbamModule
