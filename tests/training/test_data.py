"""Each loader reads files that the test writes in the real distributed format (issue 2, item 5)."""

import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import load_splits
from training.data.batches import iterate, pad_crop_flip
from training.data.download import fetch, md5sum


def cifar_batch(n, seed, label_key=b"labels"):
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: rng.integers(0, 10, n).tolist(),
            b"batch_label": b"test"}


def write_cifar10_folder(root):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(cifar_batch(20, i)))
    (d / "test_batch").write_bytes(pickle.dumps(cifar_batch(10, 9)))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return d


def test_cifar10_folder_reads_pixels_in_hwc_order(tmp_path):
    d = write_cifar10_folder(tmp_path)
    s = load_splits("cifar10", tmp_path, val_size=10, split_seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (90, 10, 10)
    assert s.classes[0] == "airplane" and s.augment == "cifar"
    raw = pickle.loads((d / "test_batch").read_bytes())
    first = raw[b"data"][0]
    # CIFAR rows are 1024 R, then 1024 G, then 1024 B values, row-major.
    assert s.test.images[0, 0, 1, 0] == first[1] and s.test.images[0, 0, 0, 2] == first[2048]
    assert s.test.labels.tolist() == raw[b"labels"]


def test_cifar10_tar_gz_equals_folder(tmp_path):
    write_cifar10_folder(tmp_path / "src")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    a = load_splits("cifar10", tmp_path, val_size=10)
    b = load_splits("cifar10", tmp_path / "src", val_size=10)
    assert np.array_equal(a.train.images, b.train.images) and a.val_indices == b.val_indices


def test_cifar100_fine_labels(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    (d / "train").write_bytes(pickle.dumps(cifar_batch(30, 1, b"fine_labels")))
    (d / "test").write_bytes(pickle.dumps(cifar_batch(10, 2, b"fine_labels")))
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}))
    s = load_splits("cifar100", tmp_path, val_size=5)
    assert len(s.classes) == 100 and len(s.train) == 25


def test_cifar_corrupt_and_missing_files_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --download"):
        load_splits("cifar10", tmp_path)
    d = write_cifar10_folder(tmp_path)
    (d / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3 is not a valid python pickle"):
        load_splits("cifar10", tmp_path, val_size=10)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "cifar-10-python.tar.gz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable .tar.gz"):
        load_splits("cifar10", tmp_path / "x")


def test_svhn_mat_label_10_is_digit_0_and_no_augmentation(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 8)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10]] + [[int(v)] for v in rng.integers(1, 11, n - 1)], dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    s = load_splits("svhn", tmp_path, val_size=4)
    assert s.augment == "none" and s.mean == (0.0, 0.0, 0.0) and s.std == (1.0, 1.0, 1.0)
    assert s.test.labels[0] == 0 and s.test.images.shape == (8, 32, 32, 3)
    from scipy.io import loadmat

    assert np.array_equal(s.test.images[3], loadmat(tmp_path / "test_32x32.mat")["X"][..., 3])


def write_image_folder(root, size, n_per_class=3, suffix=".png"):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n_per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / c / f"{i}{suffix}")


def test_small_image_folder_is_decoded_into_memory(tmp_path):
    write_image_folder(tmp_path, 32)
    s = load_splits("folder", tmp_path, val_size=2)
    assert s.classes == ["cat", "dog"] and s.train.images.shape == (4, 32, 32, 3)
    assert np.array_equal(s.test.images[0], np.asarray(Image.open(tmp_path / "test/cat/0.png")))


