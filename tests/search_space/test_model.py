"""MobileNetV2 from config: every attention kind at every position, placement counts, the paper's
parameter counts, geometry downsampling, width rounding and deterministic init."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from search_space.attention.cbam import CbamModule
from search_space.attention.coord import CoordAttn
from search_space.attention.eca import EcaModule
from search_space.attention.se import SEModule
from search_space.blocks import POSITIONS, InvertedResidual
from search_space.layers import make_divisible
from search_space.mobilenetv2 import STAGES, MobileNetV2, build_model

KINDS = {"none": None, "ca": CoordAttn, "se": SEModule, "cbam": CbamModule, "eca": EcaModule}
ATTN_TYPES = (CoordAttn, SEModule, CbamModule, EcaModule)



def cfg(geometry="imagenet", width=1.0, num_classes=1000, **attention):
    attention.setdefault("name", "ca")
    return {"model": {"name": "mobilenetv2", "geometry": geometry, "width": width,
                      "num_classes": num_classes, "dropout": 0.1},
            "attention": attention}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def attention_slots(model: MobileNetV2) -> list[tuple[int, str, nn.Module]]:
    """(block index, position, module) of every non-identity insertion point."""
    return [(j, pos, getattr(b, pos)) for j, b in enumerate(model.blocks) for pos in POSITIONS
            if not isinstance(getattr(b, pos), nn.Identity)]


def count_attention(model: nn.Module) -> int:
    return sum(isinstance(m, ATTN_TYPES) for m in model.modules())


# Blocks per stage and expand ratios, from the paper's table.
BLOCK_STAGES = [s for s, (_t, _c, n, _s) in enumerate(STAGES, start=1) for _ in range(n)]
BLOCK_T = [t for t, _c, n, _s in STAGES for _ in range(n)]


@pytest.mark.parametrize("geometry, size", [("cifar", 32), ("imagenet", 64)])
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_and_position_trains(geometry, size, position, kind):
    torch.manual_seed(0)
    num_classes = 10 if geometry == "cifar" else 1000
    model = build_model(cfg(geometry, width=0.5, num_classes=num_classes, name=kind, position=position))
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    slots = attention_slots(model)
    if kind == "none":
        assert slots == [] and count_attention(model) == 0
        return
    # Default placement: every block but the t=1 one, and only at the configured position.
    assert [j for j, _, _ in slots] == [j for j, t in enumerate(BLOCK_T) if t != 1]
    assert {pos for _, pos, _ in slots} == {position}
    assert all(type(m) is KINDS[kind] for _, _, m in slots)
    assert count_attention(model) == 16


def _slot_channels(block: InvertedResidual, position: str) -> int:
    hidden = block.conv_dw.in_channels
    return hidden if position in ("post_expand", "post_dw") else block.conv_pwl.out_channels


@pytest.mark.parametrize("position", POSITIONS)
def test_attention_width_matches_its_slot(position):
    model = build_model(cfg(width=0.5, position=position))
    for j, _, m in attention_slots(model):
        assert m.conv1.in_channels == m.conv_h.out_channels == _slot_channels(model.blocks[j], position)


def test_post_add_applies_to_blocks_without_residual():
    model = build_model(cfg(width=0.5, position="post_add"))
    no_skip = [j for j, b in enumerate(model.blocks) if not b.has_skip]
    assert len(no_skip) == 7  # first block of each stage (its stride or width changes)
    for j, b in enumerate(model.blocks):
        assert isinstance(b.post_add, CoordAttn) == (BLOCK_T[j] != 1), j
    # A no-skip block's output really goes through the attention.
    j = no_skip[1]
    block = model.blocks[j].eval()
    x = torch.randn(1, block.conv_pw.in_channels, 8, 8)
    with torch.no_grad():
        y = block(x)
        block.post_add = nn.Identity()
        assert not torch.allclose(block(x), y)


@pytest.mark.parametrize("attention, expected", [
    ({}, 16),  # paper default: 17 blocks, the t=1 one skipped
    ({"skip_t1": False}, 17),
    ({"stages": [2, 3]}, 5),  # 2 + 3 blocks
    ({"stages": [1]}, 0),  # stage 1 is the t=1 block
    ({"stages": [1], "skip_t1": False}, 1),
    ({"stages": [7, 4]}, 5),  # 1 + 4 blocks
])
def test_attention_module_count(attention, expected):
    model = build_model(cfg(width=0.5, **attention))
    assert count_attention(model) == expected
    stages = attention.get("stages", range(1, 8))
    skip_t1 = attention.get("skip_t1", True)
    want = [j for j, s in enumerate(BLOCK_STAGES) if s in stages and not (skip_t1 and BLOCK_T[j] == 1)]
    assert [j for j, _, _ in attention_slots(model)] == want


def test_param_counts_match_paper():
    assert n_params(build_model(cfg(name="none"))) == 3_504_872  # MobileNetV2-1.0 (torchvision/paper)
    assert n_params(build_model(cfg(name="ca"))) == 3_950_648  # official mbv2_ca.pth
    se = n_params(build_model(cfg(name="se", reduction=24, position="post_dw")))
    assert abs(se - 3.89e6) / 3.89e6 < 0.005  # paper: 3.89M


def test_paper_default_ca_real_imagenet_forward():
    torch.manual_seed(0)
    model = build_model(cfg()).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
    assert feats.shape == (1, 1280, 7, 7)  # 32x downsampling
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_cifar_geometry_downsamples_8x():
    model = build_model(cfg("cifar", width=0.5, num_classes=10)).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 1280, 4, 4)
    imagenet = build_model(cfg("imagenet", width=0.5)).eval()
    with torch.no_grad():
        assert imagenet.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 1280, 2, 2)


def test_width_half_channels_are_make_divisible():
    model = build_model(cfg(width=0.5, name="none"))
    # make_divisible(c * 0.5, 8) for c = 32 (stem), 16, 24, 32, 64, 96, 160, 320; 24*0.5=12 -> 16.
    assert model.stem[0].out_channels == 16
    stage_out = {}
    for s, b in zip(BLOCK_STAGES, model.blocks):
        stage_out[s] = b.conv_pwl.out_channels
    assert [stage_out[s] for s in range(1, 8)] == [8, 16, 16, 32, 48, 80, 160]
    assert [stage_out[s] for s in range(1, 8)] == [make_divisible(c * 0.5, 8) for _, c, _, _ in STAGES]
    assert model.head[0].out_channels == 1280  # the last conv is not scaled down
    # expand width = in * 6
    assert model.blocks[1].conv_pw.out_channels == 8 * 6


def test_width_above_one_scales_head():
    model = build_model(cfg(width=1.4, name="none"))
    assert model.head[0].out_channels == make_divisible(1280 * 1.4, 8) == 1792
    assert model.stem[0].out_channels == 48


def test_init_is_deterministic_under_manual_seed():
    def build(seed):
        torch.manual_seed(seed)
        return build_model(cfg("cifar", width=0.5, num_classes=10)).state_dict()

    a, b, c = build(0), build(0), build(1)
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_num_classes_from_data():
    model = build_model(cfg("cifar", width=0.5, num_classes=None), num_classes=100)
    assert model.classifier.out_features == 100
    default = build_model(cfg("cifar", width=0.5, num_classes=None))
    assert default.classifier.out_features == 10
