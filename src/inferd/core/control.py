"""Model control: the repository index, load and unload, TorchServe's registration, scaling and
describing. Every change takes the caller's credentials and is authorized here, so no transport
can forget to."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from inferd.auth import AccessPolicy
from inferd.config import ModelConfig, ServedConfig, TensorConfig
from inferd.config import ModelSource as ConfiguredModel
from inferd.errors import InvalidInput
from inferd.repository.archives import archive_config, archive_identity, resolve_archive
from inferd.repository.layout import is_valid_name
from inferd.repository.registry import ModelRegistry
from inferd.scheduling.scheduler import Scheduler
from inferd.types import IndexEntry, ModelState, TensorSpec, VersionDescription, VersionStatus

# a runtime's platform -> the backend that serves it (for a configuration that did not name one)
_BACKEND_OF_PLATFORM = {"onnxruntime_onnx": "onnx", "pytorch_libtorch": "torch", "pytorch_export": "torch",
                        "python": "python", "tensorflow_savedmodel": "tensorflow",
                        "torchserve_handler": "torchserve"}


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

    def repository_index(self, credentials: str | None, ready_only: bool = False) -> list[IndexEntry]:
        """The v2 repository index: every model of the repository, loaded or not."""
        self._access.authorize_inference(credentials, "reading the repository index")
        rows = self._registry.repository_index()
        return [row for row in rows if row.state == ModelState.READY.value] if ready_only else rows

    def model_config(self, name: str, version: str | None, credentials: str | None) -> ServedConfig:
        """The configuration a model (version) is served with, every tensor included: what the
        file said, completed from the loaded model (ONNX and exported programs describe theirs)."""
        self._access.authorize_inference(credentials, "reading a model's configuration")
        entry = self._registry.entry(name)
        runtime: Scheduler | None
        if version is not None:
            runtime = self._registry.get(name, version)[0]
        else:
            newest = entry.newest_ready()
            runtime = newest[0] if newest is not None else None
        config = entry.config
        platform = runtime.platform if runtime is not None else ""
        backend = config.backend or _BACKEND_OF_PLATFORM.get(platform, "")
        if runtime is not None:
            config = dataclasses.replace(
                config, inputs=config.inputs or _tensors(runtime.inputs, config.max_batch_size),
                outputs=config.outputs or _tensors(runtime.outputs, config.max_batch_size))
        return ServedConfig(name=name, platform=platform, backend=backend, config=config)

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

    async def load(self, name: str, credentials: str | None, config: str | None = None) -> None:
        """Load (or reload) a model; ``config`` overrides keys of its configuration (Triton's
        ModelConfig as JSON)."""
        self._access.authorize_control(credentials, "loading a model")
        await self._registry.load_model(name, config)

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

    async def apply_model_sources(self, sources: tuple[ConfiguredModel, ...]) -> None:
        """A new TF Serving models.config: unload what it dropped, load what is new or changed."""
        await self._registry.set_sources(sources)

    async def close(self, timeout: float) -> bool:
        """Retire every model within ``timeout``; False if some work was left behind."""
        return await self._registry.close(timeout)


def _tensors(specs: tuple[TensorSpec, ...], max_batch_size: int) -> tuple[TensorConfig, ...]:
    """Specs carry the batch dim; a configuration's shapes leave it out when the model batches."""
    skip = 1 if max_batch_size > 0 else 0
    return tuple(TensorConfig(spec.name, spec.datatype, spec.shape[skip:]) for spec in specs)
