"""CA fused with the BatchNorm + ReLU6 before it (search_space/attention/_coord_cpu.py::bn_coord_hw,
the ``*_bn`` ops of coord_cpu.cpp, reached through search_space/bn_act.py::bn_relu6_attn).

Reference: the two separately fused ops (BN+ReLU6 kernel, then the CA kernel). The forward must
be bit-identical to it (same statistics, same on-the-fly y, same summation order); gradients
equal up to float32 round-off and no further from float64 than the reference; running
statistics identical; 1 and 2 threads identical; the fusion only where it applies."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from search_space import bn_act
from search_space.attention import _coord_cpu
from search_space.attention.coord import CoordAttn
from search_space.mobilenetv2 import build_model
from tests.search_space._kernel_check import grad_error, three_way_step

CL = torch.channels_last


@pytest.fixture(scope="module", autouse=True)
def kernels():
    if _coord_cpu.load() is None or bn_act.load() is None:
        pytest.skip(f"a CPU kernel did not build here: {_coord_cpu.failure() or bn_act.failure()}")


def _parts(c: int, seed: int = 0, **ca_kw):
    torch.manual_seed(seed)
    bn, ca = nn.BatchNorm2d(c), CoordAttn(c, **ca_kw)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 3.0)  # part of y in (0, 6), part clamped at either end
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        ca.bn1.weight.uniform_(0.5, 1.5)
        ca.bn1.bias.uniform_(-0.5, 0.5)
    return bn, ca


def _run(bn, ca, x, g, fused: bool, steps: int = 2):
    """steps x (forward + backward) on copies; (out, grad_x, param grads, state, fused?)."""
    bn, ca = copy.deepcopy(bn), copy.deepcopy(ca)
    xi = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    for _ in range(steps):  # running statistics and num_batches_tracked accumulate
        xi.grad = None
        for m in (bn, ca):
            m.zero_grad(set_to_none=True)
        y = bn_act.bn_relu6_attn(bn, nn.ReLU6(), ca, xi) if fused else ca(bn_act.bn_relu6(bn, nn.ReLU6(), xi))
        y.backward(g)
    took = y.grad_fn is not None and y.grad_fn.name() == "_BNCoordHWBackward"
    grads = {f"bn.{n}": p.grad for n, p in bn.named_parameters()}
    grads.update({f"ca.{n}": p.grad for n, p in ca.named_parameters()})
    state = {**{f"bn.{k}": v for k, v in bn.state_dict().items()}, **{f"ca.{k}": v for k, v in ca.state_dict().items()}}
    return y.detach(), xi.grad, grads, state, took


def _inputs(shape, seed=1):
    torch.manual_seed(seed)
    return ((torch.randn(shape) * 2 + 1).contiguous(memory_format=CL),
            torch.randn(shape).contiguous(memory_format=CL))


@pytest.mark.parametrize("shape", [(4, 144, 16, 16), (8, 48, 12, 10), (3, 19, 5, 7), (2, 40, 1, 9), (16, 8, 4, 4)])
def test_matches_the_two_separate_kernels(shape):
    bn, ca = _parts(shape[1])
    x, g = _inputs(shape)
    out, gx, grads, state, took = _run(bn, ca, x, g, fused=True)
    ref_out, ref_gx, ref_grads, ref_state, _ = _run(bn, ca, x, g, fused=False)
    assert took
    assert torch.equal(out, ref_out)  # same statistics, same y, same pooling order
    assert out.is_contiguous(memory_format=CL) and gx.is_contiguous(memory_format=CL)
    for k in ref_state:
        assert torch.equal(state[k], ref_state[k]), k
    torch.testing.assert_close(gx, ref_gx, atol=1e-5, rtol=1e-4)
    for k, r in ref_grads.items():
        if k == "ca.conv1.bias":  # exactly 0 in theory (a BN follows): round-off only
            assert grads[k].abs().max() < 1e-3
            continue
        torch.testing.assert_close(grads[k], r, atol=1e-4, rtol=1e-4, msg=k)


def test_gradients_are_as_close_to_float64_as_the_separate_kernels():
    bn, ca = _parts(48, seed=3)
    x, g = _inputs((8, 48, 16, 16), seed=4)
    fused = _run(bn, ca, x, g, fused=True, steps=1)
    sep = _run(bn, ca, x, g, fused=False, steps=1)
    exact = _run(bn.double(), ca.double(), x.double(), g.double(), fused=False, steps=1)  # eager float64

    def err(r, k=None):
        a, e = (r[1], exact[1]) if k is None else (r[2][k], exact[2][k])
        return ((a.double() - e).norm() / e.norm()).item()

    for k in [None, "bn.weight", "bn.bias", "ca.conv1.weight", "ca.conv_h.weight", "ca.bn1.weight"]:
        assert err(fused, k) < max(1.5 * err(sep, k), 1e-6), (k, err(fused, k), err(sep, k))


def test_ops_do_not_depend_on_the_thread_count():
    # Every output element is computed in a fixed order whatever the partition (N=1 and N=3 split
    # the channels into blocks). The module's middle part (MKL / OpenMP) is not covered by this.
    ops = _coord_cpu.load()
    torch.manual_seed(0)
    old = torch.get_num_threads()
    try:
        for n, c, h, w in [(3, 100, 9, 6), (1, 80, 4, 5), (16, 48, 8, 8)]:
            x, g = _inputs((n, c, h, w))
            mean, a, b = torch.randn(c), torch.rand(c) + 0.5, torch.randn(c)
            invstd = torch.rand(c) + 0.5
            a_h, a_w, gp = torch.rand(n, h, c), torch.rand(n, w, c), torch.randn(n, h + w, c)
            outs = {}
            for t in (1, 2):
                torch.set_num_threads(t)
                back = ops.bn_gate_hw_backward(g, x, mean, a, b, a_h, a_w)
                outs[t] = [ops.pool_hw_bn(x, mean, a, b), ops.gate_hw_bn(x, mean, a, b, a_h, a_w), *back,
                           *ops.bn_input_grad_hw(g, x, mean, invstd, a, b, a_h, a_w, gp, *back[2:])]
            assert all(torch.equal(u, v) for u, v in zip(outs[1], outs[2])), (n, c, h, w)
    finally:
        torch.set_num_threads(old)


def test_frozen_parameters_and_no_input_gradient():
    bn, ca = _parts(16)
    x, g = _inputs((4, 16, 6, 6))
    for p in list(ca.parameters()) + [bn.weight]:
        p.requires_grad_(False)
    ref = _run(bn, ca, x, g, fused=False, steps=1)
    out = _run(bn, ca, x, g, fused=True, steps=1)
    assert out[4] and torch.equal(out[0], ref[0])
    assert out[2]["bn.weight"] is None and out[2]["ca.conv1.weight"] is None
    torch.testing.assert_close(out[2]["bn.bias"], ref[2]["bn.bias"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1], ref[1], atol=1e-5, rtol=1e-4)
    # Only the BN parameters need a gradient: the input gradient is not required.
    bn2, ca2 = _parts(16)
    xi = x.clone().requires_grad_(False)
    y = bn_act.bn_relu6_attn(bn2, nn.ReLU6(), ca2, xi)  # x without grad: BN+ReLU6 kernel does not apply
    assert y.grad_fn.name() != "_BNCoordHWBackward"


def test_nan_propagates():
    bn, ca = _parts(8)
    x, _ = _inputs((2, 8, 4, 4))
    x[0, 3, 1, 1] = float("nan")
    y = bn_act.bn_relu6_attn(bn, nn.ReLU6(), ca, x.requires_grad_())
    assert torch.isnan(y).any()


def test_fusion_only_where_it_applies(monkeypatch):
    act = nn.ReLU6()
    x, _ = _inputs((2, 16, 5, 6))
    x.requires_grad_(True)

    def name(bn, ca, inp=x):
        return bn_act.bn_relu6_attn(bn, act, ca, inp).grad_fn.name()

    bn, ca = _parts(16)
    assert name(bn, ca) == "_BNCoordHWBackward"
    assert name(bn, CoordAttn(16, pool="max")) != "_BNCoordHWBackward"
    assert name(bn, CoordAttn(16, directions="h")) != "_BNCoordHWBackward"
    assert name(bn, ca, x.detach().contiguous().requires_grad_()) != "_BNCoordHWBackward"  # NCHW
    assert name(bn, nn.Identity()) == "_BNReLU6Backward"  # no attention: BN + ReLU6 alone
    seen = []
    h = ca.register_forward_hook(lambda *a: seen.append(1))
    assert name(bn, ca) == "_CoordHWBackward" and seen  # a hook on CA sees its input and output
    h.remove()
    bn.eval()
    assert name(bn, ca) == "_CoordHWBackward"
    bn.train()
    for switch in (_coord_cpu.FUSE_BN_SWITCH, _coord_cpu.ENV_SWITCH, bn_act.ENV_SWITCH):
        monkeypatch.setenv(switch, "0")
        assert name(bn, ca) != "_BNCoordHWBackward", switch
        monkeypatch.delenv(switch)
    assert name(bn, ca) == "_BNCoordHWBackward"


def test_mobilenetv2_with_ca_trains_the_same_fused_or_not(monkeypatch):
    """Whole model (CA at post_dw and at post_expand): same loss, gradients within round-off of
    the separately fused ops, and no further from float64 than they are."""
    for position in ("post_dw", "post_expand"):
        cfg = {"model": {"name": "mobilenetv2", "geometry": "cifar", "width": 0.25, "dropout": 0.0},
               "attention": {"name": "ca", "position": position}}
        torch.manual_seed(0)
        model = build_model(cfg, num_classes=10).to(memory_format=CL)
        losses, a, b, c = three_way_step(
            model, lambda on: monkeypatch.setenv(_coord_cpu.FUSE_BN_SWITCH, "1" if on else "0"))
        assert losses[0] == losses[1] == pytest.approx(losses[2], rel=1e-5)
        skip = ("bn3.bias", "conv1.bias")  # biases right before a BN
        err_fused, err_sep = grad_error(a, c, skip), grad_error(b, c, skip)
        assert err_fused < max(1.5 * err_sep, 1e-4), (position, err_fused, err_sep)
        for (name, s), t in zip(a.named_buffers(), b.buffers()):
            assert torch.equal(s, t), (position, name)


@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format])
def test_sigmoid_flag_returns_the_logit_gradients(memory_format):
    # sigmoid=True hands the middle part dL/d(logits) = ga * (1 - a) * a, applied in the kernel
    ops = _coord_cpu.load()
    torch.manual_seed(0)
    n, c, h, w = 3, 37, 5, 7
    x, g = (t.contiguous(memory_format=memory_format) for t in _inputs((n, c, h, w)))
    a_h, a_w = torch.rand(n, h, c), torch.rand(n, w, c)
    plain = ops.gate_hw_backward(g, x, a_h, a_w)
    for got, ga, a in zip(ops.gate_hw_backward(g, x, a_h, a_w, True), plain, (a_h, a_w)):
        assert torch.equal(got, ga * ((1 - a) * a))
    if memory_format is CL:
        mean, a, b = torch.randn(c), torch.rand(c) + 0.5, torch.randn(c)
        plain = ops.bn_gate_hw_backward(g, x, mean, a, b, a_h, a_w)
        logit = ops.bn_gate_hw_backward(g, x, mean, a, b, a_h, a_w, True)
        for got, ga, s in zip(logit[:2], plain[:2], (a_h, a_w)):
            assert torch.equal(got, ga * ((1 - s) * s))
        assert all(torch.equal(u, v) for u, v in zip(logit[2:], plain[2:]))
