"""Request traces (Triton's trace extension): where each sampled request's time went, exit by exit.

Why: metrics give distributions and the access log gives outcomes, but neither says why one request took 40 ms
at exit 1. A trace does: when it arrived, when it joined each exit's queue, when each segment run it rode in
started and ended and how many rows that run computed, where it stopped and why, and its budget. Sampled (one
request in `trace_rate`), so a busy server can keep tracing at a cost it chooses (bench/RESULTS.md §37).

The format is Triton's (docs/user_guide/trace.md): a JSON array of traces, each with an `id`, `model_name`,
`model_version` and `timestamps` [{name, ns}] (CLOCK_MONOTONIC nanoseconds, as Triton's steady clock). The
request's own trace carries Triton's REQUEST_START, QUEUE_START (its first exit's queue), COMPUTE_START (its
first segment run), COMPUTE_END (its last) and REQUEST_END, and ANSWER_SET (its answer set on the event loop;
from there to REQUEST_END it waits for its handler to resume); every exit it passed is a child trace (`parent_id`,
as Triton writes an ensemble's composing models) named MODEL.exitK, with that exit's QUEUE_START (absent where
the request went on within one thread call, never queued there), COMPUTE_START and COMPUTE_END. Early exit's
own facts are fields beside them: `exit`, `layer`, `stop_reason`, `status`, `budget_ms`, `budget_met`,
`priority`, and per child `batch_size` (rows computed) and `requests` (requests in that run).

The settings are Triton's too (trace_file, trace_level, trace_rate, trace_count, log_frequency), global or per
model, from the command line (--trace-*) and at run time through Triton's TraceSetting RPC and
/v2[/models/NAME]/trace/setting. One difference, for safety: at run time `trace_file` may only name a file in the
directory of the start-up --trace-file (a bare name), since anyone holding the token could otherwise make the
server overwrite any file it may write. Tested in tests/server/test_tracing.py.

`trace_mode` opentelemetry (--trace-mode, start-up only, as Triton's): the same traces go to an OpenTelemetry
collector as spans instead of a file (server/otlp_export.py), and a request that carries a W3C traceparent
(server/otel_context.py) joins its caller's trace. As Triton: such a request is traced whatever the rate and count,
and rate 0 traces only those. Unlike Triton, a traceparent whose sampled flag is off is not traced: the caller's
sampler decided against recording that trace, and spans of it would reach the collector without their parents.
Tested in tests/server/test_otel_tracing.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from server.arguments import UINT32_MAX
from server.errors import FailedPrecondition, InvalidInput, ServingError
from server.otel_context import INCOMING, TraceContext
from server.otlp_settings import OtlpSettings
from server.trace_count import SharedTraceCount
from server.trace_file import TraceFile

log = logging.getLogger("auxnet.server")

LEVELS = ("OFF", "TIMESTAMPS")  # Triton's TENSORS (inputs and outputs in the trace) is not offered here
MODES = ("triton", "opentelemetry")  # Triton's trace_mode values: a JSON file, or OTLP spans to a collector
DEFAULT_RATE = 1000  # Triton's default: one request in 1000
SETTINGS = ("trace_file", "trace_level", "trace_rate", "trace_count", "log_frequency", "trace_mode")
CACHE_HIT = ',"cache_hit":true'  # a field only cache hits carry
BARE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # no separator, no leading dot: stays in its directory


@dataclass(frozen=True)
class TraceSettings:
    file: str | None = None  # where traces go (with log_frequency N: FILE.0, FILE.1, ...)
    level: str = "OFF"  # OFF or TIMESTAMPS
    rate: int = DEFAULT_RATE  # trace one request in `rate`
    count: int = -1  # traces still to collect; -1: no limit (Triton's trace_count)
    log_frequency: int = 0  # write every N traces to FILE.<i>; 0: hold them and write FILE at shutdown
    mode: str = "triton"  # or "opentelemetry": spans to a collector (server/otlp_export.py), no file

    def __post_init__(self):
        check_settings(self)

    def response(self) -> dict:
        """Triton's trace setting response: every value a string, trace_level a list of them."""
        return {"trace_file": self.file or "", "trace_level": [self.level], "trace_rate": str(self.rate),
                "trace_count": str(self.count), "log_frequency": str(self.log_frequency), "trace_mode": self.mode}


