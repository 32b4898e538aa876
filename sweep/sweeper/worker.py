"""One sweep worker: ask Optuna for a trial, run it as a Hydra job, tell the result, repeat.

Workers share nothing but the storage, so N of them run without a batch barrier: a worker
that finishes a fast trial asks for the next one while a slow trial is still running
elsewhere. ``WorkerTask`` is the Hydra task function of a *worker job* (launched by the
configured launcher, or by ``local_pool`` for the basic launcher); each trial inside it is
a Hydra job of its own (``config_loader.load_sweep_config`` + ``hydra.core.utils.run_job``,
as Hydra's BasicLauncher does), with its run directory ``<hydra.sweep.dir>/<trial number>``.
"""
from __future__ import annotations

import logging
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from sweep import hooks
from sweep import storage as st
from sweep.sweeper.adaptive import EXTRA, earlier_duplicate, queue_extra_seeds, seed_metrics_of
from sweep.sweeper.params import VARIANT, SearchSpace, suggest

log = logging.getLogger(__name__)


class TrialFailed(Exception):
    """The trial failed for the reason given; it is told to Optuna as FAIL."""


class TrialSkipped(TrialFailed):
    """The trial was not run (over budget, or a duplicate of a trial running elsewhere)."""


@dataclass
class SweepPlan:
    """Everything a worker needs, decided once by the sweeper (picklable)."""
    study_name: str
    storage: str
    objectives: List[str]
    directions: List[str]
    space: SearchSpace
    n_trials: int
    sampler: str = "tpe"
    sampler_options: Dict[str, Any] = field(default_factory=dict)
    seed: Optional[int] = None
    pruner: str = "none"
    pruner_options: Dict[str, Any] = field(default_factory=dict)
    prune_metric: Optional[str] = None
    constraints: List[Tuple[str, str, float]] = field(default_factory=list)
    deadline: Optional[float] = None
    reuse_completed: bool = True
    heartbeat_interval: Optional[int] = None
    grace_period: Optional[int] = None
    max_retry: Optional[int] = 2
    n_workers: int = 1
    run_id: str = ""
    repeats: int = 1
    seed_key: str = "seed"
    scheduler: Dict[str, Any] = field(default_factory=dict)
    # adaptive repeats: total seeds of a config that overlaps the front (0 = off; adaptive.py)
    max_repeats: int = 0
    # reuse the stored result of a PRUNED trial with identical params (not with grid)
    reuse_pruned: bool = True

    def seeds(self) -> List[int]:
        """The seeds every configuration is trained with (the same for all: paired runs)."""
        return list(range(max(1, int(self.repeats))))

    def storage_url(self) -> str:
        """The storage URL; a template with ``${oc.env:...}`` is resolved here, in the worker."""
        if "${" not in self.storage:
            return self.storage
        from omegaconf import OmegaConf

        return str(OmegaConf.create({"url": self.storage}).url)

    def open_study(self, slot: int = 0, generation: int = 0):
        """Load the study with this worker's sampler and pruner (see ``worker_seed``)."""
        import optuna

        from sweep.sweeper.samplers import make_pruner, make_sampler

        url = self.storage_url()
        storage = st.open_storage(url, heartbeat_interval=self.heartbeat_interval,
                                  grace_period=self.grace_period, max_retry=self.max_retry)
        if url.startswith("sqlite:///"):
            atomic_queue_pops(storage, url[len("sqlite:///"):] + ".pop.lock")
        n_existing = len(storage.get_all_trials(storage.get_study_id_from_name(self.study_name),
                                                deepcopy=False))
        sampler = make_sampler(self.sampler, self.sampler_options,
                               seed=worker_seed(self.sampler, self.seed, slot, generation, n_existing),
                               n_objectives=len(self.objectives), space=self.space,
                               constrained=bool(self.constraints))
        if self.sampler == "grid":
            # the seeded shuffle (trial number -> grid point) is shared; the random picks made
            # beyond the first grid-size trial numbers (after retries or skips) differ between
            # workers, so two workers asking at once rarely draw the same point
            sampler.reseed_rng()
        pruner = make_pruner(self.pruner, self.pruner_options, n_objectives=len(self.objectives))
        return optuna.load_study(study_name=self.study_name, storage=storage, sampler=sampler,
                                 pruner=pruner)

    def retry(self):
        return st.RetryCallback(self.max_retry)


