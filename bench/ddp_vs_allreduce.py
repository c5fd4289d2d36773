"""Data-parallel gradient averaging: the flat all-reduce after the backward (`--grad-sync allreduce`)
against torch's DistributedDataParallel, which all-reduces buckets during the backward (`--grad-sync ddp`).
Issue 10 asks for DDP unless the present all-reduce measures equal or better.

    python -m bench.ddp_vs_allreduce [--preset auxnet56_5] [--method multiway] [--global-batch 128]
                                     [--steps 12] [--rounds 2] [--world 2]

`world` gloo processes on this machine's CPU, one thread each, train the preset on synthetic CIFAR-size
batches; the two modes alternate, each round building a fresh model. Reported: median seconds per step,
and the all-reduce alone (the flat buffer of every gradient, timed outside the step). On GPUs (NCCL) the
ratio of communication to compute is larger, and DDP's overlap could matter more: not measured here (one
GPU at most is lent to this project).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def one_mode(args, ddp: bool) -> list[float]:
    from training.distributed import DistInfo, all_reduce_mean, shard, wrap_ddp
    from training.methods import OptimConfig, build_method
    from training.presets import build_model, preset_config

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = build_model(preset_config(args.preset))
    method = build_method(args.method, model, OptimConfig(), grad_sync=None if ddp else all_reduce_mean,
                          forward_module=wrap_ddp(model, torch.device("cpu")) if ddp else None)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.global_batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.global_batch,), generator=g)
    xs, ys = shard(x, y, DistInfo(rank, world, rank))
    times = []
    for i in range(args.steps + 3):
        dist.barrier()
        t = time.perf_counter()
        method.step(xs, ys)
        if i >= 3:  # warm-up: allocator, DDP's bucket rebuild after the first iteration
            times.append(time.perf_counter() - t)
    return times


def allreduce_alone(args) -> float:
    from training.distributed import all_reduce_mean
    from training.presets import build_model, preset_config

    grads = [torch.randn_like(p) for p in build_model(preset_config(args.preset)).parameters()]
    times = []
    for _ in range(20):
        dist.barrier()
        t = time.perf_counter()
        all_reduce_mean(grads)
        times.append(time.perf_counter() - t)
    return statistics.median(times[5:])


def worker(rank, args, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=args.world)
    try:
        runs = {"allreduce": [], "ddp": []}
        for _ in range(args.rounds):
            for mode in runs:
                runs[mode] += one_mode(args, mode == "ddp")
        comm = allreduce_alone(args)
        if rank == 0:
            json.dump({"runs": runs, "allreduce_s": comm}, open(out_file, "w"))
    finally:
        dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="auxnet56_5")
    p.add_argument("--method", default="multiway", choices=["none", "joint", "multiway"])
    p.add_argument("--global-batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--world", type=int, default=2)
    args = p.parse_args()
    folder = tempfile.mkdtemp()
    out = os.path.join(folder, "result.json")
    mp.spawn(worker, args=(args, os.path.join(folder, "init"), out), nprocs=args.world, join=True)
    r = json.load(open(out))
    med = {m: statistics.median(v) for m, v in r["runs"].items()}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.world} gloo processes, "
          f"1 thread each; {args.preset} {args.method}, global batch {args.global_batch}; {args.steps} timed steps "
          f"x {args.rounds} alternating rounds per mode")
    print("| gradient averaging | s/step (median) | x allreduce | steps/s |")
    print("|---|---:|---:|---:|")
    for m, v in med.items():
        print(f"| {m} | {v:.3f} | {v / med['allreduce']:.3f} | {1 / v:.2f} |")
    print(f"flat all-reduce of every gradient alone: {1000 * r['allreduce_s']:.1f} ms "
          f"({100 * r['allreduce_s'] / med['allreduce']:.1f}% of a step)")


if __name__ == "__main__":
    main()
