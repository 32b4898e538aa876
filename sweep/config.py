"""Structured-config schema of the ``train`` group and registration of every schema.

``register_configs()`` stores all groups' schemas (model, attention, data, train) in Hydra's
ConfigStore; ``run.py`` and the cost CLI call it before composing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from search_space.config import ConfigError


@dataclass
class TrainConfig:
    """Training budget and optimiser of one trial (SGD + cosine, as in the CA paper)."""
    # epochs of the training subset (the fidelity axis of sweeps)
    epochs: int = 3
    # optional cap on optimiser steps over the whole run (null = epochs only)
    max_steps: Optional[int] = None
    batch_size: int = 64
    eval_batch_size: int = 512
    # peak learning rate (linear-scaled users: lr is per batch_size, not per 256)
    lr: float = 0.03
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-5
    # apply no weight decay to BatchNorm/GroupNorm weights and all biases
    no_wd_norm_bias: bool = True
    # linear warm-up length in epochs (fractions allowed), then cosine to min_lr
    warmup_epochs: float = 0.5
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    # gradient clipping by global norm (0 = off)
    grad_clip: float = 0.0
    # mixed precision on CUDA (bf16 when supported, else fp16 + GradScaler); never on CPU
    amp: bool = True
    # channels_last memory format for model and batches
    channels_last: bool = True
    # torch intra-op threads (0 = torch's default)
    threads: int = 0
    # measure forward latency at batch 1 and latency_batch after training
    latency: bool = True
    latency_batch: int = 32
    # no progress bars or per-epoch prints (sweeps set this)
    quiet: bool = False


def validate_train(train: Mapping[str, Any]) -> None:
    """``ConfigError`` naming the first bad ``train.*`` value."""
    def need(key: str, ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"train.{key}={train.get(key)!r} {what}")

    need("epochs", isinstance(train.get("epochs"), int) and train["epochs"] >= 1, "must be an integer >= 1")
    need("max_steps", train.get("max_steps") is None or train["max_steps"] >= 1, "must be null or >= 1")
    need("batch_size", train.get("batch_size", 0) >= 1, "must be >= 1")
    need("eval_batch_size", train.get("eval_batch_size", 0) >= 1, "must be >= 1")
    need("lr", train.get("lr", 0) > 0, "must be > 0")
    need("momentum", 0 <= train.get("momentum", 0) < 1, "must be in [0, 1)")
    need("weight_decay", train.get("weight_decay", 0) >= 0, "must be >= 0")
    need("warmup_epochs", 0 <= train.get("warmup_epochs", 0) <= train["epochs"], "must be in [0, train.epochs]")
    need("label_smoothing", 0 <= train.get("label_smoothing", 0) < 1, "must be in [0, 1)")
    need("threads", train.get("threads", 0) >= 0, "must be >= 0 (0 = torch default)")


def register_configs() -> None:
    """Store every group schema in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    from search_space.config import register_configs as register_search_space
    from sweep.data.config import register_configs as register_data

    register_search_space()
    register_data()
    ConfigStore.instance().store(group="train", name="base_train", node=TrainConfig, provider="coordsweep")
