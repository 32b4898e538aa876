"""The MobileNetV2 inverted residual block with four named attention insertion points.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018,
https://arxiv.org/abs/1801.04381.

    x -> [1x1 expand -> BN -> ReLU6] -> post_expand -> 3x3 dw -> BN -> ReLU6 -> post_dw
      -> 1x1 project -> BN -> post_project -> (+ x if stride 1 and in == out) -> post_add

Each insertion point is a sub-module named after its position (``nn.Identity`` when unused),
so fvcore's per-module counts and state_dict keys line up with config values. The official
CA placement is ``post_dw``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from search_space.bn_act import bn_relu6_attn
from search_space.config import POSITIONS  # noqa: E402  (post_expand, post_dw, post_project, post_add)


class InvertedResidual(nn.Module):
    """Inverted residual block.

    Args:
        in_chs, out_chs: input / output channels.
        stride: depthwise stride (1 or 2).
        expand_ratio: hidden width = ``in_chs * expand_ratio``; 1 means no expand conv.
        attn_layer: a callable ``channels -> nn.Module`` (a class or partial), or None.
        position: where the attention goes, one of ``POSITIONS``.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, expand_ratio: int,
                 attn_layer: Optional[Callable[[int], nn.Module]] = None, position: str = "post_dw"):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride={stride!r} must be 1 or 2")
        if position not in POSITIONS:
            raise ValueError(f"position={position!r} is not allowed; allowed: {', '.join(POSITIONS)}")
        hidden = int(round(in_chs * expand_ratio))
        self.has_skip = stride == 1 and in_chs == out_chs
        self.expand_ratio = expand_ratio
        if expand_ratio != 1:
            self.conv_pw = nn.Conv2d(in_chs, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
            self.act1 = nn.ReLU6()
        else:
            self.conv_pw, self.bn1, self.act1 = nn.Identity(), nn.Identity(), nn.Identity()
        slot_channels = {"post_expand": hidden, "post_dw": hidden, "post_project": out_chs, "post_add": out_chs}

        def slot(name: str) -> nn.Module:
            return attn_layer(slot_channels[name]) if attn_layer is not None and name == position else nn.Identity()

        self.post_expand = slot("post_expand")
        self.conv_dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act2 = nn.ReLU6()
        self.post_dw = slot("post_dw")
        self.conv_pwl = nn.Conv2d(hidden, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.post_project = slot("post_project")
        self.post_add = slot("post_add")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = bn_relu6_attn(self.bn1, self.act1, self.post_expand, self.conv_pw(x))
        x = bn_relu6_attn(self.bn2, self.act2, self.post_dw, self.conv_dw(x))
        x = self.post_project(self.bn3(self.conv_pwl(x)))
        if self.has_skip:
            x = x + shortcut
        return self.post_add(x)
