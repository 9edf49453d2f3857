"""What is loaded: each model's versions and their state, labels and the default version, and the
choreography of loading, reloading without loss, and unloading.

What is on disk is ``layout``'s business; how one version is built is ``builder``'s. A model that
fails to load is kept as UNAVAILABLE with its reason; it never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, cast

from inferd.config import BatchingDefaults, ModelConfig, ModelSource
from inferd.errors import (
    AlreadyExists,
    ConfigError,
    InferdError,
    InvalidInput,
    ModelError,
    NotFound,
    ServableNotFound,
    Unavailable,
)
from inferd.modelconfig import apply_override
from inferd.repository.archives import with_archive_sequences
from inferd.repository.builder import BuiltVersion, S, Wrap, build_version
from inferd.repository.layout import (
    Fingerprint,
    ModelFolder,
    auto_completed,
    fingerprint,
    is_archive,
    is_valid_name,
    misnamed,
    read_config,
    read_initial_states,
    read_model_folder,
    scan,
    skipped_because,
    write_override_folder,
)
from inferd.runtimes.base import Runtime
from inferd.types import IndexEntry, ModelState, VersionStatus, version_key

log = logging.getLogger("inferd.repository")

DRAIN_SECONDS = 30.0  # the longest a retiring version waits for the requests it holds
UNLOAD_GRACE_S = 2.0  # what a runtime is given to stop its instances once draining ended
BUILDS_AT_ONCE = 4  # model versions built at once (Triton's --model-load-thread-count default): one slow
# or hanging build holds up no other model
INSTANCES_START_S = 600.0  # the longest an instance update waits for its new instances to run
CONFIG_FILES = ("config.pbtxt", "config.toml")
NO_WORKERS = "no workers: use the scale workers API to add workers"  # a version registered, not loaded


@dataclass(slots=True)
class VersionEntry(Generic[S]):
    version: str
    state: ModelState = ModelState.LOADING
    reason: str = ""
    runtime: S | None = None
    signatures: dict[str, S] = field(default_factory=dict)  # TensorFlow's other signatures
    default_signature: str = ""


@dataclass(slots=True)
class ModelEntry(Generic[S]):
    name: str
    config: ModelConfig = field(default_factory=ModelConfig)
    versions: dict[str, VersionEntry[S]] = field(default_factory=dict)
    reason: str = ""  # a problem with the model as a whole (e.g. its config.toml)
    source: str = ""  # where it came from: its folder, or the archive in the model store
    default_version: str | None = None  # set-default (TorchServe); None = the newest ready
    _newest: tuple[S, str] | None = None

    def newest_ready(self) -> tuple[S, str] | None:
        """The unversioned route's target (the default version if one is set and ready, else the
        newest ready); cached, refreshed whenever a version changes state."""
        if self._newest is None:
            ready = self.ready_versions()
            chosen = self.default_version if self.default_version in ready else (ready[-1] if ready else None)
            if chosen is not None:
                runtime = self.versions[chosen].runtime
                assert runtime is not None
                self._newest = (runtime, chosen)
        return self._newest

    def changed(self) -> None:
        self._newest = None

    def ready_versions(self) -> list[str]:
        ready = [v for v, e in self.versions.items() if e.state is ModelState.READY]
        return sorted(ready, key=version_key)

    def sorted_versions(self) -> list[VersionEntry[S]]:
        return [self.versions[v] for v in sorted(self.versions, key=version_key)]

    def problem(self) -> str:
        """Why the model (or its first failing version) is not served; "" when nothing is wrong."""
        reasons = [v.reason for v in self.versions.values() if v.reason]
        return self.reason or (reasons[0] if reasons else "")


def _bare(runtime: Runtime, config: ModelConfig, name: str, version: str) -> Runtime:
    return runtime


class ModelRegistry(Generic[S]):
    """Every model known to the server, by name. ``S`` is what a loaded version is served by (the
    composition root wraps each runtime in a scheduler)."""

    def __init__(self, root: Path | None, wrap: Wrap[S] | None = None, sources: tuple[ModelSource, ...] = (),
                 batching: BatchingDefaults | None = None, builds_at_once: int = BUILDS_AT_ONCE,
                 prefer_tflite: bool = False) -> None:
        self._root = root
        self._prefer_tflite = prefer_tflite  # TF Serving's --prefer_tflite_model
        self._wrap: Wrap[S] = wrap if wrap is not None else cast(Wrap[S], _bare)
        self._models: dict[str, ModelEntry[S]] = {}
        self._fingerprints: dict[str, Fingerprint] = {}
        self._unloaded: set[str] = set()  # unloaded through the API: the index says so
        self._along: set[str] = set()  # loaded only because an ensemble's load named them (unload_dependents)
        self._sources = {source.name: source for source in sources}
        self._batching = batching
        self._locks: dict[str, asyncio.Lock] = {}  # one change at a time per model name
        self._scratch: dict[str, Path] = {}  # a model loaded from override files: their temporary folder
        self._builds_at_once = builds_at_once
        self._builds: asyncio.Semaphore | None = None  # builds_at_once turns; made on the event loop
        self._building: set[asyncio.Future[BuiltVersion[S]]] = set()  # builds whose thread still runs
        self._polling: set[str] = set()  # models a poll is loading now: later polls leave them be
        self._misnamed: set[str] = set()  # folders skipped for their names, each logged once
        self._surveying = False  # a poll is reading the disk now

    def _lock(self, name: str) -> asyncio.Lock:
        """Loads, unloads and registrations of one model run one after another: six parallel
        loads are six reloads in a row, each retiring the one before, never six loose copies."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _folders(self) -> dict[str, ModelFolder]:
        """Every model folder: the repository's, then the models in folders of their own."""
        folders = {folder.name: folder for folder in scan(self._root)} if self._root is not None else {}
        for name in misnamed(self._root) if self._root is not None else []:
            if name not in self._misnamed:
                self._misnamed.add(name)
                log.warning("model repository %s: %s", self._root, skipped_because(name))
        for name, source in self._sources.items():
            folders[name] = read_model_folder(source.base_path, name)
        return folders

    def _folder(self, name: str) -> ModelFolder | None:
        if name in self._sources:
            return read_model_folder(self._sources[name].base_path, name)
        if self._root is None or not is_valid_name(name) or not (self._root / name).is_dir():
            return None
        return read_model_folder(self._root / name)

    def _configure(self, name: str, config: ModelConfig) -> ModelConfig:
        """config.toml, with what models.config says (it wins) and the server's batching defaults."""
        source = self._sources.get(name)
        if source is not None and source.version_policy is not None:
            config = replace(config, version_policy=source.version_policy)
        if source is not None and source.version_labels is not None:
            config = replace(config, version_labels=dict(source.version_labels))
        if self._batching is not None and config.dynamic_batching is None:
            group = replace(config.instance_group, count=self._batching.instances)
            config = replace(config, max_batch_size=self._batching.max_batch_size,
                             dynamic_batching=self._batching.dynamic_batching, instance_group=group)
        return config

    async def set_sources(self, sources: tuple[ModelSource, ...]) -> None:
        """A new models.config: models it no longer names unload, new or changed ones load."""
        old, self._sources = self._sources, {source.name: source for source in sources}
        for name in old:
            if name not in self._sources and (self._root is None or not (self._root / name).is_dir()):
                log.info("model %s left the model config: unloading", name)
                await self.unload_model(name, missing_ok=True)
        for name, source in self._sources.items():
            if old.get(name) != source or name not in self._models:
                log.info("model %s is new or changed in the model config: loading", name)
                await self.load_model(name)

    @property
    def models(self) -> dict[str, ModelEntry[S]]:
        return self._models

    def entry(self, name: str) -> ModelEntry[S]:
        entry = self._models.get(name)
        if entry is None:
            raise ServableNotFound(f"Request for unknown model: '{name}' is not found")
        return entry

    def index(self) -> list[VersionStatus]:
        """Every known version of every model, sorted; a model with no known version has one row
        with version ""."""
        rows = []
        for name in sorted(self._models):
            entry = self._models[name]
            if not entry.versions:
                state = ModelState.UNAVAILABLE if entry.reason else ModelState.LOADING
                rows.append(VersionStatus(name, "", state, entry.reason))
            rows.extend(VersionStatus(name, v.version, v.state, v.reason) for v in entry.sorted_versions())
        return rows

    def repository_index(self) -> list[IndexEntry]:
        """Every model of the repository, loaded or not, and every model served from elsewhere
        (archives): a loaded model's versions with their states; a model that is not loaded as
        its name alone, with UNAVAILABLE and "unloaded" once it has been unloaded."""
        rows: dict[str, list[IndexEntry]] = {}
        for row in self.index():
            rows.setdefault(row.name, []).append(IndexEntry(row.name, row.version, row.state.value, row.reason))
        if self._root is not None and self._root.is_dir():
            for folder in scan(self._root):
                if folder.name not in rows:
                    unloaded = folder.name in self._unloaded
                    rows[folder.name] = [IndexEntry(folder.name, "", ModelState.UNAVAILABLE.value if unloaded else "",
                                                    "unloaded" if unloaded else "")]
        return [row for name in sorted(rows) for row in rows[name]]

    async def load_all(self, only: tuple[str, ...] = ("*",)) -> None:
        """Load the repository's models: all of them, or the names in ``only`` ("*" = all)."""
        found = await asyncio.to_thread(self._folders)
        folders = [f for f in found.values() if "*" in only or f.name in only]
        steps = await asyncio.to_thread(lambda: {folder.name: _steps_of(folder) for folder in folders})
        if "*" not in only:  # a named ensemble brings the models of its steps along, as Triton's --load-model
            along = await asyncio.to_thread(_brought_along, found, steps)
            folders += along
            self._along.update(folder.name for folder in along)
        for folder in folders:  # known at once, so requests get 503 "loading", not 404
            self._models.setdefault(folder.name, ModelEntry(name=folder.name))
        for name in sorted(set(only) - {"*"} - set(found)):  # --load-model with a typo: said, as Triton fails it
            reason = f"failed to load '{name}': no model of that name in the repository"
            log.error("model %s unavailable: %s", name, reason)
            self._models[name] = ModelEntry(name=name, reason=reason)
        loads = {folder.name: asyncio.ensure_future(self._load_locked(folder))  # each ready when built
                 for folder in folders if not steps[folder.name]}
        # an ensemble loads once the models its steps name have (as Triton orders them), so its
        # checks against them run at load; ensembles load one after another, by name, so a cycle
        # of ensembles is refused the same way every time (an ensemble inside an ensemble that
        # loads later is checked per request)
        ensembles = sorted((folder for folder in folders if steps[folder.name]), key=lambda f: f.name)
        await asyncio.gather(*loads.values(), self._load_ensembles(ensembles, steps, loads))

    async def _load_ensembles(self, ensembles: list[ModelFolder], steps: dict[str, set[str]],
                              loads: dict[str, asyncio.Task[None]]) -> None:
        for folder in ensembles:
            await asyncio.gather(*(loads[n] for n in steps[folder.name] if n in loads),
                                 return_exceptions=True)  # their failures are their own
            await self._load_locked(folder)

    async def _load_locked(self, folder: ModelFolder) -> None:
        async with self._lock(folder.name):
            await self._load_folder(folder)

    async def load_model(self, name: str, override: str | None = None, files: dict[str, bytes] | None = None,
                         strict: bool = False, with_steps: bool = False) -> ModelEntry[S]:
        """Load a model, or reload it without loss: the new versions load and warm beside the old
        ones, then take the traffic; the old ones finish what they hold and unload. ``override``
        is a load's configuration (Triton's ModelConfig as JSON): the keys it sets replace the
        file's for this load; a malformed one is InvalidInput and nothing changes. ``files``
        (Triton's override files) are the model folder this load reads instead of the repository's:
        they are written to a temporary folder, removed when the model unloads or loads again.
        Returns the new load's entry: one with no ready version failed (and, in a reload, was
        not published). ``strict``: such a failure is InvalidInput instead, as Triton's load answers;
        judged before the lock is let go, so an unload queued behind a load that succeeded does not
        turn its answer into a failure. ``with_steps`` (an explicit load, as Triton's): the models an
        ensemble's steps name that are not loaded load first, along with it."""
        if with_steps and not files:
            await self._load_steps(name, override, frozenset({name}))
        async with self._lock(name):
            self._along.discard(name)  # asked for by name: no longer only along with an ensemble
            entry = await self._load_model(name, override, files or {})
            if strict and not entry.ready_versions():
                raise InvalidInput(f"failed to load '{name}': {entry.problem() or 'no version is ready'}")
            return entry

    async def _load_steps(self, name: str, override: str | None, seen: frozenset[str]) -> None:
        """Triton's explicit load of an ensemble polls the models its steps name (core's
        ModelRepositoryManager::PollModels): each that is not loaded loads now, its own steps first,
        marked as loaded along with the ensemble; their failures are their own."""
        folder = self._folder(name) if is_valid_name(name) else None
        if folder is None:
            return
        steps = await asyncio.to_thread(_steps_of, folder, override)
        for step in sorted(steps - seen):
            if step in self._models or not is_valid_name(step) or self._folder(step) is None:
                continue
            await self._load_steps(step, None, seen | {step})
            async with self._lock(step):
                if step not in self._models:  # not loaded by another client meanwhile
                    log.info("model %s loads along with ensemble %s", step, name)
                    self._along.add(step)
                    await self._load_model(step, None, {})

    async def _load_model(self, name: str, override: str | None, files: dict[str, bytes]) -> ModelEntry[S]:
        if not is_valid_name(name):
            raise InvalidInput(f"failed to load '{name}': {skipped_because(name)}")
        folder = self._folder(name)
        if folder is None and not files:
            raise NotFound(f"failed to load '{name}': no model of that name in the repository")
        config: ModelConfig | None = None
        if override is not None:
            try:
                config = await asyncio.to_thread(_overridden, folder, override, name)
            except ConfigError as exc:
                raise InvalidInput(exc.message) from None
        scratch: Path | None = None
        if files:
            try:
                folder = await asyncio.to_thread(write_override_folder, name, files)
            except OSError as exc:  # the file system refused (a name over NAME_MAX, a full disk): Triton's words
                raise InferdError(f"failed to load '{name}': failed to poll from model repository: cannot "
                                  f"write the override files ({exc.strerror})") from None
            scratch = folder.path.parent
        assert folder is not None
        self._unloaded.discard(name)
        old = self._models.get(name)
        serving = old is not None and bool(old.ready_versions())
        if old is not None and serving and scratch is None and await self._update_instances(old, folder, config):
            return old
        entry = await self._load_folder(folder, publish_early=not serving, config=config)
        if old is not None and old is not entry and serving:
            if not entry.ready_versions() and (scratch is not None or not await self._drop_removed(old, folder)):
                log.error("model %s: the new load has no ready version (%s); the old one keeps serving",
                          name, entry.problem())
                _remove(scratch)
                return entry  # not published: the caller sees the failure, the old versions serve
            self._models[name] = entry
            await self._retire(old)
        _remove(self._scratch.pop(name, None))
        if scratch is not None:
            self._scratch[name] = scratch
        return entry

    async def _update_instances(self, old: ModelEntry[S], folder: ModelFolder, config: ModelConfig | None) -> bool:
        """A load that changes only the instance count, the model's files and the other keys as
        they were: the loaded versions start or retire instances in place, as Triton's does, and the
        load returns once the new ones run and the retired ones stopped; a load that changes nothing
        keeps the model as loaded. False (nothing done) for any other change. A new instance that
        fails to start fails the load at once, with its reason, and the model serves on with the
        instances it had (Triton's UpdateInstanceGroup drops the new ones)."""
        found = await asyncio.to_thread(fingerprint, folder)
        if _without_configs(found) != _without_configs(self._fingerprints.get(old.name, ())):
            return False
        try:
            new = self._configure(old.name, await asyncio.to_thread(_completed_config, folder, config))
        except ConfigError:
            return False  # the full load says what is wrong
        was = old.config.instance_group
        count, had = new.instance_group.instances, was.instances  # KIND_GPU: count on each listed GPU
        runtimes = [slot.runtime for slot in old.versions.values() if slot.runtime is not None]
        kept = sorted(str(number) for number in new.version_policy.choose(list(folder.versions)))
        # GPU instances in the server's process are one runtime per device, not counted apart; processes are
        in_process_gpu = was.kind == "gpu" and not all(runtime.out_of_process for runtime in runtimes)
        if (in_process_gpu or replace(new.instance_group, count=was.count) != was
                or replace(new, instance_group=was) != old.config
                or kept != sorted(old.versions) or sorted(old.ready_versions()) != kept):
            return False
        if count == had:
            log.info("model %s: unchanged, kept as loaded", old.name)
            return True
        log.info("model %s: instance count %d -> %d, in place", old.name, had, count)
        for runtime in runtimes:
            await asyncio.to_thread(runtime.scale, count)
        failures = await asyncio.gather(*(_instances_settled(runtime, count) for runtime in runtimes))
        if any(failures):
            log.error("model %s: a new instance failed to start; back to %d instance(s)", old.name, had)
            for runtime in runtimes:
                await asyncio.to_thread(runtime.scale, had)
            await asyncio.gather(*(_instances_settled(runtime, had) for runtime in runtimes))
            raise InvalidInput(f"failed to load '{old.name}': a new instance failed to start: "
                               f"{next(failure for failure in failures if failure)}; the model serves on "
                               f"with its {had} instance(s)")
        old.config = new
        self._fingerprints[old.name] = found
        old.changed()
        return True

    async def _drop_removed(self, old: ModelEntry[S], folder: ModelFolder) -> bool:
        """A reload that failed: the old versions whose folders are gone unload all the same (a
        removed version is not served from memory); True when none is left."""
        on_disk = {str(number) for number in folder.versions}
        gone = [version for version in old.versions if version not in on_disk]
        if len(gone) == len(old.versions):
            return True
        for version in gone:
            log.info("model %s version %s left the repository: unloading", old.name, version)
            slot = old.versions.pop(version)
            old.changed()
            await self._retire_version(slot)
        return False

    async def poll(self) -> None:
        """One rescan (``--model-control poll``): new models load, removed ones unload, a changed
        config.toml or artifact reloads (without loss). Models load at once, each on its own; a
        model an earlier poll is still loading is left to it, so polls may overlap. The disk is
        read on a thread (a model folder of many files, or a link to a large tree, stalled every
        request for as long), by one poll at a time: a poll that finds the last one still reading
        is skipped."""
        if self._surveying:
            return
        self._surveying = True
        try:
            folders, prints = await asyncio.to_thread(self._survey)
        finally:
            self._surveying = False
        for name, entry in list(self._models.items()):
            if name not in folders and not is_archive(Path(entry.source)) and name not in self._polling:
                log.info("model %s left the repository: unloading", name)
                await self.unload_model(name, missing_ok=True)
        changed = [name for name in folders
                   if name not in self._polling and self._fingerprints.get(name) != prints[name]]
        await asyncio.gather(*(self._poll_load(name) for name in changed))

    def _survey(self) -> tuple[dict[str, ModelFolder], dict[str, Fingerprint]]:
        """Every model folder and its fingerprint (blocks: the poll runs it on a thread)."""
        folders = self._folders()
        return folders, {name: fingerprint(folder) for name, folder in folders.items()}

    async def _poll_load(self, name: str) -> None:
        log.info("model %s is new or changed: loading", name)
        self._polling.add(name)
        try:
            await self.load_model(name)
        except InferdError as exc:  # gone again since the scan, say: the next poll sees it
            log.error("model %s not loaded: %s", name, exc.message)
        finally:
            self._polling.discard(name)

    async def _retire(self, entry: ModelEntry[S], deadline: float | None = None) -> bool:
        """Drain, then unload, every version; False if some work was still running at ``deadline``."""
        finished = await asyncio.gather(*(self._retire_version(version, deadline)
                                          for version in entry.versions.values()))
        return all(finished)

    async def _retire_version(self, version: VersionEntry[S], deadline: float | None = None) -> bool:
        """Queued and running requests finish first (until ``deadline``, default DRAIN_SECONDS
        from now); then the runtime unloads, given at least UNLOAD_GRACE_S to stop its instances."""
        if version.runtime is None:
            return True
        deadline = deadline if deadline is not None else time.monotonic() + DRAIN_SECONDS
        version.state = ModelState.UNLOADING
        finished = True
        for runtime in (version.runtime, *version.signatures.values()):
            await runtime.drain(max(deadline - time.monotonic(), 0.0))
            try:
                await asyncio.wait_for(asyncio.to_thread(runtime.unload),
                                       max(deadline - time.monotonic(), UNLOAD_GRACE_S))
            except TimeoutError:
                log.warning("model version %s did not stop in time; left behind", version.version)
                finished = False
        version.runtime, version.signatures = None, {}
        return finished

    async def unload_model(self, name: str, missing_ok: bool = False, dependents: bool = False) -> list[str]:
        """Unload a model; with ``dependents`` (Triton's ``unload_dependents``) also the models its
        steps use that were loaded only along with an ensemble and that no loaded ensemble uses any
        more. Returns the names unloaded (the one asked first)."""
        async with self._lock(name):
            used = self._steps_served(name)
            await self._unload_model(name, missing_ok)
        return [name, *await self._unload_unused(used)] if dependents else [name]

    async def _unload_unused(self, names: set[str]) -> list[str]:
        """The cascade of Triton's unload_dependents (core's DependencyGraph::RemoveNodes): a model
        goes when it was not loaded by name and no loaded ensemble's step names it, then its own
        steps are judged the same way."""
        gone: list[str] = []
        for name in sorted(names):
            async with self._lock(name):
                if name not in self._along or name not in self._models or name in self._used_by_ensembles():
                    continue
                log.info("model %s was loaded along with an ensemble that unloaded: unloading", name)
                used = self._steps_served(name)
                await self._unload_model(name, missing_ok=True)
            gone += [name, *await self._unload_unused(used)]
        return gone

    def _steps_served(self, name: str) -> set[str]:
        """The models a loaded ensemble's steps name (none for another model, or one not loaded)."""
        entry = self._models.get(name)
        return {step.model_name for step in entry.config.ensemble} if entry is not None else set()

    def _used_by_ensembles(self) -> set[str]:
        return {step.model_name for entry in self._models.values() for step in entry.config.ensemble}

    async def _unload_model(self, name: str, missing_ok: bool = False) -> None:
        entry = self._models.pop(name, None)
        self._fingerprints.pop(name, None)
        self._along.discard(name)
        if entry is None:
            if missing_ok:
                return
            raise NotFound(f"model '{name}' is not loaded")
        self._unloaded.add(name)
        entry.changed()
        await self._retire(entry)
        _remove(self._scratch.pop(name, None))

    async def close(self, timeout: float = DRAIN_SECONDS) -> bool:
        """Retire every model at once within ``timeout`` (plus the unload grace); False if some
        work was left behind."""
        deadline = time.monotonic() + timeout
        entries = list(self._models.values())
        self._models.clear()
        self._fingerprints.clear()
        for entry in entries:
            entry.changed()
        finished = all(await asyncio.gather(*(self._retire(entry, deadline) for entry in entries)))
        for scratch in self._scratch.values():
            _remove(scratch)
        self._scratch.clear()
        if self._building:
            log.warning("%d model version(s) still loading at shutdown: abandoned", len(self._building))
        return finished and not self._building

    async def register_archive(self, name: str, archive: Path, config: ModelConfig, version: str,
                               load: bool = True) -> ModelEntry[S]:
        """Serve a model archive from outside the repository (TorchServe's model store). With
        ``load`` False the version is registered with no runtime (TorchServe's 0 workers) until
        ``start_version``. The first version registered is the model's default, as in TorchServe."""
        async with self._lock(name):
            return await self._register_archive(name, archive, config, version, load)

    async def _register_archive(self, name: str, archive: Path, config: ModelConfig, version: str,
                                load: bool) -> ModelEntry[S]:
        entry = self._models.get(name)
        if entry is not None and not is_archive(Path(entry.source)):
            raise AlreadyExists(f"model '{name}' is served from the model repository; register the archive "
                                "under another model_name")
        if entry is not None and version in entry.versions:
            raise AlreadyExists(f"Model version {version} is already registered for model {name}")
        if entry is None:
            entry = self._models[name] = ModelEntry(name=name, config=config, source=str(archive),
                                                    default_version=version)
        entry.versions[version] = VersionEntry(version=version)
        if load:
            await self._load_version(entry, version, archive, config)
        else:
            entry.versions[version].state, entry.versions[version].reason = ModelState.UNAVAILABLE, NO_WORKERS
        return entry

    async def start_version(self, name: str, version: str, path: Path, config: ModelConfig,
                            timeout: float | None = None) -> None:
        """Build a known version that has no runtime (TorchServe's scaling up from 0 workers);
        raises ModelError with the reason when it fails or does not load within ``timeout`` s."""
        async with self._lock(name):
            await self._start_version(name, version, path, config, timeout)

    async def _start_version(self, name: str, version: str, path: Path, config: ModelConfig,
                             timeout: float | None) -> None:
        entry = self.entry(name)
        slot = entry.versions[version]
        slot.state, slot.reason = ModelState.LOADING, ""
        if not await self._load_version(entry, version, path, config, timeout):
            raise ModelError(slot.reason)
        if entry.versions.get(version) is not slot or self._models.get(name) is not entry:
            await self._retire_slot(slot)  # unregistered while it loaded
            raise ModelError(f"model '{name}' version {version} was unregistered while its workers started")

    async def stop_version(self, name: str, version: str) -> None:
        """Unload a version's runtime but keep the version known (TorchServe's 0 workers)."""
        async with self._lock(name):
            await self._stop_version(name, version)

    async def _stop_version(self, name: str, version: str) -> None:
        entry = self.entry(name)
        slot = entry.versions[version]
        runtime, slot.runtime = slot.runtime, None
        slot.state, slot.reason = ModelState.UNAVAILABLE, NO_WORKERS
        entry.changed()
        if runtime is not None:
            await runtime.drain(DRAIN_SECONDS)
            await asyncio.to_thread(runtime.unload)

    async def _retire_slot(self, slot: VersionEntry[S]) -> None:
        for runtime in (slot.runtime, *slot.signatures.values()):
            if runtime is not None:
                await asyncio.to_thread(runtime.unload)
        slot.runtime, slot.signatures = None, {}

    async def unload_version(self, name: str, version: str) -> None:
        async with self._lock(name):
            await self._unload_version(name, version)

    async def _unload_version(self, name: str, version: str) -> None:
        entry = self._models.get(name)
        if entry is None or version not in entry.versions:
            raise NotFound(f"model '{name}' has no version '{version}'")
        if len(entry.versions) == 1:
            await self._unload_model(name)
            return
        slot = entry.versions.pop(version)
        if entry.default_version == version:
            entry.default_version = None
        entry.changed()
        await self._retire_version(slot)  # its queued requests finish before the pool shuts

    def set_default(self, name: str, version: str) -> None:
        entry = self._models.get(name)
        if entry is None or version not in entry.versions:
            raise NotFound(f"model '{name}' has no version '{version}'")
        entry.default_version = version
        entry.changed()

    async def _load_folder(self, folder: ModelFolder, publish_early: bool = True,
                           config: ModelConfig | None = None) -> ModelEntry[S]:
        entry: ModelEntry[S] = ModelEntry(name=folder.name, source=str(folder.path))
        self._fingerprints[folder.name] = await asyncio.to_thread(fingerprint, folder)
        if publish_early:
            self._models[folder.name] = entry
        try:
            await self._fill(entry, folder, config)
        except Exception as exc:  # unforeseen: the model is UNAVAILABLE, and a change to its folder retries
            log.exception("model %s: loading failed", folder.name)
            self._fail_model(entry, folder, _reason(exc))
        return entry

    async def _fill(self, entry: ModelEntry[S], folder: ModelFolder, config: ModelConfig | None) -> None:
        try:
            entry.config = self._configure(folder.name, await asyncio.to_thread(_completed_config, folder, config))
        except ConfigError as exc:
            self._fail_model(entry, folder, str(exc))
            return
        chosen = entry.config.version_policy.choose(list(folder.versions))
        if not chosen:
            self._fail_model(entry, folder, f"{folder.path}: no version folder (1/, 2/, ...) "
                             "that the version policy serves")
            return
        for number in chosen:
            entry.versions[str(number)] = VersionEntry(version=str(number))
        for number in chosen:
            await self._load_version(entry, str(number), folder.versions[number])

    def _fail_model(self, entry: ModelEntry[S], folder: ModelFolder, reason: str) -> None:
        entry.reason = reason
        log.error("model %s unavailable: %s", entry.name, reason)
        for number in folder.versions or {}:
            entry.versions[str(number)] = VersionEntry(str(number), ModelState.UNAVAILABLE, reason)

    async def _load_version(self, entry: ModelEntry[S], version: str, path: Path,
                            config: ModelConfig | None = None, timeout: float | None = None) -> bool:
        slot = entry.versions[version]
        if self._builds is None:
            self._builds = asyncio.Semaphore(self._builds_at_once)
        await self._builds.acquire()
        started = time.monotonic()
        build = asyncio.ensure_future(asyncio.to_thread(build_version, entry.name, version, path,
                                                        config or entry.config, self._wrap, self._prefer_tflite))
        self._building.add(build)
        build.add_done_callback(self._built)
        try:
            built: BuiltVersion[S] = await asyncio.wait_for(asyncio.shield(build), timeout)
        except TimeoutError:
            build.add_done_callback(_unload_when_built)
            slot.state, slot.reason = ModelState.UNAVAILABLE, (
                f"model '{entry.name}' version {version} did not load within its startup timeout of {timeout:g} s")
            log.error("%s", slot.reason)
            return False
        except asyncio.CancelledError:  # (a scan stopped at shutdown) it never serves, nor runs unserved
            build.add_done_callback(_unload_when_built)
            slot.state, slot.reason = ModelState.UNAVAILABLE, f"loading version {version} was stopped"
            raise
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # a broken model never stops the others
            slot.state, slot.reason = ModelState.UNAVAILABLE, _reason(exc)
            log.error("model %s version %s unavailable after %.2f s: %s", entry.name, version,
                      time.monotonic() - started, slot.reason)
            return False
        slot.runtime, slot.state, slot.reason = built.served, ModelState.READY, ""
        slot.signatures, slot.default_signature = built.signatures, built.default_signature
        entry.changed()
        log.info("model %s version %s ready in %.2f s (%s)", entry.name, version, time.monotonic() - started,
                 built.served.describe())
        return True

    def _built(self, build: asyncio.Future[BuiltVersion[S]]) -> None:
        """A build's thread finished (perhaps long after its caller gave up): its turn is free."""
        self._building.discard(build)
        assert self._builds is not None
        self._builds.release()

    def served(self, name: str) -> list[S]:
        """Every loaded version's scheduler (default signature) of a model, for scaling."""
        return [e.runtime for e in self.entry(name).versions.values() if e.runtime is not None]

    def get(self, name: str, version: str | None) -> tuple[S, str]:
        """What serves ``name`` at ``version`` (None: the default or newest ready version)."""
        entry = self.entry(name)
        if version is None:
            newest = entry.newest_ready()
            if newest is None:
                raise Unavailable(f"model '{name}' has no ready version: "
                                  f"{entry.problem() or 'loading'}")
            return newest
        slot = entry.versions.get(version)
        if slot is None:
            raise ServableNotFound(f"unknown version '{version}' of model '{name}' (served versions: "
                           f"{', '.join(sorted(entry.versions, key=version_key)) or 'none'})")
        if slot.state is not ModelState.READY or slot.runtime is None:
            raise Unavailable(f"model '{name}' version {version} is not ready: "
                              f"{slot.reason or slot.state.value}")
        return slot.runtime, version

    def get_signature(self, name: str, version: str | None, signature: str) -> tuple[S, str]:
        """A named signature of a TensorFlow model (the default one is what ``get`` gives)."""
        runtime, resolved = self.get(name, version)
        slot = self._models[name].versions[resolved]
        if signature in ("", slot.default_signature):
            return runtime, resolved
        if signature not in slot.signatures:
            available = sorted([slot.default_signature, *slot.signatures]) if slot.default_signature else []
            has = f"it has {', '.join(available)}" if available else "only TensorFlow models have signatures"
            raise NotFound(f"model '{name}' has no signature '{signature}'; {has}")
        return slot.signatures[signature], resolved

    def signatures(self, name: str, version: str | None) -> dict[str, S]:
        """Every signature of a version by name (non-TensorFlow models: one, named serving_default)."""
        runtime, resolved = self.get(name, version)
        slot = self._models[name].versions[resolved]
        return {slot.default_signature or "serving_default": runtime, **slot.signatures}

    def resolve_label(self, name: str, label: str) -> str:
        """The version a label names (labels are TF Serving's: an unknown one is a bad argument there)."""
        entry = self.entry(name)
        if label not in entry.config.version_labels:
            known = ", ".join(sorted(entry.config.version_labels)) or "none ([version_labels] in config.toml)"
            raise InvalidInput(f"Unrecognized servable version label: {label} (model '{name}' has labels: {known})")
        return str(entry.config.version_labels[label])


