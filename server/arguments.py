"""argparse types shared by the commands (training.run, training.heads, export, server.client): a bad value is refused
by argparse, naming the option (exit 2). Here, not in training/, because the server's client needs them and the server
does not import the training code (a serving image has no torch).

Why each bound exists: a NaN or infinite learning rate, momentum, weight decay, loss-weight exponent, shortcut scale
or distillation temperature used to train to NaN weights without a word and write a checkpoint of them; batch size 0
was a ZeroDivisionError, epochs 0 a run that wrote nothing, a seed past 64 bits torch's "Overflow when unpacking long
long", and seed -1 torch's "expected non-negative integer", naming no option.
"""

from __future__ import annotations

import argparse
import math


def at_least(low: int, high: int | None = None):
    """An integer in [low, high] (high None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} must be <= {high}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def real_in(low: float, high: float, low_open: bool = False, high_open: bool = False):
    """A finite number in the interval low..high, each end closed unless said open."""
    span = f"{'(' if low_open else '['}{plain_number(low)}, {plain_number(high)}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"{text} must be a number in {span}")
        return value
    parse.__name__ = f"number in {span}"
    return parse


def plain_number(x: float) -> str:
    """A bound as people write it: 3600000, not 3.6e+06; 0.001 as it is."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def named(text: str) -> str:
    """A path that must name something ('' meant the working directory, or skipped what the option asked for)."""
    if not text:
        raise argparse.ArgumentTypeError("'' names no file or folder")
    return text


def layers(text: str) -> str:
    """--exits: comma-separated layer numbers, checked here and kept as typed (checkpoints record it so)."""
    try:
        [int(e) for e in text.split(",")]
        return text
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated layer numbers, e.g. 15,25,35,45,56") from None


UINT32_MAX = 2**32 - 1  # a protobuf uint32 field: a larger value was protobuf's ValueError traceback
SEED_MAX = 2**32 - 1  # numpy's and torch's generators both take it; every seed derived from it stays in 64 bits
