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
from torch.autograd.function import once_differentiable

from search_space.attention import _coord_cpu, _coord_middle
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

    def _pool_hw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column descriptors (N, C, H) and (N, C, W)."""
        if self.pool == "avg":
            return _AvgPoolHW.apply(x) if _autograd_path(x) else (x.mean(3), x.mean(2))
        return self._pool(x, 3).squeeze(3), self._pool(x, 2).squeeze(2)

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
            return _gate(x, a_h.transpose(1, 2).unsqueeze(3), None)
        if self.directions == "w":
            a_w = self.gate(_pw(self.conv_w, self._mix(self._pool(x, 2).squeeze(2).transpose(1, 2))))  # (N, W, C)
            return _gate(x, None, a_w.transpose(1, 2).unsqueeze(2))
        if self.pool == "avg" and _coord_cpu.applies(x):
            # Fused CPU training path: the big-tensor passes in C++, the small middle part as
            # self._middle picks it; same values (see _coord_cpu, _coord_middle).
            return _coord_cpu.coord_hw(x, self._middle(h, w))
        x_h, x_w = self._pool_hw(x)  # (N, C, H), (N, C, W)
        a_h, a_w = self._gates_hw(torch.cat([x_h, x_w], dim=2).transpose(1, 2), h, w)
        return _gate(x, a_h.transpose(1, 2).unsqueeze(3), a_w.transpose(1, 2).unsqueeze(2))

    def after_bn_relu6(self, bn: nn.Module, x: torch.Tensor):
        """``self(ReLU6(bn(x)))`` fused with the BN for the CPU training path, or None where that
        path does not apply (see ``search_space.bn_act.bn_relu6_attn`` and ``_coord_cpu``)."""
        if self.directions != "hw" or self.pool != "avg" or not _coord_cpu.fuse_bn_enabled():
            return None
        if not _coord_cpu.applies(x):
            return None
        h, w = x.shape[-2:]
        return _coord_cpu.bn_coord_hw(bn, x, self._middle(h, w))

    def _middle(self, h: int, w: int):
        """The fused path's middle part: written out for the paper configuration, this module's own
        autograd code otherwise (see ``_coord_middle``)."""
        if _coord_middle.paper_middle_applies(self) and _coord_cpu.paper_middle_enabled():
            return _coord_middle.PaperMiddle(self, h, w)
        return _coord_middle.GraphMiddle(lambda pooled: self._gates_hw(pooled, h, w), list(self.parameters()))

    def _gates_hw(self, pooled: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, H+W, C) row/column descriptors -> gates a_h (N, H, C) and a_w (N, W, C)."""
        y = self._mix(pooled)  # (N, H+W, mip)
        y_h, y_w = torch.split(y, [h, w], dim=1)
        z_h = _pw(self.conv_h, y_h)  # (N, H, C)
        z_w = _pw(self.conv_w, y_w)  # (N, W, C)
        if self.gate is None:  # softmax_hw: H and W logits share one softmax per channel
            z = torch.cat([z_h, z_w], dim=1).softmax(dim=1) * float(h + w)
            return torch.split(z, [h, w], dim=1)
        return self.gate(z_h), self.gate(z_w)


def _autograd_path(x: torch.Tensor) -> bool:
    # The custom autograd functions only pay off when a backward follows; tracing (fvcore's
    # FLOP count, TorchScript) must see plain aten ops.
    return torch.is_grad_enabled() and x.requires_grad and not torch.jit.is_tracing()


