"""Sweep efficiency: hypervolume of (val top-1, MAdds) vs compute spent, with and without the
multi-objective rung scheduler (sweep/sweeper/rungs.py, MO-ASHA style).

Two strategies on the synthetic data with a tiny budget, each a real ``run.py -m`` sweep:

* A: TPE, every trial trains its full ``--epochs``, 2 workers, no early stopping. (The
  sweeper has no batch-synchronous mode; batch sync only changes wall time, not the compute
  per trial, so A's hypervolume-vs-compute curve is the same as with batches of 2.)
* B: TPE, 2 asynchronous workers, ``hydra.sweeper.scheduler.name=mo_asha`` (rungs at 1, eta,
  eta^2... epochs; the last rung = full budget stops nothing).

Data: the synthetic task v5 at its learnable short budget (``TINY``). Search space:
``attention=choice(none,se,ca) model.width=choice(0.35,0.5,0.75)``; objectives
val_top1 (max) and madds (min). Compute = epochs trained, summed over trials (and the trials'
job seconds). Hypervolume of the COMPLETE (full-budget) trials only, in (val_top1, madds) with
the reference point (val_top1 = 0 %, madds = 1.1 x the largest MAdds seen in any sweep);
stopped trials add compute, never points. Every sweep seed (``--seeds``) is one pair of sweeps.

    .venv/bin/python bench/sweep_efficiency.py [--seeds 3] [--trials-a 6] [--trials-b 12]
        [--epochs 5] [--eta 3] [--out /tmp/sweep_efficiency]

Prints a Markdown table per sweep and the mean (sd) over seeds of the hypervolume at equal
compute; raw traces in <out>/results.json. Machine load changes seconds, not epochs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
SPACE = ["attention=choice(none,se,ca)", "model.width=choice(0.35,0.5,0.75)"]
# The learnable short budget of the synthetic task v5 (bench/synthetic_learning.py): 1,600
# training images, batch 64, lr 0.03, no augmentation -> every variant leaves chance by ~100 steps.
TINY = ["data.synthetic_train=2100", "data.val_size=500", "data.synthetic_test=500",
        "train.batch_size=64", "train.lr=0.03", "data.augment=false",
        "train.latency=false", "train.quiet=true", "train.threads=1", "device=cpu"]


def hypervolume_2d(points: Sequence[Tuple[float, float]], ref: Tuple[float, float]) -> float:
    """Area dominated by ``points`` (accuracy maximized, cost minimized) and bounded by ``ref``
    = (accuracy floor, cost ceiling)."""
    pts = sorted((c, a) for a, c in points if a > ref[0] and c < ref[1])
    area, best = 0.0, ref[0]
    # sweep by increasing cost; each new accuracy record adds a rectangle up to the cost ceiling
    for i, (c, a) in enumerate(pts):
        if a > best:
            area += (a - best) * (ref[1] - c)
            best = a
    return area


def run_sweep(out: Path, name: str, seed: int, n_trials: int, epochs: int, eta: int,
              scheduler: bool) -> float:
    args = [sys.executable, str(REPO / "run.py"), "-m", *SPACE, *TINY,
            f"train.epochs={epochs}", "+hydra.sweeper.objectives.madds=minimize",
            "hydra.sweeper.sampler.name=tpe", f"hydra.sweeper.sampler.seed={seed}",
            "+hydra.sweeper.sampler.options.n_startup_trials=3",
            f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_workers=2",
            "hydra.sweeper.report=false", "hydra.sweeper.reuse_completed=false",
            f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={out / name}"]
    if scheduler:
        args += ["hydra.sweeper.scheduler.name=mo_asha", f"hydra.sweeper.scheduler.eta={eta}",
                 "hydra.sweeper.scheduler.min_epochs=1"]
    t0 = time.time()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.time() - t0


def trace(out: Path, name: str) -> List[dict]:
    """Trials in completion order with cumulative compute."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / name / 'optuna.db'}")
    rows = []
    for t in sorted((t for t in study.get_trials() if t.state.is_finished()
                     and "coordsweep:skipped" not in t.system_attrs),
                    key=lambda t: t.datetime_complete):
        ua = t.user_attrs
        rows.append({"number": t.number, "state": t.state.name,
                     "epochs": int(ua.get("epochs_run", 0) or 0),
                     "seconds": float(ua.get("job_time_s", 0.0) or 0.0),
                     "val_top1": ua.get("val_top1"), "madds": ua.get("madds"),
                     "params": t.params})
    return rows


