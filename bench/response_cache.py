"""What the response cache (--response-cache-mb) buys when images repeat: the real server with and without it,
alternating, under a closed loop that sends each of U unique CIFAR-10 test JPEGs R times (in order, so every
image after the first pass is a repeat), with the calibrated policy.

    python -m bench.response_cache [--unique 500] [--repeats 4] [--concurrency 16] [--rounds 2] [--cache-mb 16]

Reported per variant: images/s, client p50/p99, accuracy, and the server's cache hits and misses (its /metrics).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import urllib.request

import numpy as np

from bench.serving import add_image_args, exit_on_sigterm, load_test_images
from server.demo import start_server
from server.loadgen import closed_loop
from server.repository import list_models, load_manifest


def cache_lookups(metrics_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    out = {"hit": 0.0, "miss": 0.0}
    for line in text.splitlines():
        if line.startswith("auxnet_response_cache_lookups_total{"):
            result = line.split('result="')[1].split('"')[0]
            out[result] += float(line.rsplit(" ", 1)[1])
    return out


def measure(args, images, labels, classes, extra: list[str]) -> dict:
    proc, target, metrics_port = start_server(args.repo, ["--monitor-fraction", "0", "--http-port", "-1", *extra], quiet=True)
    try:
        closed_loop(target, images[-64:], args.concurrency, 200)  # warm-up on images not sent below
        sent = images[: args.unique]
        results, wall = closed_loop(target, sent, args.concurrency, args.unique * args.repeats, calibrated_policy=True)
        lookups = cache_lookups(metrics_port)
    finally:
        proc.terminate()
        proc.wait(30)
    ok = [r for r in results if r.ok]
    ms = np.array([r.client_ms for r in ok])
    right = sum(classes[r.label] == labels[r.index % args.unique] for r in ok)
    return {"ips": len(ok) / wall, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "acc": right / len(ok), "errors": len(results) - len(ok), **lookups}


def main() -> None:
    exit_on_sigterm()
    p = argparse.ArgumentParser()
    add_image_args(p, per_class=60)
    p.add_argument("--unique", type=int, default=500)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cache-mb", type=float, default=16)
    args = p.parse_args()
    images, labels = load_test_images(args.data, args.per_class)
    order = np.random.default_rng(0).permutation(len(images))  # classes mixed, not in folder order
    images, labels = [images[i] for i in order], [labels[i] for i in order]
    if args.unique + 64 > len(images):
        raise SystemExit(f"--unique {args.unique} needs {args.unique + 64} images; raise --per-class")
    classes = load_manifest(list_models(args.repo)[0]).classes
    variants = {"no cache": [], f"--response-cache-mb {args.cache_mb:g}": ["--response-cache-mb", str(args.cache_mb)]}
    runs = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, extra in variants.items():
            runs[name].append(measure(args, images, labels, classes, extra))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared by server and "
          f"{args.concurrency} client threads; {args.unique} unique CIFAR-10 test JPEGs sent {args.repeats} times each "
          f"in order, calibrated policy; {args.rounds} alternating rounds (medians; per round in brackets)")
    print("| variant | img/s | client p50 ms | client p99 ms | accuracy | cache hits / misses | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    def col(rs: list[dict], k: str, f: str) -> str:
        return f"{statistics.median(r[k] for r in rs):{f}} ({' '.join(f'{r[k]:{f}}' for r in rs)})"

    for name, rs in runs.items():
        print(f"| {name} | {col(rs, 'ips', '.0f')} | {col(rs, 'p50', '.2f')} | {col(rs, 'p99', '.2f')} | {col(rs, 'acc', '.3f')} | "
              f"{rs[-1]['hit']:.0f} / {rs[-1]['miss']:.0f} | {sum(r['errors'] for r in rs)} |")


if __name__ == "__main__":
    main()
