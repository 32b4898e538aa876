"""Shared check for the fused CPU kernels: one model, three runs (kernel on / off / float64)."""
from __future__ import annotations

import copy
from typing import Callable, Tuple

import torch
import torch.nn as nn

CL = torch.channels_last


def three_way_step(model: nn.Module, switch: Callable[[bool], None], batch: int = 16
                   ) -> Tuple[list, nn.Module, nn.Module, nn.Module]:
    """Forward + backward of ``model`` (float32, ``switch(True)``), a copy (``switch(False)``) and a
    float64 copy on one random CIFAR-shaped batch; returns (losses, on, off, float64)."""
    on, off, exact = model, copy.deepcopy(model), copy.deepcopy(model).double()
    x = torch.randn(batch, 3, 32, 32).to(memory_format=CL)
    y = torch.randint(0, 10, (batch,))
    losses = []
    for m, flag, inp in ((on, True, x), (off, False, x), (exact, False, x.double())):
        switch(flag)
        loss = nn.functional.cross_entropy(m(inp), y)
        loss.backward()
        losses.append(loss.item())
    return losses, on, off, exact


def grad_error(model: nn.Module, exact: nn.Module, skip=("bn3.bias",)) -> float:
    """Relative L2 distance of all parameter gradients from the float64 model's (parameters whose
    name ends with one of ``skip`` are left out: exactly 0 in theory, round-off only)."""
    def flat(m):
        return torch.cat([p.grad.double().flatten() for n, p in m.named_parameters()
                          if not n.endswith(tuple(skip))])
    e = flat(exact)
    return ((flat(model) - e).norm() / e.norm()).item()