def curve(rows: List[dict], ref: Tuple[float, float]) -> List[Tuple[int, float, float]]:
    """(cumulative epochs, cumulative seconds, hypervolume) after each finished trial."""
    out, pts, e, s = [], [], 0, 0.0
    for r in rows:
        e += r["epochs"]
        s += r["seconds"]
        if r["state"] == "COMPLETE" and r["val_top1"] is not None:
            pts.append((float(r["val_top1"]), float(r["madds"])))
        out.append((e, s, hypervolume_2d(pts, ref)))
    return out


def hv_at(c: List[Tuple[int, float, float]], epochs: int) -> float:
    """Hypervolume reached once at most ``epochs`` were spent."""
    best = 0.0
    for e, _, hv in c:
        if e <= epochs:
            best = hv
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials-a", type=int, default=6)
    ap.add_argument("--trials-b", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/sweep_efficiency"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    walls: Dict[str, float] = {}
    for seed in range(a.seeds):
        for strat, n, sched in (("A", a.trials_a, False), ("B", a.trials_b, True)):
            name = f"{strat}_s{seed}"
            if not (a.out / name / "optuna.db").exists():
                walls[name] = run_sweep(a.out, name, seed, n, a.epochs, a.eta, sched)
                print(f"{name}: {walls[name]:.0f} s", flush=True)
    traces = {f"{s}_s{k}": trace(a.out, f"{s}_s{k}") for k in range(a.seeds) for s in "AB"}
    max_madds = max(float(r["madds"]) for rows in traces.values() for r in rows if r["madds"])
    ref = (0.0, 1.1 * max_madds)
    curves = {k: curve(v, ref) for k, v in traces.items()}
    budget = a.trials_a * a.epochs
    levels = sorted({a.epochs * k for k in range(1, a.trials_a + 1)})
    print(f"\nreference point: val_top1 0 %, madds {ref[1]:.4g}; HV units: %-points x MAdds")
    print("| strategy | seed | trials (complete/pruned) | epochs spent | job s | final HV | "
          + " | ".join(f"HV@{lv} ep" for lv in levels) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(levels))
    summary: Dict[str, Dict[int, List[float]]] = {"A": {}, "B": {}}
    for k in sorted(curves):
        c, rows = curves[k], traces[k]
        nc = sum(r["state"] == "COMPLETE" for r in rows)
        npr = sum(r["state"] == "PRUNED" for r in rows)
        hvs = [hv_at(c, lv) for lv in levels]
        for lv, hv in zip(levels, hvs):
            summary[k[0]].setdefault(lv, []).append(hv)
        print(f"| {k[0]} | {k.split('_s')[1]} | {nc}/{npr} | {c[-1][0]} | {c[-1][1]:.0f} | "
              f"{c[-1][2]:.4g} | " + " | ".join(f"{h:.4g}" for h in hvs) + " |")
    print("\nmean (sd) over seeds of HV at equal compute:")
    for lv in levels:
        parts = []
        for s in "AB":
            v = summary[s].get(lv, [])
            sd = statistics.stdev(v) if len(v) > 1 else float("nan")
            parts.append(f"{s} {statistics.mean(v):.4g} ({sd:.3g})")
        print(f"  {lv:3d} epochs: " + ", ".join(parts))
    (a.out / "results.json").write_text(json.dumps(
        {"reference": ref, "traces": traces, "curves": curves, "walls": walls,
         "budget_epochs_A": budget}, indent=1, default=str))
    print(f"\nraw: {a.out / 'results.json'}")


if __name__ == "__main__":
    main()
