"""Training-step throughput (images/s, batch 128) of every method side by side, fp32 and the fast mode.

    python -m bench.train_step [--device cpu|cuda] [--steps 5] [--rounds 3]

Configurations are interleaved round by round so that machine noise hits them alike; the table gives
the median over rounds and each one's time relative to a plain ResNet-56 step in the same precision.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from training.methods import OptimConfig, build_method
from training.precision import autocast_factory, pick_device
from training.presets import build_model, preset_config

CONFIGS = [
    ("resnet56", "none"),
    ("auxnet56_5", "none"),
    ("auxnet56_5", "joint"),
    ("auxnet56_5", "pairwise"),
    ("auxnet56_5", "multiway-reference"),
    ("auxnet56_5", "multiway"),
]


def make(preset, method, precision, device):
    torch.manual_seed(0)
    model = build_model(preset_config(preset)).to(device)
    if precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    m = build_method(method, model, OptimConfig(), autocast_factory(precision, device))
    x = torch.randn(128, 3, 32, 32, device=device)
    if precision == "bf16":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), device=device)
    return m, x, y


def time_steps(m, x, y, steps, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        m.step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precisions", default="fp32,bf16")
    args = p.parse_args()
    device = pick_device(args.device)
    precisions = args.precisions.split(",")
    setups = {(c, pr): make(*c, pr, device) for pr in precisions for c in CONFIGS}
    for s in setups.values():
        s[0].step(s[1], s[2])  # warm-up (allocator, autocast caches, cuDNN choice)
    times = {k: [] for k in setups}
    for _ in range(args.rounds):
        for k, (m, x, y) in setups.items():
            times[k].append(time_steps(m, x, y, args.steps, device))
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch 128, {args.steps} steps x {args.rounds} rounds, median")
    print("| model | method | precision | ms/step | images/s | x ResNet-56 step |")
    print("|---|---|---|---:|---:|---:|")
    for pr in precisions:
        base = statistics.median(times[(CONFIGS[0], pr)])
        for c in CONFIGS:
            t = statistics.median(times[(c, pr)])
            print(f"| {c[0]} | {c[1]} | {pr} | {1000 * t:.1f} | {128 / t:.0f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
