"""Throughput as measured by train_one_epoch: the first batches' one-off costs (torch.compile, CUDA-graph
capture) are excluded from `images_per_s`, which sizes the GPU schedule (bench/gpu/paper_runs.sh), and kept
in `images_per_s_with_warmup`."""

import time

import pytest
import torch

from training.engine import WARMUP_BATCHES, train_one_epoch


class SlowStart:
    """A method whose first `slow` steps take `first_s` each (a compile), the rest `step_s`."""

    def __init__(self, slow: int, first_s: float, step_s: float):
        self.model = torch.nn.Linear(1, 1)
        self.model.num_outputs = 2
        self.slow, self.first_s, self.step_s, self.calls = slow, first_s, step_s, 0

    def step(self, x, y):
        self.calls += 1
        time.sleep(self.first_s if self.calls <= self.slow else self.step_s)
        return torch.tensor([1.0, 0.5])


def batches(n, size=8):
    return [(torch.zeros(size, 1), torch.zeros(size, dtype=torch.long)) for _ in range(n)]


def test_steady_throughput_leaves_out_the_warm_up_batches():
    n = 60
    stats = train_one_epoch(SlowStart(slow=3, first_s=0.3, step_s=0.002), batches(n), n, "t", quiet=True)
    assert stats["warmup_batches"] == WARMUP_BATCHES == 10 and stats["batches"] == n
    # After the warm-up every step takes ~2 ms: ~4,000 img/s of 8-image batches (sleep overshoots a little).
    assert 1500 < stats["images_per_s"] < 4100
    # With the warm-up, 0.9 s of 'compile' dominate: 480 images in ~1 s.
    assert stats["images_per_s_with_warmup"] < 600
    assert stats["loss"] == pytest.approx([1.0, 0.5])


def test_short_epochs_measure_everything():
    stats = train_one_epoch(SlowStart(slow=0, first_s=0.0, step_s=0.001), batches(3), 3, "t", quiet=True)
    assert stats["warmup_batches"] == 0 and stats["images_per_s"] == stats["images_per_s_with_warmup"]
