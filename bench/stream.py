"""Triton's streaming RPC (ModelStreamInfer) against unary ModelInfer, and what progressive answers give: one
server process, tritonclient on both sides, side by side in one run.

    python -m bench.stream [--repo models/repository] [--data ../shared/data/cifar10-jpeg/test] [--per-class 100]
                           [--concurrency 8] [--requests 1500] [--rounds 2]

1. Throughput, closed loop, `--concurrency` requests in flight: unary calls from that many threads against one
   stream kept that full (a callback sends the next request as each is answered); final exit and the calibrated
   policy; rounds alternate so drift on a shared machine touches each alike. Server CPU per image from /proc.
2. Progressive answers (`progressive: true`, no early stop: every exit answers), 1 and `--concurrency` in flight
   on one stream, each image once: per exit, when its answer reached the client (ms after sending) and its
   accuracy on these labelled images; beside unary final-exit requests at the same concurrency."""

from __future__ import annotations

import argparse
import os
import platform
import queue
import threading
import time

import numpy as np

from bench.protocols import SURFACES, process_cpu_s, run_surface
from bench.serving import load_test_images
from server.demo import ROOT, start_server

OUTPUTS = ("label", "exit_index")
V2_GRPC = SURFACES.index("v2 ModelInfer (gRPC, tritonclient)")


def _input(img: bytes):
    import tritonclient.grpc as tg

    inp = tg.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([img], dtype=object))
    return inp


def _outputs():
    import tritonclient.grpc as tg

    return [tg.InferRequestedOutput(n) for n in OUTPUTS]


def unary(target, model, images, concurrency, total, params) -> dict:
    """`total` unary ModelInfer calls from `concurrency` threads, each its own tritonclient (bench.protocols)."""
    return run_surface(V2_GRPC, target, "", model, images, concurrency, total, params)


def streamed(target, model, images, concurrency, total, params) -> dict:
    """The same on one stream kept `concurrency` requests full. With `progressive`, also each exit's answer:
    exits[k] = [(ms after sending, label, image index)]."""
    import tritonclient.grpc as tg

    c = tg.InferenceServerClient(target)
    sent, lat, labels, errors, exits = {}, [], {}, [], {}
    done = queue.Queue()
    counter, lock = iter(range(total)), threading.Lock()

    def send_next():
        with lock:
            i = next(counter, None)
        if i is None:
            return
        sent[str(i)] = time.perf_counter()
        c.async_stream_infer(model, [_input(images[i % len(images)])], request_id=str(i), outputs=_outputs(),
                             parameters=params or None)

    def on_response(result, error):
        now = time.perf_counter()
        if error is not None:
            errors.append(error.message()[:80])
            done.put(1)
            send_next()
            return
        response = result.get_response()
        i, label = int(response.id), int(result.as_numpy("label")[0])
        ms = 1000 * (now - sent[response.id])
        exits.setdefault(int(result.as_numpy("exit_index")[0]), []).append((ms, label, i))
        if response.parameters["triton_final_response"].bool_param:
            lat.append(ms)
            labels[i] = label
            done.put(1)
            send_next()

    c.start_stream(on_response)
    t0 = time.perf_counter()
    for _ in range(min(concurrency, total)):
        send_next()
    for _ in range(total):
        done.get(timeout=120)
    wall = time.perf_counter() - t0
    c.stop_stream()
    c.close()
    return {"wall": wall, "lat": lat, "labels": labels, "errors": errors, "exits": exits}


def q(values, f):
    values = sorted(values)
    return values[min(len(values) - 1, int(f * len(values)))] if values else float("nan")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test"))
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    images, names = load_test_images(args.data, args.per_class)
    proc, target, _ = start_server(args.repo, [], quiet=True)
    from server.client import Client

    with Client(target) as cl:
        info = cl.model_info()
    model, classes = info.name, list(info.classes)
    truth = [classes.index(n) for n in names]
    layers = [e.layer for e in info.exits]
    policies = {"final": {}, "calibrated": {"calibrated_policy": True}}
    ways = {"unary ModelInfer": unary, "ModelStreamInfer, one stream": streamed}
    runs = {(w, pol): [] for pol in policies for w in ways}
    try:
        for fn in ways.values():  # warm-up: connections, sessions, first batches
            fn(target, model, images[:50], args.concurrency, 100, {})
        for _ in range(args.rounds):
            for pol, params in policies.items():
                for w, fn in ways.items():
                    cpu0 = process_cpu_s(proc.pid)
                    r = fn(target, model, images, args.concurrency, args.requests, params)
                    r["server_cpu"] = process_cpu_s(proc.pid) - cpu0
                    runs[(w, pol)].append(r)
        progressive = {}
        for conc in sorted({1, args.concurrency}):  # every image once (they are stored class by class)
            progressive[conc] = (streamed(target, model, images, conc, len(images), {"progressive": True}),
                                 unary(target, model, images, conc, len(images), {}))
    finally:
        proc.terminate()
        proc.wait(30)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared by one server process "
          f"and the client; {len(images)} CIFAR-10 test JPEGs; model {model}; {args.requests} requests x {args.rounds} "
          f"rounds per row, interleaved; {args.concurrency} in flight")
    print("\n| policy | how | img/s (per round) | x unary | p50 ms | p99 ms | server CPU ms/img | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for pol in policies:
        base = None
        for w in ways:
            rs = runs[(w, pol)]
            n = sum(len(r["lat"]) for r in rs)
            thr = n / sum(r["wall"] for r in rs)
            base = base or thr
            lat = [v for r in rs for v in r["lat"]]
            per_round = ", ".join(f"{len(r['lat']) / r['wall']:.0f}" for r in rs)
            print(f"| {pol} | {w} | {thr:.0f} ({per_round}) | {thr / base:.2f} | {q(lat, .5):.2f} | {q(lat, .99):.2f} | "
                  f"{1000 * sum(r['server_cpu'] for r in rs) / n:.2f} | {sum(len(r['errors']) for r in rs)} |")
    same = all(runs[(w, pol)][0]["labels"] == runs[(next(iter(ways)), pol)][0]["labels"] for pol in policies for w in ways)
    print(f"\nsame label for every image, unary and streamed: {same}")
    print("\nProgressive answers (every exit answers; ms from sending to that exit's answer at the client):")
    print("| in flight | answer | p50 ms | p90 ms | p99 ms | accuracy | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for conc, (s, u) in progressive.items():
        for k in sorted(s["exits"]):
            rows = s["exits"][k]
            ms = [m for m, _, _ in rows]
            acc = np.mean([label == truth[i % len(images)] for _, label, i in rows])
            print(f"| {conc} | exit {k} (layer {layers[k]}), progressive | {q(ms, .5):.2f} | {q(ms, .9):.2f} | "
                  f"{q(ms, .99):.2f} | {100 * acc:.1f}% | {len(s['errors'])} |")
        acc = np.mean([label == truth[i % len(images)] for i, label in u["labels"].items()])
        print(f"| {conc} | final exit, unary ModelInfer | {q(u['lat'], .5):.2f} | {q(u['lat'], .9):.2f} | "
              f"{q(u['lat'], .99):.2f} | {100 * acc:.1f}% | {len(u['errors'])} |")


if __name__ == "__main__":
    main()
