"""Closed-loop load: N concurrent clients, each sending its next image as soon as the last is answered.
Used by the demo and by bench/serving.py."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc

from server.client import Client


@dataclass
class Result:
    index: int
    ok: bool
    code: str
    label: int = -1
    exit_index: int = -1
    client_ms: float = 0.0
    server_ms: float = 0.0
    budget_met: bool = True


def labelled_files(root: str | Path) -> tuple[list[Path], list[str]]:
    """The image files under root/<class>/ (JPEG or PNG, in name order) and their class names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of images by class (root/<class>/<image>)")
    files, names = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                files.append(f)
                names.append(d.name)
    if not files:
        raise FileNotFoundError(f"no images under {root}/<class>/")
    return files, names


def load_labelled_folder(root: str | Path) -> tuple[list[bytes], list[str], list[str]]:
    """Encoded images and their class names from root/<class>/<file>."""
    files, names = labelled_files(root)
    return [f.read_bytes() for f in files], names, sorted(set(names))


def closed_loop(target: str, images: list[bytes], concurrency: int, total: int, timeout_s: float = 10.0,
                images_per_request: int = 1, **request) -> tuple[list[Result], float]:
    """Send `total` images (cycling over `images`) from `concurrency` clients; return one result per image
    and the wall s. With images_per_request N > 1 each call is a ClassifyBatch of N images (the gRPC cost of
    a call shared by N), and each of its images' results carries that call's latency."""
    results: list[Result] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker():
        with Client(target, timeout_s=timeout_s) as c:
            while True:
                with lock:
                    chunk = [i for i in (next(counter, None) for _ in range(images_per_request)) if i is not None]
                if not chunk:
                    return
                t = time.perf_counter()
                try:
                    if images_per_request == 1:
                        answers = [c.classify(images[chunk[0] % len(images)], **request)]
                    else:
                        answers = c.classify_batch([images[i % len(images)] for i in chunk], **request)
                    ms = 1000 * (time.perf_counter() - t)
                    res = [Result(i, True, "OK", r.label, r.exit_index, ms, r.server_latency_ms, r.budget_met)
                           for i, r in zip(chunk, answers)]
                except grpc.RpcError as e:
                    res = [Result(i, False, e.code().name, client_ms=1000 * (time.perf_counter() - t)) for i in chunk]
                with lock:
                    results.extend(res)

    t0 = time.perf_counter()
    # Daemon threads: a bench stopped by SIGTERM (see bench/serving.py exit_on_sigterm) must not wait for them.
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sorted(results, key=lambda r: r.index), time.perf_counter() - t0


def closed_loop_procs(target: str, images: list[bytes], concurrency: int, total: int, procs: int,
                      **request) -> tuple[list[Result], float]:
    """The same load from `procs` client processes (threads of one Python process cannot saturate a server
    on a many-core host); their results merged, indices kept distinct, the wall time the slowest one's."""
    if procs <= 1:
        return closed_loop(target, images, concurrency, total, **request)
    from concurrent.futures import ProcessPoolExecutor

    share = [total // procs + (i < total % procs) for i in range(procs)]
    with ProcessPoolExecutor(procs) as pool:
        futures = [pool.submit(closed_loop, target, images, max(1, concurrency // procs), n, **request) for n in share]
        parts = [f.result() for f in futures]
    merged, offset = [], 0
    for (results, _), n in zip(parts, share):
        for r in results:
            r.index += offset
        merged += results
        offset += n
    return merged, max(wall for _, wall in parts)


def summarise(results: list[Result], wall_s: float, labels: list[int] | None, num_exits: int) -> dict:
    ok = [r for r in results if r.ok]
    lat = sorted(r.client_ms for r in ok)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")  # noqa: E731
    hist = Counter(r.exit_index for r in ok)
    out = {"requests": len(results), "ok": len(ok), "errors": dict(Counter(r.code for r in results if not r.ok)),
           "throughput_rps": len(ok) / wall_s if wall_s else 0.0, "p50_ms": q(0.5), "p99_ms": q(0.99),
           "mean_ms": statistics.fmean(lat) if lat else float("nan"),
           "mean_server_ms": statistics.fmean(r.server_ms for r in ok) if ok else float("nan"),
           "exit_histogram": [hist.get(k, 0) / max(len(ok), 1) for k in range(num_exits)],
           "budget_met": sum(r.budget_met for r in ok) / max(len(ok), 1)}
    if labels is not None and ok:
        out["accuracy"] = sum(r.label == labels[r.index % len(labels)] for r in ok) / len(ok)
    return out
