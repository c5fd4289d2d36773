"""Triton's load with an override: a model's files sent in the load request instead of read from the repository
(tritonclient's `load_model(name, config=..., files={"file:...": bytes})`; gRPC RepositoryModelLoad's
`bytes_param`s, HTTP's base64 strings), for servers that share no file system with whoever deploys the model.

What a model is here differs from Triton's, so the parameters map onto this server's model folder:
- `config`: the model's manifest.json (the JSON text that python -m export writes), where Triton takes its model
  configuration. Alone, it loads the repository's files of that model with this manifest: e.g. other policy
  thresholds, without exporting again.
- `file:NAME`: one file of the model folder (exit_0.onnx, ..., as the manifest names them; no version folder: a
  model here is one version). Files need `config` too, as in Triton. The manifest's checksums are checked when
  the model loads, so a file cut short or swapped is refused by name.
The files are written into a staging folder of their own (one per load, never the repository) and loaded from
there; it is removed when the version it holds is replaced or unloaded, or when the server stops. Under
--workers it lies in the supervisor's shared folder, so every worker (a restarted one too) loads the same files.
A request's size is bounded by --max-message-mb (gRPC and HTTP alike); what all staged models may take on disk by
--upload-quota-mb, and a load never leaves the staging file system with less than FREE_SPACE_FLOOR free (logs, traces
and the other programs on the host need it too): either is refused RESOURCE_EXHAUSTED (HTTP 507) naming the figures,
before a byte is written. The check and the writing hold a lock on the staging folder, so --workers processes
loading at once cannot both pass it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from server.errors import FailedPrecondition, InsufficientStorage, InvalidInput
from server.repository import MANIFEST

FILE_PREFIX = "file:"
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MODEL_NAME = FILE_NAME  # a new model's name: a folder name, never a path
MAX_FILES = 64
FREE_SPACE_FLOOR = 256 * 2**20  # bytes a load leaves free on the staging file system, whatever the quota
LOCK_FILE = ".staging.lock"
TRITON_CONFIG_KEYS = {"platform", "backend", "max_batch_size", "input", "output", "instance_group", "dynamic_batching"}


def is_override(key: str) -> bool:
    """Whether a load parameter is part of an override (the config or a file)."""
    return key == "config" or key.startswith(FILE_PREFIX)


def check_override(name: str, parameters: dict) -> tuple[dict, dict[str, bytes]]:
    """(manifest, files by name) of a load's override, every part checked before anything is written."""
    if not MODEL_NAME.fullmatch(name):
        raise InvalidInput(f"model name {_shown(name)} cannot be loaded from files: a name is 1-128 letters, digits, "
                           "'.', '_' or '-', starting with a letter or digit")
    files: dict[str, bytes] = {}
    for key, value in parameters.items():
        if not key.startswith(FILE_PREFIX):
            continue
        file = key[len(FILE_PREFIX):]
        if file == MANIFEST:
            raise InvalidInput(f"load parameter {_shown(key)}: the manifest goes in the 'config' parameter")
        if not FILE_NAME.fullmatch(file):
            raise InvalidInput(f"load parameter {_shown(key)}: a file is named by its name in the model folder (e.g. "
                               "'file:exit_0.onnx'): letters, digits, '.', '_' or '-', no folders (a model here has no "
                               "version folders)")
        files[file] = _file_bytes(key, value)
    if len(files) > MAX_FILES:
        raise InvalidInput(f"load: {len(files)} files in the request; at most {MAX_FILES}")
    if "config" not in parameters:
        raise InvalidInput("load: files need the 'config' parameter too (as Triton's): the model's manifest.json")
    return _manifest(parameters["config"]), files


def check_allowed(quota_bytes: int) -> None:
    """Refuse every override where the operator turned them off (--upload-quota-mb 0)."""
    if quota_bytes <= 0:
        raise FailedPrecondition("loads that carry a model's files or manifest are off on this server "
                                 "(--upload-quota-mb 0); load a model of the repository by name")


def stage(root: Path, name: str, manifest: dict, files: dict[str, bytes], repository_version: Path | None,
          quota_bytes: int) -> Path:
    """Write the model folder under `root` (blocking; call it off the event loop) and return it: the request's
    files, or where it sent none the repository version's files, with the manifest. Written under a temporary
    name and renamed into place, so a folder that exists is whole. Refused before anything is written where it
    would take the staged models past `quota_bytes` or the file system below FREE_SPACE_FLOOR."""
    if not files and repository_version is None:
        raise InvalidInput(f"load of model {_shown(name)} with only a 'config': the repository holds no model of that "
                           "name whose files it could use; send its files too ('file:exit_0.onnx', ...)")
    root.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=1)
    copied = [] if files else [f for f in repository_version.iterdir() if f.is_file() and f.name != MANIFEST]
    need = len(text.encode()) + sum(map(len, files.values())) + sum(f.stat().st_size for f in copied)
    with _locked(root):
        _check_room(root, name, need, quota_bytes)
        return _write(root, name, text, files, copied)


