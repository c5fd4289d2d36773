"""Many threads, each with its own server.client.Client, which grpcio puts on ONE connection (its channels to one
target with the same options share it): are calls refused for the connection's sake (`--max-streams-per-connection`)?

    python -m bench.shared_connection [--threads 200] [--calls 20] [--server-args '--max-streams-per-connection 100']

One server (the default model); every thread sends --calls Classify of CIFAR-10 test JPEGs one after another. Prints
the status codes (with the first words of each error's message) and the wall time.
"""

from __future__ import annotations

import argparse
import collections
import threading
import time

import grpc

from server.client import Client
from server.demo import ROOT, start_server
from server.loadgen import load_labelled_folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=200)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--server-args", default="")
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test"))
    args = p.parse_args()
    images = load_labelled_folder(args.data)[0][:50]
    proc, target, _ = start_server(args.repo, args.server_args.split(), quiet=True)
    codes: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def worker(i: int) -> None:
        with Client(target, timeout_s=30) as c:
            for k in range(args.calls):
                try:
                    c.classify(images[(i + k) % len(images)])
                    code = "OK"
                except grpc.RpcError as e:
                    code = f"{e.code().name}: {e.details()[:60]}"
                with lock:
                    codes[code] += 1

    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"server args {args.server_args!r}, {args.threads} threads x {args.calls} calls: {dict(codes)} in "
              f"{time.time() - t0:.1f} s")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