def atomic_queue_pops(storage, lock_path: str) -> None:
    """Make taking a queued trial atomic across processes on one SQLite database.

    Optuna takes a WAITING trial (an enqueued config, a retry of a killed trial) by reading
    its state and setting RUNNING only if it read WAITING (``Study._pop_waiting_trial_id`` ->
    ``RDBStorage.set_trial_state_values``), under ``SELECT ... FOR UPDATE``. SQLite ignores
    FOR UPDATE and runs the read outside the write transaction, so two workers can both read
    WAITING and both run the trial (measured: 3-24 of 300 queued trials taken twice by two
    processes, 13-39 by three). Here that read-and-set runs under an exclusive lock on
    ``lock_path`` (``fcntl.flock``; SQLite storages are for one machine), so the second worker
    reads RUNNING and takes the next queued trial. Other state changes are not serialized.

    Args:
        storage: the worker's ``optuna.storages.RDBStorage`` on SQLite (changed in place).
        lock_path: the lock file, next to the database.
    """
    import fcntl

    from optuna.trial import TrialState

    set_state = storage.set_trial_state_values

    def set_trial_state_values(trial_id: int, state, values=None) -> bool:
        if state != TrialState.RUNNING:
            return set_state(trial_id, state=state, values=values)
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            return set_state(trial_id, state=state, values=values)

    storage.set_trial_state_values = set_trial_state_values


def counted_trials(trials: Sequence[Any]) -> list:
    """``storage.counted_trials`` without the trials being skipped: a worker marks a trial
    skipped before Optuna tells it FAIL, and from that mark on the trial holds no budget (so a
    worker reading in between does not count it and stop early). Extra-seed trials of adaptive
    repeats (``adaptive.EXTRA``) are not in the ``n_trials`` budget either."""
    return [t for t in st.counted_trials(trials)
            if st.SKIPPED not in t.system_attrs and EXTRA not in t.system_attrs]


def uncovered_grid_points(space: SearchSpace, trials: Sequence[Any]) -> List[Dict[str, Any]]:
    """Grid points (``{param: value}``) that no trial holds yet; a trial holds its params when
    it uses the ``n_trials`` budget (``counted_trials``: queued, running, finished, or failed
    and not re-queued)."""
    import itertools

    grid = space.grid()
    names = sorted(grid)
    held = {tuple(t.params.get(n, _NO_VALUE) for n in names) for t in counted_trials(trials)}
    return [dict(zip(names, point)) for point in itertools.product(*(grid[n] for n in names))
            if point not in held]


_NO_VALUE = object()


def work_left(plan: "SweepPlan", trials: Sequence[Any]) -> bool:
    """Whether a worker should ask for another trial: a queued trial waits, or budget is left
    (and, for the grid sampler, a grid point that no trial holds: the grid never runs a point
    twice, so a budget above the grid size is not spent on copies)."""
    from optuna.trial import TrialState

    if any(t.state == TrialState.WAITING for t in trials):
        return True
    if plan.n_trials - len(counted_trials(trials)) <= 0:
        return False
    return plan.sampler != "grid" or bool(uncovered_grid_points(plan.space, trials))


def worker_seed(sampler: str, seed: Optional[int], slot: int, generation: int,
                n_existing: int) -> Optional[int]:
    """The sampler seed of one worker.

    Grid: the given seed in every worker and every run, because GridSampler maps trial
    numbers to grid points through a seeded shuffle that all workers must share. Others:
    derived from (seed, slot, generation, trials already in the study), so parallel workers
    and resumed runs do not draw the same points again (a resumed random sampler would
    otherwise repeat the first run's configs). None stays None (OS entropy).
    """
    if sampler == "grid" or seed is None:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, slot, generation, n_existing]).generate_state(1)[0])


