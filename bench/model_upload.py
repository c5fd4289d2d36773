"""What a load with an override costs (server/model_upload.py): the time tritonclient's `load_model` waits when the
model's files travel in the request (gRPC bytes, HTTP base64) or only its manifest does, against a plain load
from the repository, with one process and under --workers N; and whether the loaded model answers as the
repository's copy does.

    python -m bench.model_upload [--workers 1 2] [--rounds 5] [--repo models/repository]

Each server starts in explicit model control mode with nothing loaded. Each round loads the repository's model
plainly, then under the name "uploaded": with its files over gRPC, with its files over HTTP, and with its
manifest alone; each followed by the probabilities of 8 test images (must equal the plain load's) and an unload.
Reported: median and max milliseconds per load, the bytes sent, and how many answers matched.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from bench.worker_sync import start
from server.demo import ROOT

IMAGES = (np.arange(8 * 32 * 32 * 3).reshape(8, 32, 32, 3) * 37 % 256).astype(np.uint8)


def probabilities(c, name: str) -> np.ndarray:
    inp = tgrpc.InferInput("pixels", list(IMAGES.shape), "UINT8")
    inp.set_data_from_numpy(IMAGES)
    return c.infer(name, [inp], outputs=[tgrpc.InferRequestedOutput("probabilities")]).as_numpy("probabilities")


def timed(load) -> float:
    t0 = time.perf_counter()
    load()
    return 1000 * (time.perf_counter() - t0)


def run(repo: Path, model: str, workers: int, rounds: int) -> list[tuple]:
    folder = (repo / model).resolve()
    config = (folder / "manifest.json").read_text()
    files = {f"file:{f.name}": f.read_bytes() for f in folder.iterdir() if f.is_file() and f.name != "manifest.json"}
    sent = sum(map(len, files.values())) + len(config)
    proc, http_port = start(str(repo), workers)
    grpc_port = int(Path(proc.args[proc.args.index("--port-file") + 1]).read_text().split()[0])
    g = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    h = thttp.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=300)
    variants = {"plain load from the repository": (model, lambda: g.load_model(model), 0),
                "files in the request, gRPC": ("uploaded", lambda: g.load_model("uploaded", config=config, files=files), sent),
                "files in the request, HTTP (base64)": ("uploaded", lambda: h.load_model("uploaded", config=config, files=files),
                                                        sent),
                "manifest alone (the repository's files)": (model, lambda: g.load_model(model, config=config), len(config))}
    times: dict[str, list[float]] = {v: [] for v in variants}
    matched: dict[str, int] = {v: 0 for v in variants}
    try:
        for _ in range(rounds):
            g.load_model(model)
            reference = probabilities(g, model)
            g.unload_model(model)
            for variant, (name, load, _) in variants.items():
                times[variant].append(timed(load))
                matched[variant] += all(np.array_equal(probabilities(g, name), reference) for _ in range(4))
                g.unload_model(name)
    finally:
        proc.terminate()
        proc.wait(60)
    return [(workers, v, statistics.median(times[v]), max(times[v]), variants[v][2], matched[v], rounds) for v in variants]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--model", default="auxnet56_5-cifar10")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    rows = [row for w in args.workers for row in run(Path(args.repo), args.model, w, args.rounds)]
    print("| workers | load | median ms | max ms | bytes sent | rounds answering as the repository's copy |")
    print("|---:|---|---:|---:|---:|---:|")
    for workers, variant, median, worst, sent, matched, rounds in rows:
        print(f"| {workers} | {variant} | {median:.0f} | {worst:.0f} | {sent:,} | {matched} of {rounds} |")


if __name__ == "__main__":
    main()
