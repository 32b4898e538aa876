"""The multi-objective rung scheduler (sweep/sweeper/rungs.py): pure ranking decisions on
hand-made trials, then real sweeps of a tiny app (this file run as a Hydra app, with the config
of tests/sweep/apps/conf) whose state lives in the storage: shared by two workers, kept on resume.

The app's trial with params (x, y) reports ``val_top1 = x * epoch`` and ``madds = y`` every
epoch, so at rung 1 its point is (accuracy x, cost y).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search_space.config import ConfigError
from sweep.sweeper.rungs import (RUNG_ATTR, check_scheduler, crowding_distance, is_rung, keeps,
                                 non_dominated_fronts, rank_trials, rung_epochs)

# -- pure functions ---------------------------------------------------------------------------


def test_rungs_are_min_epochs_times_powers_of_eta():
    assert rung_epochs(1, 3, 30) == [1, 3, 9, 27]
    assert rung_epochs(2, 2, 16) == [2, 4, 8, 16]
    assert [e for e in range(1, 30) if is_rung(e, 1, 3)] == [1, 3, 9, 27]
    assert [e for e in range(1, 20) if is_rung(e, 2, 2)] == [2, 4, 8, 16]


def test_non_dominated_fronts_and_crowding_distance():
    # minimize both: (0,3) (1,1) (3,0) are non-dominated; (2,2) is dominated by (1,1) only;
    # (3,3) by everything
    pts = [(0, 3), (2, 2), (1, 1), (3, 3), (3, 0)]
    assert non_dominated_fronts(pts) == [[0, 2, 4], [1], [3]]
    # boundaries infinite, the middle point (1,1): (3-0)/3 + (3-0)/3 = 2
    assert crowding_distance([(0, 3), (1, 1), (3, 0)]) == [math.inf, 2.0, math.inf]
    assert crowding_distance([(0, 1), (1, 0)]) == [math.inf, math.inf]


def test_ranking_and_decisions_on_hand_made_trials():
    # (trial number, accuracy, cost); accuracy maximized, cost minimized
    entries = [(0, 1, 1), (1, 2, 1), (2, 0, 1), (3, 0, 0), (4, 3, 2), (5, 1, 0)]
    # front 0: 4 (3,2), 1 (2,1), 5 (1,0) -> boundaries 4 and 5 first (inf crowding; higher
    # accuracy first), then 1; front 1: 0 (1,1) and 3 (0,0); front 2: 2 (0,1)
    assert rank_trials(entries) == [4, 5, 1, 0, 3, 2]
    # 6 trials at the rung, eta 3: the top 2 continue
    assert [n for n, _, _ in entries if keeps(n, entries, 3)] == [4, 5]
    assert [n for n, _, _ in entries if keeps(n, entries, 2)] == [1, 4, 5]
    # a lone trial (or fewer than eta) keeps its best one
    assert keeps(7, [(7, 0.0, 9.0)], 3)
    assert keeps(1, entries[:2], 3) and not keeps(0, entries[:2], 3)
    # ties in one front: equal crowding -> higher accuracy, then the earlier trial
    assert rank_trials([(0, 1, 1), (1, 1, 1)]) == [0, 1]
    # directions follow the objectives: cost maximized flips the order of the front
    assert rank_trials([(0, 1, 1), (1, 2, 2)], minimize_cost=True) == [1, 0]
    assert rank_trials([(0, 1, 1), (1, 2, 2)], minimize_cost=False) == [1, 0]
    assert rank_trials([(0, 2, 1), (1, 1, 2)], minimize_cost=False) == [0, 1]


def test_cost_alone_never_stops_a_trial_tied_with_the_best():
    # after one epoch every trial is at chance (10.0 %): the cost would keep only the cheapest
    chance = [(0, 10.0, 3.0), (1, 10.0, 1.0), (2, 10.0, 2.0), (3, 10.0, 5.0), (4, 10.0, 4.0), (5, 10.0, 6.0)]
    assert rank_trials(chance)[:2] == [1, 2]  # the plain ranking: by cost
    assert all(keeps(n, chance, 3) for n, _, _ in chance)
    # one trial above chance: the tied rest is ranked as usual (top 2 of 6 by fronts)
    moved = chance[:5] + [(5, 12.0, 6.0)]
    assert [n for n, _, _ in moved if keeps(n, moved, 3)] == [1, 5]
    # min_spread: within 2 points of the best counts as a tie (metric noise)
    assert [n for n, _, _ in moved if keeps(n, moved, 3, min_spread=2.0)] == [0, 1, 2, 3, 4, 5]
    assert [n for n, _, _ in moved if keeps(n, moved, 3, min_spread=1.9)] == [1, 5]
    # minimized metric: the best is the lowest
    assert keeps(0, [(0, 0.5, 9.0), (1, 0.5, 1.0), (2, 0.9, 0.0)], 3, maximize_metric=False)


def test_check_scheduler_defaults_and_errors():
    conf = check_scheduler({"name": "MO_ASHA", "eta": "2"}, ["val_top1", "madds"])
    assert conf == {"name": "mo_asha", "min_epochs": 1, "eta": 2, "metric": "val_top1",
                    "cost": "madds", "max_epochs": None, "min_spread": 0.0}
    with pytest.raises(ConfigError, match=r"scheduler.min_spread=-1 must be a number >= 0"):
        check_scheduler({"name": "mo_asha", "min_spread": -1}, [])
    with pytest.raises(ConfigError, match=r"scheduler.min_spread='wide' must be a number >= 0"):
        check_scheduler({"name": "mo_asha", "min_spread": "wide"}, [])
    with pytest.raises(ConfigError, match="scheduler.name='asha' is unknown; allowed: none, mo_asha"):
        check_scheduler({"name": "asha"}, [])
    with pytest.raises(ConfigError, match="scheduler.eta=1 must be >= 2"):
        check_scheduler({"name": "mo_asha", "eta": 1}, [])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rungs'\]"):
        check_scheduler({"name": "mo_asha", "rungs": 3}, [])


# -- real sweeps ------------------------------------------------------------------------------

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]


def _wait_for(path: Path, what: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise RuntimeError(f"handshake: {what} ({path}) did not appear within {timeout:.0f} s")
        time.sleep(0.02)


def _app_main():
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from sweep import hooks

    @hydra.main(version_base="1.3", config_path=str(HERE.parent / "apps" / "conf"),
                config_name="sleep")
    def main(cfg) -> dict:
        x, y, epochs = float(cfg.x), float(cfg.y), int(cfg.epochs)
        if os.environ.get("TRAINLOG"):
            with open(os.environ["TRAINLOG"], "a") as f:
                f.write(f"{os.getpid()} x={cfg.x} y={cfg.y}\n")
        # RUNG_HANDSHAKE=<dir>: the trial with x=5 is the "slow" one. The others wait for it to
        # be at rung 1 before they report epoch 1 (so they are judged against it), and it waits
        # for each of them to be judged before it goes on (so it is still running meanwhile):
        # the overlap comes from marker files, not from sleep lengths. Waits are bounded.
        handshake = os.environ.get("RUNG_HANDSHAKE")
        markers = Path(handshake) if handshake else None
        status, run = "ok", 0
        for epoch in range(1, epochs + 1):
            time.sleep(float(cfg.duration))
            run = epoch
            if markers is not None and epoch == 1 and x != 5:
                _wait_for(markers / "slow-at-rung1", "the slow trial at rung 1")
            stop = hooks.current().report(epoch, {"val_top1": x * epoch, "madds": y})
            if markers is not None and epoch == 1:
                if x == 5:
                    (markers / "slow-at-rung1").write_text(str(os.getpid()))
                    for other in os.environ["RUNG_HANDSHAKE_OTHERS"].split():
                        _wait_for(markers / f"judged-{other}", f"trial {other} judged at rung 1")
                else:
                    (markers / f"judged-{cfg.x},{cfg.y}").write_text(str(stop))
            if stop:
                status = "pruned"
                break
        out = Path(HydraConfig.get().runtime.output_dir)
        (out / "done").write_text(status)
        return {"status": status, "val_top1": x * run, "madds": y, "epochs_run": run,
                "pid": os.getpid()}

    main()


def _run(args, root: Path, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), SWEEP_DIR=str(root),
               TRAINLOG=str(root / "trainlog.txt"), **extra_env)
    proc = subprocess.run([sys.executable, str(HERE), "-m", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"sweep failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _enqueue(configs) -> list:
    return [f"+hydra.sweeper.enqueue.t{i}={{x:{x},y:{y}}}" for i, (x, y) in enumerate(configs)]


MO = ["+hydra.sweeper.objectives.madds=minimize",
      "hydra.sweeper.sampler.name=random", "hydra.sweeper.report=false",
      "hydra.sweeper.scheduler.name=mo_asha", "hydra.sweeper.scheduler.eta=3",
      "epochs=3", "duration=0.05",
      # the app has no train.epochs: give the full budget, so rung 3 never stops a trial
      "hydra.sweeper.scheduler.max_epochs=3"]
SPACE = ["x=choice(0,1,2,3,4,5)", "y=choice(0,1,2)"]
# the hand-made set above, in this order: expected stops at rung 1 (see
# test_ranking_and_decisions_on_hand_made_trials, judged against the trials before each)
CONFIGS = [(1, 1), (2, 1), (0, 1), (0, 0), (3, 2), (1, 0)]


def _finished(root: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="test", storage=f"sqlite:///{root / 'test' / 'optuna.db'}")
    return [t for t in study.get_trials() if "coordsweep:skipped" not in t.system_attrs]


def test_decisions_state_in_storage_and_resume(tmp_path):
    from optuna.trial import TrialState

    # first run: 3 trials; the sweep ends, a second run continues the same study with 3 more
    _run([*SPACE, *MO, *_enqueue(CONFIGS[:3]), "hydra.sweeper.n_trials=3"], tmp_path)
    _run([*SPACE, *MO, *_enqueue(CONFIGS), "hydra.sweeper.n_trials=6"], tmp_path)
    trials = _finished(tmp_path)
    assert [(t.params["x"], t.params["y"]) for t in trials] == CONFIGS
    # judged at rung 1 against every earlier trial (run 1's state survived into run 2):
    # t0 alone, keep; t1 dominates t0, keep; t2 dominated (k=1), stop; t3 (0,0) is in the
    # front with t1 but ranks second (k=1), stop; t4 (3,2) best accuracy, keep; t5 (1,0): 6 at
    # the rung, k=2, ranks second after t4, keep
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED,
                      TrialState.PRUNED, TrialState.COMPLETE, TrialState.COMPLETE]
    for t in trials:
        x, y = t.params["x"], t.params["y"]
        assert t.system_attrs[f"{RUNG_ATTR}1"] == [x, y]
        if t.state == TrialState.PRUNED:
            # stopped trials stay in the study with their last fidelity and metrics
            assert t.user_attrs["epochs_run"] == 1 and t.user_attrs["stopped_at_rung"] == 1
            assert t.user_attrs["status"] == "pruned" and t.user_attrs["val_top1"] == x
            assert t.user_attrs["madds"] == y
            assert f"{RUNG_ATTR}3" not in t.system_attrs
        else:
            # rung 3 = max_epochs is recorded but stops nothing: the kept trials complete
            assert t.system_attrs[f"{RUNG_ATTR}3"] == [3 * x, y]
            assert t.user_attrs["epochs_run"] == 3 and t.values == [3 * x, y]


def test_two_workers_share_the_rung_state(tmp_path):
    from optuna.trial import TrialState

    # t0 (5,0) reaches rung 1, then waits (handshake, see _app_main) until each other trial
    # has been judged at rung 1; the others, in the other worker (the waiting one holds its
    # own), report rung 1 only once t0 is there. Judged against t0 (it dominates them) they
    # stop; had each worker kept its own rung state, t1 would continue (a lone trial does).
    configs = [(5, 0), (1, 1), (2, 1), (3, 1)]
    markers = tmp_path / "markers"
    markers.mkdir()
    others = " ".join(f"{x},{y}" for x, y in configs[1:])
    _run([*SPACE, *MO, *_enqueue(configs), "hydra.sweeper.n_trials=4",
          "hydra.sweeper.n_workers=2"], tmp_path / "sweep",
         RUNG_HANDSHAKE=str(markers), RUNG_HANDSHAKE_OTHERS=others)
    trials = {(t.params["x"], t.params["y"]): t for t in _finished(tmp_path / "sweep")}
    assert len(trials) == 4
    assert trials[(5, 0)].state == TrialState.COMPLETE
    assert trials[(5, 0)].user_attrs["epochs_run"] == 3
    assert [trials[c].state for c in configs[1:]] == [TrialState.PRUNED] * 3
    assert all(trials[c].user_attrs["epochs_run"] == 1 for c in configs[1:])
    assert all(trials[c].user_attrs["stopped_at_rung"] == 1 for c in configs[1:])
    # the decisions were taken in the other process: two workers, the slow one ran t0 only
    pids = {c: t.user_attrs["pid"] for c, t in trials.items()}
    assert len(set(pids.values())) == 2
    assert all(pids[c] != pids[(5, 0)] for c in configs[1:])
    # what each of them saw at rung 1: t0's entry, written by the other worker
    assert trials[(5, 0)].system_attrs[f"{RUNG_ATTR}1"] == [5, 0]
    assert sorted((markers / f"judged-{x},{y}").read_text() for x, y in configs[1:]) == ["True"] * 3
    first = trials[(5, 0)]
    assert all(t.datetime_start < first.datetime_complete for c, t in trials.items() if c != (5, 0))


@pytest.mark.parametrize("args,message", [
    (["hydra.sweeper.pruner.name=median"], "choose one"),
    (["hydra.sweeper.repeats=2", "hydra.sweeper.seed_key=label"],
     "does not combine with hydra.sweeper.repeats=2"),
    (["hydra.sweeper.scheduler.eta=1"], "hydra.sweeper.scheduler.eta=1 must be >= 2"),
])
def test_scheduler_config_errors_before_training(tmp_path, args, message):
    # single objective (the pruner check needs it); the scheduler works with one objective too
    proc = _run([*SPACE, *MO[1:], *args], tmp_path, check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
    assert not (tmp_path / "trainlog.txt").exists()


if __name__ == "__main__":
    _app_main()
