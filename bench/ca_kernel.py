"""CA's training cost on CPU: eager autograd path vs the fused kernel (search_space/attention/_coord_cpu).

Measures, interleaved in rounds (medians reported, CPU time of this process and wall time):

* the full MobileNetV2 train step (forward, cross-entropy, backward, SGD) in CIFAR geometry,
  32x32, batch 128, channels_last, for attention none / CA eager (``COORDSWEEP_CA_KERNEL=0``) /
  CA kernel after a separate BN+ReLU6 kernel (``COORDSWEEP_CA_FUSE_BN=0``) / CA fused with the
  BN+ReLU6 before it (the default), at each ``--widths`` and ``--threads`` setting, with the multiply-add overhead of
  CA from fvcore (``analysis.cost``) to compare against;
* the CA module alone (forward + backward) at ``--module-shape`` (default the stage-2
  hidden tensor 128x144x32x32), channels_last: eager, kernel, and the seed module
  (../shared/reference/coordatt_seed.py, NCHW, plain autograd) as the reference;
* with ``--build``: the extension's cold build (fresh temporary cache dir) and cached load,
  each in a fresh process.

CPU time is the honest number on a shared machine (other processes steal wall time); wall
time is what a trial sees. Run:
``python bench/ca_kernel.py [--threads 1 2] [--widths 1.0 0.25] [--rounds 5] [--build] [--json]``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SEED = REPO.parent / "shared" / "reference" / "coordatt_seed.py"

from search_space.attention import _coord_cpu  # noqa: E402
from search_space.attention.coord import CoordAttn  # noqa: E402
from search_space.config import AttentionConfig, CAConfig, ModelConfig  # noqa: E402
from search_space.mobilenetv2 import build_model  # noqa: E402

BATCH = 128
CL = torch.channels_last


def _timed(fn, n: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per call over n calls."""
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return (time.process_time() - c0) / n, (time.perf_counter() - w0) / n


def _kernel(on: bool, fuse_bn: bool = True) -> None:
    os.environ[_coord_cpu.ENV_SWITCH] = "1" if on else "0"
    os.environ[_coord_cpu.FUSE_BN_SWITCH] = "1" if fuse_bn else "0"


def _interleave(variants: dict, warmup: int, rounds: int, steps: int) -> dict:
    """variants: name -> (setup, fn). Returns name -> {"cpu_ms", "wall_ms"} medians."""
    for setup, fn in variants.values():
        setup()
        for _ in range(warmup):
            fn()
    cpu = {k: [] for k in variants}
    wall = {k: [] for k in variants}
    for _ in range(rounds):
        for k, (setup, fn) in variants.items():
            setup()
            c, w = _timed(fn, steps)
            cpu[k].append(c)
            wall[k].append(w)
    return {k: {"cpu_ms": 1e3 * statistics.median(cpu[k]), "wall_ms": 1e3 * statistics.median(wall[k])}
            for k in variants}


def _model(width: float, ca: bool):
    torch.manual_seed(0)
    att = asdict(CAConfig()) if ca else asdict(AttentionConfig())
    cfg = {"model": asdict(ModelConfig(width=width)), "attention": att}
    return build_model(cfg, num_classes=10).to(memory_format=CL)


def _madds_overhead(width: float) -> float:
    from analysis.cost import flop_analysis

    x = torch.zeros(1, 3, 32, 32)
    none, ca = (flop_analysis(_model(width, c).eval(), x, "madds").total() for c in (False, True))
    return ca / none - 1


def bench_step(width: float, a) -> dict:
    x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=CL)
    y = torch.randint(0, 10, (BATCH,))
    models = {"none": _model(width, False), "ca": _model(width, True)}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}

    def step(k):
        def run():
            m = models[k]
            m.train()
            loss = F.cross_entropy(m(x), y)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()
        return run

    variants = {"none": (lambda: _kernel(True), step("none")),
                "ca_eager": (lambda: _kernel(False), step("ca")),
                "ca_kernel": (lambda: _kernel(True, fuse_bn=False), step("ca")),
                "ca_fused_bn": (lambda: _kernel(True), step("ca"))}
    res = _interleave(variants, a.warmup, a.rounds, a.steps)
    out = {"width": width, "ms": res, "madds_overhead": _madds_overhead(width)}
    for impl in ("ca_eager", "ca_kernel", "ca_fused_bn"):
        for clock in ("cpu_ms", "wall_ms"):
            out[f"{impl}_overhead_{clock[:-3]}"] = res[impl][clock] / res["none"][clock] - 1
    return out


def _seed_cls():
    spec = importlib.util.spec_from_file_location("coordatt_seed", SEED)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.CoordAtt