class OptunaHooks(hooks.TrialHooks):
    """Per-epoch hooks of a trial run by a worker: report to Optuna and ask the pruner."""

    def __init__(self, trial, metric: Optional[str], prune: bool, single_objective: bool) -> None:
        self.trial, self.metric, self.prune, self.single = trial, metric, prune, single_objective

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        value = metrics.get(self.metric) if self.metric else None
        if self.single and isinstance(value, (int, float)) and math.isfinite(value):
            self.trial.report(float(value), step=int(epoch))
        return bool(self.prune and self.single and self.trial.should_prune())


def scalar_metrics(metrics: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON-scalar entries of a metrics dict (what becomes Optuna user attributes)."""
    out = {}
    for k, v in metrics.items():
        if v is None or isinstance(v, (bool, int, str)):
            out[str(k)] = v
        elif isinstance(v, float):
            out[str(k)] = v if math.isfinite(v) else str(v)
        elif hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
            try:
                item = v.item()
            except (ValueError, RuntimeError):
                continue
            out[str(k)] = item if not isinstance(item, float) or math.isfinite(item) else str(item)
    return out


def objective_values(result: Any, objectives: Sequence[str]) -> Tuple[List[float], Dict[str, Any]]:
    """Read the objective values from a task's return value; raise ``TrialFailed`` with the
    reason when it cannot (not a dict, missing metric, NaN/inf, status diverged)."""
    if isinstance(result, Mapping):
        metrics = dict(result)
    elif isinstance(result, (int, float)) and not isinstance(result, bool) and len(objectives) == 1:
        metrics = {objectives[0]: result}
    else:
        raise TrialFailed(f"the task returned {type(result).__name__} {str(result)[:200]!r}; "
                          f"expected a dict of metrics with {', '.join(objectives)}")
    status = str(metrics.get("status", "ok"))
    if status not in ("ok", "pruned", "complete", "completed"):
        detail = metrics.get("fail_reason") or metrics.get("reason") or ""
        raise TrialFailed(f"trial status {status!r}" + (f": {detail}" if detail else ""))
    values = []
    for name in objectives:
        if name not in metrics:
            raise TrialFailed(f"objective {name!r} is missing from the task's metrics "
                              f"(keys: {', '.join(map(str, metrics)) or 'none'})")
        try:
            v = float(metrics[name])
        except (TypeError, ValueError):
            raise TrialFailed(f"objective {name!r} is {metrics[name]!r}, not a number") from None
        if not math.isfinite(v):
            raise TrialFailed(f"objective {name!r} is {v}")
        values.append(v)
    return values, metrics


class _QuietOptunaFailures(logging.Filter):
    """Optuna logs every failed trial with a traceback; ours are already logged with reasons."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (("because of the following error: TrialFailed" in msg)
                    or ("because of the following error: TrialSkipped" in msg)
                    or (msg.startswith("Trial ") and msg.endswith("failed with value None.")))


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _QuietOptunaFailures) for f in logger.filters):
        logger.addFilter(_QuietOptunaFailures())