def _gate(x: torch.Tensor, a_h, a_w) -> torch.Tensor:
    if _autograd_path(x):
        return _CoordGate.apply(x, a_h, a_w)
    out = x if a_w is None else x * a_w
    return out if a_h is None else out * a_h


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _AvgPoolHW(torch.autograd.Function):
    """Row and column means of (N, C, H, W). The backward writes the input gradient in a single
    pass and in the input's memory format (autograd's mean backward takes two expand/divide
    passes plus an add, and its NCHW result slows the channels_last convs around CA)."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape, ctx.fmt = x.shape, _memory_format(x)
        return x.mean(3), x.mean(2)  # (N, C, H), (N, C, W)

    @staticmethod
    def backward(ctx, g_h, g_w):
        n, c, h, w = ctx.shape
        ref = g_h if g_h is not None else g_w
        out = torch.empty(ctx.shape, dtype=ref.dtype, device=ref.device, memory_format=ctx.fmt)
        if g_h is None:
            g_h = ref.new_zeros(n, c, h)
        if g_w is None:
            g_w = ref.new_zeros(n, c, w)
        torch.add((g_h / w).unsqueeze(3), (g_w / h).unsqueeze(2), out=out)
        return out


class _CoordGate(torch.autograd.Function):
    """``x * a_h * a_w`` with a_h (N, C, H, 1) and a_w (N, C, 1, W) (either may be None).

    Same values as the two broadcast products; the gradients are computed with fewer full-size
    passes (the gate reductions as batched mat-vec products) and the input gradient keeps the
    input's memory format."""

    @staticmethod
    def forward(ctx, x, a_h, a_w):
        fmt = _memory_format(x)
        a_h = a_h.to(x.dtype) if a_h is not None else None
        a_w = a_w.to(x.dtype) if a_w is not None else None
        if a_h is not None and a_w is not None:
            g = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
            torch.mul(a_w, a_h, out=g)  # (N, C, H, W) in x's layout
        else:
            g = a_h if a_h is not None else a_w
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
        torch.mul(x, g, out=out)
        ctx.save_for_backward(x, g, a_h, a_w)
        ctx.fmt = fmt
        return out

    @staticmethod
    def backward(ctx, grad):
        x, g, a_h, a_w = ctx.saved_tensors
        n, c, h, w = x.shape
        grad_x = ga_h = ga_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty(x.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.fmt)
            torch.mul(grad, g, out=grad_x)
        t = torch.empty(x.shape, dtype=grad.dtype, device=grad.device)  # NCHW for the mat-vecs
        torch.mul(grad, x, out=t)
        t = t.view(n * c, h, w)
        if a_h is not None and ctx.needs_input_grad[1]:
            ga_h = (torch.bmm(t, a_w.reshape(n * c, w, 1)).view(n, c, h, 1) if a_w is not None
                    else t.sum(2, keepdim=True).view(n, c, h, 1))
        if a_w is not None and ctx.needs_input_grad[2]:
            ga_w = (torch.bmm(a_h.reshape(n * c, 1, h), t).view(n, c, 1, w) if a_h is not None
                    else t.sum(1, keepdim=True).view(n, c, 1, w))
        return grad_x, ga_h, ga_w


def _pw(conv: nn.Conv2d, y: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv applied to (N, L, C_in) as a linear map -> (N, L, C_out)."""
    w = conv.weight.flatten(1)
    if torch.jit.is_tracing() or torch.jit.is_scripting() or y.device.type != "cpu":
        return F.linear(y, w, conv.bias)  # what fvcore's FLOP count and TorchScript see
    return _WideLinear.apply(y, w, conv.bias)


class _WideLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` whose three GEMMs each run in the orientation with the wide
    output. CA's 1x1 convs are skinny (mid width 8..40 against C and N * L in the hundreds to
    thousands); a GEMM whose output has only that many columns runs 1.5-3.5x slower in MKL on
    this CPU than the same product computed transposed (``bench/RESULTS.md``, CA middle part).
    Same arithmetic as ``F.linear``; results differ by float32 round-off (summation order)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1])  # (M, C_in)
        c_out = weight.shape[0]
        if c_out < x2.shape[1]:  # narrow output: (C_out, M) = W @ x^T, transposed back (small copy)
            # Contiguous on purpose: torch 2.13's CPU batch_norm backward returns a wrong input
            # gradient when its input is NCHW-contiguous but the incoming gradient is channels_last-
            # strided, which a transposed view here would cause in the norm after conv1 (N=1).
            out = (torch.addmm(bias.unsqueeze(1), weight, x2.t()) if bias is not None else weight @ x2.t()).t()
            out = out.contiguous()
        else:
            out = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
        ctx.save_for_backward(x2, weight)
        ctx.has_bias, ctx.shape = bias is not None, x.shape
        return out.reshape(*x.shape[:-1], c_out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x2, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])  # (M, C_out)
        c_out, c_in = weight.shape
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = (weight.t() @ g2.t()).t() if c_in < c_out else g2 @ weight  # (M, C_in)
            gx = gx.reshape(ctx.shape)
        if ctx.needs_input_grad[1]:
            gw = g2.t() @ x2 if c_out <= c_in else (x2.t() @ g2).t().contiguous()  # (C_out, C_in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


CoordinateAttention = CoordAttn
