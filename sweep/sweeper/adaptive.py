"""Adaptive repeats: extra paired seeds only for configurations whose 95 % interval overlaps the
current Pareto front (issue 6, ``hydra.sweeper.adaptive_repeats``).

With ``repeats: k`` every configuration trains seeds ``0..k-1`` in one trial
(``worker._run_repeats``). With ``adaptive_repeats: {max_repeats: K}`` (K > k) a worker that has nothing else to do (budget
used, no queued trial) looks at every configuration with a COMPLETE trial: it merges the
per-seed metrics of all the configuration's trials (``seed_metrics``; copies made by
``reuse_completed`` are left out), computes per objective the mean and the 95 % Student-t
interval (``worker.summarize_seeds``), and the Pareto front of the means (feasible
configurations only, when there are constraints). A configuration is *clearly dominated* when
some front configuration, taken at the pessimistic end of its intervals, still dominates it
taken at its optimistic end; every other configuration *overlaps* the front (front
configurations always do; with one objective: its interval overlaps the best configuration's).
Each overlapping configuration with fewer than K seeds gets one *extra-seed trial* that trains
the missing seeds ``k..K-1`` (the same seeds for every configuration: common random numbers)
and tells Optuna the mean over all the configuration's seeds.

Extra-seed trials are ordinary queued Optuna trials (``fixed_params`` = the configuration, system
attr ``EXTRA`` = what to run and why), so any worker of any machine sharing the storage runs
them, and they do not use the ``n_trials`` budget. The decision is repeated whenever a worker
is idle, so a configuration that comes to overlap the front later (the front moved as trials or
extra seeds finished) gets its seeds then. Nothing is queued for a configuration while its
extra-seed trial waits or runs, seeds that finished are never missing, and seeds of an
extra-seed trial that failed (after its retries, ``hydra.sweeper.max_retry``) are not queued
again: a resumed sweep never trains finished extra seeds again, and a resume with a larger
``max_repeats`` queues only the new seeds. Two workers deciding at the same moment may queue
the same extra seeds twice; the later trial (higher number) is then skipped without training
(``earlier_duplicate``). On SQLite and journal files the decision runs under a file lock, so
this rarely happens.

Every decision is also stored as study user attr ``adaptive_repeats`` (which configurations are
on the front, which got extra seeds, which are clearly dominated and by whom), and each
extra-seed trial carries user attrs ``extra_seeds_of`` (the configuration's first trial) and
``extra_seeds_reason``. Analysis (``analysis.results``) merges the seeds by configuration.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from search_space.config import ConfigError

log = logging.getLogger(__name__)

# System attr of an extra-seed trial: {"parent", "params", "seeds", "reason"}. Deliberately not
# under the "coordsweep:" prefix: ``storage.RetryCallback`` drops those keys from the copy it
# queues when a worker dies, and the retry must still be the same extra-seed trial.
EXTRA = "adaptive_repeats"
# Study user attr: the latest decision (see ``record_decision``).
DECISION = "adaptive_repeats"
CONFIDENCE = 0.95


def check_adaptive(conf: Any, repeats: int) -> int:
    """Validate ``hydra.sweeper.adaptive_repeats``; return ``max_repeats`` (0 = off).

    Args:
        conf: the option's value: null, or a mapping with ``max_repeats`` (null/0 = off).
        repeats: ``hydra.sweeper.repeats`` (already validated, >= 1).

    Raises:
        ConfigError: naming the key and the allowed values.
    """
    if conf is None:
        return 0
    if not isinstance(conf, Mapping):
        raise ConfigError(f"hydra.sweeper.adaptive_repeats={conf!r} must be null or a mapping "
                          f"{{max_repeats: K}} (K > hydra.sweeper.repeats, or null/0 = off)")
    unknown = sorted(set(conf) - {"max_repeats"})
    if unknown:
        raise ConfigError(f"hydra.sweeper.adaptive_repeats: unknown key(s) {unknown}; allowed: "
                          f"max_repeats")
    k = conf.get("max_repeats")
    if k is None:
        return 0
    allowed = (f"an integer > hydra.sweeper.repeats (={repeats}): the total number of seeds of "
               f"a configuration that overlaps the front, or null/0 (off)")
    if isinstance(k, bool) or not isinstance(k, int):
        try:
            if isinstance(k, bool) or float(k) != int(float(k)):
                raise ValueError
            k = int(float(k))
        except (TypeError, ValueError):
            raise ConfigError(f"hydra.sweeper.adaptive_repeats.max_repeats={k!r} must be "
                              f"{allowed}") from None
    if k == 0:
        return 0
    if k < 0:
        raise ConfigError(f"hydra.sweeper.adaptive_repeats.max_repeats={k} must be {allowed}")
    if repeats < 2:
        raise ConfigError(f"hydra.sweeper.adaptive_repeats.max_repeats={k} needs "
                          f"hydra.sweeper.repeats >= 2 (an interval needs two seeds), not "
                          f"repeats={repeats}; set repeats: 2 or more, or max_repeats: null")
    if k <= repeats:
        raise ConfigError(f"hydra.sweeper.adaptive_repeats.max_repeats={k} must be {allowed}")
    return k


# -- the overlap rule (pure) ----------------------------------------------------------------------


@dataclass
class Overlap:
    """Outcome of ``front_overlap`` (indices into its inputs)."""
    # non-dominated by the means
    front: List[int] = field(default_factory=list)
    # every point that is not clearly dominated (front included), ascending
    overlapping: List[int] = field(default_factory=list)
    # clearly dominated point -> the first front point that dominates it at the interval ends
    dominated_by: Dict[int, int] = field(default_factory=dict)


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Pareto dominance of losses (minimized): no worse anywhere, better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def front_overlap(means: Sequence[Sequence[float]], lows: Sequence[Sequence[float]],
                  highs: Sequence[Sequence[float]], directions: Sequence[str],
                  candidates: Optional[Sequence[int]] = None) -> Overlap:
    """Which points' intervals overlap the Pareto front of the means.

    Point ``i`` is *clearly dominated* when some front point ``f`` dominates it even with ``f``
    at its pessimistic interval ends (``lows`` of maximized objectives, ``highs`` of minimized
    ones) and ``i`` at its optimistic ends; all other points overlap the front. A NaN interval
    end counts as unbounded (a point without an interval is never clearly dominated, and
    dominates nothing from its pessimistic end). With one objective the front is the best mean
    and "overlap" is "the intervals overlap" (touching ends overlap).

    Args:
        means: per point, one mean per objective.
        lows, highs: per point, the interval ends per objective.
        directions: ``maximize`` / ``minimize`` per objective.
        candidates: the points that may be on the front (e.g. the feasible ones); None = all.

    Returns:
        ``Overlap`` with the front, the overlapping points and, for every clearly dominated
        point, a front point that dominates it.
    """
    sign = [-1.0 if str(d).lower() == "maximize" else 1.0 for d in directions]

    mean_loss = [[s * float(v) if math.isfinite(float(v)) else math.inf for s, v in zip(sign, m)]
                 for m in means]
    # optimistic = lowest loss, pessimistic = highest loss (NaN end: unbounded that way)
    opt = [[min(s * lo, s * hi) if math.isfinite(lo) and math.isfinite(hi) else -math.inf
            for s, lo, hi in zip(sign, map(float, lows[i]), map(float, highs[i]))]
           for i in range(len(means))]
    pess = [[max(s * lo, s * hi) if math.isfinite(lo) and math.isfinite(hi) else math.inf
             for s, lo, hi in zip(sign, map(float, lows[i]), map(float, highs[i]))]
            for i in range(len(means))]
    pool = list(range(len(means))) if candidates is None else sorted(set(candidates))
    from sweep.sweeper.rungs import non_dominated_fronts  # the repo's tested non-dominated sort

    fronts = non_dominated_fronts([mean_loss[i] for i in pool]) if pool else []
    front = sorted(pool[j] for j in fronts[0]) if fronts else []
    out = Overlap(front=front)
    for i in range(len(means)):
        by = next((f for f in front if f != i and _dominates(pess[f], opt[i])), None)
        if by is None:
            out.overlapping.append(i)
        else:
            out.dominated_by[i] = by
    return out


# -- configurations in the storage ----------------------------------------------------------------


def params_key(params: Mapping[str, Any]) -> str:
    """A configuration's identity: its Optuna params as canonical JSON."""
    return json.dumps(dict(params), sort_keys=True, default=str)


