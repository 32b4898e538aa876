"""``load_data``: resolve the source, choose stratified splits, decode (or load from the cache).

Sources, auto-detected from ``data.root``:

- ``synthetic``: ``sweep.data.synthetic`` (no files); both pools cached.
- ``cifar10`` / ``cifar100``: the official python batches (in ``root`` or in its
  ``cifar-10-batches-py`` / ``cifar-100-python`` subdirectory), read whole with the restricted
  unpickler and cached whole; or an image folder ``train/<class>/*``, ``test/<class>/*``.
- ``imagefolder``: ``train/<class>/*`` and ``val/<class>/*`` (or ``test/``). The held-out folder
  is our *test* split (reported, never used to choose); validation is carved from ``train/``.
  Images are stored at ``floor(image_size / crop_pct)`` (shorter side, centre square: 73 px for
  64, 256 for 224), which leaves room for random resized crops; evaluation centre-crops.

Image folders are scanned first (names, sizes, mtimes: cheap), splits are chosen from the labels,
and only the chosen files are decoded; the cache key covers exactly those files.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from search_space.config import ConfigError
from sweep.data import cifar, folder, splits, synthetic
from sweep.data.bundle import DataBundle, Split
from sweep.data.cache import cached
from sweep.data.config import DATASET_STATS, DataConfig, _layout_hint, cache_root, validate_data
from sweep.data.errors import DataError

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def load_data(data_cfg: Any) -> DataBundle:
    """Load the dataset of ``data_cfg`` as decoded uint8 splits with batch iterators.

    Args:
        data_cfg: the ``data`` config node (``DataConfig``, mapping or OmegaConf node).

    Returns:
        A ``DataBundle`` with ``train`` / ``val`` / ``test`` splits.

    Raises:
        ConfigError: a bad ``data.*`` value, including sizes larger than the data and a root
            with neither expected layout.
        DataError: a missing, corrupt or tampered file (the message names it).

    Example::

        bundle = load_data({"name": "cifar10", "root": "/data/cifar10", "train_size": 5000})
        for x, y in bundle.train_batches(128, epoch=0, seed=0):
            ...
    """
    c = validate_data(data_cfg)
    cache_dir = cache_root(c)
    if c.name == "synthetic":
        src = _synthetic_source(c, cache_dir)
    else:
        root = Path(c.root).expanduser()
        if not root.is_dir():
            raise ConfigError(f"data.root={c.root} is not a directory; expected {_layout_hint(c.name)}")
        batches = cifar.find_batches_dir(root, c.name) if c.name in NUM_CLASSES else None
        if batches is not None:
            src = _pickle_source(c, batches, cache_dir)
        else:
            src = _folder_source(c, root, cache_dir)

    num_classes = len(src["class_names"])
    train_pool, test_pool = src["labels"]["train"], src["labels"]["test"]
    _check_sizes(c, len(train_pool), len(test_pool), src["where"])
    train_idx, val_idx = splits.split_pool(train_pool, num_classes, c.val_size, c.train_size, c.split_seed)
    test_idx = splits.subset(test_pool, num_classes, c.test_size, c.split_seed)
    images = src["fetch"]({"train": np.union1d(train_idx, val_idx), "test": test_idx})

    def make(pool: str, idx: np.ndarray) -> Split:
        pool_idx, pool_images = images[pool]
        pos = torch.from_numpy(np.searchsorted(pool_idx, idx))
        return Split(pool_images.index_select(0, pos).contiguous(),
                     torch.from_numpy(src["labels"][pool][idx]).long(), idx)

    mean, std = src.get("stats") or DATASET_STATS[c.name]
    mean, std = tuple(c.mean or mean), tuple(c.std or std)
    return DataBundle(name=c.name, source_format=src["format"], root=src["root"],
                      class_names=list(src["class_names"]), image_size=c.image_size,
                      stored_size=src["stored_size"], mean=mean, std=std,
                      splits={"train": make("train", train_idx), "val": make("train", val_idx),
                              "test": make("test", test_idx)},
                      config=c, pool_sizes={"train": len(train_pool), "test": len(test_pool)},
                      cache={"dir": str(cache_dir) if cache_dir else None, **src["cache"]})


def _check_sizes(c: DataConfig, n_train: int, n_test: int, where: str) -> None:
    if c.val_size >= n_train:
        raise ConfigError(f"data.val_size={c.val_size} must be < the {n_train} images of the training pool "
                          f"({where}); allowed: 0..{n_train - 1}")
    left = n_train - c.val_size
    if c.train_size is not None and c.train_size > left:
        raise ConfigError(f"data.train_size={c.train_size} exceeds the {left} training images left after "
                          f"data.val_size={c.val_size} ({where}); allowed: 1..{left} or null (all)")
    if c.test_size is not None and c.test_size > n_test:
        raise ConfigError(f"data.test_size={c.test_size} exceeds the {n_test} test images ({where}); "
                          f"allowed: 1..{n_test} or null (all)")


# ------------------------------------------------------------------------------------ sources
# A source is a dict: format, root, where (for messages), class_names, labels {train, test}
# (full pools), stored_size, stats (mean, std) or None, cache {hit flags}, and
# fetch({pool: sorted indices}) -> {pool: (indices, uint8 images of those indices)}.

def _whole_pool_fetch(pools: Dict[str, torch.Tensor]):
    def fetch(wanted):
        return {p: (idx, pools[p].index_select(0, torch.from_numpy(idx))) for p, idx in wanted.items()}
    return fetch


def _synthetic_source(c: DataConfig, cache_dir: Optional[Path]) -> dict:
    pools, hits = {}, {}
    for split, n in (("train", c.synthetic_train), ("test", c.synthetic_test)):
        desc = {"source": "synthetic", "rule_version": synthetic.VERSION, "split": split, "n": n,
                "seed": c.synthetic_seed, "image_size": c.image_size, "distractors": c.synthetic_distractors,
                "noise": float(c.synthetic_noise)}

        def build(split=split, n=n):
            x, y = synthetic.generate(n, c.synthetic_seed, split, c.image_size, c.synthetic_distractors,
                                      c.synthetic_noise)
            return {"images": torch.from_numpy(x), "labels": torch.from_numpy(y)}

        pools[split], hits[split], _ = cached(cache_dir, f"synthetic-{split}", desc, build)
    train = pools["train"]["images"]
    mean = train.float().mean((0, 2, 3)) / 255  # the pool's statistics, deterministic given the config
    std = train.float().std((0, 2, 3)) / 255
    return {"format": "generated", "root": None, "where": f"data.synthetic_train={c.synthetic_train}",
            "class_names": list(synthetic.CLASS_NAMES), "stored_size": c.image_size,
            "labels": {p: pools[p]["labels"].numpy() for p in pools},
            "stats": (tuple(mean.tolist()), tuple(std.tolist())), "cache": {"hit": hits},
            "fetch": _whole_pool_fetch({p: pools[p]["images"] for p in pools})}


def _pickle_source(c: DataConfig, d: Path, cache_dir: Optional[Path]) -> dict:
    names = cifar.CIFAR10_FILES if c.name == "cifar10" else cifar.CIFAR100_FILES
    stats = []
    for f in names:
        p = d / f
        if not p.is_file():
            raise DataError(f"{p} is missing: {c.name} python batches need {', '.join(names)} in {d}")
        st = p.stat()
        stats.append([f, st.st_size, st.st_mtime_ns])
    labels = c.cifar100_labels if c.name == "cifar100" else "labels"
    desc = {"source": "cifar-python", "name": c.name, "files": stats, "labels": labels,
            "transform": ["resize", c.image_size]}

    def build():
        raw = cifar.read_batches(d, c.name, c.cifar100_labels)
        entry = {"class_names": raw["class_names"]}
        for split in ("train", "test"):
            x, y = raw[split]
            entry[f"{split}_images"] = _resize_u8(torch.from_numpy(x), c.image_size)
            entry[f"{split}_labels"] = torch.from_numpy(y)
        return entry

    entry, hit, _ = cached(cache_dir, f"{c.name}-python", desc, build)
    return {"format": "cifar-python", "root": str(d), "where": f"data.root={d}",
            "class_names": entry["class_names"], "stored_size": c.image_size,
            "labels": {p: entry[f"{p}_labels"].numpy() for p in ("train", "test")},
            "cache": {"hit": {"train": hit, "test": hit}},
            "fetch": _whole_pool_fetch({p: entry[f"{p}_images"] for p in ("train", "test")})}


def _resize_u8(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.contiguous()
    out = torch.empty(len(x), 3, size, size, dtype=torch.uint8)
    for i in range(0, len(x), 4096):
        y = F.interpolate(x[i:i + 4096].float(), size=(size, size), mode="bicubic", antialias=True,
                          align_corners=False)
        out[i:i + 4096] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _folder_source(c: DataConfig, root: Path, cache_dir: Optional[Path]) -> dict:
    held_out = ("test", "val") if c.name in NUM_CLASSES else ("val", "test")
    test_dir = next((root / h for h in held_out if (root / h).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise ConfigError(f"data.root={root}: expected {_layout_hint(c.name)}; found "
                          f"{sorted(p.name for p in root.iterdir())[:10] or 'an empty directory'}")
    train = folder.scan(root / "train")
    test = folder.scan(test_dir, train.class_names)
    expected = NUM_CLASSES.get(c.name)
    if expected is not None and len(train.class_names) != expected:
        raise ConfigError(f"data.name={c.name} expects {expected} class folders in {root / 'train'}, found "
                          f"{len(train.class_names)}; use data.name=imagefolder for other datasets")
    if c.name == "cifar100" and c.cifar100_labels != "fine":
        raise ConfigError(f"data.cifar100_labels={c.cifar100_labels!r} needs the python batches (an image "
                          f"folder has one label set); allowed here: fine")
    if c.name == "imagefolder":
        stored = math.floor(c.image_size / c.crop_pct)
        transform = ("short_side_centre", stored)
    else:
        stored = c.image_size
        transform = ("resize", stored)
    parts = {"train": train, "test": test}
    hits: Dict[str, bool] = {}

    def fetch(wanted):
        out = {}
        for p, idx in wanted.items():
            fs = parts[p]
            files = [fs.files[i] for i in idx]
            desc = {"source": "image-folder", "files": files, "sizes": fs.sizes[idx], "mtimes": fs.mtimes[idx],
                    "labels": fs.labels[idx], "transform": list(transform)}

            def build(files=files, fs=fs, idx=idx):
                x = folder.decode(root, files, transform, c.decode_workers)
                return {"images": torch.from_numpy(x), "labels": torch.from_numpy(fs.labels[idx])}

            entry, hits[p], _ = cached(cache_dir, f"{c.name}-folder-{p}", desc, build)
            out[p] = (idx, entry["images"])
        return out

    return {"format": "image-folder", "root": str(root), "where": f"data.root={root}",
            "class_names": train.class_names, "stored_size": stored,
            "labels": {"train": train.labels, "test": test.labels}, "cache": {"hit": hits}, "fetch": fetch}