def test_decode_cache_serves_the_same_pixels_without_decoding_and_notices_changes(tmp_path, monkeypatch):
    import os

    import training.data.folder as folder

    root, cache = tmp_path / "data", tmp_path / "cache"
    write_image_folder(root, 32)
    first = load_splits("folder", root, val_size=2, decode_cache=cache)
    assert len(list(cache.glob("decoded-32px-*.npy"))) == 2  # train and test
    assert not list(cache.glob("*.tmp"))

    def refuse(files, size):
        raise AssertionError("decoded although the cache holds these files")

    monkeypatch.setattr(folder, "decode_all", refuse)
    again = load_splits("folder", root, val_size=2, decode_cache=cache)
    assert np.array_equal(again.train.images, first.train.images)
    assert np.array_equal(again.test.images, first.test.images)

    # One image replaced (new pixels, new modification time): decoded afresh, not served stale.
    monkeypatch.undo()
    changed = root / "train" / "cat" / "0.png"
    Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))
    fresh = load_splits("folder", root, val_size=0, decode_cache=cache)
    assert np.array_equal(fresh.train.images[0], np.full((32, 32, 3), 7, dtype=np.uint8))

    # A damaged cache file is decoded again and replaced, not trusted.
    for i, f in enumerate(sorted(cache.glob("*.npy"))):
        f.write_bytes(b"not an array" if i % 2 else b"")  # garbage, or empty as a full disk leaves it
    repaired = load_splits("folder", root, val_size=0, decode_cache=cache)
    assert np.array_equal(repaired.train.images, fresh.train.images)
    readable = []
    for f in cache.glob("*.npy"):  # the two in use rewritten; the one of the folder before the change stays as left
        try:
            readable.append(np.load(f).shape)
        except (ValueError, EOFError):
            pass
    assert readable == [(6, 32, 32, 3), (6, 32, 32, 3)]  # train (val_size 0) and test


def test_large_image_folder_uses_imagenet_recipe(tmp_path):
    write_image_folder(tmp_path, 96, suffix=".jpg")
    s = load_splits("folder", tmp_path, val_size=2, image_size=64)
    assert s.augment == "imagenet" and s.train.files is not None
    batches = list(iterate(s.train, s, 4, True, 0, torch.device("cpu"), workers=0))
    assert batches[0][0].shape == (4, 3, 64, 64)
    x, _ = next(iterate(s.test, s, 6, False, 0, torch.device("cpu"), workers=0))
    assert x.shape == (6, 3, 64, 64)


def test_validation_split_is_reproducible_and_disjoint():
    a = load_splits("synthetic", val_size=100, split_seed=1)
    b = load_splits("synthetic", val_size=999, split_seed=1, val_indices=a.val_indices)
    assert a.val_indices == b.val_indices and len(a.val) == 100
    assert len(a.train) + len(a.val) == 2048


def test_pad_crop_flip_moves_pixels_not_values():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    out = pad_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for img, src in zip(out, x):  # every non-padding value comes from the source image
        vals = set(img.flatten().tolist()) - {0.0}
        assert vals <= set(src.flatten().tolist()) and len(vals) >= 3 * 4 * 4


def test_fetch_without_network_and_checksum_errors(tmp_path):
    with pytest.raises(RuntimeError, match="could not download http://127.0.0.1:9/x.tar.gz"):
        fetch("http://127.0.0.1:9/x.tar.gz", tmp_path / "x.tar.gz", "0" * 32, timeout_s=2)
    assert not (tmp_path / "x.tar.gz.part").exists()
    f = tmp_path / "y.bin"
    f.write_bytes(b"abc")
    assert fetch("http://unused", f, md5sum(f)) == f
    with pytest.raises(ValueError, match="expected 0000"):
        fetch("http://unused", f, "0" * 32)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="valid: cifar10, cifar100, svhn, folder, synthetic"):
        load_splits("mnist")


def test_channel_statistics_by_hand_and_against_float_arithmetic():
    from training.data.registry import _channel_stats

    x = np.zeros((4, 2, 2, 3), dtype=np.uint8)  # channel 0: all 0
    x[:2, ..., 1] = 255  # channel 1: half 0, half 255 -> mean 0.5, std 0.5
    x[..., 2] = 51  # channel 2: all 51 = 0.2 -> mean 0.2, std 0
    assert _channel_stats(x) == ((0.0, 0.5, 0.2), (0.0, 0.5, 0.0))
    rng = np.random.default_rng(3)
    for _ in range(10):
        y = rng.integers(0, 256, (20, 5, 5, 3), dtype=np.uint8) // rng.integers(1, 9)
        direct = y.reshape(-1, 3).astype(np.float64) / 255
        mean, std = _channel_stats(y)
        assert np.allclose(mean, direct.mean(0), atol=5e-5 + 1e-12) and np.allclose(std, direct.std(0), atol=5e-5 + 1e-12)
