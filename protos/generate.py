"""Generate the Python stubs from protos/auxnet/v1/*.proto and protos/oip/*.proto (never edit the
generated files).

    python -m protos.generate [--out DIR]

Run from the project root. Tests regenerate into a temporary folder and fail on any difference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = sorted((ROOT / "protos" / "auxnet" / "v1").glob("*.proto")) + sorted((ROOT / "protos" / "oip").glob("*.proto"))


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    args += [str(p.relative_to(ROOT)) for p in PROTOS]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTOS}")
    return sorted(out.rglob("*_pb2*.py*"))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(ROOT))
    sys.exit(0 if generate(Path(p.parse_args().out)) else 1)
