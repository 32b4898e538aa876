"""Fused CPU path for Coordinate Attention's ``directions: hw`` / ``pool: avg`` training step.

CA's arithmetic is tiny (+3.8% multiply-adds on MobileNetV2), but its eager autograd graph
moves the big (N, C, H, W) tensor through memory about 16 times per block (two pooling
reads, gate product, output, input gradient, grad * x, two reductions, pooling backward and
the sum of the input-gradient branches). On CPU that traffic, not arithmetic, is CA's cost.

Here the whole CA forward is one ``torch.autograd.Function`` whose big-tensor passes are C++
kernels (``coord_cpu.cpp``, next to this file) and whose small middle part (conv1 -> norm ->
act -> conv_h / conv_w -> gate on (N, H+W, C)-sized tensors) stays ordinary PyTorch autograd:

* forward: one read of x gives the row and column means; the middle part runs under
  ``torch.enable_grad()`` on the detached means, keeping its small graph; one read of x and
  one write give ``out = x * a_w * a_h``.
* backward: one pass over grad and x gives the gate gradients
  ``ga_h = sum_w grad * x * a_w`` and ``ga_w = sum_h grad * x * a_h``; ``torch.autograd.grad``
  takes them through the small graph to the gradients of the means and of the module's
  parameters; one pass over grad writes
  ``grad_x = grad * a_h * a_w + g_xh / W + g_xw / H`` in x's memory format.

Seven full-tensor touches instead of ~16. Values equal the eager path's up to float32
round-off (tested), the middle part (and so the norm's running statistics) runs once per
forward, and parameter gradients reach ``.grad`` through ordinary autograd edges (the
parameters are inputs of the Function).

The extension is compiled on first use with ``torch.utils.cpp_extension.load`` (needs a C++
compiler and ninja; ~1 min once) and cached under ``$COORDSWEEP_CACHE/torch_extensions`` or
``~/.cache/coordsweep/torch_extensions``. If the build fails a warning is issued once and CA
uses its eager path. ``COORDSWEEP_CA_KERNEL=0`` disables the kernel. Prebuild (e.g. before
starting sweep workers) with
``python -c "from search_space.attention import _coord_cpu as k; assert k.load()"``.

The fused path is taken only in training-style calls (grad enabled, x requires grad) on
float32 CPU tensors in NCHW or channels_last memory, outside tracing / scripting /
``torch.compile`` / autocast; everything else (fvcore's traced FLOP count, eval, CUDA) runs
CoordAttn's plain PyTorch path. The backward is ``once_differentiable`` (no double backward).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

ENV_SWITCH = "COORDSWEEP_CA_KERNEL"
CACHE_ENV = "COORDSWEEP_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/coordsweep"
SOURCE = Path(__file__).with_name("coord_cpu.cpp")
EXT_NAME = "coordsweep_ca_cpu"
CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno"]
LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_ops = None  # torch.ops.coordsweep_ca once loaded
_failed: Optional[str] = None  # build/load error message, set once
build_seconds: Optional[float] = None  # time the last load() took in this process


def enabled() -> bool:
    """The kernel is wanted (``COORDSWEEP_CA_KERNEL`` is not ``0``)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def build_directory() -> Path:
    """Where the compiled extension is cached (one folder per Python and torch version)."""
    root = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}".replace("+", "_")
    return root / "torch_extensions" / tag / EXT_NAME


@contextlib.contextmanager
def _ninja_on_path():
    # The pip package `ninja` installs the binary next to the interpreter, which is not on PATH
    # when the venv is not activated.
    old = os.environ.get("PATH", "")
    try:
        import ninja  # type: ignore

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + old
    except ImportError:
        pass
    try:
        yield
    finally:
        os.environ["PATH"] = old


def _flock(f) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock file only
        return
    fcntl.flock(f, fcntl.LOCK_EX)


def load(verbose: bool = False):
    """Build (first time) and load the extension; return ``torch.ops.coordsweep_ca`` or None.

    Thread/process safe: concurrent sweep workers serialise on an ``flock`` (released by the
    OS if a builder dies, so a killed build never leaves the others waiting). A failure is
    reported once as a ``RuntimeWarning`` and remembered for the process."""
    if _ops is not None or _failed is not None:
        return _ops
    with _lock:
        if _ops is None and _failed is None:
            _load(verbose)
    return _ops


