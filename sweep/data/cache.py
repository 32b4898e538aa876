"""On-disk cache of decoded uint8 tensors.

An entry is one ``torch.save`` file ``<cache_dir>/<tag>-<key[:20]>.pt`` holding ``images`` (uint8
(N, 3, H, W)), ``labels`` (int64 (N,)) and a small ``meta`` dict. The key is a SHA-256 of a JSON
description of the source (file names, sizes and mtimes, or the generator's parameters) and of
the decode transform, plus ``CACHE_VERSION``; any change to either gives a new entry. Entries are
written to a temporary file in the same directory and renamed into place, so concurrent workers
never read a half-written file (two workers missing at once both decode; the last rename wins,
with identical content). Loading uses ``torch.load(weights_only=True)``: no code runs on load.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch

# bump when the layout of an entry or any decode step changes
CACHE_VERSION = 1


def cache_key(description: dict) -> str:
    """SHA-256 hex digest of ``description`` (JSON, sorted keys) and ``CACHE_VERSION``."""
    blob = json.dumps({"cache_version": CACHE_VERSION, **description}, sort_keys=True, default=_jsonable)
    return hashlib.sha256(blob.encode()).hexdigest()


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def cached(cache_dir: Optional[Path], tag: str, description: dict,
           build: Callable[[], dict]) -> Tuple[dict, bool, Optional[Path]]:
    """Load the entry for ``description`` or ``build()`` it and store it.

    Args:
        cache_dir: directory of the cache; ``None`` = no cache (always build).
        tag: readable file-name prefix, e.g. ``cifar10-train``.
        description: everything the content depends on (hashed into the key).
        build: returns ``{"images": uint8 tensor, "labels": int64 tensor, "meta": dict}``.

    Returns:
        ``(entry, hit, path)``.
    """
    if cache_dir is None:
        return build(), False, None
    path = Path(cache_dir) / f"{tag}-{cache_key(description)[:20]}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True), True, path
        except Exception as e:  # a damaged entry is rebuilt, not fatal
            warnings.warn(f"ignoring unreadable cache entry {path} ({type(e).__name__}: {e}); rebuilding",
                          stacklevel=2)
    entry = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(entry, f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:  # read-only or full disk: run without the cache
        warnings.warn(f"cannot write the data cache {path} ({e}); continuing without it", stacklevel=2)
        return entry, False, None
    return entry, False, path
