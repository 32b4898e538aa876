"""Splits, batch iterators, augmentation and the synthetic task's rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sweep.data import load_data
from sweep.data import augment, splits, synthetic

SMALL = {"name": "synthetic", "synthetic_train": 600, "synthetic_test": 200, "val_size": 100}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_data({**SMALL, "cache_dir": str(tmp_path_factory.mktemp("cache"))})


# ----------------------------------------------------------------------------- splits
def test_allocate_is_proportional_and_exact():
    assert splits.allocate(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    assert splits.allocate(np.array([5, 5, 5]), 4).tolist() == [2, 1, 1]  # ties to the lower class
    assert splits.allocate(np.array([3, 0, 1]), 4).tolist() == [3, 0, 1]
    with pytest.raises(ValueError):
        splits.allocate(np.array([1, 1]), 3)


def test_stratified_disjoint_nested_splits():
    labels = np.repeat(np.arange(4), [400, 300, 200, 100])  # imbalanced
    train, val = splits.split_pool(labels, 4, val_size=100, train_size=500, seed=3)
    assert len(np.intersect1d(train, val)) == 0
    assert np.bincount(labels[val]).tolist() == [40, 30, 20, 10]
    assert np.bincount(labels[train]).tolist() == [200, 150, 100, 50]
    # val does not depend on train_size; smaller train subsets are nested in larger ones
    train2, val2 = splits.split_pool(labels, 4, val_size=100, train_size=200, seed=3)
    assert np.array_equal(val, val2) and np.isin(train2, train).all()
    all_train, _ = splits.split_pool(labels, 4, val_size=100, train_size=None, seed=3)
    assert len(all_train) == 900 and len(np.union1d(all_train, val)) == 1000
    # another seed, another split
    _, val3 = splits.split_pool(labels, 4, val_size=100, train_size=500, seed=4)
    assert not np.array_equal(val, val3)


def test_bundle_splits_are_disjoint_and_balanced(bundle):
    tr, va = bundle.splits["train"], bundle.splits["val"]
    assert len(np.intersect1d(tr.indices, va.indices)) == 0
    assert bundle.sizes == {"train": 500, "val": 100, "test": 200}
    assert np.bincount(va.labels.numpy()).tolist() == [10] * 10
    assert np.bincount(tr.labels.numpy()).tolist() == [50] * 10


# ----------------------------------------------------------------------------- batches
def test_train_batches_are_deterministic(bundle):
    a = list(bundle.train_batches(64, epoch=2, seed=7))
    b = list(bundle.train_batches(64, epoch=2, seed=7))
    assert len(a) == bundle.train_steps(64) == 500 // 64
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_epoch = next(bundle.train_batches(64, epoch=3, seed=7))[1]
    other_seed = next(bundle.train_batches(64, epoch=2, seed=8))[1]
    assert not torch.equal(a[0][1], other_epoch) and not torch.equal(a[0][1], other_seed)


def test_train_batches_cover_an_epoch_without_repeats(tmp_path):
    b = load_data({**SMALL, "augment": False, "cache_dir": str(tmp_path)})
    rows = {bytes(im.numpy()): int(y) for im, y in zip(b.splits["train"].images, b.splits["train"].labels)}
    mean = torch.tensor(b.mean).view(1, 3, 1, 1)
    std = torch.tensor(b.std).view(1, 3, 1, 1)
    seen = []
    for x, y in b.train_batches(50, epoch=0, seed=0):
        # no-aug path = the normalised stored image, paired with its own label
        u8 = ((x * std + mean) * 255).round().to(torch.uint8)
        assert torch.allclose(u8.float(), (x * std + mean) * 255, atol=1e-3)
        for im, lab in zip(u8, y):
            assert rows[bytes(im.contiguous().numpy())] == int(lab)
            seen.append(bytes(im.contiguous().numpy()))
    assert len(seen) == 500 and len(set(seen)) == len(rows)


def test_eval_batches_cover_the_split_in_order(bundle):
    xs, ys = zip(*bundle.eval_batches("test", 64))
    assert [len(y) for y in ys] == [64, 64, 64, 8]
    assert torch.equal(torch.cat(ys), bundle.splits["test"].labels)
    scale, shift = augment.norm_affine(bundle.mean, bundle.std, "cpu")
    expect = bundle.splits["test"].images.float() * scale + shift
    assert torch.allclose(torch.cat(xs), expect, atol=1e-6)
    assert xs[0].dtype == torch.float32 and xs[0].is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="split='dev'"):
        next(bundle.eval_batches("dev", 8))


def test_batch_smaller_than_split_is_an_error(bundle):
    with pytest.raises(ValueError, match="fewer than batch_size=1000"):
        next(bundle.train_batches(1000))


# ----------------------------------------------------------------------------- augmentation
def test_pad_crop_centre_offset_is_identity_and_flip_flips():
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    centre = torch.full((3, 2), 4)
    assert torch.equal(augment.pad_crop(x, 4, centre, torch.zeros(3, dtype=torch.bool)), x)
    flips = torch.tensor([True, False, True])
    out = augment.pad_crop(x, 4, centre, flips)
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1]) and torch.equal(out[2], x[2].flip(-1))


def test_pad_crop_shifts_in_zeros():
    x = torch.randint(1, 256, (1, 3, 8, 8), dtype=torch.uint8)
    out = augment.pad_crop(x, 4, torch.tensor([[0, 2]]), torch.tensor([False]))  # 4 rows up, 2 cols left
    assert out.shape == x.shape
    assert (out[:, :, :4] == 0).all() and (out[:, :, :, :2] == 0).all()
    assert torch.equal(out[0, :, 4:, 2:], x[0, :, :4, :6])


def test_sampled_crops_stay_in_range_and_flip_half_the_time():
    g = torch.Generator().manual_seed(0)
    offsets, flips = augment.sample_pad_crop(g, 4000, 4, flip=True)
    assert offsets.min() == 0 and offsets.max() == 8
    assert 0.45 < flips.float().mean() < 0.55  # binomial(4000, .5): 6 sigma band
    assert not augment.sample_pad_crop(g, 100, 4, flip=False)[1].any()
    boxes, _ = augment.sample_resized_crop(g, 4000, (0.35, 1.0), (0.75, 4 / 3), flip=True)
    cy, cx, h, w = boxes.unbind(1)
    assert (h <= 1).all() and (w <= 1).all()
    assert (cy - h / 2 >= -1e-6).all() and (cy + h / 2 <= 1 + 1e-6).all()
    assert (cx - w / 2 >= -1e-6).all() and (cx + w / 2 <= 1 + 1e-6).all()


def test_resized_crop_full_box_is_identity_and_flip_flips():
    x = torch.rand(2, 3, 10, 10)
    full = torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 2)
    out = augment.resized_crop(x, 10, full, torch.tensor([False, True]))
    assert torch.allclose(out[0], x[0], atol=1e-5)
    assert torch.allclose(out[1], x[1].flip(-1), atol=1e-5)
    # the left half of the image, upsampled 2x: column pairs repeat the source columns' mean
    half = augment.resized_crop(x, 10, torch.tensor([[0.5, 0.25, 1.0, 0.5]] * 2), torch.tensor([False, False]))
    assert half.shape == (2, 3, 10, 10) and half.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(half[..., 2], 0.75 * x[..., 1] + 0.25 * x[..., 0], atol=1e-5)


def test_augmented_batch_shapes_and_crop_content(bundle):
    x, y = next(bundle.train_batches(32, epoch=0, seed=0))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    # reproduce the first batch by hand from the documented recipe
    s = bundle.splits["train"]
    g = torch.Generator().manual_seed(__import__("sweep.data.bundle", fromlist=["_mix"])._mix(0, 0))
    order = torch.randperm(len(s.labels), generator=g)[:32]
    offsets, flips = augment.sample_pad_crop(g, 32, 4, True)
    ref = augment.pad_crop(s.images[order], 4, offsets, flips)
    scale, shift = augment.norm_affine(bundle.mean, bundle.std, "cpu")
    assert torch.allclose(x, ref.float() * scale + shift, atol=1e-5) and torch.equal(y, s.labels[order])


def test_imagefolder_style_batches_are_deterministic(tmp_path):
    b = load_data({**SMALL, "crop": "resized", "cache_dir": str(tmp_path)})
    (x1, _), (x2, _) = next(b.train_batches(16, seed=5)), next(b.train_batches(16, seed=5))
    assert torch.equal(x1, x2) and x1.shape == (16, 3, 32, 32)


# ----------------------------------------------------------------------------- synthetic rule
def _masks(img: np.ndarray):
    r, g, b = (img[i].astype(int) for i in range(3))
    return (r >= 200) & (g <= 60) & (b <= 60), (b >= 200) & (r <= 60) & (g <= 60)


def _read_label(img: np.ndarray) -> int:
    """Recover the label of a noise-free synthetic image from its pixels (the documented rule):
    count the blue marks whose pixel rows are the red mark's rows, and those sharing its columns."""
    from scipy import ndimage

    red, blue = _masks(img)
    ys, xs = np.nonzero(red)
    assert ys.max() - ys.min() == xs.max() - xs.min() and len(ys) == (ys.max() - ys.min() + 1) ** 2, "one red square"
    comps, n = ndimage.label(blue)
    assert n == synthetic.BLUES, "four separate blue marks"
    in_row = in_col = 0
    for k in range(1, n + 1):
        by, bx = np.nonzero(comps == k)
        in_row += np.array_equal(np.unique(by), np.unique(ys))
        in_col += np.array_equal(np.unique(bx), np.unique(xs))
        assert len(np.intersect1d(by, ys)) in (0, len(np.unique(ys))), "rows shared fully or not at all"
    return synthetic.PAIRS.index((in_row, in_col))


