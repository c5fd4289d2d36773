"""CIFAR-10/100 in the python (pickle) format as distributed: the extracted folder or the .tar.gz."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from training.data.download import fetch

# Official addresses and checksums (https://www.cs.toronto.edu/~kriz/cifar.html).
SOURCES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                b"labels", b"label_names"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                 "cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names"),
}


def load_cifar(name: str, root: Path, download: bool = False):
    """Return (train_x, train_y, test_x, test_y, classes); images uint8 (N, 32, 32, 3)."""
    url, md5, folder, train_files, test_files, meta, label_key, names_key = SOURCES[name]
    archive = root / url.rsplit("/", 1)[1]
    if (root / folder).is_dir():
        read = lambda f: (root / folder / f).read_bytes()  # noqa: E731
    else:
        if not archive.exists():
            if not download:
                raise FileNotFoundError(
                    f"{name}: neither {root / folder}/ nor {archive} exists; pass --download or put the "
                    f"python-format release from {url} there"
                )
            fetch(url, archive, md5)
        members = _read_tar(archive)
        read = lambda f: _member(members, archive, f"{folder}/{f}")  # noqa: E731

    def batches(files):
        xs, ys = [], []
        for f in files:
            d = _unpickle(read(f), f)
            if b"data" not in d or label_key not in d:
                raise ValueError(f"{name} batch {f} lacks {b'data'!r} or {label_key!r}; keys: {sorted(d)}")
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    train_x, train_y = batches(train_files)
    test_x, test_y = batches(test_files)
    classes = [c.decode() for c in _unpickle(read(meta), meta)[names_key]]
    return train_x, train_y, test_x, test_y, classes


def _read_tar(archive: Path) -> dict[str, bytes]:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{archive} is not a readable .tar.gz ({e})") from e


def _member(members: dict[str, bytes], archive: Path, name: str) -> bytes:
    if name not in members:
        raise ValueError(f"{archive} has no member {name}; it holds {sorted(members)[:8]}")
    return members[name]


def _unpickle(raw: bytes, what: str) -> dict:
    try:
        return pickle.load(io.BytesIO(raw), encoding="bytes")
    except Exception as e:  # any unpickling failure means the file is not a CIFAR batch
        raise ValueError(f"CIFAR file {what} is not a valid python pickle ({e})") from e
