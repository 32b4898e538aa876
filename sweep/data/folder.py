"""Image-folder trees (``<split>/<class>/<image>``): scanning and decoding with Pillow.

Classes are the sorted subdirectory names of the training split (for the CIFAR-10 folder this is
the official label order). Only the files a run needs are decoded, in a process pool when there
are many (Pillow's Python-level overhead dominates for small JPEGs, so threads do not help).
Every image is converted to RGB (grayscale and palette files included).

Decode transforms (part of the cache key):

- ``("resize", S)``: the whole image resized to S x S (bicubic) unless it already is S x S;
  used for CIFAR folders.
- ``("short_side_centre", S)``: shorter side resized to S (bicubic, JPEG draft mode for big
  reductions), then the centre S x S square; used for ImageNet-style subsets.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from sweep.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
# below this many files a pool costs more than it saves
_POOL_MIN_FILES = 2000
_CHUNK = 1000


@dataclass
class FolderSplit:
    """Files of one split: paths relative to ``root``, their size and mtime, and labels."""
    root: Path
    files: List[str]
    sizes: np.ndarray
    mtimes: np.ndarray
    labels: np.ndarray
    class_names: List[str]


def scan(split_dir: Path, class_names: Optional[Sequence[str]] = None) -> FolderSplit:
    """List ``split_dir/<class>/<image>`` files (sorted) with their labels.

    Args:
        split_dir: e.g. ``root/train``.
        class_names: the training split's classes; ``None`` = take this directory's.

    Raises:
        DataError: a class directory without images, or a class unknown to the training split.
    """
    dirs = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not dirs:
        raise DataError(f"{split_dir} has no class subdirectories: expected {split_dir}/<class>/<image>")
    if class_names is None:
        class_names = dirs
    index = {c: i for i, c in enumerate(class_names)}
    unknown = [c for c in dirs if c not in index]
    if unknown:
        raise DataError(f"{split_dir / unknown[0]}: class {unknown[0]!r} is not among the training classes "
                        f"({len(class_names)} classes in the train/ folder)")
    # stat() calls release the GIL: threads overlap them across class directories
    with ThreadPoolExecutor(max_workers=min(8, len(dirs))) as ex:
        listings = list(ex.map(_list_class, [split_dir / c for c in dirs]))
    files, sizes, mtimes, labels = [], [], [], []
    for c, entries in zip(dirs, listings):
        if not entries:
            raise DataError(f"{split_dir / c} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)})")
        prefix = f"{split_dir.name}/{c}/"
        files += [prefix + name for name, _, _ in entries]
        sizes += [size for _, size, _ in entries]
        mtimes += [mtime for _, _, mtime in entries]
        labels += [index[c]] * len(entries)
    return FolderSplit(split_dir.parent, files, np.asarray(sizes, np.int64), np.asarray(mtimes, np.int64),
                       np.asarray(labels, np.int64), list(class_names))


def _list_class(d: Path) -> list:
    out = []
    with os.scandir(d) as it:
        for e in it:
            if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file():
                st = e.stat()
                out.append((e.name, st.st_size, st.st_mtime_ns))
    out.sort()
    return out


def decode(root: Path, files: Sequence[str], transform: Tuple[str, int], workers: int = 0) -> np.ndarray:
    """Decode ``root/f`` for every ``f`` in ``files`` into uint8 (N, 3, S, S).

    Args:
        root: dataset root.
        files: paths relative to ``root``.
        transform: ``("resize", S)`` or ``("short_side_centre", S)`` (module docstring).
        workers: processes; 0 = one per CPU core, 1 = this process.

    Raises:
        DataError: naming the first file that cannot be read or decoded.
    """
    size = transform[1]
    out = np.empty((len(files), size, size, 3), np.uint8)
    chunks = [(str(root), list(files[i:i + _CHUNK]), transform) for i in range(0, len(files), _CHUNK)]
    workers = workers or (os.cpu_count() or 1)
    if workers > 1 and len(files) >= _POOL_MIN_FILES:
        # fork: workers inherit the imported modules (as torch's DataLoader does on Linux)
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(min(workers, len(chunks))) as pool:
            results = pool.imap(_decode_chunk, chunks)
            for i, arr in enumerate(results):
                out[i * _CHUNK:i * _CHUNK + len(arr)] = arr
    else:
        for i, chunk in enumerate(chunks):
            out[i * _CHUNK:i * _CHUNK + len(chunk[1])] = _decode_chunk(chunk)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _decode_chunk(args) -> np.ndarray:
    root, files, (kind, size) = args
    out = np.empty((len(files), size, size, 3), np.uint8)
    for i, f in enumerate(files):
        out[i] = _decode_one(os.path.join(root, f), kind, size)
    return out


def _decode_one(path: str, kind: str, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if kind == "short_side_centre":
                im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale >= size when possible
            im = im.convert("RGB")
            w, h = im.size
            if kind == "resize":
                if (w, h) != (size, size):
                    im = im.resize((size, size), Image.BICUBIC)
            else:
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                if (nw, nh) != (w, h):
                    im = im.resize((nw, nh), Image.BICUBIC)
                left, top = (nw - size) // 2, (nh - size) // 2
                im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8)
    except Exception as e:  # OSError / UnidentifiedImageError / truncated data
        raise DataError(f"cannot decode image {path}: {type(e).__name__}: {e}") from None
