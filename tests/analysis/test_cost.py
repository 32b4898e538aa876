"""Cost counting: the paper's table, hand-computed counts, the audit, latency and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache

import pytest
import torch
import torch.nn as nn

# FlopCountAnalysis via analysis.cost, which silences fvcore's import-time deprecation warnings
from analysis.cost import (CONVENTIONS, CostReport, FlopCountAnalysis, cost_from_config, count_cost,
                           default_input_size, flop_analysis, measure_latency, resolve_device)
from search_space.mobilenetv2 import STAGES, build_model
from tests.conftest import REPO

KINDS = ("none", "ca", "se", "cbam", "eca")


def _cfg(geometry: str = "cifar", **attention) -> dict:
    attention.setdefault("name", "none")
    return {"model": {"name": "mobilenetv2", "geometry": geometry, "width": 1.0}, "attention": attention}


@lru_cache(maxsize=None)
def _report(geometry: str, attention: tuple = (("name", "none"),)) -> CostReport:
    size = 224 if geometry == "imagenet" else 32
    return count_cost(build_model(_cfg(geometry, **dict(attention))), input_shape=(1, 3, size, size))


def _mbv2_madds(res: int, num_classes: int, stem_stride: int, stage_strides: dict) -> int:
    """MobileNetV2-1.0 conv + linear multiply-adds written out from the paper's stage table."""
    h = (res - 1) // stem_stride + 1  # 3x3 conv, padding 1
    madds, c_in = 3 * 32 * 9 * h * h, 32
    for stage, (t, c, n, s) in enumerate(STAGES, start=1):
        for i in range(n):
            stride = stage_strides.get(stage, s) if i == 0 else 1
            hidden = c_in * t
            if t != 1:
                madds += c_in * hidden * h * h  # 1x1 expand
            h = (h - 1) // stride + 1
            madds += hidden * 9 * h * h + hidden * c * h * h  # 3x3 depthwise + 1x1 project
            c_in = c
    return madds + c_in * 1280 * h * h + 1280 * num_classes  # head 1x1 conv + classifier


