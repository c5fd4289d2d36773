"""Python clients (blocking Client, asyncio AsyncClient), and `python -m server.client IMAGE... [--budget-ms] [--min-confidence]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np

from protos.auxnet.v1 import inference_pb2 as pb
from protos.auxnet.v1 import inference_pb2_grpc as pb_grpc
from server.arguments import UINT32_MAX, at_least, real_in

STOP_NAMES = {v: k for k, v in pb.StopReason.items()}


def classify_request(image: bytes | np.ndarray, model: str = "", budget_ms: float | None = None,
                     min_confidence: float | None = None, top_k: int = 0, max_exit: int | None = None,
                     request_id: str = "", calibrated_policy: bool = False, priority: int = 0) -> pb.ClassifyRequest:
    """Encoded PNG/JPEG bytes, or a uint8 (H, W, C) array sent raw."""
    req = pb.ClassifyRequest(model=model, top_k=top_k, request_id=request_id, calibrated_policy=calibrated_policy,
                             priority=priority)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"raw images must be uint8 (H, W, C); got {image.dtype} {image.shape}")
        req.raw.CopyFrom(pb.RawImage(data=image.tobytes(), height=image.shape[0], width=image.shape[1],
                                     channels=image.shape[2], pixel_type=pb.PIXEL_TYPE_UINT8))
    else:
        req.encoded = image
    if budget_ms is not None:
        req.budget_ms = budget_ms
    if min_confidence is not None:
        req.min_confidence = min_confidence
    if max_exit is not None:
        req.max_exit = max_exit
    return req


def channel_settings(target: str, retries: int) -> tuple[str, list[tuple]]:
    """(target, channel options) both clients use: round-robin over the replicas of a "host:port,host:port" list or
    a dns:/// name, and gRPC's own retries of UNAVAILABLE and CANCELLED."""
    service_config = {"loadBalancingConfig": [{"round_robin": {}}]}
    # Retried: UNAVAILABLE (a replica draining or gone) and CANCELLED, which a server that shuts down gives the
    # calls it had received but not yet handed to a handler (grpc/grpc#41785; RESULTS §31). A call this client
    # cancels itself is never retried; every method of the service is idempotent. gRPC wants maxAttempts >= 2,
    # so retries=0 leaves the policy out rather than setting it to 1.
    if retries > 0:
        service_config["methodConfig"] = [{
            "name": [{"service": "auxnet.v1.EarlyExitService"}],
            "retryPolicy": {"maxAttempts": retries + 1, "initialBackoff": "0.05s", "maxBackoff": "1s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]},
        }]
    if "," in target:  # a static list of replicas
        target = "ipv4:" + target if not target.startswith(("ipv4:", "ipv6:")) else target
    # A connection reset while it was being set up (a server or recycled worker closing its listening socket
    # with the connection still queued on it) puts the channel in a reconnect back-off during which calls
    # fail at once; gRPC's default first back-off, 1 s, outlasts the retries above (0.05 + 0.1 + 0.2 s), so
    # reconnect after 0.1 s instead (then x1.6 per failure, as gRPC's own schedule).
    options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
               ("grpc.service_config", json.dumps(service_config)), ("grpc.enable_retries", 1),
               ("grpc.max_receive_message_length", 16 * 2**20), ("grpc.max_send_message_length", 64 * 2**20)]
    return target, options


def open_channel(module, target: str, retries: int, tls_ca: bytes | None, client_cert: bytes | None,
                 client_key: bytes | None, server_name: str | None):
    """A channel of `module` (grpc, or grpc.aio for AsyncClient), TLS when given a CA or a client certificate."""
    target, options = channel_settings(target, retries)
    if tls_ca is None and client_cert is None:
        return module.insecure_channel(target, options=options)
    creds = grpc.ssl_channel_credentials(root_certificates=tls_ca, private_key=client_key, certificate_chain=client_cert)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return module.secure_channel(target, creds, options=options)


def joined_metadata(token_metadata: tuple | None, extra) -> tuple | None:
    """The token's metadata and a call's own (e.g. a W3C traceparent from OpenTelemetry's propagator:
    `metadata=[("traceparent", ...)]`, which a server in --trace-mode opentelemetry joins to its trace)."""
    both = (*(token_metadata or ()), *(extra or ()))
    return both or None


