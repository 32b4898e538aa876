"""Training throughput of one trial step: coordsweep's trial loop vs a plain reference.

Both train MobileNetV2-1.0 in CIFAR geometry at 32x32, batch 128, SGD momentum 0.9, on the
same CIFAR-10 images (../shared/data/cifar10 when present, else the synthetic data):

* reference ("the plain way"): the seed CA module (../shared/reference/coordatt_seed.py) in a
  straightforward MobileNetV2 written here (NCHW, official CA placement), a per-sample
  ``Dataset`` doing per-image random crop (pad 4) + flip + normalisation, ``DataLoader``
  (batch 128, shuffle, num_workers 0: on 2 cores, loader processes compete with training);
* ours: ``sweep.data`` (uint8 tensors, batched augmentation, channels_last) feeding
  ``sweep.engine.TrainStep`` on ``search_space.build_model`` -- exactly what a trial runs.

Each variant (ref/ours x none/ca) is timed in interleaved rounds after warm-up; medians are
reported. Run: ``python bench/throughput.py [--steps 6] [--rounds 3] [--threads 2] [--json]``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"

from search_space.mobilenetv2 import build_model  # noqa: E402
from sweep.data import load_data  # noqa: E402
from sweep.engine import TrainStep  # noqa: E402
from sweep.optim import build_optimizer  # noqa: E402

BATCH = 128
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# --------------------------------------------------------------------------- reference
def _seed_ca():
    path = SHARED / "reference" / "coordatt_seed.py"
    spec = importlib.util.spec_from_file_location("coordatt_seed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.CoordAtt


def _div8(v):
    new = max(8, int(v + 4) // 8 * 8)
    return new + 8 if new < 0.9 * v else new


class RefBlock(nn.Module):
    def __init__(self, inp, oup, stride, t, ca):
        super().__init__()
        hid = inp * t
        self.identity = stride == 1 and inp == oup
        layers = []
        if t != 1:
            layers += [nn.Conv2d(inp, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid),
                   nn.ReLU6(inplace=True)]
        if ca is not None and t != 1:
            layers.append(ca(hid, hid))
        layers += [nn.Conv2d(hid, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.identity else self.conv(x)


class RefMobileNetV2(nn.Module):
    """A straightforward CIFAR MobileNetV2 (stem stride 1, stage 2 stride 1)."""

    def __init__(self, num_classes=10, ca=None):
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1)]
        inp = 32
        layers = [nn.Sequential(nn.Conv2d(3, inp, 3, 1, 1, bias=False), nn.BatchNorm2d(inp), nn.ReLU6(inplace=True))]
        for t, c, n, s in cfg:
            oup = _div8(c)
            for i in range(n):
                layers.append(RefBlock(inp, oup, s if i == 0 else 1, t, ca))
                inp = oup
        self.features = nn.Sequential(*layers)
        self.conv = nn.Sequential(nn.Conv2d(inp, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = self.avgpool(self.conv(self.features(x)))
        return self.classifier(x.flatten(1))


class RefDataset(torch.utils.data.Dataset):
    """Per-sample: HWC uint8 array -> random crop with 4-pixel padding, flip, to float, normalise."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images_hwc, labels
        self.mean = np.array(CIFAR_MEAN, dtype=np.float32)
        self.std = np.array(CIFAR_STD, dtype=np.float32)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = np.pad(self.images[i], ((4, 4), (4, 4), (0, 0)))
        top, left = np.random.randint(0, 9, size=2)
        img = img[top:top + 32, left:left + 32]
        if np.random.rand() < 0.5:
            img = img[:, ::-1]
        img = (img.astype(np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), int(self.labels[i])


def ref_runner(bundle_train_x: torch.Tensor, bundle_train_y: torch.Tensor, ca: bool):
    torch.manual_seed(0)
    model = RefMobileNetV2(10, _seed_ca() if ca else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-5)
    ds = RefDataset(bundle_train_x.permute(0, 2, 3, 1).numpy(), bundle_train_y.numpy())
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0, drop_last=True)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


# --------------------------------------------------------------------------- ours
def ours_runner(bundle, ca: bool):
    torch.manual_seed(0)
    att = {"name": "ca"} if ca else {"name": "none"}
    cfg = {"model": {"name": "mobilenetv2", "geometry": "cifar", "width": 1.0, "num_classes": None,
                     "dropout": 0.1}, "attention": att}
    model = build_model(cfg, num_classes=bundle.num_classes).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-5,
                                  "no_wd_norm_bias": True})
    step_fn = TrainStep(model, opt, None, torch.device("cpu"))
    epoch = 0
    it = iter(())

    def step():
        nonlocal it, epoch
        try:
            x, y = next(it)
        except StopIteration:
            epoch += 1
            it = iter(bundle.train_batches(BATCH, epoch=epoch, seed=0, device="cpu"))
            x, y = next(it)
        model.train()
        step_fn(x, y)
    return step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--train-size", type=int, default=4096)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from sweep.runtime import tune_allocator

    tune_allocator()  # as a trial does (the reference shares the process, so it benefits too)
    cifar = SHARED / "data" / "cifar10"
    data_cfg = ({"name": "cifar10", "root": str(cifar), "train_size": a.train_size, "val_size": 500,
                 "test_size": 500} if cifar.exists() else {"name": "synthetic"})
    bundle = load_data(data_cfg)
    tx, ty = bundle.splits["train"].images, bundle.splits["train"].labels
    runners = {("ours", "none"): ours_runner(bundle, False), ("ours", "ca"): ours_runner(bundle, True)}
    if (SHARED / "reference" / "coordatt_seed.py").exists():
        runners[("ref", "none")] = ref_runner(tx, ty, False)
        runners[("ref", "ca")] = ref_runner(tx, ty, True)
    times = {k: [] for k in runners}
    for step in runners.values():
        for _ in range(a.warmup):
            step()
    for _ in range(a.rounds):
        for k, step in runners.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step()
            times[k].append((time.perf_counter() - t0) / a.steps)
    ips = {f"{impl}/{att}": BATCH / statistics.median(v) for (impl, att), v in times.items()}
    res = {"images_per_s": ips, "threads": torch.get_num_threads(), "batch": BATCH,
           "data": data_cfg["name"], "steps": a.steps, "rounds": a.rounds, "torch": torch.__version__}
    if "ref/ca" in ips:
        res["speedup_ca_vs_ref"] = ips["ours/ca"] / ips["ref/ca"]
        res["speedup_none_vs_ref"] = ips["ours/none"] / ips["ref/none"]
        res["ref_ca_overhead"] = ips["ref/none"] / ips["ref/ca"] - 1
    res["ours_ca_overhead"] = ips["ours/none"] / ips["ours/ca"] - 1
    res["madds_overhead"] = 91.34 / 87.98 - 1  # analysis.cost, cifar 32x32 (see bench/RESULTS.md)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in ips.items():
            print(f"{k:10s} {v:7.1f} img/s")
        for k in ("speedup_ca_vs_ref", "speedup_none_vs_ref", "ref_ca_overhead", "ours_ca_overhead",
                  "madds_overhead"):
            if k in res:
                print(f"{k:22s} {res[k]:.3f}")
        print(f"threads={res['threads']} data={res['data']} batch={BATCH}")
    return res


if __name__ == "__main__":
    main()