def bench_module(shape, a) -> dict:
    n, c, h, w = shape
    torch.manual_seed(0)
    m = CoordAttn(c).train()
    x = torch.randn(shape).contiguous(memory_format=CL).requires_grad_(True)
    g = torch.randn(shape).contiguous(memory_format=CL)

    def fwd_bwd(mod, inp):
        def run():
            inp.grad = None
            mod(inp).backward(g)
        return run

    variants = {"ca_eager": (lambda: _kernel(False), fwd_bwd(m, x)),
                "ca_kernel": (lambda: _kernel(True), fwd_bwd(m, x))}
    if SEED.exists():
        ref = _seed_cls()(c, c).train()
        x_ref = x.detach().contiguous().requires_grad_(True)
        variants["seed_nchw"] = (lambda: None, fwd_bwd(ref, x_ref))
    res = _interleave(variants, a.warmup, a.rounds, a.module_steps)
    out = {"shape": list(shape), "ms": res,
           "bytes_per_touch_mb": n * c * h * w * 4 / 2**20}
    if "seed_nchw" in res:
        out["speedup_kernel_vs_seed_cpu"] = res["seed_nchw"]["cpu_ms"] / res["ca_kernel"]["cpu_ms"]
    out["speedup_kernel_vs_eager_cpu"] = res["ca_eager"]["cpu_ms"] / res["ca_kernel"]["cpu_ms"]
    return out


def bench_build() -> dict:
    """Cold build into a fresh cache dir, then a cached load, each in a new process (seconds
    spent in ``_coord_cpu.load()``, after importing torch)."""
    code = ("import time; from search_space.attention import _coord_cpu as k; t = time.perf_counter(); "
            "ok = k.load() is not None; print(ok, time.perf_counter() - t)")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, COORDSWEEP_CACHE=tmp, PYTHONPATH=str(REPO))
        for key in ("cold_s", "cached_s"):
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
            ok, secs = r.stdout.split()[-2:] if r.returncode == 0 else ("False", "nan")
            out[key] = float(secs) if ok == "True" else None
            if ok != "True":
                out["error"] = (r.stderr or r.stdout)[-2000:]
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25])
    p.add_argument("--module-shape", type=int, nargs=4, default=[128, 144, 32, 32])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="train steps per variant and round")
    p.add_argument("--module-steps", type=int, default=3, help="module fwd+bwd per variant and round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--skip-steps", action="store_true", help="only the module (and --build)")
    p.add_argument("--build", action="store_true", help="also time a cold build and a cached load")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    from sweep.runtime import tune_allocator

    res = {"torch": torch.__version__, "batch": BATCH, "allocator_tuned": tune_allocator(),
           "build": bench_build() if a.build else None, "runs": []}
    t0 = time.perf_counter()
    if _coord_cpu.load() is None:
        raise SystemExit(f"kernel unavailable: {_coord_cpu.failure()}")
    res["load_s_this_process"] = time.perf_counter() - t0
    for t in a.threads:
        torch.set_num_threads(t)
        run = {"threads": t, "module": bench_module(tuple(a.module_shape), a), "steps": []}
        if not a.skip_steps:
            for wd in a.widths:
                run["steps"].append(bench_step(wd, a))
        res["runs"].append(run)
        if not a.json:
            _print_run(run)
    if a.json:
        print(json.dumps(res, indent=2))
    elif res["build"]:
        print(f"build: {res['build']}")
    return res


def _print_run(run: dict) -> None:
    t = run["threads"]
    mod = run["module"]
    print(f"== threads={t}  CA module fwd+bwd {'x'.join(map(str, mod['shape']))} channels_last "
          f"({mod['bytes_per_touch_mb']:.0f} MB per full-tensor pass)")
    for k, v in mod["ms"].items():
        print(f"  {k:10s} cpu {v['cpu_ms']:8.1f} ms  wall {v['wall_ms']:8.1f} ms")
    for k in ("speedup_kernel_vs_eager_cpu", "speedup_kernel_vs_seed_cpu"):
        if k in mod:
            print(f"  {k:28s} {mod[k]:.2f}x")
    for s in run["steps"]:
        print(f"  -- MobileNetV2-{s['width']} train step, batch {BATCH}, CIFAR 32x32; CA madds +{100 * s['madds_overhead']:.2f}%")
        for k, v in s["ms"].items():
            extra = ""
            if k != "none":
                extra = (f"  overhead cpu {100 * s[f'{k}_overhead_cpu']:+6.1f}%  "
                         f"wall {100 * s[f'{k}_overhead_wall']:+6.1f}%")
            print(f"  {k:10s} cpu {v['cpu_ms']:8.1f} ms  wall {v['wall_ms']:8.1f} ms{extra}")


if __name__ == "__main__":
    main()
