"""CA's middle part on the fused CPU path (search_space/attention/_coord_middle.py): the written-out
paper configuration (PaperMiddle) against the module's own autograd code (GraphMiddle) and float64.
Gates and gradients no further from float64 than the autograd graph's (the BatchNorm statistics
and GEMMs sum in other orders, so not bit-identical), running statistics equal up to round-off,
num_batches_tracked identical."""
from __future__ import annotations

import copy

import pytest
import torch

from search_space.attention import _coord_cpu
from search_space.attention._coord_middle import GraphMiddle, PaperMiddle, paper_middle_applies
from search_space.attention.coord import CoordAttn


@pytest.fixture(scope="module", autouse=True)
def kernels():
    if _coord_cpu.load() is None:  # PaperMiddle's h_swish passes live in the extension
        pytest.skip(f"the CA CPU kernel did not build here: {_coord_cpu.failure()}")


def _module(c: int, seed: int = 0, **kw) -> CoordAttn:
    torch.manual_seed(seed)
    m = CoordAttn(c, **kw).train()
    if isinstance(m.bn1, torch.nn.BatchNorm2d):
        with torch.no_grad():
            m.bn1.weight.uniform_(0.5, 1.5)
            m.bn1.bias.uniform_(-0.5, 0.5)
    return m


def _graph(m: CoordAttn, h: int, w: int) -> GraphMiddle:
    return GraphMiddle(lambda p: m._gates_hw(p, h, w), list(m.parameters()))


def _step(middle, pooled, ga_h, ga_w):
    a_h, a_w, saved = middle.forward(pooled)
    if middle.logit_grads:  # what the kernels hand over: the sigmoid's backward already applied
        ga_h, ga_w = ga_h * ((1 - a_h) * a_h), ga_w * ((1 - a_w) * a_w)
    g_pooled, grads = middle.backward(saved, ga_h, ga_w, True, [True] * len(middle.params))
    return a_h, a_w, g_pooled, grads


def _rel(a, e):
    return ((a.double() - e.double()).norm() / e.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("n,h,w,c", [(4, 8, 6, 96), (1, 3, 5, 20), (2, 1, 7, 300), (8, 4, 4, 960)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_paper_middle_equals_the_autograd_graph(n, h, w, c, momentum):
    base = _module(c)
    base.bn1.momentum = momentum
    ref, mine, exact = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base).double()
    names = [k for k, _ in base.named_parameters()]
    assert paper_middle_applies(mine)
    torch.manual_seed(1)
    for _ in range(2):  # running statistics and num_batches_tracked accumulate
        pooled = torch.rand(n, h + w, c) * 3
        ga_h, ga_w = torch.randn(n, h, c), torch.randn(n, w, c)
        r = _step(_graph(ref, h, w), pooled, ga_h, ga_w)
        p = _step(PaperMiddle(mine, h, w), pooled, ga_h, ga_w)
        e = _step(_graph(exact, h, w), pooled.double(), ga_h.double(), ga_w.double())
        pairs = [("a_h", r[0], p[0], e[0]), ("a_w", r[1], p[1], e[1]), ("pooled", r[2], p[2], e[2])] + list(zip(names, r[3], p[3], e[3]))
        for name, gr, gp, ge in pairs:
            if name == "conv1.bias":  # exactly 0 in theory (BN follows): round-off only
                assert gp.abs().max() < 1e-4 * max(1.0, float(ge.abs().max()) + 1.0), name
                continue
            assert gp.shape == gr.shape, name
            assert _rel(gp, ge) <= max(2 * _rel(gr, ge), 2e-6), (name, _rel(gp, ge), _rel(gr, ge))
    for k, v in ref.state_dict().items():  # BN statistics summed in another order: round-off
        torch.testing.assert_close(mine.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert int(mine.bn1.num_batches_tracked) == 2


def test_norm_without_running_statistics():
    # track_running_stats=False: batch statistics, nothing stored, same values as the graph
    base = CoordAttn(40, norm="bn")
    base.bn1 = torch.nn.BatchNorm2d(base.bn1.num_features, track_running_stats=False)
    ref, mine = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(2)
    pooled = torch.rand(3, 9, 40)
    ga_h, ga_w = torch.randn(3, 4, 40), torch.randn(3, 5, 40)
    r = _step(_graph(ref, 4, 5), pooled, ga_h, ga_w)
    p = _step(PaperMiddle(mine, 4, 5), pooled, ga_h, ga_w)
    torch.testing.assert_close(p[0], r[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p[2], r[2], rtol=1e-4, atol=1e-6)
    assert mine.bn1.running_mean is None and mine.bn1.num_batches_tracked is None


def test_gradients_only_where_wanted():
    m = _module(48)
    mid = PaperMiddle(m, 5, 6)
    a_h, a_w, saved = mid.forward(torch.rand(3, 11, 48))
    needs = [False, False, False, False, True, False, False, True]
    g_pooled, grads = mid.backward(saved, torch.randn_like(a_h), torch.randn_like(a_w), False, needs)
    assert g_pooled is None
    assert [g is not None for g in grads] == needs


@pytest.mark.parametrize("kw", [{"norm": "gn"}, {"norm": "none"}, {"act": "relu"}, {"gate": "h_sigmoid"},
                                {"bias": False}, {"gate": "softmax_hw"}])
def test_other_configurations_keep_the_autograd_graph(kw):
    m = _module(32, **kw)
    assert not paper_middle_applies(m)
    assert isinstance(m._middle(4, 4), GraphMiddle)


def test_switch_and_eval_mode_keep_the_autograd_graph(monkeypatch):
    m = _module(32)
    assert isinstance(m._middle(4, 4), PaperMiddle)
    monkeypatch.setenv(_coord_cpu.PAPER_MIDDLE_SWITCH, "0")
    assert isinstance(m._middle(4, 4), GraphMiddle)
    monkeypatch.delenv(_coord_cpu.PAPER_MIDDLE_SWITCH)
    m.bn1.eval()
    assert isinstance(m._middle(4, 4), GraphMiddle)


def test_hswish_ops_match_the_module():
    # forward bit-identical to layers.HSwish (same float ops in the same order), NaN included;
    # backward as autograd's up to round-off, with hardtanh's open interval at -3 and 3
    from search_space.layers import HSwish

    ops = _coord_cpu.load()
    torch.manual_seed(3)
    y = torch.randn(5, 4, 9) * 4
    y[0, 0, :3] = torch.tensor([-3.0, 3.0, float("nan")])
    act_h, act_w = ops.hswish_split(y, 4)
    ref = HSwish()(y)
    assert torch.equal(act_h.view(5, 4, 4).nan_to_num(7.0), ref[:, :, :4].nan_to_num(7.0))
    assert torch.equal(act_w.view(5, 4, 5), ref[:, :, 4:])
    yy = y.nan_to_num(0.5).requires_grad_(True)
    g = torch.randn(5, 4, 9)
    HSwish()(yy).backward(g)
    got = ops.hswish_backward(g[:, :, :4].reshape(5, 16), g[:, :, 4:].reshape(5, 20), yy.detach())
    torch.testing.assert_close(got, yy.grad, rtol=1e-6, atol=1e-6)
