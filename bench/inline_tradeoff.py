"""What `--inline-max-ms` buys and costs (issue 12): a request that finds the engine idle runs on the
event-loop thread (no thread hand-offs), but blocks the loop meanwhile, so a request arriving then waits
instead of running beside it on the other core. Closed-loop load at a few concurrencies, the server with
and without the option, alternating, in one run.

    python -m bench.inline_tradeoff [--inline-max-ms 5] [--concurrency 1 2 4 16] [--requests 600] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

from server.demo import ROOT, start_server
from server.loadgen import closed_loop, load_labelled_folder, summarise


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--images", default=str(ROOT / "samples" / "cifar10-test"))
    p.add_argument("--inline-max-ms", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 16])
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--policy", choices=["final", "calibrated"], default="final")
    args = p.parse_args()
    images, _, _ = load_labelled_folder(args.images)
    request = {"calibrated_policy": True} if args.policy == "calibrated" else {}
    variants = {"threads (default)": [], f"--inline-max-ms {args.inline_max_ms:g}": ["--inline-max-ms", str(args.inline_max_ms)]}
    rows = {(v, c): [] for v in variants for c in args.concurrency}
    for _ in range(args.rounds):
        for name, extra in variants.items():
            proc, target, _ = start_server(args.repo, extra, quiet=True)
            try:
                closed_loop(target, images[:50], 2, 100, **request)  # warm-up
                for c in args.concurrency:
                    results, wall = closed_loop(target, images, c, args.requests, **request)
                    rows[(name, c)].append(summarise(results, wall, None, 5))
            finally:
                proc.terminate()
                proc.wait(30)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared by server and clients; "
          f"policy {args.policy}; {args.requests} requests per cell x {args.rounds} rounds (medians)")
    print("| server | clients | img/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for (name, c), ss in rows.items():
        med = lambda k, ss=ss: statistics.median(s[k] for s in ss)  # noqa: E731
        print(f"| {name} | {c} | {med('throughput_rps'):.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} |")


if __name__ == "__main__":
    main()
