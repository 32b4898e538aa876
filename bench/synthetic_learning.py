"""Learnability of the embedded synthetic task per attention variant at a fixed step budget.

Trains each attention variant (default: none, se, ca) with N seeds through the real trial code
(``sweep.trial.run_trial`` on the composed Hydra config), one trial at a time, and reports the
validation top-1 after the budget: mean, standard deviation and every seed, plus the mean
per-epoch curve (a gradual rise, or a lottery?). Chance is 100 / number of classes.

Defaults are the short-run budget measured for the task (``sweep/data/synthetic.py``):
MobileNetV2-0.25 CIFAR geometry, one thread, 2000 training images (pool 2500 minus 500 val),
batch 64, 5 epochs = 155 SGD steps, lr 0.03, no augmentation, clean images. Any Hydra override
is accepted after the options and applies to every trial::

    python bench/synthetic_learning.py --seeds 3
    python bench/synthetic_learning.py --variants none,ca --seeds 2 train.lr=0.1
    python bench/synthetic_learning.py --json out.json data.augment=true

Seeds change the weights' initialisation and the batch order; the images stay the same
(``data.synthetic_seed``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUDGET = [
    "model.width=0.25", "train.threads=1", "train.quiet=true", "train.latency=false",
    "train.batch_size=64", "train.epochs=5", "train.lr=0.03",
    "data.synthetic_train=2500", "data.val_size=500", "data.synthetic_test=500",
    "data.synthetic_distractors=0", "data.synthetic_noise=0.0", "data.augment=false",
    "device=cpu",
]


def compose(overrides: list[str]) -> dict:
    """The composed trial config (plain dict) for ``overrides`` on top of ``conf/config.yaml``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from sweep.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def run(variants: list[str], seeds: int, extra: list[str]) -> dict:
    """Train every variant x seed; return the per-trial records and per-variant summaries."""
    from sweep.trial import run_trial

    trials = []
    for variant in variants:
        for seed in range(seeds):
            cfg = compose([f"attention={variant}", f"seed={seed}", *BUDGET, *extra])
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="synthetic-learning-") as out:
                m = run_trial(cfg, out)
                history = json.loads((Path(out) / "metrics.json").read_text())["history"]
            rec = {"variant": variant, "seed": seed, "val_top1": m["val_top1"], "test_top1": m["test_top1"],
                   "steps": m["steps"], "status": m["status"], "wall_s": round(time.perf_counter() - t0, 1),
                   "curve": [{"steps": h["steps"], "val_top1": h["val_top1"]} for h in history]}
            trials.append(rec)
            curve = " ".join(f"{h['val_top1']:.0f}" for h in history)
            print(f"  {variant:5s} seed {seed}: val top-1 {m['val_top1']:5.1f}% after {m['steps']} steps "
                  f"(curve {curve}) {rec['wall_s']:.0f} s",
                  flush=True)
    summary = {}
    for variant in variants:
        rows = [t for t in trials if t["variant"] == variant]
        vals = [t["val_top1"] for t in rows]
        curve_steps = [c["steps"] for c in rows[0]["curve"]]
        mean_curve = [statistics.fmean(r["curve"][i]["val_top1"] for r in rows if i < len(r["curve"]))
                      for i in range(len(curve_steps))]
        summary[variant] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                            "per_seed": vals, "test_mean": statistics.fmean(t["test_top1"] for t in rows),
                            "curve_steps": curve_steps, "mean_curve": mean_curve}
    return {"trials": trials, "summary": summary}


def table(result: dict, chance: float) -> str:
    """Markdown table of the summaries."""
    lines = ["| variant | val top-1 mean | std | per seed | test top-1 mean | mean val curve (steps) |",
             "|---|---|---|---|---|---|"]
    for variant, s in result["summary"].items():
        curve = ", ".join(f"{v:.0f}@{st}" for v, st in zip(s["mean_curve"], s["curve_steps"]))
        lines.append(f"| {variant} | {s['mean']:.1f} | {s['std']:.1f} | "
                     f"{' / '.join(f'{v:.1f}' for v in s['per_seed'])} | {s['test_mean']:.1f} | {curve} |")
    lines.append(f"\nchance: {chance:.1f}%")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="none,se,ca", help="comma-separated attention configs")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to every trial")
    a = ap.parse_args()
    from sweep.data import synthetic

    print(f"budget: {' '.join(BUDGET + a.overrides)}", flush=True)
    result = run(a.variants.split(","), a.seeds, a.overrides)
    result["budget"] = BUDGET + a.overrides
    result["rule_version"] = synthetic.VERSION
    print(table(result, 100.0 / synthetic.NUM_CLASSES))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
