"""Coordinate Attention (CA).

Hou, Zhou & Feng, "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021,
https://arxiv.org/abs/2103.02907. Written for coordsweep from the paper's description; the
paper-default configuration is numerically identical to the authors' module (tested against
``../shared/reference/coordatt_seed.py``) and uses the same state_dict names
(``conv1``, ``bn1``, ``conv_h``, ``conv_w``), so weights load both ways.

Ablation options beyond the paper:
  * ``pool``: how each row/column is summarised: ``avg`` (paper), ``max``, ``avgmax``
    (avg + max) or ``gem`` (generalised mean, ``(mean(clamp(x, eps)^p))^(1/p)``, ``p``
    learnable or fixed; negative inputs are clamped, so ``gem`` sees only the positive part).
  * ``directions``: ``hw`` (paper), ``h`` (only the per-row descriptor: a gate that varies
    along H) or ``w`` (only along W).
  * ``gate``: ``sigmoid`` (paper), ``h_sigmoid``, or ``softmax_hw``: the authors' open
    question of a softmax between the two directions. Per channel, the H+W logits compete in
    one softmax over all H+W coordinates; the weights are rescaled by H+W so that equal
    logits give a_h = a_w = 1, i.e. a gate of exactly 1 (identity). Needs ``directions: hw``.
  * ``norm``: ``bn`` (paper), ``gn`` (GroupNorm, up to 8 groups) or ``none``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_space.layers import ACTIVATIONS, GATES, check_choice, create_act, create_gate, reduced_channels
from search_space.registry import register

POOLS = ("avg", "max", "avgmax", "gem")
DIRECTIONS = ("hw", "h", "w")
CA_GATES = tuple(GATES) + ("softmax_hw",)
NORMS = ("bn", "gn", "none")


class _GeM(nn.Module):
    """Generalised mean over one spatial dim (keepdim)."""

    def __init__(self, p: float, learnable: bool, eps: float = 1e-6):
        super().__init__()
        if p <= 0:
            raise ValueError(f"gem_p={p!r} must be > 0")
        p_t = torch.tensor(float(p))
        if learnable:
            self.p = nn.Parameter(p_t)
        else:
            self.register_buffer("p", p_t)
        self.eps = eps

    def forward(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim, keepdim=True).pow(1.0 / self.p)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    return nn.Identity()


@register("attention", "ca")
class CoordAttn(nn.Module):
    """Coordinate Attention.

    Args:
        channels: input (= output) channels.
        reduction: squeeze ratio; mid width is ``max(min_channels, channels // reduction)``.
        min_channels: lower bound of the mid width (paper: 8).
        pool: ``avg`` | ``max`` | ``avgmax`` | ``gem``.
        gem_p: initial/fixed GeM exponent (``pool: gem`` only).
        gem_learnable: learn the GeM exponent.
        act: activation after the shared conv (``h_swish`` in the paper).
        gate: ``sigmoid`` | ``h_sigmoid`` | ``softmax_hw``.
        directions: ``hw`` | ``h`` | ``w``.
        norm: ``bn`` | ``gn`` | ``none``.
        bias: bias on the three 1x1 convs.
    """

    NAME = "ca"

    def __init__(self, channels: int, reduction: int = 32, min_channels: int = 8, pool: str = "avg",
                 gem_p: float = 3.0, gem_learnable: bool = True, act: str = "h_swish",
                 gate: str = "sigmoid", directions: str = "hw", norm: str = "bn", bias: bool = True):
        super().__init__()
        check_choice("pool", pool, POOLS)
        check_choice("act", act, ACTIVATIONS)
        check_choice("gate", gate, CA_GATES)
        check_choice("directions", directions, DIRECTIONS)
        check_choice("norm", norm, NORMS)
        if gate == "softmax_hw" and directions != "hw":
            raise ValueError(f"gate='softmax_hw' needs directions='hw' (got directions={directions!r})")
        mip = reduced_channels(channels, reduction, min_channels)
        self.pool, self.directions, self.gate_kind = pool, directions, gate
        self.gem = _GeM(gem_p, gem_learnable) if pool == "gem" else None
        self.conv1 = nn.Conv2d(channels, mip, 1, bias=bias)
        self.bn1 = _norm(norm, mip)
        self.act = create_act(act)
        # Only the directions in use get a gate conv, so params/FLOPs reflect the choice.
        self.conv_h = nn.Conv2d(mip, channels, 1, bias=bias) if "h" in directions else None
        self.conv_w = nn.Conv2d(mip, channels, 1, bias=bias) if "w" in directions else None
        self.gate = create_gate(gate) if gate != "softmax_hw" else None

    def _pool(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if self.pool == "avg":
            return x.mean(dim, keepdim=True)
        if self.pool == "max":
            return x.amax(dim, keepdim=True)
        if self.pool == "avgmax":
            return x.mean(dim, keepdim=True) + x.amax(dim, keepdim=True)
        return self.gem(x, dim)

    def _mix(self, y: torch.Tensor) -> torch.Tensor:
        # y: (N, L, C) with L = pooled positions. The 1x1 convs run as one GEMM each (F.linear
        # on the conv weights): the same arithmetic as the paper's 1x1 Conv2d on (N, C, L, 1),
        # several times faster on CPU, where mkldnn handles the W=1 shape poorly.
        y = _pw(self.conv1, y)  # (N, L, mip)
        y = self.bn1(y.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        return self.act(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.directions == "h":
            a_h = self.gate(_pw(self.conv_h, self._mix(self._pool(x, 3).squeeze(3).transpose(1, 2))))  # (N, H, C)
            return x * a_h.transpose(1, 2).unsqueeze(3)
        if self.directions == "w":
            a_w = self.gate(_pw(self.conv_w, self._mix(self._pool(x, 2).squeeze(2).transpose(1, 2))))  # (N, W, C)
            return x * a_w.transpose(1, 2).unsqueeze(2)
        x_h = self._pool(x, 3).squeeze(3)  # (N, C, H)
        x_w = self._pool(x, 2).squeeze(2)  # (N, C, W)
        y = self._mix(torch.cat([x_h, x_w], dim=2).transpose(1, 2))  # (N, H+W, mip)
        y_h, y_w = torch.split(y, [h, w], dim=1)
        z_h = _pw(self.conv_h, y_h)  # (N, H, C)
        z_w = _pw(self.conv_w, y_w)  # (N, W, C)
        if self.gate is None:  # softmax_hw: H and W logits share one softmax per channel
            z = torch.cat([z_h, z_w], dim=1).softmax(dim=1) * float(h + w)
            a_h, a_w = torch.split(z, [h, w], dim=1)
        else:
            a_h, a_w = self.gate(z_h), self.gate(z_w)
        return x * a_w.transpose(1, 2).unsqueeze(2) * a_h.transpose(1, 2).unsqueeze(3)


def _pw(conv: nn.Conv2d, y: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv applied to (N, L, C_in) as a linear map -> (N, L, C_out)."""
    return F.linear(y, conv.weight.flatten(1), conv.bias)


CoordinateAttention = CoordAttn
