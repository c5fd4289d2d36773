"""Input drift against the agreement monitor (issue 13): clean CIFAR-10 test images, then the same kind of
images degraded (blur, noise or low contrast), then clean again, all under the calibrated per-exit policy.
Measures when the alarm fires, whether adaptation restores agreement with the final exit, and at what cost.

    python -m bench.drift [--shift impulse] [--requests 3000 20000 10000] [--monitor-fraction 0.05]

Runs the server twice (adaptation off, then on) on the embedded default model. "Agreement" is how often the
served answer equals the final exit's answer for the same image (found beforehand with max_exit unset and
no early exit); the server itself sees only its monitor's samples.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from prometheus_client.parser import text_string_to_metric_families

from bench.serving import load_test_images
from server.client import Client
from server.demo import ROOT, start_server
from server.loadgen import closed_loop

CHUNK = 100  # requests between two scrapes of /metrics: the resolution of "alarm after N requests"


def degrade(data: bytes, shift: str, rng: np.random.Generator) -> bytes:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    if shift == "impulse":  # salt-and-pepper: 5% of pixels black or white
        a = np.asarray(im).copy()
        u = rng.random(a.shape[:2])
        a[u < 0.025], a[u > 0.975] = 0, 255
        im = Image.fromarray(a)
    elif shift == "blur":
        im = im.filter(ImageFilter.GaussianBlur(1.2))
    elif shift == "noise":
        a = np.asarray(im).astype(np.float32) + rng.normal(0, 25, (32, 32, 3))
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    elif shift == "contrast":
        a = np.asarray(im).astype(np.float32)
        im = Image.fromarray(np.clip((a - a.mean()) * 0.35 + a.mean(), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("auxnet_monitor") or s.name.startswith("auxnet_exit_policy_threshold"):
                key = (s.name, s.labels.get("exit", ""), s.labels.get("direction", ""))
                out[key] = out.get(key, 0.0) + s.value
    return out


def run(args, adapt: bool, phases, mflops) -> dict:
    extra = ["--monitor-fraction", str(args.monitor_fraction)] + (["--monitor-adapt"] if adapt else [])
    log_path = Path(tempfile.mkdtemp()) / "server.log"
    with open(log_path, "w") as log:
        proc, target, mport = start_server(args.repo, extra, stderr=log, quiet=True)
    served, timeline, walls = [], [], []  # served: (phase, requests done when answered, response, image index)
    try:
        done = 0
        for phase, (imgs, _fin, _lab, n) in enumerate(zip(*phases)):
            t0 = time.perf_counter()
            for start in range(0, n, CHUNK):
                idx = [(start + j) % len(imgs) for j in range(min(CHUNK, n - start))]
                res, _ = closed_loop(target, [imgs[i] for i in idx], args.concurrency, len(idx), calibrated_policy=True)
                done += len(idx)
                served += [(phase, done, r, idx[r.index]) for r in res if r.ok]
                m = scrape(mport)
                timeline.append({"requests": done, "alarm": [m.get(("auxnet_monitor_alarm", str(k), ""), 0) for k in range(4)],
                                 "threshold": [round(m.get(("auxnet_exit_policy_threshold", str(k), ""), 0), 4) for k in range(4)],
                                 "samples": sum(m.get(("auxnet_monitor_samples_total", str(k), ""), 0) for k in range(4))})
            walls.append(time.perf_counter() - t0)
        final_metrics = scrape(mport)
    finally:
        proc.terminate()
        proc.wait(30)
    shift_at = phases[3][0]
    alarm_done = next((t["requests"] for t in timeline if t["requests"] > shift_at and any(t["alarm"])), None)
    shift_end = shift_at + phases[3][1]
    clear_done = None if alarm_done is None else next(
        (t["requests"] for t in timeline if t["requests"] > max(shift_end, alarm_done) and not any(t["alarm"])), None)
    segments = [("clean", lambda ph, d: ph == 0),
                (f"{args.shift}, before the alarm", lambda ph, d: ph == 1 and (alarm_done is None or d <= alarm_done)),
                (f"{args.shift}, after the alarm", lambda ph, d: ph == 1 and alarm_done is not None and d > alarm_done),
                ("clean again", lambda ph, d: ph == 2)]
    rows = []
    for name, keep in segments:
        part = [(r, ph, i) for ph, d, r, i in served if keep(ph, d)]
        if not part:
            continue
        fin, lab = lambda ph, i: phases[1][ph][i], lambda ph, i: phases[2][ph][i]  # noqa: E731
        rows.append({"phase": name, "requests": len(part),
                     "agreement": float(np.mean([r.label == fin(ph, i) for r, ph, i in part])),
                     "accuracy": float(np.mean([r.label == lab(ph, i) for r, ph, i in part])),
                     "mean_mflops": float(np.mean([mflops[r.exit_index] for r, _, _ in part])),
                     "exit_histogram": (np.bincount([r.exit_index for r, _, _ in part], minlength=5) / len(part)).tolist()})
    alarms = [line.strip() for line in log_path.read_text().splitlines() if "agreement alarm:" in line]
    return {"rows": rows, "alarm_after": None if alarm_done is None else alarm_done - shift_at,
            "cleared_after": None if clear_done is None else clear_done - shift_end,
            "false_alarm_before_shift": any(any(t["alarm"]) for t in timeline if t["requests"] <= shift_at),
            "throughput_per_phase": [sum(1 for ph, *_ in served if ph == p) / w for p, w in enumerate(walls)],
            "end_thresholds": [t["threshold"] for t in timeline if t["requests"] in (shift_at, shift_end, timeline[-1]["requests"])],
            "alarm_log": alarms[:3], "timeline": timeline,
            "skipped": final_metrics.get(("auxnet_monitor_skipped_total", "", ""), 0)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repo", default=str(ROOT / "models" / "repository"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "test"))
    p.add_argument("--shift", choices=["impulse", "blur", "noise", "contrast"], default="impulse")
    p.add_argument("--requests", type=int, nargs=3, default=[3000, 20000, 10000])
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--monitor-fraction", type=float, default=0.05)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "drift.json"))
    args = p.parse_args()
    clean, names = load_test_images(args.data, 300)  # 3,000 test images: the clean phases use the first and last halves
    rng = np.random.default_rng(0)
    shifted = [degrade(b, args.shift, rng) for b in clean]
    proc, target, _ = start_server(args.repo, ["--monitor-fraction", "0"], quiet=True)
    try:
        with Client(target) as c:
            info = c.model_info()
            classes = list(info.classes)
            final_clean = [c.classify(b).label for b in clean]  # no early-exit rule: the final exit answers
            final_shift = [c.classify(b).label for b in shifted]
    finally:
        proc.terminate()
        proc.wait(30)
    labels = [classes.index(n) for n in names]
    mflops = [e.mflops for e in info.exits]
    order = np.random.default_rng(1).permutation(len(clean))
    a, b = order[: len(order) // 2], order[len(order) // 2:]
    pick = lambda seq, idx: [seq[i] for i in idx]  # noqa: E731
    phases = ([pick(clean, a), pick(shifted, order), pick(clean, b)],
              [pick(final_clean, a), pick(final_shift, order), pick(final_clean, b)],
              [pick(labels, a), pick(labels, order), pick(labels, b)], args.requests)
    results = {name: run(args, adapt, phases, mflops) for name, adapt in (("adaptation off", False), ("adaptation on", True))}
    print(f"machine: {platform.processor() or platform.machine()}; model {info.name}; shift {args.shift}; "
          f"monitor fraction {args.monitor_fraction}; {args.concurrency} concurrent clients; phases {args.requests} requests")
    print("| run | phase | requests | agreement with final exit | accuracy | mean MFLOPs | exit histogram |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, r in results.items():
        for row in r["rows"]:
            hist = " / ".join(f"{100 * h:.0f}%" for h in row["exit_histogram"])
            print(f"| {name} | {row['phase']} | {row['requests']} | {100 * row['agreement']:.1f}% | "
                  f"{100 * row['accuracy']:.1f}% | {row['mean_mflops']:.1f} | {hist} |")
    for name, r in results.items():
        print(f"{name}: alarm {r['alarm_after']} requests after the shift began, cleared {r['cleared_after']} requests "
              f"after it ended (resolution {CHUNK}); false alarm before the shift: {r['false_alarm_before_shift']}; "
              f"policy thresholds at shift start / shift end / run end: {r['end_thresholds']}; throughput per phase "
              f"{[round(t) for t in r['throughput_per_phase']]} req/s; samples skipped (no idle time): {r['skipped']:.0f}")
        for line in r["alarm_log"]:
            print(f"  log: {line}")
    with open(args.out, "w") as f:
        json.dump(results, f, separators=(",", ":"), default=float)  # raw timelines: compact


if __name__ == "__main__":
    main()
