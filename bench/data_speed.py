"""Data-pipeline speed: cold decode, cache-hit load, batch iterators (images/s), synthetic generation.

Usage::

    .venv/bin/python bench/data_speed.py                                   # synthetic only
    .venv/bin/python bench/data_speed.py --cifar10 ../shared/data/cifar10  # + all 60k CIFAR-10 JPEGs

A fresh temporary cache directory is used (the user's cache is never touched), so the first
load is a cold decode and the second a cache hit. Numbers depend on the machine's load: on a
shared 2-core box run it when nothing else is busy.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep.data import load_data  # noqa: E402


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _batches_per_s(bundle, batch_size: int, epochs: int = 1) -> tuple[float, float]:
    n, t = 0, time.perf_counter()
    for epoch in range(epochs):
        for x, y in bundle.train_batches(batch_size, epoch=epoch, seed=0):
            n += len(y)
    dt = time.perf_counter() - t
    return n / dt, 1e3 * dt / (n / batch_size)


def _eval_per_s(bundle, split: str, batch_size: int) -> float:
    n, t = 0, time.perf_counter()
    for x, y in bundle.eval_batches(split, batch_size):
        n += len(y)
    return n / (time.perf_counter() - t)


def report(name: str, cfg: dict, batch_size: int) -> None:
    first, cold = _timed(lambda: load_data(cfg))
    second, warm = _timed(lambda: load_data(cfg))
    assert second.cache["hit"] and all(second.cache["hit"].values()), second.cache
    print(f"[{name}] {first.describe()['sizes']} pools {first.pool_sizes}")
    print(f"[{name}] cold load (decode/generate + cache write): {cold:.2f} s; cache-hit load: {warm:.3f} s")
    ips, ms = _batches_per_s(second, batch_size)
    print(f"[{name}] train_batches({batch_size}) with augmentation: {ips:,.0f} images/s = {ms:.2f} ms/batch")
    noaug = load_data({**cfg, "augment": False})
    ips, ms = _batches_per_s(noaug, batch_size)
    print(f"[{name}] train_batches({batch_size}) without augmentation: {ips:,.0f} images/s = {ms:.2f} ms/batch")
    print(f"[{name}] eval_batches('val', 512): {_eval_per_s(second, 'val', 512):,.0f} images/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cifar10", help="CIFAR-10 root (python batches or image folder)")
    p.add_argument("--imagefolder", help="ImageNet-style root (train/, val/)")
    p.add_argument("--workers", type=int, default=0, help="data.decode_workers (0 = one per core)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="coordsweep-bench-") as cache:
        report("synthetic", {"name": "synthetic", "cache_dir": cache}, args.batch_size)
        if args.cifar10:
            report("cifar10", {"name": "cifar10", "root": args.cifar10, "val_size": 5000, "cache_dir": cache,
                               "decode_workers": args.workers}, args.batch_size)
        if args.imagefolder:
            report("imagefolder", {"name": "imagefolder", "root": args.imagefolder, "val_size": 200,
                                   "image_size": 64, "crop": "resized", "cache_dir": cache,
                                   "decode_workers": args.workers}, args.batch_size)


if __name__ == "__main__":
    main()
