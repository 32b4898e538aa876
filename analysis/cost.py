"""Model cost under declared counting conventions: parameters, FLOPs and measured latency.

Every FLOP number this module reports is tagged with its convention (1 multiply-add = 1):

* ``madds``: the Coordinate Attention paper's "M-Adds" (Hou, Zhou & Feng, CVPR 2021,
  https://arxiv.org/abs/2103.02907, tables 1-4): multiply-adds of conv and linear layers
  only. BatchNorm (foldable into the conv), biases, activations, pooling, gates, products and
  adds are not counted. MobileNetV2-1.0 at 224: 300.8M.
* ``fvcore``: fvcore's ``FlopCountAnalysis`` defaults as-is
  (https://github.com/facebookresearch/fvcore/blob/main/docs/flop_count.md): conv/linear
  MACs plus BatchNorm (2 per element in eval), GroupNorm/LayerNorm, ``adaptive_avg_pool2d``
  and upsampling; 0 for everything else, e.g. ``amax``, ``mean``, ``sigmoid``, ``mul``,
  ``add``, ReLU6. A comparison of max- vs avg-pooled CA is biased under it.
* ``full``: ``madds`` + one op per element for every other aten op that computes: per
  *output* element for element-wise ops (activations, gates, products, adds, conv/linear
  bias adds, BatchNorm folded to one affine op), per *input* element reduced for pooling
  and reductions (``mean``, ``amax``, ...), per window element for windowed pooling;
  GroupNorm/LayerNorm as fvcore (4-5 per element: their statistics are computed at
  inference). An op is one aten op as traced, so ``x * relu6(x + 3) / 6`` costs 4 per
  element and ``sigmoid`` 1: internal cost of a primitive is not itemised.

Nothing is hidden: for each convention, ``CostReport.audit`` lists the aten ops that occur
in the model and that the convention counts as 0, with how often they occur (pure
shape/memory ops such as ``view``, ``cat``, ``transpose`` and eval-mode ``dropout`` are
free under every convention and not listed). ``full`` aims to leave nothing uncounted.

All conventions come from one jit trace: each convention is a module-level table of fvcore
op handles keyed by aten name (``CONVENTIONS``); the tables are evaluated together on every
traced op and the per-module counts (``by_module_and_operator``) are split by convention.
``flop_analysis(model, inputs, convention)`` gives a plain ``FlopCountAnalysis`` for one
convention (``by_module()`` and friends).

Attention-only numbers cover the modules in the inverted residuals' attention slots
(``post_expand``, ``post_dw``, ``post_project``, ``post_add``; ``search_space/blocks.py``).

CLI (any composed Hydra config; ``--json`` for machine output)::

    .venv/bin/python -m analysis.cost model.geometry=imagenet attention=ca
    .venv/bin/python -m analysis.cost attention=se attention.reduction=16 --json
    .venv/bin/python -m analysis.cost attention=ca --latency --batch 32 --device cpu
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from numbers import Number
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from search_space.blocks import POSITIONS, InvertedResidual

with warnings.catch_warnings():
    # fvcore.nn imports modules decorated with torch.jit.script, which recent torch deprecates
    # (DeprecationWarning at import); keep that local to this import.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    # NOTE: private name, but fvcore is frozen (last release 2022); the `fvcore` convention
    # must equal FlopCountAnalysis' own defaults, and tests check it against a plain analysis.
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS
    from fvcore.nn.jit_handles import (addmm_flop_jit, bmm_flop_jit, conv_flop_jit, einsum_flop_jit,
                                       get_shape, linear_flop_jit, matmul_flop_jit, norm_flop_counter)

__all__ = ["CONVENTIONS", "CONVENTION_NOTES", "CostReport", "count_cost", "flop_analysis",
           "measure_latency", "cost_from_config", "default_input_size", "compose_config", "main"]

# Every handle: ``(inputs, outputs) -> count``, where inputs/outputs are the traced aten op's
# ``torch._C.Value`` lists (fvcore's Handle signature, fvcore/nn/jit_handles.py). Pure.
Handle = Callable[[List[Any], List[Any]], Number]


def _numel(value: Any) -> int:
    shape = get_shape(value)
    return math.prod(shape) if shape is not None else 1  # non-tensor (scalar) operand: 1


def _is_tensor(value: Any) -> bool:
    return get_shape(value) is not None


def _int_list(value: Any) -> List[int]:
    ivalue = value.toIValue()  # a constant list, or None when built by prim::ListConstruct
    if ivalue is None:
        ivalue = [v.toIValue() for v in value.node().inputs()]
    return list(ivalue) if isinstance(ivalue, (list, tuple)) else [ivalue]


def _per_output_element(inputs: List[Any], outputs: List[Any]) -> int:
    """Element-wise op (activation, gate, product, add): one op per output element."""
    return _numel(outputs[0])


def _per_input_element(inputs: List[Any], outputs: List[Any]) -> int:
    """Reduction / global pooling: one op per input element reduced."""
    return _numel(inputs[0])


def _max_or_min(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::max``/``min``: a reduction (count the input) or a binary max (count the output)."""
    return max(_numel(inputs[0]), _numel(outputs[0]))


