"""Where CA's extra training time goes, inside a real training step (issue 4's overhead target).

Trains MobileNetV2-1.0 without attention and with the paper-default CA on the same CIFAR-10
batches (``bench/throughput.py``'s trial loop: ``sweep.engine.TrainStep``, channels_last, batch
128), interleaved in one process, and times every fused kernel call and CA's middle part with
``time.perf_counter`` wrappers (the torch profiler's per-op times were 2-5x off for the large
element-wise ops here). The middle part's GEMMs (``addmm`` / ``mm``) are timed separately.

Reported per training step, ms: the step of each model; the BN+ReLU6 kernel calls of each model
(the difference is what BN+ReLU6 costs at the CA positions without CA); CA's fused kernels; the
middle part and its GEMMs; and the CA extra split into forward passes, backward passes, middle
part and the rest (glue). Also CA's multiply-adds per step and the GEMMs' achieved rate.

Run: ``python bench/ca_breakdown.py [--threads 1] [--steps 3] [--rounds 3] [--json]``.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import throughput  # noqa: E402
from search_space import bn_act  # noqa: E402
from search_space.attention import _coord_cpu, _coord_middle  # noqa: E402

_acc: dict = collections.defaultdict(float)
_model = [None]  # which model's step is running ("none" / "ca"), None: not timing


def _timed(name, fn):
    def wrapper(*a, **k):
        if _model[0] is None:
            return fn(*a, **k)
        t0 = time.perf_counter()
        out = fn(*a, **k)
        _acc[(_model[0], name)] += time.perf_counter() - t0
        return out
    return wrapper


class _TimedOps:
    """An extension's ops namespace whose every op call is timed under ``prefix + name``."""

    def __init__(self, ops, prefix: str):
        self._ops, self._prefix = ops, prefix

    def __getattr__(self, name):
        return _timed(self._prefix + name, getattr(self._ops, name))


class _TimedExt:
    """Stands in for a ``_cpp_ext.CppExtension``: the same, with timed ops."""

    def __init__(self, ext, prefix: str):
        self._ext, self._timed_ops = ext, _TimedOps(ext.ops, prefix)

    def __getattr__(self, name):
        return getattr(self._ext, name)

    @property
    def ops(self):
        return self._timed_ops


class _TimedTorch:
    """``torch`` as ``_coord_middle`` sees it, with its GEMMs timed."""

    def __getattr__(self, name):
        fn = getattr(torch, name)
        return _timed("middle.gemm", fn) if name in ("addmm", "mm") else fn


def _instrument() -> None:
    if _coord_cpu.load() is None or bn_act.load() is None:
        raise SystemExit(f"a CPU kernel did not build: {_coord_cpu.failure() or bn_act.failure()}")
    _coord_cpu._EXT = _TimedExt(_coord_cpu._EXT, "ca.")
    bn_act._EXT = _TimedExt(bn_act._EXT, "bn.")
    bn_ops = bn_act._EXT.ops
    bn_act.load = lambda *a, **k: bn_ops  # _BNCoordHW reads bn_stats through bn_act.load()
    _coord_middle.torch = _TimedTorch()
    for cls in (_coord_middle.PaperMiddle, _coord_middle.GraphMiddle):
        cls.forward = _timed("middle", cls.forward)
        cls.backward = _timed("middle", cls.backward)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round and model")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from sweep.data import load_data
    from sweep.runtime import tune_allocator

    tune_allocator()
    _instrument()
    cifar = throughput.SHARED / "data" / "cifar10"
    data_cfg = ({"name": "cifar10", "root": str(cifar), "train_size": 4096, "val_size": 500, "test_size": 500}
                if cifar.exists() else {"name": "synthetic"})
    bundle = load_data(data_cfg)
    steps = {"none": throughput.ours_runner(bundle, False), "ca": throughput.ours_runner(bundle, True)}
    for step in steps.values():
        for _ in range(a.warmup):
            step()
    walls = {k: [] for k in steps}
    for _ in range(a.rounds):
        for k, step in steps.items():
            _model[0] = k
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step()
            walls[k].append((time.perf_counter() - t0) / a.steps)
            _model[0] = None
    n = a.steps * a.rounds
    ms = {f"{m}:{name}": 1e3 * v / n for (m, name), v in sorted(_acc.items())}
    step_ms = {k: 1e3 * statistics.median(v) for k, v in walls.items()}
    g = lambda key: ms.get(key, 0.0)  # noqa: E731
    bn_at_ca = {"fwd": g("none:bn.bn_relu6_forward") - g("ca:bn.bn_relu6_forward"),
                "bwd": g("none:bn.bn_relu6_backward") - g("ca:bn.bn_relu6_backward")}
    ca_fwd = g("ca:bn.bn_stats") + g("ca:ca.pool_hw_bn") + g("ca:ca.gate_hw_bn")
    ca_bwd = g("ca:ca.bn_gate_hw_backward") + g("ca:ca.bn_input_grad_hw")
    extra = {"forward passes": ca_fwd - bn_at_ca["fwd"], "backward passes": ca_bwd - bn_at_ca["bwd"],
             "middle part": g("ca:middle")}
    extra["rest (glue)"] = step_ms["ca"] - step_ms["none"] - sum(extra.values())
    madds = 3 * (91.34e6 - 87.98e6) * throughput.BATCH  # analysis.cost, CIFAR 32x32: CA's multiply-adds
    res = {"threads": a.threads, "steps": n, "data": data_cfg["name"], "step_ms": step_ms,
           "overhead": step_ms["ca"] / step_ms["none"] - 1, "ops_ms": ms, "bn_relu6_at_ca_positions_ms": bn_at_ca,
           "ca_extra_ms": extra, "ca_gemm_madds_per_step": madds,
           "ca_gemm_gmadds_per_s": madds / (g("ca:middle.gemm") / 1e3) / 1e9 if g("ca:middle.gemm") else None}
    if a.json:
        print(json.dumps(res, indent=2))
        return res
    print(f"threads={a.threads} data={data_cfg['name']} batch={throughput.BATCH} steps={n} (median step of "
          f"{a.rounds} rounds)")
    print(f"step: none {step_ms['none']:.1f} ms, ca {step_ms['ca']:.1f} ms, overhead {100 * res['overhead']:+.1f}%")
    for k, v in ms.items():
        print(f"  {k:34s} {v:8.2f} ms")
    print(f"BN+ReLU6 at the CA positions without CA: forward {bn_at_ca['fwd']:.1f}, backward {bn_at_ca['bwd']:.1f} ms")
    for k, v in extra.items():
        print(f"CA extra, {k:16s} {v:+8.1f} ms")
    if res["ca_gemm_gmadds_per_s"]:
        print(f"CA's GEMMs: {madds / 1e9:.2f} G multiply-adds/step at {res['ca_gemm_gmadds_per_s']:.1f} G/s in the step "
              f"= {100 * g('ca:middle.gemm') / step_ms['none']:.1f}% of the none step")
    return res


if __name__ == "__main__":
    main()
