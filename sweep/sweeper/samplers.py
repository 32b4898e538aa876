"""Optuna samplers, pruners, objectives and constraints from ``hydra.sweeper`` settings.

Samplers: https://optuna.readthedocs.io/en/stable/reference/samplers/index.html;
pruners: https://optuna.readthedocs.io/en/stable/reference/pruners.html.
"""
from __future__ import annotations

import inspect
import math
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from search_space.config import ConfigError
from sweep.sweeper.params import SearchSpace

SAMPLERS = {
    "tpe": "TPESampler", "nsgaii": "NSGAIISampler", "nsgaiii": "NSGAIIISampler",
    "gp": "GPSampler", "random": "RandomSampler", "qmc": "QMCSampler", "grid": "GridSampler",
    "bruteforce": "BruteForceSampler", "cmaes": "CmaEsSampler",
}
SINGLE_OBJECTIVE = frozenset({"cmaes"})
PRUNERS = {
    "none": "NopPruner", "median": "MedianPruner", "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner",
    "threshold": "ThresholdPruner", "wilcoxon": "WilcoxonPruner",
}
DIRECTIONS = ("maximize", "minimize")
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|<|>)\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*$")


def parse_objectives(objectives: Mapping[str, Any]) -> Tuple[List[str], List[str]]:
    """``{metric: maximize|minimize}`` -> (metric names, Optuna directions)."""
    if not objectives:
        raise ConfigError("hydra.sweeper.objectives is empty; give {metric: maximize|minimize}, "
                          "e.g. {val_top1: maximize}")
    names, directions = [], []
    for name, direction in objectives.items():
        d = str(direction).lower()
        if d not in DIRECTIONS:
            raise ConfigError(f"hydra.sweeper.objectives.{name}={direction!r}; allowed: "
                              f"{', '.join(DIRECTIONS)}")
        names.append(str(name))
        directions.append(d)
    return names, directions


def parse_constraints(constraints: Sequence[str]) -> List[Tuple[str, str, float]]:
    """``["madds <= 30e6"]`` -> ``[("madds", "<=", 3e7)]``; raises ``ConfigError`` on bad text."""
    out = []
    for text in constraints or []:
        m = _CONSTRAINT.match(str(text))
        if not m:
            raise ConfigError(f"hydra.sweeper.constraints: cannot read {text!r}; write "
                              f"'<metric> <= <number>' or '<metric> >= <number>'")
        out.append((m.group(1), m.group(2), float(m.group(3))))
    return out


def constraint_values(constraints: Sequence[Tuple[str, str, float]],
                      metrics: Mapping[str, Any]) -> Dict[str, float]:
    """{``"madds<=30000000.0"``: value} for ``Trial.set_constraint`` (Optuna 5's replacement
    of ``constraints_func``): feasible when <= 0; a missing or NaN metric is infeasible (inf)."""
    out = {}
    for metric, op, bound in constraints:
        value = metrics.get(metric)
        key = f"{metric}{op}{bound!r}"
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            out[key] = float("inf")
        elif op in ("<=", "<"):
            out[key] = float(value) - bound
        else:
            out[key] = bound - float(value)
    return out


def resolve_sampler_name(name: str, space: SearchSpace) -> str:
    """``auto`` -> grid (finite space), bruteforce (finite conditional space) or tpe."""
    name = str(name).lower()
    if name != "auto":
        if name not in SAMPLERS:
            raise ConfigError(f"hydra.sweeper.sampler.name={name!r} is unknown; allowed: auto, "
                              f"{', '.join(SAMPLERS)}")
        return name
    if space.size() is None:
        return "tpe"
    return "bruteforce" if space.conditional else "grid"


def _check_options(cls, options: Mapping[str, Any], key: str, reserved=()) -> Dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p not in ("self",) and p not in reserved
               and params[p].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    for k in options:
        if k not in allowed:
            raise ConfigError(f"{key}.{k} is not an option of {cls.__name__}; allowed: "
                              f"{', '.join(allowed) or '(none)'}")
    return dict(options)


