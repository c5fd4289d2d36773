"""What each request surface costs: the same closed-loop load through auxnet.v1 Classify, the Open
Inference Protocol's gRPC side (tritonclient.grpc), its HTTP side with binary tensors (tritonclient.http)
and with plain JSON and base64 (http.client, as curl would send), TorchServe's predictions API (the JPEG as
the body, server/torchserve.py) and KServe's V1 :predict (JSON, TensorFlow Serving's {"b64"}, server/kserve_v1.py),
against one server process, side by side in one run (issue 11).

    python -m bench.protocols [--repo models/repository] [--data ../shared/data/cifar10-jpeg/test]
                              [--concurrency 8] [--requests 1500] [--rounds 2] [--policy final|calibrated]

Rounds alternate the surfaces (v1, v2 gRPC, v2 HTTP, v1, ...) so that drift in a shared machine touches
each alike. Besides client-side throughput and latency, the server process's CPU time per image (from
/proc) isolates what the surface costs the server; the client's CPU per image is what the client library
costs (client and server share this machine's cores)."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time

import numpy as np

from bench.serving import load_test_images
from server.demo import ROOT, start_server
from server.workers import free_port

SURFACES = ("auxnet.v1 Classify (gRPC)", "v2 ModelInfer (gRPC, tritonclient)", "v2 infer (HTTP binary, tritonclient)",
            "v2 infer (HTTP JSON + base64, http.client)", "TorchServe predictions (HTTP, the JPEG as the body, http.client)",
            "KServe V1 :predict (HTTP JSON + b64, http.client)")


def process_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def make_call(surface: int, target: str, http_target: str, model: str, params: dict):
    """A function sending one encoded image and returning its label, with its own client (one per thread)."""
    if surface == 0:
        from server.client import Client

        c = Client(target, timeout_s=30)
        return lambda img: c.classify(img, **params).label
    if surface == 4:  # TorchServe's `curl -T FILE`: the file as the body; the answer's top class by name
        import http.client
        import json

        from server.client import Client

        with Client(target) as c:
            classes = list(c.model_info(model).classes)
        host, port = http_target.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        query = "?" + "&".join(f"{k}={str(v).lower()}" for k, v in params.items()) if params else ""

        def call_torchserve(img):
            conn.request("PUT", f"/predictions/{model}{query}", img, {"Content-Type": "application/octet-stream"})
            reply = conn.getresponse()
            data = json.loads(reply.read())
            if reply.status != 200:
                raise RuntimeError(data.get("message"))
            return classes.index(next(iter(data)))

        return call_torchserve
    if surface in (3, 5):  # what curl or any plain HTTP client sends: JSON, the image base64, one keep-alive connection
        import base64
        import http.client
        import json

        host, port = http_target.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)

        def post(path: str, body: dict) -> dict:
            if params:
                body["parameters"] = params
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = json.loads(reply.read())
            if reply.status != 200:
                raise RuntimeError(data.get("error"))
            return data

        if surface == 5:
            return lambda img: post(f"/v1/models/{model}:predict", {"instances": [{"b64": base64.b64encode(img).decode()}]}
                                    )["predictions"][0]["class_index"]
        return lambda img: int(post(f"/v2/models/{model}/infer", {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(img).decode()]}], "outputs": [{"name": "label"}]})["outputs"][0]["data"][0])
    import tritonclient.grpc as tg
    import tritonclient.http as th

    module, client = (tg, tg.InferenceServerClient(target)) if surface == 1 else (th, th.InferenceServerClient(http_target))
    out = [module.InferRequestedOutput("label")]

    def call(img):
        inp = module.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([img], dtype=object))
        return int(client.infer(model, [inp], outputs=out, parameters=params or None).as_numpy("label")[0])

    return call


def run_surface(surface, target, http_target, model, images, concurrency, total, params) -> dict:
    lat, labels, lock, counter = [], {}, threading.Lock(), iter(range(total))
    errors = []

    def worker():
        call = make_call(surface, target, http_target, model, params)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                label = call(images[i % len(images)])
            except Exception as e:  # noqa: BLE001 - counted and shown: a benchmark must not hide failures
                errors.append(type(e).__name__)
                continue
            with lock:
                lat.append(1000 * (time.perf_counter() - t))
                labels[i] = label

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, client_cpu = time.perf_counter() - t0, time.process_time() - c0
    lat.sort()
    return {"wall": wall, "n": len(lat), "lat": lat, "labels": labels, "errors": errors, "client_cpu": client_cpu}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test"))
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--policy", choices=["final", "calibrated"], default="final")
    args = p.parse_args()
    images, _ = load_test_images(args.data, args.per_class)
    http_port = free_port("127.0.0.1")
    proc, target, _ = start_server(args.repo, ["--http-port", str(http_port)], quiet=True)
    http_target = f"127.0.0.1:{http_port}"
    params = {"calibrated_policy": True} if args.policy == "calibrated" else {}
    from server.client import Client

    with Client(target) as c:
        model = c.model_info().name
    runs = {s: [] for s in range(len(SURFACES))}
    try:
        for s in range(len(SURFACES)):  # warm-up: connections, sessions, first batches
            run_surface(s, target, http_target, model, images[:50], args.concurrency, 100, params)
        for _ in range(args.rounds):
            for s in range(len(SURFACES)):
                cpu0 = process_cpu_s(proc.pid)
                r = run_surface(s, target, http_target, model, images, args.concurrency, args.requests, params)
                r["server_cpu"] = process_cpu_s(proc.pid) - cpu0
                runs[s].append(r)
    finally:
        proc.terminate()
        proc.wait(30)
    agree = all(runs[s][0]["labels"] == runs[0][0]["labels"] for s in runs)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared by one server process "
          f"and {args.concurrency} client threads; policy {args.policy}; {len(images)} CIFAR-10 test JPEGs; "
          f"{args.requests} requests x {args.rounds} rounds per surface, interleaved; same labels on every surface: {agree}")
    print("| surface | throughput (img/s) | x auxnet.v1 | p50 ms | p99 ms | server CPU ms/img | client CPU ms/img | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for s, rs in runs.items():
        n = sum(r["n"] for r in rs)
        thr = n / sum(r["wall"] for r in rs)
        base = base or thr
        lat = sorted(v for r in rs for v in r["lat"])
        q = lambda f, lat=lat: lat[min(len(lat) - 1, int(f * len(lat)))]  # noqa: E731
        per_round = ", ".join(f"{r['n'] / r['wall']:.0f}" for r in rs)
        print(f"| {SURFACES[s]} | {thr:.0f} ({per_round}) | {thr / base:.2f} | {q(0.5):.2f} | {q(0.99):.2f} | "
              f"{1000 * sum(r['server_cpu'] for r in rs) / n:.2f} | {1000 * sum(r['client_cpu'] for r in rs) / n:.2f} | "
              f"{sum(len(r['errors']) for r in rs)} |")
    print(f"(mean of per-round throughputs' spread: {statistics.pstdev([r['n'] / r['wall'] for r in runs[0]]):.0f} img/s on auxnet.v1)")


if __name__ == "__main__":
    main()
