"""python -m server --repo REPO: serve the models of a repository over gRPC, with early exit.

SIGTERM or SIGINT: health turns NOT_SERVING, new requests get UNAVAILABLE, admitted ones are answered,
then the process exits 0 (within --grace-s).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from server.app import ServerApp, ServerConfig
from server.arguments import named, plain_number
from server.backends import default_threads
from server.decode import FORMATS, ImageLimits
from server.engine_config import EngineConfig
from server.otlp_settings import OtlpSettings, settings_from_environment
from server.queue_policy import level_policies
from server.repository import RepositoryError
from server.tracing import TraceSettings


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", required=True, help="model repository (written by python -m export)")
    p.add_argument("--model", action="append", default=[],
                   help="load only this model at start (repeatable; '*': every one, the default); with "
                        "--model-control-mode explicit the only models loaded at start (none without --model)")
    p.add_argument("--model-control-mode", default="poll", choices=["poll", "none", "explicit"],
                   help="Triton's: poll (default) loads the models at start and switches to a new version published in "
                        "a model's place (every --poll-s); without --model it also loads models added to the repository "
                        "and unloads those gone from it for two polls; none: no polling; explicit: Triton's repository "
                        "API loads and unloads models while serving (server/model_control.py)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0 = any free port)")
    p.add_argument("--metrics-port", type=int, default=8501, help="Prometheus /metrics port (-1 = off)")
    p.add_argument("--allow-cpu-metrics", type=true_or_false, default=True, metavar="{true,false}",
                   help="Triton's: the host's nv_cpu_utilization and nv_cpu_memory_* on /metrics (default true; "
                        "server/host_metrics.py)")
    p.add_argument("--allow-gpu-metrics", type=true_or_false, default=True, metavar="{true,false}",
                   help="Triton's: every GPU's nv_gpu_utilization, nv_gpu_memory_*, nv_gpu_power_* and "
                        "nv_energy_consumption on /metrics, read through the driver's NVML where the host has one "
                        "(default true; server/gpu_metrics.py)")
    p.add_argument("--health-port", type=int, default=-1,
                   help="gRPC port serving only grpc.health.v1, outside the request limit, for probes (-1 = off)")
    p.add_argument("--http-port", type=int, default=8000,
                   help="Open Inference Protocol (KServe v2) HTTP/REST port (-1 = off); its gRPC side shares --port")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "tensorrt-ep"],
                   help="ONNX Runtime execution provider (cuda/tensorrt-ep need onnxruntime-gpu)")
    p.add_argument("--cpu-mem-arena", type=true_or_false, default=True, metavar="{true,false}",
                   help="ONNX Runtime's CPU arena (default true): false frees each run's activations, so a loaded model "
                        "keeps 1.6-12x less memory, for 0-14%% more time a batch (RESULTS §63)")
    p.add_argument("--static-batches", action="store_true",
                   help="pad each batch to a power-of-two bucket on buffers bound once; with --device cuda every "
                        "bucket's segment run is captured as a CUDA graph (one launch instead of one per kernel)")
    p.add_argument("--threads", type=int, default=default_threads(), help="segment threads (default: cores)")
    p.add_argument("--decode-threads", type=int, default=1, help="threads for images too large to decode inline")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-queue-delay-ms", type=float, default=0.0)
    p.add_argument("--inline-compute-ms", type=float, default=0.0,
                   help="run a segment batch predicted at most this long on the event loop's thread: less server CPU "
                        "per image for an accelerator's short runs, less overlap (RESULTS §14); 0 = off")
    p.add_argument("--finish-margin-quantile", type=float, default=0.9,
                   help="budgets: add this quantile of recent finish-prediction errors to each prediction (0 = off)")
    p.add_argument("--default-budget-ms", type=float, default=0.0,
                   help="the latency budget of a request that sets none: answered from the deepest exit that fits it "
                        "(its budget_met says whether it did); 0 = none, such requests go as deep as their rule says")
    p.add_argument("--carry-stopped-rows", choices=["auto", "on", "off"], default="auto",
                   help="a batch in which some requests stop goes on in place, their rows as padding (auto: where "
                        "features live on a device, e.g. --device cuda)")
    p.add_argument("--max-inflight", type=int, default=256, help="admitted requests before RESOURCE_EXHAUSTED")
    p.add_argument("--priority-levels", type=int, default=1,
                   help="priority levels of requests (their `priority`: 1 highest); each exit serves higher levels first "
                        "and at --max-inflight a request evicts a queued lower one (default 1: no priorities)")
    p.add_argument("--default-priority-level", type=int, default=0,
                   help="the level of a request that sends no priority (default 0: the lowest, --priority-levels)")
    p.add_argument("--queue-policy", action="append", default=[], metavar="[LEVEL:]KEY=VALUE,...",
                   help="a priority level's queue policy (Triton's default_queue_policy / priority_queue_policy), "
                        "repeatable; without LEVEL every level's default. Keys: max_queue_size (requests waiting for "
                        "the first exit; more are refused), timeout_ms (the longest such wait), timeout_action (reject: "
                        "refuse it; delay: serve it after its level's others), e.g. --queue-policy "
                        "2:max_queue_size=64,timeout_ms=200,timeout_action=delay")
    p.add_argument("--allow-client-shm", action="store_true",
                   help="Triton's system shared memory extension: same-host clients register POSIX shared memory and "
                        "pass tensors through it (off by default: a registration maps any shared memory object the "
                        "server's user may open; server/shared_memory.py)")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096)
    p.add_argument("--image-formats", type=image_formats, default=FORMATS, metavar="F1,F2,...",
                   help=f"encoded image formats accepted (default: all of {','.join(FORMATS)}); e.g. drop TIFF, "
                        "whose decoder (libtiff) prints a corrupt file's complaints to stderr")
    p.add_argument("--max-message-mb", type=float, default=16)
    p.add_argument("--load-memory-floor-mb", type=float, default=256,
                   help="refuse a load while serving (the repository API's, an upload's, a poll's new version) that "
                        "would leave the server less memory than this: the host's available memory or its cgroup's "
                        "limit less its working set, less the load's estimate (RESOURCE_EXHAUSTED, HTTP 507); -1: no check")
    p.add_argument("--device-memory-floor-mb", type=float, default=1024,
                   help="on a GPU (--device cuda or tensorrt-ep, --backend tensorrt): refuse such a load where it would "
                        "leave less than this free on the GPU (cudaMemGetInfo less the load's estimate); -1: no check")
    p.add_argument("--upload-quota-mb", type=float, default=1024,
                   help="explicit mode: what the models loaded from load requests' files (Triton's load override) may "
                        "take on disk in all; a load past it is refused RESOURCE_EXHAUSTED (HTTP 507). 0: such loads "
                        "are refused (FAILED_PRECONDITION)")
    p.add_argument("--grace-s", type=float, default=10.0)
    p.add_argument("--shed-late-budgets", action="store_true",
                   help="refuse at admission (RESOURCE_EXHAUSTED) a request whose predicted queueing passes its budget")
    p.add_argument("--monitor-fraction", type=float, default=0.05,
                   help="fraction of early answers also run to the final exit in idle time to measure agreement (0 = off)")
    p.add_argument("--monitor-false-alarm-samples", type=float, default=10_000,
                   help="agreement alarm: mean monitored samples between false alarms is at least this")
    p.add_argument("--monitor-adapt", action="store_true",
                   help="raise an alarmed exit's confidence thresholds; lower them back once agreement recovers")
    p.add_argument("--poll-s", type=float, default=2.0,
                   help="look for new model versions, and changed TLS and token files, this often (0 = never)")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve TLS only (TLS files are read again when they change)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA: require client certificates it signed (mutual TLS)")
    p.add_argument("--auth-token-file", help="require 'authorization: Bearer <token>' with the token in this file "
                                             "(read again when it changes, every --poll-s)")
    p.add_argument("--max-connection-age-s", type=float, default=0.0,
                   help="close each gRPC connection after about this long (in-flight calls get --grace-s), so clients "
                        "re-resolve and reach replicas added since they connected (0 = never; Kubernetes: e.g. 60)")
    p.add_argument("--max-streams-per-connection", type=int, default=None,
                   help="HTTP/2 streams (calls) one gRPC connection may hold at once, a stream reset by its client "
                        "counting until the server has let it go: bounds an HTTP/2 Rapid Reset (default: as many as the "
                        "server admits in all, --max-inflight x models + 16; 0 = no limit, gRPC's default)")
    p.add_argument("--max-connections", type=int, default=0,
                   help="connections each of the gRPC and HTTP ports holds at most; more are refused at once (default "
                        "0: 4096, less if the open-file limit needs it)")
    p.add_argument("--idle-timeout-s", type=float, default=60.0,
                   help="close a connection that has carried no request (RPC) for this long: idle keep-alive ones and "
                        "ones sending a header too slowly to finish it (0 = never)")
    p.add_argument("--access-log", help="write one JSON line per request here ('-': stderr); errors always, successes "
                                        "at --access-log-sample; the file rotates at 64 MiB, 2 kept")
    p.add_argument("--access-log-sample", type=float, default=1.0,
                   help="fraction of successful requests written to the access log (default 1 = all)")
    p.add_argument("--response-cache-mb", type=float, default=0.0,
                   help="answer an image seen again with the same exit rule from memory, at most this many MB per model "
                        "(Triton's response cache; answers stopped by a budget are never cached; 0 = off)")
    p.add_argument("--trace-file", type=named, help="write request traces here, Triton's JSON format: per request its queue and "
                                        "compute times at every exit it passed (server/tracing.py); settings also change "
                                        "at run time through Triton's trace API (a new file goes beside this one)")
    p.add_argument("--trace-level", choices=("OFF", "TIMESTAMPS"),
                   help="OFF, or TIMESTAMPS (the default with --trace-file): turn tracing on later through the API")
    p.add_argument("--trace-rate", type=int, default=1000, help="trace one request in this many (default 1000)")
    p.add_argument("--trace-count", type=int, default=-1, help="stop after this many traces (default -1: no limit)")
    p.add_argument("--trace-log-frequency", type=int, default=0,
                   help="write every N traces to TRACE_FILE.0, .1, ... (default 0: all to TRACE_FILE at shutdown, at "
                        "most 10,000 requests' traces held)")
    p.add_argument("--trace-mode", choices=("triton", "opentelemetry"), default="triton",
                   help="triton (default): traces to --trace-file as Triton's JSON; opentelemetry: spans to an OTLP/HTTP "
                        "collector (--trace-otlp-url), a request carrying a W3C traceparent joining its caller's trace "
                        "(server/otlp_export.py; the OTEL_* variables are read too)")
    p.add_argument("--trace-otlp-url", help="the collector's OTLP/HTTP traces URL (default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "
                                            "else OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces, else http://localhost:4318/v1/traces)")
    p.add_argument("--trace-resource", action="append", default=[], metavar="KEY=VALUE",
                   help="a resource attribute of the spans, e.g. service.name=classifier (repeatable; over "
                        "OTEL_RESOURCE_ATTRIBUTES; default service.name=auxnet-serving)")
    p.add_argument("--trace-bsp-max-queue-size", type=int,
                   help="requests' traces waiting for export at most; more are dropped and counted (default "
                        "OTEL_BSP_MAX_QUEUE_SIZE or 2048)")
    p.add_argument("--trace-bsp-schedule-delay-ms", type=int,
                   help="send what waits at least this often (default OTEL_BSP_SCHEDULE_DELAY or 5000)")
    p.add_argument("--trace-bsp-max-export-batch-size", type=int,
                   help="requests' traces per export at most (default OTEL_BSP_MAX_EXPORT_BATCH_SIZE or 512)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the ports (SO_REUSEPORT); metrics summed over them")
    p.add_argument("--recycle-rss-mb", type=float, default=0.0,
                   help="replace a worker whose resident memory passes this many MB: its replacement starts first, "
                        "then it drains (a guard against slow native leaks, e.g. grpc.aio's on cancelled streams, "
                        "RESULTS §31); runs a supervisor even with --workers 1 (0 = off; Linux /proc)")
    p.add_argument("--recycle-min-age-s", type=float, default=60.0,
                   help="never recycle a worker younger than this (bounds churn if the limit is near a fresh worker's size)")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set by --workers for each worker
    p.add_argument("--worker-state", type=named, help=argparse.SUPPRESS)  # set by --workers: the folder of settings workers share
    p.add_argument("--port-file", type=named, help="write the bound gRPC and metrics ports here once serving (tests)")
    p.add_argument("--log-level", default="INFO", type=log_level, metavar="{" + ",".join(LOG_LEVELS) + "}",
                   help="the lowest level logged (any case; default INFO)")
    return p


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(text: str) -> str:
    """--log-level in any case ('warning' as well as 'WARNING'): logging itself takes upper case only, and failed
    with a traceback on anything else."""
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"unknown level {text!r}; valid: {', '.join(LOG_LEVELS)} (any case)")
    return text.upper()


def true_or_false(text: str) -> bool:
    """A boolean option's value as Triton spells it (`--allow-cpu-metrics=false`)."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return text.lower() == "true"


