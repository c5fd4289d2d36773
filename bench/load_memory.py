"""Loads past a memory limit: does the server refuse the load that would not fit (server/load_memory.py), or does the
kernel's OOM killer take it and every request with it?

    python -m bench.load_memory [--limit-mb 700] [--loads 12] [--server-args '--load-memory-floor-mb 256']

Needs root on a machine with cgroup v1 or v2 memory control (as a container's or a pod's limit): it makes a memory
cgroup under its own with `--limit-mb` (swap too, where v1 has the file), starts `python -m server` in it (explicit
model control, nothing loaded), then loads the default model's files under new names one at a time (Triton's
load override), each followed by a batch of 32 images on every model loaded so far, while 2 client threads send
Classify of test images to the first model all along. Reported per load: the outcome, the server's resident memory
and the cgroup's usage; at the end whether the process is alive, its exit status (-9: killed) and the clients'
answers and errors. Run once with the check (the default) and once with `--server-args '--load-memory-floor-mb -1'`
(off): the control.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from server.client import Client
from server.demo import ROOT
from server.loadgen import load_labelled_folder

BATCH = (np.arange(32 * 32 * 32 * 3).reshape(32, 32, 32, 3) * 37 % 256).astype(np.uint8)


def make_cgroup(limit_bytes: int) -> tuple[Path, str]:
    """A new memory cgroup under this process's own, limited; (its folder, 'v1' or 'v2')."""
    name = f"auxnet-bench-{os.getpid()}"
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            folder, kind, limit_file = Path("/sys/fs/cgroup") / path.strip("/") / name, "v2", "memory.max"
            break
        if "memory" in controllers.split(","):
            folder, kind, limit_file = Path("/sys/fs/cgroup/memory") / path.strip("/") / name, "v1", "memory.limit_in_bytes"
            break
    else:
        raise SystemExit("no memory cgroup found in /proc/self/cgroup")
    folder.mkdir()
    (folder / limit_file).write_text(str(limit_bytes))
    if kind == "v1" and (folder / "memory.memsw.limit_in_bytes").exists():
        (folder / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
    elif kind == "v2" and (folder / "memory.swap.max").exists():
        (folder / "memory.swap.max").write_text("0")
    return folder, kind


def start_in(cgroup: Path, server_args: list[str]) -> tuple[subprocess.Popen, str]:
    """The server started inside `cgroup` from its first instruction (the shell moves itself in, then execs)."""
    port_file = Path(tempfile.mkdtemp()) / "ports"
    argv = [sys.executable, "-m", "server", "--repo", str(ROOT / "models" / "repository"), "--model-control-mode",
            "explicit", "--port", "0", "--metrics-port", "0", "--http-port", "0", "--port-file", str(port_file),
            "--log-level", "WARNING", *server_args]
    proc = subprocess.Popen(["sh", "-c", f'echo $$ > {cgroup / "cgroup.procs"} && exec "$@"', "sh", *argv], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc, serving_at(proc, port_file)


def serving_at(proc: subprocess.Popen, port_file: Path) -> str:
    """The gRPC target of a server started with --port-file, once it serves (SystemExit if it does not)."""
    deadline = time.time() + 120
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"server did not start (exit {proc.poll()})")
        time.sleep(0.1)
    return f"127.0.0.1:{port_file.read_text().split()[0]}"


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def usage_mb(cgroup: Path, kind: str) -> float:
    try:
        return int((cgroup / ("memory.usage_in_bytes" if kind == "v1" else "memory.current")).read_text()) / 2**20
    except OSError:
        return float("nan")


def main() -> int:
    p = argparse.ArgumentParser("python -m bench.load_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit-mb", type=int, default=700)
    p.add_argument("--loads", type=int, default=12)
    p.add_argument("--server-args", default="")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test"))
    args = p.parse_args()
    folder = ROOT / "models" / "repository" / "auxnet56_5-cifar10"
    files = {f"file:{f.name}": f.read_bytes() for f in folder.resolve().glob("exit_*.onnx")}
    config = (folder / "manifest.json").read_text()
    images = load_labelled_folder(args.data)[0][:100]
    cgroup, kind = make_cgroup(args.limit_mb * 2**20)
    proc, target = start_in(cgroup, args.server_args.split())
    answers, errors, stop = [0], [], threading.Event()
    c = tgrpc.InferenceServerClient(target)
    c.load_model("m0", config=config, files=files)

    def send() -> None:
        with Client(target, retries=0) as client:
            i = 0
            while not stop.is_set():
                try:
                    client.classify(images[i % len(images)], model="m0")
                    answers[0] += 1
                except Exception as e:  # noqa: BLE001 - counted: a dead server answers nothing
                    errors.append(type(e).__name__ + ": " + str(getattr(e, "code", lambda: "")()))
                    time.sleep(0.05)
                i += 1

    clients = [threading.Thread(target=send, daemon=True) for _ in range(2)]
    for t in clients:
        t.start()
    print(f"cgroup {kind} {cgroup}, limit {args.limit_mb} MB; server args {args.server_args!r}; m0 loaded: "
          f"RSS {rss_mb(proc.pid):.0f} MB, cgroup usage {usage_mb(cgroup, kind):.0f} MB")
    loaded = ["m0"]
    try:
        for i in range(1, args.loads + 1):
            name = f"m{i}"
            try:
                c.load_model(name, config=config, files=files)
                loaded.append(name)
                for m in loaded:
                    x = tgrpc.InferInput("pixels", list(BATCH.shape), "UINT8")
                    x.set_data_from_numpy(BATCH)
                    c.infer(m, [x])
                outcome = "loaded"
            except InferenceServerException as e:
                outcome = f"{e.status()}: {e.message()[:230]}"
            print(f"load {i:>2}: RSS {rss_mb(proc.pid):6.0f} MB, cgroup usage {usage_mb(cgroup, kind):6.0f} MB, {outcome}")
            if proc.poll() is not None:
                print(f"server process gone: exit status {proc.returncode}")
                break
        time.sleep(2)
    finally:
        stop.set()
        for t in clients:
            t.join(5)
        alive = proc.poll() is None
        print(f"end: server {'alive' if alive else f'dead (exit status {proc.returncode})'}; {len(loaded)} models "
              f"loaded; clients: {answers[0]} answers, {len(errors)} errors {sorted(set(errors))[:3]}")
        if alive:
            proc.terminate()
            proc.wait(30)
        for _ in range(50):  # a cgroup is removed once its last process has gone
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
