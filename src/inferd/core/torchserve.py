"""TorchServe's model lifecycle, as its ModelManager runs it: an archive is registered first (0 or
more workers), its workers are scaled up, down and to zero (synchronously or not), and
unregistering removes an archive that was downloaded. The registry holds what is loaded; this
module holds what each registration asked for."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from inferd.config import ModelConfig, TorchServeSettings
from inferd.errors import AlreadyExists, Forbidden, InferdError, InvalidInput, ModelError, NotFound
from inferd.repository.archives import (
    LocatedArchive,
    archive_config,
    archive_info,
    download,
    locate_archive,
    remove_downloaded,
    sequence_batching,
)
from inferd.repository.layout import is_archive, is_valid_name
from inferd.repository.registry import ModelEntry, ModelRegistry
from inferd.scheduling.scheduler import Scheduler
from inferd.types import ModelState, SequenceSettings, WorkerSettings

log = logging.getLogger("inferd.torchserve")

RUNTIMES = ("python", "python3", "LSP")  # TorchServe's Manifest.RuntimeType
DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_DELAY = 1, 100
# TorchServe's WorkerThread: seconds before each new try of workers that failed to start, and how
# long after the first failure it keeps trying (model-config.yaml maxRetryTimeoutInSec)
BACK_OFF_S = (0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597)
DEFAULT_MAX_RETRY_TIMEOUT_S = 300


class Outcome(enum.Enum):
    DONE = "done"  # 200
    ACCEPTED = "accepted"  # 202: worker updates go on in the background
    PARTIAL = "partial"  # 206: scaled, but fewer workers run than asked for


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """``POST /models``'s parameters, parsed with TorchServe's tolerance (a number that does not
    parse counts as not given). Negative sentinels mean "not given", as TorchServe's own."""

    url: str | None
    model_name: str | None = None
    runtime: str | None = None
    handler: str | None = None
    batch_size: int = -DEFAULT_BATCH_SIZE
    max_batch_delay_ms: int = -DEFAULT_MAX_BATCH_DELAY
    initial_workers: int | None = None  # None: default_workers_per_model
    synchronous: bool = True
    response_timeout_s: int = -1
    startup_timeout_s: int = -1


@dataclass(slots=True)
class Registration:
    """One registered archive version and what was asked of its workers."""

    name: str
    version: str
    archive: Path
    url: str
    downloaded: bool
    config: ModelConfig
    settings: WorkerSettings
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    max_retry_s: float = DEFAULT_MAX_RETRY_TIMEOUT_S
    first_failure: float | None = None  # time.monotonic() of the failure its workers are retried after
    tries: int = 0  # failed starts since then (the back-off's index)
    retries: int = 0  # worker changes asked so far (requests and retries): a retry runs only if it is the last


