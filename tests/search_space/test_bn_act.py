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
