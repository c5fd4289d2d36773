"""train_one_epoch and evaluate (torchvision references style)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

import torch

from training.methods import Method
from training.model import AuxNet


class Progress:
    """A one-line progress bar on a terminal, a line per 25% otherwise (logs stay readable)."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.tty = max(total, 1), label, sys.stderr.isatty()
        self.last_quarter = -1

    def update(self, done: int, extra: str = "") -> None:
        frac = done / self.total
        if self.tty:
            bar = "#" * int(30 * frac)
            print(f"\r{self.label} [{bar:<30}] {done}/{self.total} {extra}", end="", file=sys.stderr, flush=True)
            if done >= self.total:
                print(file=sys.stderr)
        elif int(frac * 4) > self.last_quarter:
            self.last_quarter = int(frac * 4)
            print(f"{self.label} {done}/{self.total} {extra}", file=sys.stderr, flush=True)


def train_one_epoch(method: Method, batches: Iterable, num_batches: int, label: str, quiet: bool = False) -> dict:
    method.model.train()
    sums = torch.zeros(method.model.num_outputs, dtype=torch.float64)
    images, seen, start = 0, 0, time.perf_counter()
    progress = Progress(num_batches, label)
    for i, (x, y) in enumerate(batches, 1):
        losses = method.step(x, y)
        sums += torch.tensor(losses, dtype=torch.float64) * len(y)
        images += len(y)
        seen = i
        if not quiet:
            progress.update(i, f"loss {losses[-1]:.3f} {images / (time.perf_counter() - start):.0f} img/s")
    elapsed = time.perf_counter() - start
    return {"loss": (sums / max(images, 1)).tolist(), "images_per_s": images / elapsed, "train_s": elapsed,
            "batches": seen}


@torch.no_grad()
def evaluate(model: AuxNet, batches: Iterable, autocast) -> dict:
    """Top-1 and top-5 error (%) of every output."""
    model.eval()
    k = model.num_outputs
    top1, top5, n = torch.zeros(k), torch.zeros(k), 0
    for x, y in batches:
        with autocast():
            logits = model(x)
        for i, z in enumerate(logits):
            best = z.float().topk(min(5, z.shape[1]), dim=1).indices
            top1[i] += (best[:, 0] == y).sum().item()
            top5[i] += (best == y[:, None]).any(1).sum().item()
        n += len(y)
    n = max(n, 1)
    return {"top1_err": (100 - 100 * top1 / n).tolist(), "top5_err": (100 - 100 * top5 / n).tolist(), "images": n}


@torch.no_grad()
def collect_logits(model: AuxNet, batches: Iterable) -> tuple[list[torch.Tensor], torch.Tensor]:
    """fp32 logits of every output over a whole split (calibration)."""
    model.eval()
    outs, ys = None, []
    for x, y in batches:
        logits = [z.float().cpu() for z in model(x)]
        outs = [[z] for z in logits] if outs is None else [o + [z] for o, z in zip(outs, logits)]
        ys.append(y.cpu())
    return [torch.cat(o) for o in outs], torch.cat(ys)