class Client:
    """Blocking client. `targets` may list several replicas ("host:port,host:port") or a dns:/// name;
    calls are spread round-robin and retried on UNAVAILABLE (a replica draining or gone) and CANCELLED (see
    channel_settings)."""

    def __init__(self, target: str, timeout_s: float = 10.0, retries: int = 3, tls_ca: bytes | None = None,
                 client_cert: bytes | None = None, client_key: bytes | None = None, token: str | None = None,
                 server_name: str | None = None):
        self.channel = open_channel(grpc, target, retries, tls_ca, client_cert, client_key, server_name)
        self.stub = pb_grpc.EarlyExitServiceStub(self.channel)
        self.timeout_s = timeout_s
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None

    def _metadata(self, extra) -> tuple | None:
        return joined_metadata(self.metadata, extra)

    def classify(self, image, timeout_s: float | None = None, metadata=None, **kw) -> pb.ClassifyResponse:
        return self.stub.Classify(classify_request(image, **kw), timeout=timeout_s or self.timeout_s,
                                  metadata=self._metadata(metadata))

    def classify_progressive(self, image, timeout_s: float | None = None, metadata=None, **kw) -> Iterator[pb.ClassifyResponse]:
        """The answer of every exit the image passes (stop_reason CONTINUED), then the one it stops at. Leaving
        the loop early (break, or closing the iterator) cancels the call, and the server stops computing it."""
        call = self.stub.ClassifyProgressive(classify_request(image, **kw), timeout=timeout_s or self.timeout_s,
                                             metadata=self._metadata(metadata))
        try:
            yield from call
        finally:
            call.cancel()  # no-op once the call has ended

    def classify_batch(self, images, timeout_s: float | None = None, metadata=None, **kw) -> list[pb.ClassifyResponse]:
        req = pb.ClassifyBatchRequest(requests=[classify_request(im, **kw) for im in images])
        return list(self.stub.ClassifyBatch(req, timeout=timeout_s or self.timeout_s, metadata=self._metadata(metadata)).responses)

    def model_info(self, model: str = "") -> pb.ModelInfo:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(model=model), timeout=self.timeout_s, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient:
    """The asyncio client (grpc.aio), for an event loop's code (a web front end, an async pipeline): Client's
    methods as coroutines, the same replicas, retries, TLS, token and metadata; `classify_progressive` is an async
    iterator. Make it inside the loop that uses it (grpc.aio binds a channel to its loop):

        async with AsyncClient("localhost:8500") as client:
            answer = await client.classify(image, budget_ms=5)
            async for step in client.classify_progressive(image):
                ...
    """

    def __init__(self, target: str, timeout_s: float = 10.0, retries: int = 3, tls_ca: bytes | None = None,
                 client_cert: bytes | None = None, client_key: bytes | None = None, token: str | None = None,
                 server_name: str | None = None):
        self.channel = open_channel(grpc.aio, target, retries, tls_ca, client_cert, client_key, server_name)
        self.stub = pb_grpc.EarlyExitServiceStub(self.channel)
        self.timeout_s = timeout_s
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None

    def _metadata(self, extra) -> tuple | None:
        return joined_metadata(self.metadata, extra)

    async def classify(self, image, timeout_s: float | None = None, metadata=None, **kw) -> pb.ClassifyResponse:
        return await self.stub.Classify(classify_request(image, **kw), timeout=timeout_s or self.timeout_s,
                                        metadata=self._metadata(metadata))

    async def classify_progressive(self, image, timeout_s: float | None = None, metadata=None,
                                   **kw) -> AsyncIterator[pb.ClassifyResponse]:
        """As Client's: leaving the loop early (break, aclose) cancels the call and the server stops computing it."""
        call = self.stub.ClassifyProgressive(classify_request(image, **kw), timeout=timeout_s or self.timeout_s,
                                             metadata=self._metadata(metadata))
        try:
            async for answer in call:
                yield answer
        finally:
            call.cancel()  # no-op once the call has ended

    async def classify_batch(self, images, timeout_s: float | None = None, metadata=None,
                             **kw) -> list[pb.ClassifyResponse]:
        req = pb.ClassifyBatchRequest(requests=[classify_request(im, **kw) for im in images])
        reply = await self.stub.ClassifyBatch(req, timeout=timeout_s or self.timeout_s, metadata=self._metadata(metadata))
        return list(reply.responses)

    async def model_info(self, model: str = "") -> pb.ModelInfo:
        return await self.stub.GetModelInfo(pb.GetModelInfoRequest(model=model), timeout=self.timeout_s,
                                            metadata=self.metadata)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser("python -m server.client", description="Classify images with an AuxNet server.")
    p.add_argument("images", nargs="*", help="image files (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    p.add_argument("--target", default="127.0.0.1:8500", help="host:port, a list host:port,host:port, or dns:///name:port")
    p.add_argument("--model", default="")
    p.add_argument("--budget-ms", type=float)
    p.add_argument("--min-confidence", type=float)
    p.add_argument("--policy", action="store_true", help="stop by the model's calibrated per-exit thresholds")
    p.add_argument("--top-k", type=at_least(0, UINT32_MAX), default=0)
    p.add_argument("--priority", type=at_least(0, UINT32_MAX), default=0,
                   help="1 = highest (servers run with --priority-levels); 0 = default")
    p.add_argument("--progressive", action="store_true", help="print the answer of every exit passed, as it comes")
    p.add_argument("--info", action="store_true", help="print the model's GetModelInfo (exits, policy, latencies)")
    p.add_argument("--timeout-s", type=real_in(0, 86_400, low_open=True), default=10.0,
                   help="gRPC deadline of each call (nan, inf or <= 0 were a misleading DEADLINE_EXCEEDED)")
    p.add_argument("--tls-ca", help="PEM CA that signed the server's certificate: talk TLS")
    p.add_argument("--client-cert", help="PEM client certificate (mutual TLS), with --client-key")
    p.add_argument("--client-key", help="PEM private key of --client-cert")
    p.add_argument("--server-name", help="the name the server's certificate carries, if not the target's host")
    p.add_argument("--token-file", help="send 'authorization: Bearer <token>' with the token in this file")
    args = p.parse_args(argv)
    if not args.images and not args.info:
        p.error("give image files to classify, or --info")
    if (args.client_cert is None) != (args.client_key is None):
        p.error("--client-cert and --client-key go together")
    try:
        credentials = {"tls_ca": _read(args.tls_ca), "client_cert": _read(args.client_cert),
                       "client_key": _read(args.client_key), "server_name": args.server_name,
                       "token": _read(args.token_file, text=True)}
    except (OSError, ValueError) as e:
        p.error(str(e))
    failures = 0
    with Client(args.target, timeout_s=args.timeout_s, **credentials) as client:
        if args.info:
            try:
                print(describe(client.model_info(args.model)))
            except grpc.RpcError as e:
                print(f"model info: error {e.code().name}: {e.details()}", file=sys.stderr)
                failures += 1
        for path in args.images:
            try:
                kw = dict(model=args.model, budget_ms=args.budget_ms, min_confidence=args.min_confidence,
                          top_k=args.top_k, calibrated_policy=args.policy, priority=args.priority)
                image = Path(path).read_bytes()
                answers = client.classify_progressive(image, **kw) if args.progressive else [client.classify(image, **kw)]
                for r in answers:
                    print(f"{path}: {r.class_name} (label {r.label}) confidence {r.confidence:.3f} exit {r.exit_index} "
                          f"(layer {r.exit_layer}) stop {STOP_NAMES[r.stop_reason].removeprefix('STOP_REASON_').lower()} "
                          f"latency {r.server_latency_ms:.2f} ms{'' if r.budget_met else ' BUDGET MISSED'}")
            except (OSError, grpc.RpcError) as e:
                msg = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
                print(f"{path}: error {msg}", file=sys.stderr)
                failures += 1
    return 1 if failures else 0


def _read(path: str | None, text: bool = False):
    """A credential file's bytes (a token: its stripped text), None without a path; an empty file is refused."""
    if path is None:
        return None
    data = Path(path).read_bytes()
    if not data.strip():
        raise ValueError(f"{path} is empty")
    return data.decode().strip() if text else data


def describe(m: pb.ModelInfo) -> str:
    """GetModelInfo as a few readable lines."""
    lines = [f"{m.name} version {m.version}: {m.architecture}, {len(m.classes)} classes, input {list(m.input_shape)}, "
             f"{m.backend} ({m.precision or 'fp32'}), max batch {m.max_batch_size}",
             f"trained: {m.training_method or '?'} on {m.dataset or '?'}; policy on the {m.policy_score or 'top1'} score: "
             f"validation top-1 {100 * m.policy_val_accuracy:.2f}% at {m.policy_mean_mflops:.1f} MFLOPs per image",
             "exit  layer  params     MFLOPs  val top-1  threshold  ms (batch 1)  ms/image (batched)"]
    lines += [f"{e.index:>4}  {e.layer:>5}  {e.params:>9,}  {e.mflops:>6.1f}  {100 * e.val_top1:>8.2f}%  "
              f"{e.default_threshold:>9.3f}  {e.latency_ms_batch1:>12.3f}  {e.latency_ms_per_image_batched:>18.3f}"
              for e in m.exits]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
