"""Refuse a model load that would leave the server too little memory, before the kernel's OOM killer settles it.

A load while serving (Triton's repository API, an upload, a poll's new version: the old one serves on until the new
one is warm) adds the new version's ONNX Runtime sessions, ~50 MB resident for the 3.45 MB linear-head default model (RESULTS
§59). Past the memory the server may use, the kernel kills the process, and every request in flight with it: a
server that loads one model too many must refuse that load instead, naming the figures, and keep serving.

What the server may still use is the smallest of: the host's MemAvailable (/proc/meminfo), and for each memory
cgroup above the process with a limit (a container's, a Kubernetes pod's), that limit less the cgroup's working set
(usage less its inactive file cache, which the kernel reclaims before it kills: the figure Kubernetes evicts on).
cgroup v2 (`memory.max`, `memory.current`) and v1 (`memory.limit_in_bytes`, `memory.usage_in_bytes`) alike.
What a load needs is estimated from what export recorded per exit (export/memory.py): the session's weights, and
its activations per image, which the server multiplies by its batch cap (--max-batch; with --static-batches, every
bucket's). A model of large images holds far more activations than weights (ResNet-50 at 224 px: 1.4 GB a load at
cap 32 from 90 MB of weights), a small one the other way round, so a rule from file sizes alone is wrong both ways.
Manifests without the figures (exported before 2026-12-02, or written by hand) fall back to such a rule.
The load is refused when what is available less what it needs would fall under the floor (--load-memory-floor-mb).
Start-up loads are not refused: a server that cannot hold its models should fail to start as it always did; where
what they leave would refuse a reload, start-up warns (ServerApp._warn_if_no_room_to_reload).
On a GPU (--device cuda or tensorrt-ep, the TensorRT backend) the weights and activations go to device memory: the
host keeps each session and the model as read, and the device's share is checked against what is free on the GPU
(server/device_memory.py) and --device-memory-floor-mb. Those factors are the CPU's, not yet measured on a GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from server import device_memory
from server.errors import InsufficientMemory
from server.static_batches import buckets_up_to

# Measured (RESULTS §61, bench/load_memory_estimate.py: real loads, resident memory after each): with twice the
# weights counted, what a load added was 2.0-3.0x the activations per image that export's walk of the graph finds,
# times the batch cap, for the CIFAR network in float and int8 (caps 8-128, static buckets too) and a ResNet-50 at
# 224 px (caps 4-32). The factors below cover the largest with a margin: the estimates came out 1.3-2.1x the mean
# cost of a load measured, never under it.
WEIGHT_COPIES = 2
ACTIVATION_COPIES = 3.5
# --cpu-mem-arena false (RESULTS §63): a session frees each run's activations, so a load keeps ~2x its weights plus
# 0.2-0.6x the walk's activations times the cap (the allocator's high water; cap 8 once 1.5x): 1.0 covers the
# mean cost of every row measured, 1.3-5.9x. One run's activations per thread are needed whatever is loaded: the
# process's first load shows them (the floor must hold them for models of large images).
ACTIVATION_COPIES_NO_ARENA = 1.0
SESSION_FIXED_BYTES = 1 * 2**20
LOAD_FIXED_BYTES = 8 * 2**20
# Without export's figures: 16x the files' bytes plus the fixed part, measured on the linear-head default (RESULTS
# §59: 49-52 MB a load from 3.45 MB of files). Wrong both ways for other models (§61): 4.7x high for the ResNet-50
# at cap 4, under it past cap 32, and 0.23x of the int8 default's cost at cap 128.
LOAD_BYTES_PER_MODEL_BYTE = 16
# On a GPU, per session, beside its weights and activations: the CUDA provider's cuBLAS and cuDNN handles and
# cuBLAS's workspace (32 MiB a handle on Hopper). A guess until the GPU lease measures it (bench/gpu/serving_check.py).
DEVICE_SESSION_FIXED_BYTES = 48 * 2**20
MODEL_FILE_SUFFIXES = (".onnx", ".plan")
GPU_DEVICES = ("cuda", "tensorrt-ep")
NO_LIMIT = 2**62  # cgroup v1 writes "unlimited" as a page-rounded 2^63 - 1


@dataclass(frozen=True)
class Available:
    bytes: int
    source: str  # where the figure was read, for the refusal's message


def available(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> Available | None:
    """The memory this process may still use (the smallest bound found), or None where nothing could be read."""
    found = []
    host = meminfo(proc / "meminfo").get("MemAvailable")
    if host is not None:
        found.append(Available(host, "the host's MemAvailable"))
    found += _cgroup_room(proc / "self" / "cgroup", cgroup_root)
    return min(found, key=lambda a: a.bytes) if found else None


def manifest_memory(folder: Path) -> list[tuple[int, int]] | None:
    """Per exit, (weight bytes, activation bytes per image) as export recorded them (export/memory.py), or None
    where the manifest has no such figures (exported before they were, or written by hand)."""
    try:
        exits = json.loads((Path(folder) / "manifest.json").read_text())["exits"]
        parts = [(e["memory"]["weight_bytes"], e["memory"]["activation_bytes_per_image"]) for e in exits]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not parts or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**50 for p in parts for v in p):
        return None
    return parts


def needed(folder: Path, max_batch: int = 32, static_batches: bool = False, cpu_mem_arena: bool = True,
           gpu: bool = False) -> int:
    """What loading the model folder is estimated to add to the server's resident (host) memory, in bytes. `gpu`:
    its sessions run on a GPU, where the weights and activations are device memory (device_needed)."""
    parts = manifest_memory(folder)
    if parts is None:
        return _by_file_size(folder)
    if gpu:  # the session and the model's weights as read (freed or not once copied to the device: counted)
        return sum(SESSION_FIXED_BYTES + w for w, _ in parts) + LOAD_FIXED_BYTES
    held = ACTIVATION_COPIES if cpu_mem_arena else ACTIVATION_COPIES_NO_ARENA
    return _weights_and_activations(parts, _images(max_batch, static_batches), SESSION_FIXED_BYTES, held) + LOAD_FIXED_BYTES


def device_needed(folder: Path, max_batch: int = 32, static_batches: bool = False) -> int:
    """What loading the model folder is estimated to take of the GPU's memory, its sessions running there: as the
    CPU arena's estimate (twice the weights, 3.5x the activations at the batch cap; ONNX Runtime's CUDA provider
    keeps a BFC arena of its own per session) plus each session's CUDA handles. Unmeasured on a GPU."""
    parts = manifest_memory(folder)
    if parts is None:
        return _by_file_size(folder)
    return _weights_and_activations(parts, _images(max_batch, static_batches), DEVICE_SESSION_FIXED_BYTES,
                                    ACTIVATION_COPIES)


