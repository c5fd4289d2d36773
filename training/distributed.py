"""Data-parallel training under torchrun (NCCL on GPUs, gloo on CPUs), two ways to average gradients.

`--grad-sync allreduce` (every method): after a method computes its (per-output) gradients on its shard,
`all_reduce_mean` flattens them into one buffer, all-reduces it once (sum), divides by the world size and
writes it back. DDP's reducer expects exactly one backward pass per iteration, and the multi-way reference
takes one `autograd.grad` per output and pair-wise one backward per output, so those need this path.
`--grad-sync ddp` (the one-backward methods: none, joint, multiway): torch's DistributedDataParallel
around the model, whose buckets all-reduce during the backward pass, overlapping it. Both give the weights
of one process with the same global batch (tests/training/test_distributed.py); what each costs:
bench/ddp_vs_allreduce.py. Each rank holds the
same weights and optimizer states (same seed, same averaged gradients), so every per-output SGD step is
taken identically everywhere. Because each shard has the same size, the mean of the shard gradients is
the gradient of the global batch's mean loss: with batch statistics that agree (SyncBatchNorm on GPUs),
N processes give the weights of one process with the same global batch.

Sampling: every rank draws the same global batch order and augmentation from the shared seed and keeps
the samples `rank::world` of each global batch (DistributedSampler semantics, global batch = --batch-size).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Average `tensors` across ranks in place with one all-reduce."""
    if not tensors or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` for the forward pass. Buffers (batch-norm running statistics)
    are not broadcast each step, as on the all-reduce path: each rank keeps its own and rank 0's are saved."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # torch 2.13 renamed the option (broadcast_model has made the buffers equal at the start either way)
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    return DistributedDataParallel(model, device_ids=ids, **{no_sync: False})


def shard(x: torch.Tensor, y: torch.Tensor, info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    if not info.enabled:
        return x, y
    if len(y) % info.world:
        raise ValueError(f"a batch of {len(y)} images does not split evenly over {info.world} processes; "
                         "use a --batch-size (and data set size) divisible by the number of processes")
    return x[info.rank :: info.world], y[info.rank :: info.world]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_model(model: torch.nn.Module) -> None:
    """Start every rank from rank 0's weights and buffers (seeded init makes them equal already)."""
    if dist.is_initialized():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, 0)
