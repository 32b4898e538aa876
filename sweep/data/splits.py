"""Stratified, seeded subsets: validation carved from the training pool, train from the rest.

Each class's indices are permuted once by ``split_seed``; the validation split takes the first
``v_c`` of class ``c``, the training split the next ``t_c``. Per-class counts are proportional to
the class sizes (largest remainder, ties to the lower class index). Consequences: train and val
are disjoint by construction, the validation split does not depend on ``train_size``, and a
smaller training subset is contained in a larger one.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

# fixed salts so that the pool split and the test subset use unrelated streams
_SALT = {"pool": 0x5EED_0001, "test": 0x5EED_0002}


def allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """Split ``n`` over classes proportionally to ``counts`` (largest remainder); never above ``counts``."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    if not 0 <= n <= total:
        raise ValueError(f"cannot take {n} of {total}")
    if total == 0:
        return counts.copy()
    quotas = counts * (n / total)
    base = np.floor(quotas).astype(np.int64)
    frac = quotas - base
    order = np.lexsort((np.arange(len(counts)), -frac))  # largest fraction first, then class index
    base[order[: n - int(base.sum())]] += 1
    return np.minimum(base, counts)


def _class_perms(labels: np.ndarray, num_classes: int, seed: int, salt: int):
    rng = np.random.default_rng(np.random.SeedSequence([seed, salt]))
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def split_pool(labels: np.ndarray, num_classes: int, val_size: int, train_size: Optional[int],
               seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Disjoint stratified ``(train, val)`` indices into the training pool (each sorted).

    Args:
        labels: int labels of the pool.
        num_classes: number of classes.
        val_size: validation images.
        train_size: training images from what is left; ``None`` = all of it.
        seed: ``split_seed``.
    """
    perms = _class_perms(labels, num_classes, seed, _SALT["pool"])
    counts = np.array([len(p) for p in perms])
    v = allocate(counts, val_size)
    left = counts - v
    t = allocate(left, int(left.sum()) if train_size is None else train_size)
    val = np.concatenate([p[:k] for p, k in zip(perms, v)] + [np.empty(0, np.int64)])
    train = np.concatenate([p[a:a + k] for p, a, k in zip(perms, v, t)] + [np.empty(0, np.int64)])
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64)


def subset(labels: np.ndarray, num_classes: int, size: Optional[int], seed: int) -> np.ndarray:
    """Stratified ``size`` indices (sorted) of ``labels``; ``None`` = all."""
    if size is None or size >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    perms = _class_perms(labels, num_classes, seed, _SALT["test"])
    k = allocate(np.array([len(p) for p in perms]), size)
    return np.sort(np.concatenate([p[:n] for p, n in zip(perms, k)])).astype(np.int64)
