"""Model control: the repository index, load and unload, TorchServe's registration, scaling and
describing. Every change takes the caller's credentials and is authorized here, so no transport
can forget to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inferd.auth import AccessPolicy
from inferd.config import ModelSource as ConfiguredModel
from inferd.config import TorchServeSettings
from inferd.core.torchserve import Outcome, RegisterRequest, TorchServeModels
from inferd.errors import InvalidInput, NotFound
from inferd.repository.registry import ModelRegistry
from inferd.scheduling.scheduler import Scheduler
from inferd.types import ModelState, VersionDescription, VersionStatus


@dataclass(frozen=True, slots=True)
class ModelSource:
    name: str
    source: str  # its folder, or the archive it was registered from


class ModelControl:
    def __init__(self, registry: ModelRegistry[Scheduler], access: AccessPolicy | None = None,
                 model_store: Path | None = None, torchserve: TorchServeSettings | None = None) -> None:
        self._registry = registry
        self._access = access or AccessPolicy()
        self._model_store = model_store
        self._torchserve = TorchServeModels(registry, model_store, torchserve)
        self.torchserve_model_api = torchserve.model_api if torchserve is not None else True

    # -- reading (always on) ---------------------------------------------------------------
    def index(self, ready_only: bool = False) -> list[VersionStatus]:
        rows = self._registry.index()
        return [row for row in rows if row.state is ModelState.READY] if ready_only else rows

    def models(self) -> list[ModelSource]:
        rows = []
        for name, entry in sorted(self._registry.models.items()):
            default = entry.default_version or next(iter(entry.versions), "")
            rows.append(ModelSource(name, self._torchserve.url_of(name, default) or entry.source))
        return rows

    def describe(self, name: str) -> list[VersionDescription]:
        """Per version: source, workers (their pids and state), batching, what the registration
        asked for — what management APIs show."""
        entry = self._registry.entry(name)
        batching = entry.config.dynamic_batching
        newest = entry.newest_ready()
        default = entry.default_version or (newest[1] if newest is not None else None)
        rows = []
        for slot in entry.sorted_versions():
            scheduler = slot.runtime
            settings = self._torchserve.settings_of(name, slot.version)
            workers = tuple(scheduler.workers() or []) if scheduler is not None else ()
            rows.append(VersionDescription(
                version=slot.version, state=slot.state, reason=slot.reason,
                source=self._torchserve.url_of(name, slot.version) or entry.source,
                instances=scheduler.instances if scheduler is not None else 0,
                busy=scheduler.busy if scheduler is not None else 0,
                max_batch_size=scheduler.max_batch_size if scheduler is not None else entry.config.max_batch_size,
                max_queue_delay_ms=batching.max_queue_delay_ms if batching else 0.0,
                default=default == slot.version, workers=workers, settings=settings))
        return rows

    def default_version(self, name: str) -> str | None:
        """The version an unversioned TorchServe call means: set-default's, else the first registered."""
        entry = self._registry.entry(name)
        newest = entry.newest_ready()
        return entry.default_version or (newest[1] if newest is not None else None)

    # -- changing (needs --model-control explicit, and the token when one is set) -----------
    async def load(self, name: str, credentials: str | None) -> None:
        self._access.authorize_control(credentials, "loading a model")
        await self._registry.load_model(name)

    async def unload(self, name: str, credentials: str | None) -> None:
        self._access.authorize_control(credentials, "unloading a model")
        await self._registry.unload_model(name)
        self._torchserve.forget(name)

    async def unregister(self, name: str, version: str | None, credentials: str | None) -> None:
        """TorchServe's unregister: the model (or one version); a downloaded archive is removed."""
        self._access.authorize_control(credentials, "unregistering a model")
        if name not in self._registry.models:
            raise NotFound(f"Model not found: {name}")
        await self._torchserve.unregister(name, version)

    async def unload_version(self, name: str, version: str, credentials: str | None) -> None:
        await self.unregister(name, version, credentials)

    def set_default_version(self, name: str, version: str, credentials: str | None) -> None:
        self._access.authorize_control(credentials, "setting the default version")
        self._registry.set_default(name, version)

    def scale(self, name: str, instances: int, credentials: str | None) -> None:
        """Change how many executions of every loaded version may run at once."""
        self._access.authorize_control(credentials, "scaling a model")
        if instances < 1:
            raise InvalidInput(f"a model needs at least one worker, got {instances}")
        for scheduler in self._registry.served(name):
            scheduler.resize(instances)

    async def scale_workers(self, name: str, version: str | None, min_workers: int, max_workers: int,
                            synchronous: bool, credentials: str | None) -> tuple[Outcome, str]:
        """TorchServe's scaling of one version (the default one when none is named): to zero
        unloads it, up from zero loads it; ``synchronous`` False answers at once (ACCEPTED)."""
        self._access.authorize_control(credentials, "scaling a model")
        return await self._torchserve.scale(name, version, min_workers, max_workers, synchronous)

    async def register_from_store(self, request: RegisterRequest, credentials: str | None) -> tuple[Outcome, str]:
        """Register an archive of the model store, or one that ``allowed_urls`` lets it download
        (TorchServe's ``POST /models``); a registration whose workers fail leaves nothing behind."""
        self._access.authorize_control(credentials, "registering a model")
        return await self._torchserve.register(request)

    # -- the composition root's (start-up, polling, shutdown): no credentials ---------------
    async def register_archive(self, archive: Path, name: str | None) -> tuple[Outcome, str]:
        """An archive served from the start (``--models``), with TorchServe's start-up workers."""
        return await self._torchserve.register_at_start(archive, name)

    async def load_at_start(self, only: tuple[str, ...] = ("*",)) -> None:
        await self._registry.load_all(only)

    async def poll(self) -> None:
        await self._registry.poll()

    async def apply_model_sources(self, sources: tuple[ConfiguredModel, ...]) -> None:
        """A new TF Serving models.config: unload what it dropped, load what is new or changed."""
        await self._registry.set_sources(sources)

    async def close(self) -> None:
        await self._registry.close()
