"""What one device call sends, against the 64 MiB the device tool takes (its README's Limits): the working tree
(tracked files present on disk and untracked files git does not ignore) plus the git-ignored paths named in
`carry`. Run it before a lease's first call, at no device time, to choose between one call and the runbook's
two-part route (bench/gpu/README.md):

    python -m bench.gpu.travel_size .gpudata/one
    python -m bench.gpu.travel_size .whl/parts/part-aa .whl/parts/SHA256
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

LIMIT_BYTES = 64 * 2**20


def tree_files(root: Path) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode()
    return [root / name for name in listed.split("\0") if name and (root / name).is_file()]


def carried_files(root: Path, carry: list[str]) -> list[Path]:
    files = []
    for name in carry:
        path = root / name
        if not path.exists():
            raise FileNotFoundError(f"carry path {name!r} does not exist under {root}")
        files.extend([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()))
    return files


def travel_bytes(root: Path, carry: list[str]) -> tuple[int, int]:
    """(the working tree's bytes, the carried paths' bytes); a file both tracked and carried counts once."""
    tree = set(tree_files(root))
    carried = set(carried_files(root, carry)) - tree
    return sum(p.stat().st_size for p in tree), sum(p.stat().st_size for p in carried)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("carry", nargs="*", help="the paths a call names in carry")
    p.add_argument("--root", default=".", help="the repository's root")
    args = p.parse_args(argv)
    try:
        tree, carried = travel_bytes(Path(args.root), args.carry)
    except FileNotFoundError as e:
        p.error(str(e))
    total = tree + carried
    print(f"tree {tree / 1e6:.2f} MB + carry {carried / 1e6:.2f} MB = {total / 1e6:.2f} MB of {LIMIT_BYTES / 1e6:.2f} MB: "
          + ("fits" if total <= LIMIT_BYTES else f"OVER by {(total - LIMIT_BYTES) / 1e6:.2f} MB: take the two-part route"))
    return 0 if total <= LIMIT_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
