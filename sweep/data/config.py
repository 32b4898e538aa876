"""Structured-config schema of the ``data`` group, its validation, and registration.

YAML files in ``conf/data`` hold values; ``DataConfig`` holds types and defaults.
``validate_data(cfg)`` checks every value that can be checked without reading the data and raises
``search_space.config.ConfigError`` naming the key and the allowed values; checks that need the
data (``val_size`` larger than the training pool, a root with the wrong layout) raise the same
error from ``load_data`` before any image is decoded.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Optional

from search_space.config import ConfigError

# data.name values
DATASETS = ("synthetic", "cifar10", "cifar100", "imagefolder")
# data.crop values: pad = zero-pad + random crop (CIFAR style), resized = random resized crop
CROPS = ("pad", "resized")
CIFAR100_LABELS = ("fine", "coarse")
# per-dataset normalisation (RGB, 0..1 scale); synthetic is measured on its training pool
DATASET_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
}
CACHE_ENV = "COORDSWEEP_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/coordsweep"


@dataclass
class DataConfig:
    """Dataset, subsets, caching and batch augmentation of one trial (see ``sweep.data``)."""
    # synthetic (generated in seconds, no files) | cifar10 | cifar100 | imagefolder (ImageNet-style subset)
    name: str = "synthetic"
    # dataset directory; null for synthetic. cifar10/cifar100: the official python batches
    # (or the folder holding cifar-10-batches-py/ / cifar-100-python/) or an image folder
    # train/<class>/*, test/<class>/*; imagefolder: train/<class>/* and val/<class>/* (or test/)
    root: Optional[str] = None
    # side of the square images the model sees (pixels)
    image_size: int = 32
    # training images: stratified subset of the training pool minus the val split; null = all of it
    train_size: Optional[int] = None
    # validation images carved from the training pool (stratified, disjoint from train); used
    # for model selection. The test split is never used to choose anything.
    val_size: int = 1000
    # test images: stratified subset of the held-out set (test/ or val/ folder); null = all
    test_size: Optional[int] = None
    # seed of the stratified val/train/test subsets (not of training)
    split_seed: int = 0
    # cache of decoded uint8 tensors; null = $COORDSWEEP_CACHE, else ~/.cache/coordsweep
    cache_dir: Optional[str] = None
    # false = decode every time, never read or write the cache
    cache: bool = True
    # processes decoding image files; 0 = one per CPU core, 1 = in this process
    decode_workers: int = 0
    # random crop (+ flip) of training batches; false = training batches get the eval transform
    augment: bool = True
    # training crop: pad (zero-pad crop_padding, random crop; CIFAR) | resized (random resized crop; ImageNet)
    crop: str = "pad"
    # zero padding of crop=pad (pixels)
    crop_padding: int = 4
    # crop=resized: range of the crop's area as a fraction of the stored image
    rrc_scale: List[float] = field(default_factory=lambda: [0.35, 1.0])
    # crop=resized: range of the crop's aspect ratio (sampled log-uniformly)
    rrc_ratio: List[float] = field(default_factory=lambda: [0.75, 4.0 / 3.0])
    # imagefolder: images are stored at floor(image_size / crop_pct) (shorter side, centre square);
    # evaluation centre-crops image_size from that, training random-resized-crops from all of it
    crop_pct: float = 0.875
    # random horizontal flip of training images (the synthetic rule is flip-invariant)
    flip: bool = True
    # per-channel normalisation on the 0..1 scale; null = the dataset's (ImageNet's for imagefolder,
    # measured on the training pool for synthetic)
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    # cifar100 labels: fine (100 classes) | coarse (20 superclasses)
    cifar100_labels: str = "fine"
    # synthetic: size of the generated training pool (val is carved from it) and of the test set
    synthetic_train: int = 4000
    synthetic_test: int = 2000
    # synthetic: generator seed (another seed = other images, same rule)
    synthetic_seed: int = 0
    # synthetic: green-to-yellow clutter squares per image (never red or blue, so never a mark)
    synthetic_distractors: int = 0
    # synthetic: std of the Gaussian pixel noise (0..255 units)
    synthetic_noise: float = 0.0


FIELDS = tuple(f.name for f in dataclasses.fields(DataConfig))


def as_data_config(cfg: Any) -> DataConfig:
    """A ``DataConfig`` from a dataclass, a mapping or an OmegaConf node; unknown keys are a ``ConfigError``."""
    if isinstance(cfg, DataConfig):
        return cfg
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"data config must be a mapping, got {type(cfg).__name__}")
    unknown = [k for k in cfg if k not in FIELDS]
    if unknown:
        raise ConfigError(f"data.{unknown[0]} is not a data option; allowed: {', '.join(FIELDS)}")
    values = dict(cfg)
    for key in ("rrc_scale", "rrc_ratio", "mean", "std"):
        if values.get(key) is not None:
            values[key] = list(values[key])
    return DataConfig(**values)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_data(cfg: Any) -> DataConfig:
    """Check the ``data`` config without reading any file; return it as a ``DataConfig``.

    Args:
        cfg: the ``data`` node (mapping, OmegaConf node or ``DataConfig``).

    Raises:
        ConfigError: naming the first bad ``data.*`` key and its allowed values.
    """
    c = as_data_config(cfg)

    def need(key: str, ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"data.{key}={getattr(c, key)!r} {what}")

    need("name", c.name in DATASETS, f"is unknown; allowed: {', '.join(DATASETS)}")
    if c.name != "synthetic":
        need("root", c.root not in (None, ""),
             f"is required for data.name={c.name}: give the dataset directory, e.g. "
             f"data.root=/path/to/{c.name} ({_layout_hint(c.name)})")
    need("image_size", _is_int(c.image_size) and c.image_size >= 8, "must be an integer >= 8 (pixels)")
    need("train_size", c.train_size is None or (_is_int(c.train_size) and c.train_size >= 1),
         "must be null (all) or an integer >= 1")
    need("val_size", _is_int(c.val_size) and c.val_size >= 0, "must be an integer >= 0")
    need("test_size", c.test_size is None or (_is_int(c.test_size) and c.test_size >= 1),
         "must be null (all) or an integer >= 1")
    need("split_seed", _is_int(c.split_seed) and c.split_seed >= 0, "must be an integer >= 0")
    need("decode_workers", _is_int(c.decode_workers) and c.decode_workers >= 0,
         "must be an integer >= 0 (0 = one per CPU core)")
    need("crop", c.crop in CROPS, f"is not allowed; allowed: {', '.join(CROPS)}")
    need("crop_padding", _is_int(c.crop_padding) and 0 <= c.crop_padding < c.image_size,
         "must be an integer in [0, data.image_size)")
    need("rrc_scale", len(c.rrc_scale) == 2 and 0 < c.rrc_scale[0] <= c.rrc_scale[1] <= 1,
         "must be [low, high] with 0 < low <= high <= 1")
    need("rrc_ratio", len(c.rrc_ratio) == 2 and 0 < c.rrc_ratio[0] <= c.rrc_ratio[1],
         "must be [low, high] with 0 < low <= high")
    need("crop_pct", 0 < c.crop_pct <= 1, "must be in (0, 1]")
    for key in ("mean", "std"):
        v = getattr(c, key)
        need(key, v is None or (len(v) == 3 and all(isinstance(x, (int, float)) for x in v)),
             "must be null or 3 numbers (R, G, B on the 0..1 scale)")
    need("std", c.std is None or all(x > 0 for x in c.std), "must be > 0 per channel")
    need("cifar100_labels", c.cifar100_labels in CIFAR100_LABELS,
         f"is not allowed; allowed: {', '.join(CIFAR100_LABELS)}")
    need("synthetic_train", _is_int(c.synthetic_train) and c.synthetic_train >= 10, "must be an integer >= 10")
    need("synthetic_test", _is_int(c.synthetic_test) and c.synthetic_test >= 10, "must be an integer >= 10")
    need("synthetic_seed", _is_int(c.synthetic_seed) and c.synthetic_seed >= 0, "must be an integer >= 0")
    need("synthetic_distractors", _is_int(c.synthetic_distractors) and 0 <= c.synthetic_distractors <= 40,
         "must be an integer in [0, 40]")
    need("synthetic_noise", isinstance(c.synthetic_noise, (int, float)) and 0 <= c.synthetic_noise <= 128,
         "must be in [0, 128] (0..255 pixel units)")
    if c.name == "synthetic":
        need("image_size", c.image_size >= 32, "must be >= 32 for synthetic data (the lattice needs the room)")
        need("val_size", c.val_size < c.synthetic_train,
             f"must be < data.synthetic_train={c.synthetic_train} (the generated training pool)")
        left = c.synthetic_train - c.val_size  # known without generating anything
        need("train_size", c.train_size is None or c.train_size <= left,
             f"exceeds the {left} training images left after data.val_size={c.val_size} "
             f"(data.synthetic_train={c.synthetic_train}); allowed: 1..{left} or null (all)")
        need("test_size", c.test_size is None or c.test_size <= c.synthetic_test,
             f"exceeds the data.synthetic_test={c.synthetic_test} generated test images; "
             f"allowed: 1..{c.synthetic_test} or null (all)")
    return c


def _layout_hint(name: str) -> str:
    if name == "cifar10":
        return ("CIFAR python batches data_batch_1..5, test_batch, batches.meta, or an image folder "
                "train/<class>/*.jpg and test/<class>/*.jpg")
    if name == "cifar100":
        return ("CIFAR-100 python files train, test, meta, or an image folder "
                "train/<class>/*.jpg and test/<class>/*.jpg")
    return "an image folder train/<class>/* and val/<class>/* (or test/<class>/*)"


def cache_root(c: DataConfig) -> Optional[Path]:
    """The cache directory in use, or None when ``data.cache`` is false."""
    if not c.cache:
        return None
    d = c.cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(os.path.expandvars(os.path.expanduser(d)))


def register_configs() -> None:
    """Store the schema in Hydra's ConfigStore as ``data/base_data``."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="data", name="base_data", node=DataConfig, provider="coordsweep")
