"""Where a sweep's state lives: Optuna storages, bookkeeping attributes, failure and retry.

Storage forms accepted for ``hydra.sweeper.storage`` (https://optuna.readthedocs.io/en/stable/
reference/storages.html):

* ``null``: ``sqlite:///<hydra.sweep.dir>/optuna.db``;
* any SQLAlchemy URL Optuna's RDBStorage accepts: ``sqlite:///relative.db``,
  ``sqlite:////abs/path.db``, ``postgresql://user:password@host:5432/db``,
  ``mysql+pymysql://...``; relative SQLite paths are made absolute (from the current
  directory) before workers start;
* ``journal:///abs/path.log`` or ``journal:relative/path.log``: Optuna's JournalStorage over a
  JournalFileBackend (one append-only file; no heartbeat, see ``fail_dead_local_trials``).

State is kept in storage, never in worker memory: each running trial carries the identity of
its worker (system attr ``coordsweep:worker``), so a dead worker's trial is failed with a
``fail_reason`` user attribute and re-queued (``RetryCallback``) by whoever notices first:
the local supervisor, a heartbeat check (RDB storages), or the next run of the sweep.
Passwords never leave this module unmasked: use ``mask_url``/``mask_text`` in messages.
"""
from __future__ import annotations

import os
import re
import socket
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence
from urllib.parse import quote, quote_plus

from search_space.config import ConfigError

STORAGE_KEY = "hydra.sweeper.storage"
ALLOWED_FORMS = ("null (sqlite:///<hydra.sweep.dir>/optuna.db), an SQLAlchemy URL "
                 "(sqlite:///path.db, postgresql://user:password@host:5432/db, "
                 "mysql+pymysql://user:password@host/db) or journal:///abs/path.log | "
                 "journal:relative/path.log")
_PREFIX = "coordsweep:"
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)@")


def attr_key(name: str) -> str:
    """Key of a coordsweep bookkeeping (system) attribute, e.g. ``coordsweep:worker``."""
    return _PREFIX + name


WORKER = attr_key("worker")
SKIPPED = attr_key("skipped")
SIGNATURE = attr_key("signature")
FAIL_REASON = "fail_reason"


# -- URLs and secrets -----------------------------------------------------------------------


def secrets_of(url: Optional[str]) -> List[str]:
    """The password of a storage URL in every spelling it may appear in (raw, decoded, quoted)."""
    if not url:
        return []
    found = set()
    m = _URL_PASSWORD.search(url)
    if m and m.group("pw"):
        found.add(m.group("pw"))
    try:
        from sqlalchemy.engine import make_url

        pw = make_url(url).password
        if pw:
            found.update({str(pw), quote(str(pw), safe=""), quote_plus(str(pw))})
    except Exception:
        pass
    return sorted((s for s in found if s), key=len, reverse=True)


