"""The coordsweep sweeper end to end: a tiny Hydra app (tests/sweep/apps/sleep_app.py) swept
in real processes into SQLite, then checked through ``optuna.load_study``."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.sweep.apps.harness import (REPO, kill_group, load_study, run_app, start_app, trainlog,
                                      wait_for)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_discovery_finds_the_sweeper_without_importing_optuna_or_torch():
    code = ("import sys\n"
            "from hydra.core.plugins import Plugins\n"
            "from hydra.plugins.sweeper import Sweeper\n"
            "names = [f'{c.__module__}.{c.__name__}' for c in Plugins.instance().discover(Sweeper)]\n"
            "print(names)\n"
            "print(sorted(m for m in ('optuna', 'torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=True)
    names, heavy = out.stdout.strip().splitlines()
    assert "hydra_plugins.coordsweep_sweeper.coordsweep_sweeper.CoordSweeper" in names
    assert heavy == "[]"


def test_end_to_end_two_workers_into_sqlite(tmp_path):
    # a sampler seed: both workers must still agree on the grid (GridSampler's seeded order)
    proc = run_app(["x=range(0,3)", "y=choice(0,1)", "duration=0.3",
                    "hydra.sweeper.n_workers=2", "hydra.sweeper.sampler.seed=5"], tmp_path)
    study = load_study(tmp_path)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    # every config once, each with its own run dir holding its metrics
    assert sorted((t.params["x"], t.params["y"]) for t in trials) == [
        (x, y) for x in range(3) for y in range(2)]
    assert trainlog(tmp_path) == {f"x={x} y={y} group=a label=plain": 1
                                  for x in range(3) for y in range(2)}
    for t in trials:
        assert t.value == pytest.approx(t.params["x"] + 0.1 * t.params["y"])
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir == tmp_path / "test" / str(t.number)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["madds"] == t.user_attrs["madds"] == 1e6 * t.params["y"] + t.params["x"]
        assert t.user_attrs["status"] == "ok"
        assert (run_dir / ".hydra" / "overrides.yaml").exists()
        assert t.user_attrs["overrides"] == [f"x={t.params['x']}", f"y={t.params['y']}"]
    # two worker processes, really overlapping in time (no barrier needed to see this)
    pids = {t.user_attrs["pid"] for t in trials}
    assert len(pids) == 2
    a = [t for t in trials if t.user_attrs["pid"] == min(pids)]
    b = [t for t in trials if t.user_attrs["pid"] == max(pids)]
    assert any(x.datetime_start < y.datetime_complete and y.datetime_start < x.datetime_complete
               for x in a for y in b)
    results = (tmp_path / "test" / "optimization_results.yaml").read_text()
    assert "COMPLETE: 6" in results and "number:" in results
    assert "sampler grid" in proc.stderr + proc.stdout

    # the same command again: nothing is trained again
    proc = run_app(["x=range(0,3)", "y=choice(0,1)", "duration=0.3",
                    "hydra.sweeper.n_workers=2"], tmp_path)
    assert "already has its n_trials" in proc.stdout + proc.stderr
    assert sum(trainlog(tmp_path).values()) == 6
    # a larger budget: random draws of configs that already completed reuse the stored
    # results instead of training
    run_app(["x=range(0,3)", "y=choice(0,1)", "duration=0.3", "hydra.sweeper.n_trials=10",
             "hydra.sweeper.sampler.name=random"], tmp_path)
    trials = load_study(tmp_path).get_trials()
    assert len(trials) == 10 and all(t.state == TrialState.COMPLETE for t in trials)
    reused = [t for t in trials if "reused_from" in t.user_attrs]
    assert len(reused) == 4
    for t in reused:
        src = trials[t.user_attrs["reused_from"]]
        assert src.params == t.params and src.values == t.values
        assert t.user_attrs["run_dir"] == src.user_attrs["run_dir"]
    assert sum(trainlog(tmp_path).values()) == 6
    # another fixed value is another experiment: refused, not mixed into this study
    proc = run_app(["x=range(0,3)", "y=choice(0,1)", "duration=0.5"], tmp_path, check=False)
    assert proc.returncode != 0
    assert ("study 'test' in sqlite:///" in proc.stderr
            and "was created by a different sweep (fixed: stored ['duration=0.3'], now "
                "['duration=0.5'])" in proc.stderr)
    assert "Traceback" not in proc.stderr


def test_failures_are_told_with_reasons_and_the_sweep_goes_on(tmp_path):
    run_app(["x=range(0,6)", "modes={x1:raise,x2:nan,x4:diverged,x5:kill_once}",
             "hydra.sweeper.n_workers=2"], tmp_path)
    # a worker that asks after the grid ran out (a race with the replaced worker) leaves a
    # *skipped* record that trained nothing and uses no budget: not a trial of the sweep
    from sweep.storage import SKIPPED

    trials = [t for t in load_study(tmp_path).get_trials() if SKIPPED not in t.system_attrs]
    by_x = {}
    for t in trials:
        by_x.setdefault(t.params.get("x"), []).append(t)
    assert [t.state for t in by_x[0]] == [TrialState.COMPLETE]
    (t1,), (t2,), (t4,) = by_x[1], by_x[2], by_x[4]
    assert t1.state == TrialState.FAIL
    assert t1.user_attrs["fail_reason"].startswith("RuntimeError: boom in trial with x=1")
    assert t2.state == TrialState.FAIL and t2.user_attrs["fail_reason"] == "objective 'val_top1' is nan"
    assert t4.state == TrialState.FAIL and t4.user_attrs["fail_reason"] == "trial status 'diverged'"
    assert t4.user_attrs["madds"] == 4.0  # metrics of a failed trial are kept
    # a trial that SIGKILLs its worker fails with the reason, the worker is replaced and the
    # trial retried in the same run (the retry limit: test_storage)
    first, retry = by_x[5]
    assert [first.state, retry.state] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "died (killed by SIGKILL) while running this trial" in first.user_attrs["fail_reason"]
    assert retry.system_attrs["failed_trial"] == first.number
    assert retry.system_attrs["retry_history"] == [first.number]
    assert [t.state for t in by_x[3]] == [TrialState.COMPLETE]
    assert len(trials) == 7
    assert trainlog(tmp_path)["x=5 y=0 group=a label=plain"] == 2
    assert all(n == 1 for k, n in trainlog(tmp_path).items() if k.split()[0] != "x=5")
    log = (tmp_path / "test" / str(t1.number) / "sleep_app.log").read_text()
    assert "RuntimeError: boom" in log and "Traceback" in log


def _grid_order(n: int) -> list:
    """x of grid points 0..n-1 for ``x=range(0,n)``: the sweep's GridSampler (no seed) maps
    trial number k < n to point k of its seeded shuffle (Optuna-internal ``_all_grids``)."""
    return [point[0] for point in optuna.samplers.GridSampler({"x": list(range(n))})._all_grids]


def _check_grid_done_once(trials, n: int) -> None:
    """Every grid point COMPLETE exactly once, by a trial that trained it (not a reused copy);
    anything else is a failed trial that was re-queued, or a trial skipped without running."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["x"] for t in done) == list(range(n))
    assert not any("reused_from" in t.user_attrs for t in trials)
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    for t in trials:
        if t.state != TrialState.COMPLETE:
            assert t.state == TrialState.FAIL, (t.number, t.state)
            assert t.number in retried or "coordsweep:skipped" in t.system_attrs, t.number


