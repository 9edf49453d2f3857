"""InferenceService: the one door every transport and protocol calls."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import inferd
from inferd.auth import AccessPolicy
from inferd.config import ModelConfig
from inferd.errors import InferdError, InvalidInput, NotFound
from inferd.observability.metrics import Metrics
from inferd.repository.archives import archive_config, archive_identity, resolve_archive
from inferd.repository.layout import is_valid_name
from inferd.repository.registry import ModelRegistry, version_key
from inferd.types import CallContext, InferRequest, InferResponse, ModelMetadata, Tensor
from inferd.validation import check_inputs, check_outputs

EXTENSIONS = ("binary_tensor_data", "model_repository", "schedule_policy", "statistics")


class InferenceService:
    """Live, ready, metadata, infer, load, unload — with no knowledge of HTTP or gRPC."""

    def __init__(self, registry: ModelRegistry, metrics: Metrics | None = None,
                 model_store: Path | None = None, access: AccessPolicy | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self.model_store = model_store
        self.access = access or AccessPolicy()
        self._ready = False
        self._draining = False

    # -- health ----------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready and not self._draining

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def start_draining(self) -> None:
        self._draining = True

    # -- metadata --------------------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {"name": "inferd", "version": inferd.__version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None) -> ModelMetadata:
        runtime, resolved = self.registry.get(name, version)
        entry = self.registry.models[name]
        versions = (resolved,) if version is not None else tuple(entry.ready_versions())
        return ModelMetadata(name=name, versions=versions, platform=runtime.platform,
                             inputs=runtime.inputs, outputs=runtime.outputs,
                             max_batch_size=runtime.max_batch_size)

    def signature_metadata(self, name: str, version: str | None) -> dict[str, ModelMetadata]:
        """Per signature (TensorFlow; others have one, serving_default): its inputs and outputs."""
        return {sig: ModelMetadata(name=name, versions=(), platform=runtime.platform, inputs=runtime.inputs,
                                   outputs=runtime.outputs, max_batch_size=runtime.max_batch_size)
                for sig, runtime in self.registry.signatures(name, version).items()}

    def resolve_label(self, name: str, label: str) -> str:
        return self.registry.resolve_label(name, label)

    def version_states(self, name: str, version: str | None = None) -> list[tuple[str, str, str]]:
        """(version, state, reason) of a model's versions, or of one."""
        rows = [(row["version"], row["state"], row["reason"]) for row in self.repository_index()
                if row["name"] == name and row["version"]]
        if not rows and name not in self.registry.models:
            raise NotFound(f"unknown model '{name}'")
        if version is not None:
            rows = [row for row in rows if row[0] == version]
            if not rows:
                raise NotFound(f"model '{name}' has no version '{version}'")
        return rows

    def model_ready(self, name: str, version: str | None) -> bool:
        self.registry.get(name, version)  # raises NotFound / Unavailable
        return True

    # -- inference -------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        start = time.perf_counter()
        self.access.authorize_inference(request.credentials)
        signature = request.parameters.get("signature_name")
        if signature:
            runtime, version = self.registry.get_signature(request.model_name, request.model_version, str(signature))
        else:
            runtime, version = self.registry.get(request.model_name, request.model_version)
        context = CallContext(deadline=self._deadline(request, start), cancelled=request.cancelled)
        outcome = "success"
        try:
            arrays = check_inputs(request, runtime)
            wanted = check_outputs(request, runtime)
            outputs = await runtime.infer_async(arrays, context)
        except InferdError as exc:
            outcome = exc.code.value
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            context.timings.total = time.perf_counter() - start
            if self.metrics is not None:
                t = context.timings
                self.metrics.for_model(request.model_name, version).request(
                    request.protocol, outcome, t.total, t.queue, t.compute)
        datatypes = {spec.name: spec.datatype for spec in runtime.outputs}
        tensors = [Tensor(w.name, datatypes[w.name], outputs[w.name]) for w in wanted]
        return InferResponse(model_name=request.model_name, model_version=version,
                             outputs=tensors, id=request.id, timings=context.timings)

    @staticmethod
    def _deadline(request: InferRequest, start: float) -> float | None:
        if not request.timeout_us:
            return None
        if request.timeout_us < 0:
            raise InvalidInput(f"timeout must be >= 0 microseconds, got {request.timeout_us}")
        return start + request.timeout_us / 1e6

    def model_states(self) -> list[tuple[str, str, str]]:
        """(model, version, state) of every known version, for the metrics."""
        return [(row["name"], row["version"], row["state"]) for row in self.repository_index()]

    # -- repository ------------------------------------------------------------------------
    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        rows = []
        for name in sorted(self.registry.models):
            entry = self.registry.models[name]
            if not entry.versions:
                state = "UNAVAILABLE" if entry.reason else "LOADING"
                rows.append({"name": name, "version": "", "state": state, "reason": entry.reason})
            for version in sorted(entry.versions, key=version_key):
                slot = entry.versions[version]
                rows.append({"name": name, "version": version, "state": slot.state.value,
                             "reason": slot.reason})
        if ready_only:
            rows = [row for row in rows if row["state"] == "READY"]
        return rows

    async def register_from_store(self, url: str, name: str | None, workers: int, batch_size: int,
                                  max_batch_delay_ms: float) -> tuple[str, str, int]:
        """Register an archive of the model store (TorchServe's ``POST /models``)."""
        archive = resolve_archive(self.model_store, url)
        return await self.register_archive(archive, name, archive_config(workers, batch_size, max_batch_delay_ms))

    async def register_archive(self, archive: Path, name: str | None, config: ModelConfig) -> tuple[str, str, int]:
        manifest_name, version = archive_identity(archive)
        name = name or manifest_name
        if not is_valid_name(name):
            raise InvalidInput(f"model name {name!r} is not valid: letters, digits, '_', '-', '.'")
        entry = await self.registry.register_archive(name, archive, config, version)
        slot = entry.versions[version]
        if slot.state.value != "READY":
            raise InvalidInput(f"model '{name}' failed to load from {archive.name}: {slot.reason}")
        return name, version, config.instance_group.count

    async def unload_version(self, name: str, version: str) -> None:
        await self.registry.unload_version(name, version)

    def set_default_version(self, name: str, version: str) -> None:
        self.registry.set_default(name, version)

    def scale(self, name: str, instances: int) -> None:
        """Change how many executions of every loaded version may run at once."""
        if instances < 1:
            raise InvalidInput(f"a model needs at least one worker, got {instances}")
        for _, runtime in self.registry.runtimes(name):
            resize = getattr(runtime, "resize", None)
            if resize is None:
                raise InvalidInput(f"model '{name}' cannot be scaled")
            resize(instances)

    def describe_model(self, name: str) -> list[dict[str, Any]]:
        """Per version: source, instances, busy, batching, state — what management APIs show."""
        entry = self.registry.models.get(name)
        if entry is None:
            raise NotFound(f"unknown model '{name}'")
        rows = []
        batching = entry.config.dynamic_batching
        for version in sorted(entry.versions, key=version_key):
            slot = entry.versions[version]
            runtime = slot.runtime
            rows.append({
                "version": version, "state": slot.state.value, "reason": slot.reason, "source": entry.source,
                "instances": getattr(runtime, "count", getattr(getattr(runtime, "pool", None), "count", 1)),
                "busy": int(getattr(runtime, "busy", 0)),
                "max_batch_size": runtime.max_batch_size if runtime is not None else entry.config.max_batch_size,
                "max_queue_delay_ms": batching.max_queue_delay_ms if batching else 0.0,
                "default": entry.newest_ready() is not None and entry.newest_ready()[1] == version,
            })
        return rows

    async def load_model(self, name: str) -> None:
        await self.registry.load_model(name)

    async def unload_model(self, name: str) -> None:
        await self.registry.unload_model(name)
