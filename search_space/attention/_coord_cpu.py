"""Fused CPU path for Coordinate Attention's ``directions: hw`` / ``pool: avg`` training step.

CA's arithmetic is tiny (+3.8% multiply-adds on MobileNetV2), but its eager autograd graph
moves the big (N, C, H, W) tensor through memory about 16 times per block (two pooling
reads, gate product, output, input gradient, grad * x, two reductions, pooling backward and
the sum of the input-gradient branches). On CPU that traffic, not arithmetic, is CA's cost.

Here the whole CA forward is one ``torch.autograd.Function`` whose big-tensor passes are C++
kernels (``coord_cpu.cpp``, next to this file) and whose small middle part (conv1 -> norm ->
act -> conv_h / conv_w -> gate on (N, H+W, C)-sized tensors) is a ``_coord_middle`` object:
the paper configuration's forward and backward written out (``PaperMiddle``), any other
configuration the module's own code under autograd (``GraphMiddle``):

* forward: one read of x gives the row and column means; the middle part maps them to the
  gates; one read of x and one write give ``out = x * a_w * a_h``.
* backward: one pass over grad and x gives the gate gradients
  ``ga_h = sum_w grad * x * a_w`` and ``ga_w = sum_h grad * x * a_h``; the middle part takes
  them to the gradients of the means and of the module's parameters; one pass over grad writes
  ``grad_x = grad * a_h * a_w + g_xh / W + g_xw / H`` in x's memory format.

The hot kernels of the BN-fused form also exist in AVX-512 intrinsics, chosen at run time
(``COORDSWEEP_SIMD=generic`` forces the portable loops; ``torch.ops.coordsweep_ca.simd_path()``
says which runs). ``COORDSWEEP_CA_PAPER_MIDDLE=0`` keeps the middle part in autograd.

Seven full-tensor touches instead of ~16. Values equal the eager path's up to float32
round-off (tested), the middle part (and so the norm's running statistics) runs once per
forward, and parameter gradients reach ``.grad`` through ordinary autograd edges (the
parameters are inputs of the Function).

The extension is compiled on first use with ``torch.utils.cpp_extension.load`` (needs a C++
compiler and ninja; ~1 min once) and cached under ``$COORDSWEEP_CACHE/torch_extensions`` or
``~/.cache/coordsweep/torch_extensions``. If the build fails a warning is issued once and CA
uses its eager path. ``COORDSWEEP_CA_KERNEL=0`` disables the kernel. Prebuild (e.g. before
starting sweep workers) with
``python -c "from search_space.attention import _coord_cpu as k; assert k.load()"``.

The fused path is taken only in training-style calls (grad enabled, x requires grad) on
float32 CPU tensors in NCHW or channels_last memory, outside tracing / scripting /
``torch.compile`` / autocast; everything else (fvcore's traced FLOP count, eval, CUDA) runs
CoordAttn's plain PyTorch path. The backward is ``once_differentiable`` (no double backward).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from search_space import bn_act
from search_space._cpp_ext import (CACHE_ENV, CppExtension, autocast_on, compiling_or_tracing, cpu_float32_4d,
                                   switched_on)

ENV_SWITCH = "COORDSWEEP_CA_KERNEL"
FUSE_BN_SWITCH = "COORDSWEEP_CA_FUSE_BN"  # 0: keep BN + ReLU6 and CA as two fused ops (benchmarks)
PAPER_MIDDLE_SWITCH = "COORDSWEEP_CA_PAPER_MIDDLE"  # 0: the middle part always through autograd
SOURCE = Path(__file__).with_name("coord_cpu.cpp")
EXT_NAME = "coordsweep_ca_cpu"
__all__ = ["CACHE_ENV", "ENV_SWITCH", "EXT_NAME", "FUSE_BN_SWITCH", "PAPER_MIDDLE_SWITCH", "applies", "bn_coord_hw",
           "coord_hw", "enabled", "fuse_bn_enabled", "load", "paper_middle_enabled", "supported"]

_EXT = CppExtension(EXT_NAME, SOURCE, "coordsweep_ca", "pool_hw", "CoordAttn", ENV_SWITCH)


def enabled() -> bool:
    """The kernel is wanted (``COORDSWEEP_CA_KERNEL`` is not ``0``)."""
    return switched_on(ENV_SWITCH)


def fuse_bn_enabled() -> bool:
    """CA may absorb the BatchNorm + ReLU6 before it (``COORDSWEEP_CA_FUSE_BN`` is not ``0``)."""
    return switched_on(FUSE_BN_SWITCH)


def paper_middle_enabled() -> bool:
    """The paper configuration's middle part may run written out (``_coord_middle.PaperMiddle``;
    ``COORDSWEEP_CA_PAPER_MIDDLE`` is not ``0``)."""
    return switched_on(PAPER_MIDDLE_SWITCH)


def build_directory() -> Path:
    """Where the compiled extension is cached (one folder per Python and torch version)."""
    return _EXT.build_directory()


def load(verbose: bool = False):
    """Build (first time) and load the extension; return ``torch.ops.coordsweep_ca`` or None
    (see :class:`search_space._cpp_ext.CppExtension`)."""
    return _EXT.load(verbose)


def failure() -> Optional[str]:
    """Why the extension is unavailable in this process (None if it loaded or was not tried)."""
    return _EXT.failed


def build_seconds() -> Optional[float]:
    """Seconds the last :func:`load` attempt took in this process."""
    return _EXT.build_seconds


def supported(x: torch.Tensor) -> bool:
    """x is a tensor the kernels handle: 4-D float32 CPU, NCHW-contiguous or channels_last."""
    return cpu_float32_4d(x)


def applies(x: torch.Tensor) -> bool:
    """Use the fused path for this call: enabled, a backward will follow, not tracing or
    compiling, no autocast, a supported tensor, and the extension loads."""
    if compiling_or_tracing():
        return False  # before touching x: shape queries while tracing make TracerWarnings
    if not (enabled() and torch.is_grad_enabled() and x.requires_grad and supported(x)) or autocast_on():
        return False
    return load() is not None


def _fmt(x: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if x.is_contiguous() else torch.channels_last


class _CoordHW(torch.autograd.Function):
    """``x * a_w * a_h`` with (a_h, a_w) = gates(row/column means of x), fused as described in
    the module docstring. ``params``: the tensors requiring grad that ``gates`` uses."""

    @staticmethod
    def forward(ctx, x, middle, *params):
        ops = _EXT.ops
        pooled = ops.pool_hw(x)  # (N, H+W, C)
        a_h, a_w, saved = middle.forward(pooled)  # (N, H, C), (N, W, C)
        a_h, a_w = a_h.to(x.dtype), a_w.to(x.dtype)
        out = ops.gate_hw(x, a_h, a_w)
        # Saved (not ctx attributes) so that the middle part's state lives exactly as long as the
        # outer graph's saved tensors: freed after a plain backward, kept with retain_graph=True.
        ctx.save_for_backward(x, a_h, a_w, *saved)
        ctx.middle = middle
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        ops = _EXT.ops
        x, a_h, a_w, *saved = ctx.saved_tensors
        if not grad.is_contiguous(memory_format=_fmt(x)):
            grad = grad.contiguous(memory_format=_fmt(x))
        ga_h, ga_w = ops.gate_hw_backward(grad, x, a_h, a_w, ctx.middle.logit_grads)
        need_x = ctx.needs_input_grad[0]
        g_pooled, grad_params = ctx.middle.backward(saved, ga_h, ga_w, need_x, ctx.needs_input_grad[2:])
        grad_x = ops.input_grad_hw(grad, a_h, a_w, g_pooled) if need_x else None
        return (grad_x, None, *grad_params)


class _BNCoordHW(torch.autograd.Function):
    """``CA(ReLU6(BN(x)))`` for a training-mode BatchNorm, fused: y = ReLU6(BN(x)) is never
    stored (see ``coord_cpu.cpp``, "fused with the preceding BN + ReLU6"). Returns the output
    and BN's batch mean and biased variance (for the running statistics)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, middle, *params):
        ops, bn_ops = _EXT.ops, bn_act.load()
        mean, invstd, var = bn_ops.bn_stats(x, eps)
        a = (weight.detach().float() * invstd).contiguous()  # the BN kernel's scale, bit for bit
        b = bias.detach().float().contiguous()
        pooled = ops.pool_hw_bn(x, mean, a, b)  # (N, H+W, C)
        a_h, a_w, saved = middle.forward(pooled)
        a_h, a_w = a_h.to(x.dtype), a_w.to(x.dtype)
        out = ops.gate_hw_bn(x, mean, a, b, a_h, a_w)
        ctx.save_for_backward(x, mean, invstd, a, b, a_h, a_w, *saved)
        ctx.middle = middle
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _gm, _gv):
        ops = _EXT.ops
        x, mean, invstd, a, b, a_h, a_w, *saved = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        ga_h, ga_w, mk, mkx, s1, s1x = ops.bn_gate_hw_backward(grad, x, mean, a, b, a_h, a_w, ctx.middle.logit_grads)
        g_pooled, grad_params = ctx.middle.backward(saved, ga_h, ga_w, True, ctx.needs_input_grad[5:])
        grad_x, grad_w, grad_b = ops.bn_input_grad_hw(grad, x, mean, invstd, a, b, a_h, a_w, g_pooled, mk, mkx, s1,
                                                      s1x)
        return (grad_x if ctx.needs_input_grad[0] else None, grad_w if ctx.needs_input_grad[1] else None,
                grad_b if ctx.needs_input_grad[2] else None, None, None, *grad_params)


