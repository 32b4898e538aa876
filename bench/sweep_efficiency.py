"""Sweep efficiency: hypervolume of the (val top-1, MAdds) front vs compute spent, with and
without the multi-objective rung scheduler (sweep/sweeper/rungs.py, MO-ASHA style); issue 6.

Two strategies, each a real ``run.py -m`` sweep with 2 asynchronous workers and the same TPE
sampler seed per pair:

* A (old style, like hydra-optuna-sweeper): TPE, every trial trains the full ``--epochs``, no
  early stopping, ``reuse_completed=false reuse_pruned=false`` (a configuration proposed twice is
  trained twice), ``--trials-a`` trials. (The sweeper has no batch-synchronous mode; batch sync
  changes wall time, not the compute per trial, so A's hypervolume-vs-compute curve is the same.)
* B (ours): TPE + ``hydra.sweeper.scheduler.name=mo_asha`` (rungs at 1, eta, eta^2 ... epochs;
  the last rung = full budget stops nothing), default reuse (a configuration proposed again
  reuses the stored COMPLETE or stopped trial, no training), ``--trials-b`` trials; if B then
  spent fewer epochs than A, its study is continued with 12 more trials at a time (up to
  4 x ``--trials-b``) so that B gets at least A's compute.

Search space (60 configurations): ``attention=choice(none,se,eca,cbam,ca)`` x
``model.width=choice(0.25,0.35,0.5)`` x
``attention.position=choice(post_dw,post_expand,post_project,post_add)`` (for ``none`` the
position changes nothing: 4 names of one network). Objectives val_top1 (max), madds (min).

Data (``--data``):
* ``synthetic``: the synthetic task, 1,400 generated training images of which 500 are the
  validation split -> 900 training images per epoch (14 steps of 64), 500 test, lr 0.03, no
  augmentation: at 9 epochs (~127 steps) CA at width 0.35 reaches ~99 % val top-1, while every
  model is still at chance (10 %) after epoch 1.
* ``cifar10``: ``../shared/data/cifar10`` (image-folder tree), stratified subset 900 train /
  500 val / 500 test, default augmentation (pad-4 crop + flip); skipped with a message when the
  folder is absent.

Compute = epochs actually trained, summed over trials in completion order (a reused copy costs
nothing; a stopped trial costs the epochs it ran); job seconds are recorded too. Hypervolume of
the COMPLETE (full-budget) trials only, in (val_top1 %, madds), reference point (val_top1 = 0 %,
madds = 1.1 x the largest MAdds seen in any sweep of the run); stopped trials add compute,
never points. Headline: for each seed, the compute at which B first reaches A's final
hypervolume, as a fraction of A's total compute ("never" if it does not).

    .venv/bin/python bench/sweep_efficiency.py [--data synthetic|cifar10] [--seeds 3]
        [--trials-a 12] [--trials-b 36] [--epochs 9] [--eta 3] [--out /tmp/sweep_efficiency]

Prints per-sweep and mean-over-seeds Markdown tables of HV at several compute levels and the
headline fractions; writes <out>/results.json and <out>/hv_vs_epochs.png. Studies already in
<out> are reused (resumable). Machine load changes seconds, not epochs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
SPACE = ["attention=choice(none,se,eca,cbam,ca)", "model.width=choice(0.25,0.35,0.5)",
         "attention.position=choice(post_dw,post_expand,post_project,post_add)"]
COMMON = ["train.batch_size=64", "train.lr=0.03", "train.latency=false", "train.quiet=true",
          "train.threads=1", "device=cpu"]
CIFAR_DIR = (REPO / ".." / "shared" / "data" / "cifar10").resolve()
DATA = {
    # 1,400 generated = 900 train + 500 val; the synthetic config defaults to train_size=3000,
    # so train_size=null (= the rest of the pool) is needed
    "synthetic": ["data=synthetic", "data.synthetic_train=1400", "data.val_size=500",
                  "data.train_size=null", "data.synthetic_test=500", "data.augment=false"],
    "cifar10": ["data=cifar10", f"data.root={CIFAR_DIR}", "data.train_size=900",
                "data.val_size=500", "data.test_size=500"],
}


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


def run_sweep(out: Path, name: str, data: str, seed: int, n_trials: int, epochs: int, eta: int,
              ours: bool) -> float:
    """One ``run.py -m`` sweep (or the continuation of its study up to ``n_trials``)."""
    args = [sys.executable, str(REPO / "run.py"), "-m", *SPACE, *DATA[data], *COMMON,
            f"train.epochs={epochs}", "+hydra.sweeper.objectives.madds=minimize",
            "hydra.sweeper.sampler.name=tpe", f"hydra.sweeper.sampler.seed={seed}",
            "+hydra.sweeper.sampler.options.n_startup_trials=3",
            f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_workers=2",
            "hydra.sweeper.report=false",
            f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={out / name}"]
    if ours:
        args += ["hydra.sweeper.scheduler.name=mo_asha", f"hydra.sweeper.scheduler.eta={eta}",
                 "hydra.sweeper.scheduler.min_epochs=1",
                 "hydra.sweeper.reuse_completed=true", "hydra.sweeper.reuse_pruned=true"]
    else:
        args += ["hydra.sweeper.reuse_completed=false", "hydra.sweeper.reuse_pruned=false"]
    t0 = time.time()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.time() - t0


def trace(out: Path, name: str) -> List[dict]:
    """Finished trials in completion order; ``epochs``/``seconds`` = compute actually spent
    (0 for a reused copy of a stored trial)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / name / 'optuna.db'}")
    rows = []
    for t in sorted((t for t in study.get_trials() if t.state.is_finished()
                     and "coordsweep:skipped" not in t.system_attrs),
                    key=lambda t: t.datetime_complete):
        ua = t.user_attrs
        reused = ua.get("reused_from") is not None
        rows.append({"number": t.number, "state": t.state.name, "reused_from": ua.get("reused_from"),
                     "epochs": 0 if reused else int(ua.get("epochs_run", 0) or 0),
                     "epochs_run": int(ua.get("epochs_run", 0) or 0),
                     "seconds": 0.0 if reused else float(ua.get("job_time_s", 0.0) or 0.0),
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


def hv_at(c: List[Tuple[int, float, float]], epochs: float) -> float:
    """Hypervolume reached once at most ``epochs`` were spent (the final value past the end)."""
    best = 0.0
    for e, _, hv in c:
        if e <= epochs:
            best = hv
    return best


def first_reach(c: List[Tuple[int, float, float]], target: float) -> Optional[int]:
    """Compute (epochs) at which the curve first reaches ``target`` (None: never)."""
    for e, _, hv in c:
        if hv >= target * (1 - 1e-12):
            return e
    return None


def spent(rows: List[dict]) -> int:
    return sum(r["epochs"] for r in rows)


def plot(curves: Dict[str, list], seeds: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {"A": "tab:blue", "B": "tab:orange"}
    labels = {"A": "A: TPE, full budget", "B": "B: TPE + mo_asha"}
    top = max(c[-1][0] for c in curves.values())
    grid = list(range(0, top + 1))
    for s in "AB":
        for k in range(seeds):
            c = curves[f"{s}_s{k}"]
            xs = [0] + [e for e, _, _ in c]
            ys = [0.0] + [hv for _, _, hv in c]
            ax.step(xs, ys, where="post", color=colors[s], alpha=0.35, lw=0.8)
        ends = min(curves[f"{s}_s{k}"][-1][0] for k in range(seeds))
        g = [x for x in grid if x <= ends]
        mean = [statistics.mean(hv_at(curves[f"{s}_s{k}"], x) for k in range(seeds)) for x in g]
        ax.step(g, mean, where="post", color=colors[s], lw=2.5, label=f"{labels[s]} (mean)")
    ax.set_xlabel("compute spent (epochs trained, cumulative)")
    ax.set_ylabel("hypervolume (val top-1 % x MAdds)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fmt(x: float) -> str:
    return f"{x:.4g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(DATA), default="synthetic")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials-a", type=int, default=12)
    ap.add_argument("--trials-b", type=int, default=36)
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/sweep_efficiency"))
    a = ap.parse_args()
    if a.data == "cifar10" and not (CIFAR_DIR / "train").is_dir():
        print(f"skipped: --data cifar10 needs the CIFAR-10 image folder at {CIFAR_DIR} "
              f"(train/<class>/*.jpg); it is absent")
        return
    a.out.mkdir(parents=True, exist_ok=True)
    walls_path = a.out / "walls.json"
    walls: Dict[str, float] = json.loads(walls_path.read_text()) if walls_path.exists() else {}
    n_b: Dict[str, int] = {}
    for seed in range(a.seeds):
        name_a, name_b = f"A_s{seed}", f"B_s{seed}"
        if not (a.out / name_a / "optuna.db").exists():
            walls[name_a] = run_sweep(a.out, name_a, a.data, seed, a.trials_a, a.epochs, a.eta,
                                      ours=False)
            print(f"{name_a}: {walls[name_a]:.0f} s wall", flush=True)
        budget_a = spent(trace(a.out, name_a))
        n = a.trials_b
        while True:
            done = (a.out / name_b / "optuna.db").exists() and len(trace(a.out, name_b)) >= n
            if not done:
                walls[name_b] = walls.get(name_b, 0.0) + run_sweep(
                    a.out, name_b, a.data, seed, n, a.epochs, a.eta, ours=True)
                print(f"{name_b} (n_trials {n}): {walls[name_b]:.0f} s wall", flush=True)
            walls_path.write_text(json.dumps(walls, indent=1))
            eb = spent(trace(a.out, name_b))
            if eb >= budget_a or n >= 4 * a.trials_b:
                break
            print(f"{name_b}: {eb} epochs < A's {budget_a}; continuing its study", flush=True)
            n += 12
        n_b[name_b] = n
    walls_path.write_text(json.dumps(walls, indent=1))

    traces = {f"{s}_s{k}": trace(a.out, f"{s}_s{k}") for k in range(a.seeds) for s in "AB"}
    max_madds = max(float(r["madds"]) for rows in traces.values() for r in rows if r["madds"])
    ref = (0.0, 1.1 * max_madds)
    curves = {k: curve(v, ref) for k, v in traces.items()}
    budget = statistics.mean(curves[f"A_s{k}"][-1][0] for k in range(a.seeds))
    fracs = [0.125, 0.25, 0.375, 0.5, 0.75, 1.0]
    levels = sorted({round(budget * f) for f in fracs}
                    | {max(c[-1][0] for c in curves.values())})
    print(f"\ndata {a.data}; reference point: val_top1 0 %, madds {ref[1]:.4g} "
          f"(1.1 x largest seen); HV units: %-points x MAdds")
    print("\n| sweep | trials (complete/stopped; reused) | epochs spent | job s | wall s | "
          "final HV | best val top-1 | " + " | ".join(f"HV@{lv} ep" for lv in levels) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(levels))
    for k in sorted(curves, key=lambda k: (k.split("_s")[1], k)):
        c, rows = curves[k], traces[k]
        nc = sum(r["state"] == "COMPLETE" for r in rows)
        npr = sum(r["state"] == "PRUNED" for r in rows)
        nre = sum(r["reused_from"] is not None for r in rows)
        best = max((float(r["val_top1"]) for r in rows if r["state"] == "COMPLETE"
                    and r["val_top1"] is not None), default=float("nan"))
        print(f"| {k} | {nc}/{npr}; {nre} | {c[-1][0]} | {c[-1][1]:.0f} | "
              f"{walls.get(k, float('nan')):.0f} | {fmt(c[-1][2])} | {best:.1f} | "
              + " | ".join(fmt(hv_at(c, lv)) for lv in levels) + " |")
    print(f"\nmean (sd) over {a.seeds} seeds of the HV at equal compute (a sweep that ended "
          f"earlier keeps its final HV):\n")
    print("| epochs spent | " + " | ".join(str(lv) for lv in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for s, label in (("A", "A (full budget)"), ("B", "B (mo_asha)")):
        cells = []
        for lv in levels:
            v = [hv_at(curves[f"{s}_s{k}"], lv) for k in range(a.seeds)]
            sd = statistics.stdev(v) if len(v) > 1 else float("nan")
            cells.append(f"{fmt(statistics.mean(v))} ({sd:.2g})")
        print(f"| {label} | " + " | ".join(cells) + " |")

    print("\nheadline: compute at which B first reaches A's final HV, / A's total compute")
    headline = []
    for k in range(a.seeds):
        ca, cb = curves[f"A_s{k}"], curves[f"B_s{k}"]
        e = first_reach(cb, ca[-1][2])
        frac = None if e is None else e / ca[-1][0]
        headline.append(frac)
        print(f"  seed {k}: A final HV {fmt(ca[-1][2])} after {ca[-1][0]} epochs; B "
              + ("never reaches it" if e is None else
                 f"reaches it after {e} epochs = {frac:.3f} of A's compute")
              + f" (B final HV {fmt(cb[-1][2])} after {cb[-1][0]} epochs)")
    reached = [f for f in headline if f is not None]
    n_never = len(headline) - len(reached)
    # "never" counts as +inf for the median; the mean is over the seeds that reach it
    med = statistics.median([f if f is not None else float("inf") for f in headline])
    print(f"  median over seeds: {'never' if med == float('inf') else f'{med:.3f}'}; mean over "
          f"the {len(reached)} seed(s) that reach it: "
          + (f"{statistics.mean(reached):.3f}" if reached else "n/a")
          + (f"; {n_never} seed(s) never" if n_never else ""))

    print("\nrung-1 survivors of B (configurations that went past epoch 1):")
    for k in range(a.seeds):
        rows = [r for r in traces[f"B_s{k}"] if r["reused_from"] is None]
        went = [r for r in rows if r["epochs_run"] > 1]
        at1 = [r for r in rows if r["epochs_run"] == 1]
        acc1 = sorted({round(float(r["val_top1"]), 1) for r in at1 if r["val_top1"] is not None})
        print(f"  seed {k}: {len(at1)} stopped at epoch 1 (val top-1 there: {acc1}); "
              f"continued: " + ", ".join(
                  f"{r['params'].get('attention')}/{r['params'].get('model.width')}/"
                  f"{r['params'].get('attention.position')}->{r['epochs_run']}ep "
                  f"{float(r['val_top1'] or 0):.1f}%" for r in went))
    png = a.out / "hv_vs_epochs.png"
    plot(curves, a.seeds, png, f"{a.data}: hypervolume vs compute, {a.seeds} sweep seeds, "
         f"ref (0 %, {ref[1]:.3g} MAdds)")
    (a.out / "results.json").write_text(json.dumps(
        {"data": a.data, "reference": ref, "traces": traces, "curves": curves, "walls": walls,
         "n_trials_b": n_b, "headline_fraction": headline}, indent=1, default=str))
    print(f"\nplot: {png}\nraw: {a.out / 'results.json'}")


if __name__ == "__main__":
    main()
