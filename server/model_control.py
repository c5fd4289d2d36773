"""Triton's model repository extension: which models the repository holds, and loading or unloading them while
the server runs (gRPC RepositoryIndex / RepositoryModelLoad / RepositoryModelUnload, HTTP POST
/v2/repository/index and /v2/repository/models/NAME/load|unload; tritonclient's get_model_repository_index,
load_model, unload_model).

`--model-control-mode`, Triton's names:
- poll (the default): the models are loaded at start (every one, or --model's); a new version published in a
  loaded model's place is loaded beside it and switched to (server/app.py's watch, every --poll-s). Without
  --model, as Triton's POLL, a model added to the repository is loaded, and one whose folder (or manifest) is
  gone for two polls in a row is unloaded as the API unloads it. Two polls, because a model folder is a symlink
  that a publish re-points: the swap is atomic, but a hand-made copy (rm, then cp) leaves a moment without it,
  and that moment must not take a model out of service.
- none: the same without the watch.
- explicit: at start only --model's models (none without it, every one with '*'), then the API: a load starts
  a model, or switches a loaded one to the version its folder now points to (beside the old one, which answers
  what it admitted, as a polled reload); an unload stops admitting the model's requests, answers the admitted
  ones (within --grace-s) and returns when it is done. Both are refused in the other modes
  (FAILED_PRECONDITION). Under --workers or --recycle-rss-mb every worker process holds the models and a request
  reaches one of them: a load or unload is shared (server/worker_sync.py) and returns once every worker has done
  it; a worker started later (a restart, a recycled worker) serves what the others serve.
The index answers in every mode: every model of the repository and every loaded one, its version and state.
Only names the repository holds can be loaded (a name is a folder name under it, never a path), unless the load
carries the model's files: Triton's override, server/model_upload.py (its manifest alone: the repository's files
with that manifest).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from server.errors import FailedPrecondition, InsufficientMemory, InvalidInput, NotServing, UnknownModel
from server.memory import release_freed_memory
from server.model_upload import check_allowed, check_override, is_override, new_root, remove, stage
from server.repository import RepositoryError, list_models

log = logging.getLogger("auxnet.server")
MODES = ("poll", "none", "explicit")
RELEASE_DELAY_S = 0.1  # after a refused load with files: by then its answer is sent and its request freed
READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"
NOT_LOADED = "not loaded"


class ModelControl:
    def __init__(self, app, mode: str):
        if mode not in MODES:
            raise ValueError(f"model control mode {mode!r}: choose among {', '.join(MODES)}")
        self.app = app
        self.mode = mode
        self.reasons: dict[str, str] = {}  # model -> why it is not loaded: a failed load, an unload
        self.busy: dict[str, str] = {}  # model -> LOADING or UNLOADING while that runs
        self._locks: dict[str, asyncio.Lock] = {}  # one load or unload of a model at a time
        self._gone: dict[str, int] = {}  # poll mode: loaded model -> polls in a row its folder was missing
        self._repository_missing = False  # poll mode: the repository could not be listed at the last poll (logged once)
        self._staging: Path | None = None  # this process's folder of models loaded from a request's files
        self._release_task: asyncio.Future | None = None  # memory releases after refused loads (below)
        self._release_wanted = False

    # --- the index ------------------------------------------------------------------------------------

    def index(self, repository: str = "", ready_only: bool = False) -> list[dict]:
        """Every model the repository holds and every loaded one, by name: {name, version, state, reason}."""
        self._check_repository(repository)
        engines = self.app.engines
        names = sorted(set(self._folders()) | set(engines))
        entries = []
        for name in names:
            engine = engines.get(name)
            serving = engine is not None and engine.accepting and not engine.stopped
            if serving:
                state, reason = READY, ("loading a new version" if self.busy.get(name) == LOADING else "")
            else:
                state = self.busy.get(name, UNAVAILABLE)
                reason = "" if state != UNAVAILABLE else self.reasons.get(name, NOT_LOADED)
            if ready_only and state != READY:
                continue
            entries.append({"name": name, "version": engine.info.version if engine is not None else "",
                            "state": state, "reason": reason})
        return entries

    # --- load and unload ------------------------------------------------------------------------------

    async def load(self, name: str, repository: str = "", parameters: dict | None = None) -> None:
        """Load the model, or switch it to the version its folder points to now, or to the files the request
        carries (server/model_upload.py). Returns once it serves; a version that fails to load is refused
        naming why (a loaded one keeps serving)."""
        self._allowed("load")
        self._check_repository(repository)
        parameters = parameters or {}
        override = any(map(is_override, parameters))
        try:
            await self._load_request(name, parameters, override)
        except BaseException:
            if override:
                self._release_memory_soon()
            raise

    def _release_memory_soon(self) -> None:
        """A refused load's files (megabytes in its request) are freed once its answer is sent, and glibc keeps
        the pages: refused loads, retried, took the server's resident memory from 383 to 722 MB over 33 refusals
        until the kernel killed it in a 700 MB cgroup (RESULTS §61). Return them to the system a moment later: one
        release at a time, and another after it while refusals keep coming."""
        self._release_wanted = True
        if self._release_task is not None:
            return

        async def release() -> None:
            try:
                while self._release_wanted:
                    self._release_wanted = False
                    await asyncio.sleep(RELEASE_DELAY_S)
                    await asyncio.get_running_loop().run_in_executor(None, release_freed_memory)
            finally:
                self._release_task = None

        self._release_task = asyncio.ensure_future(release())

    async def _load_request(self, name: str, parameters: dict, override: bool) -> None:
        _check_parameters("load", {k: v for k, v in parameters.items() if not is_override(k)}, {})
        if override:
            quota = self.app.cfg.upload_quota_bytes
            check_allowed(quota)
            manifest, files = check_override(name, parameters)
            repository_version = None if files else self._folders().get(name)
            folder = await asyncio.get_running_loop().run_in_executor(
                None, stage, self.staging_root(), name, manifest, files,
                None if repository_version is None else repository_version.resolve(), quota)
        else:
            folder = self._folder(name)
        sync, replaced = self.app.sync, []

        async def load_here_first() -> None:  # judged for every worker's copy: the others then load side by side
            replaced.append(await self._load(name, folder, 1 if sync is None else sync.live_workers()))

        def share(state: dict) -> None:  # after this worker's own load: the version it now serves
            engine = self.app.engines.get(name)
            if engine is None:
                raise NotServing(f"model {name!r} was unloaded while it loaded; load it again")
            _models_edit(self._serving(), name, str(engine.info.path))(state)

        async def load_and_tidy() -> None:  # run to its end even if the caller leaves: the files are tidied too
            try:
                if sync is None:
                    await load_here_first()
                else:  # here first: a version that fails to load is refused before the others try it
                    await sync.publish(share, f"model:{name}", f"load of model {name!r}", first=load_here_first)
            except BaseException:
                if override and not replaced:  # it never served: its staged files go
                    remove(folder, self.staging_root())
                raise
            if replaced and replaced[0] is not None and replaced[0] != folder.resolve():
                remove(replaced[0], self.staging_root())  # a version loaded from a request's files, now replaced

        await _to_the_end(load_and_tidy())

    def staging_root(self) -> Path:
        """Where the files of loads with an override are written: the --workers supervisor's shared folder, else
        a folder of this process's own, made at the first such load and removed by close()."""
        if self.app.sync is not None:
            return self.app.sync.folder / "loaded-models"
        if self._staging is None:
            self._staging = new_root()
        return self._staging

    def close(self) -> None:
        """At shutdown: this process's staged model files go (a supervisor removes its shared folder itself)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    async def load_here(self, name: str, version: Path) -> None:
        """This process only: load `version` (a version folder) as model `name` (server/worker_sync.py)."""
        await _to_the_end(self._load(name, version))

    async def _load(self, name: str, folder: Path, copies: int = 1) -> Path | None:
        """Load `folder` as model `name` here; returns the version folder it replaced (None: none, or it was
        loaded already). `copies`: how many processes will load it, for the memory check."""
        async with self._lock(name):
            old = self.app.engines.get(name)
            try:
                current = folder.resolve(strict=True)
            except OSError as e:
                raise UnknownModel(f"model {name!r} cannot be read from the repository: {e}") from None
            if old is not None and old.info.path == current and old.accepting and not old.stopped:
                log.info("load %s: version %s is loaded already", name, old.info.version)
                return None
            self.busy[name] = LOADING
            try:
                new = await asyncio.get_running_loop().run_in_executor(None, self.app.load_engine_while_serving, folder, name,
                                                                       copies)
            except Exception as e:  # noqa: BLE001 - any failure refuses this version; nothing else changes
                why = str(e) if isinstance(e, (RepositoryError, InsufficientMemory)) else f"{type(e).__name__}: {e}"
                self.app.metrics.model_control.labels(name, "load", "refused").inc()
                if old is None:
                    self.reasons[name] = f"load failed: {why}"
                kept = f"; still serving version {old.info.version}" if old is not None else ""
                log.error("load %s refused: %s%s", name, why, kept)
                if isinstance(e, InsufficientMemory):  # refused before anything loaded: RESOURCE_EXHAUSTED, as it is
                    raise InsufficientMemory(f"{why}{kept}") from None
                raise InvalidInput(f"model {name!r} failed to load: {why}{kept}") from None
            finally:
                self.busy.pop(name, None)
            if self.app.draining:  # shutdown began while it loaded: never start serving then
                raise NotServing("server is shutting down; the model was not started")
            self.reasons.pop(name, None)
            self.app.switch_to(name, new)
            self.app.metrics.model_control.labels(name, "load", "ok").inc()
            return None if old is None else old.info.path

    async def unload(self, name: str, repository: str = "", parameters: dict | None = None) -> None:
        """Stop the model: new requests for it are refused at once (NOT_FOUND), admitted ones are answered
        within --grace-s (any left then are answered UNAVAILABLE); returns when it has stopped. A model the
        repository holds that is not loaded: nothing to do, as Triton."""
        self._allowed("unload")
        self._check_repository(repository)
        _check_parameters("unload", parameters or {}, {"unload_dependents": bool})  # no model here has dependents
        sync = self.app.sync
        if sync is None:
            remove(await _to_the_end(self._unload(name)), self.staging_root())
            return
        if name not in self.app.engines and name not in self._folders():
            await _to_the_end(self._unload(name))  # refused by name, as with one process
        serving = self.app.engines.get(name)
        # every worker, this one included, unloads it as it converges: their drains run side by side
        await _to_the_end(sync.publish(_models_edit(self._serving(), name, None), f"model:{name}",
                                       f"unload of model {name!r}"))
        remove(None if serving is None else serving.info.path, self.staging_root())  # files from a load's request

    async def unload_here(self, name: str) -> None:
        """This process only (server/worker_sync.py)."""
        await _to_the_end(self._unload(name))

    async def _unload(self, name: str) -> Path | None:
        """Unload model `name` here; returns the version folder it served from (None: it was not loaded)."""
        async with self._lock(name):
            engine = self.app.engines.get(name)
            if engine is None:
                if name not in self._folders():
                    raise UnknownModel(f"model {_shown(name)} is neither loaded nor in the repository; it holds "
                                       f"{sorted(self._folders())}")
                return None
            del self.app.engines[name]  # new lookups: not loaded
            self.busy[name] = UNLOADING
            engine.refusal = f"model {name!r} is being unloaded"  # requests that looked it up just before
            version, folder = engine.info.version, engine.info.path
            try:
                drained = await engine.drain(self.app.cfg.grace_s)
                await engine.stop()
            finally:
                self.busy.pop(name, None)
            del engine  # its sessions' memory goes back to the system (server/memory.py), once the callbacks
            await asyncio.sleep(0)  # that its stopped workers left on the loop (they hold it) have run
            await asyncio.get_running_loop().run_in_executor(None, release_freed_memory)
            self.reasons[name] = "unloaded" if drained else (
                f"unloaded; requests still in progress after {self.app.cfg.grace_s:g} s were answered UNAVAILABLE")
            self.app.metrics.model_control.labels(name, "unload", "ok").inc()
            log.info("model %s (%s) unloaded%s", name, version, "" if drained else " (grace period ran out)")
            return folder

    # --- poll mode's membership -------------------------------------------------------------------------

    async def poll_membership(self, refused: dict[str, Path]) -> None:
        """One poll of the repository's membership (server/app.py's watch): load what was added, unload what has
        been gone for two polls. `refused`: model -> the version path whose load already failed (not retried until
        the folder points elsewhere, so a broken model is logged once, not every poll)."""
        try:
            folders = {d.name: d for d in list_models(self.app.cfg.repo)}
        except (RepositoryError, OSError) as e:  # the repository itself is unreadable (a mount's hiccup, a move):
            if not self._repository_missing:  # judge no model by it, or one glitch would unload every model
                log.error("cannot list the model repository (%s): the loaded models keep serving", e)
            self._repository_missing = True
            return
        self._repository_missing = False
        for name in [n for n in self.app.engines if n not in folders]:
            self._gone[name] = self._gone.get(name, 0) + 1
            if self._gone[name] >= 2 and name not in self.busy:
                del self._gone[name]
                log.warning("model %s is gone from the repository (two polls): unloading it", name)
                await _to_the_end(self._unload(name))
        for name, folder in folders.items():
            self._gone.pop(name, None)
            if name in self.app.engines or name in self.busy:
                continue
            try:
                current = folder.resolve(strict=True)
            except OSError:
                continue
            if refused.get(name) == current:
                continue
            log.info("model %s was added to the repository: loading it", name)
            try:
                await _to_the_end(self._load(name, folder))
            except (InvalidInput, UnknownModel, NotServing):  # logged and counted by _load; the index says why
                refused[name] = current

    # --- checks ---------------------------------------------------------------------------------------

    def _allowed(self, action: str) -> None:
        if self.mode != "explicit":
            raise FailedPrecondition(f"model {action} needs --model-control-mode explicit; this server runs in mode "
                                     f"{self.mode!r}, where its models are fixed at start"
                                     + (" and new versions are polled" if self.mode == "poll" else ""))
        if self.app.cfg.reuse_port and self.app.sync is None:
            raise FailedPrecondition(f"model {action} is refused for a server started with --reuse-port alone: its "
                                     "sibling processes would not follow; run them under one supervisor (--workers)")

    def _serving(self) -> dict[str, str]:
        """Model -> the version folder it serves here: the shared set's start where nothing was shared yet."""
        return {n: str(e.info.path) for n, e in self.app.engines.items()}

    def _check_repository(self, repository: str) -> None:
        repo = self.app.cfg.repo
        if repository and repository not in (repo, Path(repo).name, str(Path(repo).resolve())):
            raise InvalidInput(f"repository {_shown(repository)} is not served here; this server serves one, {repo} "
                               "(leave repository_name empty)")

    def _folders(self) -> dict[str, Path]:
        try:
            return {d.name: d for d in list_models(self.app.cfg.repo)}
        except RepositoryError:  # the repository folder itself went away: the loaded models still serve
            return {}

    def _folder(self, name: str) -> Path:
        folders = self._folders()
        if name not in folders:
            raise UnknownModel(f"model {_shown(name)} is not in the repository {self.app.cfg.repo}; it holds "
                               f"{sorted(folders)}")
        return folders[name]

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())