def mask_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***`` (and any ``scheme://user:pw@`` masked)."""
    for s in secrets:
        text = text.replace(s, "***")
    return _URL_PASSWORD.sub(lambda m: m.group("head") + "***@", text)


def mask_url(url: Optional[str]) -> str:
    """A storage URL safe to print: ``postgresql://user:***@host/db``."""
    if url is None:
        return "null"
    return mask_text(url, secrets_of(url))


def resolve_storage(storage: Optional[str], sweep_dir: str) -> str:
    """Normalize ``hydra.sweeper.storage`` into an absolute URL, or raise ``ConfigError``
    naming the key and the allowed forms (password masked) before anything runs."""
    if storage is None or str(storage).strip() in ("", "null", "None"):
        return "sqlite:///" + os.path.abspath(os.path.join(sweep_dir, "optuna.db"))
    url = str(storage).strip()
    shown = mask_url(url)
    if url.startswith("journal:"):
        path = url[len("journal:"):]
        if path.startswith("///"):
            path = path[2:]
        elif path.startswith("//"):
            raise ConfigError(f"{STORAGE_KEY}={shown!r}: journal:// takes no host; write "
                              f"journal:///abs/path.log or journal:relative/path.log")
        if not path or path.endswith("/"):
            raise ConfigError(f"{STORAGE_KEY}={shown!r}: the journal needs a file path; "
                              f"allowed forms: {ALLOWED_FORMS}")
        return "journal:///" + os.path.abspath(path).lstrip("/")
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        dialect = parsed.get_dialect()  # unknown dialect -> error here
    except Exception as e:
        raise ConfigError(f"{STORAGE_KEY}={shown!r} is not a storage URL "
                          f"({mask_text(type(e).__name__ + ': ' + str(e), secrets_of(url))}); "
                          f"allowed forms: {ALLOWED_FORMS}") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        # SQLAlchemy 2.1 maps postgresql:// to psycopg 3; psycopg2 is what we install
        if parsed.drivername == "postgresql" and _importable("psycopg2"):
            return "postgresql+psycopg2" + url[len("postgresql"):]
        raise ConfigError(f"{STORAGE_KEY}={shown!r}: the database driver is not installed "
                          f"({e}); install it (e.g. pip install psycopg2-binary) or name an "
                          f"installed one (postgresql+psycopg2://...)") from None
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if not db or db == ":memory:" or db.startswith("file::memory:"):
            raise ConfigError(f"{STORAGE_KEY}={shown!r}: an in-memory database cannot be shared "
                              f"by workers; allowed forms: {ALLOWED_FORMS}")
        return "sqlite:///" + os.path.abspath(db)
    return url


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def open_storage(url: str, *, heartbeat_interval: Optional[int] = None,
                 grace_period: Optional[int] = None, max_retry: Optional[int] = None):
    """An Optuna storage for a URL from ``resolve_storage``.

    RDB storages get Optuna's heartbeat (``heartbeat_interval`` seconds; running trials
    silent for ``grace_period`` seconds are failed) and ``RetryCallback(max_retry)``; SQLite
    waits up to 60 s for a lock instead of failing. Errors become ``ConfigError`` with the
    password masked.
    """
    import optuna

    secrets = secrets_of(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if url.startswith("journal:///"):
                from optuna.storages.journal import JournalFileBackend, JournalStorage

                path = "/" + url[len("journal:///"):]
                os.makedirs(os.path.dirname(path), exist_ok=True)
                return JournalStorage(JournalFileBackend(path))
            kwargs: Dict[str, Any] = {}
            sqlite = url.startswith("sqlite:")
            if sqlite:
                path = url[len("sqlite:///"):]
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                _sqlite_wal(path)
                kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
            else:
                kwargs["engine_kwargs"] = {"pool_pre_ping": True}
            if heartbeat_interval:
                kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                              heartbeat_stale_trial_callback=RetryCallback(max_retry))
            storage = optuna.storages.RDBStorage(url, **kwargs)
            if sqlite:
                _sqlite_no_fsync_per_commit(storage.engine)
            return storage
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{STORAGE_KEY}={mask_url(url)!r}: cannot open the storage: "
                          f"{mask_text(type(e).__name__ + ': ' + str(e), secrets)}") from None


def _sqlite_wal(path: str) -> None:
    """Write-ahead log mode (persistent in the file): readers never block the writer, and
    workers commit without waiting for each other's fsync."""
    import sqlite3

    con = sqlite3.connect(path, timeout=60)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def _sqlite_no_fsync_per_commit(engine) -> None:
    """``synchronous=NORMAL`` on every connection: with WAL, a commit survives any process
    crash (SIGKILL included) and only a power loss may undo the last commits; this makes a
    commit ~100x cheaper than the default fsync per commit (15-25 commits per trial)."""
    from sqlalchemy import event

    def pragma(dbapi_connection, record) -> None:
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(engine, "connect", pragma)
    engine.dispose()  # connections opened during setup reconnect with the pragma


# -- retry, worker identity, failing trials ---------------------------------------------------


class RetryCallback:
    """Re-queue a trial that died with its worker, up to ``max_retry`` times.

    Like Optuna's ``RetryHeartbeatStaleTrialCallback`` (same ``failed_trial``/``retry_history``
    system attrs, so its ``retried_trial_number``/``retry_history`` helpers work), but the copy
    does not inherit the dead trial's coordsweep bookkeeping, metrics or ``fail_reason``.
    """

    def __init__(self, max_retry: Optional[int] = None) -> None:
        self.max_retry = max_retry

    def __call__(self, study, trial) -> None:
        import optuna

        system_attrs = {k: v for k, v in trial.system_attrs.items() if not k.startswith(_PREFIX)}
        history = list(system_attrs.get("retry_history", [])) + [trial.number]
        if self.max_retry is not None and len(history) > self.max_retry:
            return
        system_attrs["failed_trial"] = system_attrs.get("failed_trial", trial.number)
        system_attrs["retry_history"] = history
        user_attrs = {k: trial.user_attrs[k] for k in ("enqueued_as",) if k in trial.user_attrs}
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params,
            distributions=trial.distributions, user_attrs=user_attrs, system_attrs=system_attrs))