def _completed_config(folder: ModelFolder, config: ModelConfig | None) -> ModelConfig:
    """The folder's configuration (or a load's), completed. On a thread: a config.pbtxt of megabytes
    takes seconds to parse, and a Python model's auto_complete_config runs in a process of its own."""
    completed = auto_completed(folder, config if config is not None else read_config(folder))
    if folder.versions:  # a model.mar's model-config.yaml may ask for sequence batching
        completed = with_archive_sequences(completed, folder.versions[max(folder.versions)])
    return read_initial_states(completed, folder.path)


def _without_configs(found: Fingerprint) -> Fingerprint:
    """A fingerprint without the model's configuration files and Python's byte-code caches (a Python
    model's import writes them): what an instance update leaves as it was."""
    return tuple(entry for entry in found if entry[0] not in CONFIG_FILES and "__pycache__" not in entry[0])


async def _instances_settled(runtime: Runtime, count: int, timeout_s: float = INSTANCES_START_S) -> str:
    """Wait (at most ``timeout_s``) until a runtime that runs its own processes runs ``count``, each
    ready: the new ones started, those retired stopped (Triton's load returns then). Returns why a
    new instance failed to start, at once ("" when none failed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        workers = runtime.workers()
        if workers is None or (len(workers) == count and all(worker.ready for worker in workers)):
            return ""
        failure = runtime.start_failure()
        if failure:
            return failure
        await asyncio.sleep(0.05)
    return ""


def _remove(scratch: Path | None) -> None:
    """A temporary folder of override files, once nothing serves from it."""
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


def _unload_when_built(build: asyncio.Future[BuiltVersion[S]]) -> None:
    """A build that finished after its caller gave up on it: unload what it built."""
    if build.cancelled() or build.exception() is not None:
        return
    built = build.result()
    for runtime in (built.served, *built.signatures.values()):
        threading.Thread(target=runtime.unload, name="inferd-unload-late", daemon=True).start()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, InferdError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def _overridden(folder: ModelFolder | None, override: str, name: str) -> ModelConfig:
    """The folder's configuration with a load's override applied (blocks: parsing both)."""
    return apply_override(read_config(folder) if folder is not None else ModelConfig(), override, name)


def _steps_of(folder: ModelFolder, override: str | None = None) -> set[str]:
    """The models an ensemble's steps name (none for any other model, or a config that does not
    read: its own load says why); with a load's ``override``, as that load will read it."""
    try:
        config = _overridden(folder, override, folder.name) if override is not None else read_config(folder)
    except InferdError:
        return set()
    return {step.model_name for step in config.ensemble} if config.backend == "ensemble" else set()


def _brought_along(found: dict[str, ModelFolder], steps: dict[str, set[str]]) -> list[ModelFolder]:
    """The folders of the models that ``steps`` name (and theirs, and so on) that are not among
    its keys yet; ``steps`` gains their own. Blocks: reads their configurations."""
    along: list[ModelFolder] = []
    wanted = sorted({name for names in steps.values() for name in names})
    while wanted:
        name = wanted.pop()
        if name in steps or name not in found:
            continue
        along.append(found[name])
        steps[name] = _steps_of(found[name])
        wanted.extend(steps[name])
    return along