def test_synthetic_images_follow_the_rule():
    x, y = synthetic.generate(300, seed=4, distractors=8, noise=0.0)
    assert x.shape == (300, 3, 32, 32) and x.dtype == np.uint8
    for img, label in zip(x, y):
        assert _read_label(img) == label
        assert _read_label(img[:, :, ::-1]) == label   # horizontal flip keeps the label
        assert _read_label(img[:, ::-1, :]) == label   # and vertical flip
        red, blue = _masks(img)
        ys, xs = np.nonzero(red | blue)
        assert ys.min() >= 4 and xs.min() >= 4 and ys.max() <= 27 and xs.max() <= 27  # >= 4 px margin: crop-safe
    # every class holds examples of its rule, decoded independently of the generator's lattice
    assert sorted(set(y.tolist())) == list(range(10))
    assert synthetic.CLASS_NAMES == ("row0_col0", "row0_col1", "row0_col2", "row0_col3", "row1_col0", "row1_col1",
                                     "row1_col2", "row2_col0", "row2_col1", "row3_col0")


def test_synthetic_marks_sit_on_the_documented_lattice():
    rng = np.random.default_rng(0)
    for label in range(synthetic.NUM_CLASSES):
        target, blues = synthetic.place_marks(rng, label)
        points = [target, *blues]
        assert len(set(points)) == 5 and all(0 <= r < 5 and 0 <= c < 5 for r, c in points)
        a = sum(r == target[0] for r, _ in blues)
        b = sum(c == target[1] for _, c in blues)
        assert synthetic.PAIRS[label] == (a, b) and a + b <= 3
    assert synthetic.lattice_box(0, 0) == (4, 4, 4, 4) and synthetic.lattice_box(4, 4) == (24, 24, 4, 4)
    assert synthetic.lattice_box(4, 4, image_size=64) == (48, 48, 8, 8)


