"""Config validation: errors name the key and the allowed values, before any model is built;
the Hydra config tree composes with the structured schemas; schemas mirror the constructors."""
from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from search_space import registry
from search_space.attention import PLACEMENT_FIELDS
from search_space.config import ATTENTION_SCHEMAS, AttentionConfig, ConfigError, validate_search_space
from sweep.config import register_configs  # every group schema (model, attention, data, train)
from search_space.mobilenetv2 import build_model
from tests.conftest import REPO

MODEL = {"name": "mobilenetv2", "geometry": "imagenet", "width": 1.0, "num_classes": 1000, "dropout": 0.1}


def full(attention=None, **model):
    return {"model": {**MODEL, **model}, "attention": attention if attention is not None else {"name": "ca"}}


# (config, substrings the message must contain: the key, the bad value and the allowed values)
ATTENTION_ERRORS = [
    ({"name": "coord"}, ["attention.name", "'coord'", "ca", "se", "cbam", "eca", "none"]),
    ({"name": "ca", "reduction": 0}, ["attention.reduction", "0", ">= 1"]),
    ({"name": "se", "reduction": 0}, ["attention.reduction", "0", ">= 1"]),
    ({"name": "ca", "min_channels": 0}, ["attention.min_channels", ">= 1"]),
    ({"name": "ca", "pool": "median"}, ["attention.pool", "'median'", "avg, max, avgmax, gem"]),
    ({"name": "ca", "act": "tanh"}, ["attention.act", "'tanh'", "h_swish", "swish", "relu6", "gelu", "identity"]),
    ({"name": "ca", "gate": "tanh"}, ["attention.gate", "'tanh'", "sigmoid", "h_sigmoid", "softmax_hw"]),
    ({"name": "se", "gate": "softmax_hw"}, ["attention.gate", "'softmax_hw'", "sigmoid, h_sigmoid"]),
    ({"name": "ca", "directions": "hv"}, ["attention.directions", "'hv'", "hw, h, w"]),
    ({"name": "ca", "norm": "ln"}, ["attention.norm", "'ln'", "bn, gn, none"]),
    ({"name": "ca", "position": "post_pwl"}, ["attention.position", "'post_pwl'",
                                               "post_expand, post_dw, post_project, post_add"]),
    ({"name": "ca", "stages": [0]}, ["attention.stages", "[0]", "1..7"]),
    ({"name": "ca", "stages": [8]}, ["attention.stages", "[8]", "1..7"]),
    ({"name": "ca", "stages": [2, 8]}, ["attention.stages", "[2, 8]", "1..7"]),
    ({"name": "ca", "stages": []}, ["attention.stages", "[]", "at least one"]),
    ({"name": "ca", "gate": "softmax_hw", "directions": "h"}, ["gate", "softmax_hw", "directions", "'h'"]),
    ({"name": "ca", "pool": "gem", "gem_p": 0.0}, ["attention.gem_p", "> 0"]),
    ({"name": "se", "pool": "avg"}, ["attention.pool", "'se'", "reduction, min_channels, act, gate"]),
    ({"name": "eca", "reduction": 16}, ["attention.reduction", "'eca'", "gamma, b, kernel_size, gate"]),
    ({"name": "none", "reduction": 16}, ["attention.reduction", "'none'", "(none)"]),
    ({"name": "ca", "foo": 1}, ["attention.foo", "'ca'", "reduction", "directions"]),
    ({"name": "cbam", "kernel_size": 4}, ["attention.kernel_size", "4", "odd"]),
    ({"name": "eca", "kernel_size": 6}, ["attention.kernel_size", "6", "odd"]),
]


