"""The fused BatchNorm2d + ReLU6 CPU path (search_space/bn_act.py + bn_relu6_cpu.cpp)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from search_space import bn_act
from search_space.mobilenetv2 import MobileNetV2
from tests.search_space._kernel_check import grad_error, three_way_step

CL = torch.channels_last


@pytest.fixture(scope="module", autouse=True)
def kernel():
    if bn_act.load() is None:
        pytest.skip(f"the BN+ReLU6 kernel did not build here: {bn_act.failure()}")


def _pair(c: int, momentum=0.1):
    bn = nn.BatchNorm2d(c, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 3.0)  # part of the outputs in (0, 6), part clamped at either end
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn, copy.deepcopy(bn)


@pytest.mark.parametrize("shape", [(4, 8, 32, 32), (8, 48, 16, 16), (3, 19, 5, 7), (16, 144, 8, 8), (64, 40, 1, 1)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_matches_eager_batchnorm_relu6(shape, momentum):
    torch.manual_seed(0)
    bn, ref = _pair(shape[1], momentum)
    act = nn.ReLU6()
    x = (torch.randn(shape) * 2 + 1).to(memory_format=CL).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    g = torch.randn(shape).to(memory_format=CL)
    for _ in range(2):  # twice: running statistics and num_batches_tracked accumulate
        assert bn_act.applies(bn, act, x)
        y = bn_act.bn_relu6(bn, act, x)
        yr = act(ref(xr))
        y.backward(g)
        yr.backward(g)
    assert y.is_contiguous(memory_format=CL) and x.grad.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y, yr, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, xr.grad, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(bn.weight.grad, ref.weight.grad, atol=3e-4, rtol=1e-4)
    torch.testing.assert_close(bn.bias.grad, ref.bias.grad, atol=3e-4, rtol=1e-4)
    torch.testing.assert_close(bn.running_mean, ref.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, ref.running_var, atol=1e-6, rtol=3e-5)  # both float32 round-off
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 2


def test_large_mean_does_not_lose_the_variance():
    """Statistics are shifted by the first row and x is centred before scaling: with a big common
    offset the result stays at float64 accuracy (measured: 2.5e-3 off; aten's own BN 4.3e-2)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(16)
    x = (torch.randn(8, 16, 16, 16) * 0.01 + 1000.0).to(memory_format=CL).requires_grad_()
    y = bn_act.bn_relu6(bn, nn.ReLU6(), x)
    exact = nn.functional.batch_norm(x.detach().double(), None, None, training=True).clamp(0, 6)
    assert (y.double() - exact).abs().max().item() < 5e-3


def test_nan_propagates_so_divergence_is_seen():
    bn, _ = _pair(8)
    x = torch.randn(2, 8, 4, 4).to(memory_format=CL)
    x[0, 3, 1, 1] = float("nan")
    y = bn_act.bn_relu6(bn, nn.ReLU6(), x.requires_grad_())
    assert torch.isnan(y[:, 3]).all() and not torch.isnan(y[:, :3]).any()


def test_results_do_not_depend_on_the_thread_count():
    bn, _ = _pair(48)
    x = torch.randn(32, 48, 16, 16).to(memory_format=CL).requires_grad_()
    g = torch.randn_like(x)
    outs = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            b = copy.deepcopy(bn)
            x.grad = None
            y = bn_act.bn_relu6(b, nn.ReLU6(), x)
            y.backward(g)
            outs.append((y.detach().clone(), x.grad.clone(), b.weight.grad.clone(), b.running_var.clone()))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_plain_path_outside_training_or_without_grad(monkeypatch):
    bn, act = nn.BatchNorm2d(8), nn.ReLU6()
    x = torch.randn(2, 8, 4, 4).to(memory_format=CL).requires_grad_()
    assert bn_act.applies(bn, act, x)
    assert not bn_act.applies(bn, act, x.detach())  # no backward will follow
    assert not bn_act.applies(bn, act, x.detach().contiguous().requires_grad_())  # NCHW
    assert not bn_act.applies(bn, nn.ReLU(), x)
    assert not bn_act.applies(nn.Identity(), act, x)
    assert not bn_act.applies(bn, act, torch.randn(1, 8, 1, 1, requires_grad=True))  # BN's own error
    with torch.no_grad():
        assert not bn_act.applies(bn, act, x)
    bn.eval()
    assert not bn_act.applies(bn, act, x)
    bn.train()
    h = bn.register_forward_hook(lambda *a: None)
    assert not bn_act.applies(bn, act, x)
    h.remove()
    monkeypatch.setenv(bn_act.ENV_SWITCH, "0")
    assert not bn_act.applies(bn, act, x)


def test_mobilenetv2_gradients_are_as_exact_as_eager_float32(monkeypatch):
    """A whole model's loss, gradients and BN statistics, kernel on vs off vs a float64 model.

    ReLU6 makes a deep net's gradient chaotic at float32 round-off (an element at the clamp edge
    flips its mask and the change propagates), so eager float32 itself is several % off float64
    on some layers. The fused path must be no further from float64 than eager float32 is."""
    torch.manual_seed(0)
    model = MobileNetV2(num_classes=10, width=0.25, geometry="cifar", dropout=0.0).to(memory_format=CL)
    losses, a, b, c = three_way_step(model, lambda on: monkeypatch.setenv(bn_act.ENV_SWITCH, "1" if on else "0"))
    assert losses[0] == pytest.approx(losses[2], rel=1e-5) and losses[1] == pytest.approx(losses[2], rel=1e-5)
    err_fused, err_eager = grad_error(a, c), grad_error(b, c)
    assert err_fused < max(1.5 * err_eager, 1e-4), (err_fused, err_eager)
    for (name, s), t in zip(a.named_buffers(), c.buffers()):
        torch.testing.assert_close(s.double(), t.double(), atol=1e-5, rtol=1e-4, msg=name)
    assert list(a.state_dict()) == list(b.state_dict())


# --- The kernels themselves: AVX-512 path vs portable path vs float64 --------------------------
# Shapes cover both reduction layouts of the AVX-512 path (rows of <= 12 vectors kept in
# registers, wider rows in strips of 8) with a masked channel tail, row counts that are not a
# multiple of the 128-row chunk or the 8-row strip, N = 1 and N = 3, small and large H * W.
ODD_SHAPES = [(1, 20, 1, 3), (3, 20, 33, 31), (3, 37, 2, 2), (1, 37, 64, 64), (3, 144, 4, 4), (2, 200, 9, 9),
              (3, 300, 5, 5)]
SIMD_ENV = "COORDSWEEP_SIMD"


def _inputs(shape, seed=0, nan_at=None, grad_nan_at=None):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g) * 2 + 1).contiguous(memory_format=CL)
    grad = torch.randn(shape, generator=g).contiguous(memory_format=CL)
    w, b = torch.rand(c, generator=g) * 1.5 + 0.5, torch.rand(c, generator=g) * 4 - 1
    if nan_at is not None:
        x[nan_at] = float("nan")
    if grad_nan_at is not None:
        grad[grad_nan_at] = float("nan")
    return x, grad, w, b


