"""Mutated images through the server's decoder: whatever the bytes, it must answer pixels or InvalidInput. Any
other exception would reach a client as an internal error (and a crash in a C decoder would end the process).

    python -m bench.image_fuzz [--seconds 240] [--seed 0] [--out DIR]

Seeds: one CIFAR-10 test JPEG re-encoded in every accepted format (JPEG baseline and progressive, PNG, WebP,
GIF, BMP, TIFF plain, LZW and JPEG-compressed), at 32 x 32 and 100 x 80. Each try applies 1-8 random changes
(a byte set, a cut, bytes inserted, a span copied elsewhere) and decodes the result as a request would (probe,
then decode), at its own size and at the model's 32 x 32. Prints the counts and each failure's signature with
how often it came; with --out, the first bytes of each failure are kept there to reproduce it.
"""

from __future__ import annotations

import argparse
import collections
import io
import platform
import random
import time
from pathlib import Path

import numpy as np

SEED_ENCODINGS = [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("WEBP", {}), ("GIF", {}), ("BMP", {}),
                  ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}), ("TIFF", {"compression": "jpeg"})]


def encode(pixels: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **kw)
    return buf.getvalue()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1-8 changes: a byte set (60%), a cut (15%), 1-16 random bytes inserted (15%), a span of up to 64 bytes
    copied to another place (10%)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op, at = rng.random(), rng.randrange(max(1, len(out)))
        if op < 0.6 and out:
            out[at] = rng.randrange(256)
        elif op < 0.75:
            out = out[:at]
        elif op < 0.9:
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        else:
            out[at:at] = out[rng.randrange(max(1, len(out))):][:rng.randint(1, 64)]
    return bytes(out)


def decode_like_a_request(data: bytes, size) -> np.ndarray:
    from server.decode import ImageLimits, decode_encoded, probe

    opened, _ = probe(data)
    return decode_encoded(data, ImageLimits(), size=size, opened=opened)


def campaign(seeds: dict[str, bytes], seconds: float, seed: int, out: Path | None, log=print) -> dict:
    from server.errors import InvalidInput

    rng, names = random.Random(seed), sorted(seeds)
    counts, failures = collections.Counter(), collections.Counter()
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        name = rng.choice(names)
        data = mutate(seeds[name], rng)
        counts["images"] += 1
        for size in (None, (32, 32)):
            try:
                rgb = decode_like_a_request(data, size)
                if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or (size and rgb.shape[:2] != size):
                    raise AssertionError(f"decoded to {rgb.dtype} {rgb.shape}")
                counts["decoded"] += 1
            except InvalidInput:
                counts["refused"] += 1
            except Exception as e:  # noqa: BLE001 - what this looks for
                signature = f"{name}: {type(e).__name__}: {str(e)[:100]}"
                if failures[signature] == 0 and out is not None:
                    (out / f"failure{len(failures)}.bin").write_bytes(data)
                failures[signature] += 1
    report = {"images": counts["images"], "decodes": counts["decoded"] + counts["refused"] + sum(failures.values()),
              "decoded": counts["decoded"], "refused": counts["refused"], "failures": dict(failures),
              "seconds": round(time.monotonic() - start, 1)}
    log(f"{report['images']} mutated images, {report['decodes']} decodes in {report['seconds']} s: "
        f"{report['decoded']} decoded, {report['refused']} refused (InvalidInput), {sum(failures.values())} failures")
    for signature, n in failures.most_common():
        log(f"  {n} x {signature}")
    return report


def main() -> None:
    p = argparse.ArgumentParser("python -m bench.image_fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image", default="../shared/data/cifar10-jpeg/test/cat/0000.jpg", help="the picture the seeds encode")
    p.add_argument("--out", default=None, help="a folder for the bytes of each failure's first occurrence")
    args = p.parse_args()
    from PIL import Image

    import server.decode  # noqa: F401 - its warning filters, as the server has them

    pixels = np.asarray(Image.open(args.image).convert("RGB"))
    big = np.asarray(Image.fromarray(pixels).resize((100, 80)))
    seeds = {f"{fmt}{''.join(f'-{v}' for v in kw.values())}-{a.shape[1]}x{a.shape[0]}": encode(a, fmt, **kw)
             for fmt, kw in SEED_ENCODINGS for a in (pixels, big)}
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    print(f"{platform.processor() or platform.machine()}, {len(seeds)} seeds, seed {args.seed}, {args.seconds:g} s")
    campaign(seeds, args.seconds, args.seed, out)


if __name__ == "__main__":
    main()
