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
    total, own, inclusive = summarise(Path(args.profile).read_text().splitlines(), args.top)
    print(f"{total} samples in {args.profile}")
    for title, rows in (("self", own), ("inclusive", inclusive)):
        print(f"| {title} % | function (file:line) |\n|---:|---|")
        for frame, n in rows:
            print(f"| {100 * n / max(total, 1):.1f} | {frame} |")


if __name__ == "__main__":
    main()
