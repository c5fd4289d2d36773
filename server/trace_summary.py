"""Summarise request traces (server/tracing.py's files): where the time went, exit by exit.

    python -m server.trace_summary TRACE_FILE [TRACE_FILE ...] [--json]

Per model: requests, how they ended (status, stop reason, budgets met), and the phases of a request in
milliseconds (p50 / p90 / p99 / max): before its first queue (decoding the image), waiting for exit 0,
computing (first segment run's start to last one's end, waits at deeper exits included), from there to its
end (the answer applied and the handler resumed on the event loop), and the whole request. Per exit: requests
that reached it, how long they waited in its queue (counted only where they were queued: a request that ran on
within one thread call waited nothing there), its segment run's compute time, and the rows those runs
computed. Triton's own trace files (no exit children) summarise too, as one exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict

import numpy as np

# "answer after compute": from the last segment run's end to the request's end (its answer applied and its handler
# resumed on the event loop): a busy loop shows here.
PHASES = (("before queue", "REQUEST_START", "QUEUE_START"), ("wait at exit 0", "QUEUE_START", "COMPUTE_START"),
          ("compute, all exits", "COMPUTE_START", "COMPUTE_END"), ("answer after compute", "COMPUTE_END", "REQUEST_END"),
          ("  to the answer set", "COMPUTE_END", "ANSWER_SET"), ("  to the handler", "ANSWER_SET", "REQUEST_END"),
          ("request", "REQUEST_START", "REQUEST_END"))


def load(paths: list[str]) -> list[dict]:
    traces = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"trace_summary: cannot read {path}: {e}") from None
        if not isinstance(doc, list):
            raise SystemExit(f"trace_summary: {path} is not a trace file (a JSON array of traces)")
        traces += [t for t in doc if isinstance(t, dict) and "id" in t]
    return traces


def _ms(stamps: dict, start: str, end: str) -> float | None:
    return (stamps[end] - stamps[start]) / 1e6 if start in stamps and end in stamps else None


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {"n": len(a), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def summarise(traces: list[dict]) -> dict:
    """{model: {requests, status, stop_reason, budget, phases, exits}} from Triton-format trace objects."""
    # Triton writes a trace's model and its timestamps as two objects with one id (ids are unique): merge them.
    merged: dict = {}
    for t in traces:
        m = merged.setdefault(t["id"], {})
        m.update({k: v for k, v in t.items() if k != "timestamps"})
        m.setdefault("timestamps", []).extend(t.get("timestamps", []))
    children = defaultdict(list)
    for t in merged.values():
        if t.get("parent_id") is not None:
            children[t["parent_id"]].append(t)
    out: dict = {}
    for t in merged.values():
        if t.get("parent_id") is not None:
            continue
        s = out.setdefault(t.get("model_name", "?"), {"requests": 0, "status": Counter(), "stop_reason": Counter(),
                                                      "budget": Counter(), "phases": defaultdict(list), "cache_hits": 0,
                                                      "exits": defaultdict(lambda: {"wait": [], "compute": [], "rows": []})})
        s["requests"] += 1
        s["cache_hits"] += bool(t.get("cache_hit"))  # answered from the response cache: no queue, no compute
        s["status"][t.get("status", "?")] += 1
        if t.get("stop_reason"):
            s["stop_reason"][t["stop_reason"]] += 1
        if t.get("budget_ms") is not None and t.get("budget_met") is not None:
            s["budget"]["met" if t["budget_met"] else "missed"] += 1
        stamps = {x["name"]: x["ns"] for x in t["timestamps"]}
        for name, start, end in PHASES:
            if (v := _ms(stamps, start, end)) is not None:
                s["phases"][name].append(v)
        runs = children.get(t["id"]) or [{"exit": 0, "timestamps": t["timestamps"], "batch_size": None}]
        for c in runs:
            e = s["exits"][c.get("exit", 0)]
            cs = {x["name"]: x["ns"] for x in c["timestamps"]}
            if (v := _ms(cs, "QUEUE_START", "COMPUTE_START")) is not None:
                e["wait"].append(v)
            if (v := _ms(cs, "COMPUTE_START", "COMPUTE_END")) is not None:
                e["compute"].append(v)
                if c.get("batch_size") is not None:
                    e["rows"].append(c["batch_size"])
    return {model: {"requests": s["requests"], "cache_hits": s["cache_hits"], "status": dict(s["status"]),
                    "stop_reason": dict(s["stop_reason"]),
                    "budget": dict(s["budget"]), "phases_ms": {k: _quantiles(v) for k, v in s["phases"].items()},
                    "exits": {k: {"reached": len(e["compute"]), "queued": len(e["wait"]), "wait_ms": _quantiles(e["wait"]),
                                  "compute_ms": _quantiles(e["compute"]),
                                  "mean_rows": float(np.mean(e["rows"])) if e["rows"] else None}
                              for k, e in sorted(s["exits"].items())}}
            for model, s in out.items()}


def _row(label: str, q: dict) -> str:
    if not q.get("n"):
        return f"  {label:<22} {'-':>6}"
    return f"  {label:<22} {q['n']:>6} {q['p50']:>8.2f} {q['p90']:>8.2f} {q['p99']:>8.2f} {q['max']:>8.2f}"


def render(summary: dict) -> str:
    lines = []
    for model, s in summary.items():
        lines.append(f"model {model}: {s['requests']} traced requests; status {s['status']}; stop reasons "
                     f"{s['stop_reason']}; budgets {s['budget'] or 'none set'}; cache hits {s['cache_hits']}")
        lines.append(f"  {'phase (ms)':<22} {'n':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
        lines += [_row(name, s["phases_ms"][name]) for name, *_ in PHASES if name in s["phases_ms"]]
        for k, e in s["exits"].items():
            rows = f"{e['mean_rows']:.1f}" if e["mean_rows"] is not None else "-"
            lines.append(f"  exit {k}: reached by {e['reached']}, queued {e['queued']}, mean rows per run {rows}")
            lines.append(_row("waiting in its queue", e["wait_ms"]))
            lines.append(_row("its segment run", e["compute_ms"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.trace_summary", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="trace files (FILE, or FILE.0 FILE.1 ... with log_frequency)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args(argv)
    summary = summarise(load(args.files))
    print(json.dumps(summary, indent=1) if args.json else render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
