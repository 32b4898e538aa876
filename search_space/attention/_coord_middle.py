"""CA's small middle part on the fused CPU path: pooled descriptors (N, H+W, C) -> gates (a_h, a_w).

``search_space/attention/_coord_cpu.py`` runs CA's big-tensor passes in C++ and hands the small
part in between (conv1 -> norm -> act -> conv_h / conv_w -> gate, on (N, H+W, C)-sized tensors)
to one of two implementations with one interface:

* :class:`GraphMiddle`: any CA configuration. Runs the module's own PyTorch code under
  ``torch.enable_grad()`` on the detached descriptors and keeps that small autograd graph; the
  backward is ``torch.autograd.grad`` through it.
* :class:`PaperMiddle`: the paper's configuration (BatchNorm, h_swish, sigmoid, biased 1x1
  convs), forward and backward written out without building a graph: forward = 3 GEMMs in the
  wide-output orientation, ``native_batch_norm`` (which also updates the running statistics),
  one h_swish pass that also splits rows from columns (``coord_cpu.cpp``), 2 in-place
  sigmoids; backward = 6 GEMMs, 3 bias sums, one h_swish-backward pass,
  ``native_batch_norm_backward``; the sigmoid's backward is applied by the big-tensor kernel
  while the gate gradients are in cache. ~10 ATen calls each way instead of ~35 autograd
  nodes and their bookkeeping per CA module and step. Same values as the graph up to float32
  round-off (its BatchNorm and GEMMs see the tensors in another layout and sum in another
  order; tested against GraphMiddle and float64: no further from float64 than the graph).

Interface: ``params`` (the tensors the Function passes through so their gradients reach
``.grad``), ``logit_grads`` (True: ``backward`` takes the gradients of the gates' logits, i.e.
the kernel has already applied the sigmoid's backward ``ga * (1 - a) * a`` while the gate
gradients were in cache), ``forward(pooled) -> (a_h, a_w, saved)`` and
``backward(saved, g_h, g_w, need_pooled, needs) -> (g_pooled or None, [grad or None per param])``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from search_space import bn_act
from search_space.attention import _coord_cpu
from search_space.layers import HSwish

__all__ = ["GraphMiddle", "PaperMiddle", "paper_middle_applies"]

_aten = torch.ops.aten


class GraphMiddle:
    """The middle part as ordinary autograd: ``fn(pooled) -> (a_h, a_w)`` reading ``params``."""

    logit_grads = False

    def __init__(self, fn: Callable[[torch.Tensor], tuple], params: Sequence[torch.Tensor]):
        self.fn = fn
        self.params = [p for p in params if p.requires_grad]

    def forward(self, pooled: torch.Tensor):
        with torch.enable_grad():
            pooled = pooled.detach().requires_grad_(True)
            a_h, a_w = self.fn(pooled)  # (N, H, C), (N, W, C) with the small graph attached
        # Saved by the Function (not kept here) so the small graph lives exactly as long as the
        # outer graph's saved tensors: freed after a plain backward, kept with retain_graph=True.
        return a_h.detach(), a_w.detach(), (pooled, a_h, a_w)

    def backward(self, saved, ga_h, ga_w, need_pooled: bool, needs: Sequence[bool]):
        pooled, a_h, a_w = saved
        want = [i for i, _ in enumerate(self.params) if needs[i]]
        inputs = ([pooled] if need_pooled else []) + [self.params[i] for i in want]
        grads = list(torch.autograd.grad((a_h, a_w), inputs, (ga_h, ga_w), retain_graph=True,
                                         allow_unused=True)) if inputs else []
        g_pooled = None
        if need_pooled:
            g_pooled = grads.pop(0)
            if g_pooled is None:
                g_pooled = torch.zeros_like(pooled)
        grad_params = [None] * len(self.params)
        for i, g in zip(want, grads):
            grad_params[i] = g
        return g_pooled, grad_params


def paper_middle_applies(module: nn.Module) -> bool:
    """``module`` (a CoordAttn with ``directions: hw``) has the paper's middle part in a form
    :class:`PaperMiddle` computes: BatchNorm2d (affine), h_swish, sigmoid gate, biased convs."""
    bn = module.bn1
    return (type(bn) is nn.BatchNorm2d and bn.affine and bn.training and type(module.act) is HSwish
            and type(module.gate) is nn.Sigmoid and module.conv1.bias is not None
            and module.conv_h is not None and module.conv_w is not None
            and module.conv_h.bias is not None and module.conv_w.bias is not None)


class PaperMiddle:
    """The paper's middle part written out (see the module docstring). Updates ``bn1``'s running
    statistics and ``num_batches_tracked`` like ``nn.BatchNorm2d`` in training mode.

    Args:
        module: a CoordAttn for which :func:`paper_middle_applies` holds.
        h, w: the input's spatial size (the split of the H+W descriptors).
    """

    logit_grads = True  # the gates are sigmoids; the kernels hand over dL/d(logits)

    def __init__(self, module: nn.Module, h: int, w: int, ops=None):
        self.ops = ops if ops is not None else _coord_cpu.load()  # the extension's h_swish ops
        self.m, self.h, self.w = module, h, w
        self.params = [module.conv1.weight, module.conv1.bias, module.bn1.weight, module.bn1.bias,
                       module.conv_h.weight, module.conv_h.bias, module.conv_w.weight, module.conv_w.bias]

    def forward(self, pooled: torch.Tensor):
        m, h, w = self.m, self.h, self.w
        n, length, c = pooled.shape
        p2 = pooled.reshape(n * length, c)
        w1 = m.conv1.weight.detach().reshape(-1, c)  # (mip, C)
        mip = w1.shape[0]
        # conv1, wide output: (mip, N*L) = W1 @ P^T + b1 (what _WideLinear computes, transposed)
        y1 = torch.addmm(m.conv1.bias.detach().unsqueeze(1), w1, p2.t())
        bn = m.bn1
        factor = bn_act.running_stats_factor(bn)  # None: no running statistics kept
        run_m, run_v = (bn.running_mean, bn.running_var) if factor is not None else (None, None)
        yn, save_mean, save_invstd = torch.native_batch_norm(
            y1.view(1, mip, n * length), bn.weight.detach(), bn.bias.detach(), run_m, run_v, True, factor or 0.0,
            bn.eps)
        yn = yn.view(mip, n, length)
        act_h, act_w = self.ops.hswish_split(yn, h)  # h_swish as layers.HSwish, rows / columns apart
        a_h = torch.addmm(m.conv_h.bias.detach(), act_h.t(), m.conv_h.weight.detach().reshape(c, mip).t()).sigmoid_()
        a_w = torch.addmm(m.conv_w.bias.detach(), act_w.t(), m.conv_w.weight.detach().reshape(c, mip).t()).sigmoid_()
        saved = (p2, y1, yn, act_h, act_w, save_mean, save_invstd)
        return a_h.view(n, h, c), a_w.view(n, w, c), saved

    def backward(self, saved, gz_h, gz_w, need_pooled: bool, needs: Sequence[bool]):
        """``gz_h`` (N, H, C), ``gz_w`` (N, W, C): gradients of the gates' logits (``logit_grads``)."""
        m, h, w = self.m, self.h, self.w
        p2, y1, yn, act_h, act_w, save_mean, save_invstd = saved
        rows, c = p2.shape
        mip, n = yn.shape[0], yn.shape[1]
        wh = m.conv_h.weight.detach().reshape(c, mip)
        ww = m.conv_w.weight.detach().reshape(c, mip)
        gz_h, gz_w = gz_h.reshape(n * h, c), gz_w.reshape(n * w, c)
        grads: list = [None] * 8
        if needs[4]:
            grads[4] = torch.mm(act_h, gz_h).t().reshape(m.conv_h.weight.shape)  # (mip, C) product, wide
        if needs[5]:
            grads[5] = gz_h.sum(0)
        if needs[6]:
            grads[6] = torch.mm(act_w, gz_w).t().reshape(m.conv_w.weight.shape)
        if needs[7]:
            grads[7] = gz_w.sum(0)
        if need_pooled or any(needs[:4]):
            # h_swish'(y) = (relu6(y + 3) + y [-3 < y < 3]) / 6 (hardtanh's open interval)
            g_yn = self.ops.hswish_backward(torch.mm(wh.t(), gz_h.t()), torch.mm(ww.t(), gz_w.t()), yn)
            bn = m.bn1
            g_y1, g_gamma, g_beta = _aten.native_batch_norm_backward(
                g_yn.view(1, mip, rows), y1.view(1, mip, rows), bn.weight.detach(), None, None, save_mean,
                save_invstd, True, bn.eps, [True, needs[2], needs[3]])
            g_y1 = g_y1.view(mip, rows)
            grads[2], grads[3] = g_gamma, g_beta
            w1 = m.conv1.weight.detach().reshape(mip, c)
            if needs[0]:
                grads[0] = torch.mm(g_y1, p2).reshape(m.conv1.weight.shape)  # (mip, C), wide
            if needs[1]:
                grads[1] = g_y1.sum(1)
            g_pooled = torch.mm(g_y1.t(), w1).view(n, h + w, c) if need_pooled else None  # (N*L, C), wide
        else:
            g_pooled = None
        return g_pooled, grads
