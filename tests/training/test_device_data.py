"""Device-resident batches (issue 10): deterministic per seed, real crops and flips, static shapes on demand."""

import numpy as np
import pytest
import torch

from training.data import load_splits
from training.data.device import PAD, DeviceData


@pytest.fixture(scope="module")
def data():
    splits = load_splits("synthetic", val_size=64, split_seed=0)
    return splits, DeviceData(splits.train, splits, torch.device("cpu"))


def raw(x, splits):
    """Back from normalised floats to uint8 pixels."""
    mean = torch.tensor(splits.mean).view(1, 3, 1, 1)
    std = torch.tensor(splits.std).view(1, 3, 1, 1)
    return torch.round((x * std + mean) * 255).to(torch.uint8)


def test_same_seed_same_batches_other_seed_other_order(data):
    _, d = data
    a = list(d.batches(100, True, seed=7))
    b = list(d.batches(100, True, seed=7))
    c = list(d.batches(100, True, seed=8))
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    assert sum(len(y) for _, y in a) == len(d)  # every image once per epoch


def test_training_crops_are_windows_of_the_padded_image_maybe_flipped(data):
    splits, d = data
    x, y = next(d.batches(16, True, seed=3))
    order = torch.randperm(len(d), generator=torch.Generator().manual_seed(3))[:16]
    assert torch.equal(y, d.labels[order])
    pixels = raw(x, splits)
    flipped = 0
    for i, j in enumerate(order.tolist()):
        padded = torch.nn.functional.pad(d.images[j], (PAD, PAD, PAD, PAD))
        windows = [(padded[:, r:r + 32, c:c + 32], f) for r in range(2 * PAD + 1) for c in range(2 * PAD + 1)
                   for f in (False, True)]
        hits = [f for w, f in windows if torch.equal(w.flip(2) if f else w, pixels[i])]
        assert hits, f"sample {i} is not a crop of image {j}"
        flipped += hits[0]
    assert 0 < flipped < 16  # flips happen, to about half


def test_evaluation_batches_are_in_order_and_untouched(data):
    splits, d = data
    x, y = next(d.batches(32, False, seed=0))
    assert torch.equal(y, d.labels[:32]) and torch.equal(raw(x, splits), d.images[:32])


def test_drop_last_keeps_every_batch_the_same_shape(data):
    _, d = data
    sizes = [len(y) for _, y in d.batches(500, True, seed=1, drop_last=True)]
    assert sizes == [500] * (len(d) // 500) and d.num_batches(500, True) == len(sizes)
    assert d.num_batches(500, False) == -(-len(d) // 500)


def test_channels_last_layout(data):
    _, d = data
    x, _ = next(d.batches(8, True, seed=0, channels_last=True))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
    assert np.isfinite(x.numpy()).all()
