"""Clients that give up, through the Open Inference Protocol's HTTP surface: some requests come from clients with
a short timeout (a UI that moves on, a caller with its own deadline) that declare no deadline to the server, as
curl or any plain HTTP client with a timeout does; a request timed out closes its connection. Does the server go
on computing answers nobody reads, and do the patient clients pay for it?

    python -m bench.http_abandon [--factor 1] [--seconds 10] [--impatient-share 0.5] [--impatient-timeout-ms 20]
                                 [--patient-timeout-ms 10000] [--rounds 2]

Two servers alternate each round: as built (a closed connection cancels its request: aiohttp's
handler_cancellation, server/v2/http.py) and with aiohttp's default restored by a sitecustomize hook this
script writes (the handler runs on to its end), the server knowing nothing of it. First the capacity is
measured with a closed loop of 16 clients (the first server's sets the rate of every run); then requests arrive
at `factor` x capacity on a fixed schedule (open loop), JSON with the image in base64, keep-alive connections,
interleaved impatient and patient. Reported: the patient requests' answers per second and latency, the
impatient ones' outcomes, the images the server computed per second (Triton's nv_inference_count) and the
server's CPU per patient answer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

from bench.request_cost import tree_cpu_s
from bench.serving import add_image_args, load_test_images
from server.demo import start_server

HOOK = '''
import os
if os.environ.get("AUXNET_BENCH_HANDLER_RUNS_ON"):
    import aiohttp.web
    _init = aiohttp.web.AppRunner.__init__
    def _run_on(self, app, **kw):
        kw["handler_cancellation"] = False  # aiohttp's default: a handler runs on after its client went away
        _init(self, app, **kw)
    aiohttp.web.AppRunner.__init__ = _run_on
'''
VARIANTS = {"closed connection cancels (as built)": {}, "handler runs on (aiohttp default)": {"AUXNET_BENCH_HANDLER_RUNS_ON": "1"}}


def body(image: bytes) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
                                   "data": [base64.b64encode(image).decode()]}], "outputs": [{"name": "label"}]}).encode()


def computed(metrics_port: int, model: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("nv_inference_count{") and f'model="{model}"' in line)


async def one(session, url: str, data: bytes, timeout_s: float) -> tuple[str, float]:
    """(outcome, seconds) of one request."""
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=data, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                headers={"Content-Type": "application/json"}) as r:
            await r.read()
            outcome = "ok" if r.status == 200 else "refused" if r.status in (429, 503) else f"http {r.status}"
    except asyncio.TimeoutError:
        outcome = "timed out"
    except aiohttp.ClientError as e:
        outcome = type(e).__name__
    return outcome, time.perf_counter() - t0


async def closed_loop(url: str, bodies: list[bytes], seconds: float) -> float:
    """Answers per second with 16 clients, each waiting for its answer before the next."""
    done, stop = 0, time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def client(i):
            nonlocal done
            while time.perf_counter() < stop:
                if (await one(session, url, bodies[i % len(bodies)], 30))[0] == "ok":
                    done += 1
                i += 16

        await asyncio.gather(*(client(i) for i in range(16)))
    return done / seconds


async def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float, timeouts: list[float]) -> list:
    """Requests at `rate`/s on a fixed schedule, whatever the answers, the i-th with client timeout
    timeouts[i % len(timeouts)]; keep-alive connections (one whose request timed out is closed by the client).
    Returns (timeout, outcome, seconds) per request."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks, start = [], time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one(session, url, bodies[i % len(bodies)], timeouts[i % len(timeouts)])))
        done = await asyncio.gather(*tasks)
    return [(timeouts[i % len(timeouts)], *d) for i, d in enumerate(done)]