def _load(verbose: bool) -> None:
    global _ops, _failed, build_seconds
    t0 = time.perf_counter()
    try:
        from torch.utils.cpp_extension import load as load_ext

        bdir = build_directory()
        bdir.mkdir(parents=True, exist_ok=True)
        with open(bdir.parent / f"{EXT_NAME}.flock", "w") as lock, _ninja_on_path():
            _flock(lock)
            stale = bdir / "lock"  # torch's own baton; only a dead holder of our flock can leave it
            if stale.exists():
                stale.unlink()
            load_ext(EXT_NAME, [str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                     build_directory=str(bdir), is_python_module=False, verbose=verbose)
        _ops = torch.ops.coordsweep_ca
        _ops.pool_hw  # noqa: B018  (raises if the library did not register its ops)
    except Exception as e:  # no compiler, no ninja, read-only cache, ...
        msg = " ".join(str(e).split())
        _failed = f"{type(e).__name__}: {msg[:400]}{' ...' if len(msg) > 400 else ''}"
        _ops = None
        warnings.warn(f"CoordAttn: the fused CPU kernel is unavailable ({_failed}); using the eager "
                      f"path (set {ENV_SWITCH}=0 to silence)", RuntimeWarning, stacklevel=4)
    build_seconds = time.perf_counter() - t0


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def supported(x: torch.Tensor) -> bool:
    """x is a tensor the kernels handle: 4-D float32 CPU, NCHW-contiguous or channels_last."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and x.numel() > 0
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)))


def applies(x: torch.Tensor) -> bool:
    """Use the fused path for this call: enabled, a backward will follow, not tracing or
    compiling, no autocast, a supported tensor, and the extension loads."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or _compiling():
        return False  # before touching x: shape queries while tracing make TracerWarnings
    if not (enabled() and torch.is_grad_enabled() and x.requires_grad and supported(x)) or _autocast_on():
        return False
    return load() is not None


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - old torch
        return False


def _fmt(x: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if x.is_contiguous() else torch.channels_last


class _CoordHW(torch.autograd.Function):
    """``x * a_w * a_h`` with (a_h, a_w) = gates(row/column means of x), fused as described in
    the module docstring. ``params``: the tensors requiring grad that ``gates`` uses."""

    @staticmethod
    def forward(ctx, x, gates, *params):
        ops = _ops
        pooled = ops.pool_hw(x)  # (N, H+W, C)
        with torch.enable_grad():
            pooled = pooled.detach().requires_grad_(True)
            a_h, a_w = gates(pooled)  # (N, H, C), (N, W, C) with the small graph attached
            a_h, a_w = a_h.to(x.dtype), a_w.to(x.dtype)
        out = ops.gate_hw(x, a_h.detach(), a_w.detach())
        # Saved (not ctx attributes) so that the small graph lives exactly as long as the outer
        # graph's saved tensors: freed after a plain backward, kept with retain_graph=True.
        ctx.save_for_backward(x, pooled, a_h, a_w, *params)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        ops = _ops
        x, pooled, a_h, a_w, *params = ctx.saved_tensors
        if not grad.is_contiguous(memory_format=_fmt(x)):
            grad = grad.contiguous(memory_format=_fmt(x))
        ah, aw = a_h.detach(), a_w.detach()
        ga_h, ga_w = ops.gate_hw_backward(grad, x, ah, aw)
        want = [i for i, _ in enumerate(params) if ctx.needs_input_grad[2 + i]]
        need_x = ctx.needs_input_grad[0]
        inputs = ([pooled] if need_x else []) + [params[i] for i in want]
        grads = list(torch.autograd.grad((a_h, a_w), inputs, (ga_h, ga_w), retain_graph=True,
                                         allow_unused=True)) if inputs else []
        grad_x = ops.input_grad_hw(grad, ah, aw, grads.pop(0)) if need_x else None
        grad_params = [None] * len(params)
        for i, g in zip(want, grads):
            grad_params[i] = g
        return (grad_x, None, *grad_params)


def coord_hw(x: torch.Tensor, gates: Callable[[torch.Tensor], tuple], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Fused CA (directions hw, avg pooling) on a tensor for which :func:`applies` is true.

    Args:
        x: (N, C, H, W) float32 CPU tensor, NCHW-contiguous or channels_last.
        gates: maps the pooled descriptors (N, H+W, C) (rows first, then columns) to the gates
            ``(a_h (N, H, C), a_w (N, W, C))`` with ordinary differentiable PyTorch ops.
        params: every tensor requiring grad that ``gates`` reads (the module's parameters).

    Returns:
        ``x * a_w * a_h`` broadcast to x's shape, in x's memory format.
    """
    return _CoordHW.apply(x, gates, *[p for p in params if p.requires_grad])