def check_settings(s: TraceSettings) -> None:
    if s.mode not in MODES:
        raise ValueError(f"trace mode {s.mode!r} unknown; valid: {', '.join(MODES)}")
    if s.level not in LEVELS:
        extra = " (TENSORS, inputs and outputs in the trace, is not offered here)" if s.level == "TENSORS" else ""
        raise ValueError(f"trace level {s.level!r} unknown; valid: {', '.join(LEVELS)}{extra}")
    # Upper bounds: Triton's are 32-bit; a value past them (10^21) was taken and meant nothing usable
    lowest = 0 if s.mode == "opentelemetry" else 1  # 0: only requests whose caller's context says sampled
    if not lowest <= s.rate <= UINT32_MAX:
        also = " (0, tracing only requests that carry a sampled traceparent, is for --trace-mode opentelemetry)" if lowest else ""
        raise ValueError(f"trace rate {s.rate} must be at least {lowest} (one request in that many is traced) and at most "
                         f"{UINT32_MAX}{also}")
    if not -1 <= s.count <= UINT32_MAX:
        raise ValueError(f"trace count {s.count} must be -1 (no limit) or the number of traces still to collect, at most "
                         f"{UINT32_MAX}")
    if not 0 <= s.log_frequency <= UINT32_MAX:
        raise ValueError(f"log frequency {s.log_frequency} must be 0 (write at shutdown) or the traces per file, at most "
                         f"{UINT32_MAX}")
    if s.mode == "opentelemetry" and s.file:
        raise ValueError("a trace file has no use in opentelemetry mode: spans go to the collector (--trace-otlp-url)")
    if s.level != "OFF" and not s.file and s.mode == "triton":
        raise ValueError("tracing needs a trace file: start the server with --trace-file PATH, or --trace-mode opentelemetry")


def _one(name: str, values: list[str]) -> str:
    if len(values) != 1:
        raise InvalidInput(f"trace setting {name!r} takes one value, got {len(values)}: {values}")
    return values[0]


def _integer(name: str, text: str, rule: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"trace setting {name!r} must be {rule}; got {text!r}") from None


def setting_values(doc) -> dict[str, list[str] | None]:
    """An HTTP trace setting request's JSON ({name: value | [values] | null}) as the gRPC request's map holds it."""
    if not isinstance(doc, dict):
        raise InvalidInput(f"trace settings must be a JSON object of setting: value, got {type(doc).__name__}")
    out = {}
    for name, v in doc.items():
        if v is None:
            out[name] = None
        elif isinstance(v, (str, int)) and not isinstance(v, bool):
            out[name] = [str(v)]
        elif isinstance(v, list) and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
            out[name] = [str(x) for x in v]
        else:
            raise InvalidInput(f"trace setting {name!r}: a string, a list of strings or null; got {json.dumps(v)[:80]}")
    return out


class TraceScope:
    """The settings that govern one model (or the global ones), with their sampling counter and remaining count."""

    def __init__(self, settings: TraceSettings):
        self.settings = settings
        self.seen = 0  # requests that met these settings while tracing was on


