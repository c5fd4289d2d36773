"""What /metrics reports of the host and the process (server/host_metrics.py): Triton's CPU metrics computed as its
metrics.cc does, from /proc files written here as the kernel writes them; on a real server's /metrics, off with
--allow-cpu-metrics false, and under --workers reported once by the supervisor, not summed per worker; a loaded
model's memory estimate and the memory left, process_* series."""

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.__main__ import get_args_parser
from server.host_metrics import HostMetrics, register_host_metrics, utilization
from server.load_memory import needed
from tests.server.conftest import running_server
from tests.server.test_serving import scrape
from tests.server.test_workers import samples, start_workers

MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:   12000000 kB\nBuffers:  1 kB\n"


def stat(user, nice, system, idle, iowait, irq, softirq, steal, guest=0):
    return (f"cpu  {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} {guest} 0\n"
            f"cpu0 {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} {guest} 0\nintr 1 2 3\n")


def figures(registry) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_utilization_and_memory_as_tritons_by_hand(tmp_path):
    (tmp_path / "meminfo").write_text(MEMINFO)
    (tmp_path / "stat").write_text(stat(100, 10, 50, 1000, 40, 5, 5, 0))
    clock = Clock()
    registry = CollectorRegistry()
    registry.register(HostMetrics(tmp_path, clock))
    # busy: user+nice+system+irq+softirq+steal grew 60+0+20+0+10+10 = 100; idle+iowait grew 280+20 = 300
    (tmp_path / "stat").write_text(stat(160, 10, 70, 1280, 60, 5, 15, 10))
    clock.now += 2.0
    got = figures(registry)
    assert got == {"nv_cpu_utilization": 100 / 400, "nv_cpu_memory_total_bytes": 16000000 * 1024,
                   "nv_cpu_memory_used_bytes": (16000000 - 12000000) * 1024}
    # a second scrape within MIN_WINDOW_S keeps the figure (a window of nothing would read 0 or noise)
    (tmp_path / "stat").write_text(stat(160, 10, 70, 1380, 60, 5, 15, 10))
    clock.now += 0.3
    assert figures(registry)["nv_cpu_utilization"] == 0.25
    clock.now += 1.0  # now a window since the reading 2 s in: 100 idle jiffies, nothing busy
    assert figures(registry)["nv_cpu_utilization"] == 0.0


def test_guest_time_is_not_counted_twice_and_a_counter_going_back_counts_nothing():
    old = dict(user=100, nice=0, system=0, idle=100, iowait=0, irq=0, softirq=0, steal=0)
    assert utilization(old, {**old, "user": 150, "idle": 150}) == 0.5  # guest is inside user in /proc/stat
    assert utilization(old, {**old, "user": 50, "idle": 200}) == 0.0  # as Triton's wrap_sub
    assert utilization(old, old) == 0.0  # no jiffies passed: 0, not a division by zero


def test_a_host_without_the_files_reports_nothing_and_says_so(tmp_path, caplog):
    registry = CollectorRegistry()
    assert register_host_metrics(registry, tmp_path) is False
    assert figures(registry) == {} and "CPU metrics off" in caplog.text
    (tmp_path / "meminfo").write_text("MemTotal: 10 kB\nMemAvailable: 20 kB\n")  # available past total: no figure
    (tmp_path / "stat").write_text(stat(1, 0, 0, 1, 0, 0, 0, 0))
    assert HostMetrics(tmp_path).readable() is False


def test_the_option_takes_tritons_spelling(capsys):
    parse = lambda *extra: get_args_parser().parse_args(["--repo", "r", *extra])  # noqa: E731
    assert parse().allow_cpu_metrics is True
    assert parse("--allow-cpu-metrics=false").allow_cpu_metrics is False
    assert parse("--allow-cpu-metrics", "TRUE").allow_cpu_metrics is True
    with pytest.raises(SystemExit):
        parse("--allow-cpu-metrics", "no")
    assert "argument --allow-cpu-metrics: 'no' is not true or false" in capsys.readouterr().err


def meminfo_total() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


def test_on_a_real_servers_metrics_and_off_when_asked(tiny_repo):
    with running_server(tiny_repo) as (app, _):
        got = {s.name: s.value for f in text_string_to_metric_families(scrape(app)) for s in f.samples}
        assert got["nv_cpu_memory_total_bytes"] == meminfo_total()
        assert 0 < got["nv_cpu_memory_used_bytes"] < got["nv_cpu_memory_total_bytes"]
        assert 0.0 <= got["nv_cpu_utilization"] <= 1.0
    with running_server(tiny_repo, cpu_metrics=False) as (app, _):
        assert "nv_cpu_" not in scrape(app)


def test_a_loaded_models_estimate_and_the_room_left_are_on_metrics(tiny_repo):
    """An alert can see a refusal coming: available less the floor under a model's estimate."""
    import tritonclient.grpc as tgrpc

    from tests.server.helpers import wait_for

    with running_server(tiny_repo, model_control="explicit") as (app, target):
        c = tgrpc.InferenceServerClient(target)
        c.load_model("tiny")
        version = app.engines["tiny"].info.version
        got = [(s.labels, s.value) for f in text_string_to_metric_families(scrape(app)) for s in f.samples
               if s.name == "auxnet_model_memory_estimate_bytes"]
        assert got == [({"model": "tiny", "version": version}, needed(tiny_repo / "tiny", 16))]  # max_batch 16
        values = {s.name: s.value for f in text_string_to_metric_families(scrape(app)) for s in f.samples}
        assert 0 < values["auxnet_memory_available_bytes"] <= meminfo_total()
        assert values["process_resident_memory_bytes"] > 10 * 2**20 and values["process_open_fds"] > 0
        c.unload_model("tiny")
        assert wait_for(lambda: "auxnet_model_memory_estimate_bytes{" not in scrape(app), 10)


@pytest.mark.slow
def test_under_workers_the_supervisor_reports_the_host_once(tiny_repo):
    proc, _, mport, _, _, _, _ = start_workers(tiny_repo)
    try:
        (total,) = samples(mport, "nv_cpu_memory_total_bytes")  # one series, not one per worker nor their sum
        assert total.value == meminfo_total() and len(samples(mport, "nv_cpu_utilization")) == 1
        assert len(samples(mport, "auxnet_memory_available_bytes")) == 1
        # each worker holds a copy of the model: the estimates add up (the default --max-batch, 32)
        assert sum(s.value for s in samples(mport, "auxnet_model_memory_estimate_bytes")) == 2 * needed(tiny_repo / "tiny", 32)
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