def server_config(args) -> ServerConfig:
    """The server's configuration from options parsed and checked by parse_args."""
    return ServerConfig(
        repo=args.repo, host=args.host, port=args.port, metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        cpu_metrics=args.allow_cpu_metrics, gpu_metrics=args.allow_gpu_metrics, cpu_mem_arena=args.cpu_mem_arena,
        health_port=None if args.health_port < 0 else args.health_port,
        http_port=None if args.http_port < 0 else args.http_port,
        models=tuple(args.model), model_control=args.model_control_mode, backend=args.backend, device=args.device,
        static_batches=args.static_batches, threads=args.threads,
        decode_threads=args.decode_threads,
        engine=EngineConfig(args.max_batch, args.max_queue_delay_ms, args.max_inflight, args.shed_late_budgets,
                            monitor_fraction=args.monitor_fraction,
                            monitor_false_alarm_samples=args.monitor_false_alarm_samples,
                            monitor_adapt=args.monitor_adapt, inline_compute_ms=args.inline_compute_ms,
                            finish_margin_quantile=args.finish_margin_quantile, response_cache_mb=args.response_cache_mb,
                            default_budget_ms=args.default_budget_ms, priority_levels=args.priority_levels,
                            default_priority_level=args.default_priority_level, queue_policies=args.queue_policies,
                            carry_stopped_rows={"on": True, "off": False}.get(args.carry_stopped_rows, "auto")),
        limits=ImageLimits(max_pixels=args.max_pixels, formats=args.image_formats), max_message_bytes=int(args.max_message_mb * 2**20),
        upload_quota_bytes=int(args.upload_quota_mb * 2**20),
        load_memory_floor_bytes=None if args.load_memory_floor_mb < 0 else int(args.load_memory_floor_mb * 2**20),
        device_memory_floor_bytes=None if args.device_memory_floor_mb < 0 else int(args.device_memory_floor_mb * 2**20),
        grace_s=args.grace_s, poll_s=args.poll_s, tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca, auth_token_file=args.auth_token_file,
        max_connection_age_s=args.max_connection_age_s, max_connections=args.max_connections,
        max_streams_per_connection=args.max_streams_per_connection,
        idle_timeout_s=args.idle_timeout_s, access_log=args.access_log, access_log_sample=args.access_log_sample,
        reuse_port=args.reuse_port, trace=args.trace, otlp=args.otlp, log_level=args.log_level,
        allow_client_shm=args.allow_client_shm, worker_state=args.worker_state)