def _ca_madds(res: int, stem_stride: int, stage_strides: dict, reduction: int = 32) -> int:
    """CA multiply-adds at post_dw of every t != 1 block: conv1 over H+W, conv_h over H, conv_w over W."""
    h, c_in, total = (res - 1) // stem_stride + 1, 32, 0
    for stage, (t, c, n, s) in enumerate(STAGES, start=1):
        for i in range(n):
            stride = stage_strides.get(stage, s) if i == 0 else 1
            hidden = c_in * t
            h = (h - 1) // stride + 1
            if t != 1:
                mip = max(8, hidden // reduction)
                total += hidden * mip * 2 * h + mip * hidden * h + mip * hidden * h
            c_in = c
    return total


# ---------------------------------------------------------------------- hand-computed counts

def test_tiny_model_counts_by_hand():
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    r = count_cost(tiny, input_shape=(1, 3, 8, 8))
    conv, linear, hw = 8 * 3 * 9 * 64, 8 * 10, 8 * 64
    assert r.flops["madds"] == conv + linear
    # fvcore: BN 2 per element (eval, affine), adaptive avg pool per input element, nothing else
    assert r.flops["fvcore"] == conv + linear + 2 * hw + 8 * 16
    # full: conv bias, BN, ReLU6 (per element), 2x2 max pool (per window element),
    # adaptive avg pool (per input element), linear bias
    assert r.flops["full"] == conv + linear + hw + hw + hw + 8 * 16 * 4 + 8 * 16 + 10
    assert r.audit["madds"] == {"aten::adaptive_avg_pool2d": 1, "aten::batch_norm": 1, "aten::hardtanh": 1,
                                "aten::max_pool2d": 1}
    assert r.audit["fvcore"] == {"aten::hardtanh": 1, "aten::max_pool2d": 1}
    assert r.audit["full"] == {}
    assert r.params == sum(p.numel() for p in tiny.parameters()) and r.attn_params == 0 == r.attn_slots


@pytest.mark.parametrize("geometry,res,classes,stem,strides", [
    ("imagenet", 224, 1000, 2, {}),
    ("cifar", 32, 10, 1, {2: 1}),
])
def test_madds_equal_hand_computation(geometry, res, classes, stem, strides):
    assert _report(geometry).flops["madds"] == _mbv2_madds(res, classes, stem, strides)
    ca = _report(geometry, (("name", "ca"),))
    assert ca.attn_flops["madds"] == _ca_madds(res, stem, strides)
    assert ca.flops["madds"] == _mbv2_madds(res, classes, stem, strides) + _ca_madds(res, stem, strides)


# ---------------------------------------------------------------------- the paper's table

@pytest.mark.parametrize("attention,params,params_tol,madds", [
    # Hou et al. 2021, table "MobileNetV2-1.0" rows; exact params from the official models
    ((("name", "none"),), 3_504_872, 0, 300e6),
    ((("name", "ca"),), 3_950_648, 0, 310e6),
    ((("name", "se"), ("position", "post_dw"), ("reduction", 24)), 3.89e6, 0.005, 300e6),
    ((("name", "cbam"),), 3.89e6, 0.005, 300e6),
])
def test_paper_cost_table_at_224(attention, params, params_tol, madds):
    r = _report("imagenet", attention)
    assert r.input_shape == (1, 3, 224, 224)
    assert r.params == pytest.approx(params, rel=params_tol, abs=0)
    assert r.flops["madds"] == pytest.approx(madds, rel=0.02)


def test_fvcore_convention_is_fvcore_as_is():
    r = _report("imagenet")
    # PAPER_FACTS: fvcore default 314.2M, without BN 300.8M. Our head pools with mean(),
    # which fvcore does not count (its 314.2M used adaptive_avg_pool2d: +1280*7*7).
    assert r.flops["fvcore"] == 314_130_496
    model = build_model(_cfg("cifar", name="ca", pool="max")).eval()
    x = torch.zeros(1, 3, 32, 32)
    plain = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    r = count_cost(model, (1, 3, 32, 32))
    assert r.flops["fvcore"] == plain.total()
    slots = [k for k in plain.by_module() if k.endswith(".post_dw")]
    assert r.attn_flops["fvcore"] == sum(plain.by_module()[k] for k in slots)
    for conv in CONVENTIONS:  # the single joint trace equals one analysis per convention
        fca = flop_analysis(model, x, conv)
        assert r.flops[conv] == fca.total()
        assert r.attn_flops[conv] == sum(fca.by_module()[k] for k in slots)


# ---------------------------------------------------------------------- audit and `full`

VARIANTS = [dict(name=k) for k in KINDS] + [
    dict(name="ca", pool=p) for p in ("max", "avgmax", "gem")] + [
    dict(name="ca", gate="h_sigmoid"), dict(name="ca", gate="softmax_hw"), dict(name="ca", act="relu"),
    dict(name="ca", act="gelu"), dict(name="ca", norm="gn"), dict(name="ca", directions="h"),
    dict(name="se", act="swish", gate="h_sigmoid"), dict(name="ca", position="post_add"),
]


@pytest.mark.parametrize("attention", VARIANTS, ids=lambda a: "-".join(map(str, a.values())))
def test_full_leaves_nothing_uncounted(attention):
    r = _report("cifar", tuple(attention.items()))
    assert r.audit["full"] == {}
    assert r.uncounted()["madds"] > r.uncounted()["fvcore"] > 0
    assert "aten::batch_norm" in r.audit["madds"] and "aten::batch_norm" not in r.audit["fvcore"]
    # attention-only cost is exactly the difference to the model without attention
    none = _report("cifar")
    assert r.attn_params == r.params - none.params
    assert r.attn_flops == {c: r.flops[c] - none.flops[c] for c in CONVENTIONS}


def test_audit_names_what_fvcore_skips():
    r = _report("cifar", (("name", "ca"), ("pool", "max")))
    fv = r.audit["fvcore"]
    # 16 blocks with CA (t != 1), two pooled directions each; two sigmoid gates; 3 products
    # (x * a_w * a_h and h_swish's x * relu6(.)) per block
    assert fv["aten::amax"] == 32 and fv["aten::sigmoid"] == 32 and fv["aten::mul"] == 48
    assert {"aten::add", "aten::div", "aten::relu6", "aten::hardtanh"} <= fv.keys()
    se = _report("cifar", (("name", "se"),))
    assert se.audit["fvcore"]["aten::relu"] == 16  # fvcore ignores relu silently; the audit does not


def test_full_compares_pooling_and_gates_fairly():
    def full(**kw):
        return _report("cifar", tuple(dict(name="ca", **kw).items())).flops

    avg, mx, avgmax = full(pool="avg"), full(pool="max"), full(pool="avgmax")
    assert mx["full"] >= avg["full"] and avgmax["full"] > avg["full"]
    assert mx["full"] != mx["madds"]
    assert avgmax["madds"] == avg["madds"] and avgmax["fvcore"] == avg["fvcore"]  # blind to pooling
    hsig = full(gate="h_sigmoid")  # add + relu6 + div per element vs one sigmoid
    assert hsig["full"] > avg["full"] and hsig["madds"] == avg["madds"]


def test_count_cost_leaves_the_model_untouched():
    model = build_model(_cfg("cifar", name="ca")).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_cost(model, (3, 32, 32))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="input_shape"):
        count_cost(model, (32, 32))
    with pytest.raises(ValueError, match="allowed: madds, fvcore, full"):
        count_cost(model, (3, 32, 32), conventions=("macs",))