def _run(ops, x, grad, w, b):
    """(y, mean, invstd, var, stats mean/invstd/var, dx, dw, db) from the ops directly."""
    y, mean, invstd, var = ops.bn_relu6_forward(x, w, b, 1e-5)
    stats = ops.bn_stats(x, 1e-5)
    return (y, mean, invstd, var, *stats, *ops.bn_relu6_backward(grad, x, w, b, mean, invstd))


_NAN_CASES = {"nan_x": dict(nan_at=(0, 3, 1, 0)), "nan_grad": dict(grad_nan_at=(2, 30, 0, 1))}
_CASES = {**{str(s): (s, {}) for s in ODD_SHAPES}, **{k: ((3, 37, 3, 2), v) for k, v in _NAN_CASES.items()}}

_CHILD = """
import sys, torch
from search_space import bn_act
ops = bn_act.load()
inputs = torch.load(sys.argv[1])
out = {"path": ops.simd_path()}
for threads in (1, 2):
    torch.set_num_threads(threads)
    out[threads] = {k: [t.clone() for t in _run(ops, *v)] for k, v in inputs.items()}
torch.save(out, sys.argv[2])
"""


def _outputs(ops, threads: int):
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return {k: list(_run(ops, *_inputs(s, **kw))) for k, (s, kw) in _CASES.items()}
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def generic_outputs(tmp_path_factory):
    """The same cases through the portable path: a child process with COORDSWEEP_SIMD=generic
    (the switch is read once per process), at 1 and 2 threads."""
    import inspect
    import os
    import subprocess
    import sys
    from pathlib import Path

    d = tmp_path_factory.mktemp("simd")
    torch.save({k: _inputs(s, **kw) for k, (s, kw) in _CASES.items()}, d / "in.pt")
    code = inspect.getsource(_run) + _CHILD
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, SIMD_ENV: "generic", "PYTHONPATH": str(repo)}
    subprocess.run([sys.executable, "-c", code, str(d / "in.pt"), str(d / "out.pt")], check=True, cwd=repo, env=env,
                   timeout=600)
    out = torch.load(d / "out.pt")
    assert out["path"] == "generic"
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def test_simd_path_reports_the_cpu_and_the_switch():
    ops = bn_act.load()
    import os

    expect = "generic" if os.environ.get(SIMD_ENV) == "generic" else None
    assert ops.simd_path() in ("avx512", "generic")
    if expect:
        assert ops.simd_path() == expect


def test_avx512_path_equals_the_portable_path_bit_for_bit(generic_outputs):
    """Same float operations in the same per-column order, no FMA on either path: identical bits
    (NaN included), which also keeps the fused CA kernel's recomputed ReLU6 mask in step."""
    ops = bn_act.load()
    if ops.simd_path() != "avx512":
        pytest.skip("this process runs the portable path (CPU without avx512f or COORDSWEEP_SIMD=generic)")
    mine = _outputs(ops, 1)
    for k, outs in mine.items():
        for i, (a, b) in enumerate(zip(outs, generic_outputs[1][k])):
            assert torch.equal(_bits(a), _bits(b)), (k, i)