def _proc_stat(pid: int) -> Optional[List[str]]:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_field(fields: Optional[List[str]]) -> Optional[str]:
    """The process start time (field 22 of /proc/<pid>/stat) from :func:`_proc_stat`'s fields."""
    return fields[19] if fields and len(fields) > 19 else None


def _proc_start(pid: int) -> Optional[str]:
    return _start_field(_proc_stat(pid))


def worker_identity(run_id: str, slot: str) -> Dict[str, Any]:
    """Who runs a trial: sweep run id, worker slot, host, pid and the process start time."""
    pid = os.getpid()
    return {"run": run_id, "slot": slot, "host": socket.gethostname(), "pid": pid,
            "start": _proc_start(pid)}


def process_alive(ident: Mapping[str, Any]) -> Optional[bool]:
    """Whether the worker process of ``ident`` still runs; None when it is on another host."""
    if ident.get("host") != socket.gethostname():
        return None
    pid = int(ident.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):  # killed, not yet reaped: dead
        return False
    start = _start_field(fields)
    return start is None or ident.get("start") is None or start == ident.get("start")


def fail_trials(study, trials: Sequence[Any], reason: Callable[[Any], str] | str,
                retry: Optional[Callable[[Any, Any], None]] = None) -> List[int]:
    """Mark RUNNING trials FAIL with ``fail_reason`` and re-queue them through ``retry``.

    Safe against other processes doing the same: a trial another process finished is skipped.
    Returns the numbers of the trials this call failed.
    """
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    done = []
    for t in trials:
        text = reason(t) if callable(reason) else reason
        try:
            storage.set_trial_user_attr(t._trial_id, FAIL_REASON, text)
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                done.append(t)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    for t in done:
        if retry is not None:
            retry(study, storage.get_trial(t._trial_id))
    return [t.number for t in done]


def fail_stale_trials(study, retry: Optional[Callable[[Any, Any], None]] = None) -> List[int]:
    """Optuna's ``fail_stale_trials`` plus a ``fail_reason``: RUNNING trials whose heartbeat
    stopped longer than the grace period ago (RDB storages with a heartbeat only)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return []
    stale = set(storage._get_stale_trial_ids(study._study_id))  # NOTE: Optuna-internal, stable 2.x-5.x
    if not stale:
        return []
    trials = [t for t in running_trials(study) if t._trial_id in stale]
    retry = retry or storage.get_heartbeat_stale_trial_callback()
    return fail_trials(study, trials, lambda t: (
        f"worker stopped sending heartbeats (killed, lost or stuck): "
        f"{_describe(t.system_attrs.get(WORKER))}"), retry)


def fail_dead_local_trials(study, retry: Optional[Callable[[Any, Any], None]] = None,
                           only: Optional[Callable[[Mapping[str, Any]], bool]] = None) -> List[int]:
    """Fail RUNNING trials whose worker process on this host is gone (any storage kind)."""
    dead = []
    for t in running_trials(study):
        ident = t.system_attrs.get(WORKER)
        if not isinstance(ident, Mapping) or (only is not None and not only(ident)):
            continue
        if process_alive(ident) is False:
            dead.append(t)
    return fail_trials(study, dead, lambda t: (
        f"worker process is gone (killed or crashed) while running this trial: "
        f"{_describe(t.system_attrs.get(WORKER))}"), retry)


def _describe(ident: Any) -> str:
    if not isinstance(ident, Mapping):
        return "unknown worker"
    return f"worker {ident.get('slot')} pid {ident.get('pid')} on {ident.get('host')}"


def running_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


# -- budget ---------------------------------------------------------------------------------


def counted_trials(trials: Sequence[Any]) -> list:
    """Trials that use the ``n_trials`` budget: all but FAIL trials that were re-queued
    (their retry counts instead) and trials skipped without running (over budget, or a
    duplicate of a trial running at the same time)."""
    from optuna.trial import TrialState

    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if not (t.state == TrialState.FAIL
                                      and (t.number in retried or SKIPPED in t.system_attrs))]


def budget_left(trials: Sequence[Any], n_trials: int) -> int:
    """Trials that may still be created (queued WAITING trials are already counted)."""
    return n_trials - len(counted_trials(trials))


def work_left(trials: Sequence[Any], n_trials: int) -> bool:
    """Whether a worker should ask for another trial: budget left or queued trials waiting."""
    from optuna.trial import TrialState

    return budget_left(trials, n_trials) > 0 or any(t.state == TrialState.WAITING for t in trials)
