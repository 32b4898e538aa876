"""Issue 6 leftovers in the sweeper: adaptive repeats (``hydra.sweeper.adaptive_repeats``, extra
paired seeds only for configurations whose 95 % interval overlaps the Pareto front;
sweep/sweeper/adaptive.py) and reuse of PRUNED trials (``hydra.sweeper.reuse_pruned``).

The real sweeps run the tiny app (tests/sweep/apps/sleep_app.py) with seed key ``y``: its score
is ``x + spread * y``, so seeds 0, 1 give x and x + spread, and seeds 2, 3 continue the line.
``search_space=adaptive`` (tests/sweep/apps/conf/search_space/adaptive.yaml) holds seven named
configs A..G designed so that A and B are the (val_top1 max, madds min) front, C, E and G
overlap it and D and F are clearly dominated (numbers in ``test_overlap_rule_multi_objective``).
"""
from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from scipy import stats

from search_space.config import ConfigError
from sweep.sweeper.adaptive import EXTRA, check_adaptive, decide, front_overlap
from tests.sweep.apps.harness import kill_group, load_study, run_app, start_app, trainlog, wait_for

optuna.logging.set_verbosity(optuna.logging.WARNING)
NAN = math.nan

# -- the overlap rule on hand-made configurations -------------------------------------------------

# name: (val_top1 mean, lo, hi), (madds mean, lo, hi); val_top1 maximized, madds minimized
HAND_MADE = {
    "A": ((10.05, 9.41, 10.69), (2, 2, 2)),    # front: most accurate
    "B": ((8.05, 7.41, 8.69), (1, 1, 1)),      # front: cheapest
    "C": ((9.55, 8.91, 10.19), (3, 3, 3)),     # A dominates its mean, but C's hi beats A's lo
    "D": ((5.05, 4.41, 5.69), (3, 3, 3)),      # clearly dominated: A's lo (9.41, 2) beats it
    "E": ((7.05, 6.41, 7.69), (1.5, 1.5, 1.5)),  # B dominates its mean; its hi beats B's lo
    "F": ((6.05, 5.41, 6.69), (1.5, 1.5, 1.5)),  # clearly dominated by B (7.41 > 6.69, 1 < 1.5)
    "G": ((6.15, 4.24, 8.06), (1.5, 1.5, 1.5)),  # F's place but a wide interval: overlaps
    "H": ((7.0, 6.59, 7.41), (1, 1, 1)),       # its hi touches B's lo at equal cost: overlaps
    "I": ((3.0, NAN, NAN), (5, 5, 5)),         # no interval (NaN): never clearly dominated
    "J": ((9.0, 8.9, 9.1), (2.5, 1.9, 3.1)),   # a cost interval reaching below A's cost: overlaps
    "K": ((9.0, 8.9, 9.1), (2.5, 2.5, 2.5)),   # J with an exact cost: clearly dominated by A
}


def _columns(table):
    names = list(table)
    means = [[table[n][0][0], table[n][1][0]] for n in names]
    lows = [[table[n][0][1], table[n][1][1]] for n in names]
    highs = [[table[n][0][2], table[n][1][2]] for n in names]
    return names, means, lows, highs


def test_overlap_rule_multi_objective():
    names, means, lows, highs = _columns(HAND_MADE)
    res = front_overlap(means, lows, highs, ["maximize", "minimize"])
    assert [names[i] for i in res.front] == ["A", "B"]
    assert [names[i] for i in res.overlapping] == ["A", "B", "C", "E", "G", "H", "I", "J"]
    assert {names[i]: names[f] for i, f in res.dominated_by.items()} == {"D": "A", "F": "B",
                                                                         "K": "A"}
    # the same points with both objectives flipped (accuracy as an error to minimize, cost as a
    # negative to maximize) give the same decisions
    flip = lambda rows: [[-a, -c] for a, c in rows]  # noqa: E731
    res2 = front_overlap(flip(means), flip(highs), flip(lows), ["minimize", "maximize"])
    assert (res2.front, res2.overlapping, res2.dominated_by) == (res.front, res.overlapping,
                                                                 res.dominated_by)


