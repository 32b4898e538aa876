"""How long the report of a 1,000-trial study takes (target: <= 15 s).

Writes a synthetic ``ca_joint``-like study (``analysis.synthetic.joint_study``: 1,000 trials,
two objectives, complete/pruned/failed/running mix, every scalar metric as a user attribute
like the sweeper stores them, one ``metrics.json`` with a 6-epoch history per finished trial)
into a temporary SQLite database, then times ``build_report`` on it, stage by stage.

    .venv/bin/python bench/report_speed.py [--trials 1000] [--repeat 2] [--keep DIR]

Exit code 1 when the best build is over the budget.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUDGET_S = 15.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2, help="timed builds (the best is reported)")
    ap.add_argument("--keep", default=None, help="write the study and report here and keep them")
    args = ap.parse_args()

    t0 = time.perf_counter()
    import analysis.report as report_mod  # imports (optuna, pandas, scipy, matplotlib) timed apart
    from analysis.results import load_results
    from analysis.synthetic import joint_study
    t_import = time.perf_counter() - t0

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="report_speed_"))
    sweep = root / "ca_joint"
    if sweep.exists():
        shutil.rmtree(sweep)
    try:
        t0 = time.perf_counter()
        joint_study(sweep, n_trials=args.trials, seed=0)
        t_write = time.perf_counter() - t0
        n_docs = len(list(sweep.glob("*/metrics.json")))
        print(f"study: {args.trials} trials, {n_docs} metrics.json, written in {t_write:.1f} s "
              f"({sweep})")
        print(f"imports: {t_import:.2f} s")

        times = []
        for i in range(args.repeat):
            t0 = time.perf_counter()
            paths = report_mod.build_report(sweep, out_dir=root / f"report{i}")
            times.append(time.perf_counter() - t0)
            print(f"build_report #{i + 1}: {times[-1]:.2f} s")
        # where the time goes (one more pass, stage by stage)
        from analysis import plots
        from analysis.pareto import COST_AXES, pareto_front
        from analysis.stats import compare, param_importances

        stages = {}
        t0 = time.perf_counter()
        res = load_results(sweep)
        stages["load (storage + metrics.json)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        comps = compare(res)
        stages["compare (bootstrap, tests, Holm)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        imp = param_importances(res)
        stages["importance (PED-ANOVA)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fronts = [pareto_front(res.configs, res.accuracy, a, chance=res.chance()) for a in COST_AXES]
        stages["Pareto fronts"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for f in fronts:
            plots.pareto_plot(f, res.reference)
        plots.effects_plot(comps)
        plots.importance_plot(imp)
        plots.learning_curves_plot(res)
        plots.history_plot(res)
        stages["figures (7 PNG)"] = time.perf_counter() - t0
        for k, v in stages.items():
            print(f"  {k:36s} {v:6.2f} s")
        best = min(times)
        ok = best <= BUDGET_S
        print(f"report of {args.trials} trials: best {best:.2f} s (budget {BUDGET_S:.0f} s): "
              f"{'OK' if ok else 'OVER BUDGET'}; {paths.html} ({paths.html.stat().st_size / 1e6:.1f} MB)")
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
