"""Schema of ``hydra.sweeper`` for the coordsweep sweeper (values live in conf/hydra/sweeper/).

Registered in Hydra's ConfigStore as ``hydra/sweeper/base_coordsweep``; the shim under
``hydra_plugins/`` calls ``register_configs()`` at plugin discovery. Optuna docs:
https://optuna.readthedocs.io/en/stable/reference/index.html
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

SWEEPER_TARGET = "hydra_plugins.coordsweep_sweeper.coordsweep_sweeper.CoordSweeper"


@dataclass
class SamplerConf:
    """An Optuna sampler chosen by name (https://optuna.readthedocs.io/en/stable/reference/samplers)."""
    # auto | tpe | nsgaii | nsgaiii | gp | random | qmc | grid | bruteforce | cmaes.
    # auto: grid for a finite space, bruteforce for a finite conditional space, tpe otherwise
    name: str = "auto"
    # sampler seed; grid uses it as is in every worker, other samplers mix it with the worker
    # slot and the number of trials already stored (workers and resumed runs draw new points)
    seed: Optional[int] = None
    # keyword arguments of the Optuna sampler class, e.g. {n_startup_trials: 10} for tpe
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PrunerConf:
    """An Optuna pruner chosen by name; single-objective studies only (Optuna's limit)."""
    # none | median | percentile | successive_halving | hyperband | threshold | patient | wilcoxon
    name: str = "none"
    # keyword arguments of the Optuna pruner class, e.g. {n_warmup_steps: 5} for median
    options: Dict[str, Any] = field(default_factory=dict)
    # metric reported after each epoch (trial.report); null = the objective
    metric: Optional[str] = None


@dataclass
class OfatConf:
    """One factor at a time: the base config plus each factor value varied alone."""
    # overrides of the base config (e.g. {attention: ca}); every variant starts from it
    base: Dict[str, Any] = field(default_factory=dict)
    # name of the base variant
    base_name: str = "default"
    # factor -> list of values tried one at a time (values are YAML values or override strings)
    factors: Dict[str, Any] = field(default_factory=dict)


@dataclass
class SchedulerConf:
    """Rung-based early stopping that also works for several objectives (MO-ASHA style,
    Schmucker et al. 2021, https://arxiv.org/abs/2106.12639; see sweep/sweeper/rungs.py)."""
    # none | mo_asha
    name: str = "none"
    # first rung (epochs); rungs at min_epochs * eta**k
    min_epochs: int = 1
    # keep the top 1/eta of the trials that reached a rung
    eta: int = 3
    # accuracy in the per-epoch record (maximized unless the objectives minimize it)
    metric: str = "val_top1"
    # cost in the per-epoch record (minimized unless the objectives maximize it); null = none
    cost: Optional[str] = "madds"
    # the trials' full budget (train.epochs): rungs at or beyond it stop nothing (a trial
    # that trained every epoch completes); null = the app's train.epochs if it has one
    max_epochs: Optional[int] = None
    # a trial whose metric is within min_spread of the best at the rung always continues
    # (0 = only exact ties: a rung where all trials are still at chance stops nothing)
    min_spread: float = 0.0


@dataclass
class AdaptiveRepeatsConf:
    """Extra paired seeds only for configurations whose 95% interval overlaps the current Pareto
    front (sweep/sweeper/adaptive.py). Needs ``repeats >= 2``."""
    # total seeds of a configuration that overlaps the front: it gets seeds repeats..max_repeats-1
    # (the same for all such configs) in one extra trial outside n_trials; must be > repeats;
    # null or 0 = off
    max_repeats: Optional[int] = None


@dataclass
class CoordSweeperConf:
    """``hydra.sweeper`` of the coordsweep sweeper: an Optuna study driven through Hydra.

    Every trial is a Hydra job in ``<hydra.sweep.dir>/<trial number>``; workers ask Optuna for
    a trial, run it and tell the result, with no batch barrier. See README "Sweeps".
    """
    _target_: str = SWEEPER_TARGET
    # study name in the storage; running the same command again continues this study
    study_name: str = "${hydra.job.name}"
    # null = sqlite:///<hydra.sweep.dir>/optuna.db; or any SQLAlchemy URL Optuna accepts
    # (sqlite:///path.db, postgresql://user:pass@host:port/db, mysql+pymysql://...) or
    # journal:///abs/path.log / journal:relative/path.log (Optuna's journal file storage)
    storage: Optional[str] = None
    # metric name -> maximize | minimize, read from the dict the task returns (order = Optuna's)
    objectives: Dict[str, str] = field(default_factory=lambda: {"val_top1": "maximize"})
    # constraints "metric <= bound" / "metric >= bound" on returned metrics (samplers with
    # constraints_func: tpe, nsgaii, nsgaiii, gp)
    constraints: List[str] = field(default_factory=list)
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # multi-objective rung scheduler (early stopping by non-dominated sorting at rungs)
    scheduler: SchedulerConf = field(default_factory=SchedulerConf)
    # train every configuration with seeds 0..repeats-1 (paired across configurations); one
    # trial runs them all and tells Optuna the mean; per-seed metrics in user attr seed_metrics
    repeats: int = 1
    # config key that receives the seed of a repeat
    seed_key: str = "seed"
    # adaptive repeats: when a worker has nothing else to do, configs whose 95% interval of the
    # objective means overlaps the Pareto front of the means (not clearly dominated: no front
    # config dominates it with the front config at its pessimistic interval ends and this one at
    # its optimistic ends; one objective: intervals overlap the best's) get extra seeds up to
    # max_repeats; Optuna is told the mean over all seeds; analysis merges them by config.
    # Extra-seed trials are queued trials any worker runs, outside n_trials; while adaptive
    # repeats are on, an idle worker waits for running trials instead of exiting
    adaptive_repeats: AdaptiveRepeatsConf = field(default_factory=AdaptiveRepeatsConf)
    # config key -> override value: choice(...), a,b,c, range(a,b[,step]), interval(a,b),
    # int(interval(a,b)), tag(log, ...), shuffle(...), or a plain value (fixed for all trials)
    params: Dict[str, Any] = field(default_factory=dict)
    # param -> {key: [values]}: sample the param only when key has one of these values
    when: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # named configs (name -> {key: value}); the study samples the name as param `variant`
    variants: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # one-factor-at-a-time variants (added to `variants`)
    ofat: Optional[OfatConf] = None
    # named configs (name -> {param: value}) put in the queue before any sampling
    enqueue: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # total trials over all workers and runs (finished trials count on resume);
    # null = the size of a finite search space
    n_trials: Optional[int] = None
    # seconds after which workers stop asking for new trials (running trials finish)
    timeout: Optional[float] = None
    # workers asking/running/telling concurrently (local processes with the basic launcher,
    # or jobs of the configured launcher: joblib, submitit, ray)
    n_workers: int = 1
    # reuse the stored result of a COMPLETE trial with identical params instead of training
    # (not with the grid sampler: a grid point runs once, a second draw of it is skipped and
    # uses no budget)
    reuse_completed: bool = True
    # record a trial whose params equal a PRUNED trial's (stopped early by the pruner or the
    # rung scheduler) as pruned with that trial's last fidelity, metrics and intermediate
    # values, user attr reused_from, instead of training it again (not with the grid sampler)
    reuse_pruned: bool = True
    # RDB storages: seconds between heartbeats of a running trial (null = no heartbeat)
    heartbeat_interval: Optional[int] = 60
    # seconds without heartbeat after which a running trial is failed (null = 2 x interval)
    grace_period: Optional[int] = None
    # how many times a trial interrupted by a dead worker is retried
    max_retry: int = 2
    # how many times dead local workers are replaced (or launcher jobs relaunched) per run
    max_worker_restarts: int = 10
    # write the report (analysis.report: HTML + Markdown in <sweep dir>/report) when the sweep ends
    report: bool = True
    # dotted path of a callable(cfg) run on composed configs before any training
    # (raises on a bad value), e.g. search_space.config.validate_search_space
    validate: Optional[str] = None


def register_configs() -> None:
    """Store the schema as ``hydra/sweeper/base_coordsweep`` in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="hydra/sweeper", name="base_coordsweep",
                                 node=CoordSweeperConf, provider="coordsweep")