def extra_of(trial) -> Optional[Dict[str, Any]]:
    """The ``EXTRA`` payload of an extra-seed trial (a FrozenTrial), or None."""
    payload = trial.system_attrs.get(EXTRA)
    return payload if isinstance(payload, dict) else None


@dataclass
class Config:
    """One configuration's merged seeds (from its COMPLETE trials that ran seeds themselves)."""
    key: str
    params: Dict[str, Any]
    parent: int                               # its first trial (lowest number)
    trials: List[int] = field(default_factory=list)
    seed_metrics: Dict[int, Dict[str, Any]] = field(default_factory=dict)  # seed -> metrics
    feasible: bool = True
    stats: Dict[str, Any] = field(default_factory=dict)   # summarize_seeds over all its seeds

    @property
    def seeds(self) -> List[int]:
        return sorted(self.seed_metrics)


def collect_configs(trials: Sequence[Any], objectives: Sequence[str]) -> List[Config]:
    """Configurations of the COMPLETE trials, seeds merged over their trials (first trial of a
    seed wins; copies with ``reused_from`` are skipped), ordered by first trial.

    A configuration is infeasible when its first trial violates a constraint (Optuna's
    ``trial.constraints``, all must be <= 0).
    """
    from optuna.trial import TrialState

    from sweep.sweeper.worker import summarize_seeds

    configs: Dict[str, Config] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != TrialState.COMPLETE or "reused_from" in t.user_attrs:
            continue
        per_seed = t.user_attrs.get("seed_metrics")
        if not isinstance(per_seed, list):
            continue
        key = params_key(t.params)
        c = configs.get(key)
        if c is None:
            cons = dict(getattr(t, "constraints", None) or {})
            c = configs[key] = Config(key=key, params=dict(t.params), parent=t.number,
                                      feasible=all(float(v) <= 0.0 for v in cons.values()))
        c.trials.append(t.number)
        for m in per_seed:
            if isinstance(m, dict) and isinstance(m.get("seed"), int):
                c.seed_metrics.setdefault(int(m["seed"]), m)
    out = []
    for c in configs.values():
        rows = [c.seed_metrics[s] for s in c.seeds]
        try:
            c.stats = summarize_seeds(rows, objectives, CONFIDENCE)
        except (KeyError, TypeError, ValueError):
            continue  # an objective missing from a seed's metrics: not comparable
        out.append(c)
    return out


