"""One entry point for every data set: train / validation / test splits plus how to normalise them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data.cifar import load_cifar
from training.data.folder import decode_all_cached, find_test_split, list_folder
from training.data.svhn import load_svhn
from training.data.synthetic import make_synthetic

DATASETS = ("cifar10", "cifar100", "svhn", "folder", "synthetic")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Folders with images at most this big are decoded into memory once; larger ones are read lazily.
IN_MEMORY_MAX_SIZE = 64


@dataclass
class Dataset:
    """Either in-memory uint8 images (N, H, W, 3) or a list of files read lazily; int64 labels."""

    labels: np.ndarray
    images: np.ndarray | None = None
    files: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.labels[idx], None if self.images is None else self.images[idx],
                       None if self.files is None else [self.files[i] for i in idx])


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]
    augment: str  # "cifar" (pad 4 + crop + flip), "none" (SVHN), "imagenet" (random-resized crop + flip)
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_indices: list[int] = field(default_factory=list)  # indices into the full training set

    def normalization(self) -> dict:
        return {"scale": 1 / 255, "mean": list(self.mean), "std": list(self.std), "layout": "NCHW",
                "channel_order": "RGB"}


def load_splits(
    name: str,
    root: str | Path | None = None,
    val_size: int = 5000,
    split_seed: int = 0,
    download: bool = False,
    val_indices: list[int] | None = None,
    synthetic_sizes: tuple[int, int] = (2048, 512),
    num_classes: int = 10,
    image_size: int = 32,
    decode_cache: str | Path | None = None,
) -> DataSplits:
    """Load a data set and carve a validation split from its training set (never from the test set).
    `val_indices`, when given (from a checkpoint), reproduces an earlier split exactly. `decode_cache`: a
    folder where small-image folders keep their decoded arrays (folder.decode_all_cached)."""
    root = Path(root) if root else Path("data")
    augment, size = "cifar", 32
    if name in ("cifar10", "cifar100"):
        tx, ty, sx, sy, classes = load_cifar(name, root, download)
    elif name == "svhn":
        tx, ty, sx, sy, classes = load_svhn(root, download)
        augment = "none"  # the paper trains SVHN without augmentation
    elif name == "synthetic":
        tx, ty, sx, sy, classes = make_synthetic(*synthetic_sizes, num_classes, image_size, seed=split_seed)
        size = image_size
    elif name == "folder":
        return _folder_splits(root, val_size, split_seed, val_indices, image_size, decode_cache)
    else:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    train, test = Dataset(ty, tx), Dataset(sy, sx)
    train, val, idx = _carve(train, val_size, split_seed, val_indices)
    if augment == "none":
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # SVHN: images scaled by 1/255 only (paper)
    else:
        mean, std = _channel_stats(train.images)
    return DataSplits(train, val, test, classes, augment, size, mean, std, idx)


def _folder_splits(root: Path, val_size: int, seed: int, val_indices, image_size: int, decode_cache) -> DataSplits:
    files, labels, classes = list_folder(root / "train")
    test_files, test_labels, _ = list_folder(find_test_split(root), classes)
    from PIL import Image

    with Image.open(files[0]) as im:
        native = max(im.size)
    if native <= IN_MEMORY_MAX_SIZE:
        train = Dataset(labels, decode_all_cached(files, native, decode_cache))
        test = Dataset(test_labels, decode_all_cached(test_files, native, decode_cache))
        train, val, idx = _carve(train, val_size, seed, val_indices)
        mean, std = _channel_stats(train.images)
        return DataSplits(train, val, test, classes, "cifar", native, mean, std, idx)
    train, val, idx = _carve(Dataset(labels, files=files), val_size, seed, val_indices)
    return DataSplits(train, val, Dataset(test_labels, files=test_files), classes, "imagenet", image_size,
                      IMAGENET_MEAN, IMAGENET_STD, idx)


def _carve(full: Dataset, val_size: int, seed: int, val_indices) -> tuple[Dataset, Dataset, list[int]]:
    n = len(full)
    if val_indices is None:
        if not 0 <= val_size < n:
            raise ValueError(f"validation split of {val_size} images must be in [0, {n}) for this training set")
        val_indices = sorted(np.random.default_rng(seed).permutation(n)[:val_size].tolist())
    elif val_indices and max(val_indices) >= n:
        raise ValueError(f"recorded validation index {max(val_indices)} is beyond the training set's {n} images")
    mask = np.ones(n, dtype=bool)
    mask[np.asarray(val_indices, dtype=np.int64)] = False
    return full.subset(np.flatnonzero(mask)), full.subset(np.asarray(val_indices, dtype=np.int64)), list(val_indices)


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images scaled to [0, 1], from each channel's histogram:
    exact integer sums, ~20x faster than a float64 copy of the images (5 s for CIFAR-10's 45,000 here)."""
    values = np.arange(256, dtype=np.float64) / 255
    means, stds = [], []
    for c in range(3):
        counts = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        n = counts.sum()
        mean = counts @ values / n
        means.append(mean)
        stds.append(np.sqrt(max(counts @ (values - mean) ** 2 / n, 0.0)))
    return tuple(round(float(v), 4) for v in means), tuple(round(float(v), 4) for v in stds)
