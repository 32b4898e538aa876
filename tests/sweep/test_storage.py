"""sweep.storage: storage URLs and masking, budget accounting, failing dead or stale trials and
retrying them; two workers on PostgreSQL and on a journal file; passwords never leak."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search_space.config import ConfigError
from sweep import storage as st
from tests.sweep.apps.harness import load_study, pg_bin, postgres_server, run_app, trainlog

optuna.logging.set_verbosity(optuna.logging.WARNING)
PASSWORD = "s3cr3t-Pw_4711"


# -- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, expected", [
    (None, "sqlite:///{sweep}/optuna.db"),
    ("sqlite:///rel/db.sqlite", "sqlite:///{cwd}/rel/db.sqlite"),
    ("sqlite:////abs/x.db", "sqlite:////abs/x.db"),
    ("journal:///abs/j.log", "journal:///abs/j.log"),
    ("journal:rel/j.log", "journal://{cwd}/rel/j.log"),
    ("postgresql+psycopg2://u:pw@h:5432/db", "postgresql+psycopg2://u:pw@h:5432/db"),
    ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
])
def test_resolve_storage(tmp_path, monkeypatch, given, expected):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    assert st.resolve_storage(given, str(sweep)) == expected.format(sweep=sweep, cwd=tmp_path)


@pytest.mark.parametrize("url, message", [
    ("redis://u:" + PASSWORD + "@h/0", "is not a storage URL"),
    ("nonsense", "is not a storage URL"),
    ("sqlite://", "an in-memory database cannot be shared"),
    ("sqlite:///:memory:", "an in-memory database cannot be shared"),
    ("journal://host/x.log", "journal:// takes no host"),
    ("journal:", "the journal needs a file path"),
    ("foo+bar://u:" + PASSWORD + "@h/db", "is not a storage URL"),
])
def test_bad_storage_urls_name_the_key_and_the_allowed_forms(url, message):
    with pytest.raises(ConfigError) as err:
        st.resolve_storage(url, "/tmp/x")
    text = str(err.value)
    assert text.startswith("hydra.sweeper.storage=") and message in text
    assert PASSWORD not in text
    if "not a storage URL" in message:
        assert "allowed forms: null" in text and "journal:///abs/path.log" in text


def test_masking_every_spelling_of_the_password():
    url = "postgresql://alice:p%40ss%2Fw@db.example:5432/optuna"
    assert st.mask_url(url) == "postgresql://alice:***@db.example:5432/optuna"
    assert set(st.secrets_of(url)) >= {"p@ss/w", "p%40ss%2Fw"}
    text = f"could not connect with password p@ss/w to {url}"
    masked = st.mask_text(text, st.secrets_of(url))
    assert "p@ss" not in masked and "p%40ss" not in masked and "***" in masked
    assert st.mask_url("sqlite:////x.db") == "sqlite:////x.db"


def test_unreachable_database_fails_before_training_with_the_password_masked(tmp_path):
    url = f"postgresql://coordsweep:{PASSWORD}@127.0.0.1:1/postgres"
    proc = run_app(["x=1,2", f"hydra.sweeper.storage={url}"], tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "hydra.sweeper.storage='postgresql+psycopg2://coordsweep:***@127.0.0.1:1/postgres'" in out
    assert "cannot open the storage" in out or "cannot create or load study" in out
    assert PASSWORD not in out
    assert not (tmp_path / "trainlog.txt").exists()
    assert not any(PASSWORD in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())


# -- budget, retry, dead and stale trials ------------------------------------------------------


def _trial(study, state, number_params=None, **system_attrs):
    return study.add_trial(optuna.trial.create_trial(
        state=state, params=number_params or {}, distributions={
            k: optuna.distributions.IntDistribution(0, 9) for k in (number_params or {})},
        value=1.0 if state == TrialState.COMPLETE else None, system_attrs=system_attrs))


def test_budget_counts_retries_once_and_ignores_skipped_trials():
    study = optuna.create_study()
    _trial(study, TrialState.COMPLETE, {"x": 1})
    _trial(study, TrialState.FAIL, {"x": 2})                          # 1: died, retried below
    _trial(study, TrialState.COMPLETE, {"x": 2}, failed_trial=1, retry_history=[1])
    _trial(study, TrialState.FAIL, **{st.SKIPPED: "over budget"})     # 3: never ran
    _trial(study, TrialState.FAIL, {"x": 3})                          # 4: failed for good
    _trial(study, TrialState.WAITING, {"x": 4})                       # 5: queued
    trials = study.get_trials()
    assert [t.number for t in st.counted_trials(trials)] == [0, 2, 4, 5]
    assert st.budget_left(trials, 4) == 0
    assert st.work_left(trials, 4)  # the queued trial still has to run
    assert not st.work_left([t for t in trials if t.state != TrialState.WAITING], 3)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_retry_callback_requeues_params_without_the_dead_trials_bookkeeping():
    study = optuna.create_study()
    dist = {"x": optuna.distributions.IntDistribution(0, 9)}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params={"x": 3}, distributions=dist,
        user_attrs={"fail_reason": "killed", "madds": 5.0, "enqueued_as": "paper"},
        system_attrs={st.WORKER: {"pid": 1}, "grid_id": 7}))
    retry = st.RetryCallback(max_retry=2)
    retry(study, study.trials[0])
    copy = study.trials[1]
    assert copy.state == TrialState.WAITING and copy.params == {"x": 3}
    assert copy.user_attrs == {"enqueued_as": "paper"}
    assert copy.system_attrs == {"grid_id": 7, "failed_trial": 0, "retry_history": [0]}
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(copy) == 0
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, params={"x": 3},
                                              distributions=dist, system_attrs=copy.system_attrs))
    retry(study, study.trials[2])
    assert study.trials[3].system_attrs["retry_history"] == [0, 2]
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, params={"x": 3},
                                              distributions=dist,
                                              system_attrs=study.trials[3].system_attrs))
    retry(study, study.trials[4])  # third failure: max_retry=2 reached, no new copy
    assert len(study.trials) == 5


def test_trials_of_a_dead_local_process_are_failed_and_retried(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    ident = st.worker_identity("run1", "0.0")
    t_dead = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    study._storage.set_trial_system_attr(t_dead._trial_id, st.WORKER,
                                         {**ident, "pid": int(dead.stdout)})
    t_alive = study.ask()
    study._storage.set_trial_system_attr(t_alive._trial_id, st.WORKER, ident)  # this process
    assert st.fail_dead_local_trials(study, st.RetryCallback(1)) == [t_dead.number]
    trials = study.get_trials()
    assert trials[t_dead.number].state == TrialState.FAIL
    assert "worker process is gone" in trials[t_dead.number].user_attrs["fail_reason"]
    assert trials[t_alive.number].state == TrialState.RUNNING
    assert trials[-1].state == TrialState.WAITING and trials[-1].params == trials[t_dead.number].params
    assert st.process_alive({**ident, "host": "another-host"}) is None


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_stale_heartbeat_fails_the_trial_with_a_reason_and_requeues_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    storage = st.open_storage(url, heartbeat_interval=1, grace_period=1, max_retry=1)
    study = optuna.create_study(storage=storage)
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    storage.record_heartbeat(trial._trial_id)
    assert st.fail_stale_trials(study) == []
    time.sleep(2.2)
    assert st.fail_stale_trials(study) == [trial.number]
    t, retry = study.get_trials()
    assert t.state == TrialState.FAIL and "stopped sending heartbeats" in t.user_attrs["fail_reason"]
    assert retry.state == TrialState.WAITING and retry.params == t.params
    assert st.fail_stale_trials(study) == []  # nothing left to fail, no second retry


# -- real storages with two workers ------------------------------------------------------------


def _check_accounted_once(study, n: int, sweep_root: Path) -> None:
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == n and len(trials) == n
    assert len({t.params["x"] for t in done}) == n
    assert sorted(trainlog(sweep_root).values()) == [1] * n
    assert len({t.user_attrs["pid"] for t in done}) == 2  # both workers took trials
    for t in done:
        assert json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())[
            "val_top1"] == t.value


def test_two_workers_share_a_journal_file_that_optuna_dashboard_reads(tmp_path):
    run_app(["x=range(0,6)", "duration=0.2", "hydra.sweeper.n_workers=2",
             "hydra.sweeper.storage=journal:study.log"], tmp_path)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "study.log")))
    _check_accounted_once(optuna.load_study(study_name="test", storage=storage), 6, tmp_path)

    pytest.importorskip("optuna_dashboard")
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    app = wsgi(storage)

    def get(path):
        env = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.errors": io.StringIO()}
        setup_testing_defaults(env)
        status = []
        body = b"".join(app(env, lambda s, h, *a: status.append(s)))
        assert status[0].startswith("200"), (status, body[:300])
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["test"]
    detail = get(f"/api/studies/{studies[0]['study_id']}")
    assert len(detail["trials"]) == 6
    assert {a["key"] for a in detail["trials"][0]["user_attrs"]} >= {"run_dir", "val_top1"}


@pytest.fixture(scope="module")
def postgres():
    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (initdb not found); `make test` installs it")
    with postgres_server(PASSWORD) as url:
        yield url  # postgresql://: the sweeper picks the installed driver (psycopg2)


@pytest.mark.postgres
def test_two_workers_share_postgres_and_the_password_never_leaks(tmp_path, postgres):
    proc = run_app(["x=range(0,6)", "duration=0.2", "hydra.sweeper.n_workers=2",
                    "hydra.sweeper.study_name=pg", f"hydra.sweeper.storage={postgres}"], tmp_path)
    study = load_study(tmp_path, "pg", storage=st.resolve_storage(postgres, "."))
    _check_accounted_once(study, 6, tmp_path)
    # not in the console, not in any file of the sweep (logs, .hydra/*.yaml, multirun.yaml)
    assert PASSWORD not in proc.stdout + proc.stderr
    assert "coordsweep:***@127.0.0.1" in proc.stdout + proc.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "hydra.yaml" for p in files) and any(p.suffix == ".log" for p in files)
    leaked = [str(p) for p in files if PASSWORD in p.read_text(errors="ignore")]
    assert leaked == []
    assert "storage: postgresql+psycopg2://coordsweep:***@" in (tmp_path / "pg" / "0" / ".hydra" /
                                                       "hydra.yaml").read_text()


@pytest.mark.postgres
def test_password_from_an_environment_variable(tmp_path, postgres):
    template = postgres.replace(PASSWORD, "${oc.env:COORDSWEEP_TEST_PW}")
    proc = run_app(["x=range(0,2)", "hydra.sweeper.study_name=pg_env",
                    f"hydra.sweeper.storage='{template}'"], tmp_path, COORDSWEEP_TEST_PW=PASSWORD)
    assert len(load_study(tmp_path, "pg_env", storage=st.resolve_storage(postgres, ".")).get_trials(
        states=(TrialState.COMPLETE,))) == 2
    assert PASSWORD not in proc.stdout + proc.stderr
    assert not any(PASSWORD in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.postgres
def test_many_trials_two_workers_postgres_with_kills(tmp_path, postgres):
    run_app(["x=range(0,24)", "durations=[0.1,0.3,0.2]", "modes={x5:kill_once,x17:kill_once}",
             "hydra.sweeper.n_workers=2", "hydra.sweeper.study_name=pg_slow",
             f"hydra.sweeper.storage={postgres}"], tmp_path, timeout=300)
    study = load_study(tmp_path, "pg_slow", storage=st.resolve_storage(postgres, "."))
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["x"] for t in done) == list(range(24))
    assert sorted(t.params["x"] for t in trials if t.state == TrialState.FAIL) == [5, 17]


def test_a_killed_but_unreaped_worker_counts_as_dead():
    """A zombie (exited, parent has not waited yet) must not hold its trial as alive."""
    import subprocess
    import sys
    import time

    from sweep.storage import _proc_start, process_alive

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        ident = {"host": __import__("socket").gethostname(), "pid": p.pid, "start": _proc_start(p.pid)}
        assert process_alive(ident) is True
        p.kill()
        for _ in range(100):  # not waited: the child stays a zombie until p.wait()
            if open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.05)
        assert process_alive(ident) is False
    finally:
        p.kill()
        p.wait()
