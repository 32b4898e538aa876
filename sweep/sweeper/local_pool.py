"""Worker processes on this machine, for Hydra's basic launcher (which runs jobs one after
the other in-process: no parallelism, and a trial that kills its process kills the sweep).

Each worker is a process forked from a fork server (started fresh, with the imports done
once; the sweeper's own process is never forked) running one worker job (``WorkerTask`` through Hydra's
``run_job``, as a launcher would). The supervisor waits on the processes; when one dies
(a trial SIGKILLed it, OOM, segfault) it fails that worker's running trial at once with the
reason, re-queues it (``RetryCallback``) and starts a replacement, so finished trials are
never lost and the budget is still reached.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from sweep import storage as st

log = logging.getLogger(__name__)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


# the user's script (run.py), then what every worker imports (optuna, SQLAlchemy, hydra, torch)
PRELOAD = ["__main__", "sweep.sweeper.worker", "sweep.sweeper.local_pool", "cloudpickle",
           "sqlalchemy.dialects.sqlite", "optuna.samplers", "optuna.storages"]


def worker_job_overrides(plan, job_num: int) -> list:
    """Overrides of a worker job: the sweep's fixed task overrides (so the job composes like
    the trials do) and its run directory ``<hydra.sweep.dir>/workers/<job num>``."""
    return list(plan.space.fixed) + [f"hydra.sweep.subdir=workers/{job_num}"]


def _child_main(payload: bytes, job_num: int) -> None:
    """Entry point of a worker process: rebuild Hydra's state, run the worker job."""
    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobStatus, run_job, setup_globals
    from omegaconf import open_dict

    signal.signal(signal.SIGTERM, _interrupt)
    _die_with_parent()
    state, hydra_context, master_config, task = cloudpickle.loads(payload)
    Singleton.set_state(state)
    setup_globals()
    try:
        cfg = hydra_context.config_loader.load_sweep_config(
            master_config, worker_job_overrides(task.plan, job_num))
        with open_dict(cfg):
            cfg.hydra.job.id = f"worker{job_num}"
            cfg.hydra.job.num = job_num
        ret = run_job(hydra_context=hydra_context, task_function=task, config=cfg,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except KeyboardInterrupt:
        _exit(130)
    if ret.status == JobStatus.FAILED:
        e = ret._return_value
        sys.stderr.write(f"coordsweep worker {job_num} failed:\n"
                         + "".join(traceback.format_exception(type(e), e, e.__traceback__)))
        _exit(1)
    _exit(0)


def _exit(code: int) -> None:
    logging.shutdown()
    sys.exit(code)


def _die_with_parent() -> None:
    """SIGTERM ourselves (-> the running trial is failed and re-queued, the worker exits) when
    the sweeper process is gone, instead of running on as an orphan."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="coordsweep-parent-watch").start()


def _describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run_local_workers(payload: bytes, n_workers: int, study, plan, *,
                      max_restarts: int, has_work: Callable[[], bool]) -> Dict[str, Any]:
    """Run ``n_workers`` worker processes until none is left; replace dead ones while work
    remains (at most ``max_restarts`` times). Returns {started, died, restarts}."""
    ctx = multiprocessing.get_context("forkserver")
    # the fork server imports these once; each worker (and each replacement) is a fork of it
    ctx.set_forkserver_preload(PRELOAD)
    procs: Dict[Any, Any] = {}
    generation = [0] * n_workers
    stats = {"started": 0, "died": 0, "restarts": 0}
    retry = plan.retry()

    def start(slot: int) -> None:
        # job number = generation x n_workers + slot: a replacement keeps the dead one's slot
        num = generation[slot] * n_workers + slot
        generation[slot] += 1
        p = ctx.Process(target=_child_main, args=(payload, num), name=f"coordsweep-worker-{num}")
        p.start()
        procs[p.sentinel] = (p, num)
        stats["started"] += 1

    def mine(pid: int) -> Callable[[Any], bool]:
        return lambda ident: ident.get("run") == plan.run_id and ident.get("pid") == pid

    for slot in range(n_workers):
        start(slot)
    try:
        while procs:
            for sentinel in multiprocessing.connection.wait(list(procs)):
                p, num = procs.pop(sentinel)
                p.join()
                if p.exitcode == 0:
                    continue
                stats["died"] += 1
                how = _describe_exit(p.exitcode)
                trials = [t for t in st.running_trials(study)
                          if isinstance(t.system_attrs.get(st.WORKER), dict)
                          and mine(p.pid)(t.system_attrs[st.WORKER])]
                failed = st.fail_trials(study, trials, (
                    f"worker process {p.pid} died ({how}) while running this trial"), retry)
                ran_any = any(isinstance(t.system_attrs.get(st.WORKER), dict)
                              and mine(p.pid)(t.system_attrs[st.WORKER])
                              for t in study.get_trials(deepcopy=False))
                log.warning(f"worker {num} (pid {p.pid}) died ({how})"
                            + (f"; trial(s) {failed} failed and re-queued" if failed else ""))
                if not ran_any:
                    log.error(f"worker {num} died before running any trial; not replacing it "
                              f"(see <hydra.sweep.dir>/workers/{num}/ and the output above)")
                elif stats["restarts"] < max_restarts and has_work():
                    stats["restarts"] += 1
                    log.info(f"starting a replacement worker ({stats['restarts']}/{max_restarts})")
                    start(num % n_workers)
    except KeyboardInterrupt:
        log.warning("interrupted: stopping the workers (their running trials are re-queued)")
        for p, _ in procs.values():
            p.terminate()
        deadline = time.time() + 30
        for p, _ in procs.values():
            p.join(max(0.1, deadline - time.time()))
            if p.is_alive():
                p.kill()
        raise
    if stats["died"] == stats["started"] and not any(
            isinstance(t.system_attrs.get(st.WORKER), dict)
            and t.system_attrs[st.WORKER].get("run") == plan.run_id
            for t in study.get_trials(deepcopy=False)):
        raise RuntimeError("every worker process died before running a trial; see the errors "
                           "above and <hydra.sweep.dir>/workers/")
    return stats
