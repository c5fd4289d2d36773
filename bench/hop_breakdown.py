"""Where a batch-1 request through every exit spends its time inside the server (issue 12), and how much of
the decode's cost is the caches a chain leaves behind.

    python -m bench.hop_breakdown [--repo models/repository] [--requests 650]

Part 1: a real server in this process (its own event-loop thread), sequential requests from a client in
another process; the engine's compute call and the servicer's decode are wrapped with timers. Part 2, no
server: the same decode in a tight loop, and alternating with the five-segment ONNX Runtime chain. Part 3:
the chain in a tight loop, and right after each of a real gRPC Classify round trip to a server process
(what every request's chain follows inside a server: the client's and the server's request work on the
same cores). Part 4: the engine's compute call alone, in this process, no server and no event loop: the
Python it spends between segments (softmax, exit rule, bookkeeping) beside ONNX Runtime's runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import threading
import time

from server.demo import ROOT

WARMUP = 50


def in_server(repo: str, n: int) -> dict:
    import server.service as svc
    from server.app import ServerApp, ServerConfig
    from server.engine import ModelEngine

    calls, decodes = [], []
    compute, prepare = ModelEngine._compute, svc.EarlyExitServicer._prepare

    def timed_compute(self, k, jobs, x):
        start = time.monotonic()
        steps = compute(self, k, jobs, x)
        calls.append((jobs[0].arrival, start, steps[-1].now, sum(s.dt for s in steps), len(steps)))
        return steps

    async def timed_prepare(self, r, arrival, deadline):
        out = await prepare(self, r, arrival, deadline)
        decodes.append(time.monotonic() - arrival)
        return out

    ModelEngine._compute, svc.EarlyExitServicer._prepare = timed_compute, timed_prepare
    app = ServerApp(ServerConfig(repo=repo, port=0, metrics_port=None, http_port=None, threads=2, poll_s=0))
    app.load_models()
    loop, started = asyncio.new_event_loop(), threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(app.start())
        started.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    started.wait(60)
    client = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from server.client import Client\nfrom server.loadgen import load_labelled_folder\n"
              f"ims, _, _ = load_labelled_folder({str(ROOT / 'samples' / 'cifar10-test')!r})\n"
              f"with Client('127.0.0.1:{app.port}') as c:\n"
              f"    for i in range({n}): c.classify(ims[i % len(ims)])\n")
    try:
        subprocess.run([sys.executable, "-c", client], check=True, timeout=600)
    finally:
        asyncio.run_coroutine_threadsafe(app.shutdown(2.0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
    full = [c for c in calls if c[4] == len(app.engines[next(iter(app.engines))].backends)][WARMUP:]
    med = lambda f: 1000 * statistics.median(f(*c) for c in full)  # noqa: E731
    return {"latency": med(lambda a, s, e, c, n: e - a), "to_compute": med(lambda a, s, e, c, n: s - a),
            "decode": 1000 * statistics.median(decodes[WARMUP:]), "call": med(lambda a, s, e, c, n: e - s),
            "segments": med(lambda a, s, e, c, n: c)}


def decode_alone_and_interleaved(repo: str, n: int) -> dict:
    import onnxruntime as ort

    from server.decode import ImageLimits, decode_encoded, to_model_input
    from server.loadgen import load_labelled_folder
    from server.repository import list_models, load_manifest
    from server.requests import encoded_pixels

    info = load_manifest(list_models(repo)[0])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sessions = [ort.InferenceSession(str(e.onnx), opts, providers=["CPUExecutionProvider"]) for e in info.exits]
    images, _, _ = load_labelled_folder(ROOT / "samples" / "cifar10-test")
    limits = ImageLimits()

    def decode(b):
        t = time.perf_counter()
        opened, _ = encoded_pixels(b)
        x = to_model_input(decode_encoded(b, limits, size=info.input_shape[1:], opened=opened), info.input_shape,
                           info.mean, info.std)
        return time.perf_counter() - t, x

    def chain(x):
        x = x[None]
        for s in sessions:
            x = s.run(None, {"input": x})[0]

    alone = [decode(images[i % len(images)])[0] for i in range(n)]
    interleaved = []
    for i in range(n):
        dt, x = decode(images[i % len(images)])
        chain(x)
        interleaved.append(dt)
    return {"alone": 1000 * statistics.median(alone[WARMUP:]), "interleaved": 1000 * statistics.median(interleaved[WARMUP:])}


def chain_after_round_trips(repo: str, n: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    from server.client import Client
    from server.demo import start_server
    from server.loadgen import load_labelled_folder
    from server.repository import list_models, load_manifest

    info = load_manifest(list_models(repo)[0])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sessions = [ort.InferenceSession(str(e.onnx), opts, providers=["CPUExecutionProvider"]) for e in info.exits]
    x0 = np.random.default_rng(0).standard_normal((1, *info.input_shape)).astype(np.float32)
    images, _, _ = load_labelled_folder(ROOT / "samples" / "cifar10-test")

    def chain():
        t, x = time.perf_counter(), x0
        for s in sessions:
            x = s.run(None, {"input": x})[0]
        return time.perf_counter() - t

    proc, target, _ = start_server(repo, [], quiet=True)
    try:
        with Client(target) as c:
            tight = [chain() for _ in range(n)][WARMUP:]
            after = []
            for i in range(n):
                c.classify(images[i % len(images)], max_exit=0)  # a real request, answered at exit 0
                after.append(chain())
    finally:
        proc.terminate()
        proc.wait(30)
    return {"tight": 1000 * statistics.median(tight), "after": 1000 * statistics.median(after[WARMUP:])}


def compute_call_alone(repo: str, n: int) -> dict:
    import numpy as np

    from server.app import ServerApp, ServerConfig
    from server.jobs import ExitQueue, Job

    app = ServerApp(ServerConfig(repo=repo, port=0, metrics_port=None, http_port=None, threads=1, poll_s=0))
    app.load_models()
    engine = next(iter(app.engines.values()))
    engine.queues = [ExitQueue() for _ in engine.backends]  # as start() makes them, without the workers
    x = np.random.default_rng(0).standard_normal((1, *engine.info.input_shape)).astype(np.float32)
    from concurrent.futures import Future

    walls, runs = [], []
    for _ in range(n):
        job = Job(x[0], time.monotonic(), None, None, None, engine.last, Future())
        t = time.perf_counter()
        steps = engine._compute(0, [job], x)
        walls.append(time.perf_counter() - t)
        runs.append(sum(s.dt for s in steps))
        for q in engine.queues:
            q.busy = False
    app.executor.shutdown()
    app.decode_executor.shutdown()
    wall, run = statistics.median(walls[WARMUP:]), statistics.median(runs[WARMUP:])
    return {"wall": 1000 * wall, "runs": 1000 * run}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--requests", type=int, default=650)
    args = p.parse_args()
    s = in_server(args.repo, args.requests)
    d = decode_alone_and_interleaved(args.repo, args.requests)
    print(f"in the server (medians of {args.requests - WARMUP} requests through every exit): latency {s['latency']:.2f} ms = "
          f"arrival to compute call {s['to_compute']:.2f} (validation and decode {s['decode']:.2f}) + compute call "
          f"{s['call']:.2f} (ONNX Runtime runs {s['segments']:.2f}, Python between them {s['call'] - s['segments']:.2f})")
    print(f"decode, no server: {d['alone']:.3f} ms in a tight loop, {d['interleaved']:.3f} ms alternating with the "
          f"five-segment chain")
    r = chain_after_round_trips(args.repo, args.requests)
    print(f"five-segment chain, no server: {r['tight']:.2f} ms in a tight loop, {r['after']:.2f} ms right after a gRPC "
          f"Classify round trip to a server process ({r['after'] / r['tight']:.2f}x)")
    c = compute_call_alone(args.repo, args.requests)
    print(f"the engine's compute call alone, final-only request through every exit: {c['wall']:.3f} ms, of which "
          f"ONNX Runtime {c['runs']:.3f} ms: Python between segments {c['wall'] - c['runs']:.3f} ms")


if __name__ == "__main__":
    main()
