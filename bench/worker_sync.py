"""What sharing run-time changes across `--workers` processes costs (server/worker_sync.py): the time a client
waits for a model load, an unload, a shared memory registration and unregistration, and a log settings change,
with one process (nothing shared) and with a supervisor of N workers (the call answers once every worker has
applied it), and whether every worker then answers as the call said.

    python -m bench.worker_sync [--workers 1 2 4] [--rounds 5] [--repo models/repository]

Each server starts in explicit model control mode with no model loaded and --allow-client-shm; each round, over
HTTP (the Open Inference Protocol, Triton's extensions): load the model, classify over 16 new connections
(the kernel spreads them over the workers; each must answer 200), unload, classify over 16 new connections
(each must answer 404), register a region, unregister it, change a log setting. Reported: median and max
milliseconds per call, and the count of new-connection checks that went as the call said.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from server.demo import ROOT

SPREAD = 16


def call(url: str, body: dict) -> tuple[int, dict | list]:
    """One POST on a new connection (urllib sends Connection: close): (status, JSON answer)."""
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def start(repo: str, workers: int) -> tuple[subprocess.Popen, int]:
    port_file = Path(tempfile.mkdtemp()) / "ports"
    proc = subprocess.Popen([sys.executable, "-m", "server", "--repo", repo, "--workers", str(workers),
                             "--threads", "1", "--port", "0", "--metrics-port", "0", "--http-port", "0",
                             "--model-control-mode", "explicit", "--allow-client-shm", "--port-file", str(port_file),
                             "--log-level", "WARNING"], cwd=ROOT)
    deadline = time.time() + 120
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"server with --workers {workers} did not start")
        time.sleep(0.1)
    return proc, int(port_file.read_text().split()[3])


def timed(url: str, body: dict) -> float:
    t = time.perf_counter()
    code, doc = call(url, body)
    if code != 200:
        raise SystemExit(f"{url}: {code} {doc}")
    return 1000 * (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser("python -m bench.worker_sync", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    args = p.parse_args(argv)
    import tritonclient.utils.shared_memory as shm

    model = sorted(d.name for d in Path(args.repo).iterdir() if (d / "manifest.json").exists())[0]
    manifest = json.loads((Path(args.repo) / model / "manifest.json").read_text())
    size = manifest.get("image_size", 32)
    pixels = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    body = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.flatten().tolist()}],
            "outputs": [{"name": "label"}]}
    key = f"/auxnet-bench-{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region(key.strip("/"), key, pixels.nbytes)
    print(f"model {model}; {args.rounds} rounds; ms per call: median / max; checks over {SPREAD} new connections")
    print(f"{'workers':>7} {'load':>13} {'unload':>13} {'register':>13} {'unregister':>13} {'log change':>13}  checks as said")
    try:
        for n in args.workers:
            proc, http_port = start(args.repo, n)
            base = f"http://127.0.0.1:{http_port}/v2"
            times: dict[str, list[float]] = {k: [] for k in ("load", "unload", "register", "unregister", "log")}
            good = total = 0
            try:
                for r in range(args.rounds):
                    times["load"].append(timed(f"{base}/repository/models/{model}/load", {}))
                    good += sum(call(f"{base}/models/{model}/infer", body)[0] == 200 for _ in range(SPREAD))
                    times["unload"].append(timed(f"{base}/repository/models/{model}/unload", {}))
                    good += sum(call(f"{base}/models/{model}/infer", body)[0] == 404 for _ in range(SPREAD))
                    total += 2 * SPREAD
                    times["register"].append(timed(f"{base}/systemsharedmemory/region/r/register",
                                                   {"key": key, "byte_size": pixels.nbytes}))
                    times["unregister"].append(timed(f"{base}/systemsharedmemory/region/r/unregister", {}))
                    times["log"].append(timed(f"{base}/logging", {"log_verbose_level": r % 2}))
            finally:
                proc.terminate()
                proc.wait(60)
            cells = [f"{statistics.median(v):6.1f} / {max(v):5.0f}" for v in times.values()]
            print(f"{n:>7} " + " ".join(f"{c:>13}" for c in cells) + f"  {good} of {total}")
    finally:
        shm.destroy_shared_memory_region(handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
