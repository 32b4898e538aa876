"""``DataBundle``: decoded splits in memory plus fast, seeded batch iterators.

Images stay uint8 (N, 3, S, S) on the CPU (or, for an accelerator, are copied there once); a batch
is an index gather, the transfer of uint8, then crop/flip/normalise on the device (see
``sweep.data.augment``). Training order and augmentation come from one ``torch.Generator`` seeded
by ``(seed, epoch)``, so the same seed gives the same batches.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from sweep.data import augment
from sweep.data.config import DataConfig

SPLITS = ("train", "val", "test")
# splits smaller than this are copied to an accelerator once instead of per batch
_MAX_DEVICE_BYTES = 2 << 30


@dataclass
class Split:
    """One split: uint8 images (N, 3, S, S), int64 labels (N,), and indices into its source pool."""
    images: torch.Tensor
    labels: torch.Tensor
    indices: np.ndarray


@dataclass
class DataBundle:
    """The data of one trial.

    Attributes:
        name: ``data.name``.
        source_format: ``generated``, ``cifar-python`` or ``image-folder``.
        root: dataset directory (None for synthetic).
        class_names: one name per label.
        image_size: side of the images the model sees.
        stored_size: side of the stored images (> image_size for ImageNet-style crops).
        mean, std: per-channel normalisation (0..1 scale).
        splits: ``train`` / ``val`` / ``test``.
        config: the validated ``DataConfig``.
        pool_sizes: images in the source's training and test pools.
        cache: cache directory and whether each pool came from it.
    """
    name: str
    source_format: str
    root: Optional[str]
    class_names: List[str]
    image_size: int
    stored_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    splits: Dict[str, Split]
    config: DataConfig
    pool_sizes: Dict[str, int] = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    _on_device: dict = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sizes(self) -> Dict[str, int]:
        """Images per split."""
        return {k: len(s.labels) for k, s in self.splits.items()}

    def train_steps(self, batch_size: int) -> int:
        """Batches per training epoch (the last partial batch is dropped)."""
        n = self.sizes["train"]
        if n < batch_size:
            raise ValueError(f"the training split has {n} images, fewer than batch_size={batch_size}; "
                             f"raise data.train_size or lower the batch size")
        return n // batch_size

    def augmentation(self) -> str:
        """A one-line description of the training augmentation."""
        c = self.config
        if not c.augment:
            return "none" + (" (centre crop)" if self.stored_size != self.image_size else "")
        crop = (f"pad {c.crop_padding} + random crop" if c.crop == "pad" else
                f"random resized crop (scale {c.rrc_scale[0]:g}-{c.rrc_scale[1]:g}, "
                f"ratio {c.rrc_ratio[0]:.3g}-{c.rrc_ratio[1]:.3g})")
        return crop + (" + horizontal flip" if c.flip else "")

    def describe(self) -> dict:
        """Plain dict for reports: dataset, root, split sizes, seeds, augmentation, normalisation, cache."""
        c = self.config
        doc = {"dataset": self.name, "format": self.source_format, "root": self.root,
               "num_classes": self.num_classes, "image_size": self.image_size, "stored_size": self.stored_size,
               "sizes": self.sizes, "pool_sizes": dict(self.pool_sizes), "split_seed": c.split_seed,
               "augmentation": self.augmentation(),
               "augment": {"enabled": c.augment, "crop": c.crop, "flip": c.flip,
                           **({"padding": c.crop_padding} if c.crop == "pad" else
                              {"scale": list(c.rrc_scale), "ratio": list(c.rrc_ratio)})},
               "mean": [round(float(v), 4) for v in self.mean], "std": [round(float(v), 4) for v in self.std],
               "cache": dict(self.cache)}
        if self.name == "synthetic":
            doc["synthetic"] = {"seed": c.synthetic_seed, "train_pool": c.synthetic_train,
                                "test_pool": c.synthetic_test, "distractors": c.synthetic_distractors,
                                "noise": c.synthetic_noise}
        if self.name == "cifar100":
            doc["labels"] = c.cifar100_labels
        return doc

    # ----------------------------------------------------------------- batches
    def _split(self, split: str, device: torch.device) -> Split:
        if split not in self.splits:
            raise ValueError(f"split={split!r}; allowed: {', '.join(self.splits)}")
        s = self.splits[split]
        if device.type == "cpu" or s.images.numel() > _MAX_DEVICE_BYTES:
            return s
        key = (split, str(device))
        if key not in self._on_device:
            self._on_device[key] = Split(s.images.to(device), s.labels.to(device), s.indices)
        return self._on_device[key]

    def train_batches(self, batch_size: int, epoch: int = 0, seed: int = 0,
                      device: str | torch.device = "cpu") -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Augmented training batches of one epoch, in a seeded order; the last partial batch is dropped.

        Args:
            batch_size: images per batch.
            epoch: epoch number (a new permutation and new crops each epoch).
            seed: trial seed; ``(seed, epoch)`` fixes order and augmentation on every device.
            device: where the batches live.

        Yields:
            ``x`` float32 (B, 3, image_size, image_size) channels_last, normalised; ``y`` int64 (B,).

        Example::

            for x, y in bundle.train_batches(128, epoch=0, seed=0):
                loss = criterion(model(x), y)
        """
        device = torch.device(device)
        steps = self.train_steps(batch_size)
        s = self._split("train", device)
        g = torch.Generator().manual_seed(_mix(seed, epoch))
        order = torch.randperm(len(s.labels), generator=g)
        scale, shift = augment.norm_affine(self.mean, self.std, device)
        c = self.config
        for i in range(steps):
            with _data_threads(device):
                idx = order[i * batch_size:(i + 1) * batch_size]
                x, y = self._gather(s, idx, device)
                if not c.augment:
                    x = augment.normalise(augment.centre_crop(x, self.image_size), scale, shift)
                elif c.crop == "pad":
                    offsets, flips = augment.sample_pad_crop(g, batch_size, c.crop_padding, c.flip)
                    x = augment.pad_crop(augment.centre_crop(x, self.image_size), c.crop_padding, offsets, flips)
                    x = augment.normalise(x, scale, shift)
                else:
                    boxes, flips = augment.sample_resized_crop(g, batch_size, c.rrc_scale, c.rrc_ratio, c.flip)
                    x = augment.resized_crop(augment.normalise(x, scale, shift), self.image_size, boxes, flips)
            yield x, y

    def eval_batches(self, split: str = "val", batch_size: int = 512,
                     device: str | torch.device = "cpu") -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Every image of ``split`` in order, centre view, normalised (the last batch may be smaller).

        Args:
            split: ``train``, ``val`` or ``test``.
            batch_size: images per batch.
            device: where the batches live.
        """
        device = torch.device(device)
        s = self._split(split, device)
        n = len(s.labels)
        if n == 0:
            raise ValueError(f"the {split} split is empty (data.{split}_size); nothing to evaluate")
        scale, shift = augment.norm_affine(self.mean, self.std, device)
        for start in range(0, n, batch_size):
            with _data_threads(device):
                idx = torch.arange(start, min(start + batch_size, n))
                x, y = self._gather(s, idx, device)
                x = augment.normalise(augment.centre_crop(x, self.image_size), scale, shift)
            yield x, y

    @staticmethod
    def _gather(s: Split, idx: torch.Tensor, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(s.images.device)
        x = s.images.index_select(0, idx)
        y = s.labels.index_select(0, idx)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@contextmanager
def _data_threads(device: torch.device):
    """One intra-op thread for the batch ops on the CPU, restored before the batch is yielded.

    The ops are small (~0.4M elements); splitting them over threads gains little and, on a busy
    machine, a thread barrier waiting for a descheduled core costs 10-50 ms per batch (measured).
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _mix(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from ``(seed, epoch)`` (SeedSequence mixing, so nearby seeds decorrelate)."""
    a, b = np.random.SeedSequence([int(seed), int(epoch), 0xBA7C4]).generate_state(2, np.uint32)
    return (int(a) << 31) ^ int(b)