def _models_edit(serving: dict[str, str], name: str, version: str | None):
    """The shared state's edit for a load (`version`) or an unload (None) of `name`."""
    def edit(state: dict) -> None:
        models = dict(serving) if state["models"] is None else state["models"]
        if version is None:
            models.pop(name, None)
        else:
            models[name] = version
        state["models"] = models
    return edit


async def _to_the_end(operation):
    """Run a load or unload to its end even if the caller leaves (a cancelled call, a client's deadline): half an
    unload would leave a model neither serving nor stopped. Its outcome is then only logged."""
    task = asyncio.ensure_future(operation)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no "never retrieved" warning
    return await asyncio.shield(task)


def _check_parameters(action: str, parameters: dict, accepted: dict[str, type]) -> None:
    """Refuse a parameter not accepted, by name (a load's 'config' and 'file:...' are server/model_upload.py's)."""
    for key, value in parameters.items():
        if key in accepted:
            if not isinstance(value, accepted[key]):
                raise InvalidInput(f"{action} parameter {key!r} must be a {accepted[key].__name__}; got {value!r:.40}")
            continue
        raise InvalidInput(f"unknown {action} parameter {_shown(key)}; accepted: {sorted(accepted) or 'none'}")


def _shown(name: str) -> str:
    return repr(name if len(name) <= 64 else name[:64] + "...")