def seed_metrics_of(trials: Sequence[Any], params: Mapping[str, Any],
                    exclude: Optional[int] = None) -> List[Dict[str, Any]]:
    """Per-seed metrics of the configuration ``params`` from its COMPLETE trials (not copies),
    one per seed (first trial wins), by seed."""
    key = params_key(params)
    for c in collect_configs([t for t in trials if t.number != exclude], []):
        if c.key == key:
            return [c.seed_metrics[s] for s in c.seeds]
    return []


@dataclass
class Decision:
    """What ``decide`` found (trial numbers are the configurations' first trials)."""
    front: List[int]
    overlapping: List[int]
    dominated_by: Dict[int, int]
    extra: Dict[int, List[int]]               # parent -> seeds to queue now
    reasons: Dict[int, str]
    configs: Dict[int, Config]

    def as_attr(self, max_repeats: int) -> Dict[str, Any]:
        """The decision as a JSON user attr (keys are trial numbers as text)."""
        return {"max_repeats": max_repeats, "front": self.front,
                "overlapping": self.overlapping,
                "seeds": {str(p): c.seeds for p, c in self.configs.items()},
                "queued": {str(p): s for p, s in self.extra.items()},
                "clearly_dominated_by": {str(p): by for p, by in self.dominated_by.items()}}


def _interval_text(c: Config, objectives: Sequence[str]) -> str:
    parts = []
    for o in objectives:
        m, lo, hi = c.stats[o], c.stats[f"{o}_lo"], c.stats[f"{o}_hi"]
        parts.append(f"{o} {m:.4g} [{lo:.4g}, {hi:.4g}]" if lo != hi else f"{o} {m:.4g}")
    return ", ".join(parts)