def bn_coord_hw(bn: torch.nn.BatchNorm2d, x: torch.Tensor, middle) -> torch.Tensor:
    """Fused ``CA(ReLU6(bn(x)))`` (directions hw, avg pooling) for a training-mode ``bn``; call only
    when :func:`applies` and ``search_space.bn_act.applies(bn, ReLU6, x)`` hold. Updates ``bn``'s
    running statistics like ``nn.BatchNorm2d``.

    Args:
        bn: the BatchNorm2d before the ReLU6 (affine, training mode).
        x: its (N, C, H, W) float32 channels_last input.
        middle: as for :func:`coord_hw`.
    """
    out, mean, var = _BNCoordHW.apply(x, bn.weight, bn.bias, bn.eps, middle, *middle.params)
    bn_act.update_running_stats(bn, mean, var, x.numel() // x.shape[1])
    return out


def coord_hw(x: torch.Tensor, middle) -> torch.Tensor:
    """Fused CA (directions hw, avg pooling) on a tensor for which :func:`applies` is true.

    Args:
        x: (N, C, H, W) float32 CPU tensor, NCHW-contiguous or channels_last.
        middle: CA's small middle part, a ``_coord_middle.GraphMiddle`` or ``PaperMiddle``: maps
            the pooled descriptors (N, H+W, C) (rows first, then columns) to the gates
            ``(a_h (N, H, C), a_w (N, W, C))`` and back-propagates through that map; its
            ``params`` become inputs of the autograd Function so their gradients reach ``.grad``.

    Returns:
        ``x * a_w * a_h`` broadcast to x's shape, in x's memory format.
    """
    return _CoordHW.apply(x, middle, *middle.params)