def test_overlap_rule_single_objective_and_candidates():
    means = [[0.5], [0.8], [0.7], [0.3], [0.69]]
    lows = [[0.4], [0.75], [0.6], [0.1], [0.63]]
    highs = [[0.6], [0.85], [0.8], [0.5], [0.75]]
    # maximize: the front is the best mean (1); 2 overlaps it, 4 touches it (0.75 = 0.75)
    res = front_overlap(means, lows, highs, ["maximize"])
    assert res.front == [1] and res.overlapping == [1, 2, 4]
    assert res.dominated_by == {0: 1, 3: 1}
    # minimize: the best is 3 with [0.1, 0.5]; only 0 ([0.4, 0.6]) reaches below 0.5
    res = front_overlap(means, lows, highs, ["minimize"])
    assert res.front == [3] and res.overlapping == [0, 3]
    # candidates (feasible configs): without 1 the front is 2 ([0.6, 0.8]); 0 touches it
    res = front_overlap(means, lows, highs, ["maximize"], candidates=[0, 2, 3, 4])
    assert res.front == [2] and res.overlapping == [0, 1, 2, 4] and res.dominated_by == {3: 2}


def _trial(number, variant, values, state=TrialState.COMPLETE, extra=None, system=None,
           **user_attrs):
    """A stored repeat trial of config ``variant`` whose seed s scored values[s] (madds 1)."""
    seeds = user_attrs.pop("seeds", range(len(values)))
    ua = {"seed_metrics": [{"seed": s, "val_top1": v, "madds": 1.0} for s, v in zip(seeds, values)],
          **user_attrs}
    system = dict(system or {}, **({EXTRA: extra} if extra else {}))
    t = create_trial(state=state, params={"variant": variant},
                     distributions={"variant": CategoricalDistribution(list("ABCDEF"))},
                     values=([sum(values) / len(values), 1.0]
                             if state == TrialState.COMPLETE else None),
                     user_attrs=ua, system_attrs=system)
    t.number = number
    return t


def test_decide_merges_seeds_and_queues_each_config_once():
    extra_c = {"parent": 2, "params": {"variant": "C"}, "seeds": [2, 3], "reason": "r"}
    extra_d = {"parent": 3, "params": {"variant": "D"}, "seeds": [2, 3], "reason": "r"}
    trials = [
        _trial(0, "A", [10.0, 10.2]),                         # front
        _trial(1, "B", [5.0, 5.2]),                           # clearly dominated by A
        _trial(2, "C", [9.8, 10.0]),                          # overlaps; extra trial queued
        _trial(3, "D", [9.9, 10.1]),                          # overlaps; its extra trial failed
        _trial(4, "E", [10.5, 10.7], system={"constraints:madds<=0.5": 0.5}),  # infeasible
        _trial(5, "A", [10.0, 10.2], reused_from=0),          # a copy: ignored
        _trial(6, "C", [], state=TrialState.WAITING, extra=extra_c, seeds=[]),
        _trial(7, "D", [], state=TrialState.FAIL, extra=extra_d, seeds=[]),
        _trial(8, "F", [9.0, 9.6]),                           # wide: overlaps
        _trial(9, "F", [9.3, 9.3], seeds=[2, 3]),             # F's seeds 2, 3 already ran
    ]
    d = decide(trials, ["val_top1", "madds"], ["maximize", "minimize"], max_repeats=4)
    assert d.front == [0]
    assert d.overlapping == [0, 2, 3, 4, 8]   # E's interval overlaps too, but it is infeasible
    assert d.dominated_by == {1: 0}
    # A gets seeds 2, 3; C and D already have an extra trial (queued / failed: not again); E is
    # infeasible; F has its four seeds (merged over trials 8 and 9)
    assert d.extra == {0: [2, 3]}
    assert "on the Pareto front" in d.reasons[0] and "extra seeds [2, 3]" in d.reasons[0]
    assert d.configs[8].seeds == [0, 1, 2, 3] and d.configs[8].trials == [8, 9]
    assert d.configs[8].stats["val_top1"] == pytest.approx(9.3)
    assert d.configs[0].trials == [0]
    # a larger max_repeats: only seeds that neither finished nor failed are missing
    d5 = decide(trials, ["val_top1", "madds"], ["maximize", "minimize"], max_repeats=5)
    assert d5.extra == {0: [2, 3, 4], 3: [4], 8: [4]}