def measure(args, hook_dir: str, env: dict, bodies: list[bytes], rate: float | None) -> dict:
    proc, _, metrics_port = start_server(args.repo, ["--monitor-fraction", "0"], quiet=True,
                                         env={"PYTHONPATH": hook_dir, **env})
    http_port = int(Path(proc.args[proc.args.index("--port-file") + 1]).read_text().split()[3])
    url = f"http://127.0.0.1:{http_port}/v2/models/{args.model}/infer"
    try:
        asyncio.run(closed_loop(url, bodies, 1.0))  # warm-up
        capacity = asyncio.run(closed_loop(url, bodies, 3.0))
        rate = rate or args.factor * capacity
        n0, cpu0 = computed(metrics_port, args.model), tree_cpu_s(proc.pid)
        patient, impatient = args.patient_timeout_ms / 1000, args.impatient_timeout_ms / 1000
        share = round(args.impatient_share * 10)
        timeouts = [impatient] * share + [patient] * (10 - share)  # interleaved: every 10th request's pattern
        outcomes = asyncio.run(open_loop(url, bodies, rate, args.seconds, timeouts))
        time.sleep(1.0)  # what the server still computes for requests already abandoned
        n1, cpu1 = computed(metrics_port, args.model), tree_cpu_s(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    calm = [(o, t) for timeout, o, t in outcomes if timeout == patient]
    hasty = [o for timeout, o, _ in outcomes if timeout == impatient]
    ok = sorted(t for o, t in calm if o == "ok")
    return {"capacity": capacity, "rate": rate, "patient_ok_per_s": len(ok) / args.seconds,
            "patient_not_ok": len(calm) - len(ok), "patient_p50_ms": 1000 * ok[len(ok) // 2] if ok else float("nan"),
            "patient_p99_ms": 1000 * ok[int(0.99 * (len(ok) - 1))] if ok else float("nan"),
            "impatient_timed_out": hasty.count("timed out"), "impatient_ok": hasty.count("ok"),
            "computed_per_s": (n1 - n0) / args.seconds, "cpu_ms_per_patient_ok": 1000 * (cpu1 - cpu0) / max(len(ok), 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    add_image_args(p, per_class=20)
    p.add_argument("--model", default="auxnet56_5-cifar10")
    p.add_argument("--factor", type=float, default=1.0, help="offered load as a multiple of the measured capacity")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--impatient-share", type=float, default=0.5, help="share of requests whose client gives up soon (tenths)")
    p.add_argument("--impatient-timeout-ms", type=float, default=20.0)
    p.add_argument("--patient-timeout-ms", type=float, default=10_000.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    images, _ = load_test_images(args.data, args.per_class)
    bodies = [body(im) for im in images]
    hook_dir = tempfile.mkdtemp()
    with open(os.path.join(hook_dir, "sitecustomize.py"), "w") as f:
        f.write(HOOK)
    rows: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    rate = None  # the first server's measured capacity sets one offered rate for every run
    for r in range(args.rounds):
        for variant, env in VARIANTS.items():
            row = measure(args, hook_dir, env, bodies, rate)
            rate = row["rate"]
            rows[variant].append(row)
            print(f"round {r + 1} {variant}: {row}", flush=True)
    print(f"\noffered {rate:.0f} requests/s for {args.seconds:g} s a run ({args.factor:g}x the measured capacity), "
          f"{args.impatient_share:.0%} with a {args.impatient_timeout_ms:g} ms client timeout, the rest "
          f"{args.patient_timeout_ms:g} ms; {args.rounds} rounds, medians\n")
    print("| server | patient answers/s | patient not answered | patient p50 / p99 ms | impatient timed out / answered | "
          "images computed/s | server CPU ms per patient answer |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant, got in rows.items():
        m = {k: statistics.median(g[k] for g in got) for k in got[0]}
        print(f"| {variant} | {m['patient_ok_per_s']:.0f} | {m['patient_not_ok']:.0f} | {m['patient_p50_ms']:.0f} / "
              f"{m['patient_p99_ms']:.0f} | {m['impatient_timed_out']:.0f} / {m['impatient_ok']:.0f} | "
              f"{m['computed_per_s']:.0f} | {m['cpu_ms_per_patient_ok']:.2f} |")


if __name__ == "__main__":
    main()