def run_worker(plan: SweepPlan, run_trial: "HydraTrialRunner", slot: int = 0,
               generation: int = 0) -> Dict[str, int]:
    """The worker loop (``study.optimize`` with a total budget shared through storage).

    Returns counts of the trials this worker told, by outcome.
    """
    import optuna

    study = plan.open_study(slot, generation)
    ident = st.worker_identity(plan.run_id, f"{slot}.{generation}")
    retry = plan.retry()
    counts: Dict[str, int] = {}
    tag = f"[worker {slot}]"

    def has_work() -> bool:
        if plan.deadline is not None and time.time() >= plan.deadline:
            return False
        return work_left(plan, study.get_trials(deepcopy=False))

    def skip(trial, reason: str) -> None:
        trial.set_user_attr(st.FAIL_REASON, reason)
        study._storage.set_trial_system_attr(trial._trial_id, st.SKIPPED, reason)
        if "grid_id" in study._storage.get_trial(trial._trial_id).system_attrs:
            # NOTE: GridSampler counts any finished trial as a visited grid point; a skipped
            # trial visited nothing, so detach it from the grid (Optuna-internal attr name)
            study._storage.set_trial_system_attr(trial._trial_id, "search_space", {})
        raise TrialSkipped(reason)

    def objective(trial) -> Any:
        started = time.time()
        study._storage.set_trial_system_attr(trial._trial_id, st.WORKER, ident)
        trials = study.get_trials(deepcopy=False)
        me = next((t for t in trials if t.number == trial.number), None)
        extra = me.system_attrs.get(EXTRA) if me is not None else None
        if extra is not None:
            # an extra-seed trial (adaptive repeats): outside the n_trials budget
            if plan.deadline is not None and started >= plan.deadline:
                skip(trial, "not run: the sweep's timeout passed")
            first = earlier_duplicate(trials, trial.number, extra)
            if first is not None:
                skip(trial, f"not run: trial {first} runs the extra seeds of the same config")
        else:
            ahead = sum(1 for t in counted_trials(trials) if t.number < trial.number)
            if ahead >= plan.n_trials or (plan.deadline is not None and started >= plan.deadline):
                # no study.stop() here: `after` stops when no work is left, judged on a read
                # made after this skip is stored (a trial counted here may be skipped meanwhile)
                skip(trial, "not run: the n_trials budget (or timeout) was used up by other "
                            "workers")
        try:
            if extra is not None:
                return _run_extra_seeds(study, trial, extra, run_trial, plan, started, tag)
            assignment = suggest(trial, plan.space)
            params = trial.params
            # read again now that this trial's params are stored: a twin that another worker
            # drew meanwhile is seen by this read or that worker's read sees this trial
            trials = study.get_trials(deepcopy=False)
            if plan.sampler == "grid":
                # a grid point runs once: a second draw of a point that a trial already holds
                # (another worker's draw at the same moment, a queued retry, a finished trial)
                # is skipped; it does not run, is not a reused copy and uses no budget, so the
                # point that is still missing gets drawn next
                holder = _grid_holder(trials, trial.number, params)
                if holder is not None:
                    skip(trial, f"not run: trial {holder.number} ({holder.state.name}) holds the "
                                f"same grid point")
                twin = None
            else:
                twin = _same_params(trials, trial.number, params, pruned=plan.reuse_pruned)
            if twin is not None and twin.state == optuna.trial.TrialState.RUNNING \
                    and twin.number < trial.number and st.WORKER in twin.system_attrs:
                skip(trial, f"not run: trial {twin.number} runs the same params at the same time")
            overrides = _record_config(trial, plan, assignment)
            if twin is not None and twin.state == optuna.trial.TrialState.COMPLETE \
                    and plan.reuse_completed:
                _copy_result(trial, twin, plan)
                log.info(f"{tag} trial {trial.number}: same params as COMPLETE trial "
                         f"{twin.number}; reusing its result (not trained again)")
                return twin.values if len(twin.values) > 1 else twin.values[0]
            if twin is not None and twin.state == optuna.trial.TrialState.PRUNED \
                    and plan.reuse_pruned:
                # stopped early by the pruner or the rung scheduler: recorded as stopped again,
                # with the stored trial's last fidelity and intermediate values (the copy takes
                # no rung place: rung entries are system attrs, not copied)
                _copy_result(trial, twin, plan)
                if len(plan.objectives) == 1:
                    for step, value in sorted(twin.intermediate_values.items()):
                        trial.report(value, step)
                epochs = twin.user_attrs.get("epochs_run", twin.last_step)
                log.info(f"{tag} trial {trial.number}: same params as PRUNED trial "
                         f"{twin.number} (stopped after epoch {epochs}); recorded as pruned "
                         f"(not trained again)")
                raise optuna.TrialPruned(f"same params as PRUNED trial {twin.number}")
            if plan.repeats > 1:
                return _run_repeats(trial, overrides, run_trial, plan, started, tag)
            prune_metric = plan.prune_metric or plan.objectives[0]
            trial_hooks: hooks.TrialHooks = OptunaHooks(trial, prune_metric, plan.pruner != "none",
                                                        len(plan.objectives) == 1)
            if (plan.scheduler or {}).get("name", "none") != "none":
                from sweep.sweeper.rungs import RungHooks

                trial_hooks = RungHooks(study, trial, plan.scheduler, plan.objectives,
                                        plan.directions, inner=trial_hooks)
            with hooks.use(trial_hooks):
                ret, run_dir = run_trial(trial, overrides)
            return _tell_value(trial, ret, run_dir, plan, started, tag)
        except TrialFailed as e:
            if not isinstance(e, TrialSkipped):
                trial.set_user_attr(st.FAIL_REASON, str(e))
                log.warning(f"{tag} trial {trial.number} FAILED: {e}")
            raise
        except optuna.TrialPruned:
            raise
        except SystemExit as e:
            reason = f"the task called sys.exit({e.code!r})"
            trial.set_user_attr(st.FAIL_REASON, reason)
            log.warning(f"{tag} trial {trial.number} FAILED: {reason}")
            raise TrialFailed(reason) from None
        except KeyboardInterrupt:
            trial.set_user_attr(st.FAIL_REASON, "interrupted (SIGINT/SIGTERM) while running")
            retry(study, study._storage.get_trial(trial._trial_id))
            raise
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            trial.set_user_attr(st.FAIL_REASON, reason)
            log.error(f"{tag} trial {trial.number} FAILED in the worker: {reason}\n"
                      + traceback.format_exc())
            raise TrialFailed(reason) from e

    def after(study_, frozen) -> None:
        state = frozen.state.name
        counts[state] = counts.get(state, 0) + 1
        st.fail_stale_trials(study, retry)
        if not has_work():
            study.stop()

    def more_work(poll: float = 1.0) -> bool:
        """``has_work``, and with adaptive repeats: queue the extra seeds now due; while none
        are due but trials still run (their results may move the front), wait for them."""
        while True:
            if has_work():
                return True
            if not plan.max_repeats or (plan.deadline is not None
                                        and time.time() >= plan.deadline):
                return False
            if queue_extra_seeds(study, plan):
                continue
            st.fail_stale_trials(study, retry)
            st.fail_dead_local_trials(study, retry)
            if not st.running_trials(study):
                return has_work()
            time.sleep(poll)

    st.fail_stale_trials(study, retry)
    st.fail_dead_local_trials(study, retry)
    if not more_work():
        log.info(f"{tag} nothing left to run")
        return counts
    _quiet_optuna()
    while True:
        timeout = None if plan.deadline is None else max(plan.deadline - time.time(), 0.001)
        study.optimize(objective, timeout=timeout, catch=(TrialFailed,), callbacks=[after],
                       gc_after_trial=False)
        # the study stopped: no work left (`after`), the timeout, or GridSampler (it stops a
        # study once every grid point is visited, also while extra seeds are queued)
        if not plan.max_repeats or not more_work():
            break
    log.info(f"{tag} done: " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())))
    return counts