def _weights_and_activations(parts: list[tuple[int, int]], images: int, per_session: int, held: float) -> int:
    return int(sum(per_session + WEIGHT_COPIES * w + held * a * images for w, a in parts))


def _images(max_batch: int, static_batches: bool) -> int:
    return buckets_total(max_batch) if static_batches else max_batch


def _by_file_size(folder: Path) -> int:
    model_bytes = sum(f.stat().st_size for f in Path(folder).iterdir() if f.suffix in MODEL_FILE_SUFFIXES)
    return LOAD_BYTES_PER_MODEL_BYTE * model_bytes + LOAD_FIXED_BYTES


def on_gpu(device: str, backend: str = "onnxruntime") -> bool:
    """Whether the server's sessions run on a GPU: --device cuda or tensorrt-ep, or the native TensorRT backend.
    (--device auto picks per session; the app asks its loaded engines.)"""
    return device in GPU_DEVICES or backend == "tensorrt"


def buckets_total(max_batch: int) -> int:
    """Images in all of --static-batches' buckets together (1, 2, 4, ... up to the cap): each binds its own buffers
    (measured: 91 MB a load at cap 32 against 57 without static batches, RESULTS §61)."""
    return sum(buckets_up_to(max_batch))


def check(name: str, folder: Path, floor_bytes: int | None, copies: int = 1, max_batch: int = 32,
          static_batches: bool = False, cpu_mem_arena: bool = True, gpu: bool = False,
          device_floor_bytes: int | None = None) -> None:
    """Raise InsufficientMemory where loading `folder` as model `name` `copies` times (once in each --workers
    process, which load side by side after the first) would leave less than `floor_bytes` available (None: no
    check), its sessions serving batches of up to `max_batch`; with `gpu`, also where it would leave less than
    `device_floor_bytes` free on the GPU (None: not checked there)."""
    source = f"its export's figures at batch cap {max_batch}" if manifest_memory(folder) else "its files' sizes"
    if floor_bytes is not None:
        room = available()
        if room is not None:
            need = needed(folder, max_batch, static_batches, cpu_mem_arena, gpu) * copies
            _refuse_below(name, need, room, floor_bytes, copies, source, "memory", "--load-memory-floor-mb",
                          "give the server more memory")
    if gpu and device_floor_bytes is not None:
        free = device_memory.cuda_free()
        if free is not None:
            room = Available(free[0], f"free on CUDA device {device_memory.DEVICE} of {_mb(free[1])}")
            need = device_needed(folder, max_batch, static_batches) * copies
            _refuse_below(name, need, room, device_floor_bytes, copies, source, "GPU memory",
                          "--device-memory-floor-mb", "serve it from another GPU")


def _refuse_below(name: str, need: int, room: Available, floor: int, copies: int, source: str, what: str, flag: str,
                  remedy: str) -> None:
    if room.bytes - need >= floor:
        return
    each = f" ({copies} worker processes, a copy each)" if copies > 1 else ""
    raise InsufficientMemory(
        f"load of model {name!r} refused: it needs ~{_mb(need)} of {what}{each} (estimated from {source}), "
        f"{_mb(room.bytes)} is available ({room.source}), and a load leaves at least {_mb(floor)} ({flag}); "
        f"unload a model or {remedy}")


def meminfo(path: Path = Path("/proc/meminfo")) -> dict[str, int]:
    """/proc/meminfo's figures in bytes (empty where it cannot be read)."""
    values = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                values[key] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    except OSError:
        pass
    return values


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
