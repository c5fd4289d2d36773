"""Typed reads of a manifest's fields: each returns the value the server will use, or raises RepositoryError
naming the manifest, the field and what it holds. A manifest is data from disk (hand-edited, half-copied,
written by a newer export): a wrong type must be refused at load by name, not surface later as a TypeError
in a request (tests/server/test_manifest_fuzz.py tries every field the server reads with wrong values)."""

from __future__ import annotations

import math
from pathlib import Path


class RepositoryError(ValueError):
    """A model repository the server must refuse; the message names the file and the problem."""


class Fields:
    """Readers bound to one manifest file, so every refusal names it."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, expected: str, value) -> RepositoryError:
        return RepositoryError(f"{self.path}: {where} must be {expected}; got {_short(value)}")

    def obj(self, where: str, value) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, "an object", value)
        return value

    def text(self, where: str, value, allow_empty: bool = False) -> str:
        if not isinstance(value, str) or (not value and not allow_empty):
            raise self.fail(where, "a string" if allow_empty else "a non-empty string", value)
        return value

    def number(self, where: str, value, low: float | None = None, high: float | None = None,
               positive: bool = False) -> float:
        """A finite number (JSON reads NaN and Infinity too), within [low, high], > 0 if `positive`."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (low is None or value >= low) and (high is None or value <= high) and (not positive or value > 0)
        if not ok:
            bounds = " > 0" if positive else "".join(
                f" {op} {b:g}" for op, b in ((">=", low), ("<=", high)) if b is not None)
            raise self.fail(where, f"a finite number{bounds}", value)
        return float(value)

    def integer(self, where: str, value, low: int | None = None) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low):
            raise self.fail(where, "an integer" + (f" >= {low}" if low is not None else ""), value)
        return value

    def shape(self, where: str, value, rank: int | None = None) -> tuple[int, ...]:
        """A tensor shape without the batch dimension: positive integers."""
        if not (isinstance(value, list) and value and (rank is None or len(value) == rank)
                and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)):
            raise self.fail(where, f"a list of {rank or 'one or more'} positive integers", value)
        return tuple(value)

    def numbers(self, where: str, value, length: int | None = None, **bounds) -> list[float]:
        if not isinstance(value, list) or (length is not None and len(value) != length):
            raise self.fail(where, "a list of " + (f"{length} " if length is not None else "") + "numbers", value)
        return [self.number(f"{where}[{i}]", v, **bounds) for i, v in enumerate(value)]

    def file_in(self, where: str, value, folder: Path) -> Path:
        """A file name the manifest gives for its own folder: never a path out of it."""
        name = self.text(where, value)
        target = (folder / name).resolve()
        if not target.is_relative_to(folder.resolve()):
            raise self.fail(where, f"a file inside {folder}", value)
        return folder / name


def agreement_table(f: Fields, where: str, table) -> None:
    """An exit's `agreement` table as the monitor reads it: increasing bin edges, one rate in [0, 1] per bin."""
    table = f.obj(where, table)
    edges = f.numbers(f"{where}.bin_edges", table.get("bin_edges"))
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise f.fail(f"{where}.bin_edges", "two or more increasing numbers", edges)
    f.numbers(f"{where}.agreement", table.get("agreement"), length=len(edges) - 1, low=0.0, high=1.0)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
