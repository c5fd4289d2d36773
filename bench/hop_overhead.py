"""What the server adds to a request that runs through every exit (issue 12): one client, sequential
requests at batch 1, no early exit; the server's own latency against the sum of its segments' compute.

    python -m bench.hop_overhead [--requests 400] [--compare-root /path/to/older/checkout]

Per segment compute is what the server itself timed (`auxnet_exit_compute_seconds`, mean). With
--compare-root the same measurement runs against a server started from another checkout, alternating,
so that both figures come from one run on one machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from server.client import Client
from server.demo import ROOT, start_server
from server.loadgen import load_labelled_folder


def compute_means(port: int) -> list[float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    sums, counts = {}, {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "auxnet_exit_compute_seconds_sum":
                sums[s.labels["exit"]] = s.value
            elif s.name == "auxnet_exit_compute_seconds_count":
                counts[s.labels["exit"]] = s.value
    return [sums[k] / counts[k] for k in sorted(sums, key=int) if counts.get(k)]


def measure(root: Path, repo: str, images: list[bytes], n: int, extra: list[str] = ()) -> dict:
    proc, target, mport = start_server(repo, list(extra), quiet=True, root=root)
    try:
        with Client(target) as c:
            for im in images[:50]:  # warm-up
                c.classify(im)
            base = compute_means(mport)
            server_ms, client_ms = [], []
            for i in range(n):
                t = time.perf_counter()
                r = c.classify(images[i % len(images)])
                client_ms.append(1000 * (time.perf_counter() - t))
                server_ms.append(r.server_latency_ms)
                assert r.exit_index == len(base) - 1
            segs = compute_means(mport)
    finally:
        proc.terminate()
        proc.wait(30)
    compute = 1000 * sum(segs)
    return {"server_p50": statistics.median(server_ms), "client_p50": statistics.median(client_ms),
            "compute_ms": compute, "segments_ms": [1000 * s for s in segs]}


def raw_chain_ms(repo: str, images: list[bytes], n: int) -> dict:
    """The same images through the five ONNX Runtime sessions in this process (one intra-op thread, as the
    server runs them; measured once per round, right after that round's servers), two ways: a tight loop
    over pre-decoded inputs (every cache hot with the previous identical chain), and as a request runs it,
    each chain right after decoding its own image (what a server cannot avoid: the decode and the chain
    evict each other's caches). Medians in ms."""
    import onnxruntime as ort

    from server.decode import ImageLimits, decode_encoded, to_model_input
    from server.repository import list_models, load_manifest

    info = load_manifest(list_models(repo)[0])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sessions = [ort.InferenceSession(str(e.onnx), opts, providers=["CPUExecutionProvider"]) for e in info.exits]
    limits, size = ImageLimits(), info.input_shape[1:]
    decode = lambda b: to_model_input(decode_encoded(b, limits, size=size), info.input_shape, info.mean, info.std)[None]  # noqa: E731
    xs = [decode(b) for b in images]

    def chain(x, per=None):
        t0 = time.perf_counter()
        for k, s in enumerate(sessions):
            t = time.perf_counter()
            x = s.run(None, {"input": x})[0]
            if per is not None:
                per[k].append(1000 * (time.perf_counter() - t))
        return 1000 * (time.perf_counter() - t0)

    per = [[] for _ in sessions]
    tight = [chain(xs[i % len(xs)], per if i >= 50 else None) for i in range(n + 50)][50:]
    as_run, decoded = [], []
    for i in range(n + 50):
        t = time.perf_counter()
        x = decode(images[i % len(images)])
        d = 1000 * (time.perf_counter() - t)
        c = chain(x)
        if i >= 50:
            as_run.append(c)
            decoded.append(d + c)
    return {"tight": statistics.median(tight), "segments": [statistics.median(p) for p in per],
            "as_run": statistics.median(as_run), "decode_and_chain": statistics.median(decoded)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--images", default=str(ROOT / "samples" / "cifar10-test"))
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compare-root", help="another checkout of this project, measured alternately")
    p.add_argument("--compare-args", help="server flags measured alternately with the defaults, e.g. '--threads 1'")
    args = p.parse_args()
    images, _, _ = load_labelled_folder(args.images)
    roots = {"this checkout": (ROOT, [])}
    if args.compare_root:
        roots[f"compare: {args.compare_root}"] = (Path(args.compare_root).resolve(), [])
    if args.compare_args:
        roots[f"this checkout {args.compare_args}"] = (ROOT, args.compare_args.split())
    runs = {name: [] for name in roots}
    refs = []  # the raw chain measured in every round too, right after the servers: ratios paired in time
    for _ in range(args.rounds):
        for name, (root, extra) in roots.items():
            runs[name].append(measure(root, str(Path(args.repo).resolve()), images, args.requests, extra))
        refs.append(raw_chain_ms(args.repo, images, args.requests))
    ref = {key: statistics.median(r[key] for r in refs) for key in ("tight", "as_run", "decode_and_chain")}
    raw = ref["tight"]
    raw_segs = [statistics.median(r["segments"][k] for r in refs) for k in range(len(refs[0]["segments"]))]
    print(f"machine: {platform.processor() or platform.machine()}; one client, {args.requests} sequential requests "
          f"through every exit, {args.rounds} alternating rounds (medians)")
    print("| server | server p50 ms | client p50 ms | segment compute in the server, sum ms | server / that | "
          "server / raw chain | segments ms |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, rs in runs.items():
        med = lambda key, rs=rs: statistics.median(r[key] for r in rs)  # noqa: E731
        segs = " / ".join(f"{statistics.median(r['segments_ms'][k] for r in rs):.2f}" for k in range(len(rs[0]["segments_ms"])))
        print(f"| {name} | {med('server_p50'):.2f} | {med('client_p50'):.2f} | {med('compute_ms'):.2f} | "
              f"{med('server_p50') / med('compute_ms'):.2f} | {med('server_p50') / raw:.2f} | {segs} |")
    print(f"| raw ONNX Runtime chain, tight loop, no server | - | - | {raw:.2f} | - | 1.00 | "
          f"{' / '.join(f'{t:.2f}' for t in raw_segs)} |")
    print(f"\nNo server, each chain right after decoding its own image: chain {ref['as_run']:.2f} ms, decode + chain "
          f"{ref['decode_and_chain']:.2f} ms. The server's p50 against them:")
    for name, rs in runs.items():
        p50 = statistics.median(r["server_p50"] for r in rs)
        print(f"- {name}: {p50 / ref['as_run']:.2f}x the chain as a request runs it, "
              f"{p50 / ref['decode_and_chain']:.2f}x decode + chain (what the server adds beyond them)")
    print("\nPer round (server p50 / the tight-loop chain measured right after it):")
    for name, rs in runs.items():
        ratios = [r["server_p50"] / f["tight"] for r, f in zip(rs, refs)]
        print(f"- {name}: {', '.join(f'{v:.2f}x' for v in ratios)}; median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
