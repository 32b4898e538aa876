"""Framework overhead per trial of the coordsweep sweeper, with a no-op task.

The sweep uses the project's real config tree (conf/, so composing a trial config costs what it
costs for run.py) and the ca_ofat search space crossed with seeds; the task returns a fixed
metrics dict at once. What remains is the sweeper's bookkeeping per trial: ask (sampler and
storage round trips), composing the trial config, Hydra's run_job (run dir, .hydra/*.yaml,
logging), storing metrics as user attributes, tell, budget/stale-trial checks. The cost count
(fvcore) belongs to the trial and is not included.

    .venv/bin/python bench/sweep_overhead.py [--trials 38] [--workers 1] [--storage URL]

Target: < 1.8 s per trial (3% of a 60 s trial).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP_FLAG = "--as-app"

if APP_FLAG in sys.argv:  # the Hydra app: run.py's config, a task that does nothing
    sys.argv.remove(APP_FLAG)
    sys.path.insert(0, str(REPO))
    import hydra
    from omegaconf import DictConfig

    try:
        from sweep.config import register_configs
    except ImportError:  # pragma: no cover - older tree
        from search_space.config import register_configs
    register_configs()

    @hydra.main(version_base="1.3", config_path=str(REPO / "conf"), config_name="config")
    def main(cfg: DictConfig) -> dict:
        return {"status": "ok", "val_top1": 50.0 + int(cfg.seed), "madds": 1e6, "params": 1e6,
                "task_start": time.time()}

    main()
    sys.exit(0)


def run(trials: int, workers: int, storage: str | None) -> None:
    import optuna

    with tempfile.TemporaryDirectory(prefix="coordsweep-overhead-") as tmp:
        seeds = max(1, -(-trials // 19))
        args = [sys.executable, __file__, APP_FLAG, "-m", "search_space=ca_ofat",
                f"seed=range(0,{seeds})", f"hydra.sweeper.n_trials={trials}",
                f"hydra.sweeper.n_workers={workers}", f"hydra.sweep.dir={tmp}/sweep",
                "hydra.sweeper.study_name=overhead"]
        if not (REPO / "conf" / "data" / "synthetic.yaml").exists():
            args.append("data=base_data")  # data group not in this tree yet: schema only
        if storage:
            args.append(f"hydra.sweeper.storage={storage}")
        t0 = time.time()
        proc = subprocess.run(args, cwd=tmp, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        wall = time.time() - t0
        if proc.returncode != 0:
            sys.exit(f"sweep failed:\n{proc.stdout}\n{proc.stderr}")
        url = storage or f"sqlite:///{tmp}/sweep/optuna.db"
        if storage:
            from sweep.storage import resolve_storage
            url = resolve_storage(storage, tmp)
        study = optuna.load_study(study_name="overhead", storage=url)
        done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
        starts = [t.datetime_start.timestamp() for t in done]
        ends = [t.datetime_complete.timestamp() for t in done]
        span = max(ends) - min(starts)
        per_trial = span * workers / len(done)
        inside = [t.user_attrs["job_time_s"] for t in done]  # compose + run_job + attrs
        durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
        print(f"trials: {len(done)} COMPLETE with {workers} worker(s), storage "
              f"{'sqlite (default)' if not storage else 'given'}")
        print(f"sweep wall time {wall:.1f} s; trial loop {span:.2f} s; startup+summary "
              f"{wall - span:.1f} s (planning, config checks, worker processes; once per sweep)")
        print(f"per trial (loop span x workers / trials): {per_trial * 1000:.0f} ms "
              f"= {per_trial / 60 * 100:.2f}% of a 60 s trial (target < 3%, i.e. < 1800 ms)")
        print(f"  inside the trial job (compose + run_job + metrics attrs): median "
              f"{statistics.median(inside) * 1000:.0f} ms, max {max(inside) * 1000:.0f} ms")
        print(f"  Optuna trial start->complete: median {statistics.median(durations) * 1000:.0f} ms;"
              f" remainder per trial (ask, tell, checks): "
              f"{(per_trial - statistics.median(inside)) * 1000:.0f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=38)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--storage", default=None, help="storage URL (default: sqlite in the sweep dir)")
    a = ap.parse_args()
    run(a.trials, a.workers, a.storage)
