"""What a /metrics scrape costs with and without the series of RESULTS §62 (no model loaded).

    PYTHONPATH=. python bench/results/load_memory_2026-12-02/scrape_cost.py
"""

import timeit

from prometheus_client import generate_latest

from server.host_metrics import register_process_metrics
from server.metrics import Metrics

plain, full = Metrics(), Metrics()
register_process_metrics(full.registry, cpu=True)
for name, registry in (("request metrics only (before)", plain.registry),
                       ("with process_*, available memory, nv_cpu_* (now)", full.registry)):
    n = 2000
    t = min(timeit.repeat(lambda r=registry: generate_latest(r), number=n, repeat=3)) / n
    print(f"{name}: {t * 1e6:.0f} us a scrape, {len(generate_latest(registry))} bytes")
