"""Loading, switching and unloading a model again and again under traffic (server/model_control.py): is any
request lost or answered with an unexpected status, and does the server's memory grow with each cycle?

    python -m bench.model_churn [--cycles 100] [--clients 4] [--repo models/repository] [--server-args ''] [--upload]

A copy of the repository's model gets a second version (a copy of its folder); one server process runs in
`--model-control-mode explicit` with the model loaded. Client threads send auxnet.v1 Classify of CIFAR-10 test
JPEGs without pause. Each cycle, through Triton's gRPC repository API (tritonclient): the model's folder is
re-pointed to the other version and loaded (a switch beside the old version), then unloaded, then loaded again.
Expected answers: OK, NOT_FOUND (between an unload and the next load), UNAVAILABLE naming the unload (a request
that found the model just before it); anything else is unexpected and its first messages kept. After every cycle
the server's resident memory, threads and open file descriptors are read from /proc; the report gives their
growth after the first 10% of cycles and its least-squares slope per cycle, and how long loads and unloads took.
With --upload every load carries the version's manifest and files in the request instead (Triton's override,
server/model_upload.py), and the report counts the staging folders left at the end (one: the version serving).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc

from bench.soak import proc_stats, slope_per_minute
from server.client import Client
from server.demo import ROOT, start_server
from server.loadgen import load_labelled_folder
from server.model_upload import LOCK_FILE

EXPECTED = {"OK", "NOT_FOUND", "UNAVAILABLE"}


def two_versions(repo: Path, work: Path) -> tuple[Path, str, list[Path]]:
    """A repository of the first model of `repo`, with its version folder copied once more: (repo, name, versions)."""
    name = sorted(p.name for p in repo.iterdir() if not p.name.startswith(".") and (p / "manifest.json").is_file())[0]
    versions = work / ".versions"
    versions.mkdir(parents=True)
    source = (repo / name).resolve()
    copies = [versions / f"{source.name}-a", versions / f"{source.name}-b"]
    for c in copies:
        shutil.copytree(source, c)
    (work / name).symlink_to(os.path.join(".versions", copies[0].name))
    return work, name, copies


def point(repo: Path, name: str, version: Path) -> None:
    """Re-point REPO/NAME atomically, as python -m export publishes."""
    tmp = repo / f".{name}.link"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.join(".versions", version.name))
    os.replace(tmp, repo / name)


class Traffic:
    def __init__(self, target: str, name: str, jpegs: list[bytes], clients: int):
        self.target, self.name, self.jpegs = target, name, jpegs
        self.codes: collections.Counter = collections.Counter()
        self.unexpected: list[str] = []
        self.unavailable_messages: collections.Counter = collections.Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]

    def run(self, seed: int) -> None:
        i = seed
        with Client(self.target, retries=0) as c:
            while not self.stop.is_set():
                i += 1
                try:
                    c.classify(self.jpegs[i % len(self.jpegs)], model=self.name, timeout_s=30)
                    code, message = "OK", ""
                except grpc.RpcError as e:
                    code, message = e.code().name, e.details() or ""
                except Exception as e:  # noqa: BLE001 - a client-side failure is unexpected too; keep sending
                    code, message = f"client {type(e).__name__}", str(e)
                with self.lock:
                    self.codes[code] += 1
                    if code == "UNAVAILABLE":
                        self.unavailable_messages[message[:80]] += 1
                    if code not in EXPECTED and len(self.unexpected) < 10:
                        self.unexpected.append(f"{code}: {message[:200]}")

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def main() -> None:
    p = argparse.ArgumentParser("python -m bench.model_churn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--images", default=str(ROOT / "samples" / "cifar10-test"))
    p.add_argument("--server-args", default="")
    p.add_argument("--upload", action="store_true", help="loads send the model's files (Triton's load override)")
    args = p.parse_args()
    import tritonclient.grpc as tgrpc

    jpegs = load_labelled_folder(args.images)[0][:200]
    with tempfile.TemporaryDirectory() as tmp:
        repo, name, versions = two_versions(Path(args.repo), Path(tmp) / "repo")
        proc, target, _ = start_server(str(repo), ["--model-control-mode", "explicit", "--model", name,
                                                   *args.server_args.split()], quiet=True)
        control = tgrpc.InferenceServerClient(target)
        samples, loads, switches, unloads = [], [], [], []
        started = time.time()

        def load(version: Path) -> None:
            if not args.upload:
                point(repo, name, version)
                control.load_model(name)
                return
            files = {f"file:{f.name}": f.read_bytes() for f in version.iterdir() if f.is_file() and f.name != "manifest.json"}
            control.load_model(name, config=(version / "manifest.json").read_text(), files=files)

        try:
            with Traffic(target, name, jpegs, args.clients) as traffic:
                time.sleep(2)
                samples.append(proc_stats(proc.pid))
                for cycle in range(args.cycles):
                    version = versions[(cycle + 1) % 2]
                    t = time.monotonic()
                    load(version)  # a switch to the other version, beside the serving one
                    switches.append(time.monotonic() - t)
                    t = time.monotonic()
                    control.unload_model(name)
                    unloads.append(time.monotonic() - t)
                    t = time.monotonic()
                    load(version)
                    loads.append(time.monotonic() - t)
                    samples.append(proc_stats(proc.pid))
                    if (cycle + 1) % max(1, args.cycles // 10) == 0:
                        s = samples[-1]
                        print(f"cycle {cycle + 1}: rss {s['rss_mb']:.1f} MB, threads {s['threads']}, fds {s['fds']}, "
                              f"answers {dict(traffic.codes)}", flush=True)
                time.sleep(1)
                staged = staged_folders(started) if args.upload else None
        finally:
            proc.terminate()
            proc.wait(60)
    report(args, samples, switches, unloads, loads, traffic)
    if staged is not None:
        print(f"staging folders left at the end: {len(staged)} (expected 1, the version serving): {staged}")


def staged_folders(since: float) -> list[str]:
    """The model folders in the staging folders of servers started after `since` (one process's, or a --workers
    supervisor's shared one)."""
    tmp = Path(tempfile.gettempdir())
    roots = [r for r in [*tmp.glob("auxnet-loaded-models-*"), *tmp.glob("auxnet-workers-*/shared/loaded-models")]
             if r.stat().st_mtime >= since - 1]
    return sorted(f.name for r in roots for f in r.iterdir() if f.name != LOCK_FILE)


def report(args, samples, switches, unloads, loads, traffic: Traffic) -> None:
    start = max(1, len(samples) // 10)
    tail = samples[start:]
    cycles = list(range(len(tail)))
    print(f"\n{args.cycles} cycles (switch, unload, load) under {args.clients} clients; server args: "
          f"'{args.server_args}'")
    for key in ("rss_mb", "threads", "fds"):
        values = [s[key] for s in tail]
        per_cycle = slope_per_minute([c * 60 for c in cycles], values)  # per "minute" of 60 units = per cycle
        print(f"{key}: {samples[0][key]:g} at start, {tail[0][key]:g} after {start} cycles, {tail[-1][key]:g} at the end "
              f"(slope {per_cycle:+.3f} per cycle after cycle {start})")
    for what, times in (("switch (load of a new version)", switches), ("unload", unloads), ("load", loads)):
        print(f"{what}: median {1000 * statistics.median(times):.0f} ms, max {1000 * max(times):.0f} ms")
    print(f"answers: {dict(traffic.codes)}")
    print(f"UNAVAILABLE messages: {dict(traffic.unavailable_messages)}")
    print(f"unexpected: {sum(n for c, n in traffic.codes.items() if c not in EXPECTED)} {traffic.unexpected}")


if __name__ == "__main__":
    main()