def _grid_holder(trials: Sequence[Any], number: int, params: Mapping[str, Any]):
    """Another trial holding these params (one that uses the budget), or None.

    Two trials that draw the same point each check after storing their params, so at least
    one of them sees the other and skips: the point never trains twice. When both see each
    other both skip, and the point, held by no trial, is drawn again.
    """
    for t in counted_trials(trials):
        if t.number != number and t.params == dict(params):
            return t
    return None


def _same_params(trials: Sequence[Any], number: int, params: Mapping[str, Any],
                 pruned: bool = False):
    """Another trial with exactly these params: COMPLETE first (the one with the most seeds,
    ``repeats``, then the earliest: an extra-seed trial tells the mean over all seeds), then
    the earliest PRUNED one (when ``pruned``), then the earliest RUNNING one; or None."""
    from optuna.trial import TrialState

    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2}
    if not pruned:
        order.pop(TrialState.PRUNED)
    best, best_rank = None, None
    for t in trials:
        if t.number == number or t.state not in order:
            continue
        if t.params == dict(params) and t.params.keys() == params.keys():
            seeds = t.user_attrs.get("repeats", 1) if t.state == TrialState.COMPLETE else 1
            rank = (order[t.state], -(seeds if isinstance(seeds, int) else 1), t.number)
            if best_rank is None or rank < best_rank:
                best, best_rank = t, rank
    return best


