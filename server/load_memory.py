"""Refuse a model load that would leave the server too little memory, before the kernel's OOM killer settles it.

A load while serving (Triton's repository API, an upload, a poll's new version: the old one serves on until the new
one is warm) adds the new version's ONNX Runtime sessions, ~50 MB resident for the 3.45 MB linear-head default model (RESULTS
§59). Past the memory the server may use, the kernel kills the process, and every request in flight with it: a
server that loads one model too many must refuse that load instead, naming the figures, and keep serving.

What the server may still use is the smallest of: the host's MemAvailable (/proc/meminfo), and for each memory
cgroup above the process with a limit (a container's, a Kubernetes pod's), that limit less the cgroup's working set
(usage less its inactive file cache, which the kernel reclaims before it kills: the figure Kubernetes evicts on).
cgroup v2 (`memory.max`, `memory.current`) and v1 (`memory.limit_in_bytes`, `memory.usage_in_bytes`) alike.
What a load needs is estimated from its files, as LOAD_BYTES_PER_MODEL_BYTE times their size plus a fixed part;
the load is refused when what is available less that would fall under the floor (--load-memory-floor-mb).
Start-up loads are not checked: a server that cannot hold its models should fail to start as it always did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from server.errors import InsufficientMemory

# Measured (RESULTS §59): six uploads of the linear-head default (3.45 MB of ONNX files each) added 49-52 MB resident
# each (14.5x), and traffic at batch 32 ~1 MB more. 16x with 8 MB of fixed cost covers that with a margin. What a
# session holds is mostly activation arenas, not weights: the hidden-layer default (8.0 MB of files) added 54-62 MB,
# so its estimate (136 MB) is 2.3x too high (refused early, never late); a model of large images would have arenas
# far beyond its weights, which this rule does not see.
LOAD_BYTES_PER_MODEL_BYTE = 16
LOAD_FIXED_BYTES = 8 * 2**20
MODEL_FILE_SUFFIXES = (".onnx", ".plan")
NO_LIMIT = 2**62  # cgroup v1 writes "unlimited" as a page-rounded 2^63 - 1


@dataclass(frozen=True)
class Available:
    bytes: int
    source: str  # where the figure was read, for the refusal's message


def available(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> Available | None:
    """The memory this process may still use (the smallest bound found), or None where nothing could be read."""
    found = []
    host = _meminfo_available(proc / "meminfo")
    if host is not None:
        found.append(Available(host, "the host's MemAvailable"))
    found += _cgroup_room(proc / "self" / "cgroup", cgroup_root)
    return min(found, key=lambda a: a.bytes) if found else None


def needed(folder: Path) -> int:
    """What loading the model folder is estimated to add to the server's resident memory, in bytes."""
    model_bytes = sum(f.stat().st_size for f in Path(folder).iterdir() if f.suffix in MODEL_FILE_SUFFIXES)
    return LOAD_BYTES_PER_MODEL_BYTE * model_bytes + LOAD_FIXED_BYTES


def check(name: str, folder: Path, floor_bytes: int | None, copies: int = 1) -> None:
    """Raise InsufficientMemory where loading `folder` as model `name` `copies` times (once in each --workers
    process, which load side by side after the first) would leave less than `floor_bytes` available (None: no
    check)."""
    if floor_bytes is None:
        return
    room = available()
    if room is None:
        return
    need = needed(folder) * copies
    if room.bytes - need < floor_bytes:
        each = f" ({copies} worker processes, a copy each)" if copies > 1 else ""
        raise InsufficientMemory(
            f"load of model {name!r} refused: it needs ~{_mb(need)} of memory{each} (estimated from its files), "
            f"{_mb(room.bytes)} is available ({room.source}), and a load leaves at least {_mb(floor_bytes)} "
            "(--load-memory-floor-mb); unload a model or give the server more memory")


def _meminfo_available(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room(self_cgroup: Path, root: Path) -> list[Available]:
    """Limit less working set of every limited memory cgroup from the process's own up to the mount's root."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return []
    rooms = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:  # cgroup v2 (the root cgroup has no memory.max: no limit there)
            if (root / path.strip("/") / "memory.max").exists() or (root / "memory.max").exists():
                rooms += _walk(root, path, "memory.max", "memory.current", "inactive_file", "cgroup v2")
        elif "memory" in controllers.split(","):
            rooms += _walk(root / "memory", path, "memory.limit_in_bytes", "memory.usage_in_bytes",
                           "total_inactive_file", "cgroup v1")
    return rooms


def _walk(mount: Path, path: str, limit_file: str, usage_file: str, inactive_key: str, kind: str) -> list[Available]:
    """The mount's view of the process's cgroup and every cgroup above it that the mount shows (inside a container
    with its own cgroup namespace the path is "/" and the mount's root is the container's own cgroup)."""
    rooms = []
    folder = mount / path.strip("/") if (mount / path.strip("/")).is_dir() else mount
    while True:
        room = _room(folder, limit_file, usage_file, inactive_key)
        if room is not None:
            rooms.append(Available(room, f"the memory limit of {kind} {folder} less its working set"))
        if folder == mount or mount not in folder.parents:
            return rooms
        folder = folder.parent


def _room(folder: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        text = (folder / limit_file).read_text().strip()
        if text == "max":
            return None
        limit = int(text)
        if limit >= NO_LIMIT:
            return None
        usage = int((folder / usage_file).read_text())
        inactive = 0
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
                break
    except (OSError, ValueError):
        return None
    return max(limit - (usage - inactive), 0)


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"
