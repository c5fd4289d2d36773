"""What Triton's Prometheus metrics add per image (server/triton_metrics.py): the engine's per-image bookkeeping
(server/statistics.py: two segment runs, one answer, the pending count set at admission and release) with and
without its Prometheus mirror, in one process and as a --workers process writes them (prometheus_client's
multiprocess mode: every update is a write to a memory-mapped file under a lock).

    python -m bench.statistics_cost [--images 200000] [--rounds 3]

Prints microseconds per image, alternating the variants within each round.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from prometheus_client import CollectorRegistry

from server.statistics import ModelStatistics
from server.triton_metrics import TritonMetrics


def per_image_us(stats: ModelStatistics, images: int) -> float:
    t = time.perf_counter()
    for _ in range(images):
        stats.pending(1)
        stats.segment_run(8, 0.001)
        stats.segment_run(8, 0.001)
        stats.answered(0.01, 0.001, 0.003)
        stats.pending(0)
    return (time.perf_counter() - t) / images * 1e6


def measure(images: int, rounds: int) -> None:
    mode = "multiprocess (--workers)" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "one process"
    for r in range(rounds):
        plain = per_image_us(ModelStatistics(), images)
        mirrored = per_image_us(ModelStatistics(mirror=TritonMetrics(CollectorRegistry()).series("m", "v")), images)
        print(f"{mode:>26}  round {r + 1}: without {plain:6.2f} us/image, with Triton metrics {mirrored:6.2f} "
              f"(+{mirrored - plain:.2f})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser("python -m bench.statistics_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--here", action="store_true", help=argparse.SUPPRESS)  # this process only (the child below)
    args = p.parse_args(argv)
    if args.here:
        measure(args.images, args.rounds)
        return 0
    measure(args.images, args.rounds)
    with tempfile.TemporaryDirectory() as d:  # the multiprocess mode is chosen at import: a fresh process
        subprocess.run([sys.executable, "-m", "bench.statistics_cost", "--here", "--images", str(args.images),
                        "--rounds", str(args.rounds)], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": d}, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