class Tracer:
    """Sampling, settings (global and per model) and the files traces are written to. On the event loop only."""

    def __init__(self, startup: TraceSettings, runtime_updates: bool = True, own_file: bool = False,
                 otlp: OtlpSettings | None = None, count_spans=lambda outcome, n: None,
                 shared_count: SharedTraceCount | None = None):
        """`runtime_updates` False: a process started with --reuse-port alone (a change would reach it only).
        `own_file`: a --workers process, whose file is its own (FILE.worker<id>): the other settings are shared
        (server/worker_sync.py), the file cannot change at run time. `otlp`: where spans go in opentelemetry mode
        (its defaults if None); `count_spans(outcome, n)`: the exporter's outcomes, for the metrics.
        `shared_count`: a --workers process's trace_count, shared with the other workers (server/trace_count.py)."""
        if startup.file:  # one spelling per file: a name set at run time resolves to the same key
            startup = replace(startup, file=str(Path(startup.file).resolve()))
        self.startup = startup
        self.runtime_updates = runtime_updates
        self.own_file = own_file
        self.directory = Path(startup.file).resolve().parent if startup.file else None
        self.scope = TraceScope(startup)
        self.models: dict[str, TraceScope] = {}  # models with settings of their own
        self.shared_count = shared_count
        if shared_count is not None:
            shared_count.start("", startup.count)
        self.files: dict[str, TraceFile] = {}
        self.next_index: dict[str, int] = {}  # a retired file's next part number
        self.ids = itertools.count(1)
        self.exporter = None
        if startup.mode == "opentelemetry":
            # Imported here only: opentelemetry-proto is needed in this mode alone (an install without it, as the GPU
            # machine's --no-deps tree, serves every other way)
            from server.otlp_export import OtlpExporter

            self.exporter = OtlpExporter(otlp or OtlpSettings(), count_spans)
        self._file_of(startup)

    @property
    def can_trace(self) -> bool:
        """Whether tracing can ever be on: with a trace file or a collector (the level may still be OFF)."""
        return bool(self.startup.file) or self.exporter is not None

    # --- requests ---------------------------------------------------------------------------------------

    def sample(self, model: str, version: str, arrival: float, budget_ms: float | None, priority: int) -> Trace | None:
        """A trace for this request, or None (not sampled, tracing off, or its count used up)."""
        scope = self.models.get(model, self.scope)
        s = scope.settings
        if s.level == "OFF":
            return None
        context = INCOMING.get() if self.exporter is not None else None
        if context is not None:  # the caller's sampler decided, whatever our rate and count (see the module's doc)
            return Trace(next(self.ids), model, version, None, arrival, budget_ms, priority, context=context) if context.sampled else None
        if s.count == 0 or s.rate == 0:
            return None
        scope.seen += 1
        if (scope.seen - 1) % s.rate:
            return None
        if s.count > 0:
            left = s.count - 1 if self.shared_count is None else self.shared_count.take(model if model in self.models else "")
            scope.settings = replace(s, count=0 if left is None else left)  # None: the other workers took the rest
            if left is None:
                return None
        return Trace(next(self.ids), model, version, s.file, arrival, budget_ms, priority)

    def finish(self, trace: Trace, future, drop_reason: str, layers: tuple[int, ...]) -> None:
        """The request is over (answered, failed, or its caller left): write its trace out."""
        trace.end = time.monotonic()
        if future.cancelled():
            trace.status = "DEADLINE_EXCEEDED" if drop_reason == "deadline" else "CANCELLED"
        elif future.exception() is not None:
            e = future.exception()
            trace.status = e.code.name if isinstance(e, ServingError) else "INTERNAL"
        else:
            self._answered(trace, future.result(), layers)
        self._write(trace)

    def refused(self, trace: Trace, error: ServingError) -> None:
        """The request was refused before it was admitted (a full server, a budget it cannot meet)."""
        trace.end, trace.status = time.monotonic(), error.code.name
        self._write(trace)

    def cached(self, trace: Trace, answer, layers: tuple[int, ...]) -> None:
        """The request was answered from the response cache, before admission: no queue, no compute."""
        trace.end, trace.cache_hit = time.monotonic(), True
        self._answered(trace, answer, layers)
        self._write(trace)

    @staticmethod
    def _answered(trace: Trace, answer, layers: tuple[int, ...]) -> None:
        trace.status, trace.exit, trace.reason, trace.budget_met = "OK", answer.exit_index, answer.reason, answer.budget_met
        trace.layer = layers[answer.exit_index]

    def _write(self, trace: Trace) -> None:
        if self.exporter is not None:
            self.exporter.add(trace)
            return
        file = self.files.get(trace.file)
        if file is not None:  # None: a settings change left its file while it ran; that trace is not written
            file.add(trace.text([next(self.ids) for _ in trace.exits]))

    # --- settings ---------------------------------------------------------------------------------------

    def settings(self, model: str = "") -> dict:
        key = model if model in self.models else ""
        s = self.models.get(key, self.scope).settings
        return (s if self.shared_count is None else self._count_left(s, key)).response()

    def _count_left(self, s: TraceSettings, scope: str) -> TraceSettings:
        """`s` with the count the workers have left together in `scope` ("" global), where one is written."""
        left = self.shared_count.left(scope)
        return s if left is None else replace(s, count=left)

    def update(self, model: str, raw: dict[str, list[str] | None]) -> dict:
        """Apply Triton's trace setting request (`model` "" = global). A setting given None is cleared: a model's
        then follows the global one again, a global one returns to its start-up value. Returns the settings now."""
        if not self.runtime_updates:
            raise FailedPrecondition("trace settings cannot change at run time in a server started with --reuse-port "
                                     "alone: its sibling processes would not follow; run them under one supervisor "
                                     "(--workers)")
        scope = self.models.get(model) if model else self.scope
        base = scope.settings if scope is not None else self.scope.settings  # a model's first settings copy the global
        cleared_to = self.scope.settings if model else self.startup
        if self.shared_count is not None:  # counts as the workers have them left, not as this one saw them last
            base = self._count_left(base, model if scope is not None else "")
            cleared_to = self._count_left(cleared_to, "") if model else cleared_to
        new = base
        try:  # each step's settings are checked (TraceSettings.__post_init__): the first bad value is named
            for name, values in raw.items():
                if name not in SETTINGS:
                    raise InvalidInput(f"unknown trace setting {name!r}; valid: {', '.join(SETTINGS)}")
                if name == "trace_mode" and values is None:
                    continue  # one mode: nothing to clear
                if values is None:
                    new = replace(new, **{_FIELD[name]: getattr(cleared_to, _FIELD[name])})
                else:
                    new = self._set(new, name, values)
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        if self.shared_count is not None and ("trace_count" in raw or (model and scope is None)):
            self.shared_count.set(model, new.count)  # what every worker has left now; a model's own count starts here
        if model and all(v is None for v in raw.values()):
            self.models.pop(model, None)  # every setting cleared: the model follows the global settings again
        elif model:
            self.models[model] = scope if scope is not None else TraceScope(new)
            self.models[model].settings = new
        else:
            self.scope.settings = new
        self._file_of(new, replaced=base)
        log.info("trace settings%s: %s", f" of model {model}" if model else "", new.response())
        return new.response()

    def shared(self) -> dict:
        """The settings other worker processes adopt (server/worker_sync.py): global and per model, less the file,
        which is each worker's own."""
        def fields(sc: TraceScope) -> dict:
            st = sc.settings
            return {"level": st.level, "rate": st.rate, "count": st.count, "log_frequency": st.log_frequency}
        return {"global": fields(self.scope), "models": {m: fields(sc) for m, sc in self.models.items()}}

    def adopt(self, shared: dict) -> None:
        """Take settings another worker checked and applied. trace_count comes as that worker saw it; what the
        workers have left together is the shared count (server/trace_count.py), which sample() takes from."""
        def apply(scope: TraceScope | None, values: dict) -> TraceScope:
            base = scope.settings if scope is not None else self.scope.settings
            new = replace(base, **values)
            if scope is None:
                scope = TraceScope(new)
            scope.settings = new
            self._file_of(new, replaced=base)
            return scope

        apply(self.scope, shared["global"])
        for model in [m for m in self.models if m not in shared["models"]]:
            del self.models[model]
        for model, values in shared["models"].items():
            self.models[model] = apply(self.models.get(model), values)
            if self.shared_count is not None:  # written by the worker that took the call; this only fills a gap
                self.shared_count.start(model, values["count"])

    def _set(self, s: TraceSettings, name: str, values: list[str]) -> TraceSettings:
        if name == "trace_level":
            levels = [v.upper() for v in values]
            if len(levels) != 1:
                raise InvalidInput(f"trace_level takes one of {', '.join(LEVELS)}, got {values}")
            return replace(s, level=levels[0])
        value = _one(name, values)
        if name == "trace_mode":
            if value not in MODES:
                raise InvalidInput(f"trace_mode {value!r} unknown; valid: {', '.join(MODES)}")
            if value != s.mode:
                raise FailedPrecondition(f"trace_mode is {s.mode}, set at start-up (--trace-mode), as in Triton; it "
                                         f"cannot change to {value} at run time")
            return s
        if s.mode == "opentelemetry" and name in ("trace_file", "log_frequency"):
            raise FailedPrecondition(f"{name} has no use in opentelemetry mode: spans go to the collector "
                                     f"({self.exporter.settings.url if self.exporter else '--trace-otlp-url'})")
        if name == "trace_file":
            if self.own_file:
                raise FailedPrecondition("trace_file cannot change at run time under --workers or --recycle-rss-mb: "
                                         "each worker writes its own file (--trace-file's PATH.worker<id>); the other "
                                         "trace settings reach every worker")
            return replace(s, file=self._runtime_file(value))
        rules = {"trace_rate": f"a whole number, at least {0 if s.mode == 'opentelemetry' else 1}",
                 "trace_count": "a whole number, -1 or more", "log_frequency": "a whole number, 0 or more"}
        return replace(s, **{_FIELD[name]: _integer(name, value, rules[name])})

    def _runtime_file(self, name: str) -> str:
        if self.directory is None:
            raise FailedPrecondition("no trace directory: start the server with --trace-file PATH; a trace file set at "
                                     "run time goes beside it")
        if not BARE_NAME.fullmatch(name):
            raise InvalidInput(f"trace_file {name!r} must be a bare file name (letters, digits, '_', '.', '-'; no path, "
                               f"no leading dot): it is written in {self.directory}, the start-up trace file's directory")
        return str(self.directory / name)

    def _file_of(self, s: TraceSettings, replaced: TraceSettings | None = None) -> None:
        """Keep a writer for every file a scope names; a changed file or frequency writes what the old one held.
        Triton numbers a file's parts from 0 again when trace_file changes; here a file named again goes on from
        its last number, so that no trace file of this process is overwritten."""
        if replaced is not None and replaced.file and (replaced.file, replaced.log_frequency) != (s.file, s.log_frequency):
            if replaced.file not in self._named_files():
                self._retire(replaced.file)
        if s.file and (s.file not in self.files or self.files[s.file].log_frequency != s.log_frequency):
            self._retire(s.file)
            self.files[s.file] = TraceFile(s.file, s.log_frequency, index=self.next_index.get(s.file, 0))

    def _retire(self, path: str) -> None:
        old = self.files.pop(path, None)
        if old is not None:
            old.close(wait=False)
            self.next_index[path] = old.index

    def _named_files(self) -> set[str]:
        return {sc.settings.file for sc in (self.scope, *self.models.values()) if sc.settings.file}

    def close(self) -> None:
        """At shutdown: write every trace held, and wait for the writes."""
        for f in self.files.values():
            f.close()
        self.files.clear()
        if self.exporter is not None:
            self.exporter.close()
        if self.shared_count is not None:
            self.shared_count.close()


