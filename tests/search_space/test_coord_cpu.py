"""The fused CPU path of CoordAttn (search_space/attention/_coord_cpu.py + coord_cpu.cpp).

Kernel vs CoordAttn's eager path vs the authors' module: outputs, input and parameter
gradients, BN running statistics; NCHW and channels_last, odd shapes (H != W, H or W = 1,
channel counts that leave vector tails), 1 and 2 threads; every gate / act / norm on the
hw / avg path; when the kernel is (not) used; fallback when disabled or unbuildable.
The extension is built (or loaded from the cache) once per session."""
from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from search_space.attention import _coord_cpu
from search_space.attention.coord import CA_GATES, NORMS, CoordAttn
from search_space.layers import ACTIVATIONS
from tests.conftest import REPO, shared_path

CL = torch.channels_last


@pytest.fixture(scope="module", autouse=True)
def ops():
    ops = _coord_cpu.load()
    if ops is None:
        pytest.skip(f"the CA kernel did not build here: {_coord_cpu.failure()}")
    return ops



@pytest.fixture
def kernel(monkeypatch):
    """kernel(True/False): switch the fused path on/off via the environment."""
    def switch(on: bool):
        monkeypatch.setenv(_coord_cpu.ENV_SWITCH, "1" if on else "0")
    return switch


def _randomise_bn(m: nn.Module) -> None:
    # Non-trivial affine and running stats, so a swapped or ignored parameter shows.
    with torch.no_grad():
        m.bn1.weight.uniform_(0.5, 1.5)
        m.bn1.bias.uniform_(-0.5, 0.5)
        m.bn1.running_mean.uniform_(-0.2, 0.2)
        m.bn1.running_var.uniform_(0.5, 2.0)


def _inputs(shape, channels_last: bool, seed: int = 1):
    torch.manual_seed(seed)
    x, g = torch.randn(shape), torch.randn(shape)
    if channels_last:
        x, g = x.contiguous(memory_format=CL), g.contiguous(memory_format=CL)
    return x, g


def _step(m: nn.Module, x: torch.Tensor, g: torch.Tensor):
    """One train-mode forward + backward on a copy of m: (out, grad_x, param grads, state)."""
    m = copy.deepcopy(m).train()
    xi = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    y = m(xi)
    fused = y.grad_fn is not None and y.grad_fn.name() == "_CoordHWBackward"
    y.backward(g)
    grads = {n: p.grad for n, p in m.named_parameters()}
    state = {k: v.clone() for k, v in m.state_dict().items()}
    return y.detach(), xi.grad, grads, state, fused


def _assert_same(a, b, *, grad_tol=1e-5, label=""):
    """Outputs and input gradients to 1e-6 (times their largest |value| when > 1), parameter
    gradients to grad_tol relative to their scale, state (BN running stats) to 1e-6."""
    y_a, gx_a, gp_a, st_a, _ = a
    y_b, gx_b, gp_b, st_b, _ = b
    for what, t_a, t_b in (("out", y_a, y_b), ("grad_x", gx_a, gx_b)):
        atol = 1e-6 * max(1.0, t_b.abs().max().item())  # float32 round-off at the tensor's scale
        torch.testing.assert_close(t_a, t_b, rtol=0, atol=atol, msg=lambda m, w=what: f"{label} {w}: {m}")
    assert gp_a.keys() == gp_b.keys()
    for name in gp_a:
        assert (gp_a[name] is None) == (gp_b[name] is None), name
        if gp_a[name] is None:
            continue
        # Weight gradients sum N*L terms; conv1.bias feeds a norm layer that (mostly) cancels it,
        # so its true gradient is ~0 and both sides hold round-off of conv1.weight's sums' size.
        ref = gp_b["conv1.weight"] if name == "conv1.bias" and "bn1.weight" in gp_b else gp_b[name]
        atol = grad_tol * max(1.0, ref.abs().max().item())
        torch.testing.assert_close(gp_a[name], gp_b[name], rtol=grad_tol, atol=atol,
                                   msg=lambda m, n=name: f"{label} {n}.grad: {m}")
    assert st_a.keys() == st_b.keys()
    for k in st_a:
        torch.testing.assert_close(st_a[k], st_b[k], rtol=1e-6, atol=1e-6, msg=lambda m, k=k: f"{label} {k}: {m}")


SHAPES = [(2, 32, 8, 8), (3, 64, 7, 5), (2, 96, 4, 11), (4, 24, 1, 9), (3, 40, 9, 1), (1, 100, 5, 7),
          (2, 27, 6, 6), (5, 16, 1, 1)]