def test_synthetic_is_deterministic_and_balanced():
    a, la = synthetic.generate(200, seed=1)
    b, lb = synthetic.generate(200, seed=1)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert np.bincount(la).tolist() == [20] * 10
    assert sorted(np.bincount(synthetic.generate(95, seed=1)[1]).tolist()) == [9] * 5 + [10] * 5
    c, _ = synthetic.generate(200, seed=2)
    t, _ = synthetic.generate(200, seed=1, split="test")
    assert not np.array_equal(a, c) and not np.array_equal(a, t)
    with pytest.raises(ValueError, match="split"):
        synthetic.generate(9, split="val")


def test_synthetic_colour_statistics_carry_no_label():
    x, y = synthetic.generate(2000, seed=0, distractors=4, noise=8.0)
    means = x.reshape(len(x), 3, -1).mean(-1)
    per_class = np.stack([means[y == c].mean(0) for c in range(10)])
    # class means of the channel means differ by sampling noise only: per-image std ~ 3, 200 per class
    assert np.abs(per_class - means.mean(0)).max() < 1.5
    clean, _ = synthetic.generate(450, seed=0, distractors=6, noise=0.0)
    red, blue = _masks(clean.transpose(1, 0, 2, 3))
    assert (red.reshape(len(clean), -1).sum(1) == 16).all()   # one 4x4 red mark in every image,
    assert (blue.reshape(len(clean), -1).sum(1) == 64).all()  # four 4x4 blue ones, clutter never either


def test_synthetic_larger_images():
    x, y = synthetic.generate(18, seed=0, image_size=64, noise=0.0)
    assert x.shape == (18, 3, 64, 64)
    red, blue = _masks(x.transpose(1, 0, 2, 3))
    assert (red.reshape(18, -1).sum(1) == 64).all() and (blue.reshape(18, -1).sum(1) == 256).all()  # 8x8 marks


def test_synthetic_crop_and_flip_keep_the_label(tmp_path):
    """Augmented training batches (pad 4 + random crop + flip), mapped back to pixels, still follow the rule."""
    b = load_data({**SMALL, "synthetic_noise": 0.0, "augment": True, "crop": "pad", "flip": True,
                   "cache_dir": str(tmp_path)})
    scale, shift = augment.norm_affine(b.mean, b.std, "cpu")
    shifted = 0
    for x, y in b.train_batches(100, seed=3):
        u8 = ((x - shift) / scale).round().clamp(0, 255).to(torch.uint8).numpy()
        shifted += int((u8[:, :, 0, :] == 0).all(1).any(1).sum())  # black padding rows show the crop moved
        for img, label in zip(u8, y.tolist()):
            assert _read_label(img) == label
    assert shifted > 100


def test_batches_keep_the_callers_thread_count(bundle):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in bundle.train_batches(64, seed=0):
            assert torch.get_num_threads() == 2  # the model step sees the caller's setting
        for _ in bundle.eval_batches("val", 64):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