def _wait_reaped(pids, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while any(os.path.exists(f"/proc/{pid}") for pid in pids):
        assert time.time() < deadline, f"killed workers {pids} were not reaped within {timeout} s"
        time.sleep(0.05)


def test_resume_after_the_whole_sweep_was_killed(tmp_path):
    # the trials numbered 2 and 3 hang (once): when both markers exist both workers are inside
    # them, trials 0 and 1 are COMPLETE and nothing else was created; killed then, no timing.
    # The resumed sweep re-queues 2 and 3 (numbers 4 and 5) and its two workers draw the two
    # grid points never created at random: they may draw the same one at the same moment
    order = _grid_order(6)
    a, b = order[2], order[3]
    args = ["x=range(0,6)", f"modes={{x{a}:hang_once,x{b}:hang_once}}", "duration=0.2",
            "hydra.sweeper.n_workers=2"]
    proc = start_app(args, tmp_path)
    try:
        wait_for(tmp_path / f"hang-{a}")
        wait_for(tmp_path / f"hang-{b}")
    finally:
        kill_group(proc)
    # the killed workers are zombies until init reaps them (~1-2 s here), and a zombie still
    # looks alive to sweep.storage.process_alive: wait until they are gone, as after any kill
    _wait_reaped([int((tmp_path / f"hang-{x}").read_text()) for x in (a, b)])
    before = load_study(tmp_path).get_trials()
    assert [(t.number, t.state, t.params["x"]) for t in before] == [
        (0, TrialState.COMPLETE, order[0]), (1, TrialState.COMPLETE, order[1]),
        (2, TrialState.RUNNING, a), (3, TrialState.RUNNING, b)]

    run_app(args, tmp_path)
    trials = load_study(tmp_path).get_trials()
    _check_grid_done_once(trials, 6)
    # finished trials survived untouched; every config trained once, the two killed ones
    # once more (no lost trial, no double training)
    for t in before[:2]:
        assert trials[t.number].state == TrialState.COMPLETE and trials[t.number].values == t.values
    assert trainlog(tmp_path) == {f"x={x} y=0 group=a label=plain": 2 if x in (a, b) else 1
                                  for x in range(6)}
    # the trials running when everything was killed failed with the reason, and were retried
    dead = [t for t in trials
            if t.state == TrialState.FAIL and "coordsweep:skipped" not in t.system_attrs]
    assert [t.number for t in dead] == [2, 3]
    for t in dead:
        assert "worker process is gone" in t.user_attrs["fail_reason"]
        (retry,) = [r for r in trials if r.system_attrs.get("failed_trial") == t.number]
        assert retry.state == TrialState.COMPLETE and retry.params == t.params
    results = (tmp_path / "test" / "optimization_results.yaml").read_text()
    assert "budget_used: 6" in results


def test_grid_work_left_counts_grid_points_held_by_trials():
    from sweep.sweeper.params import build_space
    from sweep.sweeper.worker import SweepPlan, uncovered_grid_points, work_left

    space = build_space(["x=range(0,3)"])
    study = optuna.create_study()
    dist = {"x": optuna.distributions.IntDistribution(0, 2)}

    def add(state, x=None, **system_attrs):
        study.add_trial(optuna.trial.create_trial(
            state=state, params={} if x is None else {"x": x},
            distributions={} if x is None else dist,
            values=[0.0] if state == TrialState.COMPLETE else None, system_attrs=system_attrs))
        return study.get_trials()

    grid = SweepPlan("s", "", ["v"], ["maximize"], space, n_trials=5, sampler="grid")
    tpe = SweepPlan("s", "", ["v"], ["maximize"], space, n_trials=5, sampler="tpe")
    add(TrialState.COMPLETE, 0)
    add(TrialState.FAIL, 1)                                           # 1: killed, re-queued
    add(TrialState.COMPLETE, 1, failed_trial=1, retry_history=[1])    # 2: its retry
    trials = add(TrialState.FAIL, 0, **{"coordsweep:skipped": "x"})  # 3: skipped second draw
    assert uncovered_grid_points(space, trials) == [{"x": 2}]
    assert work_left(grid, trials) and work_left(tpe, trials)
    # a trial that has not drawn its point yet holds budget but no point
    trials = add(TrialState.RUNNING)
    assert uncovered_grid_points(space, trials) == [{"x": 2}]
    trials = add(TrialState.COMPLETE, 2)
    # budget is left (3 of 5 used by finished trials + 1 running), but every grid point is held:
    # a grid sweep stops, other samplers go on (their repeats reuse stored results)
    assert uncovered_grid_points(space, trials) == []
    assert not work_left(grid, trials) and work_left(tpe, trials)
    # a queued trial is work for every sampler
    trials = add(TrialState.WAITING, 2)
    assert work_left(grid, trials)


def _take_queued(url: str, n_queued: int, out) -> None:
    """A worker's study (SweepPlan.open_study) asking until the queue is empty."""
    from sweep.sweeper.params import build_space
    from sweep.sweeper.worker import SweepPlan

    plan = SweepPlan("q", url, ["v"], ["maximize"], build_space(["x=range(0,1000)"]),
                     n_trials=n_queued, sampler="random")
    study = plan.open_study()
    taken = []
    while True:
        trial = study.ask()
        if trial.number >= n_queued:  # not from the queue: it is empty
            study.tell(trial, state=TrialState.FAIL)
            break
        taken.append(trial.number)
        try:
            study.tell(trial, 0.0)
        except Exception:  # noqa: BLE001 - the other worker that took it told it first
            pass
    out.put(taken)


def test_workers_on_sqlite_take_each_queued_trial_once(tmp_path):
    # Optuna's queue pop reads WAITING and sets RUNNING under SELECT ... FOR UPDATE, which
    # SQLite ignores: without sweep.sweeper.worker.atomic_queue_pops, three workers took
    # 13-39 of 300 queued trials twice (a retry or an enqueued config trained twice)
    import multiprocessing

    from sweep import storage as st

    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = optuna.create_study(study_name="q", storage=st.open_storage(url),
                                direction="maximize")
    n = 300
    for x in range(n):
        study.enqueue_trial({"x": x})
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_take_queued, args=(url, n, out)) for _ in range(3)]
    for p in procs:
        p.start()
    taken = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    numbers = sorted(x for t in taken for x in t)
    assert numbers == list(range(n))  # every queued trial, each by one worker
    assert all(len(t) > 0 for t in taken)  # and the three really competed for the queue


