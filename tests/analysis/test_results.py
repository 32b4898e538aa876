"""Loading a sweep into tables: sources (dir, SQLite file/URL, journal), one row per trial and
per configuration, repeats vs copies, exports, masking, and the import boundary."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from scipy import stats

from analysis.results import load_results, open_source, t_interval
from analysis.synthetic import TrialSpec, baselines_study, ofat_study, write_study
from tests.conftest import REPO

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def ofat_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep") / "ca_ofat"
    ofat_study(d, factors={"attention.pool": ["max", "gem"], "attention.act": ["relu"]},
               effects={"attention.pool=max": 2.0}, seeds=range(3))
    return d


def test_trial_table_one_row_per_trial_with_states_and_reasons(ofat_dir):
    res = load_results(ofat_dir)
    t = res.trials
    # 4 variants x 3 seeds complete, then a pruned, a failed, a running, a waiting trial
    assert len(t) == 16 and t["number"].tolist() == list(range(16))
    assert res.counts() == {"complete": 12, "pruned": 1, "failed": 1, "running": 1, "waiting": 1}
    failed = t[t["state"] == "failed"].iloc[0]
    assert failed["fail_reason"].startswith("trial status 'diverged'")
    assert t.loc[t["state"] == "pruned", "epochs_run"].tolist() == [2.0]
    # every cost convention, latency and fidelity are columns
    for col in ("madds", "fvcore_flops", "full_flops", "params", "latency_ms", "epochs_run", "val_top1",
                "variant", "seed", "config", "config_id", "label", "counted", "run_dir", "overrides"):
        assert col in t.columns, col
    assert res.kind == "ofat" and res.reference == "variant=paper_default"
    assert res.params == ["variant", "seed"] and res.factor_params == ["variant"]
    assert res.chance() == pytest.approx(10.0)
    # the extras repeat the paper default with seed 0: same config, but not counted as a repeat
    # unless complete
    extras = t[t["number"] >= 12]
    assert set(extras["config_id"]) == {0} and set(extras["label"]) == {"paper_default"}


def test_config_table_aggregates_seeds(ofat_dir):
    res = load_results(ofat_dir)
    c = res.configs.set_index("label")
    assert c.loc["paper_default", "n_trials"] == 7 and c.loc["paper_default", "n_seeds"] == 3
    assert (c.loc["paper_default", ["n_pruned", "n_failed", "n_running"]] == [1, 1, 1]).all()
    assert bool(c.loc["paper_default", "is_reference"]) and not c.loc["attention.pool=max", "is_reference"]
    t = res.trials
    vals = t[(t["label"] == "attention.pool=max") & (t["state"] == "complete")]["val_top1"].tolist()
    mean, sd, lo, hi = t_interval(vals)
    row = c.loc["attention.pool=max"]
    assert (row["val_top1_mean"], row["val_top1_sd"], row["val_top1_lo"], row["val_top1_hi"]) == \
        pytest.approx((np.mean(vals), np.std(vals, ddof=1), lo, hi))
    # scipy's t-interval
    ci = stats.t.interval(0.95, 2, loc=np.mean(vals), scale=np.std(vals, ddof=1) / np.sqrt(3))
    assert (lo, hi) == pytest.approx(ci)
    assert row["seeds"] == "0 1 2"
    assert row["madds"] == pytest.approx(t.loc[t["label"] == "attention.pool=max", "madds"].mean())


def test_t_interval_edge_cases():
    assert np.isnan(t_interval([])).all()
    mean, sd, lo, hi = t_interval([5.0])
    assert mean == 5.0 and np.isnan(sd) and np.isnan(lo)
    assert t_interval([1, 2, 3])[2:] == pytest.approx((2 - 4.302653 / np.sqrt(3), 2 + 4.302653 / np.sqrt(3)))


def test_sources_dir_file_url_and_journal(ofat_dir, tmp_path):
    a = load_results(ofat_dir)
    b = load_results(ofat_dir / "optuna.db")
    c = load_results(f"sqlite:///{ofat_dir / 'optuna.db'}", study_name="ca_ofat")
    for r in (b, c):
        pd.testing.assert_frame_equal(r.configs, a.configs)
    # an Optuna journal file holding the same study: by file, URL and directory
    journal = tmp_path / "sweep.log"
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.copy_study(from_study_name="ca_ofat", from_storage=f"sqlite:///{ofat_dir / 'optuna.db'}",
                      to_storage=JournalStorage(JournalFileBackend(str(journal))))
    for source in (journal, f"journal:///{journal}", tmp_path):
        j = load_results(source)
        assert j.counts() == a.counts() and j.kind == "ofat"
        # the journal sits elsewhere: metrics.json are found through the trials' run_dir
        assert j.trials["madds"].notna().sum() == a.trials["madds"].notna().sum()


def test_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such sweep directory"):
        open_source(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no optuna.db"):
        open_source(tmp_path)
    with pytest.raises(FileNotFoundError, match="no SQLite database"):
        open_source(f"sqlite:///{tmp_path / 'nope.db'}")
    assert not (tmp_path / "nope.db").exists()  # reading never creates a database


def test_password_is_masked_in_errors():
    with pytest.raises(ValueError) as e:
        load_results("postgresql://alice:s3cr3t-pw@127.0.0.1:1/sweeps")
    assert "s3cr3t-pw" not in str(e.value) and "alice:***@127.0.0.1" in str(e.value)


def test_several_studies_need_a_name(tmp_path):
    baselines_study(tmp_path, seeds=range(2))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(storage=url, study_name="other")
    with pytest.raises(ValueError, match=r"holds 2 studies \(baselines, other\); choose one with --study"):
        load_results(tmp_path)
    res = load_results(tmp_path, study_name="baselines")
    assert res.kind == "variants" and res.reference == "variant=ca"
    assert sorted(res.configs["label"]) == ["ca", "cbam", "eca", "none", "se"]
    with pytest.raises(ValueError, match="no study 'nope'"):
        load_results(tmp_path, study_name="nope")


def test_copies_and_second_completions_are_not_repeats(tmp_path):
    dist = {"variant": CategoricalDistribution(["a", "b"]), "seed": CategoricalDistribution([0, 1])}

    def spec(variant, seed, acc, **ua):
        return TrialSpec({"variant": variant, "seed": seed}, dist, metrics={"val_top1": acc, "epochs_run": 6},
                         overrides=[f"attention={variant}", f"seed={seed}"], seed=seed,
                         user_attrs={"variant": variant, **ua})

    write_study(tmp_path, "s", [spec("a", 0, 70.0), spec("a", 1, 72.0), spec("a", 0, 70.0, reused_from=0),
                                spec("a", 1, 90.0), spec("b", 0, 60.0)],
                objectives={"val_top1": "maximize"})
    res = load_results(tmp_path)
    assert res.trials["counted"].tolist() == [True, True, False, False, True]
    a = res.configs.set_index("label").loc["a"]
    assert (a["n_trials"], a["n_complete"], a["n_seeds"], a["val_top1_mean"]) == (4, 4, 2, 71.0)


def test_moved_sweep_dir_and_exports(tmp_path):
    ofat_study(tmp_path / "before", factors={"attention.pool": ["max"]}, seeds=range(2))
    moved = tmp_path / "after"
    shutil.move(tmp_path / "before", moved)
    res = load_results(moved)  # run_dir user attrs point to the old place: found under after/<n>
    ran = res.trials[res.trials["state"].isin(["complete", "pruned"])]
    assert len(ran) == 5 and ran["run_dir"].str.startswith(str(moved)).all()
    assert ran["madds"].notna().all()
    paths = res.export(tmp_path / "out")
    back = pd.read_parquet(paths["trials_parquet"])
    csv = pd.read_csv(paths["trials_csv"])
    assert len(back) == len(csv) == len(res.trials) and list(back.columns) == list(csv.columns)
    assert back["madds"].tolist() == pytest.approx(res.trials["madds"].tolist(), nan_ok=True)
    assert len(pd.read_parquet(paths["configs_parquet"])) == len(res.configs)


def test_analysis_never_imports_the_runner():
    code = ("import sys, analysis.report, analysis.results, analysis.stats, analysis.plots\n"
            "print(sorted(m for m in sys.modules if m.startswith(('sweep.trial', 'sweep.sweeper', "
            "'matplotlib.pyplot'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