async def serve(args) -> int:
    cfg = server_config(args)
    # Handlers first: a stop that comes while the models load (a --workers supervisor stopping while it replaces
    # a worker) is then honoured once serving starts, drained like any other, and the exit is 0, not -SIGTERM.
    stop = asyncio.Event()
    handoff = []  # SIGUSR1: stop, handing the ports to a replacement (server.workers' recycling)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: (handoff.append(True), stop.set()))
    app = ServerApp(cfg)
    app.log_control.own(tuple(logging.getLogger().handlers))  # basicConfig's: Triton's log_format sets their format
    try:
        app.load_models()
        await app.start()
    except (RepositoryError, RuntimeError, ValueError, OSError) as e:
        logging.getLogger("auxnet.server").error("refusing to start: %s", e)
        return 2
    if args.port_file:
        with open(args.port_file, "w") as f:
            f.write(f"{app.port} {app.metrics_port or 0} {app.health_port or 0} {app.http_port or 0}\n")
    await stop.wait()
    await app.shutdown(handoff=bool(handoff))
    return 0


# Options that must lie in a range, as (option, lowest, highest; None = no bound). Unchecked, --port 99999 served
# on port 34463 (gRPC takes it modulo 65536), --max-batch 0 failed at start-up with an IndexError, --threads 0
# with a ValueError from the executor, --metrics-port 70000 with an OverflowError traceback.
# Every number has both bounds, so that no value reaches a C integer it overflows (gRPC's millisecond options are
# int32, thread counts C longs) or leaves the server waiting forever (inf); NaN fails every comparison and is refused.
RANGES = [("port", 0, 65535), ("metrics_port", -1, 65535), ("health_port", -1, 65535), ("http_port", -1, 65535),
          ("threads", 1, 1024), ("decode_threads", 1, 1024), ("max_batch", 1, 4096), ("max_queue_delay_ms", 0, 60_000),
          ("max_inflight", 1, 10_000_000), ("max_pixels", 1, 2**40), ("max_message_mb", 0.001, 2047),
          ("upload_quota_mb", 0, 10_000_000), ("load_memory_floor_mb", -1, 10_000_000),
          ("device_memory_floor_mb", -1, 10_000_000),
          ("grace_s", 0, 86_400), ("poll_s", 0, 86_400), ("access_log_sample", 0, 1),
          ("max_connection_age_s", 0, 1_000_000), ("max_connections", 0, 10_000_000), ("idle_timeout_s", 0, 1_000_000),
          ("default_budget_ms", 0, 3_600_000), ("recycle_rss_mb", 0, 10_000_000), ("recycle_min_age_s", 0, 1_000_000),
          ("priority_levels", 1, 1000), ("default_priority_level", 0, 1000), ("response_cache_mb", 0, 1_000_000),
          ("workers", 1, 256), ("inline_compute_ms", 0, 60_000), ("monitor_fraction", 0, 1)]


