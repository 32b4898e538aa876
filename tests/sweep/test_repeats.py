"""``hydra.sweeper.repeats``: every configuration trained with the same seeds (paired), Optuna told
the mean, per-seed metrics and the 95 % interval stored; analysis sees one row per seed.

Uses the tiny app (tests/sweep/apps/sleep_app.py) with ``seed_key=y`` (its score is x + 0.1 y,
so seeds 0, 1, 2 give x, x + 0.1, x + 0.2).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats

from sweep.sweeper.worker import summarize_seeds
from tests.sweep.apps.harness import load_study, run_app, trainlog

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_summarize_seeds_mean_sd_and_t_interval():
    out = summarize_seeds([{"a": 1.0}, {"a": 2.0}, {"a": 4.0}], ["a"])
    assert out["a"] == pytest.approx(7 / 3)
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert out["a_std"] == pytest.approx(sd)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert out["a_lo"] == pytest.approx(7 / 3 - half) and out["a_hi"] == pytest.approx(7 / 3 + half)
    one = summarize_seeds([{"a": 1.0}], ["a"])
    assert one["a"] == 1.0 and math.isnan(one["a_std"]) and math.isnan(one["a_lo"])
    same = summarize_seeds([{"a": 3.0}, {"a": 3.0}], ["a"])
    assert same["a_std"] == 0.0 and same["a_lo"] == same["a_hi"] == 3.0


def test_repeats_pair_seeds_across_configs_and_tell_the_mean(tmp_path):
    run_app(["x=choice(0,1,2,3)", "hydra.sweeper.repeats=3", "hydra.sweeper.seed_key=y",
             "modes={x3:raise}", "hydra.sweeper.n_workers=2", "hydra.sweeper.report=false"],
            tmp_path)
    # (a worker may open one extra trial and skip it: the budget was used up by the other)
    trials = [t for t in load_study(tmp_path).get_trials()
              if "coordsweep:skipped" not in t.system_attrs]
    # a failing seed fails the whole trial, with the seed named
    failed = [t for t in trials if t.params["x"] == 3]
    assert [t.state for t in failed] == [TrialState.FAIL]
    assert failed[0].user_attrs["fail_reason"].startswith("y=0: RuntimeError: boom")
    trials = [t for t in trials if t.params["x"] != 3]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # every config trained once per seed, with the same seeds 0, 1, 2 (common random numbers)
    assert trainlog(tmp_path) == {**{f"x={x} y={y} group=a label=plain": 1
                                     for x in range(3) for y in range(3)},
                                  "x=3 y=0 group=a label=plain": 1}
    for t in trials:
        x = t.params["x"]
        assert t.params == {"x": x}  # the seed is not an Optuna param
        assert t.value == pytest.approx(x + 0.1)  # the mean over seeds
        assert t.user_attrs["seeds"] == [0, 1, 2] and t.user_attrs["repeats"] == 3
        per_seed = t.user_attrs["seed_metrics"]
        assert [m["seed"] for m in per_seed] == [0, 1, 2]
        assert [m["val_top1"] for m in per_seed] == pytest.approx([x, x + 0.1, x + 0.2])
        assert t.user_attrs["val_top1_std"] == pytest.approx(0.1)
        half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
        assert t.user_attrs["val_top1_lo"] == pytest.approx(x + 0.1 - half)
        assert t.user_attrs["val_top1_hi"] == pytest.approx(x + 0.1 + half)
        # per-seed run dirs under the trial's dir, each with its own metrics
        assert t.user_attrs["run_dir"] == str(tmp_path / "test" / str(t.number))
        for s, m in enumerate(per_seed):
            d = Path(m["run_dir"])
            assert d == tmp_path / "test" / str(t.number) / f"seed{s}"
            assert json.loads((d / "metrics.json").read_text())["val_top1"] == pytest.approx(x + 0.1 * s)
        summary = json.loads((tmp_path / "test" / str(t.number) / "repeats.json").read_text())
        assert summary["summary"]["val_top1"] == pytest.approx(x + 0.1)

    # analysis: one row per (config, seed), aggregated per config with the same interval
    from analysis.results import load_results

    res = load_results(tmp_path / "test")
    done = res.trials[res.trials["state"] == "complete"]
    assert (res.trials["state"] == "failed").sum() >= 1
    assert len(done) == 9
    assert sorted(done.groupby("config")["seed"].apply(lambda s: tuple(sorted(s))).unique()) == [(0, 1, 2)]
    cfg = res.configs.set_index("config")
    for x in range(3):
        row = cfg.loc[f"x={x}"]
        assert row["seeds"] == "0 1 2"
        assert row["n_seeds"] == 3
        assert row["val_top1_mean"] == pytest.approx(x + 0.1)
        assert row["val_top1_sd"] == pytest.approx(0.1)


@pytest.mark.parametrize("args,message", [
    (["x=choice(0,1)", "y=choice(0,1)", "hydra.sweeper.repeats=2", "hydra.sweeper.seed_key=y"],
     "sets y to 0..1 itself"),
    (["x=choice(0,1)", "hydra.sweeper.repeats=2", "hydra.sweeper.seed_key=y",
      "hydra.sweeper.pruner.name=median"], "does not combine with hydra.sweeper.repeats=2"),
    (["x=choice(0,1)", "hydra.sweeper.repeats=2"], "does not compose"),  # no `seed` key in the app
])
def test_repeats_config_errors_before_training(tmp_path, args, message):
    proc = run_app(args, tmp_path, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not trainlog(tmp_path)
