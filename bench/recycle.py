"""Workers recycled under load (`--recycle-rss-mb`): is any request lost, and what does a recycle cost in latency?

    python -m bench.recycle [--seconds 60] [--min-age-s 5] [--clients 4] [--repo models/repository]

Three runs of the same server (`--workers 1`): a control without recycling, then twice one whose limit (1 MB)
every worker passes, so that a worker is replaced every --min-age-s (plus its replacement's start-up), far more
often than a real limit would: once with bare channels (no retry policy), once with server.client.Client (which
retries UNAVAILABLE and CANCELLED). Client threads classify CIFAR-10 test JPEGs: half keep one channel (their
connection is moved by the old worker's GOAWAY), half open a new channel for every request (they race the old
worker's closing listener; net.ipv4.tcp_migrate_req, printed, decides what becomes of connections queued on it).
Reports answers, errors by code, recycles, latency percentiles.
"""

from __future__ import annotations

import argparse
import collections
import os
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from protos.auxnet.v1 import inference_pb2_grpc as pb_grpc
from server.client import Client, classify_request
from server.demo import ROOT, start_server
from server.loadgen import load_labelled_folder


def recycles(metrics_port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return int(sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("auxnet_worker_recycles_total")))


class RawClient:
    """A bare channel: no retry policy (gRPC's transparent retry of calls that never reached a server stays on)."""

    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.EarlyExitServiceStub(self.channel)

    def classify(self, image: bytes):
        return self.stub.Classify(classify_request(image), timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.channel.close()


def drive(port: int, images: list[bytes], seconds: float, clients: int, ours: bool):
    latencies: list[float] = []
    outcomes: collections.Counter = collections.Counter()
    messages: list[str] = []
    stop = threading.Event()
    target = f"127.0.0.1:{port}"
    connect = (lambda: Client(target)) if ours else (lambda: RawClient(target))

    def one(client, i: int, kind: str) -> None:
        t = time.perf_counter()
        try:
            client.classify(images[i % len(images)])
            latencies.append(time.perf_counter() - t)
            outcomes["OK"] += 1
        except grpc.RpcError as e:
            outcomes[e.code().name] += 1
            messages.append(f"{kind} channel: {e.code().name}: {e.details()}"[:160])

    def kept(k: int) -> None:
        with connect() as c:
            i = k
            while not stop.is_set():
                one(c, i, "kept")
                i += clients

    def new(k: int) -> None:
        i = k
        while not stop.is_set():
            with connect() as c:
                one(c, i, "new")
            i += clients

    threads = [threading.Thread(target=kept if k % 2 == 0 else new, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    return latencies, outcomes, messages


def main() -> None:
    p = argparse.ArgumentParser("python -m bench.recycle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--min-age-s", type=float, default=5)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--server-args", default="", help="more server options, e.g. '--access-log /tmp/access.jsonl'")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test"))
    args = p.parse_args()
    images = load_labelled_folder(args.data)[0][:500]
    migrate = Path("/proc/sys/net/ipv4/tcp_migrate_req")
    print(f"{args.clients} client threads (half one channel each, half a new channel per request), {args.seconds:g} s a run, "
          f"{os.cpu_count()} cores shared by server and clients, net.ipv4.tcp_migrate_req = "
          f"{migrate.read_text().strip() if migrate.exists() else 'absent'}\n")
    print("| run | client | answered | errors | recycles | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---:|---|---:|---:|---:|---:|")
    recycle = ["--recycle-rss-mb", "1", "--recycle-min-age-s", str(args.min_age_s)]
    for name, extra, ours in [("control", [], False), (f"recycled every ~{args.min_age_s:g} s", recycle, False),
                              (f"recycled every ~{args.min_age_s:g} s", recycle, True)]:
        proc, target, metrics = start_server(args.repo, ["--health-port", "-1", "--http-port", "-1", *extra,
                                                         *args.server_args.split()], quiet=True)
        port = int(target.rsplit(":", 1)[1])
        try:
            latencies, outcomes, messages = drive(port, images, args.seconds, args.clients, ours)
            n = recycles(metrics) if extra else 0
        finally:
            proc.terminate()
            code = proc.wait(60)
        ms = np.asarray(latencies) * 1000
        errors = ", ".join(f"{k} {v}" for k, v in outcomes.items() if k != "OK") or "0"
        client = "server.client.Client (retries 3)" if ours else "bare channel"
        print(f"| {name} | {client} | {outcomes['OK']} | {errors} | {n} | {np.percentile(ms, 50):.1f} | "
              f"{np.percentile(ms, 99):.1f} | {ms.max():.1f} |", flush=True)
        for m in sorted(set(messages))[:5]:
            print(f"  {m}")
        if code != 0:
            print(f"  the server exited with code {code}")


if __name__ == "__main__":
    main()
