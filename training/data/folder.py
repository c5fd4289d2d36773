"""Image-folder trees: root/<split>/<class>/<image>, e.g. ../shared/data/cifar10-jpeg or ImageNet-100."""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_folder(split_dir: Path, classes: list[str] | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """Files and labels of one split; class order is sorted folder names (as torchvision's ImageFolder)."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"image folder {split_dir} does not exist")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    classes = classes or found
    if not classes:
        raise ValueError(f"image folder {split_dir} has no class sub-folders")
    if missing := set(found) - set(classes):
        raise ValueError(f"{split_dir} has classes {sorted(missing)} that the training split lacks")
    files, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((split_dir / c).iterdir()) if (split_dir / c).is_dir() else []:
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(i)
    if not files:
        raise ValueError(f"image folder {split_dir} holds no images ({sorted(IMAGE_SUFFIXES)})")
    return files, np.asarray(labels, dtype=np.int64), classes


def decode_all(files: list[Path], size: int) -> np.ndarray:
    """Decode small images into one uint8 (N, size, size, 3) array (CIFAR-sized folders fit in memory)."""
    from PIL import Image

    def one(f: Path) -> np.ndarray:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise ValueError(f"cannot decode image {f}: {e}") from e

    with ThreadPoolExecutor(4) as pool:
        return np.stack(list(pool.map(one, files, chunksize=256)))


def decode_all_cached(files: list[Path], size: int, cache_dir: Path | None) -> np.ndarray:
    """decode_all, kept in `cache_dir` as .npy: decoding CIFAR-10's 60,000 JPEGs takes ~14 s a process, which
    every concurrent run of a GPU lease would pay again (bench/gpu/paper_runs.sh); loading the array takes
    well under a second. The key covers every file's path, size and modification time and the decoded size,
    so a changed folder is decoded afresh; the file is written whole and renamed, so a concurrent reader sees
    either nothing or all of it."""
    if cache_dir is None:
        return decode_all(files, size)
    h = hashlib.sha256(f"{size}\n".encode())
    for f in files:
        st = f.stat()
        h.update(f"{os.path.abspath(f)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    path = Path(cache_dir) / f"decoded-{size}px-{len(files)}-{h.hexdigest()[:24]}.npy"
    if path.exists():
        try:
            return np.load(path)  # the name holds the count and size; the key, every file's identity
        except (OSError, ValueError, EOFError):
            pass  # unreadable: decoded again and replaced below
    images = decode_all(files, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would keep other users' runs from sharing the cache
        with os.fdopen(fd, "wb") as out:
            np.save(out, images)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return images


def find_test_split(root: Path) -> Path:
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"image folder {root} has no test/ or val/ split")
