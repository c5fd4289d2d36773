"""The serving engine under load (issue 12):

1. small requests' latency with and without 4096x4096 PNGs (49 KB each) in the traffic;
2. final-exit throughput with `--workers 1` and `--workers 2`.

    python -m bench.engine_load [--compare-root /path/to/older/checkout] [--requests 1500]

Closed-loop clients share the machine's cores with the server; servers run one at a time.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import subprocess
import threading
from pathlib import Path

import grpc
from PIL import Image

from bench.serving import load_test_images
from server.client import Client
from server.demo import ROOT, start_server
from server.loadgen import closed_loop, summarise


def start(root: Path, repo: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    proc, target, _ = start_server(repo, extra, quiet=True, root=root)
    return proc, target


def big_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4096, 4096), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def small_latency(root: Path, repo: str, images: list[bytes], requests: int, with_big: bool) -> dict:
    proc, target = start(root, repo, [])
    stop, big_done = threading.Event(), [0]

    def big_stream():
        data = big_png()
        with Client(target, timeout_s=60) as c:
            while not stop.is_set():
                try:
                    c.classify(data)
                    big_done[0] += 1
                except grpc.RpcError:
                    pass

    try:
        closed_loop(target, images[:64], 8, 200)  # warm-up
        t = threading.Thread(target=big_stream) if with_big else None
        if t:
            t.start()
        res, wall = closed_loop(target, images, 8, requests)
        stop.set()
        if t:
            t.join(60)
    finally:
        proc.terminate()
        proc.wait(30)
    s = summarise(res, wall, None, 5)
    return {**s, "big": big_done[0], "big_per_s": big_done[0] / wall}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test"))
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compare-root")
    args = p.parse_args()
    repo = str(Path(args.repo).resolve())
    images, _ = load_test_images(args.data, 100)
    roots = {"this checkout": ROOT, **({"compare": Path(args.compare_root).resolve()} if args.compare_root else {})}
    print(f"machine: {platform.processor() or platform.machine()}, 2 cores shared by server and clients; "
          f"{args.rounds} alternating rounds, medians")
    print("\n1. Small requests (8 closed-loop clients, 32x32 JPEG) alone, and beside one client sending 4096x4096 PNGs")
    print("| server | traffic | small img/s | small p50 ms | small p99 ms | p99 x alone | big images answered/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, root in roots.items():
        runs = {False: [], True: []}
        for _ in range(args.rounds):
            for with_big in (False, True):
                runs[with_big].append(small_latency(root, repo, images, args.requests, with_big))
        alone = statistics.median(r["p99_ms"] for r in runs[False])
        for with_big, rs in runs.items():
            med = lambda key, rs=rs: statistics.median(r[key] for r in rs)  # noqa: E731
            print(f"| {name} | {'with 4096x4096 PNGs' if with_big else 'small only'} | {med('throughput_rps'):.0f} | "
                  f"{med('p50_ms'):.1f} | {med('p99_ms'):.1f} | {med('p99_ms') / alone:.2f} | "
                  f"{med('big_per_s') if with_big else 0:.1f} |")
    print("\n2. Final-exit throughput, 16 closed-loop clients")
    print("| server | workers x segment threads | img/s | rounds | p99 ms |")
    print("|---|---|---:|---|---:|")
    configs = {"--workers 1 --threads 2": ["--workers", "1", "--threads", "2"],
               "--workers 2 --threads 1": ["--workers", "2", "--threads", "1"]}
    runs = {c: [] for c in configs}
    for _ in range(args.rounds):
        for name, extra in configs.items():
            proc, target = start(ROOT, repo, extra)
            try:
                closed_loop(target, images[:64], 16, 200)
                res, wall = closed_loop(target, images, 16, args.requests)
                runs[name].append(summarise(res, wall, None, 5))
            finally:
                proc.terminate()
                proc.wait(60)
    for name, rs in runs.items():
        tp = [r["throughput_rps"] for r in rs]
        print(f"| this checkout | {name} | {statistics.median(tp):.0f} | {', '.join(f'{t:.0f}' for t in tp)} | "
              f"{statistics.median(r['p99_ms'] for r in rs):.1f} |")


if __name__ == "__main__":
    main()
