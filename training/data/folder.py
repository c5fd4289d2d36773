"""Image-folder trees: root/<split>/<class>/<image>, e.g. ../shared/data/cifar10-jpeg or ImageNet-100."""

from __future__ import annotations

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


def find_test_split(root: Path) -> Path:
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"image folder {root} has no test/ or val/ split")
