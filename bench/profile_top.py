"""Summarise a py-spy profile (`py-spy record -f raw`: one line per distinct stack, `frame;frame;... count`)
as the functions with the most samples, on their own (self) and with what they call (inclusive).

    python -m bench.profile_top PROFILE.raw [--top 25]

Used by bench/gpu/serving_gpu.sh to show where a server process's time goes on the GPU machine without
bringing back the profile itself (the device tool returns few files).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def where(frame: str) -> str:
    """The code a frame belongs to: this project's file (server/engine.py), else the top-level package or module
    (onnxruntime, asyncio, grpc, numpy, threading), from py-spy's `function (path:line)`."""
    path = frame.rsplit("(", 1)[-1].rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    if parts[0] in ("server", "bench", "protos", "training", "export") and len(parts) > 1:
        return "/".join(parts[:2])
    return parts[0].removesuffix(".py") if path else frame


def by_code(lines) -> list[tuple[str, int]]:
    """Samples by where their innermost frame's code lives: what a process spends its time in, at a glance.
    (grpc.aio's handlers are Cython, which py-spy does not see: their time shows as asyncio's Handle._run.)"""
    own = Counter()
    for line in lines:
        line = line.rstrip()
        if line and " " in line:
            stack, count = line.rsplit(" ", 1)
            own[where(stack.split(";")[-1])] += int(count)
    return own.most_common()


def summarise(lines, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(total samples, top self, top inclusive); a frame counts once per stack however often it recurs."""
    own, inclusive, total = Counter(), Counter(), 0
    for line in lines:
        line = line.rstrip()
        if not line or " " not in line:
            continue
        stack, count = line.rsplit(" ", 1)
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return total, own.most_common(top), inclusive.most_common(top)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    lines = Path(args.profile).read_text().splitlines()
    total, own, inclusive = summarise(lines, args.top)
    print(f"{total} samples in {args.profile}")
    print("| self % by code | where |\n|---:|---|")
    for code, n in by_code(lines)[: args.top]:
        print(f"| {100 * n / max(total, 1):.1f} | {code} |")
    for title, rows in (("self", own), ("inclusive", inclusive)):
        print(f"| {title} % | function (file:line) |\n|---:|---|")
        for frame, n in rows:
            print(f"| {100 * n / max(total, 1):.1f} | {frame} |")


if __name__ == "__main__":
    main()
