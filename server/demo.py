"""The main job: start the server on the embedded default model and classify the sample CIFAR-10 test
images under a few policies, printing accuracy, exit histogram and latency.

    python -m server.demo [--repo models/repository] [--images samples/cifar10-test]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from server.arguments import at_least, real_in
from server.client import Client
from server.loadgen import closed_loop, load_labelled_folder, summarise

ROOT = Path(__file__).resolve().parent.parent


def start_server(repo: str, extra: list[str], stderr=None, quiet: bool = False,
                 root: Path = ROOT, env: dict | None = None) -> tuple[subprocess.Popen, str, int]:
    """`python -m server` on free ports, as its own process; returns (process, target, metrics port).
    `root`: the checkout to run it from (benchmarks compare against an older one); `env`: added to its
    environment. Its PYTHONPATH: `env`'s, then `root`, then this process's own (where the GPU script puts the
    packages it installed: the server must import those, not the machine's)."""
    port_file = Path(tempfile.mkdtemp()) / "ports"
    paths = ((env or {}).get("PYTHONPATH"), str(root), os.environ.get("PYTHONPATH"))
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    proc = subprocess.Popen([sys.executable, "-m", "server", "--repo", str(repo), "--port", "0", "--metrics-port", "0",
                             "--http-port", "0", "--port-file", str(port_file), "--log-level", "WARNING", *extra], cwd=root, stderr=stderr,
                            text=True, env=env)
    deadline = time.time() + 120
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None:
            detail = proc.stderr.read() if stderr is not None else ""
            raise SystemExit(f"server exited with code {proc.returncode} before serving {detail}")
        if time.time() > deadline:
            proc.kill()
            raise SystemExit("server did not start within 120 s")
        time.sleep(0.1)
    port, metrics = port_file.read_text().split()[:2]
    if not quiet:
        print(f"server pid {proc.pid} on 127.0.0.1:{port}, metrics at http://127.0.0.1:{metrics}/metrics")
    return proc, f"127.0.0.1:{port}", int(metrics)


def main(argv=None) -> int:
    p = argparse.ArgumentParser("python -m server.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--images", default=str(ROOT / "samples" / "cifar10-test"))
    p.add_argument("--concurrency", type=at_least(1, 1024), default=8)
    p.add_argument("--budget-ms", type=real_in(0, 3_600_000, low_open=True), nargs="+", default=[3.0, 15.0])
    args = p.parse_args(argv)
    try:
        images, names, _ = load_labelled_folder(args.images)
    except OSError as e:  # a missing or unreadable folder: named, not a traceback (bench.cli_fuzz)
        p.error(f"--images: {e}")
    proc, target, _ = start_server(args.repo, [])
    try:
        with Client(target) as c:
            info = c.model_info()
        classes = list(info.classes)
        labels = [classes.index(n) for n in names]
        thresholds = [round(e.default_threshold, 3) for e in info.exits[:-1]]
        print(f"model {info.name}: {info.architecture}, exits at layers {[e.layer for e in info.exits]}, "
              f"trained {info.training_method} on {info.dataset}; backend {info.backend}")
        policies = [
            ("final exit only", {}),
            (f"calibrated policy ({info.policy_score}) {thresholds}", {"calibrated_policy": True}),
        ] + [(f"latency budget {b} ms", {"budget_ms": b}) for b in args.budget_ms]
        print(f"\n{len(images)} CIFAR-10 test images, {args.concurrency} concurrent clients\n")
        print(f"{'policy':<52} {'accuracy':>8} {'mean ms':>8} {'p99 ms':>7}  exit histogram (layers "
              f"{', '.join(str(e.layer) for e in info.exits)})")
        for name, kw in policies:
            results, wall = closed_loop(target, images, args.concurrency, len(images), **kw)
            s = summarise(results, wall, labels, len(info.exits))
            hist = " ".join(f"{100 * h:4.0f}%" for h in s["exit_histogram"])
            err = f"  errors {s['errors']}" if s["errors"] else ""
            print(f"{name:<52} {100 * s['accuracy']:7.1f}% {s['mean_ms']:8.2f} {s['p99_ms']:7.2f}  {hist}{err}")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        print(f"\nserver stopped with exit code {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