# ---------------------------------------------------------------------- latency and config

def test_measure_latency_reports_median_iqr_and_threads():
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    threads = torch.get_num_threads()
    lat = measure_latency(tiny, (1, 3, 16, 16), device="cpu", batch_sizes=(1, 3), warmup=1, repeats=3, threads=1)
    assert lat["device"] == "cpu" and lat["threads"] == 1 and torch.get_num_threads() == threads
    assert set(lat["batches"]) == {1, 3} and lat["input_shape"] == [3, 16, 16]
    b3 = lat["batches"][3]
    assert b3["q1_ms"] <= b3["median_ms"] <= b3["q3_ms"] and b3["iqr_ms"] == pytest.approx(b3["q3_ms"] - b3["q1_ms"])
    json.dumps(lat)
    with pytest.raises(ValueError, match="repeats=0"):
        measure_latency(tiny, (3, 16, 16), repeats=0)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device='tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_cost_from_config_input_size():
    assert default_input_size(_cfg("imagenet")) == 224
    assert default_input_size(_cfg("cifar")) == 32
    assert default_input_size({**_cfg("cifar"), "data": {"image_size": 64}}) == 64
    r = cost_from_config(_cfg("cifar", name="eca"), input_size=16)
    assert r.input_shape == (1, 3, 16, 16) and r.latency is None and r.audit["full"] == {}


# ---------------------------------------------------------------------- CLI

def _cli(*args: str, warn_error: bool = False) -> subprocess.CompletedProcess:
    flags = ["-W", "error::FutureWarning"] if warn_error else []
    return subprocess.run([sys.executable, *flags, "-m", "analysis.cost", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_json_without_future_warnings():
    p = _cli("model.geometry=imagenet", "attention=ca", "--json", warn_error=True)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert {"config", "input_shape", "params", "attn_params", "flops", "attn_flops", "audit", "uncounted",
            "conventions"} <= d.keys()
    assert d["input_shape"] == [1, 3, 224, 224] and d["params"] == 3_950_648
    assert set(d["flops"]) == set(d["attn_flops"]) == set(d["audit"]) == set(CONVENTIONS)
    assert d["config"]["num_classes"] == 1000 and d["audit"]["full"] == {}


def test_cli_table_with_latency():
    p = _cli("attention=se", "attention.reduction=16", "--latency", "--batch", "2", "--warmup", "1",
             "--repeats", "2", "--device", "cpu", "--threads", "1")
    assert p.returncode == 0, p.stderr
    for needle in ("madds", "fvcore", "full", "1x3x32x32", "uncounted by fvcore", "1 torch threads"):
        assert needle in p.stdout, needle


@pytest.mark.parametrize("override,key", [("attention.reductio=3", "attention.reductio"),
                                          ("attention.pool=median", "attention.pool")])
def test_cli_bad_override_exits_2_naming_the_key(override, key):
    p = _cli("attention=ca", override)
    assert p.returncode == 2
    assert key in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
