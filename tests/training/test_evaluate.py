"""training.engine.evaluate: top-1 / top-5 error of every output, counted by hand."""

import contextlib

import torch

from training.engine import evaluate


class FixedOutputs(torch.nn.Module):
    """Two outputs whose logits are given per batch: output 0 ranks class (label + 1) first and the label
    sixth of 7 classes (a top-5 miss too), output 1 ranks the label second on odd images, first on even."""

    num_outputs = 2

    def forward(self, x):
        y = x[:, 0].long()
        n = len(y)
        rows = torch.arange(n)
        z0 = torch.zeros(n, 7)
        z0[rows, (y + 1) % 7] = 10
        for r, step in enumerate((2, 3, 4, 5)):  # four more classes outrank the label
            z0[rows, (y + step) % 7] = 9 - r
        z0[rows, y] = 1
        z1 = torch.zeros(n, 7)
        z1[rows, y] = 5
        odd = rows % 2 == 1
        z1[rows[odd], (y[odd] + 1) % 7] = 6
        return [z0, z1]


def test_errors_by_hand_over_uneven_batches():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 1, 2])
    batches = [(labels[:4, None].float(), labels[:4]), (labels[4:, None].float(), labels[4:])]  # 4 + 6 images
    out = evaluate(FixedOutputs(), iter(batches), contextlib.nullcontext)
    assert out["images"] == 10
    # Output 0: never first, never in the top 5. Output 1: first on the 5 even images, second on the 5 odd.
    assert out["top1_err"] == [100.0, 50.0]
    assert out["top5_err"] == [100.0, 0.0]


def test_no_batches_gives_full_error_not_a_crash():
    out = evaluate(FixedOutputs(), iter(()), contextlib.nullcontext)
    assert out["images"] == 0 and out["top1_err"] == [100.0, 100.0]
