"""The engine alone, no gRPC: progressive requests to the default model dropped after their first answer (what
ClassifyProgressive's task sees when its client leaves: cancelled, the engine skips the remaining segments),
against the same requests read to the end. If resident memory grows with the first and not the second, the leak
is ours; if neither grows, the growth under cancelled ClassifyProgressive calls is gRPC's (RESULTS §31).

    PYTHONPATH=. python bench/results/soak_cancel_ab_2026-12-01/engine_cancel.py cancel|full [requests=100000] [concurrency=8]
"""

import asyncio
import os
import sys
import time

import numpy as np

from bench.soak import proc_stats
from server.app import ServerApp, ServerConfig
from server.decode import ImageLimits, decode_encoded, to_model_input
from server.demo import ROOT
from server.loadgen import load_labelled_folder

SAMPLE_EVERY = 10_000


async def main(mode: str, n: int, concurrency: int) -> None:
    app = ServerApp(ServerConfig(repo=str(ROOT / "models" / "repository"), port=0, metrics_port=None, http_port=None,
                                 poll_s=0))
    app.load_models()
    await app.start()
    engine = app.engine_for("")
    info = engine.info
    files = load_labelled_folder(str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test"))[0][:200]
    images = [to_model_input(decode_encoded(b, ImageLimits(), size=info.input_shape[1:]), info.input_shape, info.mean,
                             info.std) for b in files]
    done, dropped, calls, rss = 0, 0, [], []

    async def one(i: int) -> None:
        nonlocal dropped
        first = asyncio.Event()
        task = asyncio.ensure_future(engine.classify(images[i % len(images)], time.monotonic(), None, None, None, None,
                                                     progress=lambda a: first.set()))
        if mode == "cancel":
            waiter = asyncio.ensure_future(first.wait())
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            dropped += task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def worker(k: int) -> None:
        nonlocal done
        i = k
        while done < n:
            await one(i)
            done += 1
            i += concurrency
            if done % SAMPLE_EVERY == 0:
                calls.append(done)
                rss.append(proc_stats(os.getpid())["rss_mb"])

    start = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.monotonic() - start
    await app.shutdown(grace_s=1)
    settled = slice(len(calls) // 5, None)  # after a fifth of the run, as bench.soak's warm-up
    slope = float(np.polyfit(calls[settled], rss[settled], 1)[0]) * 2**20
    print(f"{mode}: {done} requests ({dropped} dropped after their first answer), {done / elapsed:.0f}/s, "
          f"RSS {rss[len(calls) // 5]:.1f} -> {rss[-1]:.1f} MB after the first fifth, slope {slope:+.1f} bytes/request")
    print("  samples (MB): " + " ".join(f"{x:.1f}" for x in rss))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100_000,
                     int(sys.argv[3]) if len(sys.argv) > 3 else 8))
