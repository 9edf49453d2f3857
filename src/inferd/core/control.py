"""Model control: the repository index, load and unload, TorchServe's registration, scaling and
describing. Every change takes the caller's credentials and is authorized here, so no transport
can forget to."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from inferd.auth import AccessPolicy
from inferd.config import ModelSource as ConfiguredModel
from inferd.config import ServedConfig, TensorConfig, TorchServeSettings
from inferd.core.torchserve import Outcome, RegisterRequest, TorchServeModels, configured_sequences
from inferd.core.torchserve_workflows import TorchServeWorkflows, Workflow
from inferd.errors import FailedPrecondition, Forbidden, InferdError, InvalidInput, NotFound
from inferd.repository.registry import ModelRegistry
from inferd.scheduling.scheduler import Scheduler
from inferd.types import (
    IndexEntry,
    LoadOverride,
    ModelState,
    TensorSpec,
    VersionDescription,
    VersionStatus,
    WorkerStatus,
)

log = logging.getLogger("inferd.control")
T = TypeVar("T")

# a runtime's platform -> the backend that serves it (for a configuration that did not name one)
_BACKEND_OF_PLATFORM = {"onnxruntime_onnx": "onnx", "pytorch_libtorch": "torch", "pytorch_export": "torch",
                        "python": "python", "tensorflow_savedmodel": "tensorflow",
                        "torchserve_handler": "torchserve", "tflite": "tflite"}


@dataclass(frozen=True, slots=True)
class ModelSource:
    name: str
    source: str  # its folder, or the archive it was registered from


class ModelControl:
    def __init__(self, registry: ModelRegistry[Scheduler], access: AccessPolicy | None = None,
                 model_store: Path | None = None, torchserve: TorchServeSettings | None = None,
                 read_model_config: Callable[[bytes], tuple[ConfiguredModel, ...]] | None = None,
                 labels_for_unavailable_versions: bool = False) -> None:
        self._registry = registry
        self._read_model_config = read_model_config  # a serialized TF Serving ModelServerConfig -> sources
        self._labels_for_unavailable = labels_for_unavailable_versions
        self._access = access or AccessPolicy()
        self._model_store = model_store
        self._torchserve = TorchServeModels(registry, model_store, torchserve)
        workflow_store = torchserve.workflow_store if torchserve is not None else None
        self.workflows = TorchServeWorkflows(self._torchserve, workflow_store or model_store, torchserve)
        self.torchserve_model_api = torchserve.model_api if torchserve is not None else True
        # the headers a stateful request's sequence travels in (id, start, end)
        self.torchserve_sequence_headers = (torchserve or TorchServeSettings()).sequence_headers
        self._finishing: set[asyncio.Task[Any]] = set()  # loads and unloads whose callers stopped waiting
        self._config_turn = asyncio.Lock()  # TF Serving's model configs apply one at a time, whole
        self._changed: Callable[[], None] | None = None  # told of each TorchServe management change

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
        # no ready version: the same error as metadata (Triton answers only for a loaded model); a
        # folder whose config.toml failed would otherwise show defaults it is not served with
        runtime = self._registry.get(name, version)[0]
        config = entry.config
        platform = runtime.platform
        backend = config.backend or _BACKEND_OF_PLATFORM.get(platform, "")
        config = dataclasses.replace(
            config, inputs=config.inputs or _tensors(runtime.inputs, config.max_batch_size),
            outputs=config.outputs or _tensors(runtime.outputs, config.max_batch_size))
        return ServedConfig(name=name, platform=platform, backend=backend, config=config)

    def models(self, credentials: str | None) -> list[ModelSource]:
        self._access.authorize_inference(credentials, "listing models")
        rows = []
        for name, entry in sorted(self._registry.models.items()):
            default = entry.default_version or next(iter(entry.versions), "")
            rows.append(ModelSource(name, self._torchserve.url_of(name, default) or entry.source))
        return rows

    def describe(self, name: str, credentials: str | None) -> list[VersionDescription]:
        """Per version: source, workers (their pids and state), batching, what the registration
        asked for — what management APIs show."""
        self._access.authorize_inference(credentials, "describing a model")
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
                default=default == slot.version, workers=workers, settings=settings,
                sequences=settings.sequences if settings is not None else configured_sequences(entry.config)))
        return rows

    def ready_workers(self) -> list[tuple[str, str, WorkerStatus]]:
        """(model, version, worker) of every ready worker, without credentials: TorchServe's
        WorkerLoadTime of the workers loaded at start, which no caller's registration measured."""
        rows = []
        for name, entry in sorted(self._registry.models.items()):
            for slot in entry.sorted_versions():
                workers = (slot.runtime.workers() or []) if slot.runtime is not None else []
                rows += [(name, slot.version, worker) for worker in workers if worker.ready]
        return rows

    def default_version(self, name: str) -> str | None:
        """The version an unversioned TorchServe call means: set-default's, else the first registered."""
        entry = self._registry.entry(name)
        newest = entry.newest_ready()
        return entry.default_version or (newest[1] if newest is not None else None)

    # -- changing (needs --model-control explicit, and the token when one is set) -----------
    def authorize(self, credentials: str | None) -> None:
        """What every change checks first: for a transport to refuse before reading a body."""
        self._access.authorize_control(credentials, "changing what is served")

    def authorize_door(self, credentials: str | None, kind: str) -> None:
        """TorchServe's token check at its API's door: ``kind`` is "inference" or "management"."""
        self._access.authorize_door(credentials, kind)

    @property
    def token_authorization(self) -> bool:
        """TorchServe's keys guard the doors (``inferd torchserve`` unless token authorization is off)."""
        return self._access.keys is not None

    def renew_key(self, credentials: str | None, kind: str) -> None:
        """TorchServe's token API: a new management or inference key, with the API key."""
        self._access.renew_key(credentials, kind)

    @property
    def open_to_loopback(self) -> bool:
        """Changes need no token: a transport must accept them from loopback only."""
        return self._access.open_control

    async def load(self, name: str, credentials: str | None, override: LoadOverride | None = None) -> None:
        """Load (or reload) a model; ``override`` replaces keys of its configuration (Triton's
        ModelConfig as JSON) and, with files, its folder for this load. A load that leaves no version
        ready is InvalidInput, as in Triton; a reload's old versions keep serving."""
        self._access.authorize_control(credentials, "loading a model")
        await self._load(name, override)

    async def load_for_model(self, name: str, override: LoadOverride | None) -> None:
        """A Python model's ``pb_utils.load_model``: the server's own code, so no token, but only
        with --model-control explicit, as Triton's model loading API."""
        self._access.require_model_control("loading a model")
        await self._load(name, override)

    async def unload_for_model(self, name: str, dependents: bool) -> None:
        """A Python model's ``pb_utils.unload_model`` (see ``load_for_model``)."""
        self._access.require_model_control("unloading a model")
        await self._to_the_end(self._unload(name, dependents))

    async def _load(self, name: str, override: LoadOverride | None) -> None:
        # strict, as Triton: a load that leaves no version ready raises (a reload's old versions serve on)
        # an ensemble's steps' models that are not loaded load along with it, as Triton's do
        if override is None:
            await self._to_the_end(self._registry.load_model(name, strict=True, with_steps=True))
        else:
            await self._to_the_end(self._registry.load_model(name, override.config, override.files, strict=True,
                                                             with_steps=True))

    async def unload(self, name: str, credentials: str | None, dependents: bool = False) -> None:
        """Unload a model; one that is not loaded (never, or unloaded by another client first) is
        no error, as in Triton: an unload asks for a state, and the state holds. ``dependents``
        (Triton's ``unload_dependents``): the models an ensemble's load brought along unload with it."""
        self._access.authorize_control(credentials, "unloading a model")
        await self._to_the_end(self._unload(name, dependents))

    async def _unload(self, name: str, dependents: bool) -> None:
        for gone in await self._registry.unload_model(name, missing_ok=True, dependents=dependents):
            self._torchserve.forget(gone)

    async def _to_the_end(self, work: Coroutine[Any, Any, T]) -> T:
        """``work`` runs to its end even when its caller stops waiting (a gRPC client's deadline,
        a front-end worker that died), as Triton's loads do: cut short, a load left its model
        LOADING for good and its instances running unserved."""
        task = asyncio.ensure_future(work)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_finished)  # nobody awaits it any more: a failure is logged there
            raise

    async def reload_model_config(self, config: bytes, credentials: str | None) -> list[VersionStatus]:
        """TF Serving's HandleReloadConfigRequest: ``config`` (a serialized ModelServerConfig) is the
        new models.config: the models it no longer names unload, new or changed ones load (a
        repository's own models stay); a label must name a version available now, as in TF Serving.
        Answers the models new to the server that did not become available, each one's versions
        (TF Serving waits for those alone: server_core.cc:410-440). One config applies at a time."""
        self._access.authorize_control(credentials, "reloading the model config")
        if self._read_model_config is None:
            raise Forbidden("this server does not read TF Serving model configs")
        sources = self._read_model_config(config)
        async with self._config_turn:
            available = {(row.name, row.version) for row in self.states(ready_only=True)}
            self._check_labels(sources, available)
            await self._to_the_end(self._registry.set_sources(sources))
            ready = {row.name for row in self.states(ready_only=True)}
            failed = {source.name for source in sources} - {name for name, _ in available} - ready
            rows = [row for row in self.states() if row.name in failed]
        return rows + [VersionStatus(name, "", ModelState.UNAVAILABLE, "not loaded")
                       for name in sorted(failed - {row.name for row in rows})]

    def _check_labels(self, sources: tuple[ConfiguredModel, ...], available: set[tuple[str, str]]) -> None:
        """TF Serving labels only versions available now (server_core.cc:549-584 at 9d981c5c); with
        --allow_version_labels_for_unavailable_models, a new label (or one kept where it is) may
        name a version still to load, but moving a label still needs its version available."""
        for source in sources:
            entry = self._registry.models.get(source.name)
            labels = entry.config.version_labels if entry is not None else {}
            for label, version in (source.version_labels or {}).items():
                moved = label in labels and labels[label] != version
                if (source.name, str(version)) not in available and (moved or not self._labels_for_unavailable):
                    raise FailedPrecondition(f"Request to assign label to version {version} of model "
                                             f"{source.name}, which is not currently available for inference")

    async def unregister(self, name: str, version: str | None, credentials: str | None) -> None:
        """TorchServe's unregister: the model (or one version); a downloaded archive is removed."""
        self._access.authorize_control(credentials, "unregistering a model")
        if name not in self._registry.models:
            raise NotFound(f"Model not found: {name}")
        await self._torchserve.unregister(name, version)
        self._tell_changed()

    async def unload_version(self, name: str, version: str, credentials: str | None) -> None:
        await self.unregister(name, version, credentials)

    def set_default_version(self, name: str, version: str, credentials: str | None) -> None:
        self._access.authorize_control(credentials, "setting the default version")
        self._registry.set_default(name, version)
        self._tell_changed()

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
        scaled = await self._torchserve.scale(name, version, min_workers, max_workers, synchronous)
        self._tell_changed()
        return scaled

    async def register_from_store(self, request: RegisterRequest, credentials: str | None) -> tuple[Outcome, str]:
        """Register an archive of the model store, or one that ``allowed_urls`` lets it download
        (TorchServe's ``POST /models``); a registration whose workers fail leaves nothing behind."""
        self._access.authorize_control(credentials, "registering a model")
        registered = await self._torchserve.register(request)
        self._tell_changed()
        return registered

    def workflow_urls(self, credentials: str | None) -> list[tuple[str, str]]:
        """(name, url) of each registered TorchServe workflow, by name."""
        self._access.authorize_inference(credentials, "listing workflows")
        return [(name, self.workflows.get(name).url) for name in self.workflows.names()]

    def workflow(self, name: str, credentials: str | None) -> Workflow:
        """A registered workflow (describe, /wfpredict); NotFound names it."""
        self._access.authorize_inference(credentials, "reading a workflow")
        return self.workflows.get(name)

    async def register_workflow(self, url: str | None, name: str | None, credentials: str | None) -> str:
        """TorchServe's ``POST /workflows``: a .war of the workflow store (or a URL ``allowed_urls``
        admits), its models registered, all or none."""
        self._access.authorize_control(credentials, "registering a workflow")
        return await self.workflows.register(url, name)

    async def unregister_workflow(self, name: str, credentials: str | None) -> None:
        self._access.authorize_control(credentials, "unregistering a workflow")
        await self.workflows.unregister(name)

    # -- the composition root's (start-up, polling, shutdown): no credentials ---------------
    async def register_archive(self, url: str, name: str | None) -> tuple[Outcome, str]:
        """An archive served from the start (``--models``: a file of the store or a URL that
        ``allowed_urls`` admits), with TorchServe's start-up workers."""
        return await self._torchserve.register_at_start(url, name)

    def on_change(self, changed: Callable[[], None]) -> None:
        """``changed`` is called after each TorchServe management change (TorchServe's config snapshots)."""
        self._changed = changed

    def _tell_changed(self) -> None:
        if self._changed is not None:
            self._changed()

    async def restore_snapshot(self, models: dict[str, dict[str, dict[str, object]]]) -> None:
        """A TorchServe config snapshot's models, back as they were (a version that fails is logged)."""
        for name, versions in models.items():
            for version, state in versions.items():
                try:
                    await self._torchserve.restore(name, state)
                except InferdError as exc:
                    log.error("model %s version %s of the snapshot not restored: %s", name, version, exc.message)

    def torchserve_snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The registered models a config snapshot keeps: a workflow's are left out, as TorchServe does."""
        in_workflows = {workflow.model_name(node) for name in self.workflows.names()
                        for workflow in (self.workflows.get(name),) for node in workflow.archive.spec.nodes}
        return {name: versions for name, versions in self._torchserve.snapshot().items() if name not in in_workflows}

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
        async with self._config_turn:
            await self._registry.set_sources(sources)

    async def close(self, timeout: float) -> bool:
        """Retire every model within ``timeout``; False if some work was left behind."""
        await self.workflows.close()
        return await self._registry.close(timeout)


def _finished(task: asyncio.Task[Any]) -> None:
    """A load or unload nobody waited for any more: its failure is logged (else never seen)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("model control finished after its caller went away: %s", task.exception())


def _tensors(specs: tuple[TensorSpec, ...], max_batch_size: int) -> tuple[TensorConfig, ...]:
    """Specs carry the batch dim; a configuration's shapes leave it out when the model batches."""
    skip = 1 if max_batch_size > 0 else 0
    return tuple(TensorConfig(spec.name, spec.datatype, spec.shape[skip:]) for spec in specs)
