"""CIFAR-10/100 "python version" batches, read with a restricted unpickler.

Format (Krizhevsky, 2009, https://www.cs.toronto.edu/~kriz/cifar.html): each file is a pickled
dict with byte-string keys; ``b'data'`` is a uint8 array (N, 3072) holding the R, G, B planes of
32x32 images row-major, labels are a list of ints. CIFAR-10: ``data_batch_1..5`` and
``test_batch`` with ``b'labels'``, ``batches.meta`` with ``b'label_names'``. CIFAR-100: ``train``
and ``test`` with ``b'fine_labels'`` / ``b'coarse_labels'``, ``meta`` with ``b'fine_label_names'``
/ ``b'coarse_label_names'``.

Pickle runs code named by the file. ``SafeUnpickler`` only resolves the few globals these files
need (numpy array and dtype reconstruction, and ``_codecs.encode`` that Python 3 uses for bytes in
protocol 2); anything else raises ``UnsafePickleError`` before it is called, so a tampered file is
an error, never code execution.
"""
from __future__ import annotations

import _codecs
import io
import pickle
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from sweep.data.errors import DataError

CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = CIFAR10_TRAIN + ("test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")
# directories the official archives extract to
ARCHIVE_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle references a global that CIFAR batches never contain."""


def _allowed_globals() -> Dict[Tuple[str, str], object]:
    from numpy._core import multiarray, numeric

    return {
        # ndarray.__reduce__ (protocol <= 4): _reconstruct(ndarray, (0,), b'b') then __setstate__
        ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        # protocol 5 re-saves: _frombuffer(buffer, dtype, shape, order)
        ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,
        ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles bytes as _codecs.encode(str, 'latin1') in protocol 2
        ("_codecs", "encode"): _codecs.encode,
    }


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` resolving only numpy array reconstruction (and ``_codecs.encode``).

    Args:
        file: binary file object.
        source: file name quoted in errors.
    """

    def __init__(self, file, source: str = "<pickle>"):
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in self._allowed)
            raise UnsafePickleError(
                f"{self._source}: refusing to unpickle global {module}.{name} - CIFAR batches only "
                f"contain numpy arrays (allowed globals: {allowed}); the file is not an official "
                f"CIFAR batch or has been tampered with") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._source}: refusing persistent id {pid!r} (not a CIFAR batch)")


def safe_load(path: Path) -> object:
    """Unpickle ``path`` with ``SafeUnpickler``; any failure is a ``DataError`` naming the file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    try:
        return SafeUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated or garbage: EOFError, UnpicklingError, ValueError, ...
        raise DataError(f"{path} is not a readable CIFAR python batch ({type(e).__name__}: {e}); "
                        f"re-download or re-extract it") from None


def find_batches_dir(root: Path, name: str) -> Path | None:
    """The directory holding ``name``'s python batches: ``root`` or its archive subdirectory."""
    names = CIFAR10_FILES if name == "cifar10" else CIFAR100_FILES
    for d in (root, root / ARCHIVE_DIRS[name]):
        if any((d / f).is_file() for f in names):
            return d
    return None


def read_batches(d: Path, name: str, labels: str = "fine") -> dict:
    """Read every split of CIFAR-10 or CIFAR-100 from the python batches in ``d``.

    Args:
        d: directory with the batch files.
        name: ``cifar10`` or ``cifar100``.
        labels: CIFAR-100 label set, ``fine`` or ``coarse``.

    Returns:
        ``{"train": (images, labels), "test": (images, labels), "class_names": [...]}`` with
        images uint8 (N, 3, 32, 32) and labels int64 (N,).
    """
    if name == "cifar10":
        files, meta, key, names_key = CIFAR10_FILES, "batches.meta", b"labels", b"label_names"
        train_files, test_files = CIFAR10_TRAIN, ("test_batch",)
    else:
        files, meta = CIFAR100_FILES, "meta"
        key, names_key = f"{labels}_labels".encode(), f"{labels}_label_names".encode()
        train_files, test_files = ("train",), ("test",)
    missing = [f for f in files if not (d / f).is_file()]
    if missing:
        raise DataError(f"{d / missing[0]} is missing: {name} python batches need {', '.join(files)} in {d}")
    meta_obj = safe_load(d / meta)
    class_names = _names(meta_obj, names_key, d / meta)
    out = {"class_names": class_names}
    for split, fnames in (("train", train_files), ("test", test_files)):
        parts = [_batch(d / f, key, len(class_names)) for f in fnames]
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def _names(meta: object, key: bytes, path: Path) -> List[str]:
    if not isinstance(meta, dict) or key not in meta:
        raise DataError(f"{path}: expected a dict with key {key!r} (class names); got "
                        f"{sorted(meta) if isinstance(meta, dict) else type(meta).__name__}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


def _batch(path: Path, key: bytes, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    obj = safe_load(path)
    if not isinstance(obj, dict) or b"data" not in obj or key not in obj:
        raise DataError(f"{path}: expected a dict with keys b'data' and {key!r}; got "
                        f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")
    data = obj[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' must be a uint8 array (N, 3072); got "
                        f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    labels = np.asarray(obj[key])
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {key!r} must hold {len(data)} integer labels; got shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must be in [0, {num_classes}); got [{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
