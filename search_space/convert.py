"""Convert between the official MobileNetV2+CA checkpoint layout and ours.

The CA authors' ImageNet checkpoint (``mbv2_ca.pth``, https://github.com/houqb/CoordAttention,
Hou et al., CVPR 2021, https://arxiv.org/abs/2103.02907) uses the torchvision-style layout
``features.<i>.conv.<k>``; coordsweep's MobileNetV2 names every layer (``blocks.<j>.conv_dw``...).
The rename rules below are explicit per layer (no zipping by order), so a checkpoint that does not
fit fails loudly with the keys that do not match.

    official                                   ours
    features.0.{0,1}                           stem.{0,1}                      (3x3 conv, BN)
    features.1.conv.{0,1,3,4}  (t = 1)         blocks.0.{conv_dw,bn2,conv_pwl,bn3}
    features.i.conv.{0,1}      (t != 1)        blocks.{i-1}.{conv_pw,bn1}      (1x1 expand, BN)
    features.i.conv.{3,4}                      blocks.{i-1}.{conv_dw,bn2}      (3x3 depthwise, BN)
    features.i.conv.6.{conv1,bn1,conv2,conv3}  blocks.{i-1}.post_dw.{conv1,bn1,conv_h,conv_w}  (CA)
    features.i.conv.{7,8}                      blocks.{i-1}.{conv_pwl,bn3}     (1x1 project, BN)
    conv.{0,1}                                 head.{0,1}                      (1x1 conv to 1280, BN)
    classifier.1                               classifier                      (Linear after Dropout)

Only the paper-default CA after the depthwise conv (``attention=ca`` with its defaults, any
width, ImageNet geometry) has an official counterpart; ``check_official_compatible`` says why
another model has none.

Example::

    model = build_model({"model": {"name": "mobilenetv2", "geometry": "imagenet", "width": 1.0,
                                   "num_classes": 1000, "dropout": 0.1},
                         "attention": {"name": "ca"}})
    load_official(model, "mbv2_ca.pth")

CLI: ``python -m search_space.convert IN.pth OUT.pth [--to ours|official]``.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, Union

import torch
import torch.nn as nn

from search_space.blocks import POSITIONS
from search_space.mobilenetv2 import STAGES

# Expand ratio of every block, in order (official ``features.1`` .. ``features.17``).
BLOCK_EXPAND_RATIOS: Tuple[int, ...] = tuple(t for t, _c, n, _s in STAGES for _ in range(n))
NUM_BLOCKS = len(BLOCK_EXPAND_RATIOS)

# Layer index inside ``features.<i>.conv`` -> our sub-module name, for t = 1 and t != 1 blocks.
_T1_LAYERS = {0: "conv_dw", 1: "bn2", 3: "conv_pwl", 4: "bn3"}
_EXPAND_LAYERS = {0: "conv_pw", 1: "bn1", 3: "conv_dw", 4: "bn2", 6: "post_dw", 7: "conv_pwl", 8: "bn3"}
# Official CA layer names (the model file's copy of CA) -> ours (coord.py, as in the authors' coordatt.py).
_CA_LAYERS = {"conv1": "conv1", "bn1": "bn1", "conv2": "conv_h", "conv3": "conv_w"}
_TOP_LAYERS = {"features.0.0": "stem.0", "features.0.1": "stem.1", "conv.0": "head.0", "conv.1": "head.1",
               "classifier.1": "classifier"}
# Parameter/buffer suffixes in module registration order (sorts keys into the official order).
_SUFFIX_ORDER = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

_BLOCK_RE = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")
_OUR_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.([A-Za-z_0-9]+)\.(.+)$")


class ConversionError(ValueError):
    """A state_dict does not fit the layout it is converted from or loaded into."""


def _inverse(d: Mapping) -> dict:
    return {v: k for k, v in d.items()}


def _block_layers(block: int) -> Dict[int, str]:
    """Official layer index -> our name for block ``block`` (0-based, ours)."""
    return _T1_LAYERS if BLOCK_EXPAND_RATIOS[block] == 1 else _EXPAND_LAYERS


def _official_to_ours_key(key: str) -> str | None:
    for prefix, ours in _TOP_LAYERS.items():
        if key.startswith(prefix + ".") and key.count(".") == prefix.count(".") + 1:
            return ours + key[len(prefix):]
    m = _BLOCK_RE.match(key)
    if not m:
        return None
    feat, layer, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    block = feat - 1
    if not 0 <= block < NUM_BLOCKS or layer not in _block_layers(block):
        return None
    name = _block_layers(block)[layer]
    if name == "post_dw":
        sub, _, leaf = rest.partition(".")
        if sub not in _CA_LAYERS or "." in leaf or not leaf:
            return None
        rest = f"{_CA_LAYERS[sub]}.{leaf}"
    elif "." in rest:
        return None
    return f"blocks.{block}.{name}.{rest}"


def _ours_to_official_key(key: str) -> str | None:
    for official, prefix in _TOP_LAYERS.items():
        if key.startswith(prefix + ".") and key.count(".") == prefix.count(".") + 1:
            return official + key[len(prefix):]
    m = _OUR_BLOCK_RE.match(key)
    if not m:
        return None
    block, name, rest = int(m.group(1)), m.group(2), m.group(3)
    if not 0 <= block < NUM_BLOCKS:
        return None
    layers = _inverse(_block_layers(block))
    if name not in layers:
        return None
    if name == "post_dw":
        sub, _, leaf = rest.partition(".")
        ca = _inverse(_CA_LAYERS)
        if sub not in ca or "." in leaf or not leaf:
            return None
        rest = f"{ca[sub]}.{leaf}"
    elif "." in rest:
        return None
    return f"features.{block + 1}.conv.{layers[name]}.{rest}"


def _official_sort_key(key: str) -> tuple:
    """Position of an official key in the official module registration order."""
    parts = key.split(".")
    suffix = _SUFFIX_ORDER.index(parts[-1]) if parts[-1] in _SUFFIX_ORDER else len(_SUFFIX_ORDER)
    if parts[0] == "features" and parts[1] == "0":
        return (0, 0, int(parts[2]), 0, suffix)
    if parts[0] == "features":
        ca = list(_CA_LAYERS).index(parts[4]) if len(parts) == 6 else 0
        return (1, int(parts[1]), int(parts[3]), ca, suffix)
    if parts[0] == "conv":
        return (2, 0, int(parts[1]), 0, suffix)
    return (3, 0, 0, 0, suffix)  # classifier


def unwrap_state_dict(obj: Any) -> "OrderedDict[str, torch.Tensor]":
    """The state_dict inside a loaded checkpoint.

    Accepts a raw state_dict, ``{'state_dict': ...}`` or ``{'model': ...}``, and strips a
    ``module.`` prefix (``nn.DataParallel``/DDP checkpoints).
    """
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError("expected a state_dict (a mapping of names to tensors), or a checkpoint "
                              "holding one under 'state_dict' or 'model'")
    out = OrderedDict()
    for k, v in obj.items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def _rename(state_dict: Mapping[str, torch.Tensor], rule, target: str) -> "OrderedDict[str, torch.Tensor]":
    out, unknown = OrderedDict(), []
    for k, v in state_dict.items():
        new = rule(k)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        if target == "ours":
            hint = "official MobileNetV2+CA keys look like 'features.2.conv.6.conv1.weight'"
            if any(k.startswith(("stem.", "blocks.", "head.")) for k in unknown):
                hint += "; this looks like our layout already (CLI: --to official)"
        else:
            hint = ("only the paper-default CA at post_dw has an official counterpart "
                    "(see search_space.convert.check_official_compatible)")
            if any(k.startswith(("features.", "conv.")) for k in unknown):
                hint += "; this looks like the official layout already (CLI: --to ours)"
        raise ConversionError(f"{len(unknown)} key(s) have no {target} counterpart: {_short(unknown)}; {hint}")
    return out


def official_to_ours(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Rename an official MobileNetV2+CA state_dict to coordsweep's MobileNetV2 names.

    Args:
        state_dict: official keys (``features.*``, ``conv.*``, ``classifier.1.*``); a ``module.``
            prefix is stripped. Tensors are passed through unchanged (not copied).

    Returns:
        The same tensors under our keys, in input order.

    Raises:
        ConversionError: listing the keys no rule matches.
    """
    return _rename(unwrap_state_dict(state_dict), _official_to_ours_key, "ours")