def _copy_result(trial, twin, plan: SweepPlan) -> None:
    """Give ``trial`` the stored result of ``twin`` (user attrs, constraints, ``reused_from``)."""
    for k, v in twin.user_attrs.items():
        if k not in ("overrides", "enqueued_as", st.FAIL_REASON, "extra_seeds_of",
                     "extra_seeds_reason"):
            trial.set_user_attr(k, v)
    trial.set_user_attr("reused_from", twin.number)
    _set_constraints(trial, plan, twin.user_attrs)


def _tell_value(trial, ret, run_dir: str, plan: SweepPlan, started: float, tag: str):
    import optuna
    from hydra.core.utils import JobStatus

    trial.set_user_attr("job_time_s", round(time.time() - started, 3))
    if ret.status == JobStatus.FAILED:
        e = ret._return_value
        raise TrialFailed(f"{type(e).__name__}: {e}")
    try:
        values, metrics = objective_values(ret.return_value, plan.objectives)
    except TrialFailed:
        if isinstance(ret.return_value, Mapping):
            for k, v in scalar_metrics(ret.return_value).items():
                if k not in ("overrides", "run_dir"):
                    trial.set_user_attr(k, v)
        raise
    for k, v in scalar_metrics(metrics).items():
        if k not in ("overrides", "run_dir"):
            trial.set_user_attr(k, v)
    _set_constraints(trial, plan, metrics)
    if str(metrics.get("status", "ok")) == "pruned":
        raise optuna.TrialPruned(f"pruned after epoch {metrics.get('epochs_run', '?')}")
    shown = ", ".join(f"{n}={v:.6g}" for n, v in zip(plan.objectives, values))
    log.info(f"{tag} trial {trial.number} done: {shown} ({time.time() - started:.1f} s)")
    return values if len(values) > 1 else values[0]


def summarize_seeds(per_seed: Sequence[Mapping[str, Any]], names: Sequence[str],
                    confidence: float = 0.95) -> Dict[str, Any]:
    """Mean, sample standard deviation and Student-t ``confidence`` interval over seeds.

    Returns ``{name: mean, name_std: sd, name_lo: lo, name_hi: hi}`` for each name (sd and the
    interval are NaN with one seed).

    Args:
        per_seed: one metrics mapping per seed.
        names: the metrics to summarize (numbers in every mapping).
        confidence: coverage of the interval.
    """
    import numpy as np
    from scipy import stats

    out: Dict[str, Any] = {}
    for name in names:
        x = np.asarray([float(m[name]) for m in per_seed], dtype=float)
        mean = float(x.mean())
        sd = float(x.std(ddof=1)) if len(x) > 1 else math.nan
        if len(x) > 1 and sd > 0:
            lo, hi = stats.t.interval(confidence, len(x) - 1, loc=mean, scale=sd / math.sqrt(len(x)))
        elif len(x) > 1:
            lo = hi = mean
        else:
            lo = hi = math.nan
        out.update({name: mean, f"{name}_std": sd, f"{name}_lo": float(lo), f"{name}_hi": float(hi)})
    return out


