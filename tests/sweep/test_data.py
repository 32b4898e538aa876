"""Loaders (CIFAR python batches, image folders, synthetic), restricted unpickler, cache, config errors."""
from __future__ import annotations

import os
import pickle
import pickletools
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search_space.config import ConfigError
from sweep.data import DataError, load_data, validate_data
from sweep.data.cifar import SafeUnpickler, UnsafePickleError, safe_load
from sweep.data.config import DataConfig
from tests.conftest import REPO, shared_path

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ----------------------------------------------------------------------------- official pickle format
class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), as the official cPickle files do."""
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def official_pickle(obj) -> bytes:
    """Protocol 2, py2 strings, arrays via numpy.core.multiarray._reconstruct: the official layout."""
    import io
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _globals(blob: bytes) -> set:
    return {arg for op, arg, _ in pickletools.genops(blob) if op.name == "GLOBAL"}


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(d: Path, per_batch: int = 20) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    out = {"train": [], "train_labels": []}
    for i in range(1, 6):
        data, labels = _images(per_batch, i), [j % 10 for j in range(per_batch)]
        (d / f"data_batch_{i}").write_bytes(official_pickle(
            {b"batch_label": b"training batch %d of 5" % i, b"labels": labels, b"data": data,
             b"filenames": [b"f%d.png" % j for j in range(per_batch)]}))
        out["train"].append(data)
        out["train_labels"] += labels
    test = _images(per_batch, 99)
    (d / "test_batch").write_bytes(official_pickle(
        {b"batch_label": b"testing batch 1 of 1", b"labels": [j % 10 for j in range(per_batch)], b"data": test}))
    (d / "batches.meta").write_bytes(official_pickle(
        {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": per_batch, b"num_vis": 3072}))
    out["train"] = np.concatenate(out["train"])
    out["test"] = test
    return out


def test_official_format_helper_matches_the_real_files():
    blob = official_pickle({b"data": _images(2, 0), b"labels": [1, 2]})
    assert _globals(blob) == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}


def test_cifar10_python_batches(tmp_path):
    ref = write_cifar10(tmp_path / "cifar-10-batches-py")
    # root = the parent of the extracted archive directory also works
    bundle = load_data({"name": "cifar10", "root": str(tmp_path), "val_size": 20, "cache_dir": str(tmp_path / "c")})
    assert bundle.source_format == "cifar-python"
    assert bundle.class_names == CIFAR10_NAMES and bundle.num_classes == 10
    assert bundle.sizes == {"train": 80, "val": 20, "test": 20}
    tr = bundle.splits["train"]
    i = int(tr.indices[3])
    assert torch.equal(tr.images[3], torch.from_numpy(ref["train"][i].reshape(3, 32, 32)))
    assert int(tr.labels[3]) == ref["train_labels"][i]
    assert torch.equal(bundle.splits["test"].images, torch.from_numpy(ref["test"].reshape(-1, 3, 32, 32)))
    assert bundle.describe()["format"] == "cifar-python"
    assert bundle.mean == (0.4914, 0.4822, 0.4465)


def test_cifar100_python_fine_and_coarse(tmp_path):
    n = 40
    fine, coarse = [j % 100 for j in range(n)], [j % 20 for j in range(n)]
    for split, seed in (("train", 1), ("test", 2)):
        (tmp_path / split).write_bytes(official_pickle(
            {b"filenames": [], b"fine_labels": fine, b"coarse_labels": coarse, b"data": _images(n, seed)}))
    (tmp_path / "meta").write_bytes(official_pickle(
        {b"fine_label_names": [b"f%d" % i for i in range(100)],
         b"coarse_label_names": [b"c%d" % i for i in range(20)]}))
    cfg = {"name": "cifar100", "root": str(tmp_path), "val_size": 10, "cache_dir": str(tmp_path / "c")}
    b = load_data(cfg)
    assert b.num_classes == 100 and b.class_names[7] == "f7"
    assert sorted(b.splits["test"].labels.tolist()) == sorted(fine)
    bc = load_data({**cfg, "cifar100_labels": "coarse"})
    assert bc.num_classes == 20 and bc.class_names[3] == "c3"
    assert sorted(bc.splits["test"].labels.tolist()) == sorted(coarse)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    write_cifar10(tmp_path)
    evil = pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2)
    (tmp_path / "data_batch_3").write_bytes(evil)
    with pytest.raises(UnsafePickleError, match=r"data_batch_3: refusing to unpickle global (posix|os)\.system"):
        load_data({"name": "cifar10", "root": str(tmp_path), "val_size": 10, "cache": False})
    assert not marker.exists()
    # the plain unpickler would have run it: the test payload is real
    pickle.loads(evil)
    assert marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(eval, protocol=2),                        # builtins.eval
    pickle.dumps(shutil.rmtree, protocol=4),               # shutil.rmtree
    b"cbuiltins\nexec\n(S'print(1)'\ntR.",                 # protocol 0 exec
])
def test_safe_unpickler_allows_only_numpy(tmp_path, payload):
    p = tmp_path / "x"
    p.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=str(p)):
        safe_load(p)


def test_safe_unpickler_reads_python3_resaves():
    import io
    arr = _images(3, 0)
    for protocol in (2, 4, 5):
        blob = pickle.dumps({b"data": arr}, protocol=protocol)
        assert np.array_equal(SafeUnpickler(io.BytesIO(blob)).load()[b"data"], arr)


def test_missing_and_corrupt_batches_name_the_file(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"data_batch_4 is missing.*data_batch_1.*test_batch"):
        load_data({"name": "cifar10", "root": str(tmp_path), "val_size": 10, "cache": False})
    write_cifar10(tmp_path)
    blob = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"test_batch is not a readable CIFAR python batch"):
        load_data({"name": "cifar10", "root": str(tmp_path), "val_size": 10, "cache": False})
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(official_pickle({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(DataError, match=r"data_batch_2: b'data' must be a uint8 array \(N, 3072\)"):
        load_data({"name": "cifar10", "root": str(tmp_path), "val_size": 10, "cache": False})


# ----------------------------------------------------------------------------- image folders
def write_folder(root: Path, classes=("a", "b", "c"), per_class: int = 6, held_out: str = "val",
                 size=(40, 30)) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), (held_out, 2)):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                if j % 3 == 0:  # grayscale
                    Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8), "L").save(d / f"{j}.png")
                else:
                    arr = rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
                    Image.fromarray(arr).save(d / f"{j}.jpg", quality=90)


def test_imagefolder_grayscale_resize_and_centre_crop(tmp_path):
    write_folder(tmp_path / "ds")
    b = load_data({"name": "imagefolder", "root": str(tmp_path / "ds"), "image_size": 16, "val_size": 3,
                   "cache_dir": str(tmp_path / "c"), "decode_workers": 1})
    assert b.class_names == ["a", "b", "c"] and b.stored_size == 18  # floor(16 / 0.875)
    assert b.sizes == {"train": 15, "val": 3, "test": 6}
    imgs = torch.cat([b.splits[s].images for s in ("train", "val")])
    assert imgs.shape[1:] == (3, 18, 18) and imgs.dtype == torch.uint8
    # the stored image = shorter side to 18, centre square; grayscale files become 3 equal channels
    f = tmp_path / "ds" / "train" / "b" / "0.png"
    im = Image.open(f).convert("RGB").resize((24, 18), Image.BICUBIC).crop((3, 0, 21, 18))
    pos = b.class_names.index("b") * 6  # first file of class b in the sorted pool
    split = "train" if pos in b.splits["train"].indices else "val"
    s = b.splits[split]
    k = int(np.flatnonzero(s.indices == pos)[0])
    assert torch.equal(s.images[k], torch.from_numpy(np.array(im)).permute(2, 0, 1))
    assert torch.equal(s.images[k][0], s.images[k][1])
    x, y = next(b.eval_batches("test", 4))
    assert x.shape == (4, 3, 16, 16) and x.is_contiguous(memory_format=torch.channels_last)
    x, y = next(b.train_batches(4, epoch=0, seed=1))
    assert x.shape == (4, 3, 16, 16) and torch.isfinite(x).all()


def test_folder_decodes_only_the_chosen_files(tmp_path):
    write_folder(tmp_path / "ds", per_class=10)
    # a broken file outside the chosen subset is never opened
    (tmp_path / "ds" / "train" / "a" / "zz_broken.jpg").write_bytes(b"not a jpeg")
    cfg = {"name": "imagefolder", "root": str(tmp_path / "ds"), "image_size": 16, "cache": False}
    names = sorted(p.name for p in (tmp_path / "ds" / "train" / "a").iterdir())
    broken = names.index("zz_broken.jpg")  # its index in the pool
    from sweep.data.splits import split_pool
    labels = np.repeat([0, 1, 2], [11, 10, 10])
    seed = next(s for s in range(100) if broken not in np.concatenate(split_pool(labels, 3, 3, 6, s)))
    b = load_data({**cfg, "val_size": 3, "train_size": 6, "split_seed": seed})
    assert b.sizes["train"] == 6 and broken not in b.splits["train"].indices
    with pytest.raises(DataError, match=r"cannot decode image .*zz_broken\.jpg"):
        load_data({**cfg, "val_size": 3})  # train = everything else: includes it


def test_cifar_layout_folder_copy(tmp_path):
    src = shared_path("data", "cifar10")
    for split in ("train", "test"):
        for c in CIFAR10_NAMES:
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for f in sorted((src / split / c).iterdir())[:4]:
                shutil.copy2(f, d / f.name)
    b = load_data({"name": "cifar10", "root": str(tmp_path), "val_size": 10, "cache_dir": str(tmp_path / "c")})
    assert b.source_format == "image-folder" and b.class_names == CIFAR10_NAMES
    assert b.sizes == {"train": 30, "val": 10, "test": 40}
    te = b.splits["test"]
    f = tmp_path / "test" / "cat" / sorted(os.listdir(tmp_path / "test" / "cat"))[1]
    k = 3 * 4 + 1  # cat = class 3, second file
    assert int(te.labels[k]) == 3
    assert torch.equal(te.images[k], torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1))


def test_shared_cifar10_subset():
    root = shared_path("data", "cifar10")
    b = load_data({"name": "cifar10", "root": str(root), "train_size": 200, "val_size": 100, "test_size": 100,
                   "cache": False})
    assert b.class_names == CIFAR10_NAMES
    assert b.pool_sizes == {"train": 50000, "test": 10000}
    assert b.sizes == {"train": 200, "val": 100, "test": 100}
    for s, per in (("train", 20), ("val", 10), ("test", 10)):
        assert np.bincount(b.splits[s].labels.numpy(), minlength=10).tolist() == [per] * 10
    x, y = next(b.train_batches(128, epoch=0, seed=0))
    assert x.shape == (128, 3, 32, 32)


@pytest.mark.slow
def test_shared_cifar10_full(tmp_path):
    b = load_data({"name": "cifar10", "root": str(shared_path("data", "cifar10")), "val_size": 5000,
                   "cache_dir": str(tmp_path)})
    assert b.sizes == {"train": 45000, "val": 5000, "test": 10000}
    again = load_data({"name": "cifar10", "root": str(shared_path("data", "cifar10")), "val_size": 5000,
                       "cache_dir": str(tmp_path)})
    assert again.cache["hit"] == {"train": True, "test": True}
    assert torch.equal(again.splits["val"].images, b.splits["val"].images)


def test_shared_imagenette_sample():
    root = shared_path("data", "imagenette-sample")
    b = load_data({"name": "imagefolder", "root": str(root), "image_size": 32, "val_size": 50, "train_size": 100,
                   "test_size": 50, "cache": False})
    assert b.num_classes == 10 and b.class_names[0] == "n01440764"
    assert b.pool_sizes == {"train": 1200, "test": 500}
    assert b.splits["train"].images.shape == (100, 3, 36, 36)


# ----------------------------------------------------------------------------- cache
def test_cache_reuse_does_not_decode(tmp_path):
    write_folder(tmp_path / "ds")
    cfg = {"name": "imagefolder", "root": str(tmp_path / "ds"), "image_size": 16, "val_size": 3,
           "cache_dir": str(tmp_path / "cache")}
    first = load_data(cfg)
    assert first.cache["hit"] == {"train": False, "test": False}
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    # garbage with the same size and mtime: a decode would fail, a cache hit does not look
    f = tmp_path / "ds" / "train" / "a" / "1.jpg"
    st = f.stat()
    f.write_bytes(b"\0" * st.st_size)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = load_data(cfg)
    assert second.cache["hit"] == {"train": True, "test": True}
    for s in ("train", "val", "test"):
        assert torch.equal(second.splits[s].images, first.splits[s].images)
    # a changed mtime is a new key: decoded again, and the broken file is named
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=r"cannot decode image .*train/a/1\.jpg"):
        load_data(cfg)


def test_cache_env_var_and_synthetic_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COORDSWEEP_CACHE", str(tmp_path / "env"))
    cfg = {"name": "synthetic", "synthetic_train": 200, "synthetic_test": 50, "val_size": 20}
    a = load_data(cfg)
    b = load_data(cfg)
    assert a.cache["dir"] == str(tmp_path / "env")
    assert a.cache["hit"] == {"train": False, "test": False} and b.cache["hit"] == {"train": True, "test": True}
    assert torch.equal(a.splits["train"].images, b.splits["train"].images)
    c = load_data({**cfg, "synthetic_seed": 1})  # other parameters, other entry
    assert c.cache["hit"] == {"train": False, "test": False}


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    cfg = {"name": "synthetic", "synthetic_train": 100, "synthetic_test": 20, "val_size": 10,
           "cache_dir": str(tmp_path)}
    a = load_data(cfg)
    for p in tmp_path.glob("*.pt"):
        p.write_bytes(b"broken")
    with pytest.warns(UserWarning, match="ignoring unreadable cache entry"):
        b = load_data(cfg)
    assert torch.equal(a.splits["val"].images, b.splits["val"].images)
    assert not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("cfg, match", [
    ({"name": "mnist"}, r"data.name='mnist' is unknown; allowed: synthetic, cifar10, cifar100, imagefolder"),
    ({"name": "cifar10"}, r"data.root=None is required for data.name=cifar10.*data_batch_1..5"),
    ({"name": "synthetic", "crop": "zoom"}, r"data.crop='zoom' is not allowed; allowed: pad, resized"),
    ({"name": "synthetic", "val_size": 4000}, r"data.val_size=4000 must be < data.synthetic_train=4000"),
    ({"name": "synthetic", "synthetic_train": 2100, "val_size": 500, "train_size": 3000},
     r"data.train_size=3000 exceeds the 1600 training images left after data.val_size=500 "
     r"\(data.synthetic_train=2100\); allowed: 1..1600 or null"),
    ({"name": "synthetic", "synthetic_test": 500, "test_size": 501},
     r"data.test_size=501 exceeds the data.synthetic_test=500 generated test images; allowed: 1..500"),
    ({"name": "synthetic", "rrc_scale": [0.5, 0.2]}, r"data.rrc_scale=\[0.5, 0.2\] must be \[low, high\]"),
    ({"name": "synthetic", "train_size": 0}, r"data.train_size=0 must be null \(all\) or an integer >= 1"),
    ({"name": "cifar100", "root": "/x", "cifar100_labels": "mid"}, r"allowed: fine, coarse"),
    ({"name": "synthetic", "colour": 1}, r"data.colour is not a data option; allowed: name, root"),
])
def test_validate_data_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        validate_data(cfg)


def test_sizes_beyond_the_data(tmp_path):
    base = {"name": "synthetic", "synthetic_train": 100, "synthetic_test": 50, "val_size": 20,
            "cache_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"data.train_size=81 exceeds the 80 training images left after "
                                          r"data.val_size=20.*allowed: 1..80 or null"):
        load_data({**base, "train_size": 81})
    with pytest.raises(ConfigError, match=r"data.test_size=51 exceeds the data.synthetic_test=50 generated test images"):
        load_data({**base, "test_size": 51})


def test_root_with_the_wrong_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ConfigError, match=r"data.root=.*: expected CIFAR python batches data_batch_1..5, "
                                          r"test_batch, batches.meta, or an image folder train/<class>/\*.jpg"):
        load_data({"name": "cifar10", "root": str(tmp_path), "cache": False})
    with pytest.raises(ConfigError, match=r"data.root=.*/nope is not a directory"):
        load_data({"name": "cifar10", "root": str(tmp_path / "nope"), "cache": False})
    write_folder(tmp_path / "three", held_out="test")
    with pytest.raises(ConfigError, match=r"data.name=cifar10 expects 10 class folders .* found 3"):
        load_data({"name": "cifar10", "root": str(tmp_path / "three"), "val_size": 3, "cache": False})


def test_empty_class_folder_is_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train" / "d").mkdir()
    with pytest.raises(DataError, match=r"train/d holds no images"):
        load_data({"name": "imagefolder", "root": str(tmp_path), "val_size": 3, "cache": False})


def test_hydra_yaml_files_compose_and_validate(tmp_path):
    from hydra import compose, initialize_config_dir

    from sweep.data.config import register_configs

    register_configs()
    (tmp_path / "probe.yaml").write_text(f"defaults:\n  - data: synthetic\n  - _self_\nhydra:\n  searchpath:\n"
                                         f"    - file://{REPO / 'conf'}\n")
    for name in ("synthetic", "cifar10", "cifar100", "imagefolder"):
        with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
            cfg = compose(config_name="probe", overrides=[f"data={name}"])
        assert set(cfg.data) == {f for f in DataConfig.__dataclass_fields__}
        if name == "synthetic":
            assert validate_data(cfg.data).name == "synthetic"
        else:
            assert cfg.data.root is None
            with pytest.raises(ConfigError, match=r"data.root=None is required"):
                validate_data(cfg.data)
