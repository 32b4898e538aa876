"""Statistics of the ablation answers: Holm on textbook values, paired/unpaired differences,
and known verdicts on hand-built studies (one factor truly helps, another does nothing)."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats

from analysis.results import load_results
from analysis.stats import (compare, factor_summaries, holm, paired_difference, param_importances,
                            unpaired_difference)
from analysis.synthetic import joint_study, ofat_study


# -- Holm ------------------------------------------------------------------------------------------


def test_holm_textbook_values():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # 0.01*5, 0.02*4, 0.03*3, 0.04*2 -> 0.09, 0.05*1 -> 0.09
    assert holm([0.01, 0.02, 0.03, 0.04, 0.05]).tolist() == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])


def test_holm_caps_at_one_and_skips_nan():
    out = holm([0.5, math.nan, 0.01, 0.9])
    assert out[1] != out[1]  # NaN stays NaN and is not counted: m = 3
    assert out[[0, 2, 3]].tolist() == pytest.approx([1.0, 0.03, 1.0])
    assert holm([]).tolist() == []


# -- differences -----------------------------------------------------------------------------------


def test_paired_difference_matches_scipy():
    a = np.array([71.0, 72.5, 70.2, 73.1, 71.9])
    b = np.array([70.1, 71.0, 70.0, 71.5, 71.2])
    d = paired_difference(a, b, n_resamples=2000)
    assert d.diff == pytest.approx((a - b).mean())
    assert d.p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert d.test == "paired t-test" and d.paired and d.n_a == 5
    assert d.lo < d.diff < d.hi
    assert (a - b).min() <= d.lo and d.hi <= (a - b).max()


def test_paired_difference_uses_wilcoxon_from_ten_pairs():
    rng = np.random.default_rng(0)
    b = rng.normal(70, 1, 12)
    a = b + rng.normal(0.5, 0.3, 12)
    d = paired_difference(a, b, n_resamples=1000)
    assert d.test == "Wilcoxon signed-rank"
    assert d.p == pytest.approx(stats.wilcoxon(a - b).pvalue)


def test_paired_difference_constant_and_tiny_samples():
    d = paired_difference([73.0, 74.0, 75.0], [70.0, 71.0, 72.0])
    assert (d.diff, d.lo, d.hi, d.p) == (pytest.approx(3.0), pytest.approx(3.0), pytest.approx(3.0), 0.0)
    d = paired_difference([70.0], [71.0])
    assert d.diff == -1.0 and math.isnan(d.lo) and math.isnan(d.p)
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0, 2.0], [1.0])


def test_unpaired_difference_is_welch():
    a, b = [61.0, 62.5, 60.8, 61.9], [60.0, 60.4, 59.1, 60.9, 60.2]
    d = unpaired_difference(a, b, n_resamples=2000)
    assert d.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert d.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert d.lo < d.diff < d.hi and not d.paired and (d.n_a, d.n_b) == (4, 5)


# -- known answers on a hand-built OFAT study ----------------------------------------------------

FACTORS = {"attention.pool": ["max"], "attention.act": ["relu"], "attention.gate": ["softmax_hw"]}


@pytest.fixture(scope="module")
def ofat(tmp_path_factory):
    d = tmp_path_factory.mktemp("ofat")
    # pool=max truly helps by 3 points in every seed; act=relu does nothing; softmax_hw has
    # only two seeds (too thin); per-seed offsets (sd 1) are shared, per-trial noise sd 0.2
    ofat_study(d, factors=FACTORS, effects={"attention.pool=max": 3.0}, seeds=range(5),
               seeds_of={"attention.gate=softmax_hw": [0, 1]}, noise=0.2, seed_sd=1.0, seed=1)
    return load_results(d)


def test_known_verdicts(ofat):
    comps = {(c.factor, c.level): c for c in compare(ofat, n_resamples=2000)}
    pool = comps[("attention.pool", "max")]
    assert pool.reference == "avg"
    assert pool.significant and not pool.thin
    assert pool.difference.diff == pytest.approx(3.0, abs=0.4)
    assert pool.difference.lo > 2.0 and pool.difference.n_a == 5
    assert re.match(r"pool=max vs avg: \+[23]\.\d pts val top-1 \[\+\d\.\d, \+\d\.\d\], significantly "
                    r"better \(n=5 pairs, paired t-test, Holm p<0\.001\); \+0\.0% madds", pool.sentence)

    act = comps[("attention.act", "relu")]
    assert act.reference == "h_swish" and not act.significant and not act.thin
    assert act.difference.lo < 0 < act.difference.hi
    assert "not significant (n=5 pairs" in act.sentence and "Holm p=" in act.sentence

    gate = comps[("attention.gate", "softmax_hw")]
    assert gate.thin.startswith("only 2 paired seeds") and math.isnan(gate.p_holm)
    assert "too thin to answer: only 2 paired seeds, need \u2265 3" in gate.sentence
    # the Holm family is the two answerable comparisons (the thin one is left out)
    assert [pool.p_holm, act.p_holm] == pytest.approx(holm([pool.difference.p, act.difference.p]).tolist())

    summary = factor_summaries(list(comps.values()))
    assert summary["attention.pool"].startswith("pool: max is better than avg")
    assert summary["attention.act"].startswith("act: no level differs significantly from h_swish")
    assert summary["attention.gate"].startswith("gate: too thin to answer")


def test_short_training_and_chance_make_answers_thin(tmp_path):
    ofat_study(tmp_path / "short", factors={"attention.pool": ["max"]}, effects={"attention.pool=max": 3.0},
               seeds=range(4), epochs=2, extras=False)
    [c] = compare(load_results(tmp_path / "short"), n_resamples=500)
    assert c.thin == "trained only 2 epochs, need \u2265 5" and not c.significant
    assert "too thin to answer: trained only 2 epochs" in c.sentence and "n=4 pairs" in c.sentence

    ofat_study(tmp_path / "chance", factors={"attention.pool": ["max"]}, base_acc=11.0, seeds=range(4),
               extras=False)
    [c] = compare(load_results(tmp_path / "chance"), n_resamples=500)
    assert c.thin.startswith("accuracy near chance") and "chance 10.0%" in c.thin

    # every reason is named
    ofat_study(tmp_path / "all", factors={"attention.pool": ["max"]}, base_acc=11.0, seeds=range(2),
               epochs=1, extras=False)
    [c] = compare(load_results(tmp_path / "all"), n_resamples=500)
    assert c.thin.split("; ")[:2] == ["only 2 paired seeds, need \u2265 3", "trained only 1 epoch, need \u2265 5"]
    assert c.thin.split("; ")[2].startswith("accuracy near chance")


def test_importance_is_skipped_for_ofat_with_reason(ofat):
    imp = param_importances(ofat)
    assert not imp.values and "ofat" in imp.skipped["PED-ANOVA"]


def test_joint_marginal_effects_and_importance(tmp_path):
    # 160 random configs: reduction=8 truly +3 points, pool nothing
    joint_study(tmp_path, n_trials=160, seed=2, state_mix=(1.0, 0.0, 0.0, 0.0),
                effects={"attention.reduction=8": 3.0})
    res = load_results(tmp_path)
    assert res.kind == "joint" and res.reference is not None
    comps = {(c.factor, c.level): c for c in compare(res, n_resamples=1000)}
    r8 = comps[("attention.reduction", "8")]
    assert r8.reference == "32" and not r8.difference.paired
    assert r8.significant and r8.difference.diff == pytest.approx(3.0, abs=0.5)
    assert "unpaired" in r8.sentence and "significantly better" in r8.sentence
    for level in ("max", "avgmax", "gem"):
        assert not comps[("attention.pool", level)].significant
    imp = param_importances(res)
    ped = imp.values["PED-ANOVA"]
    assert max(ped, key=ped.get) == "attention.reduction"
    # scikit-learn is a dependency: fANOVA runs and finds the same factor
    fan = imp.values["fANOVA"]
    assert max(fan, key=fan.get) == "attention.reduction" and sum(fan.values()) == pytest.approx(1.0)


def test_joint_repeats_count_configurations_not_seeds(tmp_path):
    """A joint study whose configurations each ran 3 seeds: the unit of the marginal comparison
    is the configuration (seeds averaged), so n is the number of configurations per level."""
    from optuna.distributions import CategoricalDistribution

    from analysis.synthetic import TrialSpec, write_study

    rng = np.random.default_rng(0)
    dists = {"attention.reduction": CategoricalDistribution([8, 32]),
             "attention.pool": CategoricalDistribution(["avg", "max"]),
             "seed": CategoricalDistribution([0, 1, 2])}
    configs = [(8, "avg"), (8, "max"), (32, "avg"), (32, "max"), (8, "avg"), (32, "max")]
    specs = []
    for i, (r, pool) in enumerate(configs):
        for seed in range(3):
            acc = 60.0 + (2.0 if r == 8 else 0.0) + i * 0.01 + float(rng.normal(0, 0.3))  # i: distinct configs
            params = {"attention.reduction": r, "attention.pool": pool, "seed": seed}
            specs.append(TrialSpec(params, dists, metrics={"val_top1": acc, "madds": 9e6, "epochs_run": 6},
                                   history=[{"epoch": 6, "val_top1": acc}], seed=seed, values=[acc],
                                   overrides=[f"{k}={v}" for k, v in params.items()],
                                   attention={"name": "ca", "reduction": r, "pool": pool}))
    write_study(tmp_path, "joint_rep", specs, objectives={"val_top1": "maximize"},
                signature={"fixed": ["attention=ca"], "variants": {}})
    res = load_results(tmp_path)
    assert res.kind == "joint"
    n_configs = res.trials.groupby("config").ngroups
    comps = {(c.factor, c.level): c for c in compare(res, n_resamples=200)}
    r = comps[("attention.reduction", "8")]
    # 4 distinct configurations (two were drawn twice), 18 trials: 2 vs 2, not 9 vs 9
    assert n_configs == 4 and r.difference.n_a == r.difference.n_b == 2
    assert r.difference.diff == pytest.approx(2.0, abs=0.4)
    assert "too thin to answer: only 2 vs 2 configs" in r.sentence
