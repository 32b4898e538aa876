"""Worker utilization: 2 workers on trials whose durations differ 3x (sleep 1 s / 3 s).

Runs the same 24 durations twice in one go:

* coordsweep: ``n_workers=2`` barrier-free workers (ask -> run -> tell -> ask again);
* batch-synchronous, as the old hydra-optuna-sweeper: batches of 2 launched together, the next
  batch only after both finished (emulated with a 2-process pool and no framework cost at all).

Utilization = time spent inside trial tasks / (workers x span from the first trial start to the
last trial end). Worker start-up is reported separately.

    .venv/bin/python bench/worker_utilization.py [--trials 24] [--short 1] [--long 3]

Target: >= 90% for coordsweep.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP_FLAG = "--as-app"

if APP_FLAG in sys.argv:  # the Hydra app: a trial that sleeps durations[x % 2]
    sys.argv.remove(APP_FLAG)
    sys.path.insert(0, str(REPO))
    import hydra
    from hydra.core.config_store import ConfigStore
    from omegaconf import DictConfig, OmegaConf

    import hydra_plugins.coordsweep_sweeper.coordsweep_sweeper  # noqa: F401  (schema)

    ConfigStore.instance().store(name="bench", node=OmegaConf.create({
        "defaults": [{"override hydra/sweeper": "base_coordsweep"}, "_self_"],
        "x": 0, "durations": [1.0, 3.0]}))

    @hydra.main(version_base="1.3", config_path=None, config_name="bench")
    def main(cfg: DictConfig) -> dict:
        start = time.time()
        time.sleep(float(cfg.durations[int(cfg.x) % len(cfg.durations)]))
        return {"status": "ok", "val_top1": float(cfg.x), "task_start": start,
                "task_end": time.time()}

    main()
    sys.exit(0)


def _sleep(d: float):
    start = time.time()
    time.sleep(d)
    return start, time.time()


def batch_sync(durations, workers: int = 2):
    """Batches of ``workers`` trials, each batch waiting for its slowest trial."""
    spans = []
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_sleep, [0.0] * workers))  # warm the processes up
        for i in range(0, len(durations), workers):
            done, _ = wait([pool.submit(_sleep, d) for d in durations[i:i + workers]])
            spans.extend(f.result() for f in done)
    return spans


def utilization(spans, workers: int = 2):
    busy = sum(e - s for s, e in spans)
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    return busy / (workers * span), busy, span


def run(trials: int, short: float, long: float) -> None:
    import optuna

    with tempfile.TemporaryDirectory(prefix="coordsweep-util-") as tmp:
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, __file__, APP_FLAG, "-m", f"x=range(0,{trials})",
             f"durations=[{short},{long}]", "hydra.sweeper.n_workers=2",
             f"hydra.sweep.dir={tmp}/sweep", "hydra.sweeper.study_name=util"],
            cwd=tmp, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        wall = time.time() - t0
        if proc.returncode != 0:
            sys.exit(f"sweep failed:\n{proc.stdout}\n{proc.stderr}")
        study = optuna.load_study(study_name="util", storage=f"sqlite:///{tmp}/sweep/optuna.db")
        done = sorted((t for t in study.get_trials() if t.state.name == "COMPLETE"),
                      key=lambda t: t.number)
        spans = [(t.user_attrs["task_start"], t.user_attrs["task_end"]) for t in done]
        order = [short if t.params["x"] % 2 == 0 else long for t in done]
    u, busy, span = utilization(spans)
    print(f"{len(done)} trials of {short:g} s / {long:g} s, 2 workers, {busy:.1f} s of trial work")
    print(f"coordsweep (barrier-free): span {span:.1f} s, utilization {u * 100:.1f}% "
          f"(whole sweep incl. start-up {wall:.1f} s)")
    su, sbusy, sspan = utilization(batch_sync(order))
    print(f"batch-synchronous (batches of 2, same durations and order, no framework cost): "
          f"span {sspan:.1f} s, utilization {su * 100:.1f}%")
    mixed = [short, long] * (len(order) // 2) + [short] * (len(order) % 2)
    mu, _, mspan = utilization(batch_sync(mixed))
    print(f"batch-synchronous, every batch one {short:g} s + one {long:g} s trial: "
          f"span {mspan:.1f} s, utilization {mu * 100:.1f}%")
    print(f"ideal (work / 2): {busy / 2:.1f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--short", type=float, default=1.0)
    ap.add_argument("--long", type=float, default=3.0)
    a = ap.parse_args()
    run(a.trials, a.short, a.long)
