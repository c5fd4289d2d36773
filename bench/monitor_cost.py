"""What the agreement monitor costs (issue 13): closed-loop throughput of the calibrated policy with the
monitor at its default sampling fraction against the monitor off, servers run one at a time, alternated.

    python -m bench.monitor_cost [--rounds 3] [--requests 3000] [--concurrency 16]

Under a saturating closed loop the monitor finds little idle time: it then samples less (counted as
skipped) rather than slow requests down; the table reports how many samples it still took.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from bench.serving import load_test_images
from server.demo import ROOT, start_server
from server.loadgen import closed_loop, summarise


def monitor_counts(port: int) -> tuple[float, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = skipped = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "auxnet_monitor_samples_total":
                samples += s.value
            elif s.name == "auxnet_monitor_skipped_total":
                skipped += s.value
    return samples, skipped


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 4])
    p.add_argument("--fraction", type=float, default=0.05)
    args = p.parse_args()
    images, _ = load_test_images(args.data, 100)
    print(f"machine: {platform.processor() or platform.machine()}, 2 cores shared by server and clients; "
          f"calibrated policy, {args.requests} requests per measurement, {args.rounds} alternating rounds")
    print("| concurrency | monitor | throughput img/s (median) | rounds | x monitor off | p99 ms | samples taken | skipped |")
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    for conc in args.concurrency:
        runs = {"off": [], f"on ({args.fraction})": []}
        extra = {"off": 0.0, f"on ({args.fraction})": args.fraction}
        counts = {}
        for _ in range(args.rounds):
            for name in runs:
                proc, target, mport = start_server(args.repo, ["--monitor-fraction", str(extra[name])], quiet=True)
                try:
                    closed_loop(target, images[:64], conc, 200, calibrated_policy=True)  # warm-up
                    res, wall = closed_loop(target, images, conc, args.requests, calibrated_policy=True)
                    runs[name].append(summarise(res, wall, None, 5))
                    counts[name] = monitor_counts(mport)
                finally:
                    proc.terminate()
                    proc.wait(30)
        base = statistics.median(s["throughput_rps"] for s in runs["off"])
        for name, rs in runs.items():
            tp = [s["throughput_rps"] for s in rs]
            med = statistics.median(tp)
            p99 = statistics.median(s["p99_ms"] for s in rs)
            print(f"| {conc} | {name} | {med:.0f} | {', '.join(f'{t:.0f}' for t in tp)} | {med / base:.3f} | {p99:.1f} | "
                  f"{counts[name][0]:.0f} | {counts[name][1]:.0f} |")


if __name__ == "__main__":
    main()
