"""A small-image data set held on the training device as uint8, batched and augmented there (issue 10).

CIFAR-10's 50,000 training images are 150 MB as uint8: they fit on any GPU once, for the whole run. Each
epoch's permutation, crop offsets and flips are drawn in one go on the device from a generator seeded by
(seed, epoch), so no batch needs the host: no index copies, no per-step synchronisation, and a resumed run
sees exactly the batches of an uninterrupted one. On a CPU the same code runs, which is how it is tested.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from training.data.registry import Dataset, DataSplits

PAD = 4  # He et al. 2016: pad 4, random 32x32 crop, horizontal flip


class DeviceData:
    def __init__(self, ds: Dataset, splits: DataSplits, device: torch.device):
        if ds.images is None:
            raise ValueError("DeviceData holds in-memory images only; large-image folders stream from files")
        self.device = device
        self.images = torch.from_numpy(ds.images).to(device).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
        self.labels = torch.from_numpy(ds.labels).to(device)
        self.augment = splits.augment
        self.mean = torch.tensor(splits.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(splits.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int, drop_last: bool) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def batches(self, batch_size: int, train: bool, seed: int, drop_last: bool = False,
                channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x (B, 3, H, W) float normalised, y (B,)). `drop_last` keeps every batch the same shape, which
        torch.compile's CUDA graphs need."""
        n, (_, _, h, w) = len(self), self.images.shape
        gen = torch.Generator(device=self.device).manual_seed(seed)
        order = torch.randperm(n, generator=gen, device=self.device) if train else torch.arange(n, device=self.device)
        crop = train and self.augment == "cifar"
        if crop:  # the whole epoch's randomness at once
            offsets = torch.randint(0, 2 * PAD + 1, (2, n), generator=gen, device=self.device)
            flips = torch.rand(n, generator=gen, device=self.device) < 0.5
            ar_h, ar_w = torch.arange(h, device=self.device), torch.arange(w, device=self.device)
            channels = torch.arange(3, device=self.device)[None, :, None, None]
        stop = (n // batch_size) * batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            pos = slice(start, min(start + batch_size, n))
            idx = order[pos]
            x = self.images[idx]
            if crop:
                b = len(idx)
                padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))
                rows = (offsets[0, pos][:, None] + ar_h)[:, None, :, None]  # (B, 1, H, 1)
                cols = (offsets[1, pos][:, None] + ar_w)[:, None, None, :]  # (B, 1, 1, W)
                x = padded[torch.arange(b, device=self.device)[:, None, None, None], channels, rows, cols]
                x = torch.where(flips[pos][:, None, None, None], x.flip(3), x)
            x = (x.float() / 255 - self.mean) / self.std
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
