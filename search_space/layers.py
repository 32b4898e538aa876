"""Small shared layers: channel rounding, activations and gates by name.

Activation and gate names are the closed sets the config validates against
(``ACTIVATIONS``, ``GATES``)."""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never below ``min_value`` and never
    more than 10% below ``v`` (the MobileNetV2 paper's rule, as in its official code)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class HSwish(nn.Module):
    """h_swish(x) = x * relu6(x + 3) / 6, written as in the CA paper's code so results match
    bit for bit (``F.hardswish`` differs in the last ulp)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.relu6(x + 3.0) / 6.0


class HSigmoid(nn.Module):
    """h_sigmoid(x) = relu6(x + 3) / 6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {
    "h_swish": HSwish,
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}

# Element-wise gates shared by SE-like modules. CA adds "softmax_hw" (see coord.py).
GATES: Dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "h_sigmoid": HSigmoid,
}


def create_act(name: str) -> nn.Module:
    """A new activation module by name; ``ValueError`` listing the allowed names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def create_gate(name: str) -> nn.Module:
    """A new element-wise gate module by name; ``ValueError`` listing the allowed names."""
    if name not in GATES:
        raise ValueError(f"unknown gate {name!r}; allowed: {', '.join(GATES)}")
    return GATES[name]()


def check_choice(option: str, value, allowed) -> None:
    """``ValueError`` quoting ``option``, the bad ``value`` and the allowed values."""
    if value not in allowed:
        raise ValueError(f"{option}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def reduced_channels(channels: int, reduction: int, min_channels: int) -> int:
    """Width of a squeeze layer: ``max(min_channels, channels // reduction)`` (CA paper rule)."""
    if reduction < 1:
        raise ValueError(f"reduction={reduction!r} must be >= 1")
    if min_channels < 1:
        raise ValueError(f"min_channels={min_channels!r} must be >= 1")
    return max(min_channels, channels // reduction)
