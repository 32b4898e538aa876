"""Accuracy-cost Pareto fronts over configurations, with the uncertainty of each point.

Each configuration is a point (mean accuracy over seeds, mean cost); the front is the set of
points no other point beats on both axes (accuracy up, cost down). Because a mean over a few
seeds is uncertain, a configuration off the front is marked *possibly optimal* when its 95%
interval reaches the front: it is ruled out only if a front point with lower-or-equal cost has
a mean accuracy at or above the configuration's upper bound.

The hypervolume (area dominated by the front up to a stated reference point) summarizes a
front in one number; ``hypervolume_2d`` computes it exactly in O(n log n) (Optuna's helper is
private: ``optuna._hypervolume``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

__all__ = ["COST_AXES", "pareto_mask", "hypervolume_2d", "possibly_optimal", "ParetoFront",
           "pareto_front"]

# cost column -> (axis label, unit, divisor to that unit)
COST_AXES: Dict[str, Tuple[str, str, float]] = {
    "madds": ("multiply-adds", "M madds", 1e6),
    "params": ("parameters", "M params", 1e6),
    "latency_ms": ("latency (batch 1)", "ms", 1.0),
}


def pareto_mask(accuracy: Sequence[float], cost: Sequence[float]) -> np.ndarray:
    """Non-dominated points when maximizing accuracy and minimizing cost.

    A point is dominated when another has accuracy >= and cost <= with one strict. Equal
    points are both kept; points with a NaN coordinate are never on the front.

    Example: ``pareto_mask([1, 2, 1.5], [1, 2, 3])`` -> ``[True, True, False]``.
    """
    acc, c = np.asarray(accuracy, dtype=float), np.asarray(cost, dtype=float)
    ok = np.isfinite(acc) & np.isfinite(c)
    mask = np.zeros(len(acc), dtype=bool)
    idx = np.flatnonzero(ok)
    # sort by cost ascending, then accuracy descending; a point is on the front when its
    # accuracy beats every cheaper point's (ties in both coordinates survive together)
    order = idx[np.lexsort((-acc[idx], c[idx]))]
    best = -math.inf
    best_cost = math.nan
    for i in order:
        if acc[i] > best or (acc[i] == best and c[i] == best_cost):
            mask[i] = True
            if acc[i] > best:
                best, best_cost = acc[i], c[i]
    return mask


def hypervolume_2d(accuracy: Sequence[float], cost: Sequence[float],
                   reference: Tuple[float, float]) -> float:
    """Exact area dominated by the points and bounded by ``reference = (accuracy, cost)``.

    Only points better than the reference on both axes count (accuracy above it, cost below).

    Example: points (acc, cost) = (2, 1) and (3, 2) with reference (0, 4) dominate the union
    of cost [1, 4] x acc [0, 2] and cost [2, 4] x acc [0, 3]: 6 + 6 - 4 = 8, so
    ``hypervolume_2d([2, 3], [1, 2], (0, 4)) == 8``.
    """
    acc, c = np.asarray(accuracy, dtype=float), np.asarray(cost, dtype=float)
    r_acc, r_cost = float(reference[0]), float(reference[1])
    ok = np.isfinite(acc) & np.isfinite(c) & (acc > r_acc) & (c < r_cost)
    acc, c = acc[ok], c[ok]
    order = np.lexsort((-acc, c))
    area, best = 0.0, r_acc
    for i in order:  # cost ascending: each better point adds a slab [cost, r_cost] x [best, acc]
        if acc[i] > best:
            area += (r_cost - c[i]) * (acc[i] - best)
            best = acc[i]
    return float(area)


def possibly_optimal(mean: Sequence[float], upper: Sequence[float], cost: Sequence[float],
                     on_front: Sequence[bool]) -> np.ndarray:
    """Whether each point may be on the true front given its accuracy interval.

    Front points are. Another point is not when some front point with cost <= its cost has a
    mean accuracy >= its upper bound (NaN upper bound: the mean is used).
    """
    m, u, c = (np.asarray(x, dtype=float) for x in (mean, upper, cost))
    front = np.asarray(on_front, dtype=bool)
    u = np.where(np.isfinite(u), u, m)
    out = front.copy()
    fi = np.flatnonzero(front)
    for i in np.flatnonzero(~front):
        if not (np.isfinite(m[i]) and np.isfinite(c[i])):
            continue
        out[i] = not np.any((c[fi] <= c[i]) & (m[fi] >= u[i]))
    return out


@dataclass
class ParetoFront:
    """The front on one cost axis.

    Attributes:
        axis: cost column (``madds``, ``params``, ``latency_ms``).
        unit: display unit of ``table['cost']`` (e.g. ``M madds``).
        accuracy: accuracy metric (percent).
        table: one row per configuration with a complete trial: config_id, config, label,
            n (seeds), cost (in ``unit``), mean, lo, hi (95% t-interval), on_front,
            possibly_optimal; sorted by cost.
        hypervolume: area dominated by the front (accuracy points x ``unit``).
        reference: (accuracy, cost in ``unit``) reference point of the hypervolume.
        reference_note: how the reference point was chosen.
    """
    axis: str
    unit: str
    accuracy: str
    table: pd.DataFrame
    hypervolume: float = math.nan
    reference: Tuple[float, float] = (math.nan, math.nan)
    reference_note: str = ""

    @property
    def front(self) -> pd.DataFrame:
        return self.table[self.table["on_front"]]


def pareto_front(configs: pd.DataFrame, accuracy: str, axis: str, *,
                 chance: Optional[float] = None) -> ParetoFront:
    """The front of ``configs`` (``Results.configs``) on ``axis`` with intervals and hypervolume.

    The hypervolume's reference point is (chance accuracy, or the lowest mean when chance is
    unknown; 1.1 x the largest cost).

    Args:
        configs: one row per configuration with ``<accuracy>_mean/_lo/_hi`` and the cost column.
        accuracy: accuracy metric name.
        axis: a key of ``COST_AXES``.
        chance: chance-level accuracy in percent.
    """
    _, unit, scale = COST_AXES[axis]
    cols = ["config_id", "config", "label", "n_seeds", f"{accuracy}_mean", f"{accuracy}_lo",
            f"{accuracy}_hi", axis]
    empty = pd.DataFrame(columns=["config_id", "config", "label", "n", "cost", "mean", "lo", "hi",
                                  "on_front", "possibly_optimal"])
    if configs.empty or f"{accuracy}_mean" not in configs.columns or configs[f"{accuracy}_mean"].isna().all():
        return ParetoFront(axis, unit, accuracy, empty, reference_note="no configuration has completed yet")
    if axis not in configs.columns or configs[axis].isna().all():
        return ParetoFront(axis, unit, accuracy, empty,
                           reference_note=f"not recorded by these trials (no '{axis}' metric)")
    t = configs[[c for c in cols if c in configs.columns]].copy()
    t = t.rename(columns={"n_seeds": "n", f"{accuracy}_mean": "mean", f"{accuracy}_lo": "lo",
                          f"{accuracy}_hi": "hi", axis: "cost"})
    t["cost"] = t["cost"] / scale
    t = t[np.isfinite(t["mean"].astype(float)) & np.isfinite(t["cost"].astype(float))]
    t = t.sort_values(["cost", "mean"], ascending=[True, False]).reset_index(drop=True)
    t["on_front"] = pareto_mask(t["mean"], t["cost"])
    t["possibly_optimal"] = possibly_optimal(t["mean"], t["hi"], t["cost"], t["on_front"])
    if t.empty:
        return ParetoFront(axis, unit, accuracy, t,
                           reference_note="no configuration has both accuracy and this cost")
    if chance is not None:
        r_acc, note_acc = float(chance), f"chance accuracy {chance:.3g}%"
    else:
        r_acc, note_acc = float(t["mean"].min()), "the lowest mean accuracy"
    r_cost = 1.1 * float(t["cost"].max())
    hv = hypervolume_2d(t["mean"], t["cost"], (r_acc, r_cost))
    note = (f"reference point ({r_acc:.4g}% {accuracy}, {r_cost:.4g} {unit}) = ({note_acc}, "
            f"1.1 x the largest cost); hypervolume in points x {unit}")
    return ParetoFront(axis, unit, accuracy, t, hypervolume=hv, reference=(r_acc, r_cost),
                       reference_note=note)
