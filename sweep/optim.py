"""Optimiser and learning-rate schedule of a trial: SGD (momentum, nesterov), weight decay
optionally off for norm weights and biases, linear warm-up then cosine, stepped per batch."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float, no_wd_norm_bias: bool) -> list[dict]:
    """Two groups (decayed / not decayed) when ``no_wd_norm_bias``; 1-D params are the norm
    weights and biases (BN, GN, conv/linear bias, GeM exponent)."""
    if not no_wd_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, train: Mapping[str, Any]) -> torch.optim.Optimizer:
    groups = param_groups(model, train["weight_decay"], train.get("no_wd_norm_bias", True))
    return torch.optim.SGD(groups, lr=train["lr"], momentum=train["momentum"],
                           nesterov=bool(train["nesterov"]) and train["momentum"] > 0, foreach=True)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up from base_lr/warmup to base_lr, then
    cosine from base_lr down to min_lr at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * min(1.0, t)))


def build_scheduler(optimizer: torch.optim.Optimizer, train: Mapping[str, Any], steps_per_epoch: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR implementing ``warmup_cosine``."""
    base, min_lr = train["lr"], train.get("min_lr", 0.0)
    warmup = int(round(train.get("warmup_epochs", 0.0) * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, warmup, base, min_lr) / base)
