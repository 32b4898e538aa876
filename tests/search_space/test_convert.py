"""Official MobileNetV2+CA checkpoint layout <-> ours (search_space/convert.py), checked against
the official key/shape list in ../shared/reference/mbv2_ca_state_dict.txt."""
from __future__ import annotations

import re
from collections import OrderedDict

import pytest
import torch

from search_space.convert import (ConversionError, export_official, load_official, main, official_to_ours,
                                  ours_to_official)
from search_space.mobilenetv2 import build_model
from tests.conftest import shared_path



def paper_model(**attention):
    attention.setdefault("name", "ca")
    return build_model({"model": {"name": "mobilenetv2", "geometry": "imagenet", "width": 1.0,
                                  "num_classes": 1000, "dropout": 0.1},
                        "attention": attention})


@pytest.fixture(scope="module")
def official_layout() -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of the official checkpoint, in order."""
    rows = []
    for line in shared_path("reference", "mbv2_ca_state_dict.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        rows.append((key, tuple(int(d) for d in re.findall(r"\d+", shape))))
    assert len(rows) == 490
    return rows


def official_state_dict(layout, fill="zeros", seed=0) -> "OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for key, shape in layout:
        if key.endswith("num_batches_tracked"):
            sd[key] = (torch.randint(0, 10_000, shape, generator=g) if fill == "random"
                       else torch.zeros(shape, dtype=torch.long))
        elif fill == "random":  # BN variances must stay positive for a forward pass
            t = torch.randn(shape, generator=g)
            sd[key] = t.abs() + 0.5 if key.endswith("running_var") else t
        else:
            sd[key] = torch.zeros(shape)
    return sd


@pytest.fixture(scope="module")
def model():
    return paper_model()


def test_official_zeros_load_strictly(official_layout, model):
    ours = official_to_ours(official_state_dict(official_layout))
    result = model.load_state_dict(ours, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_ours_to_official_equals_official_list(official_layout, model):
    official = ours_to_official(model.state_dict())
    assert list(official) == [k for k, _ in official_layout]  # same keys, same order
    assert [tuple(v.shape) for v in official.values()] == [s for _, s in official_layout]
    assert list(export_official(model)) == list(official)


def test_ours_to_official_restores_order_of_a_shuffled_dict(official_layout, model):
    items = list(model.state_dict().items())
    shuffled = OrderedDict(items[::2] + items[1::2][::-1])
    assert list(ours_to_official(shuffled)) == [k for k, _ in official_layout]


def test_explicit_renames(official_layout):
    ours = official_to_ours(official_state_dict(official_layout))
    for official, mine in [("features.0.0.weight", "stem.0.weight"),
                           ("features.0.1.running_var", "stem.1.running_var"),
                           ("features.1.conv.0.weight", "blocks.0.conv_dw.weight"),  # t=1: dw first
                           ("features.1.conv.3.weight", "blocks.0.conv_pwl.weight"),
                           ("features.2.conv.0.weight", "blocks.1.conv_pw.weight"),
                           ("features.2.conv.3.weight", "blocks.1.conv_dw.weight"),
                           ("features.5.conv.6.conv1.bias", "blocks.4.post_dw.conv1.bias"),
                           ("features.5.conv.6.bn1.running_mean", "blocks.4.post_dw.bn1.running_mean"),
                           ("features.17.conv.6.conv2.weight", "blocks.16.post_dw.conv_h.weight"),  # H gate
                           ("features.17.conv.6.conv3.weight", "blocks.16.post_dw.conv_w.weight"),  # W gate
                           ("features.17.conv.8.bias", "blocks.16.bn3.bias"),
                           ("conv.0.weight", "head.0.weight"),
                           ("classifier.1.bias", "classifier.bias")]:
        assert mine in ours, (official, mine)
    ours_keys = list(ours)
    official_keys = [k for k, _ in official_layout]
    assert ours_keys.index("blocks.4.post_dw.conv1.bias") == official_keys.index("features.5.conv.6.conv1.bias")


def test_round_trip_is_bit_exact(official_layout):
    sd = official_state_dict(official_layout, fill="random")
    ours = official_to_ours(sd)
    back = ours_to_official(ours)
    assert list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k

    # And through a model: load, export, compare.
    m = paper_model()
    load_official(m, sd)
    exported = export_official(m)
    assert list(exported) == list(sd)
    assert all(torch.equal(exported[k], v) for k, v in sd.items())


def test_loaded_weights_land_in_the_right_layers(official_layout):
    # A value written under an official key must be the one our corresponding layer uses.
    sd = official_state_dict(official_layout, fill="random")
    m = load_official(paper_model(), sd)
    assert torch.equal(m.blocks[1].post_dw.conv_h.weight, sd["features.2.conv.6.conv2.weight"])
    assert torch.equal(m.blocks[1].post_dw.conv_w.weight, sd["features.2.conv.6.conv3.weight"])
    assert torch.equal(m.blocks[0].conv_dw.weight, sd["features.1.conv.0.weight"])
    assert torch.equal(m.classifier.weight, sd["classifier.1.weight"])
    assert torch.equal(m.head[1].running_var, sd["conv.1.running_var"])


def test_save_and_load_pth(tmp_path, official_layout):
    sd = official_state_dict(official_layout, fill="random", seed=3)
    for i, (obj, name) in enumerate([(sd, "raw"),
                                     ({"state_dict": sd, "epoch": 199}, "wrapped"),
                                     (OrderedDict(("module." + k, v) for k, v in sd.items()), "dataparallel")]):
        path = tmp_path / f"mbv2_ca_{name}.pth"
        torch.save(obj, path)
        m = load_official(paper_model(), path)
        ours = m.state_dict()
        assert torch.equal(ours["blocks.16.post_dw.conv_w.bias"], sd["features.17.conv.6.conv3.bias"]), name
        assert all(torch.equal(v, sd[k]) for k, v in export_official(m).items()), name

    # The loaded model runs and gives the same logits as the same weights loaded by hand.
    ref = paper_model()
    ref.load_state_dict(official_to_ours(sd))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), ref.eval()(x), rtol=0, atol=0)


def test_old_checkpoint_without_num_batches_tracked(official_layout):
    sd = official_state_dict(official_layout, fill="random")
    old = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    m = load_official(paper_model(), old)
    assert int(m.stem[1].num_batches_tracked) == 0
    assert torch.equal(m.stem[1].running_var, sd["features.0.1.running_var"])


def test_missing_key_error_lists_it(official_layout, model):
    sd = official_state_dict(official_layout)
    del sd["features.3.conv.6.conv2.bias"]
    with pytest.raises(ConversionError, match=r"missing keys \(1\): blocks\.2\.post_dw\.conv_h\.bias"):
        load_official(model, sd)


def test_shape_mismatch_error_lists_it(official_layout, model):
    sd = official_state_dict(official_layout)
    sd["classifier.1.weight"] = torch.zeros(10, 1280)
    sd["classifier.1.bias"] = torch.zeros(10)
    with pytest.raises(ConversionError) as e:
        load_official(model, sd)
    msg = str(e.value)
    assert "shape mismatches (2)" in msg
    assert "classifier.weight: checkpoint (10, 1280) vs model (1000, 1280)" in msg
    assert "num_classes" in msg


def test_unknown_official_key_error_lists_it(official_layout, model):
    sd = official_state_dict(official_layout)
    sd["features.18.conv.0.weight"] = torch.zeros(1)
    sd["features.1.conv.6.conv1.weight"] = torch.zeros(1)  # t=1 block has no CA
    with pytest.raises(ConversionError, match=r"2 key\(s\) have no ours counterpart: features\.18\.conv\.0\.weight, "
                                              r"features\.1\.conv\.6\.conv1\.weight"):
        official_to_ours(sd)


def test_not_a_state_dict():
    with pytest.raises(ConversionError, match="expected a state_dict"):
        official_to_ours({"epoch": 3})


@pytest.mark.parametrize("attention, needle", [
    ({"name": "se"}, "blocks.1.post_dw holds SEModule"),
    ({"name": "none"}, "blocks.1.post_dw holds Identity"),
    ({"position": "post_project"}, "blocks.1.post_dw holds Identity"),
    ({"skip_t1": False}, "blocks.0.post_dw holds CoordAttn"),
    ({"stages": [2, 3]}, "blocks.6.post_dw holds Identity"),
    ({"pool": "max"}, "pool='max'"),
    ({"act": "relu"}, "act=ReLU"),
    ({"gate": "h_sigmoid"}, "gate='h_sigmoid'"),
    ({"norm": "gn"}, "norm=GroupNorm"),
    ({"bias": False}, "bias=false"),
    ({"directions": "h"}, "directions='h'"),
])
def test_non_official_attention_is_refused(attention, needle):
    with pytest.raises(ConversionError, match=re.escape(needle)):
        load_official(paper_model(**attention), {})
    with pytest.raises(ConversionError, match=re.escape(needle)):
        export_official(paper_model(**attention))


def test_cifar_geometry_is_refused():
    m = build_model({"model": {"name": "mobilenetv2", "geometry": "cifar", "width": 1.0, "num_classes": 1000},
                     "attention": {"name": "ca"}})
    with pytest.raises(ConversionError, match="geometry=imagenet"):
        load_official(m, {})


def test_ours_to_official_refuses_other_attention_keys():
    sd = paper_model(name="se").state_dict()
    with pytest.raises(ConversionError, match=r"no official counterpart: blocks\.1\.post_dw\.fc1\.weight"):
        ours_to_official(sd)


def test_cli_round_trip(tmp_path, official_layout, capsys):
    sd = official_state_dict(official_layout, fill="random", seed=5)
    src, mid, dst = tmp_path / "official.pth", tmp_path / "ours.pth", tmp_path / "official_again.pth"
    torch.save({"state_dict": sd}, src)
    assert main([str(src), str(mid)]) == 0
    ours = torch.load(mid, weights_only=True)
    assert "blocks.1.post_dw.conv_h.weight" in ours
    assert main([str(mid), str(dst), "--to", "official"]) == 0
    back = torch.load(dst, weights_only=True)
    assert list(back) == list(sd) and all(torch.equal(back[k], v) for k, v in sd.items())
    assert "wrote 490 tensors" in capsys.readouterr().out

    del sd["conv.0.weight"]
    torch.save(sd, src)
    assert main([str(src), str(mid)]) == 2
    assert "missing keys (1): head.0.weight" in capsys.readouterr().err

    # The wrong direction says so.
    torch.save(ours, src)
    assert main([str(src), str(dst)]) == 2
    assert "looks like our layout already (CLI: --to official)" in capsys.readouterr().err
