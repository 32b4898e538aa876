"""One trial: build the model from the composed config, train it briefly on real data,
evaluate, count its cost and write ``metrics.json``.

Everything is validated before any data is loaded or model built. A divergent run (NaN/inf
loss) stops at once and is reported as ``status: diverged``, not raised. After every epoch the
trial reports to ``sweep.hooks.current()``, which may stop it (``status: pruned``).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn

from search_space.config import validate_search_space
from search_space.mobilenetv2 import build_model
from sweep import hooks as trial_hooks
from sweep.config import validate_train
from sweep.data import load_data
from sweep.data import validate_data
from sweep.engine import TrainStep, evaluate
from sweep.optim import build_optimizer, build_scheduler
from sweep.runtime import hardware, resolve_device, seed_everything, set_threads, tune_allocator, versions


def validate_trial_config(cfg: Mapping[str, Any]) -> None:
    """Every check that can fail before training: search space, data, train, device."""
    validate_search_space(cfg)
    validate_data(cfg["data"])
    validate_train(cfg["train"])
    resolve_device(cfg.get("device", "auto"))


def run_trial(cfg: Mapping[str, Any], out_dir: Optional[str | Path] = None) -> dict:
    """Run one trial from a composed config (a DictConfig or plain dict); return its metrics.

    ``out_dir`` (default: none) receives ``metrics.json`` with the metrics, the per-epoch
    history, the resolved config, hardware and library versions.
    """
    from omegaconf import DictConfig, OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    validate_trial_config(resolved)
    train, seed = resolved["train"], int(resolved.get("seed", 0))
    device = resolve_device(resolved.get("device", "auto"))
    threads = set_threads(int(train.get("threads", 0)))
    tune_allocator()
    t_start = time.perf_counter()

    data = load_data(resolved["data"])
    seed_everything(seed)
    model = build_model(resolved, num_classes=data.num_classes)
    memory_format = torch.channels_last if train.get("channels_last", True) else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    cost = _count_cost(model, data.image_size)

    steps_per_epoch = data.train_steps(train["batch_size"])
    total_steps = steps_per_epoch * train["epochs"]
    if train.get("max_steps"):
        total_steps = min(total_steps, int(train["max_steps"]))
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train, steps_per_epoch, total_steps)
    step_fn = TrainStep(model, optimizer, scheduler, device, amp=bool(train.get("amp", True)),
                        label_smoothing=train.get("label_smoothing", 0.0), grad_clip=train.get("grad_clip", 0.0))
    hooks = trial_hooks.current()
    progress = _progress(train["epochs"], disable=bool(train.get("quiet", False)))

    history: list[dict] = []
    status, step, train_images, train_time = "ok", 0, 0, 0.0
    for epoch in range(1, train["epochs"] + 1):
        model.train()
        t0 = time.perf_counter()
        loss_sum, seen = torch.zeros((), device=device), 0
        for x, y in data.train_batches(train["batch_size"], epoch=epoch, seed=seed, device=device):
            loss = step_fn(x, y)
            loss_sum += loss * y.numel()
            seen += y.numel()
            step += 1
            # a NaN/inf loss ends the run; on CUDA check every 20 steps to avoid syncs
            if (device.type == "cpu" or step % 20 == 0) and not torch.isfinite(loss).item():
                status = "diverged"
                break
            if step >= total_steps:
                break
        train_time += time.perf_counter() - t0
        train_images += seen
        train_loss = (loss_sum / max(1, seen)).item()
        if status != "diverged" and not math.isfinite(train_loss):
            status = "diverged"
        val = evaluate(model, data.eval_batches("val", train["eval_batch_size"], device=device), step_fn.autocast)
        record = {"epoch": epoch, "train_loss": train_loss, "val_top1": val["top1"], "val_top5": val["top5"],
                  "val_loss": val["loss"], "lr": optimizer.param_groups[0]["lr"], "steps": step,
                  "epoch_time_s": time.perf_counter() - t0, "madds": cost["madds"], "params": cost["params"]}
        history.append(record)
        progress.update(1)
        progress.set_postfix(loss=f"{train_loss:.3f}", val_top1=f"{val['top1']:.1f}")
        if status == "diverged":
            break
        if hooks.report(epoch, record):
            status = "pruned"
            break
        if step >= total_steps:
            break
    progress.close()

    test = evaluate(model, data.eval_batches("test", train["eval_batch_size"], device=device), step_fn.autocast)
    last = history[-1]
    latency = _latency(model, data.image_size, device, train) if train.get("latency", True) else {}
    metrics = {
        "status": status,
        "val_top1": last["val_top1"], "val_top5": last["val_top5"], "val_loss": last["val_loss"],
        "best_val_top1": max(h["val_top1"] for h in history),
        "test_top1": test["top1"], "test_top5": test["top5"],
        "loss": last["train_loss"], "epochs_run": last["epoch"], "steps": step,
        "wall_time_s": time.perf_counter() - t_start, "train_time_s": train_time,
        "images_per_s": train_images / train_time if train_time > 0 else float("nan"),
        "params": cost["params"], "attn_params": cost["attn_params"],
        "madds": cost["madds"], "fvcore_flops": cost["fvcore"], "full_flops": cost["full"],
        **latency, "seed": seed, "threads": threads, "device": str(device),
    }
    if out_dir is not None:
        _write_metrics(Path(out_dir), metrics, history, resolved, data, cost, device)
    return metrics


def _count_cost(model: nn.Module, image_size: int) -> dict:
    from analysis.cost import count_cost

    report = count_cost(model, input_shape=(1, 3, image_size, image_size))
    d = report.to_dict()
    return {"params": d["params"], "attn_params": d["attn_params"], "madds": d["flops"]["madds"],
            "fvcore": d["flops"]["fvcore"], "full": d["flops"]["full"], "report": d}


def _latency(model: nn.Module, image_size: int, device: torch.device, train: Mapping[str, Any]) -> dict:
    from analysis.cost import measure_latency

    lat = measure_latency(model, (1, 3, image_size, image_size), device=str(device),
                          batch_sizes=(1, int(train.get("latency_batch", 32))))
    return {f"latency_ms_b{b}": v["median_ms"] for b, v in lat["batches"].items()} | {"latency_ms": lat["batches"][1]["median_ms"]}


def _progress(total: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="epochs", unit="ep", disable=disable, leave=False)


def _write_metrics(out_dir: Path, metrics: dict, history: list, resolved: dict, data, cost: dict,
                   device: torch.device) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"metrics": metrics, "history": history, "config": resolved, "data": data.describe(),
           "cost": cost["report"], "hardware": hardware(device), "versions": versions()}
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=str, allow_nan=True))
    tmp.replace(out_dir / "metrics.json")
