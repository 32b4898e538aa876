"""MobileNetV2 built from config, with pluggable attention.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018,
https://arxiv.org/abs/1801.04381; attention placement as in the CA paper's official
MobileNetV2 (https://arxiv.org/abs/2103.02907): after the depthwise conv, none in t=1 blocks.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from search_space.attention import build_attention
from search_space.blocks import InvertedResidual
from search_space.bn_act import ConvBNReLU6
from search_space.config import ALL_STAGES, validate_search_space
from search_space.layers import make_divisible
from search_space.registry import register

# (expand ratio t, channels c, repeats n, stride s) per stage, ImageNet strides.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))
STEM_STRIDE = {"cifar": 1, "imagenet": 2}
# CIFAR geometry: stage 2 (6,24,2,.) at stride 1 as well as the stem -> 8x downsampling in total.
CIFAR_STAGE_STRIDES = {2: 1}


class MobileNetV2(nn.Module):
    """MobileNetV2.

    Args:
        num_classes: classifier outputs.
        width: width multiplier (``make_divisible(c * width, 8)``, divisor 4 at width 0.1).
        geometry: ``cifar`` or ``imagenet`` strides.
        dropout: dropout before the classifier.
        attn_layer: ``channels -> nn.Module`` for the blocks that get attention, or None.
        position: attention insertion point in each block.
        stages: stages (1..7) whose blocks get attention.
        skip_t1: no attention in blocks with expand ratio 1.
    """

    def __init__(self, num_classes: int = 1000, width: float = 1.0, geometry: str = "imagenet",
                 dropout: float = 0.1, attn_layer=None, position: str = "post_dw",
                 stages: Sequence[int] = tuple(ALL_STAGES), skip_t1: bool = True):
        super().__init__()
        divisor = 4 if width == 0.1 else 8
        in_chs = make_divisible(32 * width, divisor)
        self.stem = ConvBNReLU6(nn.Conv2d(3, in_chs, 3, STEM_STRIDE[geometry], 1, bias=False),
                                nn.BatchNorm2d(in_chs), nn.ReLU6())
        blocks = []
        self.block_stages: list[int] = []
        for stage, (t, c, n, s) in enumerate(STAGES, start=1):
            if geometry == "cifar":
                s = CIFAR_STAGE_STRIDES.get(stage, s)
            out_chs = make_divisible(c * width, divisor)
            use_attn = attn_layer is not None and stage in stages and not (skip_t1 and t == 1)
            for i in range(n):
                blocks.append(InvertedResidual(in_chs, out_chs, s if i == 0 else 1, t,
                                               attn_layer if use_attn else None, position))
                self.block_stages.append(stage)
                in_chs = out_chs
        self.blocks = nn.Sequential(*blocks)
        self.num_features = make_divisible(1280 * width, divisor) if width > 1.0 else 1280
        self.head = ConvBNReLU6(nn.Conv2d(in_chs, self.num_features, 1, bias=False),
                                nn.BatchNorm2d(self.num_features), nn.ReLU6())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # As in the official MobileNetV2 code: He-normal convs, unit BN, small-normal classifier.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean((2, 3))  # (N, num_features)
        return self.classifier(self.dropout(x))


def default_num_classes(model_cfg: Mapping[str, Any]) -> int:
    """``model.num_classes``, or when null the geometry's usual value (imagenet 1000, cifar 10)."""
    n = model_cfg.get("num_classes")
    return n if n is not None else (1000 if model_cfg["geometry"] == "imagenet" else 10)


@register("model", "mobilenetv2")
def mobilenetv2(model_cfg: Mapping[str, Any], attention_cfg: Mapping[str, Any],
                num_classes: Optional[int] = None) -> MobileNetV2:
    """MobileNetV2 from the ``model`` and ``attention`` config groups."""
    attn = attention_cfg
    attn_layer = None if attn["name"] == "none" else partial(build_attention, attn)
    return MobileNetV2(num_classes=num_classes or default_num_classes(model_cfg), width=model_cfg["width"],
                       geometry=model_cfg["geometry"], dropout=model_cfg.get("dropout", 0.0),
                       attn_layer=attn_layer, position=attn.get("position", "post_dw"),
                       stages=tuple(attn.get("stages", ALL_STAGES)), skip_t1=attn.get("skip_t1", True))


def build_model(cfg: Mapping[str, Any], num_classes: Optional[int] = None) -> nn.Module:
    """Validate ``cfg.model`` / ``cfg.attention`` and build the model.

    ``num_classes`` (e.g. from the data) overrides a null ``model.num_classes``; a non-null
    one that disagrees is a ``ConfigError``.

    Example::

        model = build_model({"model": {"name": "mobilenetv2", "geometry": "cifar", "width": 1.0},
                             "attention": {"name": "ca", "reduction": 32}})
    """
    from search_space.config import ConfigError
    from search_space.registry import get

    validate_search_space(cfg)
    model_cfg, att_cfg = _plain(cfg["model"]), _plain(cfg["attention"])
    if num_classes is not None and model_cfg.get("num_classes") not in (None, num_classes):
        raise ConfigError(f"model.num_classes={model_cfg['num_classes']} but the data has {num_classes} classes")
    return get("model", model_cfg["name"])(model_cfg, att_cfg, num_classes)


def _plain(node: Any) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(node)
