"""Where OpenTelemetry spans go and how they are batched (server/otlp_export.py sends them): the command line's
--trace-otlp-url and --trace-resource over OpenTelemetry's environment variables, each value checked and a wrong one
named (a URL whose host is no host name or IP address, a port outside 1-65535, a batch larger than its queue)."""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from dataclasses import dataclass, field

DEFAULT_URL = "http://localhost:4318/v1/traces"  # Triton's and OTLP/HTTP's default
DEFAULT_SERVICE = "auxnet-serving"
MAX_QUEUE = 1_000_000  # requests' traces held at most (~5 KB each): a bound on memory whatever the settings


@dataclass(frozen=True)
class OtlpSettings:
    url: str = DEFAULT_URL
    resource: dict[str, str] = field(default_factory=lambda: {"service.name": DEFAULT_SERVICE})
    headers: dict[str, str] = field(default_factory=dict)  # e.g. a hosted backend's API key
    gzip: bool = False
    max_queue_size: int = 2048  # requests' traces waiting (the BSP's spans; here a request's spans go together)
    schedule_delay_ms: int = 5000
    max_export_batch_size: int = 512
    export_timeout_s: float = 10.0  # one batch's sending, retries included
    shutdown_timeout_s: float = 5.0

    def __post_init__(self):
        target(self.url)  # ValueError naming what is wrong
        if not 1 <= self.max_queue_size <= MAX_QUEUE:
            raise ValueError(f"the export queue size {self.max_queue_size} must be from 1 to {MAX_QUEUE} (traces waiting "
                             f"for a collector that is down are held in memory)")
        if not 1 <= self.max_export_batch_size <= self.max_queue_size:
            raise ValueError(f"the export batch size {self.max_export_batch_size} must be at least 1 and at most the "
                             f"queue size {self.max_queue_size} (a larger batch could never fill)")
        if self.schedule_delay_ms < 1:
            raise ValueError(f"the schedule delay {self.schedule_delay_ms} ms must be at least 1 ms")
        if not 0 < self.export_timeout_s <= 600:
            raise ValueError(f"the export timeout {self.export_timeout_s} s must be in (0, 600]")


def target(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of the collector's URL; "host:port/path" without a scheme is http, as Triton
    takes it. ValueError naming what is wrong."""
    shown = url if len(url) <= 100 else url[:100] + "..."
    try:
        parsed = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    except ValueError as e:  # e.g. an unclosed IPv6 bracket
        raise ValueError(f"OTLP URL {shown!r} does not parse: {e}") from None
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"OTLP URL {shown!r}: the scheme must be http or https (OTLP/HTTP), not {parsed.scheme!r}")
    try:
        port = parsed.port if parsed.port is not None else (443 if parsed.scheme == "https" else 80)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ValueError(f"OTLP URL {shown!r}: the port must be a number from 1 to 65535")
    host = parsed.hostname
    if not host:
        raise ValueError(f"OTLP URL {shown!r} names no host")
    if not (_HOST_NAME.fullmatch(host) and len(host) <= 253) and not _ip_literal(host):
        raise ValueError(f"OTLP URL {shown!r}: {host[:64]!r} is neither a host name (letters, digits, '-' and dots, "
                         "at most 253 characters) nor an IP address")
    return parsed.scheme, parsed.hostname, port, (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")


_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def key_values(text: str, what: str) -> dict[str, str]:
    """OpenTelemetry's "k1=v1,k2=v2" form (OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS), values
    percent-decoded. ValueError naming the malformed member."""
    out = {}
    for member in (m.strip() for m in text.split(",")):
        if not member:
            continue
        key, sep, value = member.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} {member!r} must be KEY=VALUE")
        out[key.strip()] = urllib.parse.unquote(value.strip())
    return out


def settings_from_environment(url: str | None, resource: list[str], env: dict[str, str] | None = None) -> OtlpSettings:
    """The exporter's settings: the command line's URL and resource attributes over the OTEL_* variables
    (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is, else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces; OTEL_SERVICE_NAME;
    OTEL_RESOURCE_ATTRIBUTES; OTEL_EXPORTER_OTLP[_TRACES]_HEADERS, _COMPRESSION and _TIMEOUT in ms; OTEL_BSP_*).
    ValueError naming the setting that is wrong."""
    env = os.environ if env is None else env
    if url is None:
        url = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
            env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces" if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") else DEFAULT_URL)
    attributes = {"service.name": DEFAULT_SERVICE, **key_values(env.get("OTEL_RESOURCE_ATTRIBUTES", ""), "OTEL_RESOURCE_ATTRIBUTES")}
    if env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = env["OTEL_SERVICE_NAME"]
    for item in resource:
        attributes.update(key_values(item, "--trace-resource"))
    headers = key_values(env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS", env.get("OTEL_EXPORTER_OTLP_HEADERS", "")),
                         "OTEL_EXPORTER_OTLP_HEADERS")
    compression = env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", env.get("OTEL_EXPORTER_OTLP_COMPRESSION", "none")).lower()
    if compression not in ("gzip", "none"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_COMPRESSION {compression!r}: gzip or none")

    def number(name: str, default: float) -> float:
        text = env.get(name, "")
        try:
            return float(text) if text else default
        except ValueError:
            raise ValueError(f"{name} {text!r} is not a number") from None

    timeout_ms = number("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", number("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000))
    return OtlpSettings(url=url, resource=attributes, headers=headers, gzip=compression == "gzip",
                        max_queue_size=int(number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)),
                        schedule_delay_ms=int(number("OTEL_BSP_SCHEDULE_DELAY", 5000)),
                        max_export_batch_size=int(number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)),
                        export_timeout_s=timeout_ms / 1000)
