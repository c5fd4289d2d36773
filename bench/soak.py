"""A long run of mixed, partly hostile traffic against one server process: does anything grow, does anything
fail that should not?

    python -m bench.soak [--minutes 10] [--clients 8] [--sample-s 10] [--repo models/repository] [--server-args '']
                         [--mix KIND=SHARE,...]   (other shares than the default mix below, e.g. to single out a path;
                                                   progressive_full / progressive_left: the two halves of progressive)

Client threads (seeded) loop over, by share: auxnet.v1 Classify of a CIFAR-10 test JPEG under a random rule (the
calibrated policy, a budget of 3 / 10 / 50 ms, a min_confidence, none) 22%; ClassifyBatch of 8 such images 5%; the
Open Inference Protocol over HTTP (JSON, base64 image) 15% and over gRPC (raw BYTES tensor) 10%; a mutated image
(bench/image_fuzz.py's mutations) over auxnet.v1 15%; a malformed HTTP body (cut JSON, random bytes, a wrong tensor)
10%; Triton's statistics over HTTP 1%; ClassifyProgressive, read to the end or left after the first answer (a
cancel) 5%; Triton's ModelStreamInfer with 1-8 requests, half of them progressive, 4%; bytes that are no protobuf
message to a gRPC method 2%; TorchServe's predictions API (server/torchserve.py: the JPEG as the body or a multipart
part, the rule in the query; one in four a mutated image or a misspelt query parameter) 5% (since 2026-12-02;
before, classify had its 5%); KServe's V1 :predict of 1-4 images (server/kserve_v1.py: TensorFlow Serving's b64 or a
named input with a key; one in four a mutated image, a misspelt parameter or a cut body; half carry a W3C traceparent,
one in ten of those malformed, which a server in --trace-mode opentelemetry reads) 4% (since 2026-12-02, from
classify's 28%); explanations (server/explain.py: KServe V1's :explain of 1-2 images, or TorchServe's /explanations
of one; one in four with a budget or a mutated image) 2% (since 2026-12-03, from classify's, now 22%). Expected
answers: OK / 200, INVALID_ARGUMENT / 400 for the bad ones, and under
overload RESOURCE_EXHAUSTED / 429; anything else (INTERNAL, 500, UNKNOWN, a dropped connection) is counted as
unexpected and its first messages kept. Every --sample-s the server's resident memory, threads and open file
descriptors are read from /proc. Reports each sample, the growth of resident memory from the end of warm-up (the
first 20% of the run) to the end, and its least-squares slope over that part, in MB per minute. A supervised server
(--workers, --recycle-rss-mb in --server-args) is measured with its workers, and its largest worker apart. With
--priorities N the server runs --priority-levels N and every request carries a random priority 0..N; with a small
--max-inflight in --server-args, queued requests are then evicted for higher ones (RESOURCE_EXHAUSTED, expected):
the end reports how many (and what a --queue-policy in --server-args refused or delayed), and that nothing stays
counted in flight once the load has ended.
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.image_fuzz import mutate
from protos.auxnet.v1 import inference_pb2 as pb
from protos.oip import open_inference_pb2 as oip
from protos.oip import open_inference_pb2_grpc as oip_grpc
from protos.oip import triton_compat_pb2 as triton
from server.client import Client
from server.demo import ROOT, start_server
from server.loadgen import load_labelled_folder
from server.workers import free_port

MIX = [("classify", 22), ("classify_batch", 5), ("v2_http", 15), ("v2_grpc", 10), ("hostile_image", 15),
       ("malformed_http", 10), ("stats", 1), ("progressive", 5), ("stream", 4), ("corrupt_grpc", 2), ("torchserve", 5),
       ("kserve_v1", 4), ("explain", 2)]
SINGLED_OUT = ("progressive_full", "progressive_left")  # the two halves of `progressive`, for --mix only
# For --mix only: `shm` sends pixels through a system shared memory region each client registers (the server needs
# --allow-client-shm); `admin` reads or sets what an operator does (log settings, the repository index, regions).
OPT_IN = ("shm", "admin")
CORRUPT_TARGETS = ("/auxnet.v1.EarlyExitService/Classify", "/auxnet.v1.EarlyExitService/ClassifyBatch",
                   "/inference.GRPCInferenceService/ModelInfer", "/inference.GRPCInferenceService/ModelMetadata")
EXPECTED_GRPC = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
EXPECTED_HTTP = {200, 400, 429}


def parse_mix(text: str) -> list[tuple[str, int]]:
    """"stream=40,progressive=40" -> [("stream", 40), ("progressive", 40)]; kinds from MIX or SINGLED_OUT, shares > 0."""
    mix = []
    for item in text.split(","):
        kind, _, share = item.partition("=")
        if kind not in dict(MIX) and kind not in (*SINGLED_OUT, *OPT_IN) or not share.isdigit() or int(share) <= 0:
            raise argparse.ArgumentTypeError(f"{item!r}: want KIND=SHARE with KIND one of "
                                             f"{', '.join([*dict(MIX), *SINGLED_OUT, *OPT_IN])} and "
                                             "SHARE a whole number > 0")
        mix.append((kind, int(share)))
    return mix


def proc_stats(pid: int) -> dict:
    """Resident memory (MB), its peak, threads and open file descriptors of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return {"rss_mb": int(fields["VmRSS"][0]) / 1024, "hwm_mb": int(fields["VmHWM"][0]) / 1024,
            "threads": int(fields["Threads"][0]), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def tree_stats(pid: int) -> dict:
    """proc_stats of a server, its workers' added in when it is a supervisor (--workers, --recycle-rss-mb), with
    `worker_mb`: the resident memory of its largest worker (of itself when it has none)."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        children = []
    own, workers = proc_stats(pid), []
    for child in children:
        try:
            workers.append(proc_stats(child))
        except OSError:  # it exited between the listing and the read (a recycled worker)
            pass
    total = {key: own[key] + sum(w[key] for w in workers) for key in ("rss_mb", "hwm_mb", "threads", "fds")}
    return {**total, "worker_mb": max((w["rss_mb"] for w in workers), default=own["rss_mb"])}


def slope_per_minute(times: list[float], values: list[float]) -> float:
    """Least-squares slope of values against times (s), per minute."""
    t, v = np.asarray(times), np.asarray(values)
    return float(np.polyfit(t, v, 1)[0] * 60) if len(t) >= 2 else 0.0


class Traffic:
    def __init__(self, target: str, http_base: str, model: str, images: list[bytes], seed: int, mix=MIX, retries=0,
                 priorities=0):
        self.target, self.http_base, self.model, self.images, self.mix = target, http_base, model, images, mix
        self.retries, self.priorities = retries, priorities
        self.rng = random.Random(seed)
        self.outcomes: collections.Counter = collections.Counter()
        self.unexpected: list[str] = []

    def run(self, stop: threading.Event) -> None:
        kinds, weights = zip(*self.mix)
        with Client(self.target, timeout_s=10, retries=self.retries) as client:
            channel = self.channel = grpc.insecure_channel(self.target)
            v2 = oip_grpc.GRPCInferenceServiceStub(channel)
            self.stream_call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                                     request_serializer=oip.ModelInferRequest.SerializeToString,
                                                     response_deserializer=triton.ModelStreamInferResponse.FromString)
            while not stop.is_set():
                kind = self.rng.choices(kinds, weights)[0]
                try:
                    code = getattr(self, kind)(client, v2)
                except grpc.RpcError as e:
                    code = e.code().name
                    if code not in EXPECTED_GRPC:
                        self.unexpected.append(f"{kind}: {code}: {e.details()}"[:200])
                except Exception as e:  # noqa: BLE001 - a dropped connection, a timeout: what this looks for
                    code = type(e).__name__
                    self.unexpected.append(f"{kind}: {code}: {e}"[:200])
                self.outcomes[(kind, str(code))] += 1
            channel.close()
            if getattr(self, "region", None) is not None:
                import tritonclient.utils.shared_memory as shm

                shm.destroy_shared_memory_region(self.region)

    def _controls(self) -> dict:
        # With --priorities N, each request also has a priority from 0 (the server's default) to N (the lowest).
        level = {"priority": self.rng.randint(0, self.priorities)} if self.priorities else {}
        rule = self.rng.randrange(4)
        if rule == 0:
            return {"calibrated_policy": True, **level}
        if rule == 1:
            return {"budget_ms": self.rng.choice([3.0, 10.0, 50.0]), **level}
        return {"min_confidence": self.rng.choice([0.5, 0.9]), **level} if rule == 2 else level

    def classify(self, client: Client, v2) -> str:
        client.classify(self.rng.choice(self.images), **self._controls())
        return "OK"

    def classify_batch(self, client: Client, v2) -> str:
        client.classify_batch(self.rng.sample(self.images, 8), **self._controls())
        return "OK"

    def hostile_image(self, client: Client, v2) -> str:
        client.classify(mutate(self.rng.choice(self.images), self.rng))
        return "OK"

    def v2_grpc(self, client: Client, v2) -> str:
        v2.ModelInfer(self._infer_request(**self._controls()), timeout=10)
        return "OK"

    def _infer_request(self, **parameters) -> oip.ModelInferRequest:
        image = self.rng.choice(self.images)
        request = oip.ModelInferRequest(model_name=self.model, inputs=[oip.ModelInferRequest.InferInputTensor(
            name="image", datatype="BYTES", shape=[1])], raw_input_contents=[len(image).to_bytes(4, "little") + image])
        for key, value in parameters.items():
            which = "bool_param" if isinstance(value, bool) else "int64_param" if isinstance(value, int) else "double_param"
            request.parameters[key].CopyFrom(oip.InferParameter(**{which: value}))
        return request

    def progressive(self, client: Client, v2, leave: bool | None = None) -> str:
        answers = client.classify_progressive(self.rng.choice(self.images), **self._controls())
        if leave if leave is not None else self.rng.random() < 0.5:
            next(answers)
            answers.close()  # the client leaves after the first answer: the server drops the rest
            return "OK (left early)"
        last = list(answers)[-1]
        if last.stop_reason == pb.STOP_REASON_CONTINUED:
            raise RuntimeError("a progressive call ended on a CONTINUED answer")
        return "OK"

    def progressive_full(self, client: Client, v2) -> str:
        return self.progressive(client, v2, leave=False)

    def progressive_left(self, client: Client, v2) -> str:
        return self.progressive(client, v2, leave=True)

    def stream(self, client: Client, v2) -> str:
        n = self.rng.randint(1, 8)
        requests = [self._infer_request(**self._controls(), **({"progressive": True} if self.rng.random() < 0.5 else {}))
                    for _ in range(n)]
        for i, r in enumerate(requests):
            r.id = str(i)
        finals, errors = set(), []
        for response in self.stream_call(iter(requests), timeout=20):
            if response.error_message:
                errors.append(response.error_message)
                finals.add(response.infer_response.id)
            elif response.infer_response.parameters["triton_final_response"].bool_param:
                finals.add(response.infer_response.id)
        if finals != {str(i) for i in range(n)}:
            raise RuntimeError(f"stream of {n}: final answers for {sorted(finals)} only")
        bad = [e for e in errors if ": RESOURCE_EXHAUSTED: " not in e]
        if bad:
            raise RuntimeError(f"stream: {bad[0]}")
        return "OK" if not errors else "RESOURCE_EXHAUSTED (in-band)"

    def shm(self, client: Client, v2) -> str:
        """A CIFAR image's pixels written into this client's shared memory region, the request naming it."""
        import tritonclient.utils.shared_memory as shm
        from PIL import Image

        if getattr(self, "region", None) is None:
            key = f"/auxnet-soak-{os.getpid()}-{id(self)}"
            self.region = shm.create_shared_memory_region(key.strip("/"), key, 32 * 32 * 3)
            self.region_name = key.strip("/")
            self.channel.unary_unary("/inference.GRPCInferenceService/SystemSharedMemoryRegister",
                                     request_serializer=triton.SystemSharedMemoryRegisterRequest.SerializeToString,
                                     response_deserializer=triton.SystemSharedMemoryRegisterResponse.FromString)(
                triton.SystemSharedMemoryRegisterRequest(name=self.region_name, key=key, byte_size=32 * 32 * 3), timeout=10)
        pixels = np.asarray(Image.open(io.BytesIO(self.rng.choice(self.images))).convert("RGB").resize((32, 32)), np.uint8)
        shm.set_shared_memory_region(self.region, [pixels[None]])
        tensor = oip.ModelInferRequest.InferInputTensor(name="pixels", datatype="UINT8", shape=[1, 32, 32, 3])
        tensor.parameters["shared_memory_region"].string_param = self.region_name
        tensor.parameters["shared_memory_byte_size"].int64_param = 32 * 32 * 3
        v2.ModelInfer(oip.ModelInferRequest(model_name=self.model, inputs=[tensor]), timeout=10)
        return "OK"

    def admin(self, client: Client, v2) -> int:
        """What an operator does while it serves: read the log settings or set one, list the repository or regions."""
        path, body = self.rng.choice([("/v2/logging", None), ("/v2/logging", {"log_verbose_level": 0}),
                                      ("/v2/repository/index", {}), ("/v2/systemsharedmemory/status", None)])
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.http_base}{path}", data=data, method="POST" if data else "GET",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                json.loads(r.read())
                return r.status
        except urllib.error.HTTPError as e:
            self.unexpected.append(f"admin {path}: HTTP {e.code}: {e.read()[:150]!r}")
            return e.code

    def corrupt_grpc(self, client: Client, v2) -> str:
        call = self.channel.unary_unary(self.rng.choice(CORRUPT_TARGETS), request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        call(b"\xff\xff\xff\x01" + self.rng.randbytes(self.rng.randint(0, 200)), timeout=10)
        return "OK"  # never: such bytes do not parse, and INVALID_ARGUMENT comes back as an RpcError

    def _image_body(self) -> dict:
        """An Open Inference Protocol HTTP request of one image (JSON, base64)."""
        return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
                            "data": [base64.b64encode(self.rng.choice(self.images)).decode()]}]}

    def v2_http(self, client: Client, v2) -> int:
        return self._post(json.dumps({**self._image_body(), "parameters": self._controls()}).encode(), "v2_http")

    def stats(self, client: Client, v2) -> int:
        with urllib.request.urlopen(f"{self.http_base}/v2/models/{self.model}/stats", timeout=10) as r:
            json.loads(r.read())
            return r.status

    def malformed_http(self, client: Client, v2) -> int:
        good = json.dumps(self._image_body()).encode()
        variant = self.rng.randrange(3)
        if variant == 0:
            body = good[:self.rng.randrange(len(good))]  # cut anywhere
        elif variant == 1:
            body = self.rng.randbytes(self.rng.randint(0, 2000))
        else:
            body = json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                                           "data": list(range(self.rng.randint(0, 4000)))}]}).encode()  # wrong size
        return self._post(body, "malformed_http")

    def torchserve(self, client: Client, v2) -> int:
        image, query = self.rng.choice(self.images), dict(self._controls())
        if self.rng.random() < 0.25:  # hostile: a mutated image, or a misspelt control
            if self.rng.random() < 0.5:
                image = mutate(image, self.rng)
            else:
                query["budget"] = 5
        text = "&".join(f"{k}={str(v).lower()}" for k, v in query.items())
        url = f"{self.http_base}/predictions/{self.model}" + (f"?{text}" if text else "")
        if self.rng.random() < 0.5:
            return self._post(image, "torchserve", url, "PUT", "application/octet-stream")
        boundary = f"soak{self.rng.randrange(10**9)}"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="x.jpg"\r\n\r\n'.encode() + image
                + f"\r\n--{boundary}--\r\n".encode())
        return self._post(body, "torchserve", url, "POST", f"multipart/form-data; boundary={boundary}")

    def kserve_v1(self, client: Client, v2) -> int:
        instances = []
        for i in range(self.rng.randint(1, 4)):
            b64 = {"b64": base64.b64encode(self.rng.choice(self.images)).decode()}
            instances.append(b64 if self.rng.random() < 0.5 else {"image_bytes": b64, "key": str(i)})
        doc = {"instances": instances, "parameters": dict(self._controls())}
        body, headers = json.dumps(doc).encode(), {}
        if self.rng.random() < 0.25:  # hostile: a mutated image, a misspelt parameter, or a cut body
            variant = self.rng.randrange(3)
            if variant == 0:
                instances[0] = {"b64": base64.b64encode(mutate(self.rng.choice(self.images), self.rng)).decode()}
                body = json.dumps(doc).encode()
            elif variant == 1:
                body = json.dumps({**doc, "parameters": {"budget": 5}}).encode()
            else:
                body = body[:self.rng.randrange(len(body))]
        if self.rng.random() < 0.5:  # a caller's trace context; one in ten malformed (ignored by the server)
            ids = f"{self.rng.randrange(1, 2**128):032x}-{self.rng.randrange(1, 2**64):016x}"
            headers["traceparent"] = f"00-{ids}-0{self.rng.randrange(2)}" if self.rng.random() < 0.9 else f"00-{ids}"
        return self._post(body, "kserve_v1", f"{self.http_base}/v1/models/{self.model}:predict", headers=headers)

    def explain(self, client: Client, v2) -> int:
        """KServe V1's :explain of 1-2 images under a rule without a budget (one in four refused: a budget, or a
        mutated image), or TorchServe's /explanations of one."""
        controls = {k: v for k, v in self._controls().items() if k != "budget_ms"}
        images = [self.rng.choice(self.images) for _ in range(self.rng.randint(1, 2))]
        if self.rng.random() < 0.25:
            if self.rng.random() < 0.5:
                controls["budget_ms"] = 10.0  # an explanation runs every exit: refused by name
            else:
                images[0] = mutate(images[0], self.rng)
        if self.rng.random() < 0.25:
            query = "&".join(f"{k}={str(v).lower()}" for k, v in controls.items())
            return self._post(images[0], "explain", f"{self.http_base}/explanations/{self.model}?{query}", "PUT",
                              "application/octet-stream")
        doc = {"instances": [{"b64": base64.b64encode(i).decode()} for i in images], "parameters": controls}
        return self._post(json.dumps(doc).encode(), "explain", f"{self.http_base}/v1/models/{self.model}:explain")

    def _post(self, body: bytes, kind: str, url: str | None = None, method: str = "POST",
              content_type: str = "application/json", headers: dict | None = None) -> int:
        request = urllib.request.Request(url or f"{self.http_base}/v2/models/{self.model}/infer", data=body,
                                         method=method, headers={"Content-Type": content_type, **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            status, detail = e.code, e.read()[:150]
            if status not in EXPECTED_HTTP:
                self.unexpected.append(f"{kind}: HTTP {status}: {detail!r}")
        return status


def main() -> None:
    p = argparse.ArgumentParser("python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--sample-s", type=float, default=10)
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test"))
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--server-args", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", type=parse_mix, default=MIX, help="KIND=SHARE,... instead of the default mix")
    p.add_argument("--priorities", type=int, default=0,
                   help="serve with --priority-levels N and give every request a random priority 0..N (default: none)")
    p.add_argument("--client-retries", type=int, default=0,
                   help="server.client.Client's retries of UNAVAILABLE and CANCELLED on auxnet.v1 calls (default none)")
    args = p.parse_args()
    images = load_labelled_folder(args.data)[0][:args.images]
    http_port = free_port("127.0.0.1")
    levels = ["--priority-levels", str(args.priorities)] if args.priorities else []
    proc, target, metrics_port = start_server(args.repo, ["--http-port", str(http_port), *levels, *args.server_args.split()])
    try:
        with Client(target) as c:
            model = c.model_info().name
        print(f"{args.clients} client threads, {args.minutes:g} min, {len(images)} images, model {model}, "
              f"server args '{args.server_args}', {os.cpu_count()} cores shared by server and clients")
        stop = threading.Event()
        clients = [Traffic(target, f"http://127.0.0.1:{http_port}", model, images, args.seed * 1000 + i, args.mix,
                           args.client_retries, args.priorities)
                   for i in range(args.clients)]
        threads = [threading.Thread(target=t.run, args=(stop,), daemon=True) for t in clients]
        start = time.monotonic()
        for t in threads:
            t.start()
        samples = []
        print("| minute | requests | server RSS (MB) | peak RSS (MB) | largest worker (MB) | threads | open fds |\n"
              "|---:|---:|---:|---:|---:|---:|---:|")
        while (elapsed := time.monotonic() - start) < args.minutes * 60:
            time.sleep(min(args.sample_s, max(0.0, args.minutes * 60 - elapsed)))
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with code {proc.returncode}")
            s = {"t": time.monotonic() - start, "requests": sum(sum(c.outcomes.values()) for c in clients),
                 **tree_stats(proc.pid)}
            samples.append(s)
            print(f"| {s['t'] / 60:.1f} | {s['requests']} | {s['rss_mb']:.1f} | {s['hwm_mb']:.1f} | {s['worker_mb']:.1f} | "
                  f"{s['threads']} | "
                  f"{s['fds']} |", flush=True)
        stop.set()
        for t in threads:
            t.join(30)
        settled = [s for s in samples if s["t"] >= 0.2 * args.minutes * 60]
        outcomes = collections.Counter()
        for c in clients:
            outcomes.update(c.outcomes)
        unexpected = [u for c in clients for u in c.unexpected]
        print("\n| request | answers |\n|---|---|")
        for kind, _ in args.mix:
            got = {code: n for (k, code), n in sorted(outcomes.items()) if k == kind}
            print(f"| {kind} | {', '.join(f'{code} {n}' for code, n in got.items())} |")
        if settled:
            first, last = settled[0], settled[-1]
            print(f"\nafter warm-up ({first['t'] / 60:.1f} to {last['t'] / 60:.1f} min, {last['requests'] - first['requests']}"
                  f" requests): RSS {first['rss_mb']:.1f} -> {last['rss_mb']:.1f} MB ({last['rss_mb'] - first['rss_mb']:+.1f}), "
                  f"slope {slope_per_minute([s['t'] for s in settled], [s['rss_mb'] for s in settled]):+.2f} MB/min; "
                  f"threads {first['threads']} -> {last['threads']}; open fds {first['fds']} -> {last['fds']}")
        time.sleep(2)  # every call has ended: nothing may stay counted in flight
        families = text_string_to_metric_families(
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode())
        found = [(s.name, s.labels, s.value) for f in families for s in f.samples]
        dropped = lambda reason: sum(v for n, labels, v in found  # noqa: E731
                                     if n == "auxnet_dropped_total" and labels.get("reason") == reason)
        inflight = sum(v for n, _, v in found if n == "auxnet_inflight_requests")
        delayed = sum(v for n, _, v in found if n == "auxnet_queue_delayed_total")
        level_full = sum(v for n, labels, v in found if n == "auxnet_rejections_total" and labels.get("reason") == "level_queue_full")
        print(f"queued requests evicted for a higher priority: {dropped('preempted'):.0f}; queue policies (--queue-policy): "
              f"{level_full:.0f} refused at a full level, {dropped('queue_timeout'):.0f} refused and {delayed:.0f} delayed "
              f"at their timeout; in flight once the load ended: {inflight:.0f}")
        print(f"unexpected answers: {len(unexpected)}")
        for u in unexpected[:10]:
            print(f"  {u}")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