def _reference(x, grad, w, b, y32):
    """Float64 BN + ReLU6 forward and backward; the ReLU6 mask is the kernel's own (0 < y < 6), so
    elements within round-off of a clamp edge do not flip between the two."""
    x, grad, w, b = x.double(), grad.double(), w.double(), b.double()
    dims, m = (0, 2, 3), x.numel() // x.shape[1]
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    invstd = (var + 1e-5).rsqrt()
    xc = x - mean
    y = (xc * invstd * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)).clamp(0, 6)
    gm = grad * ((y32 > 0) & (y32 < 6))
    sg, sgx = gm.sum(dims), (gm * xc).sum(dims)
    inv = invstd.view(-1)
    dx = (w * inv).view(1, -1, 1, 1) * (gm - (sg / m).view(1, -1, 1, 1) - xc * (sgx / m * inv * inv).view(1, -1, 1, 1))
    return y, mean.view(-1), inv, var.view(-1), dx, sgx * inv, sg


@pytest.mark.parametrize("path", ["this process", "generic"])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_kernels_match_float64(shape, path, generic_outputs):
    outs = _outputs(bn_act.load(), 1)[str(shape)] if path == "this process" else generic_outputs[1][str(shape)]
    y, mean, invstd, var, s_mean, s_invstd, s_var, dx, dw, db = outs
    x, grad, w, b = _inputs(shape)
    ry, rmean, rinv, rvar, rdx, rdw, rdb = _reference(x, grad, w, b, y)
    assert y.is_contiguous(memory_format=CL) and dx.is_contiguous(memory_format=CL)
    for got, ref in ((s_mean, mean), (s_invstd, invstd), (s_var, var)):  # bn_stats = the forward's statistics
        assert torch.equal(got, ref)
    close = dict(rtol=2e-6, check_dtype=False)
    torch.testing.assert_close(mean, rmean, atol=2e-6, **close)
    torch.testing.assert_close(var, rvar, atol=1e-6, rtol=1e-5, check_dtype=False)  # float sums of 128 rows
    torch.testing.assert_close(invstd, rinv, atol=1e-6, rtol=1e-5, check_dtype=False)
    torch.testing.assert_close(y, ry, atol=1e-5, **close)
    gscale = rdx.abs().max().item()
    torch.testing.assert_close(dx, rdx, atol=2e-6 * gscale, rtol=1e-4, check_dtype=False)
    m = x.numel() // x.shape[1]
    torch.testing.assert_close(db, rdb, atol=1e-6 * m ** 0.5, rtol=1e-5, check_dtype=False)
    torch.testing.assert_close(dw, rdw, atol=1e-6 * m ** 0.5, rtol=1e-5, check_dtype=False)


@pytest.mark.parametrize("path", ["this process", "generic"])
def test_kernels_propagate_nan(path, generic_outputs):
    """A NaN in x makes its channel's y, dx and weight gradient NaN (the bias gradient is 0: no
    element of that channel passes the ReLU6 mask); a NaN in grad where the mask passes reaches
    that channel's dx, weight and bias gradients; every other channel stays finite."""
    res = _outputs(bn_act.load(), 1) if path == "this process" else generic_outputs[1]
    y, mean, invstd, var, *_, dx, dw, db = res["nan_x"]
    others = [c for c in range(37) if c != 3]
    assert torch.isnan(y[:, 3]).all() and torch.isnan(dx[:, 3]).all() and torch.isnan(dw[3])
    assert torch.isnan(mean[3]) and torch.isnan(var[3]) and db[3].item() == 0.0
    for t in (y, dx):
        assert torch.isfinite(t[:, others]).all()
    for t in (mean, invstd, var, dw, db):
        assert torch.isfinite(t[others]).all()
    y, *_, dx, dw, db = res["nan_grad"]
    c, (n, h, w) = 30, (2, 0, 1)
    assert 0 < y[n, c, h, w] < 6, "the test needs the NaN where the ReLU6 mask passes"
    assert torch.isnan(dx[:, c]).all() and torch.isnan(dw[c]) and torch.isnan(db[c])
    others = [k for k in range(37) if k != c]
    assert torch.isfinite(dx[:, others]).all() and torch.isfinite(dw[others]).all() and torch.isfinite(db[others]).all()


@pytest.mark.parametrize("path", ["this process", "generic"])
def test_kernels_do_not_depend_on_the_thread_count(path, generic_outputs):
    if path == "this process":
        one, two = _outputs(bn_act.load(), 1), _outputs(bn_act.load(), 2)
    else:
        one, two = generic_outputs[1], generic_outputs[2]
    for k in one:
        for i, (a, b) in enumerate(zip(one[k], two[k])):
            assert torch.equal(_bits(a), _bits(b)), (k, i)