def decide(trials: Sequence[Any], objectives: Sequence[str], directions: Sequence[str],
           max_repeats: int) -> Decision:
    """Apply the overlap rule to the study's configurations and list the extra seeds to queue:
    the seeds below ``max_repeats`` that an overlapping feasible configuration lacks. Nothing
    is queued for a configuration whose extra-seed trial is still queued or running, and seeds
    of an extra-seed trial that FAILed (after its retries) are not queued again; seeds that
    finished are never missing (so a resume with a larger ``max_repeats`` adds only the new
    seeds)."""
    configs = collect_configs(trials, objectives)
    means = [[c.stats[o] for o in objectives] for c in configs]
    lows = [[c.stats[f"{o}_lo"] for o in objectives] for c in configs]
    highs = [[c.stats[f"{o}_hi"] for o in objectives] for c in configs]
    res = front_overlap(means, lows, highs, directions,
                        candidates=[i for i, c in enumerate(configs) if c.feasible])
    from optuna.trial import TrialState

    from sweep import storage as st

    pending, failed = set(), {}
    for t in trials:
        e = extra_of(t)
        if e is None or st.SKIPPED in t.system_attrs:
            continue
        key = params_key(e.get("params") or {})
        if t.state in (TrialState.WAITING, TrialState.RUNNING):
            pending.add(key)
        elif t.state == TrialState.FAIL:
            failed.setdefault(key, set()).update(int(s) for s in e.get("seeds") or [])
    on_front = set(res.front)
    extra: Dict[int, List[int]] = {}
    reasons: Dict[int, str] = {}
    for i in res.overlapping:
        c = configs[i]
        missing = [s for s in range(max_repeats)
                   if s not in c.seed_metrics and s not in failed.get(c.key, ())]
        if not missing or c.key in pending or not c.feasible:
            continue  # infeasible configs are never on the front: no seeds spent on them
        extra[c.parent] = missing
        where = ("on the Pareto front of the means" if i in on_front else
                 "its 95% interval overlaps the front (no front config dominates it at the "
                 "interval ends)")
        reasons[c.parent] = (f"{where}: {_interval_text(c, objectives)} over seeds "
                             f"{c.seeds}; extra seeds {missing} (max_repeats {max_repeats})")
    return Decision(front=[configs[i].parent for i in res.front],
                    overlapping=[configs[i].parent for i in res.overlapping],
                    dominated_by={configs[i].parent: configs[f].parent
                                  for i, f in res.dominated_by.items()},
                    extra=extra, reasons=reasons, configs={c.parent: c for c in configs})


@contextlib.contextmanager
def decision_lock(url: str) -> Iterator[None]:
    """An exclusive file lock next to an SQLite database or journal file (one machine); no lock
    for server storages (duplicates are then skipped by ``earlier_duplicate``)."""
    path = None
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
    elif url.startswith("journal:///"):
        path = "/" + url[len("journal:///"):]
    if path is None:
        yield
        return
    import fcntl

    with open(path + ".adaptive.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def queue_extra_seeds(study, plan) -> List[int]:
    """Decide (``decide``) and queue one extra-seed trial per configuration that needs seeds.

    Args:
        study: the Optuna study (any storage).
        plan: the ``SweepPlan`` (objectives, directions, ``max_repeats``, storage URL).

    Returns:
        The first trial numbers of the configurations that got an extra-seed trial now.
    """
    import optuna

    if not plan.max_repeats:
        return []
    with decision_lock(plan.storage_url()):
        trials = study.get_trials(deepcopy=False)
        d = decide(trials, plan.objectives, plan.directions, plan.max_repeats)
        by_number = {t.number: t for t in trials}
        for parent, seeds in d.extra.items():
            c = d.configs[parent]
            payload = {"parent": parent, "params": c.params, "seeds": seeds,
                       "reason": d.reasons[parent]}
            system = {"fixed_params": c.params, EXTRA: payload}
            for k in ("grid_id", "search_space"):
                # GridSampler reads grid_id of every trial it sees finish; the parent's point is
                # visited already, so the extra trial claims nothing new
                if k in by_number[parent].system_attrs:
                    system[k] = by_number[parent].system_attrs[k]
            study.add_trial(optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING, system_attrs=system,
                user_attrs={"extra_seeds_of": parent, "extra_seeds_reason": d.reasons[parent]}))
            log.info(f"coordsweep: adaptive repeats: config of trial {parent} "
                     f"({c.params}) gets seeds {seeds}: {d.reasons[parent]}")
        record_decision(study, d, plan.max_repeats)
    return sorted(d.extra)


def record_decision(study, d: Decision, max_repeats: int) -> None:
    """Store the decision as study user attr ``DECISION`` (written only when it changed)."""
    attr = d.as_attr(max_repeats)
    if study.user_attrs.get(DECISION) != json.loads(json.dumps(attr)):
        study.set_user_attr(DECISION, attr)


def earlier_duplicate(trials: Sequence[Any], number: int,
                      payload: Mapping[str, Any]) -> Optional[int]:
    """Another extra-seed trial of the same configuration and seeds that comes first, or None.

    Among the extra-seed trials of one configuration and seed list that are not FAIL and not
    skipped, the one with the lowest number runs; the others are skipped (queued twice by two
    workers deciding at the same moment). A FAIL trial's retry is a new trial with the same
    payload and competes the same way.
    """
    from optuna.trial import TrialState

    from sweep import storage as st

    def key(e: Mapping[str, Any]) -> tuple:
        return params_key(e.get("params") or {}), tuple(int(s) for s in e.get("seeds") or [])

    mine = key(payload)
    for t in sorted(trials, key=lambda t: t.number):
        if t.number >= number:
            break
        e = extra_of(t)
        if e is None or t.state == TrialState.FAIL or st.SKIPPED in t.system_attrs:
            continue
        if key(e) == mine:
            return t.number
    return None
