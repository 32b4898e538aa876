"""Structured-config schemas for the ``model`` and ``attention`` groups, and validation.

YAML files in ``conf/model`` and ``conf/attention`` hold values; these dataclasses hold types
and defaults (the paper's). ``validate_search_space(cfg)`` checks a composed config before any
model is built and raises ``ConfigError`` naming the key and the allowed values.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional

# attention insertion points of the inverted residual (search_space/blocks.py); kept here so
# that config checks (run in every sweep process) need no torch import
POSITIONS = ("post_expand", "post_dw", "post_project", "post_add")

GEOMETRIES = ("cifar", "imagenet")
NUM_STAGES = 7
ALL_STAGES = list(range(1, NUM_STAGES + 1))


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the allowed values."""


@dataclass
class ModelConfig:
    """MobileNetV2 backbone (https://arxiv.org/abs/1801.04381)."""
    # backbone name in the model registry
    name: str = "mobilenetv2"
    # cifar: stem stride 1 and stage (6,24,2,.) at stride 1 (8x downsampling);
    # imagenet: the paper's strides (32x downsampling)
    geometry: str = "cifar"
    # width multiplier; channels rounded with make_divisible(c * width, 8) as in the paper
    width: float = 1.0
    # classifier outputs; null = take it from the data (1000 for imagenet geometry in cost tables)
    num_classes: Optional[int] = None
    # dropout before the classifier (official MobileNetV2+CA: 0.1)
    dropout: float = 0.1


@dataclass
class AttentionConfig:
    """Placement fields shared by every attention kind."""
    # attention kind: none | ca | se | cbam | eca
    name: str = "none"
    # insertion point in the inverted residual: post_expand | post_dw (official) | post_project | post_add
    position: str = "post_dw"
    # which of the 7 MobileNetV2 stages (1..7, t/c/n/s rows of the paper's table) get attention
    stages: List[int] = field(default_factory=lambda: list(ALL_STAGES))
    # official CA: no attention in blocks with expand ratio 1 (the first block)
    skip_t1: bool = True


@dataclass
class CAConfig(AttentionConfig):
    """Coordinate Attention (https://arxiv.org/abs/2103.02907); defaults = the paper's."""
    name: str = "ca"
    # mid width = max(min_channels, C // reduction); >= 1
    reduction: int = 32
    min_channels: int = 8
    # avg | max | avgmax (sum) | gem (generalised mean)
    pool: str = "avg"
    # GeM exponent (initial if learnable), pool=gem only
    gem_p: float = 3.0
    gem_learnable: bool = True
    # h_swish | swish | relu | relu6 | gelu | identity
    act: str = "h_swish"
    # sigmoid | h_sigmoid | softmax_hw (softmax across the H and W directions)
    gate: str = "sigmoid"
    # hw (both) | h | w
    directions: str = "hw"
    # bn | gn | none
    norm: str = "bn"
    # bias on the 1x1 convs
    bias: bool = True


@dataclass
class SEConfig(AttentionConfig):
    """Squeeze-and-Excitation; reduction 24 = the CA paper's MobileNetV2+SE baseline (3.89M)."""
    name: str = "se"
    reduction: int = 24
    min_channels: int = 8
    act: str = "relu"
    gate: str = "sigmoid"


@dataclass
class CBAMConfig(AttentionConfig):
    """CBAM: channel MLP (reduction) then a k x k spatial conv."""
    name: str = "cbam"
    reduction: int = 24
    min_channels: int = 8
    act: str = "relu"
    kernel_size: int = 7


@dataclass
class ECAConfig(AttentionConfig):
    """ECA: 1-D conv across channels; kernel from channels (gamma 2, b 1) unless kernel_size > 0."""
    name: str = "eca"
    gamma: float = 2.0
    b: float = 1.0
    kernel_size: int = 0
    gate: str = "sigmoid"


ATTENTION_SCHEMAS = {"none": AttentionConfig, "ca": CAConfig, "se": SEConfig, "cbam": CBAMConfig,
                     "eca": ECAConfig}


def _get(cfg: Any, key: str, default=None):
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def validate_model(model: Mapping[str, Any]) -> None:
    from search_space import registry

    name = _get(model, "name")
    if name not in registry.names("model"):
        raise ConfigError(f"model.name={name!r} is unknown; allowed: {', '.join(registry.names('model'))}")
    geometry = _get(model, "geometry")
    if geometry not in GEOMETRIES:
        raise ConfigError(f"model.geometry={geometry!r} is not allowed; allowed: {', '.join(GEOMETRIES)}")
    width = _get(model, "width")
    if not isinstance(width, (int, float)) or width <= 0:
        raise ConfigError(f"model.width={width!r} must be a number > 0")
    num_classes = _get(model, "num_classes")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ConfigError(f"model.num_classes={num_classes!r} must be null or an integer >= 1")
    dropout = _get(model, "dropout", 0.0)
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.dropout={dropout!r} must be in [0, 1)")


def validate_attention(att: Mapping[str, Any]) -> None:
    from search_space import registry
    from search_space.attention import attention_options

    name = _get(att, "name")
    allowed = registry.names("attention")
    if name not in allowed:
        raise ConfigError(f"attention.name={name!r} is unknown; allowed: {', '.join(allowed)}")
    position = _get(att, "position", "post_dw")
    if position not in POSITIONS:
        raise ConfigError(f"attention.position={position!r} is not allowed; allowed: {', '.join(POSITIONS)}")
    stages = _get(att, "stages", ALL_STAGES)
    if isinstance(stages, (str, bytes)) or not hasattr(stages, "__iter__"):
        raise ConfigError(f"attention.stages={stages!r} must be a list of stage numbers from {ALL_STAGES}")
    stages = list(stages)
    bad = [s for s in stages if isinstance(s, bool) or s not in ALL_STAGES]
    if bad or not stages:
        raise ConfigError(f"attention.stages={stages!r}: stages are numbered 1..{NUM_STAGES} "
                          f"(allowed values: {ALL_STAGES}); give at least one (or use attention=none)")
    options = attention_options(att)
    builder = registry.get("attention", name)
    params = inspect.signature(builder).parameters
    accepted = [p for p in params if p != "channels"]
    unknown = [k for k in options if k not in params]
    if unknown:
        raise ConfigError(f"attention.{unknown[0]} is not an option of attention {name!r}; "
                          f"allowed: {', '.join(accepted) or '(none)'}")
    for key in ("reduction", "min_channels"):
        value = options.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"attention.{key}={value!r} must be an integer >= 1")
    try:  # the module checks its own choices; a tiny instance validates every option
        builder(64, **options)
    except ValueError as e:
        raise ConfigError(f"attention.{e}") from None


def validate_search_space(cfg: Mapping[str, Any]) -> None:
    """Check ``cfg.model`` and ``cfg.attention``; raise ``ConfigError`` on the first bad value."""
    validate_model(_get(cfg, "model"))
    validate_attention(_get(cfg, "attention"))


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (``model/base_mobilenetv2``, ``attention/base_<x>``)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="model", name="base_mobilenetv2", node=ModelConfig, provider="coordsweep")
    for name, schema in ATTENTION_SCHEMAS.items():
        cs.store(group="attention", name=f"base_{name}", node=schema, provider="coordsweep")
