"""The inner loops of a trial: one optimiser step and an evaluation pass.

Kept apart from ``sweep.trial`` so the throughput benchmark times exactly the code the trial
runs. On CUDA the step uses autocast (bf16 when supported, else fp16 with a GradScaler); on CPU
it runs in float32.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def amp_context(device: torch.device, enabled: bool):
    """(autocast context, GradScaler or None) for ``device``."""
    if device.type != "cuda" or not enabled:
        return nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


class TrainStep:
    """One SGD step: forward, loss, backward, optional clipping, optimiser and schedule step.

    Args:
        model: the network (already on its device).
        optimizer, scheduler: from ``sweep.optim``; the scheduler steps per batch.
        device: where the batches live.
        amp: use mixed precision on CUDA.
        label_smoothing: cross-entropy label smoothing.
        grad_clip: clip the global gradient norm to this value (0 = off).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Optional[torch.optim.lr_scheduler.LRScheduler], device: torch.device,
                 amp: bool = True, label_smoothing: float = 0.0, grad_clip: float = 0.0):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.autocast, self.scaler = amp_context(device, amp)
        self.label_smoothing, self.grad_clip = label_smoothing, grad_clip

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Run one step on a batch; return the (detached) loss."""
        with self.autocast:
            loss = F.cross_entropy(self.model(x), y, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach()


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
             autocast=None) -> dict:
    """Top-1/top-5 accuracy (%) and mean cross-entropy over ``batches`` (eval mode)."""
    model.eval()
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    for x, y in batches:
        with autocast or nullcontext():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        n += y.numel()
    if n == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan")}
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n}