class TorchServeModels:
    def __init__(self, registry: ModelRegistry[Scheduler], model_store: Path | None,
                 settings: TorchServeSettings | None = None) -> None:
        self._registry = registry
        self._store = model_store
        self._settings = settings or TorchServeSettings()
        self._registrations: dict[tuple[str, str], Registration] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._downloading: set[Path] = set()  # archives a registration is downloading into the store now

    # -- registering ------------------------------------------------------------------------
    async def register(self, request: RegisterRequest, loaded_at_startup: bool = False) -> tuple[Outcome, str]:
        if request.runtime is not None and request.runtime not in RUNTIMES:
            raise InvalidInput(f"Invalid RuntimeType value: {request.runtime} (one of {', '.join(RUNTIMES)})")
        located = locate_archive(self._store, request.url, self._settings.allowed_urls)
        return await self._register_located(located, lambda _archive: request, loaded_at_startup)

    async def register_at_start(self, url: str, name: str | None) -> tuple[Outcome, str]:
        """``--models``/``load_models``: an archive of the store, or a URL ``allowed_urls`` admits
        (downloaded into the store, as TorchServe does), with the start-up workers (or what
        config.properties' ``models`` says for it), loaded before the server is ready."""
        located = locate_archive(self._store, url, self._settings.allowed_urls)
        return await self._register_located(located, lambda archive: self._startup_request(archive, name, url), True)

    def _startup_request(self, archive: Path, name: str | None, url: str) -> RegisterRequest:
        per_model = self._settings.models.get(name or archive_info(archive).name, {})
        version_settings = next(iter(per_model.values()), {}) if per_model else {}
        return RegisterRequest(
            url=url, model_name=name, initial_workers=_int(version_settings.get("minWorkers"),
                                                           self._settings.startup_workers),
            batch_size=_int(version_settings.get("batchSize"), -DEFAULT_BATCH_SIZE),
            max_batch_delay_ms=_int(version_settings.get("maxBatchDelay"), -DEFAULT_MAX_BATCH_DELAY),
            response_timeout_s=_int(version_settings.get("responseTimeout"), -1),
            startup_timeout_s=_int(version_settings.get("startupTimeout"), -1))

    async def _register_located(self, located: LocatedArchive, request_for: Callable[[Path], RegisterRequest],
                                loaded_at_startup: bool) -> tuple[Outcome, str]:
        """Register the archive ``located`` names, downloading it into the store first when it is a
        URL; ``request_for`` is what is asked of it (it may read the archive)."""
        if not located.remote:
            return await self._register(request_for(located.path), located.path, False, loaded_at_startup)
        # one download into a store file at a time: a second registration of the same file name
        # finds it there, as TorchServe would once the first has it (two at once wrote one partial
        # file, and the one refused as a duplicate then removed the archive the other serves from)
        if located.path in self._downloading:
            raise InferdError(f"Model file already exists {located.path.name}")
        self._downloading.add(located.path)
        try:
            await asyncio.to_thread(download, located.remote, located.path)
            try:
                return await self._register(request_for(located.path), located.path, True, loaded_at_startup)
            except AlreadyExists:  # TorchServe's 409 comes after its download, which stays in the store
                raise
            except BaseException:  # nothing half-registered: the download goes too
                remove_downloaded(located.path)
                raise
        finally:
            self._downloading.discard(located.path)

    async def register_file(self, request: RegisterRequest, archive: Path) -> tuple[Outcome, str]:
        """An archive outside the model store that the server made itself (a workflow's function node)."""
        return await self._register(request, archive, False, False)

    async def _register(self, request: RegisterRequest, archive: Path, downloaded: bool,
                        loaded_at_startup: bool) -> tuple[Outcome, str]:
        info = archive_info(archive)
        _refuse_torchrun(info.yaml)
        name = request.model_name or info.name
        if not is_valid_name(name):
            raise InvalidInput(f"model name {name!r} is not valid: letters, digits, '_', '-', '.'")
        yaml_min, yaml_max = info.yaml_int("minWorkers") or 0, info.yaml_int("maxWorkers") or 0
        if not (yaml_min > 0 and yaml_max >= yaml_min):
            yaml_min = yaml_max = 0
        initial = self._settings.default_workers if request.initial_workers is None else request.initial_workers
        batch_size = _given(request.batch_size, -DEFAULT_BATCH_SIZE, info.yaml_int("batchSize"), DEFAULT_BATCH_SIZE)
        delay = _given(request.max_batch_delay_ms, -DEFAULT_MAX_BATCH_DELAY, info.yaml_int("maxBatchDelay"),
                       DEFAULT_MAX_BATCH_DELAY)
        response_timeout = _positive(info.yaml_int("responseTimeout"), request.response_timeout_s,
                                     self._settings.response_timeout_s)
        startup_timeout = _positive(info.yaml_int("startupTimeout"), request.startup_timeout_s,
                                    self._settings.startup_timeout_s)
        min_workers = yaml_min or max(initial, 0)
        max_workers = yaml_max or max(initial, 0)
        device = str(info.yaml.get("deviceType") or "cpu")
        config = archive_config(max(min_workers, 1), max(batch_size, 1), max(delay, 0),
                                request.handler or "", float(response_timeout), _gpus(device, info.yaml),
                                sequence_batching(info))
        settings = WorkerSettings(min_workers=0, max_workers=0, batch_size=max(batch_size, 1),
                                  max_batch_delay_ms=max(delay, 0), response_timeout_s=response_timeout,
                                  startup_timeout_s=startup_timeout, runtime=request.runtime or info.runtime,
                                  device_type=device, loaded_at_startup=loaded_at_startup, url=request.url or "",
                                  sequences=info.sequence_settings())
        await self._registry.register_archive(name, archive, config, info.version, load=False)
        registration = Registration(name, info.version, archive, request.url or archive.name, downloaded, config,
                                    settings, max_retry_s=info.yaml_int("maxRetryTimeoutInSec")
                                    or DEFAULT_MAX_RETRY_TIMEOUT_S)
        self._registrations[(name, info.version)] = registration
        if min_workers <= 0:
            return Outcome.DONE, (f'Model "{name}" Version: {info.version} registered with 0 initial workers. '
                                  "Use scale workers API to add workers for the model.")
        if max_workers < min_workers:
            raise InvalidInput("max_worker cannot be less than min_worker.")
        # a synchronous registration whose workers fail is undone; otherwise they are tried again
        work = self._start(registration, min_workers, max_workers, undo=request.synchronous)
        if not request.synchronous:
            return Outcome.ACCEPTED, "Processing worker updates..."
        await work
        return Outcome.DONE, f'Model "{name}" Version: {info.version} registered with {min_workers} initial workers'

    async def restore(self, name: str, state: dict[str, Any]) -> None:
        """One model version of a config snapshot (TorchServe's registerAndUpdateModel): its archive
        of the store with the workers, batching and timeouts it had; the default version again."""
        request = RegisterRequest(
            url=str(state["marName"]), model_name=name, runtime=_text(state.get("runtimeType")),
            batch_size=_int(state.get("batchSize"), -DEFAULT_BATCH_SIZE),
            max_batch_delay_ms=_int(state.get("maxBatchDelay"), -DEFAULT_MAX_BATCH_DELAY),
            initial_workers=max(_int(state.get("minWorkers"), 0), 0),
            response_timeout_s=_int(state.get("responseTimeout"), -1),
            startup_timeout_s=_int(state.get("startupTimeout"), -1))
        located = locate_archive(self._store, request.url, ())
        archive_version = archive_info(located.path).version
        await self._register(request, located.path, False, True)
        registration = self._registrations.get((name, archive_version))
        max_workers = _int(state.get("maxWorkers"), 0)
        if registration is not None and max_workers > registration.settings.max_workers:
            registration.settings = replace(registration.settings, max_workers=max_workers)
        if state.get("defaultVersion") is True:
            self._registry.set_default(name, archive_version)

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Each registered version as a config snapshot keeps it (TorchServe's Model.getModelState)."""
        models: dict[str, dict[str, dict[str, Any]]] = {}
        for (name, version), registration in sorted(self._registrations.items()):
            entry = self._registry.models.get(name)
            if entry is None or version not in entry.versions:
                continue
            settings = registration.settings
            models.setdefault(name, {})[version] = {
                "defaultVersion": version == _default_version(entry), "marName": registration.archive.name,
                "minWorkers": settings.min_workers, "maxWorkers": settings.max_workers,
                "batchSize": settings.batch_size, "maxBatchDelay": settings.max_batch_delay_ms,
                "responseTimeout": settings.response_timeout_s, "startupTimeout": settings.startup_timeout_s,
                "runtimeType": settings.runtime}
        return models

    # -- scaling ----------------------------------------------------------------------------
    async def scale(self, name: str, version: str | None, min_workers: int, max_workers: int,
                    synchronous: bool) -> tuple[Outcome, str]:
        """``PUT /models/{m}[/{v}]``: TorchServe's checks in its order, then the workers change."""
        if max_workers < min_workers:
            raise InvalidInput("max_worker cannot be less than min_worker.")
        entry = self._registry.models.get(name)
        if entry is None:
            raise NotFound(f"Model not found: {name}")
        chosen = version or _default_version(entry)
        if chosen not in entry.versions:
            raise NotFound(f"Model version: {version} does not exist for model: {name}")
        if min_workers < 0:  # TorchServe fails this inside its worker manager: a 500
            raise InferdError(f"min_worker must be 0 or more, got {min_workers}")
        registration = self._registrations.get((name, chosen)) or self._adopt(entry, chosen)
        work = self._start(registration, min_workers, max_workers, undo=False)
        if not synchronous:
            return Outcome.ACCEPTED, "Processing worker updates..."
        await work
        message = f"Workers scaled to {min_workers} for model: {name}"
        if version is not None:
            message += f", version: {version}"
        running = len(self.workers_of(name, chosen))
        if running < min_workers:
            return Outcome.PARTIAL, "Workers scaling in progress..."
        return Outcome.DONE, message

    def _start(self, registration: Registration, min_workers: int, max_workers: int, undo: bool,
               delay_s: float = 0.0) -> asyncio.Task[None]:
        """The worker change as a task: scaling requests for one version apply in the order they came;
        a retry (``delay_s``) runs only if no request or other retry came after it was scheduled."""
        registration.retries += 1
        apply = self._apply(registration, min_workers, max_workers, undo, delay_s, registration.retries)
        task = asyncio.ensure_future(apply)
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("worker update failed: %s", task.exception())

    async def _apply(self, registration: Registration, min_workers: int, max_workers: int, undo: bool,
                     delay_s: float, started_as: int) -> None:
        name, version = registration.name, registration.version
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        async with registration.lock:
            if delay_s > 0 and (registration.retries != started_as or
                                self._registrations.get((name, version)) is not registration):
                return  # a retry that a later request (or unregistering) stopped
            entry = self._registry.models.get(name)
            if entry is None or version not in entry.versions:
                return  # unregistered meanwhile
            slot = entry.versions[version]
            if delay_s == 0:  # asked anew: the back-off starts again
                registration.first_failure, registration.tries = None, 0
            registration.settings = replace(registration.settings, min_workers=min_workers, max_workers=max_workers)
            if min_workers == 0:
                await self._registry.stop_version(name, version)
                return
            if slot.runtime is not None:
                slot.runtime.resize(min_workers)
                await _started(slot.runtime, min_workers, registration.settings.startup_timeout_s)
                return
            group = replace(registration.config.instance_group, count=min_workers)
            registration.config = replace(registration.config, instance_group=group)
            try:
                await self._registry.start_version(name, version, registration.archive, registration.config,
                                                   float(registration.settings.startup_timeout_s))
            except ModelError as exc:
                if undo:  # a synchronous registration whose workers fail is undone, as TorchServe does
                    registration.settings = replace(registration.settings, min_workers=0, max_workers=0)
                    await self.unregister(name, version)
                else:
                    self._retry_later(registration, min_workers, max_workers)
                raise ModelError(f"Failed to start workers for model {name} version: {version}: "
                                 f"{exc.message}") from None
            registration.first_failure, registration.tries = None, 0
            registration.settings = replace(registration.settings, retrying=False)
            started = entry.versions[version].runtime
            if started is not None:
                await _started(started, min_workers, registration.settings.startup_timeout_s)

    def _retry_later(self, registration: Registration, min_workers: int, max_workers: int) -> None:
        """Workers that failed to start are tried again as TorchServe's WorkerThread retries them: after
        BACK_OFF_S, until ``maxRetryTimeoutInSec`` after the first failure; describe lists them meanwhile."""
        now = time.monotonic()
        if registration.first_failure is None:
            registration.first_failure, registration.tries = now, 0
        if now - registration.first_failure >= registration.max_retry_s:
            log.error("model %s version %s: workers not started after %.0f s of retries; no more tries",
                      registration.name, registration.version, now - registration.first_failure)
            registration.first_failure, registration.tries = None, 0
            registration.settings = replace(registration.settings, min_workers=0, max_workers=0, retrying=False)
            return
        registration.tries = min(registration.tries + 1, len(BACK_OFF_S) - 1)
        delay = BACK_OFF_S[registration.tries]
        registration.settings = replace(registration.settings, retrying=True)
        log.info("model %s version %s: retrying its workers in %d seconds", registration.name, registration.version,
                 delay)
        self._start(registration, min_workers, max_workers, undo=False, delay_s=max(delay, 0.001))

    def _adopt(self, entry: ModelEntry[Scheduler], version: str) -> Registration:
        """A model from the repository answers TorchServe's scaling too (its folder reloads it)."""
        slot = entry.versions[version]
        count = slot.runtime.instances if slot.runtime is not None else entry.config.instance_group.count
        batching = entry.config.dynamic_batching
        settings = WorkerSettings(count, count, max(entry.config.max_batch_size, 1),
                                  int(batching.max_queue_delay_ms) if batching else 0,
                                  int(entry.config.instance_group.response_timeout_s),
                                  self._settings.startup_timeout_s, loaded_at_startup=True, url=entry.source,
                                  sequences=configured_sequences(entry.config))
        source = Path(entry.source)
        archive = source if is_archive(source) else source / version
        registration = Registration(entry.name, version, archive, entry.source, False, entry.config, settings)
        self._registrations[(entry.name, version)] = registration
        return registration

    # -- reading and unregistering ------------------------------------------------------------
    def settings_of(self, name: str, version: str) -> WorkerSettings | None:
        registration = self._registrations.get((name, version))
        return registration.settings if registration is not None else None

    def url_of(self, name: str, version: str) -> str | None:
        registration = self._registrations.get((name, version))
        return registration.url if registration is not None else None

    def workers_of(self, name: str, version: str) -> list[object]:
        entry = self._registry.models.get(name)
        slot = entry.versions.get(version) if entry is not None else None
        if slot is None or slot.runtime is None or slot.state is not ModelState.READY:
            return []
        return list(slot.runtime.workers() or [])

    async def unregister(self, name: str, version: str | None) -> None:
        """TorchServe's ModelManager.unregisterModel: one version, the default one when none is
        named; the default cannot go while other versions remain (403); an archive that was
        downloaded is removed."""
        entry = self._registry.entry(name)
        default = _default_version(entry)
        chosen = version if version is not None else default
        if chosen not in entry.versions:
            raise NotFound(f"Model version: {chosen} does not exist for model: {name}")
        if chosen == default and len(entry.versions) > 1:
            raise Forbidden(f"Cannot remove default version for model {name}")
        await self._registry.unload_version(name, chosen)
        registration = self._registrations.pop((name, chosen), None)
        if registration is not None and registration.downloaded:
            remove_downloaded(registration.archive)

    def forget(self, name: str) -> None:
        """The model left by another door (v2 unload): drop what its registrations asked for."""
        for key in [key for key in self._registrations if key[0] == name]:
            registration = self._registrations.pop(key)
            if registration.downloaded:
                remove_downloaded(registration.archive)


async def _started(scheduler: Scheduler, count: int, timeout_s: float) -> None:
    """Wait (at most ``timeout_s``) until ``count`` workers run: new processes start in the background."""
    deadline = time.monotonic() + timeout_s
    while len(scheduler.workers() or []) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def _default_version(entry: ModelEntry[Scheduler]) -> str:
    if entry.default_version is not None:
        return entry.default_version
    newest = entry.newest_ready()
    if newest is not None:
        return newest[1]
    versions = [slot.version for slot in entry.sorted_versions()]
    return versions[-1] if versions else ""


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


TORCHRUN_PARALLEL = ("pp", "tp", "pptp")  # TorchServe's parallelType values whose workers torchrun launches


def _refuse_torchrun(yaml: dict[str, Any]) -> None:
    """TorchServe launches a model's workers with torchrun when its model-config.yaml has a
    ``parallelType`` of pp, tp or pptp and ``torchrun``'s ``nproc-per-node`` (its parallelLevel) is
    above 0; inferd has no such workers (a plain one then failed on RANK), so the registration is refused."""
    parallel = str(yaml.get("parallelType") or "")
    torchrun = yaml.get("torchrun")
    level = torchrun.get("nproc-per-node") if isinstance(torchrun, dict) else None
    if parallel in TORCHRUN_PARALLEL and isinstance(level, int) and level > 0:
        raise InvalidInput(f"model-config.yaml: parallelType: {parallel} with torchrun nproc-per-node: {level} asks "
                           "for tensor/pipeline-parallel workers launched by torchrun; inferd has no torchrun "
                           "workers (without parallelType the model is served in single-process workers)")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _given(value: int, not_given: int, from_yaml: int | None, default: int) -> int:
    """A registration parameter; when not given, model-config.yaml's (if positive), else the default."""
    if value != not_given:
        return value
    return from_yaml if from_yaml is not None and from_yaml > 0 else default


def _positive(from_yaml: int | None, given: int, default: int) -> int:
    if from_yaml is not None and from_yaml > 0:
        return from_yaml
    return given if given != -1 else default


def _gpus(device_type: str, yaml: dict[str, Any]) -> tuple[int, ...] | None:
    """model-config.yaml's ``deviceType: gpu`` with its ``deviceIds`` (all GPUs unnamed: GPU 0)."""
    if device_type.lower() != "gpu":
        return None
    ids = yaml.get("deviceIds") or []
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise InvalidInput(f"model-config.yaml: deviceIds must be a list of GPU numbers, got {ids!r}")
    return tuple(ids)


def configured_sequences(config: ModelConfig) -> SequenceSettings:
    """A loaded model's sequence settings as TorchServe's describe answers them, from its configuration
    (a registration reads them from its archive instead, with ``sequenceTimeoutMSec``)."""
    sequences = config.sequence_batching
    if sequences is None:
        return SequenceSettings()
    return SequenceSettings(True, sequences.max_sequence_idle_us // 1000, 0, sequences.max_sequences,
                            sequences.max_queued_per_sequence)
