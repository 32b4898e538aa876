"""Attention modules: paper-default CA equals the authors' module; every CA option works;
SE / CBAM / ECA shapes, parameter counts and ECA's adaptive kernel."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn

from search_space.attention.cbam import CbamModule
from search_space.attention.coord import CA_GATES, DIRECTIONS, NORMS, POOLS, CoordAttn
from search_space.attention.eca import EcaModule, eca_kernel_size
from search_space.attention.se import SEModule
from search_space.layers import ACTIVATIONS
from tests.conftest import shared_path



def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())



def _pair(seed_module, channels: int):
    torch.manual_seed(0)
    ref = seed_module.CoordAtt(channels, channels)
    ours = CoordAttn(channels)
    # Non-trivial BN affine/stats so that a swapped or ignored parameter shows.
    with torch.no_grad():
        ref.bn1.weight.uniform_(0.5, 1.5)
        ref.bn1.bias.uniform_(-0.5, 0.5)
        ref.bn1.running_mean.uniform_(-0.2, 0.2)
        ref.bn1.running_var.uniform_(0.5, 2.0)
    ours.load_state_dict(ref.state_dict(), strict=True)  # same names: conv1, bn1, conv_h, conv_w
    ref.load_state_dict(ours.state_dict(), strict=True)  # and back
    return ref, ours


SHAPES = [(2, 32, 8, 8), (3, 64, 7, 5), (2, 96, 4, 11), (4, 24, 1, 9)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_ca_default_matches_seed_module(seed_module, shape, channels_last):
    ref, ours = _pair(seed_module, shape[1])
    assert set(ours.state_dict()) == set(ref.state_dict())
    torch.manual_seed(1)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_ref = x.detach().contiguous().requires_grad_(True)  # reference sees a plain NCHW tensor
    x_ours = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)

    # Train mode: outputs, BN running statistics, gradients (input and every weight).
    ref.train(), ours.train()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    assert y_ours.shape == x.shape
    torch.testing.assert_close(y_ours, y_ref, rtol=0, atol=1e-6)
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours.bn1, k), getattr(ref.bn1, k), rtol=0, atol=1e-6)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y_ours.backward(g)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=0, atol=1e-6)
    # Weight gradients sum over N*H*W terms (float32 round-off ~1e-6 at magnitudes ~5); conv1.bias
    # feeds a train-mode BN, so its true gradient is 0 and both sides hold round-off noise.
    ref_params = dict(ref.named_parameters())
    assert set(ref_params) == {name for name, _ in ours.named_parameters()}
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-5, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")

    # Eval mode (running statistics).
    ref.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x.contiguous()), rtol=0, atol=1e-6)


def test_ca_mid_width_follows_paper_rule():
    # mip = max(8, C // 32)
    assert CoordAttn(96).conv1.out_channels == 8
    assert CoordAttn(960).conv1.out_channels == 30
    assert CoordAttn(960, reduction=8).conv1.out_channels == 120
    assert CoordAttn(64, reduction=16, min_channels=1).conv1.out_channels == 4


ACTS = tuple(ACTIVATIONS)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("gate", CA_GATES)
def test_ca_every_option_runs(pool, gate):
    """Every combination of pool x gate x act x directions x norm x bias builds, runs forward and
    backward, keeps the shape and stays finite (softmax_hw needs directions=hw)."""
    torch.manual_seed(0)
    x0 = torch.randn(2, 16, 6, 5)
    for act, directions, norm, bias in itertools.product(ACTS, DIRECTIONS, NORMS, (True, False)):
        kw = dict(pool=pool, gate=gate, act=act, directions=directions, norm=norm, bias=bias)
        if gate == "softmax_hw" and directions != "hw":
            with pytest.raises(ValueError, match="softmax_hw.*directions"):
                CoordAttn(16, **kw)
            continue
        m = CoordAttn(16, **kw)
        x = x0.clone().requires_grad_(True)
        y = m(x)
        assert y.shape == x.shape, kw
        assert torch.isfinite(y).all(), kw
        y.square().mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all(), kw
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters()), kw
        assert (m.conv1.bias is not None) == bias
        assert (m.conv_h is not None) == ("h" in directions) and (m.conv_w is not None) == ("w" in directions)


def _gate_of(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m(x) / x


@pytest.mark.parametrize("directions", ["h", "w"])
def test_ca_single_direction_gate_is_constant_along_the_other(directions):
    torch.manual_seed(0)
    m = CoordAttn(16, directions=directions).eval()
    x = torch.rand(2, 16, 7, 9) + 0.5  # positive, away from 0: out / x is the gate
    gate = _gate_of(m, x)
    along_w = gate.std(dim=3).max().item()  # variation along W
    along_h = gate.std(dim=2).max().item()  # variation along H
    if directions == "h":  # a_h depends on the row only
        assert along_w < 1e-6 and along_h > 1e-3
    else:
        assert along_h < 1e-6 and along_w > 1e-3


def test_ca_both_directions_gate_varies_along_both():
    torch.manual_seed(0)
    gate = _gate_of(CoordAttn(16).eval(), torch.rand(2, 16, 7, 9) + 0.5)
    assert gate.std(dim=3).max() > 1e-3 and gate.std(dim=2).max() > 1e-3


def test_ca_softmax_hw_equal_logits_is_identity():
    torch.manual_seed(0)
    m = CoordAttn(16, gate="softmax_hw")
    for conv in (m.conv_h, m.conv_w):
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    x = torch.randn(2, 16, 5, 7)
    torch.testing.assert_close(m(x), x, rtol=1e-6, atol=1e-6)


def test_ca_softmax_hw_is_one_softmax_over_both_directions():
    # The softmax runs over the H+W coordinates of each channel jointly: shifting the H and W
    # logits together changes nothing, shifting only the H logits moves weight to rows.
    torch.manual_seed(0)
    m = CoordAttn(16, gate="softmax_hw").eval()
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        y0 = m(x)
        m.conv_h.bias.add_(3.0)
        y_h_only = m(x)
        m.conv_w.bias.add_(3.0)
        y_both = m(x)
    torch.testing.assert_close(y_both, y0, rtol=1e-5, atol=1e-5)
    assert (y_h_only - y0).abs().max() > 1e-2


def test_ca_gem_learnable_p_gets_gradient():
    torch.manual_seed(0)
    m = CoordAttn(16, pool="gem", gem_p=3.0, gem_learnable=True)
    assert any(p is m.gem.p for p in m.parameters())
    m(torch.randn(2, 16, 6, 6)).square().mean().backward()
    assert m.gem.p.grad is not None and m.gem.p.grad.abs().item() > 0
    fixed = CoordAttn(16, pool="gem", gem_learnable=False)
    assert all(p is not fixed.gem.p for p in fixed.parameters())
    assert "gem.p" in fixed.state_dict()


def test_ca_gem_p1_is_mean_of_positive_part():
    m = CoordAttn(16, pool="gem", gem_p=1.0, gem_learnable=False)
    x = torch.rand(2, 16, 4, 5) + 0.1
    torch.testing.assert_close(m._pool(x, 3), x.mean(3, keepdim=True))


def test_ca_pool_max_differs_from_avg():
    torch.manual_seed(0)
    avg, mx = CoordAttn(16, pool="avg").eval(), CoordAttn(16, pool="max").eval()
    mx.load_state_dict(avg.state_dict())
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        assert (avg(x) - mx(x)).abs().max() > 1e-3
    torch.testing.assert_close(mx._pool(x, 3), x.amax(3, keepdim=True))


@pytest.mark.parametrize("bad", [dict(pool="median"), dict(act="tanh"), dict(gate="relu"),
                                 dict(directions="hv"), dict(norm="ln"), dict(reduction=0),
                                 dict(min_channels=0)])
def test_ca_bad_option_names_it(bad):
    (key, value), = bad.items()
    with pytest.raises(ValueError, match=key):
        CoordAttn(16, **bad)


@pytest.mark.parametrize("channels", [16, 96, 960])
def test_ca_param_count(channels):
    mip = max(8, channels // 32)
    expected = (channels * mip + mip) + 2 * mip + 2 * (mip * channels + channels)
    assert n_params(CoordAttn(channels)) == expected


@pytest.mark.parametrize("module_cls", [SEModule, CbamModule, EcaModule])
@pytest.mark.parametrize("shape", [(2, 64, 7, 5), (3, 256, 4, 4)])
def test_channel_attention_shape_and_finite(module_cls, shape):
    torch.manual_seed(0)
    m = module_cls(shape[1])
    x = torch.randn(shape, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("channels", [16, 96, 576])
def test_se_param_count(channels):
    mid = max(8, channels // 24)
    assert n_params(SEModule(channels)) == channels * mid + mid + mid * channels + channels


@pytest.mark.parametrize("channels", [16, 96, 576])
def test_cbam_param_count(channels):
    mid = max(8, channels // 24)
    channel_mlp = channels * mid + mid + mid * channels + channels
    spatial = 2 * 7 * 7 + 2  # conv(2 -> 1, 7x7, no bias) + BatchNorm(1) affine
    assert n_params(CbamModule(channels)) == channel_mlp + spatial
    assert n_params(CbamModule(channels, kernel_size=3)) == channel_mlp + 2 * 3 * 3 + 2


@pytest.mark.parametrize("channels, k", [(64, 3), (256, 5), (16, 3), (512, 5), (1024, 5), (2048, 7)])
def test_eca_kernel_size(channels, k):
    # k = odd(|log2(C)/2 + 1/2|): the value truncated, then bumped to odd.
    t = int(abs(math.log2(channels) / 2 + 0.5))
    assert (t if t % 2 else t + 1) == k
    assert eca_kernel_size(channels) == k
    m = EcaModule(channels)
    assert m.conv.kernel_size == (k,)
    assert n_params(m) == k  # one 1-D conv, no bias


def test_eca_fixed_kernel_and_bad_kernel():
    assert EcaModule(64, kernel_size=7).conv.kernel_size == (7,)
    with pytest.raises(ValueError, match="kernel_size"):
        EcaModule(64, kernel_size=4)


def test_channel_gates_are_constant_over_space():
    # SE and ECA scale whole channels: out / x is the same at every (h, w).
    torch.manual_seed(0)
    x = torch.rand(2, 32, 5, 6) + 0.5
    for m in (SEModule(32), EcaModule(32)):
        gate = _gate_of(m.eval(), x)
        assert gate.flatten(2).std(dim=2).max() < 1e-6