def _dead_worker() -> dict:
    """A worker identity (sweep.storage.worker_identity) of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return {"run": "killed-run", "slot": "1.0", "host": socket.gethostname(), "pid": child.pid,
            "start": None}


def _add(study, number: int, state, x: int, grid_id: int, like, **system_attrs) -> None:
    """A trial of the ``x=range(0,6)`` grid sweep as the sweeper would have stored it."""
    frozen = optuna.trial.create_trial(
        state=state, params={"x": x}, distributions=like.distributions,
        values=[float(x)] if state == TrialState.COMPLETE else None,
        user_attrs=({"fail_reason": "worker process is gone (killed or crashed) while running "
                                    "this trial"} if state == TrialState.FAIL else {}),
        system_attrs={"grid_id": grid_id, "search_space": like.system_attrs["search_space"],
                      **system_attrs})
    study.add_trial(frozen)
    assert study.get_trials()[-1].number == number


def test_resumed_grid_skips_a_second_draw_of_a_completed_point(tmp_path):
    # The storage a killed resume leaves when its two workers drew the same missing grid point
    # (order[4]) at the same moment: trial 6 trained it, trial 7 was killed before it noticed.
    # Resuming re-queues 7; that copy must not run again and must not be a reused COMPLETE
    # copy either: it would use the last unit of the grid budget and order[5] would never run
    # (what happened under load before the fix, seen as a lost retry)
    order = _grid_order(6)
    args = ["x=range(0,6)", "duration=0", "hydra.sweeper.report=false"]
    run_app([*args, "hydra.sweeper.n_trials=2"], tmp_path)  # the real trials 0 and 1
    study = load_study(tmp_path)
    like = study.get_trials()[0]
    dead = _dead_worker()
    worker = {"coordsweep:worker": dead}
    _add(study, 2, TrialState.FAIL, order[2], 2, like, **worker)
    _add(study, 3, TrialState.FAIL, order[3], 3, like, **worker)
    _add(study, 4, TrialState.COMPLETE, order[2], 2, like, failed_trial=2, retry_history=[2])
    _add(study, 5, TrialState.COMPLETE, order[3], 3, like, failed_trial=3, retry_history=[3])
    _add(study, 6, TrialState.COMPLETE, order[4], 4, like)
    _add(study, 7, TrialState.RUNNING, order[4], 4, like, **worker)

    run_app(args, tmp_path)
    trials = load_study(tmp_path).get_trials()
    _check_grid_done_once(trials, 6)
    copy = trials[8]
    assert copy.system_attrs["failed_trial"] == 7 and copy.params == {"x": order[4]}
    assert copy.state == TrialState.FAIL and "coordsweep:skipped" in copy.system_attrs
    assert copy.user_attrs["fail_reason"] == "not run: trial 6 (COMPLETE) holds the same grid point"
    assert [(t.number, t.state, t.params["x"]) for t in trials[9:]] == [
        (9, TrialState.COMPLETE, order[5])]
    # trained here: order[5] only (0 and 1 in the first run; 2..6 were made by hand)
    assert trainlog(tmp_path) == {f"x={x} y=0 group=a label=plain": 1
                                  for x in (order[0], order[1], order[5])}


def test_resumed_sweep_requeues_a_trial_its_killed_worker_never_started(tmp_path):
    # a worker killed between Optuna creating its trial and recording itself on it leaves a
    # RUNNING trial without a worker (and here without a heartbeat): no dead-worker check can
    # see it. The resumed sweep waits for the grace period (3 s in this app), then fails and
    # re-queues it; before, it held order[2] and a unit of budget forever
    order = _grid_order(3)
    args = ["x=range(0,3)", "duration=0", "hydra.sweeper.report=false"]
    run_app([*args, "hydra.sweeper.n_trials=2"], tmp_path)
    study = load_study(tmp_path)
    like = study.get_trials()[0]
    _add(study, 2, TrialState.RUNNING, order[2], 2, like)

    proc = run_app(args, tmp_path)
    trials = load_study(tmp_path).get_trials()
    _check_grid_done_once(trials, 3)
    assert "RUNNING without a worker" in proc.stdout + proc.stderr
    orphan = trials[2]
    assert orphan.state == TrialState.FAIL
    assert orphan.user_attrs["fail_reason"].startswith("no worker ever started this trial")
    (retry,) = trials[3:]
    assert retry.system_attrs["failed_trial"] == 2 and retry.params == {"x": order[2]}
    assert trainlog(tmp_path) == {f"x={x} y=0 group=a label=plain": 1 for x in range(3)}


def test_conflicting_fixed_value_and_sweep_stops_before_training(tmp_path):
    proc = run_app(["x=3", "+hydra.sweeper.params.x='choice(1,2,3)'"], tmp_path, check=False)
    assert proc.returncode != 0
    assert "x is fixed to '3' on the command line but swept as 'choice(1,2,3)'" in proc.stderr
    assert not (tmp_path / "trainlog.txt").exists()


def test_unknown_key_stops_before_training(tmp_path):
    proc = run_app(["nosuchkey=choice(1,2)"], tmp_path, check=False)
    assert proc.returncode != 0
    assert "a trial config does not compose" in proc.stderr and "nosuchkey" in proc.stderr
    assert not (tmp_path / "trainlog.txt").exists()


def test_pruning_through_the_trial_hooks(tmp_path):
    run_app(["x=choice(0,1,3)", "epochs=5", "hydra.sweeper.pruner.name=threshold",
             "+hydra.sweeper.pruner.options.upper=2.5"], tmp_path)
    trials = {t.params["x"]: t for t in load_study(tmp_path).get_trials()}
    assert trials[0].state == TrialState.COMPLETE
    assert trials[0].intermediate_values == {e: 0.0 for e in range(1, 6)}
    # x=1 reports 1,2,3 -> pruned at epoch 3; x=3 reports 3 -> pruned at epoch 1
    assert trials[1].state == TrialState.PRUNED and max(trials[1].intermediate_values) == 3
    assert trials[3].state == TrialState.PRUNED and list(trials[3].intermediate_values) == [1]


def test_variants_enqueue_conditions_and_two_objectives(tmp_path):
    run_app(["search_space=mo", "hydra.sweeper.n_workers=2"], tmp_path)
    study = load_study(tmp_path, "mo")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 8
    # other trials can only be ones skipped without running (a twin running at that moment)
    assert all("coordsweep:skipped" in t.system_attrs for t in trials if t not in done)
    first = trials[0]
    assert first.user_attrs["enqueued_as"] == "first" and first.params == {"group": "b", "x": 2}
    for t in done:
        # group.only_a is a field of group=a only: never sampled for b
        assert ("group.only_a" in t.params) == (t.params["group"] == "a")
        assert t.constraints == {"madds<=1.5": t.user_attrs["madds"] - 1.5}
    assert study.best_trials


def test_timeout_stops_asking_and_lets_running_trials_finish(tmp_path):
    run_app(["x=range(0,40)", "duration=0.5", "hydra.sweeper.timeout=8"], tmp_path)
    trials = load_study(tmp_path).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 1 <= len(done) < 40
    # nothing is left running; anything else was skipped at the deadline without running
    assert all(t.state == TrialState.COMPLETE or "coordsweep:skipped" in t.system_attrs
               for t in trials)
    assert sum(trainlog(tmp_path).values()) == len(done)


@pytest.mark.parametrize("args, message", [
    (["x=1,2", "hydra.sweeper.sampler.name=cmaes", "+hydra.sweeper.objectives.madds=minimize"],
     "cmaes handles a single objective"),
    (["x=interval(0,1)"], "hydra.sweeper.n_trials is required"),
    (["x=1,2", "hydra.sweeper.storage=redis://localhost"], "allowed forms"),
])
def test_config_errors_before_any_training(tmp_path, args, message):
    proc = run_app(args, tmp_path, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "trainlog.txt").exists()


def test_joblib_launcher_runs_each_worker_as_a_launcher_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    run_app(["x=range(0,4)", "duration=0.3", "hydra/launcher=joblib",
             "hydra.launcher.n_jobs=2", "hydra.sweeper.n_workers=2"], tmp_path)
    trials = load_study(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert len({t.user_attrs["pid"] for t in trials}) == 2
    assert sorted(p.name for p in (tmp_path / "test" / "workers").iterdir()) == ["0", "1"]


def _impl_for(search_space: str):
    """The sweeper of run.py's config with ``search_space=<name>``, composed in-process."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import setup_globals
    from hydra.types import HydraContext
    from omegaconf import OmegaConf

    import hydra_plugins.coordsweep_sweeper.coordsweep_sweeper  # noqa: F401  (schema)
    from sweep.config import register_configs
    from sweep.sweeper.impl import CoordSweeperImpl

    register_configs()
    setup_globals()
    initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3")
    cfg = compose(config_name="config", overrides=[f"search_space={search_space}"],
                  return_hydra_config=True)
    conf = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False)
    conf.pop("_target_")
    impl = CoordSweeperImpl(**conf)
    impl.setup(hydra_context=HydraContext(config_loader=GlobalHydra.instance().config_loader(),
                                          callbacks=None), task_function=None, config=cfg)
    return impl