def test_check_adaptive_values():
    assert check_adaptive(None, 1) == 0
    assert check_adaptive({"max_repeats": None}, 1) == 0
    assert check_adaptive({"max_repeats": 0}, 3) == 0
    assert check_adaptive({"max_repeats": 5}, 3) == 5
    assert check_adaptive({"max_repeats": "5"}, 2) == 5
    for conf, repeats, message in [
        ({"max_repeats": 3}, 3, r"max_repeats=3 must be an integer > hydra.sweeper.repeats \(=3\)"),
        ({"max_repeats": 3}, 1, r"max_repeats=3 needs hydra.sweeper.repeats >= 2"),
        ({"max_repeats": -1}, 2, r"max_repeats=-1 must be an integer > hydra.sweeper.repeats"),
        ({"max_repeats": 2.5}, 2, r"max_repeats=2.5 must be an integer"),
        ({"max_repeats": "many"}, 2, r"max_repeats='many' must be an integer"),
        ({"max_repeats": True}, 2, r"max_repeats=True must be an integer"),
        ({"max": 4}, 2, r"adaptive_repeats: unknown key\(s\) \['max'\]; allowed: max_repeats"),
        (4, 2, r"adaptive_repeats=4 must be null or a mapping"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_adaptive(conf, repeats)


# -- real sweeps ----------------------------------------------------------------------------------

ARGS = ["search_space=adaptive"]
X = {"A": 10, "B": 8, "C": 9.5, "D": 5, "E": 7, "F": 6, "G": 6}
MADDS = {"A": 2, "B": 1, "C": 3, "D": 3, "E": 1.5, "F": 1.5, "G": 1.5}
SPREAD = {**{n: 0.1 for n in X}, "G": 0.3}
EXPECTED = ["A", "B", "C", "E", "G"]  # overlap the front after two seeds


def _key(name: str, seed: int) -> str:
    return f"x={X[name]} y={seed} group=a label={name}"


def _by_variant(trials):
    out = {}
    for t in trials:
        if "coordsweep:skipped" not in t.system_attrs:
            out.setdefault(t.params["variant"], []).append(t)
    return out


def _check_final(root, extra_seeds: dict) -> None:
    """The merged state: every config has seeds 0, 1 in its first trial; the expected ones have
    seeds 2, 3 in one COMPLETE extra-seed trial told the mean over all four seeds; analysis
    merges them per configuration."""
    study = load_study(root, "adaptive")
    by = _by_variant(study.get_trials())
    assert sorted(by) == sorted(X)
    for name, ts in by.items():
        first, rest = ts[0], [t for t in ts[1:] if t.state == TrialState.COMPLETE]
        x, s = X[name], SPREAD[name]
        assert first.state == TrialState.COMPLETE and first.user_attrs["seeds"] == [0, 1]
        assert first.values == pytest.approx([x + s / 2, MADDS[name]])
        if name not in extra_seeds:
            assert rest == [] and not any(EXTRA in t.system_attrs for t in ts)
            continue
        (extra,) = rest
        assert extra.system_attrs[EXTRA]["parent"] == first.number
        assert extra.system_attrs[EXTRA]["seeds"] == [2, 3]
        assert extra.params == first.params
        # paired: the same seeds 2, 3 for every config, in its own run dirs
        assert extra.user_attrs["seeds"] == [2, 3]
        assert [m["y"] for m in extra.user_attrs["seed_metrics"]] == [2, 3]
        assert [m["run_dir"] for m in extra.user_attrs["seed_metrics"]] == [
            str(root / "adaptive" / str(extra.number) / f"seed{k}") for k in (2, 3)]
        assert [m["val_top1"] for m in extra.user_attrs["seed_metrics"]] == pytest.approx(
            [x + 2 * s, x + 3 * s])
        assert extra.user_attrs["merged_seeds"] == [0, 1, 2, 3] and extra.user_attrs["repeats"] == 4
        # Optuna is told the mean over all four seeds; the interval is over them too
        assert extra.values == pytest.approx([x + 1.5 * s, MADDS[name]])
        sd = s * math.sqrt(5 / 3)
        assert extra.user_attrs["val_top1_std"] == pytest.approx(sd)
        half = stats.t.ppf(0.975, 3) * sd / 2
        assert extra.user_attrs["val_top1_lo"] == pytest.approx(x + 1.5 * s - half)
        assert extra.user_attrs["extra_seeds_of"] == first.number
        assert extra.user_attrs["extra_seeds_reason"] == extra_seeds[name]
    from analysis.results import load_results

    res = load_results(root / "adaptive")
    cfg = res.configs.set_index("label")
    for name in X:
        want = [0, 1, 2, 3] if name in extra_seeds else [0, 1]
        assert cfg.loc[name, "seeds"] == " ".join(map(str, want))
        mean = X[name] + SPREAD[name] * (len(want) - 1) / 2
        assert cfg.loc[name, "val_top1_mean"] == pytest.approx(mean)
        assert cfg.loc[name, "config_id"] == by[name][0].number
    done = res.trials[(res.trials["state"] == "complete") & res.trials["counted"]]
    assert len(done) == 2 * len(X) + 2 * len(extra_seeds)


def test_adaptive_repeats_real_sweep_and_resume(tmp_path):
    run_app(ARGS, tmp_path)
    # exactly the configs whose interval overlaps the front trained seeds 2, 3 - each once
    assert trainlog(tmp_path) == {**{_key(n, s): 1 for n in X for s in (0, 1)},
                                  **{_key(n, s): 1 for n in EXPECTED for s in (2, 3)}}
    study = load_study(tmp_path, "adaptive")
    by = _by_variant(study.get_trials())
    reasons = {n: by[n][1].user_attrs["extra_seeds_reason"] for n in EXPECTED}
    assert reasons["A"].startswith("on the Pareto front of the means: "
                                   "val_top1 10.05 [9.415, 10.69]")
    assert reasons["C"].startswith("its 95% interval overlaps the front")
    assert reasons["G"].startswith("its 95% interval overlaps the front (no front config "
                                   "dominates it at the interval ends): "
                                   "val_top1 6.15 [4.244, 8.056], madds 1.5")
    _check_final(tmp_path, reasons)
    # the latest decision, stored in the study: with four seeds C, E and G are clearly
    # dominated now; D and F were from the start; nothing more is queued
    num = {n: by[n][0].number for n in X}
    decision = study.user_attrs["adaptive_repeats"]
    assert decision["front"] == sorted([num["A"], num["B"]]) and decision["queued"] == {}
    by_front = {int(k): v for k, v in decision["clearly_dominated_by"].items()}
    assert sorted(by_front) == sorted(num[n] for n in "CDEFG")
    assert by_front[num["C"]] == num["A"] and by_front[num["D"]] in (num["A"], num["B"])
    assert by_front[num["E"]] == by_front[num["F"]] == by_front[num["G"]] == num["B"]
    # the extra trials are outside the n_trials budget; the best trials are the merged ones
    results = (tmp_path / "adaptive" / "optimization_results.yaml").read_text()
    assert "budget_used: 7" in results
    best = {t.number for t in study.best_trials}
    assert {by["A"][1].number, by["B"][1].number} <= best
    # the report's setup table names the configurations that got extra seeds
    from analysis.report import adaptive_repeats_text
    from analysis.results import load_results

    res = load_results(tmp_path / "adaptive")
    assert adaptive_repeats_text(res) == ("5 configuration(s) got extra paired seeds because their 95% "
                                          "interval overlapped the Pareto front: A; B; C; E; G")
    assert sorted(res.configs["n_seeds"].tolist()) == [2, 2, 4, 4, 4, 4, 4]

    # the same command again: nothing is trained again, nothing queued
    proc = run_app(ARGS, tmp_path)
    assert "nothing to run" in proc.stdout + proc.stderr
    assert sum(trainlog(tmp_path).values()) == 2 * 7 + 2 * 5
    assert len(load_study(tmp_path, "adaptive").get_trials()) == 12


def test_adaptive_repeats_resume_after_a_kill_and_with_more_seeds(tmp_path):
    # E's extra seeds run last (grid seed 0: E is trial 6); its seed 3 hangs once, the test
    # kills the whole sweep there, then runs the same command again
    args = [*ARGS, "modes={x7y3:hang_once}"]
    proc = start_app(args, tmp_path)
    try:
        wait_for(tmp_path / "hang-7-3", timeout=60)
    finally:
        kill_group(proc)
    before = trainlog(tmp_path)
    killed = load_study(tmp_path, "adaptive").get_trials()
    finished_extra = [t for t in killed
                      if EXTRA in t.system_attrs and t.state == TrialState.COMPLETE]
    assert len(finished_extra) == 4  # A, B, C and G had their extra seeds before the kill
    run_app(args, tmp_path)
    after = trainlog(tmp_path)
    # finished extra seeds are not trained again; the killed trial's seeds are (retried)
    assert after - before == {_key("E", 2): 1, _key("E", 3): 1}
    assert after == {**{_key(n, s): 1 for n in X for s in (0, 1)},
                     **{_key(n, s): 1 for n in EXPECTED for s in (2, 3)},
                     _key("E", 2): 2, _key("E", 3): 2}
    trials = load_study(tmp_path, "adaptive").get_trials()
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    # the retry is the same extra-seed trial (RetryCallback keeps the payload)
    assert retry.system_attrs[EXTRA] == dead.system_attrs[EXTRA]
    assert retry.state == TrialState.COMPLETE
    _check_final(tmp_path, {n: next(t for t in trials if EXTRA in t.system_attrs
                                    and t.state == TrialState.COMPLETE
                                    and t.params == {"variant": n}).user_attrs["extra_seeds_reason"]
                            for n in EXPECTED})

    # a larger max_repeats on resume: only the configs still overlapping the front (A and B;
    # with four seeds C, E and G are clearly dominated) get the one new seed
    before = trainlog(tmp_path)
    run_app([*args, "hydra.sweeper.adaptive_repeats.max_repeats=5"], tmp_path)
    assert trainlog(tmp_path) - before == {_key("A", 4): 1, _key("B", 4): 1}
    from analysis.results import load_results

    cfg = load_results(tmp_path / "adaptive").configs.set_index("label")
    assert cfg.loc["A", "seeds"] == cfg.loc["B", "seeds"] == "0 1 2 3 4"
    assert cfg.loc["A", "val_top1_mean"] == pytest.approx(10.2)


def test_adaptive_repeats_two_workers(tmp_path):
    # An idle worker decides (and waits) while the other one still runs a trial, so the front
    # it sees may lack a config and which configs overlap it depends on timing: F overlaps when
    # B is missing; E is clearly dominated once B has four seeds if E finishes after that.
    # Never: a seed trained twice, a config with two extra trials, D (dominated in every
    # partial front) or a front config without seeds, a config left overlapping the final
    # front with fewer seeds (the decision on the final state queues nothing).
    run_app([*ARGS, "hydra.sweeper.n_workers=2", "duration=0.2"], tmp_path)
    log = trainlog(tmp_path)
    assert set(log.values()) == {1}
    got = {n for n in X if log[_key(n, 2)]}
    assert {"A", "B"} <= got <= set(EXPECTED) | {"F"}
    assert all(log[_key(n, 3)] == (n in got) for n in X)
    trials = load_study(tmp_path, "adaptive").get_trials()
    assert all(t.state == TrialState.COMPLETE or "coordsweep:skipped" in t.system_attrs
               for t in trials)
    final = decide(trials, ["val_top1", "madds"], ["maximize", "minimize"], max_repeats=4)
    assert final.extra == {}
    assert all(len(final.configs[p].seeds) == 4 for p in final.overlapping)
    _check_final(tmp_path, {n: next(t for t in trials if EXTRA in t.system_attrs
                                    and t.state == TrialState.COMPLETE
                                    and t.params == {"variant": n}).user_attrs["extra_seeds_reason"]
                            for n in got})


@pytest.mark.parametrize("args,message", [
    (["hydra.sweeper.adaptive_repeats.max_repeats=2"],
     "hydra.sweeper.adaptive_repeats.max_repeats=2 must be an integer > "
     "hydra.sweeper.repeats (=2)"),
    (["hydra.sweeper.repeats=1", "hydra.sweeper.adaptive_repeats.max_repeats=3"],
     "hydra.sweeper.adaptive_repeats.max_repeats=3 needs hydra.sweeper.repeats >= 2"),
    (["hydra.sweeper.adaptive_repeats.max_repeats=-3"],
     "hydra.sweeper.adaptive_repeats.max_repeats=-3 must be an integer > hydra.sweeper.repeats"),
    (["hydra.sweeper.adaptive_repeats.max_repeats=lots"],  # the schema (Optional[int]) refuses it
     "Value 'lots' of type 'str' could not be converted to Integer"),
])
def test_adaptive_config_errors_before_training(tmp_path, args, message):
    proc = run_app([*ARGS, *args], tmp_path, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not trainlog(tmp_path)


# -- reuse of PRUNED trials -----------------------------------------------------------------------

PRUNE = {
    # threshold pruner: epoch e reports x * e; pruned once above 2.5 (x=1 at epoch 3, x=3 at 1)
    "pruner": ["x=choice(0,1,3)", "epochs=5", "hydra.sweeper.pruner.name=threshold",
               "+hydra.sweeper.pruner.options.upper=2.5"],
    # rung scheduler without a cost: at rung 1, x=0 and x=1 rank below x=3 and stop
    "scheduler": ["x=choice(3,1,0)", "epochs=3", "hydra.sweeper.scheduler.name=mo_asha",
                  "hydra.sweeper.scheduler.cost=null", "hydra.sweeper.scheduler.max_epochs=3"],
}


@pytest.mark.parametrize("kind", ["pruner", "scheduler"])
def test_same_params_as_a_pruned_trial_are_not_trained_again(tmp_path, kind):
    first = [0, 1, 3] if kind == "pruner" else [3, 1, 0]
    enqueue = [f"+hydra.sweeper.enqueue.t{i}={{x:{x}}}" for i, x in enumerate(first)]
    # random draws from three configs after the three enqueued ones: every draw is a copy
    args = [*PRUNE[kind], *enqueue, "hydra.sweeper.sampler.name=random",
            "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=9",
            "hydra.sweeper.report=false"]
    run_app(args, tmp_path)
    assert trainlog(tmp_path) == {f"x={x} y=0 group=a label=plain": 1 for x in first}
    trials = load_study(tmp_path).get_trials()
    assert len(trials) == 9
    originals = {t.params["x"]: t for t in trials[:3]}
    pruned = {0, 1} if kind == "scheduler" else {1, 3}
    assert {x for x, t in originals.items() if t.state == TrialState.PRUNED} == pruned
    for t in trials[3:]:
        src = originals[t.params["x"]]
        assert t.user_attrs["reused_from"] == src.number and t.state == src.state
        if src.state == TrialState.PRUNED:
            # stored as stopped, at the same fidelity, with the same curve and value
            assert t.intermediate_values == src.intermediate_values
            assert t.value == src.value == src.intermediate_values[max(src.intermediate_values)]
            assert t.user_attrs["status"] == "pruned"
            if kind == "scheduler":
                assert t.user_attrs["stopped_at_rung"] == 1
                assert not any(k.startswith("coordsweep:rung:") for k in t.system_attrs)
    assert any(t.state == TrialState.PRUNED for t in trials[3:])
    if kind == "pruner":
        assert originals[1].intermediate_values == {1: 1.0, 2: 2.0, 3: 3.0}

    # reuse_pruned=false: a copy of a pruned config trains (and is stopped) again
    other = tmp_path / "retrain"
    run_app([*args, "hydra.sweeper.reuse_pruned=false"], other)
    log = trainlog(other)
    assert all(log[f"x={x} y=0 group=a label=plain"] == 1 for x in set(first) - pruned)
    assert sum(log.values()) == 3 + sum(1 for t in load_study(other).get_trials()[3:]
                                        if t.params["x"] in pruned)
