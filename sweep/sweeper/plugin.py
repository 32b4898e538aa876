"""The Hydra Sweeper class; a thin adapter over ``sweep.sweeper.impl`` (imported lazily, so
plugin discovery does not import optuna or torch).

Hydra instantiates plugins only from the ``hydra_plugins`` package, so the class Hydra sees is
``hydra_plugins.coordsweep_sweeper.coordsweep_sweeper.CoordSweeper``, a subclass of this one.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class CoordSweeper(Sweeper):
    """Optuna-driven sweeper with barrier-free workers; arguments mirror
    ``sweep.sweeper.config.CoordSweeperConf`` (see there for their meaning)."""

    def __init__(self, study_name: str, storage: Optional[str], objectives: Dict[str, str],
                 constraints: List[str], sampler: Any, pruner: Any, params: Optional[Dict[str, Any]],
                 when: Optional[Dict[str, Any]], variants: Optional[Dict[str, Any]], ofat: Any,
                 enqueue: Optional[Dict[str, Any]], n_trials: Optional[int],
                 timeout: Optional[float], n_workers: int, reuse_completed: bool,
                 heartbeat_interval: Optional[int], grace_period: Optional[int], max_retry: int,
                 max_worker_restarts: int, validate: Optional[str], report: bool = True,
                 scheduler: Any = None, repeats: int = 1, seed_key: str = "seed",
                 adaptive_repeats: Any = None, reuse_pruned: bool = True) -> None:
        from sweep.sweeper.impl import CoordSweeperImpl

        self._impl = CoordSweeperImpl(
            study_name=study_name, storage=storage, objectives=objectives,
            constraints=constraints, sampler=sampler, pruner=pruner, params=params, when=when,
            variants=variants, ofat=ofat, enqueue=enqueue, n_trials=n_trials, timeout=timeout,
            n_workers=n_workers, reuse_completed=reuse_completed,
            heartbeat_interval=heartbeat_interval, grace_period=grace_period,
            max_retry=max_retry, max_worker_restarts=max_worker_restarts, validate=validate,
            report=report, scheduler=scheduler, repeats=repeats, seed_key=seed_key,
            adaptive_repeats=adaptive_repeats, reuse_pruned=reuse_pruned)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self._impl.sweep(arguments)
