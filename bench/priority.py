"""Priority levels under overload: does interactive traffic keep its latency while a bulk flood saturates?

    python -m bench.priority [--interactive 0.2] [--flood 3] [--seconds 10] [--server "ARGS" ...]

One server process at a time (`--threads 1 --max-inflight 64`, as bench.overload: the other core runs the load
generator), the same traffic against each configuration: by default `--priority-levels 1` (priorities ignored,
the server's default) and `--priority-levels 2`; or the server arguments of each --server (e.g. with a
--queue-policy). Capacity is first measured with a closed loop, on the first. Then two open loops run at
once for --seconds, each on its own channel at Poisson arrival times: interactive requests (priority 1, the
model's calibrated policy) at --interactive x that capacity and a bulk flood (priority 2, the final exit: full
accuracy) at --flood x the final exit's capacity. No budgets; a 1 s gRPC deadline each. Reported per class: offered and answered rates,
refusals, client-side p50/p99 of answered requests, accuracy and mean exit; then per server the requests dropped
from a queue (evicted, queue timeout) by exit.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import time
import urllib.request
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from bench.overload import open_loop
from server.demo import ROOT, start_server
from server.loadgen import closed_loop, load_labelled_folder, summarise


def samples(metrics_port: int, name: str) -> list:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def dropped(metrics_port: int) -> list[tuple[str, str, float]]:
    """(reason, exit, count) of the queued requests dropped for a higher priority or by a queue policy."""
    return sorted((s.labels["reason"], s.labels["exit"], s.value) for s in samples(metrics_port, "auxnet_dropped_total")
                  if s.labels.get("reason") in ("preempted", "queue_timeout"))


def row(config: str, name: str, results: list, seconds: float, sent_s: float, labels: list[int]) -> str:
    codes = Counter(r[0] for r in results)
    ok = [r for r in results if r[0] == "OK"]
    lat = sorted(r[1] for r in ok)
    server = sorted(r[3] for r in ok)
    q = lambda p, xs=lat: xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")  # noqa: E731
    accuracy = sum(r[5] == labels[r[4] % len(labels)] for r in ok) / max(len(ok), 1)
    mean_exit = statistics.fmean(r[6] for r in ok) if ok else float("nan")
    return (f"| {config} | {name} | {len(results) / sent_s:.0f} | {len(ok) / seconds:.0f} | {100 * len(ok) / max(len(results), 1):.1f}% | "
            f"{q(0.5):.1f} | {q(0.99):.1f} | {q(0.5, server):.1f} | {q(0.99, server):.1f} | {100 * accuracy:.1f}% | {mean_exit:.2f} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(codes.items()))} |")


async def both(target, images, interactive_rps, flood_rps, seconds):
    return await asyncio.gather(
        open_loop(target, images, interactive_rps, seconds, poisson_seed=1, calibrated_policy=True, priority=1),
        open_loop(target, images, flood_rps, seconds, poisson_seed=2, priority=2))  # the final exit, full accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interactive", type=float, default=0.2, help="interactive rate, times the measured capacity")
    ap.add_argument("--flood", type=float, default=2.0, help="bulk rate, times the measured final-exit capacity")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-inflight", type=int, default=64)
    ap.add_argument("--server", action="append", metavar="ARGS",
                    help="the server arguments of one configuration, repeatable (default: '--priority-levels 1' and "
                         "'--priority-levels 2')")
    args = ap.parse_args()
    configs = args.server or ["--priority-levels 1", "--priority-levels 2"]
    images, names, classes = load_labelled_folder(ROOT / "samples" / "cifar10-test")
    labels = [classes.index(n) for n in names]
    capacity = final_capacity = None
    evicted = []
    print("| server | class | offered (req/s) | answered (req/s) | answered | p50 ms (client) | p99 ms (client) | "
          "p50 ms (server) | p99 ms (server) | accuracy | mean exit | codes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for config in configs:
        proc, target, metrics_port = start_server(str(ROOT / "models" / "repository"),
                                       ["--threads", "1", "--max-inflight", str(args.max_inflight), *shlex.split(config)])
        try:
            closed_loop(target, images, 16, 300, calibrated_policy=True)  # warm-up
            if capacity is None:  # measured once, on the first server: both get the same offered load
                res, wall = closed_loop(target, images, 16, 1500, calibrated_policy=True)
                capacity = summarise(res, wall, None, 5)["throughput_rps"]
                res, wall = closed_loop(target, images, 16, 500)
                final_capacity = summarise(res, wall, None, 5)["throughput_rps"]
                print(f"capacity (closed loop, 16 clients): calibrated policy {capacity:.0f} img/s, final exit "
                      f"{final_capacity:.0f} img/s\n")
            quiet, sent = asyncio.run(open_loop(target, images, args.interactive * capacity, 5.0, poisson_seed=1,
                                                calibrated_policy=True, priority=1))
            print(row(config, f"interactive alone ({args.interactive:g}x)", quiet, 5.0, sent, labels))
            (inter, sent_i), (flood, sent_f) = asyncio.run(both(target, images, args.interactive * capacity,
                                                                args.flood * final_capacity, args.seconds))
            print(row(config, f"interactive, priority 1 ({args.interactive:g}x)", inter, args.seconds, sent_i, labels))
            print(row(config, f"flood, priority 2 ({args.flood:g}x)", flood, args.seconds, sent_f, labels))
            time.sleep(1.5)  # every call has ended (1 s deadlines): nothing may stay counted in flight
            left = sum(s.value for s in samples(metrics_port, "auxnet_inflight_requests"))
            evicted.append(f"{config}: " + (", ".join(f"{why} at exit {k} {n:.0f}" for why, k, n in dropped(metrics_port))
                                            or "none") + f"; in flight once the load ended: {left:.0f}")
        finally:
            proc.terminate()
            proc.wait(30)
    print("\nqueued requests evicted for a higher priority (auxnet_dropped_total{reason=\"preempted\"}) or refused by a "
          "queue policy's timeout (reason=\"queue_timeout\"), by the exit they waited at:\n" + "\n".join(evicted))


if __name__ == "__main__":
    main()
