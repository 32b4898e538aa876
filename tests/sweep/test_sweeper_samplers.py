"""Samplers, pruners, objectives and constraints by name (sweep.sweeper.samplers), in-process."""
from __future__ import annotations

import math

import optuna
import pytest

from search_space.config import ConfigError
from sweep.sweeper.params import build_space
from sweep.sweeper.samplers import (SAMPLERS, constraint_values, make_pruner, make_sampler,
                                    parse_constraints, parse_objectives, resolve_sampler_name)
from sweep.sweeper.worker import TrialFailed, objective_values, scalar_metrics

DISCRETE = build_space(["x=range(0,4)", "y=choice(a,b)"])
CONTINUOUS = build_space(["x=interval(0,1)"])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_builds_by_name(name):
    space = DISCRETE if name in ("grid", "bruteforce") else CONTINUOUS
    sampler = make_sampler(name, {}, seed=3, n_objectives=1, space=space)
    assert type(sampler).__name__ == SAMPLERS[name]


def test_auto_picks_grid_bruteforce_or_tpe():
    assert resolve_sampler_name("auto", DISCRETE) == "grid"
    assert resolve_sampler_name("auto", CONTINUOUS) == "tpe"
    cond = build_space(["x=1,2", "y=3,4"], when={"y": {"x": [1]}})
    assert resolve_sampler_name("auto", cond) == "bruteforce"
    with pytest.raises(ConfigError, match="sampler.name='sobol' is unknown; allowed: auto, tpe"):
        resolve_sampler_name("sobol", DISCRETE)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="cmaes", n_objectives=2), "cmaes handles a single objective"),
    (dict(name="random", constrained=True), "constraints need a sampler with constraints support"),
    (dict(name="grid", constrained=True), "grid has none"),
    (dict(name="tpe", options={"nope": 1}), "options.nope is not an option of TPESampler"),
    (dict(name="tpe", options={"seed": 1}), "options.seed is not an option of TPESampler"),
    (dict(name="tpe", options={"group": True, "multivariate": False}),
     "hydra.sweeper.sampler (tpe): ``group`` option can only be enabled"),
])
def test_sampler_errors(kwargs, message):
    kw = dict(options={}, seed=None, n_objectives=1, space=CONTINUOUS)
    kw.update(kwargs)
    name = kw.pop("name")
    with pytest.raises(ConfigError) as err:
        make_sampler(name, kw.pop("options"), **kw)
    assert message in str(err.value)


def test_constrained_samplers_accept_constraints():
    for name in ("tpe", "nsgaii", "nsgaiii", "gp"):
        make_sampler(name, {}, seed=0, n_objectives=2, space=CONTINUOUS, constrained=True)


def test_pruners():
    assert type(make_pruner("median", {"n_warmup_steps": 2}, n_objectives=1)).__name__ == "MedianPruner"
    assert type(make_pruner("none", {}, n_objectives=2)).__name__ == "NopPruner"
    with pytest.raises(ConfigError, match="Optuna prunes single-objective studies only"):
        make_pruner("median", {}, n_objectives=2)
    with pytest.raises(ConfigError, match="pruner.options.warmup is not an option of MedianPruner"):
        make_pruner("median", {"warmup": 2}, n_objectives=1)


def test_objectives_and_constraints_parsing():
    assert parse_objectives({"val_top1": "maximize", "madds": "MINIMIZE"}) == (
        ["val_top1", "madds"], ["maximize", "minimize"])
    with pytest.raises(ConfigError, match="objectives.madds='down'; allowed: maximize, minimize"):
        parse_objectives({"madds": "down"})
    with pytest.raises(ConfigError, match="objectives is empty"):
        parse_objectives({})
    cons = parse_constraints(["madds <= 30e6", "val_top1>=50"])
    assert cons == [("madds", "<=", 3e7), ("val_top1", ">=", 50.0)]
    assert constraint_values(cons, {"madds": 2e7, "val_top1": 60}) == {
        "madds<=30000000.0": -1e7, "val_top1>=50.0": -10.0}
    assert constraint_values(cons, {"madds": float("nan")})["madds<=30000000.0"] == math.inf
    with pytest.raises(ConfigError, match="cannot read 'madds < = 3'"):
        parse_constraints(["madds < = 3"])


@pytest.mark.parametrize("result, reason", [
    (None, "the task returned NoneType"),
    ({"val_top1": float("nan")}, "objective 'val_top1' is nan"),
    ({"val_top1": float("inf")}, "objective 'val_top1' is inf"),
    ({"loss": 1.0}, "objective 'val_top1' is missing from the task's metrics (keys: loss)"),
    ({"val_top1": "high"}, "objective 'val_top1' is 'high', not a number"),
    ({"status": "diverged", "val_top1": 1.0, "fail_reason": "loss nan at epoch 2"},
     "trial status 'diverged': loss nan at epoch 2"),
])
def test_objective_values_fail_with_reasons(result, reason):
    with pytest.raises(TrialFailed) as err:
        objective_values(result, ["val_top1"])
    assert str(err.value).startswith(reason)


def test_objective_values_and_scalar_metrics():
    assert objective_values(0.5, ["val_top1"])[0] == [0.5]
    values, metrics = objective_values({"status": "ok", "val_top1": 70, "madds": 3e6},
                                       ["val_top1", "madds"])
    assert values == [70.0, 3e6]
    import numpy as np

    assert scalar_metrics({"a": 1, "b": float("nan"), "c": [1, 2], "d": np.float32(0.5),
                           "e": "x", "f": None}) == {"a": 1, "b": "nan", "d": 0.5, "e": "x", "f": None}


def test_worker_seeds():
    from sweep.sweeper.worker import worker_seed

    # grid: one seed for all workers and runs (they share GridSampler's seeded grid order)
    assert {worker_seed("grid", 5, s, g, n) for s in range(3) for g in range(2) for n in (0, 9)} == {5}
    assert worker_seed("tpe", None, 1, 0, 0) is None
    seeds = {worker_seed("random", 5, s, g, n) for s in range(3) for g in range(2) for n in (0, 9)}
    assert len(seeds) == 12  # distinct per worker, generation and study size
    assert worker_seed("random", 5, 1, 0, 9) == worker_seed("random", 5, 1, 0, 9)
