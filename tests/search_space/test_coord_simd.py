"""The AVX-512 forms of CA's fused BN kernels (search_space/attention/coord_cpu.cpp) against the
portable loops, run in a child process with COORDSWEEP_SIMD=generic (the switch is read once per
process). Same float operations in the same order, no FMA: every output is bit-identical except
the BN sums s1 / s1x of ``bn_gate_hw_backward``, which the AVX-512 form adds up two image rows at a
time (float32 round-off). Odd channel counts exercise the masked channel tail."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search_space import bn_act
from search_space.attention import _coord_cpu

CL = torch.channels_last
SIMD_ENV = "COORDSWEEP_SIMD"
CASES = {"c20": (3, 20, 7, 5), "c37_tall": (2, 37, 9, 3), "c144": (4, 144, 8, 8), "c48_1row": (5, 48, 1, 6),
         "c300": (2, 300, 4, 4)}


@pytest.fixture(scope="module", autouse=True)
def kernels():
    if _coord_cpu.load() is None or bn_act.load() is None:
        pytest.skip(f"a CPU kernel did not build here: {_coord_cpu.failure() or bn_act.failure()}")


def _inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = (torch.randn(shape, generator=g) * 2 + 1).contiguous(memory_format=CL)
    x.permute(0, 2, 3, 1).view(-1)[::97] = float("nan")  # NaN must travel the same way on both paths
    grad = torch.randn(shape, generator=g).contiguous(memory_format=CL)
    mean, invstd = torch.randn(c, generator=g) * 0.1 + 1, torch.rand(c, generator=g) + 0.5
    a, b = torch.rand(c, generator=g) + 0.3, torch.rand(c, generator=g) * 4 - 1
    a_h, a_w = torch.rand(n, h, c, generator=g), torch.rand(n, w, c, generator=g)
    g_pooled = torch.randn(n, h + w, c, generator=g)
    return x, grad, mean, invstd, a, b, a_h, a_w, g_pooled


def _run(ops, x, grad, mean, invstd, a, b, a_h, a_w, g_pooled):
    back = ops.bn_gate_hw_backward(grad, x, mean, a, b, a_h, a_w)
    igrad = ops.bn_input_grad_hw(grad, x, mean, invstd, a, b, a_h, a_w, g_pooled, *back[2:])
    return [ops.pool_hw_bn(x, mean, a, b), ops.gate_hw_bn(x, mean, a, b, a_h, a_w), *back, *igrad]


NAMES = ["pooled", "out", "ga_h", "ga_w", "mk", "mkx", "s1", "s1x", "grad_x", "grad_w", "grad_b"]
_CHILD = """
import sys, torch
from search_space.attention import _coord_cpu
ops = _coord_cpu.load()
inputs = torch.load(sys.argv[1])
out = {"path": ops.simd_path(), "res": {k: [t.clone() for t in _run(ops, *v)] for k, v in inputs.items()}}
torch.save(out, sys.argv[2])
"""


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    d = tmp_path_factory.mktemp("ca_simd")
    torch.save({k: _inputs(s) for k, s in CASES.items()}, d / "in.pt")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, SIMD_ENV: "generic", "PYTHONPATH": str(repo)}
    subprocess.run([sys.executable, "-c", inspect.getsource(_run) + _CHILD, str(d / "in.pt"), str(d / "out.pt")],
                   check=True, cwd=repo, env=env, timeout=600)
    out = torch.load(d / "out.pt")
    assert out["path"] == "generic"
    return out["res"]


def _bits(t):
    return t.contiguous().view(torch.int32)


def test_avx512_forms_match_the_portable_loops(generic):
    ops = _coord_cpu.load()
    if ops.simd_path() != "avx512":
        pytest.skip("this process runs the portable path (CPU without avx512f or COORDSWEEP_SIMD=generic)")
    for k, shape in CASES.items():
        mine = _run(ops, *_inputs(shape))
        for name, a, b in zip(NAMES, mine, generic[k]):
            if name in ("s1", "s1x", "grad_w", "grad_b", "grad_x"):
                # s1 / s1x summed in another order; grad_x, grad_w, grad_b are built from them
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.nan_to_num().abs().max()) + 1e-6,
                                           equal_nan=True, msg=f"{k}: {name}")
                assert torch.equal(a.isnan(), b.isnan()), (k, name)
            else:
                assert torch.equal(_bits(a), _bits(b)), (k, name)


def test_simd_path_follows_the_cpu_and_the_switch(generic):
    # the child above ran with the switch set and reported "generic"; here, without it, the path
    # is AVX-512 exactly when the CPU has it
    if os.environ.get(SIMD_ENV) == "generic":
        assert _coord_cpu.load().simd_path() == "generic"
        return
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None
    if flags is None:
        pytest.skip("no /proc/cpuinfo to read the CPU flags from")
    assert _coord_cpu.load().simd_path() == ("avx512" if " avx512f" in flags else "generic")
