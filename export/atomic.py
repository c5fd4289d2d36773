"""Write a model version into a staging folder, then switch `<repo>/<name>` to it in one rename.

`<repo>/<name>` is a relative symlink to `.versions/<name>-<stamp>`; replacing a symlink with rename(2)
is atomic, so a server (or a crash) sees the old model or the new one, never a half-written one."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

VERSIONS = ".versions"


@contextmanager
def staged_model(repo: Path, name: str):
    """Yield an empty staging directory; on success publish it as the current version of `name`."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"model name {name!r} must be a non-empty folder name not starting with '.'")
    try:
        (repo / VERSIONS).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create model repository {repo}: {e.strerror}") from e
    if not os.access(repo, os.W_OK):
        raise OSError(f"model repository {repo} is not writable")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=repo / VERSIONS))
    staging.chmod(0o755)  # mkdtemp makes it private; a server may run as another user
    try:
        yield staging
        publish(repo, name, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish(repo: Path, name: str, staging: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    version = repo / VERSIONS / f"{name}-{stamp}"
    os.rename(staging, version)
    link = repo / name
    old = link.resolve() if link.is_symlink() else None
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a link made by python -m export; move it away first")
    tmp_link = repo / f".{name}.link-{stamp}"
    os.symlink(os.path.join(VERSIONS, version.name), tmp_link)
    os.replace(tmp_link, link)  # the atomic switch
    _fsync_dir(repo)
    if old is not None and old != version.resolve():
        shutil.rmtree(old, ignore_errors=True)  # a server holding it open keeps its file handles
    return version


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
