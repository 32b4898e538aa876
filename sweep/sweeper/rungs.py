"""A rung-based early-stopping scheduler for (accuracy, cost) sweeps, in the spirit of MO-ASHA
(Schmucker, Donini, Zafar, Salinas, Archambeau, 2021, "Multi-objective Asynchronous Successive
Halving", https://arxiv.org/abs/2106.12639). Optuna's pruners handle one objective only.

Rungs are at ``min_epochs * eta**k`` epochs (1, 3, 9, ... for ``min_epochs=1, eta=3``); a rung at
or beyond ``max_epochs`` (the trials' full budget, ``train.epochs``) stops nothing. When a
trial finishes a rung epoch its hooks store ``(accuracy, cost)`` at that rung in the trial's
system attrs (``coordsweep:rung:<epoch>``), then rank it among *every* trial of the study that
reached the rung (running, complete or stopped; any worker, any earlier run: the state lives in
the storage, so workers share it and a resumed sweep keeps it; FAILed trials are left out, their
retries count instead). The trial continues only if it
is among the top ``max(1, n // eta)`` of the ``n`` trials at the rung (asynchronous successive
halving: early arrivals are judged against the trials seen so far, as Optuna's
``SuccessiveHalvingPruner`` does; a lone trial continues).

Ranking: non-dominated sorting of (accuracy maximized, cost minimized) into fronts; fronts in
order; inside a front by crowding distance (larger first, NSGA-II), then by accuracy (higher
first), then by trial number (earlier first) so the order is total and deterministic.
Ties: a trial whose accuracy is within ``min_spread`` (default 0: exactly equal) of the best at
the rung always continues. Without this, a rung where every trial is still at chance ranks by
cost alone and stops every expensive configuration (measured: bench/RESULTS.md, issue 6).

A stopped trial ends with ``status: pruned`` and is stored as Optuna PRUNED with its metrics at
the last epoch it ran (``epochs_run``, accuracy, cost in user attrs), so reports list it with its
fidelity; PRUNED trials are never on the Pareto front of COMPLETE trials.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from search_space.config import ConfigError
from sweep import hooks

RUNG_ATTR = "coordsweep:rung:"
SCHEDULERS = ("none", "mo_asha")


def check_scheduler(conf: Mapping[str, Any], objectives: Sequence[str]) -> Dict[str, Any]:
    """Validate ``hydra.sweeper.scheduler`` and return it as a plain dict with defaults."""
    out = {"name": "none", "min_epochs": 1, "eta": 3, "metric": "val_top1", "cost": "madds",
           "max_epochs": None, "min_spread": 0.0}
    out.update({k: v for k, v in dict(conf or {}).items()})
    unknown = sorted(set(out) - {"name", "min_epochs", "eta", "metric", "cost", "max_epochs", "min_spread"})
    if unknown:
        raise ConfigError(f"hydra.sweeper.scheduler: unknown key(s) {unknown}; allowed: name, "
                          f"min_epochs, eta, metric, cost, max_epochs, min_spread")
    out["name"] = str(out["name"]).lower()
    if out["name"] not in SCHEDULERS:
        raise ConfigError(f"hydra.sweeper.scheduler.name={out['name']!r} is unknown; allowed: "
                          f"{', '.join(SCHEDULERS)}")
    for key, low in (("min_epochs", 1), ("eta", 2)):
        try:
            out[key] = int(out[key])
        except (TypeError, ValueError):
            raise ConfigError(f"hydra.sweeper.scheduler.{key}={out[key]!r} must be an integer "
                              f">= {low}") from None
        if out[key] < low:
            raise ConfigError(f"hydra.sweeper.scheduler.{key}={out[key]} must be >= {low}")
    bad = ConfigError(f"hydra.sweeper.scheduler.min_spread={out['min_spread']!r} must be a number >= 0 "
                      f"(metric units, e.g. val top-1 points)")
    try:
        out["min_spread"] = float(out["min_spread"] if out["min_spread"] is not None else 0.0)
    except (TypeError, ValueError):
        raise bad from None
    if not out["min_spread"] >= 0:
        raise bad
    if out["max_epochs"] is not None:
        try:
            out["max_epochs"] = int(out["max_epochs"])
        except (TypeError, ValueError):
            raise ConfigError(f"hydra.sweeper.scheduler.max_epochs={out['max_epochs']!r} must be "
                              f"an integer (the trials' full budget) or null") from None
    return out


def rung_epochs(min_epochs: int, eta: int, max_epochs: int = 10 ** 6) -> List[int]:
    """Rung epochs ``min_epochs * eta**k`` up to ``max_epochs``."""
    out, r = [], int(min_epochs)
    while r <= max_epochs:
        out.append(r)
        r *= int(eta)
    return out


def is_rung(epoch: int, min_epochs: int, eta: int) -> bool:
    """True when ``epoch`` is ``min_epochs * eta**k`` for some k >= 0."""
    r = int(min_epochs)
    while r < epoch:
        r *= int(eta)
    return r == epoch


def non_dominated_fronts(points: Sequence[Sequence[float]]) -> List[List[int]]:
    """Fronts (lists of indices) of ``points`` to *minimize* in every coordinate: front 0 is
    the non-dominated set, front 1 the non-dominated set of the rest, and so on."""
    n = len(points)
    dominated_by = [0] * n
    dominates: List[List[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            a, b = points[i], points[j]
            a_le = all(x <= y for x, y in zip(a, b))
            b_le = all(y <= x for x, y in zip(a, b))
            if a_le and not b_le:
                dominates[i].append(j)
                dominated_by[j] += 1
            elif b_le and not a_le:
                dominates[j].append(i)
                dominated_by[i] += 1
    fronts, current = [], [i for i in range(n) if dominated_by[i] == 0]
    while current:
        fronts.append(current)
        nxt = []
        for i in current:
            for j in dominates[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    nxt.append(j)
        current = sorted(nxt)
    return fronts


def crowding_distance(points: Sequence[Sequence[float]]) -> List[float]:
    """NSGA-II crowding distance of each point within one front (boundary points: inf)."""
    n = len(points)
    if n <= 2:
        return [math.inf] * n
    dist = [0.0] * n
    for m in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][m])
        lo, hi = points[order[0]][m], points[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for k in range(1, n - 1):
            dist[order[k]] += (points[order[k + 1]][m] - points[order[k - 1]][m]) / (hi - lo)
    return dist


def rank_trials(entries: Sequence[Tuple[int, float, float]], maximize_metric: bool = True,
                minimize_cost: bool = True) -> List[int]:
    """Order trials best first by non-dominated sorting of (metric, cost).

    Args:
        entries: ``(trial number, metric, cost)`` of the trials at one rung.
        maximize_metric: the metric is better when higher.
        minimize_cost: the cost is better when lower.

    Returns:
        Trial numbers, best first (fronts in order; in a front by crowding distance, larger
        first, then metric, then trial number).
    """
    pts = [((-m if maximize_metric else m), (c if minimize_cost else -c)) for _, m, c in entries]
    order: List[int] = []
    for front in non_dominated_fronts(pts):
        cd = crowding_distance([pts[i] for i in front])
        ranked = sorted(zip(front, cd), key=lambda p: (-p[1], pts[p[0]][0], entries[p[0]][0]))
        order.extend(entries[i][0] for i, _ in ranked)
    return order


def keeps(number: int, entries: Sequence[Tuple[int, float, float]], eta: int,
          maximize_metric: bool = True, minimize_cost: bool = True, min_spread: float = 0.0) -> bool:
    """Whether trial ``number`` continues past a rung: it ranks in the top ``max(1, n // eta)``
    of the ``n`` trials at the rung (``entries`` must include it), or its metric is within
    ``min_spread`` of the best metric at the rung: cost alone never stops a trial that the metric
    cannot tell apart from the best (e.g. every trial still at chance accuracy after one epoch,
    where a plain non-dominated sort would keep just the cheapest)."""
    values = {n: v for n, v, _ in entries}
    best = max(values.values()) if maximize_metric else min(values.values())
    if abs(values[number] - best) <= min_spread:
        return True
    order = rank_trials(entries, maximize_metric, minimize_cost)
    return order.index(number) < max(1, len(order) // int(eta))


class RungHooks(hooks.TrialHooks):
    """Per-epoch hooks of a worker's trial with the rung scheduler (after ``inner``'s report).

    Reads the metric and the cost from each epoch's record; a record without the cost is an
    error (the trial reports it: ``sweep.trial`` puts ``madds`` and ``params`` in every record).
    """

    def __init__(self, study, trial, conf: Mapping[str, Any], objectives: Sequence[str],
                 directions: Sequence[str], inner: Optional[hooks.TrialHooks] = None) -> None:
        self.study, self.trial, self.conf, self.inner = study, trial, dict(conf), inner
        dirs = dict(zip(objectives, directions))
        self.metric, self.cost = str(conf["metric"]), conf.get("cost")
        self.maximize_metric = dirs.get(self.metric, "maximize") == "maximize"
        self.minimize_cost = dirs.get(self.cost, "minimize") == "minimize"

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        stop = bool(self.inner.report(epoch, metrics)) if self.inner is not None else False
        if stop or not is_rung(epoch, self.conf["min_epochs"], self.conf["eta"]):
            return stop
        if self.metric not in metrics:
            raise KeyError(f"hydra.sweeper.scheduler.metric={self.metric!r} is not in the epoch "
                           f"record (keys: {', '.join(map(str, metrics))})")
        value = float(metrics[self.metric])
        if self.cost is None:
            cost = 0.0
        elif self.cost in metrics:
            cost = float(metrics[self.cost])
        else:
            raise KeyError(f"hydra.sweeper.scheduler.cost={self.cost!r} is not in the epoch "
                           f"record (keys: {', '.join(map(str, metrics))}); the trial must report "
                           f"its cost every epoch (or set scheduler.cost: null)")
        if not math.isfinite(value):
            return True
        storage = self.study._storage
        key = f"{RUNG_ATTR}{int(epoch)}"
        storage.set_trial_system_attr(self.trial._trial_id, key, [value, cost])
        if self.conf.get("max_epochs") and epoch >= self.conf["max_epochs"]:
            return False  # the full budget: the trial completes (nothing left to save)
        entries = []
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.FAIL and t.number != self.trial.number:
                continue  # a failed trial is retried as a new trial: count its config once
            v = t.system_attrs.get(key)
            if t.number == self.trial.number:
                v = [value, cost]
            if isinstance(v, (list, tuple)) and len(v) == 2:
                entries.append((t.number, float(v[0]), float(v[1])))
        keep = keeps(self.trial.number, entries, self.conf["eta"], self.maximize_metric,
                     self.minimize_cost, self.conf["min_spread"])
        if not keep:
            self.trial.set_user_attr("stopped_at_rung", int(epoch))
        return not keep
