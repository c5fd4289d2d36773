"""Pack an image-folder tree into one blob + index, so it can travel to a GPU machine (60,000 small
files as a tar would be 60% headers). `unpack` restores the identical tree.

    python -m bench.gpu.pack_jpeg_folder pack ROOT PACKED      ROOT's .jpg/.png files -> PACKED/blob.bin + index.json.xz
    python -m bench.gpu.pack_jpeg_folder unpack PACKED ROOT
"""

from __future__ import annotations

import argparse
import json
import lzma
from pathlib import Path


def pack(root: Path, out: Path) -> None:
    images = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in {".jpg", ".png"})
    if not images:  # rglob of a missing folder is empty too
        raise ValueError(f"{root}: no .jpg or .png files under it (is it the image-folder tree?)")
    out.mkdir(parents=True, exist_ok=True)
    index, offset = [], 0
    with open(out / "blob.bin", "wb") as blob:
        for f in images:
            data = f.read_bytes()
            blob.write(data)
            index.append([str(f.relative_to(root)), offset, len(data)])
            offset += len(data)
    # xz: the index is 2.4 MB of JSON, 0.28 MB compressed, and every MB counts against a device call's 64 MiB.
    (out / "index.json.xz").write_bytes(lzma.compress(json.dumps(index).encode(), preset=9))


def unpack(packed: Path, root: Path) -> None:
    """Write every indexed file under root; refuses, before writing any, an index that reaches past the blob
    (a part left out of the join) or outside root."""
    blob = (packed / "blob.bin").read_bytes()
    compressed = packed / "index.json.xz"
    text = lzma.decompress(compressed.read_bytes()) if compressed.exists() else (packed / "index.json").read_bytes()
    index = json.loads(text)  # [[relative path, offset, size], ...]; a malformed entry raises ValueError/TypeError
    end = max((offset + size for _, offset, size in index), default=0)
    if end > len(blob):
        raise ValueError(f"{packed / 'blob.bin'} holds {len(blob)} bytes, its index needs {end}: a part is missing")
    for rel, _, _ in index:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"index entry {rel!r} would be written outside {root}")
    for rel, offset, size in index:
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(blob[offset : offset + size])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.pack_jpeg_folder",
                                description="Pack an image-folder tree into one blob + index, or unpack it.")
    p.add_argument("action", choices=["pack", "unpack"])
    p.add_argument("source", type=Path, help="pack: the image-folder tree; unpack: the packed folder")
    p.add_argument("dest", type=Path, help="pack: the packed folder to write; unpack: the tree to write")
    args = p.parse_args(argv)
    try:
        (pack if args.action == "pack" else unpack)(args.source, args.dest)
    except (OSError, ValueError, TypeError, lzma.LZMAError) as e:  # a missing or damaged pack, a folder we cannot write
        raise SystemExit(f"{args.action}: {e}") from None


if __name__ == "__main__":
    main()
