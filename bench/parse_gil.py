"""Would parsing big gRPC messages on a thread keep the event loop free? Only if protobuf's parse let go of the GIL.

    python -m bench.parse_gil [--pixels 1024] [--parses 10]

A ModelInferRequest holding one image of PIXELS x PIXELS x 3 as typed `uint_contents` (the slowest form to parse: one
varint per value; what KServe's and other clients send where tritonclient sends raw bytes) and, for comparison, as
`raw_input_contents`. For each form: the parse time on this thread, then the same parses on a second thread while
this one sleeps 0.5 ms at a time, as an event loop's other work would run: the longest gap between its wake-ups says
how long the loop would be held. A gap near the parse time means the parse holds the GIL throughout.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from protos.oip import open_inference_pb2 as oip


def message(pixels: int, typed: bool) -> bytes:
    r = oip.ModelInferRequest(model_name="m")
    values = np.random.default_rng(0).integers(0, 256, 3 * pixels * pixels)
    t = r.inputs.add(name="pixels", datatype="UINT8", shape=[1, pixels, pixels, 3])
    if typed:
        t.contents.uint_contents.extend(values.tolist())
    else:
        r.raw_input_contents.append(values.astype(np.uint8).tobytes())
    return r.SerializeToString()


def longest_gap_ms(raw: bytes, parses: int) -> float:
    worker = threading.Thread(target=lambda: [oip.ModelInferRequest.FromString(raw) for _ in range(parses)])
    worker.start()
    gaps, last = [], time.perf_counter()
    while worker.is_alive():
        time.sleep(0.0005)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    return 1000 * max(gaps, default=0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pixels", type=int, default=1024)
    p.add_argument("--parses", type=int, default=10)
    args = p.parse_args()
    print(f"| form ({args.pixels}x{args.pixels}x3) | message MB | parse ms | longest gap of a 0.5 ms sleeper, parses on another thread |")
    print("|---|---:|---:|---:|")
    for typed in (True, False):
        raw = message(args.pixels, typed)
        t0 = time.perf_counter()
        for _ in range(args.parses):
            oip.ModelInferRequest.FromString(raw)
        parse_ms = 1000 * (time.perf_counter() - t0) / args.parses
        enough = max(args.parses, int(200 / max(parse_ms, 1e-3)))  # at least 0.2 s of parsing for the sleeper to see
        print(f"| {'typed uint_contents' if typed else 'raw_input_contents'} | {len(raw) / 1e6:.1f} | {parse_ms:.2f} | "
              f"{longest_gap_ms(raw, enough):.2f} ms |")


if __name__ == "__main__":
    main()
