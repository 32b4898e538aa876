"""Build-on-first-use loader for the project's small C++ CPU kernels (one per ``.cpp`` file).

Each kernel file registers its ops with ``TORCH_LIBRARY(<namespace>, ...)``; :class:`CppExtension`
compiles it with ``torch.utils.cpp_extension.load`` (needs a C++ compiler and ninja) into a cache
directory keyed by Python and torch version — ``$COORDSWEEP_CACHE/torch_extensions`` or
``~/.cache/coordsweep/torch_extensions`` — and hands back ``torch.ops.<namespace>``. Concurrent
sweep workers serialise on an ``flock`` (released by the OS if a builder dies, so a killed build
never leaves the others waiting). A failure (no compiler, read-only cache, ...) is reported once
as a ``RuntimeWarning`` and remembered for the process; callers then use their eager path.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

CACHE_ENV = "COORDSWEEP_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/coordsweep"
# -ffp-contract=off: a * b + c is rounded twice in every code path (vector body, scalar tail, each
# kernel), so kernels that recompute the same value (e.g. the ReLU6 mask) agree bit for bit.
CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=off"]
LDFLAGS = ["-fopenmp"]


def switched_on(env_var: str) -> bool:
    """A kernel switch environment variable is unset or not one of 0/false/no/off."""
    return os.environ.get(env_var, "1").strip().lower() not in ("0", "false", "no", "off")


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


class CppExtension:
    """One kernel source file, compiled and loaded at most once per process.

    Args:
        name: extension (library) name, also the cache sub-directory.
        source: the ``.cpp`` file.
        namespace: the ``TORCH_LIBRARY`` namespace it registers.
        probe: one op name that must exist after loading.
        label: who uses it, for the warning text (e.g. ``"CoordAttn"``).
        switch: the environment variable that disables it (named in the warning).
    """

    def __init__(self, name: str, source: Path, namespace: str, probe: str, label: str, switch: str):
        self.name, self.source, self.namespace, self.probe = name, Path(source), namespace, probe
        self.label, self.switch = label, switch
        self.ops = None  # torch.ops.<namespace> once loaded
        self.failed: Optional[str] = None  # build/load error message, set once
        self.build_seconds: Optional[float] = None  # time the last load() took in this process
        self._lock = threading.Lock()

    def build_directory(self) -> Path:
        """Where the compiled extension is cached (one folder per Python and torch version)."""
        root = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()
        tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}".replace("+", "_")
        return root / "torch_extensions" / tag / self.name

    def load(self, verbose: bool = False):
        """Build (first time) and load; return ``torch.ops.<namespace>`` or None if unavailable."""
        if self.ops is not None or self.failed is not None:
            return self.ops
        with self._lock:
            if self.ops is None and self.failed is None:
                self._load(verbose)
        return self.ops

    def _load(self, verbose: bool) -> None:
        t0 = time.perf_counter()
        try:
            from torch.utils.cpp_extension import load as load_ext

            bdir = self.build_directory()
            bdir.mkdir(parents=True, exist_ok=True)
            with open(bdir.parent / f"{self.name}.flock", "w") as lock, _ninja_on_path():
                _flock(lock)
                stale = bdir / "lock"  # torch's own baton; only a dead holder of our flock can leave it
                if stale.exists():
                    stale.unlink()
                load_ext(self.name, [str(self.source)], extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                         build_directory=str(bdir), is_python_module=False, verbose=verbose)
            ops = getattr(torch.ops, self.namespace)
            getattr(ops, self.probe)  # raises if the library did not register its ops
            self.ops = ops
        except Exception as e:  # no compiler, no ninja, read-only cache, ...
            msg = " ".join(str(e).split())
            self.failed = f"{type(e).__name__}: {msg[:400]}{' ...' if len(msg) > 400 else ''}"
            self.ops = None
            warnings.warn(f"{self.label}: the fused CPU kernel is unavailable ({self.failed}); using the "
                          f"eager path (set {self.switch}=0 to silence)", RuntimeWarning, stacklevel=5)
        self.build_seconds = time.perf_counter() - t0


def cpu_float32_4d(x: torch.Tensor, channels_last_only: bool = False) -> bool:
    """x is a non-empty 4-D float32 CPU tensor in channels_last memory (or, unless
    ``channels_last_only``, NCHW-contiguous): the layouts the kernels handle."""
    if not (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and x.numel() > 0):
        return False
    return x.is_contiguous(memory_format=torch.channels_last) or (not channels_last_only and x.is_contiguous())


def autocast_on() -> bool:
    """CPU autocast is active (the kernels are float32-only)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def compiling_or_tracing() -> bool:
    """Inside ``torch.jit`` tracing/scripting or ``torch.compile``: use plain aten ops."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - old torch
        return False
