"""Triton's system shared memory extension: a client on the same host registers a POSIX shared memory object
(tritonclient.utils.shared_memory makes one) and then sends an input's bytes, or has an output's bytes written,
by naming a region of it instead of carrying them in the request (gRPC SystemSharedMemoryStatus / Register /
Unregister, HTTP /v2/systemsharedmemory/...; a tensor's parameters shared_memory_region, shared_memory_byte_size
and shared_memory_offset).

Off unless the server starts with --allow-client-shm, as Triton's --allow-client-shm: a registration maps, for
reading and writing, any shared memory object the server's user may open. So a key is a bare name under /dev/shm
(no path, no symbolic link, a regular file) and at most MAX_REGIONS regions are held. Under --workers /
--recycle-rss-mb a registration is shared: every worker maps the region before the call returns, and an
unregistration returns once none holds it (server/worker_sync.py). An input's bytes are copied out of the region
when the request is parsed, so unregistering a region (or the client rewriting it) never changes a request
already in the server. CUDA shared memory: not
offered (no GPU path here has been run).
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from dataclasses import dataclass

from server.errors import FailedPrecondition, InvalidInput, QueueFull

SHM_DIR = "/dev/shm"
KEY = re.compile(r"/?[A-Za-z0-9_.\-]{1,200}")  # a POSIX shm name: one leading slash at most, no other
MAX_REGIONS = 64
MAX_NAME = 128
PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    memory: mmap.mmap

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


class SharedMemoryRegistry:
    def __init__(self, allowed: bool, runtime_updates: bool = True, on_change=None):
        """`on_change(regions, bytes)`: told the count and total size after every change (the app's gauges: a
        client that registers and never unregisters shows there)."""
        self.allowed = allowed
        self.runtime_updates = runtime_updates
        self.regions: dict[str, Region] = {}
        self.on_change = on_change or (lambda regions, size: None)

    def _changed(self) -> None:
        self.on_change(len(self.regions), sum(r.byte_size for r in self.regions.values()))

    # --- the API ------------------------------------------------------------------------------------

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_allowed("register a region")
        if not name or len(name) > MAX_NAME:
            raise InvalidInput(f"a shared memory region needs a name of 1 to {MAX_NAME} characters; got {name[:MAX_NAME]!r}")
        if name in self.regions:
            raise InvalidInput(f"shared memory region {name!r} is registered already; unregister it first")
        if len(self.regions) >= MAX_REGIONS:
            raise QueueFull(f"{MAX_REGIONS} shared memory regions are registered, the most this server holds; "
                            "unregister one first")
        if not KEY.fullmatch(key or "") or key.strip("/") in (".", ".."):
            raise InvalidInput(f"shared memory key {key[:64]!r} is not a POSIX shared memory name (letters, digits, "
                               "'_', '.', '-', one leading '/' at most)")
        if byte_size <= 0:
            raise InvalidInput(f"shared memory region {name!r}: byte_size must be at least 1; got {byte_size}")
        memory = _map(key, name, offset, byte_size)
        self.regions[name] = Region(name, key, offset, byte_size, memory)
        self._changed()

    def unregister(self, name: str = "") -> None:
        """One region, or every one when `name` is empty (as Triton). Unregistering an unknown name is no error."""
        self._check_allowed("unregister a region")
        for region in [self.regions.pop(name, None)] if name else list(self.regions.values()):
            if region is not None:
                region.memory.close()
        if not name:
            self.regions.clear()
        self._changed()

    def status(self, name: str = "") -> list[dict]:
        if name:
            if name not in self.regions:
                raise InvalidInput(f"shared memory region {name[:MAX_NAME]!r} is not registered")
            return [self.regions[name].status()]
        return [r.status() for r in self.regions.values()]

    def close(self) -> None:
        for region in self.regions.values():
            region.memory.close()
        self.regions.clear()
        self._changed()

    # --- tensors --------------------------------------------------------------------------------------

    def read(self, tensor: str, parameters: dict) -> bytes | None:
        """An input's bytes from the region its parameters name (copied out), or None if they name none."""
        where = self._where(tensor, parameters)
        if where is None:
            return None
        region, offset, size = where
        start = region.offset + offset
        try:
            return bytes(region.memory[start:start + size])
        except ValueError as e:  # unregistered (closed) while this request was being parsed
            raise InvalidInput(f"input '{tensor}': shared memory region {region.name!r} went away: {e}") from None

    def target(self, tensor: str, parameters: dict) -> tuple[Region, int, int] | None:
        """Where an output's bytes go (region, offset in it, byte size), or None if its parameters name no region."""
        return self._where(tensor, parameters)

    def write(self, tensor: str, where: tuple[Region, int, int], data: bytes) -> None:
        region, offset, size = where
        if len(data) > size:
            raise InvalidInput(f"output '{tensor}' is {len(data)} bytes; shared_memory_byte_size {size} is too small")
        start = region.offset + offset
        if region.memory.closed:
            raise InvalidInput(f"output '{tensor}': shared memory region {region.name!r} was unregistered")
        region.memory[start:start + len(data)] = data

    def _where(self, tensor: str, parameters: dict) -> tuple[Region, int, int] | None:
        name = parameters.get("shared_memory_region")
        if name is None:
            if "shared_memory_byte_size" in parameters or "shared_memory_offset" in parameters:
                raise InvalidInput(f"'{tensor}' sets shared_memory_byte_size or _offset without shared_memory_region")
            return None
        self._check_allowed(f"use shared memory for '{tensor}'")
        size, offset = parameters.get("shared_memory_byte_size"), parameters.get("shared_memory_offset", 0)
        if not isinstance(name, str) or name not in self.regions:
            raise InvalidInput(f"'{tensor}': shared memory region {str(name)[:MAX_NAME]!r} is not registered")
        for what, value in (("shared_memory_byte_size", size), ("shared_memory_offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInput(f"'{tensor}': {what} must be a whole number >= 0; got {str(value)[:32]}")
        region = self.regions[name]
        if offset + size > region.byte_size:
            raise InvalidInput(f"'{tensor}': shared_memory_offset {offset} + byte_size {size} runs past region "
                               f"{name!r}'s {region.byte_size} bytes")
        return region, offset, size

    def _check_allowed(self, what: str) -> None:
        if not self.allowed:
            raise FailedPrecondition(f"cannot {what}: client shared memory is off; start the server with "
                                     "--allow-client-shm (same-host clients only)")
        if not self.runtime_updates:
            raise FailedPrecondition(f"cannot {what} in a server started with --reuse-port alone: a region registered "
                                     "with one process would be unknown to its siblings; run them under one supervisor "
                                     "(--workers)")


def _map(key: str, name: str, offset: int, byte_size: int) -> mmap.mmap:
    """Map the shared memory object `key` read-write; refuse anything but a regular file of enough bytes."""
    path = os.path.join(SHM_DIR, key.lstrip("/"))
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InvalidInput(f"shared memory region {name!r}: no shared memory object {key!r} (create it first)") from None
    except OSError as e:  # a symbolic link (ELOOP), no permission, not on this system
        raise InvalidInput(f"shared memory region {name!r}: cannot open shared memory object {key!r}: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"shared memory region {name!r}: {key!r} is not a shared memory object")
        if offset + byte_size > info.st_size:
            raise InvalidInput(f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} runs past "
                               f"object {key!r}'s {info.st_size} bytes")
        return mmap.mmap(fd, info.st_size)
    finally:
        os.close(fd)
