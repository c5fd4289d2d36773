"""Latency budgets at a given load (issue 14's "p99 within a 5 ms budget at 70% of capacity"): capacity is
measured first (closed loop, the calibrated policy, no budget: the full-quality operating point); then
requests arrive open-loop at Poisson times at a fraction of it, with and without a latency budget.

    python -m bench.budget_at_load [--budget-ms 5] [--load 0.7] [--seconds 10] [--client-procs 1]
                                   [--server-args '--device cuda --max-batch 64']

Reported per phase: offered and answered rates, client p50/p99, server-side p99, the share of answers within
the budget, accuracy, the exit histogram, and where the answers that missed the budget came from (and by how
much they missed: server time minus budget). The open loop runs in --client-procs processes, each at its
share of the rate (one asyncio process cannot offer more than a few thousand requests a second).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

from bench.overload import open_loop
from bench.serving import add_image_args, exit_on_sigterm, load_test_images
from server.client import Client
from server.demo import start_server
from server.loadgen import closed_loop_procs, summarise


def _open_loop_part(target, images, rate, seconds, seed, kw):
    return asyncio.run(open_loop(target, images, rate, seconds, poisson_seed=seed, **kw))


def offered(target, images, rate, seconds, procs, kw) -> tuple[list, float]:
    if procs <= 1:
        return _open_loop_part(target, images, rate, seconds, 0, kw)
    with ProcessPoolExecutor(procs) as pool:
        parts = list(pool.map(_open_loop_part, *zip(*[(target, images, rate / procs, seconds, s, kw) for s in range(procs)])))
    merged = [r for results, _ in parts for r in results]
    return merged, max(sent for _, sent in parts)


def row(name, results, sent_s, labels, exits, budget_ms):
    ok = [r for r in results if r[0] == "OK"]
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")  # noqa: E731
    client, server = [r[1] for r in ok], [r[3] for r in ok]
    within = sum(r[1] <= budget_ms for r in ok) / max(len(ok), 1) if budget_ms else float("nan")
    met = sum(r[2] for r in ok) / max(len(ok), 1)  # the server's own budget_met (arrival to answer)
    accuracy = sum(r[5] == labels[r[4] % len(labels)] for r in ok) / max(len(ok), 1)
    hist = Counter(r[6] for r in ok)
    missed = [r for r in ok if not r[2]]
    # Where the misses answered, and by how much: at exit 0 the wait before the first exit was already too
    # long; deeper, the engine chose to go on and its finish prediction was too optimistic.
    miss_hist = Counter(r[6] for r in missed)
    misses = (" / ".join(f"{100 * miss_hist.get(k, 0) / len(missed):.0f}%" for k in range(exits))
              + f"; late by p50 {q([r[3] - budget_ms for r in missed], 0.5):.2f} ms") if missed and budget_ms else "-"
    codes = Counter(r[0] for r in results if r[0] != "OK")
    print(f"| {name} | {len(results) / sent_s:.0f} | {len(ok) / sent_s:.0f} | {q(client, 0.5):.2f} | {q(client, 0.99):.2f} | "
          f"{q(server, 0.99):.2f} | {100 * within:.1f}% | {100 * met:.1f}% | {100 * accuracy:.1f}% | "
          f"{' / '.join(f'{100 * hist.get(k, 0) / max(len(ok), 1):.0f}%' for k in range(exits))} | {misses} | "
          f"{', '.join(f'{k} {v}' for k, v in sorted(codes.items())) or '-'} |")


def main() -> None:
    exit_on_sigterm()
    p = argparse.ArgumentParser()
    add_image_args(p, per_class=50)
    p.add_argument("--budget-ms", type=float, default=5.0)
    p.add_argument("--load", type=float, default=0.7, help="offered rate as a fraction of the measured capacity")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop clients measuring capacity")
    p.add_argument("--requests", type=int, default=2000, help="closed-loop requests measuring capacity")
    p.add_argument("--client-procs", type=int, default=1)
    p.add_argument("--server-args", default="")
    args = p.parse_args()
    images, names = load_test_images(args.data, args.per_class)
    proc, target, _ = start_server(args.repo, args.server_args.split(), quiet=True)
    try:
        with Client(target) as c:
            info = c.model_info()
        labels = [list(info.classes).index(n) for n in names]
        policy = {"calibrated_policy": True}
        closed_loop_procs(target, images[:64], args.concurrency, 300, 1, **policy)  # warm-up
        res, wall = closed_loop_procs(target, images, args.concurrency, args.requests, args.client_procs, **policy)
        capacity = summarise(res, wall, labels, len(info.exits))["throughput_rps"]
        rate = args.load * capacity
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared by server and clients; "
              f"server args '{args.server_args}'; capacity (closed loop, {args.concurrency} clients, calibrated policy, "
              f"no budget): {capacity:.0f} img/s; offered: {100 * args.load:.0f}% of it = {rate:.0f} req/s, Poisson "
              f"arrivals, {args.seconds:.0f} s per phase, {args.client_procs} client process(es)")
        print("| phase | offered req/s | answered req/s | p50 ms (client) | p99 ms (client) | p99 ms (server) | "
              f"answered within {args.budget_ms:g} ms (client) | budget met (server) | accuracy | exit histogram | "
              "misses by exit (server) | other codes |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
        for name, kw in ((f"calibrated policy, budget {args.budget_ms:g} ms", {**policy, "budget_ms": args.budget_ms}),
                         ("calibrated policy, no budget", policy)):
            results, sent = offered(target, images, rate, args.seconds, args.client_procs, kw)
            row(name, results, sent, labels, len(info.exits), args.budget_ms)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
