"""Efficient Channel Attention (ECA).

Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
CVPR 2020, https://arxiv.org/abs/1910.03151. Global average pool, a 1-D conv across channels
with an adaptive odd kernel ``k = odd(|log2(C) / gamma + b / gamma|)``, sigmoid.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from search_space.layers import GATES, check_choice, create_gate
from search_space.registry import register


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
    """The paper's adaptive kernel size: nearest odd number to |log2(C)/gamma + b/gamma|."""
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    return max(t if t % 2 else t + 1, 1)


@register("attention", "eca")
class EcaModule(nn.Module):
    """ECA.

    Args:
        channels: input (= output) channels.
        gamma, b: kernel-size mapping constants (paper: 2, 1).
        kernel_size: fixed kernel size; 0 (default) derives it from ``channels``.
        gate: ``sigmoid`` | ``h_sigmoid``.
    """

    NAME = "eca"

    def __init__(self, channels: int, gamma: float = 2.0, b: float = 1.0, kernel_size: int = 0,
                 gate: str = "sigmoid"):
        super().__init__()
        check_choice("gate", gate, GATES)
        k = kernel_size or eca_kernel_size(channels, gamma, b)
        if k < 1 or k % 2 == 0:
            raise ValueError(f"kernel_size={k!r} must be a positive odd integer")
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.gate = create_gate(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3)).unsqueeze(1)  # (N, 1, C)
        a = self.gate(self.conv(s)).transpose(1, 2).unsqueeze(-1)  # (N, C, 1, 1)
        return x * a


EfficientChannelAttention = EcaModule
