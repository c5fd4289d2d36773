"""Batches as normalised float tensors, with the paper's augmentation applied batch-wise."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from training.data.registry import Dataset, DataSplits

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)  # loader processes for large-image folders: no more than the cores


def iterate(
    ds: Dataset,
    splits: DataSplits,
    batch_size: int,
    train: bool,
    seed: int,
    device: torch.device,
    channels_last: bool = False,
    workers: int = DEFAULT_WORKERS,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x (B, 3, H, W) float normalised, y (B,)). Shuffling and augmentation draw from a generator
    seeded by `seed`, so epoch e of a resumed run sees exactly the batches of an uninterrupted one."""
    gen = torch.Generator().manual_seed(seed)
    if ds.images is None:
        yield from _iterate_files(ds, splits, batch_size, train, gen, device, channels_last, workers)
        return
    images = torch.from_numpy(ds.images)
    labels = torch.from_numpy(ds.labels)
    if device.type == "cuda":  # a CIFAR-sized set fits on the GPU; gathering there avoids a copy per batch
        images, labels = images.to(device), labels.to(device)
    order = torch.randperm(len(ds), generator=gen) if train else torch.arange(len(ds))
    mean = torch.tensor(splits.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(splits.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    for start in range(0, len(ds), batch_size):
        idx = order[start : start + batch_size].to(images.device)
        x = images[idx].to(device, non_blocking=True).permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
        if train and splits.augment == "cifar":
            x = pad_crop_flip(x, gen)
        x = (x.float() / 255 - mean) / std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, labels[idx].to(device, non_blocking=True)


def pad_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Zero-pad by `pad`, crop back at a random offset, flip half horizontally (He et al. 2016)."""
    b, c, h, w = x.shape
    off = torch.randint(0, 2 * pad + 1, (2, b), generator=gen).to(x.device)
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (off[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (off[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    out = padded[torch.arange(b, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class _FileDataset(torch.utils.data.Dataset):
    """The standard ImageNet recipe: random-resized crop + flip to train, resize 256 + centre crop to test."""

    def __init__(self, ds: Dataset, splits: DataSplits, train: bool, seed: int):
        self.ds, self.splits, self.train, self.seed = ds, splits, train, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        from PIL import Image

        size = self.splits.image_size
        rng = np.random.default_rng((self.seed, i))
        with Image.open(self.ds.files[i]) as im:
            im = im.convert("RGB")
            if self.train:
                im = _random_resized_crop(im, size, rng)
                if rng.random() < 0.5:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
            else:
                short = round(size * 256 / 224)
                scale = short / min(im.size)
                im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BILINEAR)
                left, top = (im.width - size) // 2, (im.height - size) // 2
                im = im.crop((left, top, left + size, top + size))
            x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        return x, int(self.ds.labels[i])


def _random_resized_crop(im, size: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    from PIL import Image

    area = im.width * im.height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = round(np.sqrt(target * aspect)), round(np.sqrt(target / aspect))
        if 0 < w <= im.width and 0 < h <= im.height:
            left, top = rng.integers(0, im.width - w + 1), rng.integers(0, im.height - h + 1)
            return im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    return im.resize((size, size), Image.BILINEAR)


def _iterate_files(ds, splits, batch_size, train, gen, device, channels_last, workers):
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    sampler_gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        _FileDataset(ds, splits, train, seed), batch_size=batch_size, shuffle=train, generator=sampler_gen,
        num_workers=workers, pin_memory=device.type == "cuda",
    )
    mean = torch.tensor(splits.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(splits.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    for x, y in loader:
        x = (x.to(device, non_blocking=True).float() / 255 - mean) / std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y.to(device, non_blocking=True)