@pytest.mark.parametrize("attention, needles", ATTENTION_ERRORS, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_attention_errors_name_key_and_allowed_values(attention, needles):
    with pytest.raises(ConfigError) as e:
        validate_search_space(full(attention))
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    # build_model validates first: the same ConfigError, no model (ConfigError, not a module's ValueError).
    with pytest.raises(ConfigError, match=re.escape(needles[0])):
        build_model(full(attention))


MODEL_ERRORS = [
    ({"geometry": "imagenett"}, ["model.geometry", "'imagenett'", "cifar, imagenet"]),
    ({"geometry": "CIFAR"}, ["model.geometry", "'CIFAR'", "cifar, imagenet"]),
    ({"width": 0}, ["model.width", "0", "> 0"]),
    ({"width": -0.5}, ["model.width", "-0.5", "> 0"]),
    ({"width": "1.0"}, ["model.width", "'1.0'", "> 0"]),
    ({"name": "resnet18"}, ["model.name", "'resnet18'", "mobilenetv2"]),
    ({"num_classes": 0}, ["model.num_classes", "0", ">= 1"]),
    ({"dropout": 1.0}, ["model.dropout", "1.0", "[0, 1)"]),
]


@pytest.mark.parametrize("model, needles", MODEL_ERRORS, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_model_errors_name_key_and_allowed_values(model, needles):
    with pytest.raises(ConfigError) as e:
        validate_search_space(full(**model))
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    with pytest.raises(ConfigError):
        build_model(full(**model))


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_num_classes_conflict_with_data():
    with pytest.raises(ConfigError, match="model.num_classes"):
        build_model(full(num_classes=1000), num_classes=10)


@pytest.mark.parametrize("attention", [{"name": k} for k in ATTENTION_SCHEMAS]
                         + [{"name": "ca", "gate": "softmax_hw"}, {"name": "ca", "directions": "w", "norm": "gn"},
                            {"name": "ca", "pool": "gem", "gem_learnable": False}, {"name": "ca", "stages": [7]}])
def test_valid_configs_pass(attention):
    validate_search_space(full(attention))


# ---------------------------------------------------------------- Hydra composition of conf/

CONF = REPO / "conf"


@pytest.fixture(scope="module")
def hydra_conf():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def _compose(*overrides):
    return compose(config_name="config", overrides=list(overrides))


def attention_yamls() -> list[str]:
    return sorted(p.stem for p in (CONF / "attention").glob("*.yaml"))


def test_every_attention_kind_has_a_yaml():
    assert set(attention_yamls()) == set(ATTENTION_SCHEMAS) == set(registry.names("attention"))


@pytest.mark.parametrize("name", attention_yamls())
def test_attention_yaml_composes_and_validates(hydra_conf, name):
    cfg = _compose(f"attention={name}", "model.geometry=imagenet")
    validate_search_space(cfg)
    assert cfg.attention.name == name
    schema = ATTENTION_SCHEMAS[name]
    # The yaml holds the schema's fields and nothing else; its values equal the defaults (paper's).
    assert set(cfg.attention) == {f.name for f in dataclasses.fields(schema)}
    defaults = dataclasses.asdict(schema())
    assert {k: (list(v) if k == "stages" else v) for k, v in cfg.attention.items()} == defaults


def test_root_config_defaults(hydra_conf):
    cfg = _compose()
    validate_search_space(cfg)
    assert cfg.attention.name == "ca" and cfg.model.name == "mobilenetv2"


@pytest.mark.parametrize("override", ["attention.foo=1", "model.foo=1", "attention.reduction=abc",
                                      "attention.stages=3", "attention=coord"])
def test_bad_override_fails_at_compose(hydra_conf, override):
    with pytest.raises(ConfigCompositionException):
        _compose(override)


@pytest.mark.parametrize("override, needle", [
    ("attention.pool=median", "attention.pool"),
    ("attention.stages=[0,2]", "attention.stages"),
    ("attention.position=post_pwl", "attention.position"),
    ("model.geometry=imagenett", "model.geometry"),
    ("model.width=0", "model.width"),
    ("+attention.foo=1", "attention.foo"),  # appended past the schema: caught by validation
])
def test_bad_value_composes_but_fails_validation(hydra_conf, override, needle):
    cfg = _compose(override)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        validate_search_space(cfg)


def test_composed_config_builds_model(hydra_conf):
    cfg = _compose("attention=se", "attention.stages=[2,3]", "model.width=0.5")
    model = build_model(cfg)
    assert sum(type(m).__name__ == "SEModule" for m in model.modules()) == 5


# ---------------------------------------------------------------- schemas mirror the modules


@pytest.mark.parametrize("name", list(ATTENTION_SCHEMAS))
def test_schema_fields_are_constructor_options_plus_placement(name):
    schema = ATTENTION_SCHEMAS[name]
    builder = registry.get("attention", name)
    params = inspect.signature(builder).parameters
    options = [p for p in params if p != "channels"]
    fields = {f.name: f for f in dataclasses.fields(schema)}
    assert set(fields) == set(options) | set(PLACEMENT_FIELDS)
    assert {f.name for f in dataclasses.fields(AttentionConfig)} == set(PLACEMENT_FIELDS)
    # Schema defaults are the constructor defaults (a single source of "the paper's values").
    for opt in options:
        assert fields[opt].default == params[opt].default, (name, opt)
    assert fields["name"].default == name