def image_formats(text: str) -> tuple[str, ...]:
    """'png,jpeg' -> ('PNG', 'JPEG'): names of FORMATS, any case, at least one."""
    names = tuple(dict.fromkeys(n.strip().upper() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: {'unknown ' + ', '.join(unknown) if unknown else 'no format'}; "
                                         f"choose among {','.join(FORMATS)}")
    return names


def check_ranges(parser: argparse.ArgumentParser, args) -> None:
    """parser.error (exit 2, the option and value named) for a number outside its range."""
    ranges = RANGES + ([("max_streams_per_connection", 0, 2**31 - 1)] if args.max_streams_per_connection is not None else [])
    for name, low, high in ranges:
        value = getattr(args, name)
        if not low <= value <= high:  # NaN too: every comparison with it is False
            parser.error(f"--{name.replace('_', '-')} {value:g} must be in [{plain_number(low)}, {plain_number(high)}]")


def check_output_file(parser: argparse.ArgumentParser, option: str, path: str) -> None:
    """parser.error unless `path` can be created: its folder exists and is writable, its name is not too long."""
    folder = Path(path).resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        parser.error(f"{option} {path}: its folder {folder} does not exist or is not writable")
    longest = os.pathconf(folder, "PC_NAME_MAX")
    if len(Path(path).name.encode()) > longest - 16:  # room for the suffixes written beside it (.tmp, .0, .worker3)
        parser.error(f"{option} {path[:64]}...: a file name of at most {longest - 16} bytes, please (the file system "
                     f"takes {longest}, and {16} are kept for suffixes)")


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers > 1 or args.recycle_rss_mb:
        from server.workers import supervise

        return supervise(args, sys.argv[1:])
    return asyncio.run(serve(args))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options, checked (argparse's exit 2 naming the option otherwise) and completed with what
    they imply (queue policies per level, trace settings)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_ranges(parser, args)
    if not 1 < args.monitor_false_alarm_samples <= 1e9:  # NaN and inf too
        parser.error(f"--monitor-false-alarm-samples {args.monitor_false_alarm_samples:g} must be more than 1 and at "
                     f"most 1e9")
    if not 0 <= args.finish_margin_quantile < 1:
        parser.error(f"--finish-margin-quantile {args.finish_margin_quantile} must be in [0, 1)")
    if not args.cpu_mem_arena and (args.static_batches or args.backend != "onnxruntime"):
        parser.error("--cpu-mem-arena false is for the onnxruntime backend without --static-batches (static batches "
                     "bind buffers of their own; TensorRT has no such arena)")
    if args.default_priority_level > args.priority_levels:
        parser.error(f"--default-priority-level {args.default_priority_level} must be at most --priority-levels "
                     f"{args.priority_levels}")
    try:
        args.queue_policies = level_policies(args.queue_policy, args.priority_levels)
    except ValueError as e:
        parser.error(f"--queue-policy {e}")
    args.trace, args.otlp = trace_settings(parser, args)
    for option in ("trace_file", "port_file"):  # fail now, not at the first write, minutes into serving
        if getattr(args, option):
            check_output_file(parser, f"--{option.replace('_', '-')}", getattr(args, option))
    if args.worker_state and not (os.path.isdir(args.worker_state) and os.access(args.worker_state, os.W_OK | os.X_OK)):
        # The supervisor's own folder, not an option to set by hand; each worker writes its shared trace counts and
        # applied settings there from its first moment (a traceback before this check, found by bench.cli_fuzz).
        parser.error(f"--worker-state {args.worker_state[:64]}: not a writable folder (a --workers supervisor makes it "
                     "and names it to its workers)")
    if args.recycle_rss_mb and not Path("/proc/self/status").exists():
        parser.error(f"--recycle-rss-mb {args.recycle_rss_mb:g} reads workers' memory from /proc, which this system lacks")
    return args


def trace_settings(parser, args) -> tuple[TraceSettings, OtlpSettings | None]:
    """Request tracing's start-up settings, and the collector's in opentelemetry mode; parser.error naming what is wrong."""
    try:
        on = args.trace_file or args.trace_mode == "opentelemetry"
        trace = TraceSettings(args.trace_file, args.trace_level or ("TIMESTAMPS" if on else "OFF"),
                              args.trace_rate, args.trace_count, args.trace_log_frequency, args.trace_mode)
    except ValueError as e:
        parser.error(str(e))
    return trace, otlp_settings(parser, args)


def otlp_settings(parser, args) -> OtlpSettings | None:
    """The collector's settings in opentelemetry mode (parser.error naming a wrong option or variable); None otherwise,
    where the OTLP options are refused rather than ignored."""
    options = ("trace_otlp_url", "trace_bsp_max_queue_size", "trace_bsp_schedule_delay_ms", "trace_bsp_max_export_batch_size")
    given = [o for o in options if getattr(args, o) is not None] + (["trace_resource"] if args.trace_resource else [])
    if args.trace_mode != "opentelemetry":
        if given:
            parser.error(f"--{given[0].replace('_', '-')} is for --trace-mode opentelemetry")
        return None
    try:
        import opentelemetry.proto.collector.trace.v1.trace_service_pb2  # noqa: F401 - present, or refused now
    except ImportError as e:
        parser.error(f"--trace-mode opentelemetry needs the opentelemetry-proto package ({e}): pip install opentelemetry-proto")
    try:
        for item in args.trace_resource:
            if not item.strip():
                raise ValueError("--trace-resource '' must be KEY=VALUE")
        s = settings_from_environment(args.trace_otlp_url, args.trace_resource)
        bsp = {"max_queue_size": args.trace_bsp_max_queue_size, "schedule_delay_ms": args.trace_bsp_schedule_delay_ms,
               "max_export_batch_size": args.trace_bsp_max_export_batch_size}
        return replace(s, **{k: v for k, v in bsp.items() if v is not None})
    except ValueError as e:
        parser.error(f"--trace-mode opentelemetry: {e}")


if __name__ == "__main__":
    sys.exit(main())
