"""What system shared memory saves (server/shared_memory.py): large raw pixel tensors sent in the gRPC message
against the same tensors written by the client into a registered region, side by side.

    python -m bench.shared_memory [--sizes 256 1024] [--requests 100] [--rounds 3] [--repo models/repository]

One server process (--allow-client-shm) on the default model; one tritonclient gRPC client sends, one request at a
time, `pixels` UINT8 [1, S, S, 3] of a random image (resized by the server to the model's input) with max_exit 0,
so the network's compute is small beside moving and reading the tensor. "message": the tensor in
raw_input_contents; "shared memory": the client writes each request's image into its region (counted in its time)
and names the region. Rounds alternate the two. Reported per size and mode: the client's latency per request
(median, mean) and the server process's CPU seconds per request (/proc), medians over rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import numpy as np

from server.demo import ROOT, start_server

MODEL_PARAMS = {"max_exit": 0}


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(client, model: str, image: np.ndarray, mode: str, handle, requests: int, pid: int) -> tuple[list[float], float]:
    import tritonclient.grpc as tgrpc
    import tritonclient.utils.shared_memory as shm

    latencies, cpu0 = [], cpu_seconds(pid)
    for _ in range(requests):
        t = time.perf_counter()
        inp = tgrpc.InferInput("pixels", list(image.shape), "UINT8")
        if mode == "message":
            inp.set_data_from_numpy(image)
        else:
            shm.set_shared_memory_region(handle, [image])
            inp.set_shared_memory("bench", image.nbytes)
        client.infer(model, [inp], outputs=[tgrpc.InferRequestedOutput("label")], parameters=MODEL_PARAMS)
        latencies.append(time.perf_counter() - t)
    return latencies, (cpu_seconds(pid) - cpu0) / requests


def main() -> None:
    p = argparse.ArgumentParser("python -m bench.shared_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    args = p.parse_args()
    import tritonclient.grpc as tgrpc
    import tritonclient.utils.shared_memory as shm

    proc, target, _ = start_server(args.repo, ["--allow-client-shm", "--max-message-mb", "64"], quiet=True)
    rows = []
    try:
        client = tgrpc.InferenceServerClient(target)
        model = client.get_model_repository_index(as_json=True)["models"][0]["name"]
        for size in args.sizes:
            image = np.random.default_rng(size).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
            key = f"/auxnet-bench-{uuid.uuid4().hex[:8]}"
            handle = shm.create_shared_memory_region("bench", key, image.nbytes)
            client.register_system_shared_memory("bench", key, image.nbytes)
            try:
                run(client, model, image, "message", handle, 5, proc.pid)  # warm-up, both paths
                run(client, model, image, "shared memory", handle, 5, proc.pid)
                got = {"message": [], "shared memory": []}
                for _ in range(args.rounds):
                    for mode in got:
                        got[mode].append(run(client, model, image, mode, handle, args.requests, proc.pid))
                for mode, results in got.items():
                    medians = [1000 * statistics.median(lat) for lat, _ in results]
                    means = [1000 * statistics.fmean(lat) for lat, _ in results]
                    cpus = [1000 * cpu for _, cpu in results]
                    rows.append((size, image.nbytes, mode, statistics.median(medians), statistics.median(means),
                                 statistics.median(cpus), cpus))
            finally:
                client.unregister_system_shared_memory("bench")
                shm.destroy_shared_memory_region(handle)
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"\n{args.rounds} rounds x {args.requests} sequential requests per mode, max_exit 0, one client")
    print("| image | tensor bytes | input sent as | client latency p50 ms | mean ms | server CPU ms/request (per round) |")
    print("|---|---:|---|---:|---:|---:|")
    for size, nbytes, mode, p50, mean, cpu, cpus in rows:
        print(f"| {size}x{size}x3 UINT8 | {nbytes:,} | {mode} | {p50:.2f} | {mean:.2f} | {cpu:.2f} "
              f"({' '.join(f'{c:.2f}' for c in cpus)}) |")


if __name__ == "__main__":
    main()
