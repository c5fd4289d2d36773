"""Synthetic images with a learnable class signal, for smoke tests and benchmarks without data."""

from __future__ import annotations

import numpy as np


def make_synthetic(n_train: int, n_test: int, num_classes: int, size: int, seed: int = 0):
    """Each class has its own colour and stripe orientation plus noise, so a net can learn it quickly."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(40, 216, size=(num_classes, 1, 1, 3))
    yy, xx = np.mgrid[0:size, 0:size]

    def draw(n):
        y = rng.integers(0, num_classes, n)
        angle = y[:, None, None] * np.pi / num_classes
        stripes = 40 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 0.8)
        x = protos[y] + stripes[..., None] + rng.normal(0, 30, (n, size, size, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return train_x, train_y, test_x, test_y, [f"class{i}" for i in range(num_classes)]
