"""What a large JSON inference body costs to parse (why v2 requests over 64 KB are parsed off the event
loop, server/requests.py): time of json.loads and the size of the Python objects it makes.

    python -m bench.json_parse_cost
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main() -> None:
    rng = np.random.default_rng(0)
    print("| data | JSON MB | json.loads s | Python objects MB | x JSON size |")
    print("|---|---:|---:|---:|---:|")
    for kind, values in (("UINT8 pixels", rng.integers(0, 256, 4_000_000).tolist()),
                         ("FP32 values", rng.random(1_500_000).astype(np.float32).tolist())):
        body = json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [len(values)], "data": values}]})
        del values
        t = time.perf_counter()
        data = json.loads(body)["inputs"][0]["data"]
        dt = time.perf_counter() - t
        # small ints are shared objects in CPython: only the list's pointers count for them
        size = sys.getsizeof(data) + (sum(sys.getsizeof(v) for v in data) if isinstance(data[0], float) else 0)
        print(f"| {kind} | {len(body) / 1e6:.1f} | {dt:.2f} | {size / 1e6:.0f} | {size / len(body):.1f} |")
        del data


if __name__ == "__main__":
    main()