@pytest.fixture
def clean_hydra():
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("name, size, check", [("ca_ofat", 19, True), ("baselines", 5, True), ("demo", 27, True),
                                               ("ca_joint", None, False)])
def test_shipped_search_spaces(clean_hydra, name, size, check):
    impl = _impl_for(name)
    space = impl.build_space([f"search_space={name}"])
    assert space.size() == size
    assert impl.conf["study_name"] == name
    if name == "ca_ofat":
        # the paper default plus each factor alone, never two factors at once
        variants = space.variants
        assert variants["paper_default"] == ["attention=ca"]
        assert all(len(v) == 2 for n, v in variants.items() if n != "paper_default")
        assert "attention.directions=h" in variants and "attention.stages=[5,6,7]" in variants
    if name == "baselines":
        assert space.param("variant").finite_values == ["none", "se", "cbam", "eca", "ca"]
    if name == "ca_joint":
        assert space.fixed == ["attention=ca", "search_space=ca_joint"]
        assert space.requires == {"attention.gem_p": {"attention.pool": ["gem"]}}
        assert len(space.names) == 9 and list(impl.conf["objectives"]) == ["val_top1", "madds"]
        from sweep.sweeper.params import check_assignment

        paper = check_assignment(space, impl.conf["enqueue"]["paper_default"], "enqueue")
        assert space.overrides(paper)[2:] == [
            "attention.reduction=32", "attention.pool=avg", "attention.act=h_swish",
            "attention.gate=sigmoid", "attention.directions=hw", "attention.norm=bn",
            "attention.position=post_dw", "attention.stages=[1,2,3,4,5,6,7]"]
    if check:  # every config composes and passes the trial's own validation (the demo: every
        # variant and every seed value, 9 + 3 - 1 distinct compositions)
        assert impl._check_configs(space, {}) == (11 if name == "demo" else size)


@pytest.mark.slow
def test_ca_joint_configs_validate(clean_hydra):
    impl = _impl_for("ca_joint")
    space = impl.build_space(["search_space=ca_joint"])
    assert impl._check_configs(space, {}) > 20
