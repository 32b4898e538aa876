"""Squeeze-and-Excitation (SE).

Hu, Shen & Sun, "Squeeze-and-Excitation Networks", CVPR 2018, https://arxiv.org/abs/1709.01507.
Global average pool -> 1x1 conv (reduce) -> act -> 1x1 conv (expand) -> gate. The CA paper's
MobileNetV2+SE baseline (3.89M params) uses reduction 24 after the depthwise conv.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from search_space.layers import ACTIVATIONS, GATES, check_choice, create_act, create_gate, reduced_channels
from search_space.registry import register


@register("attention", "se")
class SEModule(nn.Module):
    """Squeeze-and-Excitation.

    Args:
        channels: input (= output) channels.
        reduction: squeeze ratio; mid width is ``max(min_channels, channels // reduction)``.
        min_channels: lower bound of the mid width.
        act: activation between the two convs.
        gate: ``sigmoid`` | ``h_sigmoid``.
    """

    NAME = "se"

    def __init__(self, channels: int, reduction: int = 24, min_channels: int = 8, act: str = "relu",
                 gate: str = "sigmoid"):
        super().__init__()
        check_choice("act", act, ACTIVATIONS)
        check_choice("gate", gate, GATES)
        mid = reduced_channels(channels, reduction, min_channels)
        self.fc1 = nn.Conv2d(channels, mid, 1)
        self.act = create_act(act)
        self.fc2 = nn.Conv2d(mid, channels, 1)
        self.gate = create_gate(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


SqueezeExcite = SEModule
