"""Fetch a file from its official address and verify its MD5; a clear error when the network refuses."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path, md5: str, timeout_s: float = 30.0) -> Path:
    """Download `url` to `dest` (atomically) unless a file with the right checksum is already there."""
    if dest.exists():
        if md5sum(dest) == md5:
            return dest
        raise ValueError(f"{dest} exists but its MD5 is {md5sum(dest)}, expected {md5}: delete it or replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r, open(tmp, "wb") as f:
            while block := r.read(1 << 20):
                f.write(block)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"could not download {url} ({e}); this machine may have no network: "
            f"place the file at {dest} yourself and run again"
        ) from e
    got = md5sum(tmp)
    if got != md5:
        tmp.unlink()
        raise RuntimeError(f"download of {url} has MD5 {got}, expected {md5}: the file is corrupt or changed")
    os.replace(tmp, dest)
    return dest