IDS = ["x".join(map(str, s)) for s in SHAPES]


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_kernel_matches_eager_and_seed(seed_module, kernel, shape, channels_last):
    c = shape[1]
    torch.manual_seed(0)
    ref = seed_module.CoordAtt(c, c)
    _randomise_bn(ref)
    m = CoordAttn(c)
    m.load_state_dict(ref.state_dict())
    x, g = _inputs(shape, channels_last)

    kernel(True)
    fused = _step(m, x, g)
    assert fused[4], "the fused path was not taken"
    assert fused[0].is_contiguous(memory_format=CL if channels_last else torch.contiguous_format)
    assert fused[1].is_contiguous(memory_format=CL if channels_last else torch.contiguous_format)
    kernel(False)
    eager = _step(m, x, g)
    assert not eager[4]
    _assert_same(fused, eager, label="kernel vs eager")
    assert fused[3]["bn1.num_batches_tracked"].item() == 1  # the middle part ran once

    seed = _step(ref, x.contiguous(), g.contiguous())
    _assert_same(fused, seed, label="kernel vs seed")


@pytest.fixture
def threads():
    """threads(n): set torch's intra-op threads for this test."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_two_threads(ops, kernel, threads, channels_last):
    # The kernels compute each output element in a fixed order whatever the partition: their
    # results are bit-identical for 1 and 2 threads (N=1 splits the channels into blocks).
    # The module as a whole (whose middle part uses MKL / OpenMP reductions) matches eager.
    torch.manual_seed(0)
    for shape in [(3, 100, 9, 6), (1, 80, 4, 5), (16, 48, 8, 8)]:
        n, c, h, w = shape
        x, g = _inputs(shape, channels_last)
        a_h, a_w, gp = torch.rand(n, h, c), torch.rand(n, w, c), torch.randn(n, h + w, c)
        outs = {}
        for t in (1, 2):
            threads(t)
            outs[t] = [ops.pool_hw(x), ops.gate_hw(x, a_h, a_w), *ops.gate_hw_backward(g, x, a_h, a_w),
                       ops.input_grad_hw(g, a_h, a_w, gp)]
        assert all(torch.equal(a, b) for a, b in zip(outs[1], outs[2])), shape
        m = CoordAttn(c)
        _randomise_bn(m)
        kernel(True)
        fused = _step(m, x, g)
        assert fused[4]
        kernel(False)
        _assert_same(fused, _step(m, x, g), label=f"2 threads {shape}")


@pytest.mark.parametrize("gate", CA_GATES)
def test_every_gate_act_norm_bias_matches_eager(kernel, gate):
    x0, g0 = _inputs((3, 24, 5, 7), channels_last=True)
    for act, norm, bias in itertools.product(ACTIVATIONS, NORMS, (True, False)):
        torch.manual_seed(0)
        m = CoordAttn(24, gate=gate, act=act, norm=norm, bias=bias, min_channels=4)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
        kernel(True)
        fused = _step(m, x0, g0)
        assert fused[4], (act, norm, bias)
        kernel(False)
        _assert_same(fused, _step(m, x0, g0), label=f"{gate}/{act}/{norm}/bias={bias}")


def test_ops_directly(ops):
    # The four ops against plain PyTorch, both layouts, shapes with vector tails.
    torch.manual_seed(0)
    for shape, cl in itertools.product([(2, 27, 5, 9), (3, 40, 1, 6), (1, 33, 8, 1)], (False, True)):
        n, c, h, w = shape
        x, g = _inputs(shape, cl)
        a_h, a_w = torch.rand(n, h, c), torch.rand(n, w, c)
        gp = torch.randn(n, h + w, c)
        ah4, aw4 = a_h.transpose(1, 2).unsqueeze(3), a_w.transpose(1, 2).unsqueeze(2)
        pooled = ops.pool_hw(x)
        torch.testing.assert_close(pooled, torch.cat([x.mean(3), x.mean(2)], 2).transpose(1, 2),
                                   rtol=0, atol=1e-6)
        assert torch.equal(ops.gate_hw(x, a_h, a_w), x * aw4 * ah4)
        ga_h, ga_w = ops.gate_hw_backward(g, x, a_h, a_w)
        torch.testing.assert_close(ga_h, (g * x * aw4).sum(3).transpose(1, 2), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ga_w, (g * x * ah4).sum(2).transpose(1, 2), rtol=1e-5, atol=1e-5)
        gx = ops.input_grad_hw(g, a_h, a_w, gp)
        want = g * ah4 * aw4 + (gp[:, :h] / w).transpose(1, 2).unsqueeze(3) + (gp[:, h:] / h).transpose(1, 2).unsqueeze(2)
        torch.testing.assert_close(gx, want, rtol=0, atol=1e-6)
        assert gx.is_contiguous(memory_format=CL if cl else torch.contiguous_format)
    with pytest.raises(RuntimeError, match="float32"):
        ops.pool_hw(torch.zeros(1, 2, 3, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="channels_last"):
        ops.pool_hw(torch.zeros(1, 2, 3, 4)[..., ::2])


def test_grad_in_other_layout_and_retained_graph(kernel):
    # grad arriving NCHW for a channels_last x; two backwards through a retained graph.
    torch.manual_seed(0)
    m = CoordAttn(32)
    _randomise_bn(m)
    x, g = _inputs((2, 32, 6, 5), channels_last=True)
    res = {}
    for on in (True, False):
        kernel(on)
        mm = copy.deepcopy(m)
        xi = x.clone().requires_grad_(True)
        y = mm(xi)
        y.backward(g.contiguous(), retain_graph=True)
        y.backward(g.contiguous())
        res[on] = (xi.grad, {n: p.grad for n, p in mm.named_parameters()})
    torch.testing.assert_close(res[True][0], res[False][0], rtol=0, atol=2e-6)
    for n in res[True][1]:
        torch.testing.assert_close(res[True][1][n], res[False][1][n], rtol=1e-5, atol=1e-5)


def test_frozen_parameters_and_input_without_grad_path(kernel):
    torch.manual_seed(0)
    m = CoordAttn(32)
    for p in m.conv1.parameters():
        p.requires_grad_(False)
    x, g = _inputs((2, 32, 6, 6), channels_last=True)
    kernel(True)
    fused = _step(m, x, g)
    assert fused[4] and fused[2]["conv1.weight"] is None and fused[2]["conv_h.weight"] is not None
    kernel(False)
    _assert_same(fused, _step(m, x, g))


def test_plain_path_when_kernel_does_not_apply(kernel):
    kernel(True)
    m = CoordAttn(16)
    x = torch.randn(2, 16, 5, 6, requires_grad=True)
    assert _coord_cpu.applies(x)
    with torch.no_grad():
        assert not _coord_cpu.applies(x)
        assert m(x).grad_fn is None
    assert not _coord_cpu.applies(x.detach())  # no backward will follow
    assert not _coord_cpu.applies(x.double())
    assert not _coord_cpu.applies(x[..., ::2])  # neither NCHW- nor channels_last-contiguous
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _coord_cpu.applies(x)
    y = CoordAttn(16, pool="max")(x)  # other pools and directions keep the eager path
    assert y.grad_fn.name() != "_CoordHWBackward"
    # Tracing (fvcore's FLOP count) sees plain aten ops, the same graph as with the kernel off.
    graph_on = str(torch.jit.trace(m.train(), x).graph)
    kernel(False)
    graph_off = str(torch.jit.trace(m.train(), x).graph)
    assert "coordsweep_ca" not in graph_on
    assert graph_on.count("aten::") == graph_off.count("aten::")


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_disabled_by_environment(monkeypatch, value):
    monkeypatch.setenv(_coord_cpu.ENV_SWITCH, value)
    x = torch.randn(2, 16, 5, 6, requires_grad=True)
    assert not _coord_cpu.enabled() and not _coord_cpu.applies(x)
    assert CoordAttn(16)(x).grad_fn.name() == "_CoordGateBackward"


def test_build_failure_warns_once_and_falls_back(tmp_path):
    # A fresh process with an empty cache and no usable compiler: one RuntimeWarning, then the
    # eager path with correct values.
    code = textwrap.dedent("""
        import warnings, torch
        from search_space.attention.coord import CoordAttn
        from search_space.attention import _coord_cpu
        torch.manual_seed(0)
        m = CoordAttn(16)
        x = torch.randn(2, 16, 5, 6, requires_grad=True)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            y1 = m(x); y2 = m(x)
        msgs = [str(i.message) for i in w if issubclass(i.category, RuntimeWarning)]
        assert len(msgs) == 1 and "fused CPU kernel is unavailable" in msgs[0], msgs
        assert y1.grad_fn.name() == "_CoordGateBackward"
        y1.sum().backward()
        print("OK", _coord_cpu.build_directory())
    """)
    env = dict(os.environ, COORDSWEEP_CACHE=str(tmp_path), CXX=str(tmp_path / "no-such-compiler"),
               PYTHONPATH=str(REPO), COORDSWEEP_CA_KERNEL="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("OK") and str(tmp_path) in r.stdout


def test_build_directory_follows_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv(_coord_cpu.CACHE_ENV, str(tmp_path))
    d = _coord_cpu.build_directory()
    assert d.parent.parent == tmp_path / "torch_extensions"
    assert torch.__version__.replace("+", "_") in d.parent.name and d.name == _coord_cpu.EXT_NAME
