"""Tiny Hydra app for sweeper tests: a "trial" that sleeps, fails, returns NaN or kills itself.

Its task returns a metrics dict like run.py's (``status``, ``val_top1``, ``madds``...), writes
``metrics.json`` in its run dir, reports epochs through ``sweep.hooks`` and appends one line per
training to ``$TRAINLOG`` (when set) so tests can count how often each config really trained.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweep import hooks


@hydra.main(version_base="1.3", config_path="conf", config_name="sleep")
def main(cfg: DictConfig) -> dict:
    out = Path(HydraConfig.get().runtime.output_dir)
    modes = cfg.modes or {}
    mode = str(modes.get(f"x{cfg.x}y{cfg.y}", modes.get(f"x{cfg.x}", cfg.mode)))
    key = f"x={cfg.x} y={cfg.y} group={cfg.group.name} label={cfg.label}"
    if os.environ.get("TRAINLOG"):
        with open(os.environ["TRAINLOG"], "a") as f:
            f.write(f"{os.getpid()} {key}\n")
    if mode == "raise":
        raise RuntimeError(f"boom in trial with {key}")
    markers = Path(os.environ.get("MARKER_DIR", str(out)))
    once = f"{cfg.x}" if f"x{cfg.x}y{cfg.y}" not in modes else f"{cfg.x}-{cfg.y}"
    if mode == "kill" or (mode == "kill_once" and not (markers / f"killed-{once}").exists()):
        (markers / f"killed-{once}").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hang_once" and not (markers / f"hang-{once}").exists():
        (markers / f"hang-{once}").write_text(str(os.getpid()))
        time.sleep(600)  # the test kills the sweep meanwhile
    duration = float(cfg.duration) if cfg.durations is None else float(cfg.durations[int(cfg.x) % len(cfg.durations)])
    status = "ok"
    for epoch in range(1, int(cfg.epochs) + 1):
        time.sleep(duration / max(1, int(cfg.epochs)))
        if hooks.current().report(epoch, {"val_top1": float(cfg.x) * epoch}):
            status = "pruned"
            break
    score = float("nan") if mode == "nan" else float(cfg.x) + float(cfg.spread) * float(cfg.y)
    if mode == "diverged":
        status = "diverged"
    madds = 1e6 * float(cfg.y) + float(cfg.x) if cfg.madds is None else float(cfg.madds)
    metrics = {"status": status, "val_top1": score, "madds": madds,
               "label": str(cfg.label), "seconds": duration, "pid": os.getpid()}
    (out / "metrics.json").write_text(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in metrics.items()}))
    return metrics


if __name__ == "__main__":
    main()
