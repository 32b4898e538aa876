"""Attention modules, one family per file, registered by name under kind ``attention``.

Every module is ``Module(channels, **options)``; ``build_attention(cfg, channels)`` builds one
from an attention config (its non-placement fields are the options)."""
from __future__ import annotations

from typing import Any, Mapping

import torch.nn as nn

from search_space.attention import cbam, coord, eca, se  # noqa: F401  (registers the modules)
from search_space.registry import get, register


@register("attention", "none")
def no_attention(channels: int) -> nn.Module:
    """The baseline: no attention (an identity)."""
    return nn.Identity()

# Placement fields of every attention config: where a module goes, not how it is built.
PLACEMENT_FIELDS = ("name", "position", "stages", "skip_t1")


def attention_options(cfg: Mapping[str, Any]) -> dict:
    """The constructor options in an attention config (everything but placement fields)."""
    return {k: v for k, v in dict(cfg).items() if k not in PLACEMENT_FIELDS and not k.startswith("_")}


def build_attention(cfg: Mapping[str, Any], channels: int) -> nn.Module:
    """Build the attention module named ``cfg['name']`` for ``channels`` channels
    (``nn.Identity`` for ``none``)."""
    return get("attention", cfg["name"])(channels, **attention_options(cfg))
