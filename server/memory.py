"""Give memory back to the operating system after a model version is let go (an unload, a reload's retirement).

A model version's ONNX Runtime sessions hold tens of MB (weights, arenas sized by the batches calibration ran).
When they are freed, glibc's malloc keeps the pages for reuse inside the process, spread over per-thread arenas,
so a server that loads and unloads models holds far more resident memory than it uses, although nothing leaks
(RESULTS §41, 60 cycles of switch, unload, load of the default model: 270-550 MB, swinging, without this; 204-210
MB with it). `malloc_trim(0)` returns the free pages of every arena to the system. Triton's documentation meets
the same effect by advising tcmalloc or jemalloc; trimming after the rare moments that free a model needs no other
allocator. Elsewhere than glibc: nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger("auxnet.server")
_libc = None
_looked_up = False


def _malloc_trim():
    global _libc, _looked_up
    if not _looked_up:
        _looked_up = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = libc if hasattr(libc, "malloc_trim") else None
        except OSError:
            _libc = None
    return None if _libc is None else _libc.malloc_trim


def release_freed_memory() -> bool:
    """Collect unreachable objects (an engine is held in cycles through its tasks and futures: its sessions are
    freed only by the collector), then return free heap pages to the system. Blocking, tens of ms: call it in a
    thread, after the version's last reference is gone. True if the allocator could be asked."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
