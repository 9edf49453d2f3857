"""Model control: the repository index, load and unload, TorchServe's registration, scaling and
describing. Every change takes the caller's credentials and is authorized here, so no transport
can forget to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inferd.auth import AccessPolicy
from inferd.config import ModelConfig
from inferd.errors import InvalidInput
from inferd.repository.archives import archive_config, archive_identity, resolve_archive
from inferd.repository.layout import is_valid_name
from inferd.repository.registry import ModelRegistry
from inferd.scheduling.scheduler import Scheduler
from inferd.types import ModelState, VersionDescription, VersionStatus


@dataclass(frozen=True, slots=True)
class Registered:
    name: str
    version: str
    workers: int


@dataclass(frozen=True, slots=True)
class ModelSource:
    name: str
    source: str  # its folder, or the archive it was registered from


class ModelControl:
    def __init__(self, registry: ModelRegistry[Scheduler], access: AccessPolicy | None = None,
                 model_store: Path | None = None) -> None:
        self._registry = registry
        self._access = access or AccessPolicy()
        self._model_store = model_store

    # -- reading (always on; with --auth-inference, the token) -----------------------------
    def index(self, credentials: str | None, ready_only: bool = False) -> list[VersionStatus]:
        self._access.authorize_inference(credentials, "reading the repository index")
        return self.states(ready_only)

    def models(self, credentials: str | None) -> list[ModelSource]:
        self._access.authorize_inference(credentials, "listing models")
        return [ModelSource(name, entry.source) for name, entry in sorted(self._registry.models.items())]

    def describe(self, name: str, credentials: str | None) -> list[VersionDescription]:
        """Per version: source, instances, busy, batching, state — what management APIs show."""
        self._access.authorize_inference(credentials, "describing a model")
        entry = self._registry.entry(name)
        batching = entry.config.dynamic_batching
        newest = entry.newest_ready()
        rows = []
        for slot in entry.sorted_versions():
            scheduler = slot.runtime
            rows.append(VersionDescription(
                version=slot.version, state=slot.state, reason=slot.reason, source=entry.source,
                instances=scheduler.instances if scheduler is not None else entry.config.instance_group.count,
                busy=scheduler.busy if scheduler is not None else 0,
                max_batch_size=scheduler.max_batch_size if scheduler is not None else entry.config.max_batch_size,
                max_queue_delay_ms=batching.max_queue_delay_ms if batching else 0.0,
                default=newest is not None and newest[1] == slot.version))
        return rows

    # -- changing (needs --model-control explicit, and the token when one is set) -----------
    def authorize(self, credentials: str | None) -> None:
        """What every change checks first: for a transport to refuse before reading a body."""
        self._access.authorize_control(credentials, "changing what is served")

    @property
    def open_to_loopback(self) -> bool:
        """Changes need no token: a transport must accept them from loopback only."""
        return self._access.open_control

    async def load(self, name: str, credentials: str | None) -> None:
        self._access.authorize_control(credentials, "loading a model")
        await self._registry.load_model(name)

    async def unload(self, name: str, credentials: str | None) -> None:
        self._access.authorize_control(credentials, "unloading a model")
        await self._registry.unload_model(name)

    async def unload_version(self, name: str, version: str, credentials: str | None) -> None:
        self._access.authorize_control(credentials, "unregistering a model")
        await self._registry.unload_version(name, version)

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

    async def register_from_store(self, url: str, name: str | None, workers: int, batch_size: int,
                                  max_batch_delay_ms: float, credentials: str | None) -> Registered:
        """Register an archive of the model store (TorchServe's ``POST /models``)."""
        self._access.authorize_control(credentials, "registering a model")
        archive = resolve_archive(self._model_store, url)
        return await self.register_archive(archive, name, archive_config(workers, batch_size, max_batch_delay_ms))

    # -- the composition root's (start-up, polling, shutdown): no credentials ---------------
    async def register_archive(self, archive: Path, name: str | None, config: ModelConfig) -> Registered:
        manifest_name, version = archive_identity(archive)
        name = name or manifest_name
        if not is_valid_name(name):
            raise InvalidInput(f"model name {name!r} is not valid: letters, digits, '_', '-', '.'")
        entry = await self._registry.register_archive(name, archive, config, version)
        slot = entry.versions[version]
        if slot.state is not ModelState.READY:
            raise InvalidInput(f"model '{name}' failed to load from {archive.name}: {slot.reason}")
        return Registered(name, version, config.instance_group.count)

    def states(self, ready_only: bool = False) -> list[VersionStatus]:
        """Every version's state, without credentials: for metrics and the start-up line."""
        rows = self._registry.index()
        return [row for row in rows if row.state is ModelState.READY] if ready_only else rows

    async def load_at_start(self, only: tuple[str, ...] = ("*",)) -> None:
        await self._registry.load_all(only)

    async def poll(self) -> None:
        await self._registry.poll()

    async def close(self, timeout: float) -> bool:
        """Retire every model within ``timeout``; False if some work was left behind."""
        return await self._registry.close(timeout)
