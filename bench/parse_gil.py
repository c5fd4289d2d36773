"""Would parsing big gRPC messages on a thread keep the event loop free? Only if protobuf's parse let go of the GIL.

    python -m bench.parse_gil [--pixels 1024] [--parses 10]

A ModelInferRequest holding one image of PIXELS x PIXELS x 3 as typed `uint_contents` (the slowest form to parse: one
varint per value; what KServe's and other clients send where tritonclient sends raw bytes) and, for comparison, as
`raw_input_contents`, and the same pixels as an Open Inference Protocol HTTP body of JSON numbers (`json.loads`, what
a large JSON body costs wherever it is parsed). For each form: the parse time on this thread, then the same parses on a second thread while
this one sleeps 0.5 ms at a time, as an event loop's other work would run: the longest gap between its wake-ups says
how long the loop would be held. A gap near the parse time means the parse holds the GIL throughout.
"""

from __future__ import annotations

import argparse
import json
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


def json_body(pixels: int) -> bytes:
    values = np.random.default_rng(0).integers(0, 256, 3 * pixels * pixels)
    return json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, pixels, pixels, 3],
                                   "data": values.tolist()}]}).encode()


def longest_gap_ms(parse, parses: int) -> float:
    worker = threading.Thread(target=lambda: [parse() for _ in range(parses)])
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
    p.add_argument("--parses", type=int, default=3)
    args = p.parse_args()
    print(f"| form ({args.pixels}x{args.pixels}x3) | message MB | parse ms | longest gap of a 0.5 ms sleeper, parses on another thread |")
    print("|---|---:|---:|---:|")
    forms = [("typed uint_contents", message(args.pixels, True), oip.ModelInferRequest.FromString),
             ("raw_input_contents", message(args.pixels, False), oip.ModelInferRequest.FromString),
             ("HTTP JSON body (json.loads)", json_body(args.pixels), json.loads)]
    for name, raw, parser in forms:
        t0 = time.perf_counter()
        for _ in range(args.parses):
            parser(raw)
        parse_ms = 1000 * (time.perf_counter() - t0) / args.parses
        enough = max(args.parses, int(200 / max(parse_ms, 1e-3)))  # at least 0.2 s of parsing for the sleeper to see
        print(f"| {name} | {len(raw) / 1e6:.1f} | {parse_ms:.2f} | {longest_gap_ms(lambda p=parser, r=raw: p(r), enough):.2f} ms |")


if __name__ == "__main__":
    main()
