"""Does grpc.aio itself leak native memory on server-streaming calls that the client cancels? A reproduction with
nothing of ours in it: a bare grpc.aio server whose one server-streaming method yields --messages small messages,
--gap-ms apart (as ClassifyProgressive yields one answer per exit), and client threads that either read every
message (`full`) or leave after the first (`cancel`, what a progressive client that has its answer does); a
unary method is the control. Each mode runs against a fresh server process; the server's resident memory is read
from /proc every --sample-calls calls after a warm-up, and its least-squares slope is reported in bytes per call.

    python -m bench.grpc_cancel_leak [--modes unary,full,cancel] [--calls 200000] [--clients 4]
    python -m bench.grpc_cancel_leak --modes bidi_echo,bidi_late   (bidirectional streams of 1-8 messages: each
        answered as it is read, as ModelStreamInfer answers a refused request, or all after the client half-closes)

RESULTS §31. The suspect: grpc/grpc#43360 (a batch's grpc_op array is not freed when the batch fails on a call
the client cancelled, or when the task awaiting it is cancelled).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import threading
import time

import grpc
import numpy as np

from bench.soak import proc_stats
from server.workers import free_port

SERVICE = "leakprobe.Probe"
PAYLOAD = b"x" * 64
BIDI = {"bidi_echo": "BidiEcho", "bidi_late": "BidiLate"}  # mode -> bidirectional method


def serve(port: int, messages: int, gap_s: float) -> None:
    async def unary(request, context):
        return PAYLOAD

    async def stream(request, context):
        for i in range(messages):
            if i:
                await asyncio.sleep(gap_s)
            yield PAYLOAD

    async def bidi_echo(request_iterator, context):  # each message answered as it is read
        async for _ in request_iterator:
            yield PAYLOAD

    async def bidi_late(request_iterator, context):  # every message read before the first answer
        n = 0
        async for _ in request_iterator:
            n += 1
        for _ in range(n):
            yield PAYLOAD

    async def main():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "BidiEcho": grpc.stream_stream_rpc_method_handler(bidi_echo),
            "BidiLate": grpc.stream_stream_rpc_method_handler(bidi_late)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def one_call(channel: grpc.Channel, mode: str, rng) -> None:
    if mode == "unary":
        channel.unary_unary(f"/{SERVICE}/Unary")(b"", timeout=10)
        return
    if mode in BIDI:
        n = rng.randint(1, 8)  # as the soak's ModelStreamInfer calls: 1-8 requests a stream
        got = sum(1 for _ in channel.stream_stream(f"/{SERVICE}/{BIDI[mode]}")(iter([PAYLOAD] * n), timeout=10))
        assert got == n, (mode, n, got)
        return
    call = channel.unary_stream(f"/{SERVICE}/Stream")(b"", timeout=10)
    if mode == "full":
        for _ in call:
            pass
    else:
        next(call)
        call.cancel()


def run_mode(mode: str, args) -> dict:
    port = free_port("127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-m", "bench.grpc_cancel_leak", "--serve", str(port), "--messages",
                             str(args.messages), "--gap-ms", str(args.gap_ms)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        done = [0]
        lock = threading.Lock()
        stop = threading.Event()

        def client(seed):
            rng = random.Random(seed)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                while not stop.is_set():
                    one_call(channel, mode, rng)
                    with lock:
                        done[0] += 1

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        calls, rss = [], []
        while done[0] < args.warmup + args.calls:
            time.sleep(0.2)
            if done[0] >= args.warmup + len(calls) * args.sample_calls:
                calls.append(done[0])
                rss.append(proc_stats(proc.pid)["rss_mb"])
        stop.set()
        for t in threads:
            t.join(15)
        elapsed = time.monotonic() - start
        bytes_per_call = float(np.polyfit(calls, rss, 1)[0]) * 2**20
        return {"mode": mode, "calls": done[0], "rate": done[0] / elapsed, "rss_first": rss[0], "rss_last": rss[-1],
                "bytes_per_call": bytes_per_call, "samples": rss}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser("python -m bench.grpc_cancel_leak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="unary,full,cancel")
    p.add_argument("--calls", type=int, default=200_000, help="calls measured per mode, after the warm-up")
    p.add_argument("--warmup", type=int, default=20_000)
    p.add_argument("--sample-calls", type=int, default=20_000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--messages", type=int, default=5)
    p.add_argument("--gap-ms", type=float, default=1.0)
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.messages, args.gap_ms / 1000)
        return
    print(f"grpcio {grpc.__version__}, {args.clients} client threads, {args.messages} messages {args.gap_ms:g} ms apart, "
          f"{args.calls} calls per mode after {args.warmup} of warm-up\n")
    print("| mode | calls | calls/s | server RSS after warm-up -> end (MB) | slope (bytes/call) |\n|---|---:|---:|---|---:|")
    for mode in args.modes.split(","):
        r = run_mode(mode, args)
        print(f"| {mode} | {r['calls']} | {r['rate']:.0f} | {r['rss_first']:.1f} -> {r['rss_last']:.1f} | "
              f"{r['bytes_per_call']:+.1f} |", flush=True)
        print(f"  samples: {' '.join(f'{x:.1f}' for x in r['samples'])}", flush=True)


if __name__ == "__main__":
    main()
