"""Half-open connection floods (slowloris): does one port's flood take the server down?

    python -m bench.connection_flood [--connections 1100] [--open-files 1024] [--compare-root /path/to/older/checkout]

A server at an open-file limit of --open-files (soft = hard, as in containers that set both), then --connections
TCP connections to one port that each send the start of a request and nothing more (HTTP: half a request header;
gRPC: half the HTTP/2 preface), held open. Every 5 s for 15 s: a fresh gRPC Classify, an HTTP readiness check and
a gRPC health check on the health port, each on a new connection; then how many of the flood's connections the
server has closed, and how many ERROR lines it logged. --compare-root runs the same against another checkout.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.client import Client
from server.demo import ROOT
from server.loadgen import load_labelled_folder

FIRST_BYTES = {"http": b"POST /v2/models/x/infer HTTP/1.1\r\nHost: a\r\n", "grpc": b"PRI * HTTP/2.0\r\n"}
PORTS = {"grpc": 18700, "http": 18710, "health": 18720}


def probe(image: bytes) -> str:
    out = []
    try:
        with Client(f"127.0.0.1:{PORTS['grpc']}", retries=0, timeout_s=3) as c:
            c.classify(image)
        out.append("classify OK")
    except grpc.RpcError as e:
        out.append(f"classify {e.code().name}")
    try:
        url = f"http://127.0.0.1:{PORTS['http']}/v2/health/ready"
        out.append(f"http {urllib.request.urlopen(url, timeout=3).status}")
    except OSError as e:
        out.append(f"http {type(e).__name__}")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{PORTS['health']}") as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3).status
        out.append(f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
    except grpc.RpcError as e:
        out.append(f"health {e.code().name}")
    return ", ".join(out)


def ended(s: socket.socket) -> bool:
    s.settimeout(0.01)
    try:
        while True:
            if s.recv(65536) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (TimeoutError, BlockingIOError):
        return False


def run(root: Path, target_port: str, n: int, open_files: int, image: bytes) -> list[str]:
    log = Path(f"/tmp/connection_flood_{os.getpid()}.log")
    with open(log, "w") as err:
        proc = subprocess.Popen(["prlimit", f"--nofile={open_files}:{open_files}", sys.executable, "-m", "server", "--repo",
                                 str(ROOT / "models" / "repository"), "--port", str(PORTS["grpc"]), "--http-port",
                                 str(PORTS["http"]), "--health-port", str(PORTS["health"]), "--metrics-port", "-1",
                                 "--log-level", "WARNING"], cwd=root, stderr=err, env={**os.environ, "PYTHONPATH": str(root)})
    lines = []
    try:
        deadline = time.time() + 60
        while not probe(image).startswith("classify OK") and time.time() < deadline:
            time.sleep(0.5)
        lines.append(f"before: {probe(image)}")
        socks = []
        for _ in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", PORTS[target_port]), timeout=2)
                s.sendall(FIRST_BYTES[target_port])
                socks.append(s)
            except OSError:
                pass
        t0 = time.time()
        for at in (2, 7, 12, 17):
            time.sleep(max(0.0, t0 + at - time.time()))
            lines.append(f"{at:>2} s into the flood: {probe(image)}; flood connections the server has ended: "
                         f"{sum(ended(s) for s in socks)} of {len(socks)}")
        for s in socks:
            s.close()
        time.sleep(2)
        lines.append(f"after: {probe(image)}")
    finally:
        proc.terminate()
        proc.wait(30)
    errors = sum(" ERROR " in line for line in log.read_text().splitlines())
    lines.append(f"server ERROR log lines: {errors}")
    log.unlink()
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=1100)
    ap.add_argument("--open-files", type=int, default=1024)
    ap.add_argument("--compare-root", help="another checkout of this project, measured the same way")
    args = ap.parse_args()
    images, _, _ = load_labelled_folder(ROOT / "samples" / "cifar10-test")
    roots = {"this checkout": ROOT, **({f"compare: {args.compare_root}": Path(args.compare_root).resolve()}
                                       if args.compare_root else {})}
    for name, root in roots.items():
        for port in ("http", "grpc"):
            print(f"\n### {name}: {args.connections} half-open connections to the {port} port, open-file limit {args.open_files}")
            for line in run(root, port, args.connections, args.open_files, images[0]):
                print(f"- {line}", flush=True)


if __name__ == "__main__":
    main()
