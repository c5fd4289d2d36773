"""Overload: open-loop load at about 3x measured capacity for a bounded time, then a recovery phase.

    python -m bench.overload [--factor 3] [--seconds 10] [--budget-ms 100 | 0] [--server-args '--default-budget-ms 100']

Capacity is first measured with a closed loop. Then requests are fired on a fixed schedule (open loop,
independent of answers) with a budget and a 1 s deadline. Reported: accepted and rejected rates, p99 of
accepted, budget kept, peak RSS of the server; then whether full service returns at 0.5x capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter

import grpc

from protos.auxnet.v1 import inference_pb2_grpc as pb_grpc
from server.client import Client, classify_request
from server.demo import ROOT, start_server
from server.loadgen import closed_loop, load_labelled_folder, summarise


async def open_loop(target: str, images: list[bytes], rate: float, seconds: float, poisson_seed: int | None = None,
                    **kw) -> tuple[list, float]:
    """Fire `rate` requests per second for `seconds`, on a fixed schedule or, with `poisson_seed`, at Poisson
    arrival times (exponential gaps: how independent users arrive); return (code, latency ms, budget_met,
    server ms, index, label, exit) per request."""
    import random

    gaps = random.Random(poisson_seed) if poisson_seed is not None else None
    results = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EarlyExitServiceStub(channel)
        requests = [classify_request(im, **kw) for im in images]

        async def one(i):
            t = time.perf_counter()
            try:
                r = await stub.Classify(requests[i % len(requests)], timeout=1.0)
                results.append(("OK", 1000 * (time.perf_counter() - t), r.budget_met, r.server_latency_ms, i, r.label,
                                r.exit_index))
            except grpc.aio.AioRpcError as e:
                results.append((e.code().name, 1000 * (time.perf_counter() - t), False, float("nan"), i, -1, -1))

        tasks, t0, n, due = [], time.perf_counter(), int(rate * seconds), 0.0
        for i in range(n):
            due = due + gaps.expovariate(rate) if gaps is not None else i / rate
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        sent_s = time.perf_counter() - t0
        await asyncio.gather(*tasks)
    return results, sent_s


def peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def report(name, results, seconds, sent_s, labels):
    codes = Counter(r[0] for r in results)
    ok = sorted(r[1] for r in results if r[0] == "OK")
    rej = sorted(r[1] for r in results if r[0] == "RESOURCE_EXHAUSTED")
    p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")  # noqa: E731
    kept = sum(1 for r in results if r[0] == "OK" and r[2]) / max(len(ok), 1)
    server = sorted(r[3] for r in results if r[0] == "OK")
    answered = [r for r in results if r[0] == "OK"]
    accuracy = sum(r[5] == labels[r[4] % len(labels)] for r in answered) / max(len(answered), 1)
    mean_exit = statistics.fmean(r[6] for r in answered) if answered else float("nan")
    print(f"| {name} | {len(results) / sent_s:.0f} | {len(ok) / seconds:.0f} | {codes.get('RESOURCE_EXHAUSTED', 0) / seconds:.0f} | "
          f"{p(ok, 0.5):.1f} | {p(ok, 0.99):.1f} | {p(server, 0.99):.1f} | {100 * kept:.1f}% | {p(rej, 0.99):.1f} | "
          f"{100 * accuracy:.1f}% | {mean_exit:.2f} | "
          f"{', '.join(f'{k} {v}' for k, v in sorted(codes.items()))} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--factor", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--budget-ms", type=float, default=100.0, help="each request's budget; 0 = requests send none")
    ap.add_argument("--server-args", default="", help="extra server flags, e.g. '--default-budget-ms 100'")
    ap.add_argument("--max-inflight", type=int, default=64)
    ap.add_argument("--server-threads", type=int, default=1,
                    help="segment threads; 1 leaves the other core of a 2-core machine to the load generator")
    args = ap.parse_args()
    images, names, _ = load_labelled_folder(ROOT / "samples" / "cifar10-test")
    proc, target, _ = start_server(str(ROOT / "models" / "repository"),
                                ["--shed-late-budgets", "--max-inflight", str(args.max_inflight),
                                 "--threads", str(args.server_threads), *args.server_args.split()])
    try:
        with Client(target) as c:
            info = c.model_info()
        threshold = info.exits[0].default_threshold
        labels = [list(info.classes).index(n) for n in names]
        kw = {"budget_ms": args.budget_ms or None, "min_confidence": threshold}
        closed_loop(target, images, 16, 300, **kw)  # warm-up
        res, wall = closed_loop(target, images, 16, 1500, **kw)
        capacity = summarise(res, wall, None, 5)["throughput_rps"]
        rss_before = peak_rss_mb(proc.pid)
        print(f"capacity (closed loop, 16 clients, min_confidence {threshold}, budget {args.budget_ms} ms): "
              f"{capacity:.0f} img/s; server peak RSS before overload {rss_before:.0f} MB")
        print("| phase | offered (req/s) | accepted (req/s) | rejected (req/s) | p50 accepted ms (client) | "
              "p99 accepted ms (client) | p99 accepted ms (server) | accepted within budget | p99 rejection ms | "
              "accuracy of accepted | mean exit | codes |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        over, sent = asyncio.run(open_loop(target, images, args.factor * capacity, args.seconds, **kw))
        report(f"overload {args.factor:.0f}x capacity, {args.seconds:.0f} s", over, args.seconds, sent, labels)
        rss_peak = peak_rss_mb(proc.pid)
        time.sleep(1.0)
        rec, sent = asyncio.run(open_loop(target, images, 0.5 * capacity, 5.0, **kw))
        report("recovery at 0.5x capacity, 5 s", rec, 5.0, sent, labels)
        print(f"server peak RSS (VmHWM) after overload: {rss_peak:.0f} MB (before: {rss_before:.0f} MB)")
        print(f"mean of all accepted latencies in overload: {statistics.fmean(r[1] for r in over if r[0] == 'OK'):.1f} ms")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