def _run_repeats(trial, overrides: List[str], run_trial, plan: SweepPlan, started: float, tag: str,
                 seeds: Optional[Sequence[int]] = None,
                 earlier: Optional[Callable[[], List[Dict[str, Any]]]] = None):
    """Run the trial's configuration once per seed (``<run dir>/seed<s>``) and tell the mean.

    User attrs: every numeric metric averaged over seeds, ``<objective>_std/_lo/_hi`` (95 %
    Student-t interval), ``seeds`` and ``seed_metrics`` (one dict of metrics per seed, with
    ``seed`` and ``run_dir``). Any failed seed fails the whole trial (with the seed named).

    ``seeds`` (default ``plan.seeds()``) and ``earlier`` serve extra-seed trials: ``earlier()``
    returns the per-seed metrics of the configuration's finished trials, read after this
    trial's seeds ran; the told mean, the merged metrics and the interval are then over all
    seeds (``merged_seeds``, ``repeats``), while ``seeds``/``seed_metrics`` stay this trial's.
    """
    from hydra.core.utils import JobStatus

    per_seed: List[Dict[str, Any]] = []
    base_dir = None
    for s in (plan.seeds() if seeds is None else list(seeds)):
        ret, run_dir = run_trial(trial, list(overrides) + [f"{plan.seed_key}={s}"],
                                 subdir=f"{trial.number}/seed{s}")
        base_dir = os.path.dirname(run_dir)
        if ret.status == JobStatus.FAILED:
            e = ret._return_value
            raise TrialFailed(f"{plan.seed_key}={s}: {type(e).__name__}: {e}")
        try:
            _, metrics = objective_values(ret.return_value, plan.objectives)
        except TrialFailed as e:
            raise TrialFailed(f"{plan.seed_key}={s}: {e}") from None
        m = {k: v for k, v in scalar_metrics(metrics).items() if k not in ("overrides", "run_dir")}
        m[plan.seed_key] = s
        m["seed"] = s  # analysis.results reads the repeat's seed here, whatever the key
        m["run_dir"] = run_dir
        per_seed.append(m)
    own = {m["seed"] for m in per_seed}
    pooled = per_seed
    if earlier is not None:
        pooled = sorted([m for m in earlier() if m.get("seed") not in own] + per_seed,
                        key=lambda m: m["seed"])
    numeric = [k for k, v in pooled[0].items()
               if k not in (plan.seed_key, "seed", "pid") and isinstance(v, (int, float))
               and not isinstance(v, bool)
               and all(isinstance(m.get(k), (int, float)) and not isinstance(m.get(k), bool)
                       for m in pooled)]
    merged: Dict[str, Any] = {k: v for k, v in per_seed[0].items()
                              if k not in numeric and k not in ("run_dir", "seed", plan.seed_key)}
    for k in numeric:
        merged[k] = float(sum(float(m[k]) for m in pooled) / len(pooled))
    summary = summarize_seeds(pooled, plan.objectives)
    merged.update(summary)
    trial.set_user_attr("job_time_s", round(time.time() - started, 3))
    for k, v in scalar_metrics(merged).items():
        trial.set_user_attr(k, v)
    trial.set_user_attr("run_dir", base_dir)
    trial.set_user_attr("repeats", len(pooled))
    trial.set_user_attr("seeds", [m["seed"] for m in per_seed])
    trial.set_user_attr("seed_metrics", per_seed)
    if earlier is not None:
        trial.set_user_attr("merged_seeds", [m["seed"] for m in pooled])
    if base_dir is not None:
        import json

        with open(os.path.join(base_dir, "repeats.json"), "w") as f:
            json.dump({"summary": scalar_metrics(summary), "seed_metrics": per_seed,
                       "merged_seeds": [m["seed"] for m in pooled]}, f, indent=2)
    _set_constraints(trial, plan, merged)
    values = [summary[n] for n in plan.objectives]
    shown = ", ".join(f"{n}={summary[n]:.6g} (sd {summary[n + '_std']:.3g}, {len(pooled)} seeds)"
                      for n in plan.objectives)
    log.info(f"{tag} trial {trial.number} done: {shown} ({time.time() - started:.1f} s)")
    return values if len(values) > 1 else values[0]