def _windowed_pool(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::{avg,max}_pool{1,2}d``: one op per window element per output element."""
    # inputs: 0) input, 1) kernel_size, 2) stride, 3) padding, ...
    assert len(inputs) >= 4, f"aten pooling op has {len(inputs)} inputs, expected >= 4"
    return _numel(outputs[0]) * math.prod(_int_list(inputs[1]))


def _conv_with_bias(inputs: List[Any], outputs: List[Any]) -> int:
    """Conv multiply-adds (fvcore's) + one add per output element when there is a bias."""
    # inputs: 0) input, 1) weight, 2) bias, 3) stride, 4) padding, 5) dilation, 6) transposed,
    # 7) output_padding, 8) groups, 9-11) cudnn flags [, 12) allow_tf32]
    assert len(inputs) in (12, 13), f"aten::_convolution has {len(inputs)} inputs, expected 12 or 13"
    macs = sum(conv_flop_jit(inputs, outputs).values())
    return macs + (_numel(outputs[0]) if _is_tensor(inputs[2]) else 0)


def _linear_with_bias(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::linear(input, weight, bias)``: multiply-adds + bias adds."""
    assert len(inputs) == 3, f"aten::linear has {len(inputs)} inputs, expected 3"
    return linear_flop_jit(inputs, outputs) + (_numel(outputs[0]) if _is_tensor(inputs[2]) else 0)


def _addmm_with_bias(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::addmm(bias, mat1, mat2, beta, alpha)``: multiply-adds + bias adds."""
    assert len(inputs) == 5, f"aten::addmm has {len(inputs)} inputs, expected 5"
    return addmm_flop_jit(inputs, outputs) + _numel(outputs[0])


def _batch_norm_folded(inputs: List[Any], outputs: List[Any]) -> int:
    """Eval-mode BatchNorm folded to one affine op per element."""
    # inputs: 0) input, 1) weight, 2) bias, 3) running_mean, 4) running_var, 5) training,
    # 6) momentum, 7) eps, 8) cudnn_enabled
    assert len(inputs) == 9, f"aten::batch_norm has {len(inputs)} inputs, expected 9"
    training = inputs[5].toIValue()
    assert training is False, f"aten::batch_norm traced with training={training!r}; count in eval mode"
    return _numel(inputs[0])


# The paper's M-Adds: multiply-accumulates of conv and linear layers (bias not counted).
MADDS_HANDLES: Dict[str, Handle] = {
    "aten::_convolution": conv_flop_jit,
    "aten::linear": linear_flop_jit,
    "aten::addmm": addmm_flop_jit,
    "aten::matmul": matmul_flop_jit,
    "aten::mm": matmul_flop_jit,
    "aten::bmm": bmm_flop_jit,
    "aten::einsum": einsum_flop_jit,
}

# fvcore's FlopCountAnalysis defaults, unchanged.
FVCORE_HANDLES: Dict[str, Handle] = dict(_DEFAULT_SUPPORTED_OPS)

_ELEMENTWISE_OPS = (
    # arithmetic (products and adds, incl. broadcast gate products)
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "pow", "neg", "abs",
    "exp", "log", "sqrt", "rsqrt", "reciprocal", "maximum", "minimum",
    # activations and gates
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "clamp", "clamp_", "clamp_min", "clamp_min_",
    "clamp_max", "clamp_max_", "sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "silu", "silu_",
    "hardswish", "hardswish_", "gelu", "tanh", "tanh_", "leaky_relu", "leaky_relu_", "elu", "elu_",
    "softplus", "mish", "softmax", "log_softmax",
)
_REDUCTION_OPS = ("mean", "sum", "amax", "amin", "prod", "std", "var", "norm", "logsumexp",
                  "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d")
_WINDOWED_POOL_OPS = ("avg_pool1d", "avg_pool2d", "max_pool1d", "max_pool2d")

# madds + one op per element for everything else that computes (see the module docstring).
FULL_HANDLES: Dict[str, Handle] = {
    **MADDS_HANDLES,
    "aten::_convolution": _conv_with_bias,
    "aten::linear": _linear_with_bias,
    "aten::addmm": _addmm_with_bias,
    "aten::batch_norm": _batch_norm_folded,
    "aten::group_norm": norm_flop_counter(2),
    "aten::layer_norm": norm_flop_counter(2),
    "aten::instance_norm": norm_flop_counter(1),
    "aten::max": _max_or_min,
    "aten::min": _max_or_min,
    **{f"aten::{op}": _per_output_element for op in _ELEMENTWISE_OPS},
    **{f"aten::{op}": _per_input_element for op in _REDUCTION_OPS},
    **{f"aten::{op}": _windowed_pool for op in _WINDOWED_POOL_OPS},
}

CONVENTIONS: Dict[str, Dict[str, Handle]] = {"madds": MADDS_HANDLES, "fvcore": FVCORE_HANDLES,
                                             "full": FULL_HANDLES}
CONVENTION_NOTES: Dict[str, str] = {
    "madds": "paper M-Adds: multiply-adds of conv/linear layers; BN, activations, pooling, adds not counted",
    "fvcore": "fvcore FlopCountAnalysis defaults as-is (conv/linear MACs + BN, norms, adaptive_avg_pool2d)",
    "full": "madds + 1 op per element for every other computing aten op (BN, activations, gates, "
            "products, adds, biases; pooling per input element)",
}

_SEP = "|"  # joint Counter keys: "<convention>|<aten op>"; "#|<aten op>" counts occurrences
_SEEN = "#"


def _joint_handle(op: str, handles: Mapping[str, Handle]) -> Handle:
    """One handle evaluating ``op`` under several conventions at once (and counting it)."""

    def handle(inputs: List[Any], outputs: List[Any]) -> Counter:
        counts = Counter({f"{_SEEN}{_SEP}{op}": 1})
        for convention, h in handles.items():
            n = h(inputs, outputs)
            counts[f"{convention}{_SEP}{op}"] = sum(n.values()) if isinstance(n, Mapping) else n
        return counts

    return handle


def _joint_table(conventions: Sequence[str]) -> Dict[str, Handle]:
    ops = sorted(set().union(*(CONVENTIONS[c] for c in conventions)))
    return {op: _joint_handle(op, {c: CONVENTIONS[c][op] for c in conventions if op in CONVENTIONS[c]})
            for op in ops}


def _quiet(analysis: FlopCountAnalysis) -> FlopCountAnalysis:
    # fvcore logs every unsupported op and uncalled module and lets tracer warnings through;
    # the audit reports the former, the rest is noise.
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")


def flop_analysis(model: nn.Module, inputs: Any, convention: str = "madds") -> FlopCountAnalysis:
    """A quiet fvcore ``FlopCountAnalysis`` with the op handles of one convention.

    Args:
        model: the model to trace (put it in eval mode yourself).
        inputs: a tensor or tuple of tensors for ``model``.
        convention: one of ``CONVENTIONS``.

    Example::

        fca = flop_analysis(model.eval(), torch.zeros(1, 3, 32, 32), "full")
        fca.total(), fca.by_module()["blocks.1.post_dw"]
    """
    _check_conventions([convention])
    return _quiet(FlopCountAnalysis(model, inputs).clear_op_handles().set_op_handle(**CONVENTIONS[convention]))


def _check_conventions(conventions: Sequence[str]) -> None:
    unknown = [c for c in conventions if c not in CONVENTIONS]
    if unknown or not conventions:
        raise ValueError(f"conventions={list(conventions)!r}: allowed: {', '.join(CONVENTIONS)}")


@dataclass
class CostReport:
    """Cost of one model at one input shape; every FLOP number is keyed by its convention.

    Attributes:
        input_shape: the traced input shape (N, C, H, W); FLOPs are for this whole input.
        params: all parameters.
        attn_params: parameters inside the attention slots of the inverted residuals.
        attn_slots: how many attention slots hold a module (not ``nn.Identity``).
        flops: convention -> FLOPs of the whole model (1 multiply-add = 1).
        attn_flops: convention -> FLOPs inside the attention slots.
        audit: convention -> {aten op: occurrences} of the computing ops it counts as 0.
        count_seconds: wall time of ``count_cost``.
        latency: ``measure_latency`` output when measured, else None.
    """

    input_shape: Tuple[int, ...]
    params: int
    attn_params: int
    attn_slots: int
    flops: Dict[str, int]
    attn_flops: Dict[str, int]
    audit: Dict[str, Dict[str, int]]
    count_seconds: float
    latency: Optional[Dict[str, Any]] = None

    def uncounted(self) -> Dict[str, int]:
        """Convention -> number of op occurrences it counts as 0."""
        return {c: sum(ops.values()) for c, ops in self.audit.items()}

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (adds ``uncounted`` and the ``conventions`` descriptions)."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["uncounted"] = self.uncounted()
        d["conventions"] = {c: CONVENTION_NOTES[c] for c in self.flops}
        return d


def _attention_slots(model: nn.Module) -> Dict[str, nn.Module]:
    slots = {}
    for name, module in model.named_modules():
        if isinstance(module, InvertedResidual):
            for position in POSITIONS:
                child = getattr(module, position)
                if not isinstance(child, nn.Identity):
                    slots[f"{name}.{position}" if name else position] = child
    return slots


def _param_count(modules: Sequence[nn.Module]) -> int:
    seen = {id(p): p for m in modules for p in m.parameters()}
    return sum(p.numel() for p in seen.values())


def _full_shape(input_shape: Sequence[int]) -> Tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape={tuple(input_shape)!r} must be (N, C, H, W) or (C, H, W) with sizes >= 1")
    return shape


@contextmanager
def _torch_threads(n: Optional[int]) -> Iterator[None]:
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def count_cost(model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224),
               conventions: Sequence[str] = tuple(CONVENTIONS)) -> CostReport:
    """Parameters and FLOPs (every convention, whole model and attention-only) with the audit.

    Counts on a deep copy in eval mode on CPU (the caller's model, its mode and device are
    untouched), from one jit trace with batch ``input_shape[0]``, one torch thread (the trace's
    forward pass only needs shapes).

    Args:
        model: any ``nn.Module``; attention-only numbers need ``InvertedResidual`` blocks.
        input_shape: (N, C, H, W) or (C, H, W).
        conventions: subset of ``CONVENTIONS`` to count.

    Returns:
        A ``CostReport``.

    Example::

        report = count_cost(build_model(cfg), input_shape=(1, 3, 32, 32))
        report.flops["madds"], report.audit["fvcore"]
    """
    t0 = time.perf_counter()
    conventions = list(conventions)
    _check_conventions(conventions)
    shape = _full_shape(input_shape)
    counted = copy.deepcopy(model).cpu().eval()
    slots = _attention_slots(counted)
    fca = _quiet(FlopCountAnalysis(counted, (torch.zeros(shape),)).clear_op_handles()
                 .set_op_handle(**_joint_table(conventions)))
    with _torch_threads(1), torch.no_grad():
        per_module = fca.by_module_and_operator()
    unsupported = fca.unsupported_ops()

    def split(counts: Mapping[str, Number]) -> Dict[str, int]:
        totals = dict.fromkeys(conventions, 0)
        for key, n in counts.items():
            convention, _, _ = key.partition(_SEP)
            if convention in totals:
                totals[convention] += n
        return {c: int(round(n)) for c, n in totals.items()}

    occurrences = Counter(unsupported)
    for key, n in per_module[""].items():
        tag, _, op = key.partition(_SEP)
        if tag == _SEEN:
            occurrences[op] += n
    attn = Counter()
    for name in slots:
        attn.update(per_module[fca.canonical_module_name(name)])
    return CostReport(
        input_shape=shape,
        params=_param_count([counted]),
        attn_params=_param_count(list(slots.values())),
        attn_slots=len(slots),
        flops=split(per_module[""]),
        attn_flops=split(attn),
        audit={c: {op: n for op, n in sorted(occurrences.items()) if op not in CONVENTIONS[c]}
               for c in conventions},
        count_seconds=time.perf_counter() - t0,
    )


# One device rule for trials and cost tables (sweep.runtime: no runner code; ConfigError is a ValueError).
from sweep.runtime import resolve_device  # noqa: E402


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:  # Linux: the CPU model; platform.processor() is often just the architecture
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def measure_latency(model: nn.Module, input_shape: Sequence[int], device: str = "auto",
                    batch_sizes: Sequence[int] = (1, 32), warmup: int = 5, repeats: int = 20,
                    threads: Optional[int] = None) -> Dict[str, Any]:
    """Median and IQR of the forward time after warm-up, per batch size.

    Runs a deep copy in eval mode under ``torch.no_grad`` on ``device`` (synchronising CUDA
    around each pass); the caller's model is untouched.

    Args:
        model: the model.
        input_shape: (N, C, H, W) or (C, H, W); N is replaced by each batch size.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        batch_sizes: batch sizes to time (duplicates ignored).
        warmup: untimed passes per batch size.
        repeats: timed passes per batch size.
        threads: torch intra-op threads during the measurement (None = current setting).

    Returns:
        ``{"device", "device_name", "threads", "warmup", "repeats", "input_shape": [C, H, W],
        "batches": {batch: {"median_ms", "iqr_ms", "q1_ms", "q3_ms", "per_image_ms"}}}``.
    """
    shape = _full_shape(input_shape)
    batches = list(dict.fromkeys(int(b) for b in batch_sizes))
    if not batches or min(batches) < 1:
        raise ValueError(f"batch_sizes={tuple(batch_sizes)!r} must be integers >= 1")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup={warmup!r} must be >= 0 and repeats={repeats!r} >= 1")
    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads!r} must be >= 1 or None")
    dev = resolve_device(device)
    net = copy.deepcopy(model).to(dev).eval()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    results = {}
    with _torch_threads(threads), torch.no_grad():
        used_threads = torch.get_num_threads()
        for b in batches:
            x = torch.randn((b,) + shape[1:], device=dev)
            for _ in range(warmup):
                net(x)
            times = []
            for _ in range(repeats):
                sync()
                t = time.perf_counter()
                net(x)
                sync()
                times.append((time.perf_counter() - t) * 1e3)
            q1, median, q3 = (float(v) for v in np.percentile(times, [25, 50, 75]))
            results[b] = {"median_ms": median, "iqr_ms": q3 - q1, "q1_ms": q1, "q3_ms": q3,
                          "per_image_ms": median / b}
    return {"device": str(dev), "device_name": _device_name(dev), "threads": used_threads,
            "warmup": warmup, "repeats": repeats, "input_shape": list(shape[1:]), "batches": results}


def _get(node: Any, key: str, default: Any = None) -> Any:
    if node is None:
        return default
    if hasattr(node, "get"):
        return node.get(key, default)
    return getattr(node, key, default)


def default_input_size(cfg: Mapping[str, Any]) -> int:
    """224 for ``model.geometry: imagenet``, else ``data.image_size`` when there is a data group, else 32."""
    if _get(_get(cfg, "model"), "geometry") == "imagenet":
        return 224
    size = _get(_get(cfg, "data"), "image_size")
    return int(size) if size else 32


def cost_from_config(cfg: Mapping[str, Any], input_size: Optional[int] = None, *, latency: bool = False,
                     batch: int = 32, device: str = "auto", warmup: int = 5, repeats: int = 20,
                     threads: Optional[int] = None) -> CostReport:
    """Build the model of a composed config and count it (optionally time it).

    Args:
        cfg: a mapping with ``model`` and ``attention`` (e.g. a composed Hydra config);
            num_classes is ``model.num_classes`` or the geometry's default (imagenet 1000).
        input_size: square input side; None = ``default_input_size(cfg)``.
        latency: also run ``measure_latency`` at batch 1 and ``batch``.
        batch, device, warmup, repeats, threads: passed to ``measure_latency``.

    Raises:
        search_space.config.ConfigError: on an invalid ``model``/``attention`` value.
    """
    from search_space.mobilenetv2 import build_model

    size = int(input_size) if input_size is not None else default_input_size(cfg)
    if size < 1:
        raise ValueError(f"input_size={input_size!r} must be >= 1")
    model = build_model(cfg)
    report = count_cost(model, input_shape=(1, 3, size, size))
    if latency:
        report.latency = measure_latency(model, (1, 3, size, size), device=device, batch_sizes=(1, batch),
                                         warmup=warmup, repeats=repeats, threads=threads)
    return report


# ----------------------------------------------------------------------------------------- CLI

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> Any:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides (schemas registered first)."""
    from hydra import compose, initialize_config_dir

    # Schemas only (no runner code): analysis never imports the trial or the sweeper.
    from sweep.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def _one_line(exc: BaseException) -> str:
    parts = [str(exc)]
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in parts[0]:
        parts.append(str(cause))
    # Hydra appends its whole config search path to a missing-option message: noise here.
    return " ".join(" ".join(parts).split()).split(" Config search path:")[0]


def _device_arg(value: str) -> str:
    try:
        resolve_device(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be an integer >= 1")
    return n


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m analysis.cost",
        description="Params, FLOPs under the madds / fvcore / full conventions (with the ops each leaves "
                    "uncounted) and optionally latency, for a composed Hydra config.")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.geometry=imagenet attention=ca")
    p.add_argument("--input-size", type=_positive_int, default=None,
                   help="square input side (default: 224 for imagenet geometry, else data.image_size, else 32)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--latency", action="store_true", help="also measure forward latency (off by default)")
    p.add_argument("--batch", type=_positive_int, default=32, help="latency batch size besides 1 (default 32)")
    p.add_argument("--device", type=_device_arg, default="auto", help="latency device: auto | cpu | cuda | cuda:N")
    p.add_argument("--warmup", type=int, default=5, help="latency warm-up passes per batch size (default 5)")
    p.add_argument("--repeats", type=_positive_int, default=20, help="timed passes per batch size (default 20)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads during latency (default: torch's current setting)")
    return p.parse_intermixed_args(argv)


def _describe(cfg: Any) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    from search_space.mobilenetv2 import default_num_classes

    model = OmegaConf.to_container(cfg.model, resolve=True)
    attention = OmegaConf.to_container(cfg.attention, resolve=True)
    return {"model": model, "attention": attention, "num_classes": default_num_classes(model)}


def _fmt_audit(ops: Mapping[str, int]) -> str:
    return ", ".join(f"{op.removeprefix('aten::')} x{n}" for op, n in sorted(ops.items(), key=lambda kv: -kv[1])) \
        or "none"


def _print_table(report: CostReport, described: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m, a = described["model"], described["attention"]
    where = "" if a["name"] == "none" else f" at {a.get('position')}, stages {a.get('stages')}"
    shape = "x".join(map(str, report.input_shape))
    console.print(f"[bold]{m['name']}[/] geometry={m['geometry']} width={m['width']} "
                  f"classes={described['num_classes']} + attention={a['name']}{where}")
    console.print(f"input {shape}: params {report.params:,} "
                  f"(attention {report.attn_params:,} in {report.attn_slots} slots)")
    table = Table(title=f"FLOPs at input {shape} (1 multiply-add = 1)")
    for col in ("convention", "total (M)", "attention (M)", "uncounted op calls"):
        table.add_column(col, justify="left" if col == "convention" else "right")
    uncounted = report.uncounted()
    for conv, total in report.flops.items():
        table.add_row(conv, f"{total / 1e6:.2f}", f"{report.attn_flops[conv] / 1e6:.3f}", str(uncounted[conv]))
    console.print(table)
    for conv, ops in report.audit.items():
        console.print(f"[bold]{conv}[/]: {CONVENTION_NOTES[conv]}")
        console.print(f"  uncounted by {conv}: {_fmt_audit(ops)}")
    console.print(f"counted in {report.count_seconds:.2f} s (one jit trace, 1 torch thread)")
    lat = report.latency
    if lat:
        lt = Table(title=f"latency on {lat['device']} ({lat['device_name']}), {lat['threads']} torch "
                         f"threads, eval + no_grad, warm-up {lat['warmup']}, {lat['repeats']} timed passes")
        for col in ("batch", "median (ms)", "IQR (ms)", "per image (ms)"):
            lt.add_column(col, justify="right")
        for b, r in lat["batches"].items():
            lt.add_row(str(b), f"{r['median_ms']:.2f}", f"{r['iqr_ms']:.2f}", f"{r['per_image_ms']:.3f}")
        console.print(lt)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit code (2 on a config error, with a one-line message)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from search_space.config import ConfigError

    args = _parse_args(argv)
    try:
        cfg = compose_config(args.overrides)
        described = _describe(cfg)
        report = cost_from_config(cfg, args.input_size, latency=args.latency, batch=args.batch,
                                  device=args.device, warmup=max(args.warmup, 0), repeats=args.repeats,
                                  threads=args.threads)
    except (ConfigError, HydraException, OmegaConfBaseException) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"config": described, **report.to_dict()}, indent=2))
    else:
        _print_table(report, described)
    return 0


if __name__ == "__main__":
    sys.exit(main())
