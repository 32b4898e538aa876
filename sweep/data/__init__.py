"""Data pipeline: the embedded synthetic task, CIFAR-10/100 and ImageNet-style image folders.

Decoded once into uint8 tensors (N, 3, H, W), cached on disk under ``data.cache_dir`` (default
``$COORDSWEEP_CACHE`` or ``~/.cache/coordsweep``), split into stratified, seeded train / val / test
subsets, and served as whole batches augmented and normalised on the device.

Example::

    from sweep.data import load_data

    bundle = load_data({"name": "cifar10", "root": "/data/cifar10", "train_size": 10000, "val_size": 2000})
    bundle.describe()            # dataset, root, split sizes, seeds, augmentation, cache
    for x, y in bundle.train_batches(128, epoch=0, seed=0, device="cpu"):
        ...                      # x float32 (128, 3, 32, 32) channels_last, y int64 (128,)
    for x, y in bundle.eval_batches("val", 512):
        ...
"""
from sweep.data.bundle import DataBundle
from sweep.data.config import DataConfig, register_configs, validate_data
from sweep.data.errors import DataError
from sweep.data.loader import load_data

__all__ = ["DataBundle", "DataConfig", "DataError", "load_data", "register_configs", "validate_data"]