_FIELD = {"trace_file": "file", "trace_level": "level", "trace_rate": "rate", "trace_count": "count",
          "log_frequency": "log_frequency"}


@dataclass(eq=False)
class Trace:
    """One sampled request, filled in by the engine on the event loop as it moves (server/engine.py)."""

    id: int
    model: str
    version: str
    file: str | None
    start: float  # time.monotonic() when its handler began
    budget_ms: float | None
    priority: int
    queued: float | None = None  # joined exit 0's queue
    end: float | None = None
    status: str = ""
    exit: int | None = None
    layer: int | None = None
    reason: str | None = None
    budget_met: bool | None = None
    answered: float | None = None  # its answer set on the event loop (ANSWER_SET: before its handler resumes)
    cache_hit: bool = False  # answered from the response cache (written only when true)
    context: TraceContext | None = None  # the caller's W3C trace context (opentelemetry mode)

    def __post_init__(self):
        self.exits: dict[int, list] = {}  # exit -> [queue start, compute start, compute end, rows, requests]

    def queue(self, k: int, now: float) -> None:
        if k == 0:
            self.queued = now
        self.exits.setdefault(k, [None, None, None, 0, 0])[0] = now

    def segment(self, k: int, began: float, ended: float, rows: int, requests: int) -> None:
        e = self.exits.setdefault(k, [None, None, None, 0, 0])
        e[1:] = [began, ended, rows, requests]

    def text(self, child_ids: list[int]) -> str:
        """Triton's trace objects as JSON text, comma-separated: the request's, then one per exit it reached (with
        these ids). Written by hand: building dicts and json.dumps cost 75 us a request on this CPU, most of what
        tracing every request cost (RESULTS §37)."""
        exits = sorted(self.exits.items())
        runs = [e for _, e in exits if e[1] is not None]
        marks = (("REQUEST_START", self.start), ("QUEUE_START", self.queued), ("COMPUTE_START", runs[0][1] if runs else None),
                 ("COMPUTE_END", runs[-1][2] if runs else None), ("ANSWER_SET", self.answered), ("REQUEST_END", self.end))
        model, version = json.dumps(self.model), json.dumps(self.version)
        parts = [f'{{"id":{self.id},"model_name":{model},"model_version":{version},"timestamps":{_stamps(marks)},'
                 f'"status":"{self.status}","exit":{_js(self.exit)},"layer":{_js(self.layer)},'
                 f'"stop_reason":{_js(self.reason)},"budget_ms":{_js(self.budget_ms)},"budget_met":{_js(self.budget_met)},'
                 f'"priority":{self.priority}{CACHE_HIT if self.cache_hit else ""}}}']
        for child, (k, (queued, began, ended, rows, requests)) in zip(child_ids, exits):
            marks = (("QUEUE_START", queued), ("COMPUTE_START", began), ("COMPUTE_END", ended))
            parts.append(f'{{"id":{child},"parent_id":{self.id},"model_name":{model[:-1]}.exit{k}","model_version":{version},'
                         f'"exit":{k},"batch_size":{rows},"requests":{requests},"timestamps":{_stamps(marks)}}}')
        return ",".join(parts)


def _stamps(marks) -> str:
    return "[" + ",".join(f'{{"name":"{name}","ns":{int(t * 1e9)}}}' for name, t in marks if t is not None) + "]"


def _js(v) -> str:
    """A JSON value of None, a bool, an int or a float (json.dumps for floats: it refuses no value we hold)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v) if isinstance(v, int) else json.dumps(v)