def make_sampler(name: str, options: Mapping[str, Any], *, seed: Optional[int],
                 n_objectives: int, space: SearchSpace, constrained: bool = False):
    """Build the Optuna sampler ``name`` (not ``auto``) with ``options`` as keyword arguments.

    Raises ``ConfigError`` for unknown names/options, cmaes with several objectives,
    constraints with a sampler that ignores them, and grid on a space it cannot enumerate.
    Constraint values reach the sampler through ``Trial.set_constraint`` (worker).
    """
    import optuna

    if name not in SAMPLERS:
        raise ConfigError(f"hydra.sweeper.sampler.name={name!r} is unknown; allowed: auto, "
                          f"{', '.join(SAMPLERS)}")
    if name in SINGLE_OBJECTIVE and n_objectives > 1:
        raise ConfigError(f"hydra.sweeper.sampler.name={name} handles a single objective; this "
                          f"sweep has {n_objectives} (use tpe, nsgaii, nsgaiii, gp or random)")
    cls = _grid_sampler_class() if name == "grid" else getattr(optuna.samplers, SAMPLERS[name])
    kwargs = _check_options(cls, dict(options or {}), "hydra.sweeper.sampler.options",
                            reserved=("search_space", "seed", "constraints_func"))
    params = inspect.signature(cls.__init__).parameters
    if constrained and "constraints_func" not in params:
        raise ConfigError(f"hydra.sweeper.constraints need a sampler with constraints "
                          f"support (tpe, nsgaii, nsgaiii, gp); {name} has none")
    if "seed" in params:
        kwargs["seed"] = seed
    if name == "grid":
        kwargs["search_space"] = space.grid()
    try:
        with _quiet_experimental():
            return cls(**kwargs)
    except (ImportError, ModuleNotFoundError) as e:
        raise ConfigError(f"hydra.sweeper.sampler.name={name} needs a missing package: {e} "
                          f"(e.g. pip install cmaes for cmaes)") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.sampler ({name}): {e}") from None


_GRID_SAMPLER = None


def _grid_sampler_class():
    """Optuna's GridSampler without its own stop rule.

    GridSampler stops the study after a trial when it sees no unvisited grid point, counting
    every finished trial as a visit: a failed trial whose retry is still queued, or the last
    missing point drawn twice and skipped by both workers. The worker's ``work_left`` (queued
    trials, budget, grid points held by no trial) decides when to stop instead.
    """
    global _GRID_SAMPLER
    if _GRID_SAMPLER is None:
        import optuna

        class GridSampler(optuna.samplers.GridSampler):
            __doc__ = _grid_sampler_class.__doc__

            def after_trial(self, study, trial, state, values) -> None:
                return None

        _GRID_SAMPLER = GridSampler
    return _GRID_SAMPLER


def make_pruner(name: str, options: Mapping[str, Any], *, n_objectives: int):
    """Build the Optuna pruner ``name``; ``none`` prunes nothing."""
    import optuna

    name = str(name).lower()
    if name not in PRUNERS:
        raise ConfigError(f"hydra.sweeper.pruner.name={name!r} is unknown; allowed: "
                          f"{', '.join(PRUNERS)}")
    if name != "none" and n_objectives > 1:
        raise ConfigError(f"hydra.sweeper.pruner.name={name}: Optuna prunes single-objective "
                          f"studies only; this sweep has {n_objectives} objectives (use none)")
    cls = getattr(optuna.pruners, PRUNERS[name])
    kwargs = _check_options(cls, dict(options or {}), "hydra.sweeper.pruner.options")
    try:
        with _quiet_experimental():
            return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.pruner ({name}): {e}") from None


class _quiet_experimental:
    def __enter__(self):
        import warnings

        import optuna

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