def _run_extra_seeds(study, trial, extra: Mapping[str, Any], run_trial, plan: SweepPlan,
                     started: float, tag: str):
    """Run an extra-seed trial of adaptive repeats (``adaptive.queue_extra_seeds``): the seeds
    ``extra["seeds"]`` of the configuration ``extra["params"]``, told as the mean over all the
    configuration's seeds (``_run_repeats`` with ``earlier``)."""
    assignment = suggest(trial, plan.space)
    if trial.params != dict(extra.get("params") or {}):
        raise TrialFailed(f"extra-seed trial drew params {trial.params}, expected "
                          f"{extra.get('params')} (the search space changed?)")
    trial.set_user_attr("extra_seeds_of", extra.get("parent"))
    trial.set_user_attr("extra_seeds_reason", extra.get("reason"))
    overrides = _record_config(trial, plan, assignment)
    log.info(f"{tag} trial {trial.number}: extra seeds {list(extra['seeds'])} for the config of "
             f"trial {extra.get('parent')} (adaptive repeats)")

    def earlier() -> List[Dict[str, Any]]:
        return seed_metrics_of(study.get_trials(deepcopy=False), trial.params,
                               exclude=trial.number)

    return _run_repeats(trial, overrides, run_trial, plan, started, tag,
                        seeds=[int(s) for s in extra["seeds"]], earlier=earlier)


def _record_config(trial, plan: SweepPlan, assignment: Mapping[str, Any]) -> List[str]:
    """Store the trial's own overrides (without the sweep's fixed ones) and its variant; return
    all overrides of ``assignment``."""
    overrides = plan.space.overrides(assignment)
    trial.set_user_attr("overrides", overrides[len(plan.space.fixed):])
    if VARIANT in assignment:
        trial.set_user_attr("variant", assignment[VARIANT])
    return overrides


def _set_constraints(trial, plan: SweepPlan, metrics: Mapping[str, Any]) -> None:
    from sweep.sweeper.samplers import constraint_values

    for key, value in constraint_values(plan.constraints, metrics).items():
        trial.set_constraint(key, value)


class HydraTrialRunner:
    """Run one trial as a Hydra job: compose base config + overrides, ``run_job`` it in
    ``<hydra.sweep.dir>/<trial number>``, then restore the worker's logging."""

    def __init__(self, hydra_context, master_config, task_function) -> None:
        self.hydra_context = hydra_context
        self.master_config = master_config
        self.task_function = task_function

    def __call__(self, trial, overrides: List[str], subdir: Optional[str] = None):
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import JobStatus, configure_log, run_job
        from omegaconf import OmegaConf, open_dict

        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.master_config,
                                                                     list(overrides))
        except Exception as e:
            raise TrialFailed(f"cannot compose the config: {type(e).__name__}: {e}") from None
        with open_dict(cfg):
            cfg.hydra.job.id = str(trial.number)
            cfg.hydra.job.num = trial.number
            if subdir is not None:
                cfg.hydra.sweep.subdir = subdir
        instance = HydraConfig.instance()
        worker_cfg = instance.cfg
        try:
            instance.set_config(cfg)
            run_dir = os.path.abspath(os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                                                   str(OmegaConf.select(cfg, "hydra.sweep.subdir"))))
        finally:
            instance.cfg = worker_cfg
        trial.set_user_attr("run_dir", run_dir)
        try:
            ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                          config=cfg, job_dir_key="hydra.sweep.dir",
                          job_subdir_key="hydra.sweep.subdir")
            if ret.status == JobStatus.FAILED:  # logged while the trial's log file is open
                e = ret._return_value
                log.error(f"trial {trial.number} raised {type(e).__name__}: {e}\n"
                          + "".join(traceback.format_exception(type(e), e, e.__traceback__)))
        finally:
            if worker_cfg is not None:
                configure_log(worker_cfg.hydra.job_logging, worker_cfg.hydra.verbose)
        return ret, run_dir


class WorkerTask:
    """Hydra task function of a worker job: runs ``run_worker`` with the trials as Hydra jobs.

    The worker's slot is its job number modulo ``n_workers`` and its generation the job number
    divided by ``n_workers`` (see ``worker_seed``); the run directory of the worker job is
    ``<sweep dir>/workers/<job num>``.
    """

    def __init__(self, plan: SweepPlan, task_function, hydra_context, master_config) -> None:
        self.plan = plan
        self.runner = HydraTrialRunner(hydra_context, master_config, task_function)

    def __call__(self, cfg) -> Dict[str, int]:
        from hydra.core.hydra_config import HydraConfig

        num = int(HydraConfig.get().job.num)
        n = max(1, self.plan.n_workers)
        return run_worker(self.plan, self.runner, slot=num % n, generation=num // n)
