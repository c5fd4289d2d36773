"""train_one_epoch and evaluate (torchvision references style)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable

import torch

from training.methods import Method
from training.model import AuxNet


class Progress:
    """A progress line every `every` batches and at the end (a terminal's line is rewritten in place). Only
    when a line is due are the device's losses read: a read waits for the GPU to finish its queued work."""

    def __init__(self, total: int, label: str, every: int | None = None):
        self.total, self.label, self.tty = max(total, 1), label, sys.stderr.isatty()
        self.every = every or max(1, self.total // (20 if self.tty else 4))

    def due(self, done: int) -> bool:
        return done % self.every == 0 or done >= self.total

    def update(self, done: int, extra: str = "") -> None:
        if self.tty:
            bar = "#" * int(30 * done / self.total)
            end = "\n" if done >= self.total else ""
            print(f"\r{self.label} [{bar:<30}] {done}/{self.total} {extra}", end=end, file=sys.stderr, flush=True)
        else:
            print(f"{self.label} {done}/{self.total} {extra}", file=sys.stderr, flush=True)


# The first batches of a run carry one-off costs: torch.compile's compilation (a minute or more), CUDA-graph
# capture, the allocator's growth. Throughput is measured after them (the speed that sizes a schedule), and
# also reported with them.
WARMUP_BATCHES = 10


def train_one_epoch(method: Method, batches: Iterable, num_batches: int, label: str, quiet: bool = False,
                    ema=None, on_step: Callable[[int], None] | None = None) -> dict:
    """One pass; losses are summed on the device and read only for progress lines, once after the warm-up
    batches and at the end, so the host never waits for the device between steps (issue 10). `on_step(i)` is
    called after step i (1-based): training/profiling.py's StepProfiler."""
    method.model.train()
    sums, images, seen, start = None, 0, 0, time.perf_counter()
    warmup = min(WARMUP_BATCHES, num_batches // 4)
    steady_start, steady_images = start, 0
    progress = Progress(num_batches, label)
    for i, (x, y) in enumerate(batches, 1):
        losses = method.step(x, y)  # (outputs,) on the device
        if ema is not None:
            ema.update(method.model)
        weighted = losses.double() * len(y)
        sums = weighted if sums is None else sums + weighted
        images += len(y)
        seen = i
        if on_step is not None:
            on_step(i)
        if i == warmup:
            float(losses[-1])  # one wait for the device, so the steady clock starts with nothing queued
            steady_start, steady_images = time.perf_counter(), images
        if not quiet and progress.due(i):
            progress.update(i, f"loss {float(losses[-1]):.3f} {images / (time.perf_counter() - start):.0f} img/s")
    loss = (sums / max(images, 1)).tolist() if sums is not None else [0.0] * method.model.num_outputs
    end = time.perf_counter()  # after the read above, which waited for the device
    elapsed = end - start
    steady = (images - steady_images) / (end - steady_start) if images > steady_images else images / elapsed
    return {"loss": loss, "images_per_s": steady, "images_per_s_with_warmup": images / elapsed,
            "warmup_batches": warmup if images > steady_images else 0, "train_s": elapsed, "batches": seen}


@torch.no_grad()
def evaluate(model: AuxNet, batches: Iterable, autocast) -> dict:
    """Top-1 and top-5 error (%) of every output. Correct answers are counted on the device and read once at
    the end: no wait for the device per batch (issue 10)."""
    model.eval()
    top1, top5, n = None, None, 0
    for x, y in batches:
        with autocast():
            logits = model(x)
        best = [z.float().topk(min(5, z.shape[1]), dim=1).indices for z in logits]  # per output (B, 5)
        hits1 = torch.stack([(b[:, 0] == y).sum() for b in best])  # (outputs,)
        hits5 = torch.stack([(b == y[:, None]).any(1).sum() for b in best])
        top1, top5 = (hits1, hits5) if top1 is None else (top1 + hits1, top5 + hits5)
        n += len(y)
    if top1 is None:
        top1 = top5 = torch.zeros(model.num_outputs)
    top1, top5, d = top1.double().cpu(), top5.double().cpu(), max(n, 1)
    return {"top1_err": (100 - 100 * top1 / d).tolist(), "top5_err": (100 - 100 * top5 / d).tolist(), "images": n}


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
