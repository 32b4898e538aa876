"""Data pipeline: both CIFAR formats, the restricted unpickler, image folders, cache, splits,
augmentation and determinism (small data written by the tests)."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from search_space.config import ConfigError
from sweep.data import DataError, load_data
from sweep.data.cifar import UnsafePickleError, safe_load
from tests.conftest import shared_path


def _write_cifar10(d, n_train=50, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        labels = [int(v) for v in np.arange(n_train // 5) % 10]
        batch = {b"batch_label": b"x", b"labels": labels,
                 b"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), b"filenames": []}
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f)
    test = {b"labels": [int(v) for v in np.arange(n_test) % 10],
            b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)}
    with open(d / "test_batch", "wb") as f:
        pickle.dump(test, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return test


def test_cifar_python_batches_load_with_exact_pixels(tmp_path):
    test = _write_cifar10(tmp_path / "cifar-10-batches-py")
    b = load_data({"name": "cifar10", "root": str(tmp_path), "val_size": 10, "cache": False, "augment": False})
    assert b.num_classes == 10 and b.sizes["train"] == 40 and b.sizes["val"] == 10 and b.sizes["test"] == 20
    # test images are kept in order: pixel-exact CHW reshape of the official rows
    got = b.splits["test"].images.numpy().reshape(20, 3072)
    order = np.argsort(b.splits["test"].indices)
    assert np.array_equal(got[order], test[b"data"])


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": evil}))
    with pytest.raises(UnsafePickleError, match="data_batch_1"):
        safe_load(p)
    assert not marker.exists()


def test_tampered_batch_in_a_dataset_is_an_error_naming_the_file(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    _write_cifar10(d)
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": __import__("collections").OrderedDict()}))
    with pytest.raises(DataError, match="data_batch_3"):
        load_data({"name": "cifar10", "root": str(tmp_path), "val_size": 10, "cache": False})


def _write_folder(root, split, classes=("a", "b"), n=6, size=20, gray_every=3):
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.full((size, size, 3), 40 * i, np.uint8)
            img = Image.fromarray(arr).convert("L") if i % gray_every == 0 else Image.fromarray(arr)
            img.save(root / split / c / f"{i}.png")


def test_image_folder_with_grayscale_images(tmp_path):
    _write_folder(tmp_path, "train")
    _write_folder(tmp_path, "val")
    b = load_data({"name": "imagefolder", "root": str(tmp_path), "image_size": 16, "val_size": 4,
                   "cache": False})
    assert b.class_names == ["a", "b"] and b.num_classes == 2
    x = b.splits["train"].images
    assert x.shape[1:] == (3, b.stored_size, b.stored_size) and x.dtype == torch.uint8
    xb, yb = next(iter(b.eval_batches("test", 64)))
    assert xb.shape[1:] == (3, 16, 16) and torch.isfinite(xb).all()


def test_missing_layout_is_a_clear_error(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises((ConfigError, DataError), match="train"):
        load_data({"name": "cifar10", "root": str(tmp_path), "cache": False})
    _write_folder(tmp_path / "x", "train")
    (tmp_path / "x" / "train" / "a" / "0.png").write_bytes(b"not a png")
    _write_folder(tmp_path / "x", "val")
    with pytest.raises(DataError, match="0.png"):
        load_data({"name": "imagefolder", "root": str(tmp_path / "x"), "val_size": 2, "cache": False})


def test_cache_is_reused_without_the_sources(tmp_path):
    src = tmp_path / "cifar-10-batches-py"
    _write_cifar10(src)
    cfg = {"name": "cifar10", "root": str(tmp_path), "val_size": 10, "cache_dir": str(tmp_path / "cache")}
    a = load_data(cfg)
    assert any((tmp_path / "cache").rglob("*"))
    b = load_data(cfg)
    assert torch.equal(a.splits["train"].images, b.splits["train"].images)
    assert b.describe()["cache"] and a.describe()["sizes"] == b.describe()["sizes"]


def test_splits_are_stratified_disjoint_and_seeded():
    cfg = {"name": "synthetic", "synthetic_train": 1000, "synthetic_test": 200, "val_size": 200,
           "train_size": 500, "cache": False}
    a, b = load_data(cfg), load_data(cfg)
    tr, va = set(a.splits["train"].indices.tolist()), set(a.splits["val"].indices.tolist())
    assert not tr & va and len(tr) == 500 and len(va) == 200
    assert np.bincount(a.splits["val"].labels.numpy()).tolist() == [20] * 10
    assert np.array_equal(a.splits["train"].indices, b.splits["train"].indices)
    c = load_data({**cfg, "split_seed": 1})
    assert not np.array_equal(a.splits["train"].indices, c.splits["train"].indices)


def test_batches_are_deterministic_augmented_and_channels_last():
    b = load_data({"name": "synthetic", "synthetic_train": 400, "synthetic_test": 100, "val_size": 100,
                   "cache": False})
    first = list(b.train_batches(64, epoch=1, seed=0, device="cpu"))
    again = list(b.train_batches(64, epoch=1, seed=0, device="cpu"))
    other = list(b.train_batches(64, epoch=2, seed=0, device="cpu"))
    assert len(first) == 300 // 64  # drop_last
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, again))
    assert not torch.equal(first[0][0], other[0][0])
    x, _ = first[0]
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    # eval batches are the normalised stored images, no augmentation
    xe, _ = next(iter(b.eval_batches("val", 100)))
    raw = b.splits["val"].images.float() / 255.0
    mean = torch.tensor(b.mean).view(1, 3, 1, 1)
    std = torch.tensor(b.std).view(1, 3, 1, 1)
    assert torch.allclose(xe, (raw - mean) / std, atol=1e-5)


def test_shared_cifar10_folder_subset():
    root = shared_path("data", "cifar10")
    b = load_data({"name": "cifar10", "root": str(root), "train_size": 200, "val_size": 100, "test_size": 100})
    assert b.source_format == "image-folder" and b.num_classes == 10
    assert b.class_names[0] == "airplane" and b.sizes == {"train": 200, "val": 100, "test": 100}
