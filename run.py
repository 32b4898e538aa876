"""Hydra entry point: one trial (``python run.py ...``) or a sweep (``python run.py -m ...``).

    python run.py                                   # paper-default CA on the synthetic data
    python run.py attention=se train.epochs=3
    python run.py attention=ca attention.position=post_expand data=cifar10 data.root=DIR
    python run.py -m search_space=ca_ofat           # an Optuna sweep (see README)
"""
from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from search_space.config import ConfigError
from sweep.config import register_configs

register_configs()
log = logging.getLogger("coordsweep")


def summary(m: dict) -> str:
    """A short human summary of a trial's metrics."""
    lat = f", latency {m['latency_ms']:.1f} ms @ batch 1" if "latency_ms" in m else ""
    return (f"[{m['status']}] val top-1 {m['val_top1']:.2f}% (top-5 {m['val_top5']:.2f}%), "
            f"test top-1 {m['test_top1']:.2f}% | {m['epochs_run']} epochs, {m['wall_time_s']:.1f} s, "
            f"{m['images_per_s']:.0f} train img/s on {m['device']} ({m['threads']} threads) | "
            f"{m['params'] / 1e6:.3f}M params, {m['madds'] / 1e6:.2f}M madds (conv+linear multiply-adds), "
            f"{m['full_flops'] / 1e6:.2f}M full ops{lat}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    from sweep.trial import run_trial

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        with open_dict(cfg):
            cfg.train.quiet = True
    try:
        metrics = run_trial(cfg, out_dir=hc.runtime.output_dir)
    except ConfigError as e:
        if multirun:
            raise
        log.error("config error: %s", e)
        sys.exit(2)
    log.info(summary(metrics))
    return metrics


if __name__ == "__main__":
    main()
