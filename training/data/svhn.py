"""SVHN cropped digits, the .mat files as distributed (train_32x32.mat, test_32x32.mat, extra_32x32.mat)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.download import fetch

# Official addresses and checksums (http://ufldl.stanford.edu/housenumbers/).
SOURCES = {
    "train": ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "eb5a983be6a315427106f1b1fb6a9b5f"),
    "extra": ("http://ufldl.stanford.edu/housenumbers/extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
}
CLASSES = [str(d) for d in range(10)]


def load_svhn_split(root: Path, split: str, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 32, 32, 3) and labels 0..9 (the files store digit 0 as label 10)."""
    from scipy.io import loadmat  # scipy only for this format

    url, md5 = SOURCES[split]
    path = root / url.rsplit("/", 1)[1]
    if not path.exists():
        if not download:
            raise FileNotFoundError(f"svhn: {path} does not exist; pass --download or fetch it from {url}")
        fetch(url, path, md5)
    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises several types for a broken file
        raise ValueError(f"{path} is not a readable MATLAB file ({e})") from e
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path} lacks the 'X' or 'y' variable; has {sorted(k for k in mat if not k.startswith('__'))}")
    x = np.ascontiguousarray(mat["X"].transpose(3, 0, 1, 2), dtype=np.uint8)  # (32,32,3,N) -> (N,32,32,3)
    y = mat["y"].reshape(-1).astype(np.int64) % 10
    if len(x) != len(y):
        raise ValueError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def load_svhn(root: Path, download: bool = False, use_extra: bool = False):
    train_x, train_y = load_svhn_split(root, "train", download)
    if use_extra:
        ex, ey = load_svhn_split(root, "extra", download)
        train_x, train_y = np.concatenate([train_x, ex]), np.concatenate([train_y, ey])
    test_x, test_y = load_svhn_split(root, "test", download)
    return train_x, train_y, test_x, test_y, CLASSES
