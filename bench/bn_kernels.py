"""Speed of the fused BatchNorm2d + ReLU6 CPU kernels (search_space/bn_relu6_cpu.cpp) against
memory-speed yardsticks.

For each channels_last float32 shape and thread count, the median of ``--reps`` calls (after one
warm-up) of ``torch.ops.coordsweep_bn.bn_stats`` / ``bn_relu6_forward`` / ``bn_relu6_backward``
next to ``x.sum()`` (one read of x) and ``x.clone()`` (one read + one write). Memory floors:
stats ~ 1 read, forward ~ 2 reads + 1 write, backward ~ 4 reads + 1 write. The glibc allocator is
tuned as in a training run (``sweep.runtime.tune_allocator``), so outputs reuse heap memory.

``COORDSWEEP_SIMD=generic`` in the environment times the portable fallback instead of the
AVX-512 code. Run: ``python bench/bn_kernels.py [--threads 1 2] [--reps 7] [--json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search_space import bn_act  # noqa: E402
from sweep.runtime import tune_allocator  # noqa: E402

SHAPES = [(128, 96, 32, 32), (128, 144, 32, 32), (128, 192, 16, 16), (128, 384, 8, 8), (128, 960, 4, 4)]
OPS = ["sum", "clone", "bn_stats", "forward", "backward"]


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def measure(shape, threads: int, reps: int) -> dict:
    """Median milliseconds per op for one shape at one thread count."""
    ops = bn_act.load()
    if ops is None:
        raise SystemExit(f"kernel unavailable: {bn_act.failure()}")
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    C = shape[1]
    x = (torch.randn(shape, generator=g) * 2 + 1).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(C, generator=g) + 0.5, torch.rand(C, generator=g) * 4 - 1
    _, mean, invstd, _ = ops.bn_relu6_forward(x, w, b, 1e-5)
    fns = {
        "sum": lambda: x.sum(),
        "clone": lambda: x.clone(),
        "bn_stats": lambda: ops.bn_stats(x, 1e-5),
        "forward": lambda: ops.bn_relu6_forward(x, w, b, 1e-5),
        "backward": lambda: ops.bn_relu6_backward(grad, x, w, b, mean, invstd),
    }
    return {name: _median_ms(fns[name], reps) for name in OPS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    tune_allocator()
    simd = os.environ.get("COORDSWEEP_SIMD", "auto")
    rows = []
    for threads in args.threads:
        for shape in SHAPES:
            rows.append({"shape": list(shape), "threads": threads, "simd": simd, **measure(shape, threads, args.reps)})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"COORDSWEEP_SIMD={simd}; median ms of {args.reps}")
    print(f"{'shape':>20} {'thr':>3} " + " ".join(f"{o:>9}" for o in OPS))
    for r in rows:
        print(f"{str(tuple(r['shape'])):>20} {r['threads']:>3} " + " ".join(f"{r[o]:9.2f}" for o in OPS))


if __name__ == "__main__":
    main()