def ours_to_official(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Rename a coordsweep MobileNetV2(+CA at post_dw) state_dict to the official layout.

    Args:
        state_dict: our keys (``stem.*``, ``blocks.*``, ``head.*``, ``classifier.*``).

    Returns:
        The same tensors under official keys, in the official checkpoint's order.

    Raises:
        ConversionError: listing the keys with no official counterpart (e.g. attention at another
            position, SE/CBAM/ECA layers, a GeM exponent).
    """
    out = _rename(unwrap_state_dict(state_dict), _ours_to_official_key, "official")
    return OrderedDict((k, out[k]) for k in sorted(out, key=_official_sort_key))


def check_official_compatible(model: nn.Module) -> None:
    """Raise ``ConversionError`` unless ``model`` is a MobileNetV2 whose attention is exactly the
    official one: the paper-default CA after the depthwise conv of every t != 1 block and nowhere
    else. Options that leave the state_dict shapes unchanged (pool, act, gate, norm...) are checked
    here, because a strict load would not notice them."""
    from search_space.attention.coord import CoordAttn
    from search_space.layers import HSwish
    from search_space.mobilenetv2 import MobileNetV2

    if not isinstance(model, MobileNetV2):
        raise ConversionError(f"expected a search_space MobileNetV2, got {type(model).__name__}")
    if len(model.blocks) != NUM_BLOCKS:
        raise ConversionError(f"expected {NUM_BLOCKS} blocks, the model has {len(model.blocks)}")
    if model.stem[0].stride != (2, 2):
        raise ConversionError("the official weights are for model.geometry=imagenet (stem stride 2); "
                              "this model has a cifar-geometry stem")
    hint = "the official checkpoint needs attention=ca with its paper defaults at position post_dw, all stages, skip_t1"
    for j, (block, t) in enumerate(zip(model.blocks, BLOCK_EXPAND_RATIOS)):
        for pos in POSITIONS:
            m = getattr(block, pos)
            want_ca = pos == "post_dw" and t != 1
            if not want_ca:
                if not isinstance(m, nn.Identity):
                    raise ConversionError(f"blocks.{j}.{pos} holds {type(m).__name__}; the official model has "
                                          f"no attention there ({hint})")
                continue
            if not isinstance(m, CoordAttn):
                raise ConversionError(f"blocks.{j}.post_dw holds {type(m).__name__}, not CoordAttn ({hint})")
            bad = []
            if m.pool != "avg":
                bad.append(f"pool={m.pool!r} (official 'avg')")
            if m.directions != "hw":
                bad.append(f"directions={m.directions!r} (official 'hw')")
            if m.gate_kind != "sigmoid":
                bad.append(f"gate={m.gate_kind!r} (official 'sigmoid')")
            if type(m.act) is not HSwish:
                bad.append(f"act={type(m.act).__name__} (official h_swish)")
            if not isinstance(m.bn1, nn.BatchNorm2d):
                bad.append(f"norm={type(m.bn1).__name__} (official bn)")
            if m.conv1.bias is None:
                bad.append("bias=false (official true)")
            if bad:
                raise ConversionError(f"blocks.{j}.post_dw is not the official CA: {', '.join(bad)}")


def _short(keys: List[str], n: int = 8) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _fill_num_batches_tracked(ours: "OrderedDict[str, torch.Tensor]", expected: Mapping[str, torch.Tensor]) -> None:
    # Checkpoints saved before PyTorch 0.4.1 have no BN num_batches_tracked; count them as 0.
    for k, v in expected.items():
        if k.endswith(".num_batches_tracked") and k not in ours and k[: -len("num_batches_tracked")] + "weight" in ours:
            ours[k] = torch.zeros_like(v)


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """``ConversionError`` listing missing keys, unexpected keys and shape mismatches between
    ``state_dict`` and ``model.state_dict()`` (all of them, in one message)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {_short(shapes)}")
    if problems:
        raise ConversionError("state_dict does not fit the model (check model.width and model.num_classes): "
                              + "; ".join(problems))


def load_official(model: nn.Module, path_or_state_dict: Union[str, Path, Mapping[str, torch.Tensor]]) -> nn.Module:
    """Load official MobileNetV2+CA weights into our paper-default ImageNet model, strictly.

    Args:
        model: a ``MobileNetV2`` built with ``attention=ca`` (paper defaults) and
            ``model.geometry=imagenet``; width and num_classes must match the checkpoint.
        path_or_state_dict: a ``.pth`` file (read with ``torch.load(weights_only=True)``) or an
            already loaded object: a raw state_dict, ``{'state_dict': ...}`` or ``{'model': ...}``,
            keys optionally prefixed with ``module.``.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        ConversionError: the model is not the official architecture, or keys/shapes do not match
            (the message lists every missing and unexpected key and every shape mismatch).
    """
    check_official_compatible(model)
    if isinstance(path_or_state_dict, (str, Path)):
        obj = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
    else:
        obj = path_or_state_dict
    ours = official_to_ours(unwrap_state_dict(obj))
    _fill_num_batches_tracked(ours, model.state_dict())
    check_state_dict(model, ours)
    model.load_state_dict(ours, strict=True)
    return model


def export_official(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """``model``'s state_dict in the official layout (after ``check_official_compatible``)."""
    check_official_compatible(model)
    return ours_to_official(model.state_dict())


def _paper_default_model(width: float, num_classes: int) -> nn.Module:
    from search_space.mobilenetv2 import build_model

    return build_model({"model": {"name": "mobilenetv2", "geometry": "imagenet", "width": width,
                                  "num_classes": num_classes, "dropout": 0.1},
                        "attention": {"name": "ca"}})


def main(argv: List[str] | None = None) -> int:
    """CLI entry: convert a checkpoint file between the official layout and ours."""
    p = argparse.ArgumentParser(prog="python -m search_space.convert", description=__doc__.split("\n")[0])
    p.add_argument("input", type=Path, help="checkpoint to read (.pth)")
    p.add_argument("output", type=Path, help="state_dict to write (.pth)")
    p.add_argument("--to", choices=("ours", "official"), default="ours",
                   help="target layout (default: ours, i.e. the input is official)")
    p.add_argument("--width", type=float, default=1.0,
                   help="width multiplier used to check the result against our model (default 1.0)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the strict load into a paper-default MobileNetV2+CA")
    args = p.parse_args(argv)
    try:
        sd = unwrap_state_dict(torch.load(args.input, map_location="cpu", weights_only=True))
        ours = official_to_ours(sd) if args.to == "ours" else sd
        if not args.no_check:
            cls = ours.get("classifier.weight")
            model = _paper_default_model(args.width, int(cls.shape[0]) if cls is not None else 1000)
            if args.to == "ours":
                _fill_num_batches_tracked(ours, model.state_dict())
            check_state_dict(model, ours)
            model.load_state_dict(ours, strict=True)
        out = ours if args.to == "ours" else ours_to_official(sd)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.save(out, args.output)
    print(f"wrote {len(out)} tensors ({args.to} layout) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