def _write(root: Path, name: str, text: str, files: dict[str, bytes], copied: list[Path]) -> Path:
    # The folder's name is the version the server reports (GetModelInfo, the index, metrics' version label), as a
    # repository's NAME-<export time>-... is: this one says it came with a request, and when
    final = root / f"{name}-request-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    partial = final.with_name(final.name + ".partial")
    try:
        partial.mkdir()
        for f in copied:
            shutil.copy2(f, partial / f.name)
        for file, data in files.items():
            (partial / file).write_bytes(data)
        (partial / MANIFEST).write_text(text)
        partial.rename(final)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # the floor's check raced another writer on that file system
            raise InsufficientStorage(f"load of model {_shown(name)}: the file system of {root} ran out of space while "
                                      f"its files were written ({e.strerror}); nothing was kept") from e
        raise InvalidInput(f"load of model {_shown(name)}: its files could not be written under {root}: {e}") from e
    return final


def staged_bytes(root: Path) -> int:
    """What the staged models (and any load being written) take under `root`, in bytes."""
    total = 0
    for folder, _, names in os.walk(root):
        for n in names:
            try:
                total += os.lstat(os.path.join(folder, n)).st_size
            except OSError:  # removed meanwhile (an unload's tidy-up)
                pass
    return total


def _check_room(root: Path, name: str, need: int, quota_bytes: int) -> None:
    held = staged_bytes(root)
    if held + need > quota_bytes:
        raise InsufficientStorage(
            f"load of model {_shown(name)}: its files ({_mb(need)}) would take the models loaded from requests' files "
            f"to {_mb(held + need)}, past this server's --upload-quota-mb ({_mb(quota_bytes)}; {_mb(held)} held now, a "
            "replaced version's until its successor serves); unload such a model (the repository index lists them, "
            "versions NAME-request-...) or raise the quota")
    free = shutil.disk_usage(root).free
    if free - need < FREE_SPACE_FLOOR:
        raise InsufficientStorage(
            f"load of model {_shown(name)}: its files ({_mb(need)}) would leave {_mb(max(free - need, 0))} free on the "
            f"file system of {root}, under the {_mb(FREE_SPACE_FLOOR)} a load always leaves; free space there")


class _locked:
    """An exclusive lock on the staging folder (flock: across --workers processes, released if one dies)."""

    def __init__(self, root: Path):
        self.path = root / LOCK_FILE

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MB"


def remove(folder: Path | None, root: Path | None) -> None:
    """Remove a staged folder once no version served from it is left; anything not under `root` (a repository
    version) is never touched."""
    if folder is None or root is None:
        return
    folder, root = Path(folder), Path(root)
    if folder.parent.resolve() == root.resolve():
        shutil.rmtree(folder, ignore_errors=True)


def new_root() -> Path:
    """One process's staging folder (a --workers supervisor's shared folder holds its workers' instead)."""
    return Path(tempfile.mkdtemp(prefix="auxnet-loaded-models-"))


def _file_bytes(key: str, value) -> bytes:
    if isinstance(value, bytes):  # gRPC's bytes_param
        return value
    if isinstance(value, str):  # HTTP: JSON carries the bytes as base64 (tritonclient.http does)
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidInput(f"load parameter {_shown(key)}: not valid base64 ({e})") from None
    raise InvalidInput(f"load parameter {_shown(key)} must be the file's bytes (gRPC bytes_param, HTTP a base64 "
                       f"string); got {type(value).__name__}")


def _manifest(config) -> dict:
    if isinstance(config, bytes):
        config = config.decode("utf-8", errors="replace")
    if not isinstance(config, str):
        raise InvalidInput(f"load parameter 'config' must be a string holding the model's manifest.json; got "
                           f"{type(config).__name__}")
    try:
        doc = json.loads(config)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"load parameter 'config' is not JSON ({e}); it must hold the model's manifest.json") from None
    if not isinstance(doc, dict):
        raise InvalidInput("load parameter 'config' must hold a JSON object: the model's manifest.json")
    if "schema_version" not in doc and TRITON_CONFIG_KEYS & set(doc):
        raise InvalidInput("load parameter 'config' looks like a Triton model configuration (it has "
                           f"{sorted(TRITON_CONFIG_KEYS & set(doc))}); here it is the model's manifest.json, which "
                           "python -m export writes")
    return doc


def _shown(text: str) -> str:
    return repr(text if len(text) <= 64 else text[:64] + "...")
