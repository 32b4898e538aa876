"""BatchNorm2d followed by ReLU6, with a fused CPU training path.

MobileNetV2 puts ``BN -> ReLU6`` after the stem, every expand and depthwise conv and the head.
At the small widths that sweeps train on a 2-core CPU, these element-wise layers, not the convs,
dominate a training step (profiled at width 0.25, batch 128: BN + ReLU6 forward/backward ~58% of
the step, convolutions ~31%), and all of that is memory traffic. :func:`bn_relu6` computes
``act(bn(x))`` with one C++ kernel pair (``bn_relu6_cpu.cpp``): forward 3 touches of the big
tensor instead of 5, backward 5 instead of 8, and only the BN input is saved for backward (the
ReLU6 mask is recomputed from it) — less memory as well.

Same arithmetic as ``nn.BatchNorm2d`` in training mode (batch statistics, biased variance to
normalise, unbiased variance into ``running_var``, ``momentum`` or the cumulative average when it
is None, ``num_batches_tracked``) followed by ``nn.ReLU6``; equal to the eager modules up to
float32 round-off (tested, forward, backward and running statistics). Module structure and
``state_dict`` keys are unchanged: the modules stay ``nn.BatchNorm2d`` and ``nn.ReLU6``, only the
call goes through :func:`bn_relu6`.

The fused path is taken for training-mode BN with grad enabled on a float32 CPU channels_last
input that requires grad, outside tracing / scripting / ``torch.compile`` / autocast and with no
hooks on the two modules; everything else (eval, fvcore's traced FLOP count, CUDA, NCHW) is the
plain ``act(bn(x))``. ``COORDSWEEP_BN_KERNEL=0`` disables it. The extension is compiled on first
use and cached like the CA kernel (see :mod:`search_space._cpp_ext`). On CPUs with AVX-512 it runs
hand-vectorised loops (bit-identical to the portable ones); ``COORDSWEEP_SIMD=generic``, read once
per process, forces the portable loops (``torch.ops.coordsweep_bn.simd_path()`` tells which run).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from search_space._cpp_ext import CppExtension, autocast_on, compiling_or_tracing, cpu_float32_4d, switched_on

ENV_SWITCH = "COORDSWEEP_BN_KERNEL"
EXT_NAME = "coordsweep_bn_cpu"
_EXT = CppExtension(EXT_NAME, Path(__file__).with_name("bn_relu6_cpu.cpp"), "coordsweep_bn",
                    "bn_relu6_forward", "BatchNorm+ReLU6", ENV_SWITCH)


def enabled() -> bool:
    """The kernel is wanted (``COORDSWEEP_BN_KERNEL`` is not ``0``)."""
    return switched_on(ENV_SWITCH)


def load(verbose: bool = False):
    """Build (first time) and load the kernel; ``torch.ops.coordsweep_bn`` or None."""
    return _EXT.load(verbose)


def failure() -> Optional[str]:
    """Why the kernel is unavailable in this process (None if it loaded or was not tried)."""
    return _EXT.failed


def applies(bn: nn.Module, act: nn.Module, x: torch.Tensor) -> bool:
    """:func:`bn_relu6` will take the fused path for this call."""
    if compiling_or_tracing():
        return False
    if type(bn) is not nn.BatchNorm2d or type(act) is not nn.ReLU6 or not bn.training or not bn.affine:
        return False
    if bn._forward_hooks or bn._forward_pre_hooks or act._forward_hooks or act._forward_pre_hooks:
        return False
    if not (enabled() and torch.is_grad_enabled() and x.requires_grad) or autocast_on():
        return False
    if not cpu_float32_4d(x, channels_last_only=True):
        return False
    if x.numel() // max(x.shape[1], 1) < 2:  # nn.BatchNorm2d raises its own error here
        return False
    return bn.weight.dtype == torch.float32 and load() is not None


class _BNReLU6(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        y, mean, invstd, var = _EXT.ops.bn_relu6_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _gm, _gv):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        dx, dw, db = _EXT.ops.bn_relu6_backward(grad, x, weight, bias, mean, invstd)
        return (dx if ctx.needs_input_grad[0] else None, dw if ctx.needs_input_grad[1] else None,
                db if ctx.needs_input_grad[2] else None, None)


def bn_relu6(bn: nn.Module, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(bn(x))``; fused on CPU when :func:`applies` (see the module docstring).

    Args:
        bn: usually an ``nn.BatchNorm2d`` (any module works: other types take the plain path).
        act: usually an ``nn.ReLU6``.
        x: the (N, C, H, W) input.
    """
    if not applies(bn, act, x):
        return act(bn(x))
    y, mean, var = _BNReLU6.apply(x, bn.weight, bn.bias, bn.eps)
    update_running_stats(bn, mean, var, x.numel() // x.shape[1])
    return y


def bn_relu6_attn(bn: nn.Module, act: nn.Module, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``attn(act(bn(x)))``. An attention module may fuse itself with the fused BN + ReLU6 by
    defining ``after_bn_relu6(bn, x)`` (return the output, or None to decline); it is asked only
    when :func:`applies` holds and no forward hooks are registered on it."""
    fused = getattr(attn, "after_bn_relu6", None)
    if fused is not None and not (attn._forward_hooks or attn._forward_pre_hooks) and applies(bn, act, x):
        out = fused(bn, x)
        if out is not None:
            return out
    return attn(bn_relu6(bn, act, x))


def running_stats_factor(bn: nn.BatchNorm2d) -> Optional[float]:
    """Advance ``bn``'s batch counter as ``nn.BatchNorm2d`` does in a training forward and return
    this batch's weight in the running statistics (``momentum``, or 1 / batches seen when it is
    None); None if ``bn`` keeps no running statistics."""
    if not (bn.track_running_stats and bn.running_mean is not None):
        return None
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
    return bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)


def update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """``bn``'s running mean / variance and batch counter as ``nn.BatchNorm2d`` updates them in
    training, from the batch mean and biased variance ``var`` of ``n`` values per channel."""
    m = running_stats_factor(bn)
    if m is None:
        return
    with torch.no_grad():
        bn.running_mean.mul_(1 - m).add_(mean, alpha=m)
        bn.running_var.mul_(1 - m).add_(var * (n / (n - 1)), alpha=m)


class ConvBNReLU6(nn.Sequential):
    """``Sequential(conv, bn, act)`` whose forward routes ``bn -> act`` through :func:`bn_relu6`
    (same children and state_dict keys as the plain Sequential)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn, act = self
        return bn_relu6(bn, act, conv(x))
