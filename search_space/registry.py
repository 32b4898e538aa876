"""A registry of named builders per kind (``attention``, ``model``), in the spirit of timm's
``register_model`` / ``create_attn``: one dict per kind, unknown names raise ``KeyError``
listing the valid ones."""
from __future__ import annotations

import warnings
from typing import Callable, Dict

_REGISTRY: Dict[str, Dict[str, Callable]] = {}


def register(kind: str, name: str | None = None):
    """Decorator: register ``fn`` (a class or factory) under ``kind``/``name`` (default: its
    ``NAME`` attribute or ``__name__``)."""

    def deco(fn):
        key = name or getattr(fn, "NAME", None) or fn.__name__
        table = _REGISTRY.setdefault(kind, {})
        if key in table and table[key] is not fn:
            warnings.warn(f"{kind} {key!r} registered twice; the later one wins", stacklevel=2)
        table[key] = fn
        return fn

    return deco


def names(kind: str) -> list[str]:
    """Registered names of ``kind`` in registration order."""
    _load_builtin()
    return list(_REGISTRY.get(kind, {}))


def get(kind: str, name: str) -> Callable:
    """The builder registered as ``kind``/``name``; ``KeyError`` naming the valid names."""
    _load_builtin()
    table = _REGISTRY.get(kind, {})
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; allowed: {', '.join(table) or '(none)'}")
    return table[name]


def _load_builtin() -> None:
    # Importing the packages runs their @register decorators.
    from search_space import attention, mobilenetv2  # noqa: F401
