"""The data plane: health, metadata and inference — what every request that is not model control
asks of the server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import inferd
from inferd.auth import AccessPolicy
from inferd.core.cache import Outputs, ResponseCache, request_key
from inferd.core.classification import classify
from inferd.core.shared_memory import SharedMemoryRegions
from inferd.errors import GroupRefused, InferdError, InvalidInput, ModelError, NotFound, error_for
from inferd.observability import logging as server_log
from inferd.observability.metrics import Metrics, ModelMetrics
from inferd.observability.tracing import RequestTrace, Tracer
from inferd.repository.registry import ModelRegistry
from inferd.scheduling.scheduler import Scheduler
from inferd.types import (
    ERROR_OUTPUT,
    FINAL_OUTPUT,
    INTERMEDIATE_OUTPUT,
    PARAMETERS_OUTPUT,
    CallContext,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelState,
    ModelStatistics,
    RequestedOutput,
    RequestStatistics,
    ServerMetadata,
    SharedMemoryRegion,
    Tensor,
    Timings,
    VersionStatus,
    read_error_answer,
)
from inferd.validation import check_inputs, check_outputs, sequence_of

log = logging.getLogger("inferd.dataplane")

_GENERATIONS = itertools.count(1)
# what exists: classification (top classes of an output), the binary tensor extension, the repository
# extension (index, load, unload; and its unload_dependents parameter, named as Triton's server.cc
# names it), model configuration (.../config), statistics (.../stats), the
# per-request "timeout" parameter, generate (.../generate, .../generate_stream), and sequence (the
# sequence_id, sequence_start and sequence_end parameters of stateful models), logging (/v2/logging) and
# trace (/v2/trace/setting: observability/tracing.py)
EXTENSIONS = ("classification", "sequence", "binary_tensor_data", "model_repository",
              "model_repository(unload_dependents)", "model_configuration", "statistics", "schedule_policy", "generate",
              "logging", "trace")


@dataclass(slots=True)
class _VersionCounts:
    """What the data plane counts of one loaded version's requests: Triton's statistics, and the
    version's metrics (None: the server keeps none), found once with one lookup per request."""

    metrics: ModelMetrics | None
    stats: RequestStatistics = field(default_factory=RequestStatistics)


class DataPlane:
    """Live, ready, metadata, infer. ``ready`` turns true once the composition root says every
    model was tried, and false again while draining. Health is open; everything else takes the
    caller's credentials and checks them here (``--auth-inference``)."""

    def __init__(self, registry: ModelRegistry[Scheduler], metrics: Metrics | None = None,
                 access: AccessPolicy | None = None, server_name: str = "inferd",
                 strict_readiness: bool = False, cache: ResponseCache | None = None,
                 shared_memory: SharedMemoryRegions | None = None, tracer: Tracer | None = None) -> None:
        self._registry = registry
        self.tracer = tracer or Tracer()  # Triton's trace extension: its settings, and which requests it traces
        # Triton's system shared-memory extension: regions clients register (--allow-client-shm)
        self.shared_memory = shared_memory or SharedMemoryRegions(allowed=False, max_request_bytes=0)
        self._metrics = metrics
        self._access = access or AccessPolicy()
        self._server_name = server_name
        self._ready = False
        self._draining = False
        self._strict = strict_readiness
        # per scheduler (so per loaded version): forgotten with it, as Triton's restart on reload
        self._counts: weakref.WeakKeyDictionary[Scheduler, _VersionCounts] = weakref.WeakKeyDictionary()
        self._cache = cache
        # per scheduler: its readiness check on a thread, whose answer every client asking meanwhile takes
        self._readiness_checks: dict[int, asyncio.Future[bool]] = {}
        # per scheduler: a number no other loaded version ever had, so a reload never meets old answers
        self._generations: weakref.WeakKeyDictionary[Scheduler, int] = weakref.WeakKeyDictionary()
        if cache is not None and metrics is not None:
            metrics.watch_cache(lambda: cache.usage)

    # -- health ----------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if self._strict and self._ready and not self._draining:  # Triton's --strict-readiness
            return all(row.state is ModelState.READY for row in self._registry.index())
        return self._ready and not self._draining

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def start_draining(self) -> None:
        self._draining = True
        for name in list(self._registry.models):  # a batch held for its delay need not wait for it now
            for scheduler in self._registry.served(name):
                scheduler.release_held()

    def authorize(self, credentials: str | None, action: str = "reading metadata") -> None:
        """For what a transport serves beside the data plane (``/metrics``)."""
        self._access.authorize_inference(credentials, action)

    # -- Triton's system shared-memory extension (off unless --allow-client-shm) ------------
    def register_shared_memory(self, name: str, key: str, offset: int, byte_size: int,
                               credentials: str | None) -> None:
        self._access.authorize_inference(credentials, "registering shared memory")
        self.shared_memory.register(name, key, offset, byte_size)

    def unregister_shared_memory(self, name: str | None, credentials: str | None) -> None:
        self._access.authorize_inference(credentials, "unregistering shared memory")
        self.shared_memory.unregister(name)

    def shared_memory_allowed(self) -> bool:
        return self.shared_memory.allowed

    def shared_memory_status(self, name: str | None, credentials: str | None) -> list[SharedMemoryRegion]:
        self._access.authorize_inference(credentials, "reading shared memory status")
        return self.shared_memory.status(name)

    # -- Triton's logging extension ----------------------------------------------------------
    def log_settings(self, credentials: str | None) -> dict[str, bool | int | str]:
        self._access.authorize_inference(credentials, "reading log settings")
        return dict(server_log.SETTINGS.values)

    def update_log_settings(self, changes: dict[str, object], credentials: str | None) -> dict[str, bool | int | str]:
        self._access.authorize_inference(credentials, "changing log settings")
        try:
            return server_log.SETTINGS.update(changes)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None

    # -- Triton's trace extension ------------------------------------------------------------
    def trace_settings(self, model: str | None, credentials: str | None) -> dict[str, object]:
        """The settings a model's requests are traced by (its own, else the global ones)."""
        self._access.authorize_inference(credentials, "reading trace settings")
        self._trace_model(model)
        return self.tracer.settings(model)

    def update_trace_settings(self, model: str | None, changes: dict[str, object], credentials: str | None
                              ) -> dict[str, object]:
        self._access.authorize_inference(credentials, "changing trace settings")
        self._trace_model(model)
        try:
            return self.tracer.update(model, changes)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None

    def _trace_model(self, model: str | None) -> None:
        if model and not self.is_model_ready(model, None, None, check_access=False):
            raise InvalidInput(f"Request for unknown model : {model}")  # Triton's words (and status: 400)

    # -- metadata --------------------------------------------------------------------------
    def server_metadata(self, credentials: str | None) -> ServerMetadata:
        self._access.authorize_inference(credentials, "reading metadata")
        shared = ("system_shared_memory",) if self.shared_memory.allowed else ()
        return ServerMetadata(self._server_name, inferd.__version__, EXTENSIONS + shared)

    def model_metadata(self, name: str, version: str | None, credentials: str | None) -> ModelMetadata:
        self._access.authorize_inference(credentials, "reading metadata")
        runtime, resolved = self._registry.get(name, version)
        versions = (resolved,) if version is not None else tuple(self._registry.entry(name).ready_versions())
        return _metadata(name, versions, runtime)

    def signature_metadata(self, name: str, version: str | None, credentials: str | None
                           ) -> dict[str, ModelMetadata]:
        """Per signature (TensorFlow; others have one, serving_default): its inputs and outputs."""
        self._access.authorize_inference(credentials, "reading metadata")
        return {sig: _metadata(name, (), runtime) for sig, runtime in self._registry.signatures(name, version).items()}

    def resolve_label(self, name: str, label: str, credentials: str | None) -> str:
        self._access.authorize_inference(credentials, "reading metadata")
        return self._registry.resolve_label(name, label)

    def version_states(self, name: str, version: str | None, credentials: str | None) -> list[VersionStatus]:
        """The state of a model's versions, or of one."""
        self._access.authorize_inference(credentials, "reading model status")
        entry = self._registry.entry(name)
        rows = [VersionStatus(name, v.version, v.state, v.reason) for v in entry.sorted_versions()]
        if version is not None:
            rows = [row for row in rows if row.version == version]
            if not rows:
                raise NotFound(f"model '{name}' has no version '{version}'")
        return rows

    def model_ready(self, name: str, version: str | None, credentials: str | None) -> None:
        """Returns when the model (version) is ready; raises NotFound or Unavailable otherwise."""
        self._access.authorize_inference(credentials, "reading model status")
        self._registry.get(name, version)

    def is_model_ready(self, name: str, version: str | None, credentials: str | None,
                       check_access: bool = True) -> bool:
        """Triton's reading: an unknown or unloaded model is not ready, which is not an error.
        ``check_access`` False: a model asks (core/model_calls.py), not a client."""
        if check_access:
            self._access.authorize_inference(credentials, "reading model status")
        try:
            self._registry.get(name, version)
        except InferdError:
            return False
        return True

    async def model_says_ready(self, name: str, version: str | None) -> bool:
        """The model's own readiness check (Triton's ``is_ready``), asked by the model ready endpoints
        after ``model_ready``: True for a model without one; False when it says so, fails or takes
        too long (the runtime bounds it). A model that is not served is not ready either."""
        try:
            served, _ = self._registry.get(name, version)
        except InferdError:
            return False
        if not served.checks_ready:
            return True
        try:
            return await asyncio.shield(self._readiness_check(served))
        except Exception as exc:  # the check itself failed: not ready, as Triton reports it
            log.warning("model '%s': its readiness check failed: %s", name, exc)
            return False

    def _readiness_check(self, served: Scheduler) -> asyncio.Future[bool]:
        """The model's check in flight, else a new one: one thread per model at a time, as a check
        may wait its five seconds there, and many clients' checks each holding a thread took every
        thread of the pool that also decodes large requests (24 of them held one for 19 s)."""
        check = self._readiness_checks.get(id(served))
        if check is None:
            check = asyncio.ensure_future(asyncio.to_thread(served.model_ready))
            self._readiness_checks[id(served)] = check
            check.add_done_callback(lambda _: self._readiness_checks.pop(id(served), None))
        return check

    # -- inference -------------------------------------------------------------------------
    async def infer(self, request: InferRequest, trace: RequestTrace | None = None) -> InferResponse:
        """``trace``: the request is traced (its data-plane timestamps are added to it)."""
        self._access.authorize_inference(request.credentials)
        return await self.run_step(request, 1, trace)

    async def infer_group(self, request: InferRequest, requests: int) -> InferResponse:
        """``requests`` requests that a front-end worker sent as one (see ``group_rows``): run as
        the one request the batcher would have made of them, counted as ``requests``. A group the
        model no longer takes (its batch size fell since the worker asked) is GroupRefused, and
        its members come again one by one."""
        self._access.authorize_inference(request.credentials)
        rows = _rows(request)
        if self.group_rows(request.model_name, request.model_version) < rows:
            raise GroupRefused(f"model '{request.model_name}' takes no group of {rows} rows now")
        return await self.run_step(request, requests)

    def group_rows(self, name: str, version: str | None) -> int:
        """How many rows a front-end worker may send as one request made of several that arrived
        together (their inputs joined along the batch dimension, as the dynamic batcher joins
        them): the model's max_batch_size when a dynamic batcher schedules it, 0 when each request
        must come alone (no batcher, a sequence or ensemble scheduler, a decoupled model, the
        response cache, a model that takes a batch as its requests apart: a Triton Python model's
        requests each have their own id and parameters). Never an error: an unknown model is 0,
        and its requests fail on their own."""
        try:
            runtime, _ = self._registry.get(name, version)
            cached = self._cache is not None and self._registry.entry(name).config.response_cache
        except InferdError:
            return 0
        if cached or runtime.decoupled or runtime.parts or runtime.requests_apart:
            return 0
        return runtime.group_rows

    async def run_step(self, request: InferRequest, requests: int = 1, trace: RequestTrace | None = None
                       ) -> InferResponse:
        """``infer`` without the credentials check: an ensemble's step, whose caller was checked
        when the ensemble was asked (the composition root hands this to ensemble schedulers).
        ``requests``: how many requests this one stands for (``infer_group``)."""
        start = time.perf_counter()
        signature = request.parameters.get("signature_name")
        runtime, version = self._resolve(request, signature)
        if runtime.decoupled:
            raise InvalidInput(f"model '{request.model_name}' is decoupled (it answers zero, one or many times "
                               "per request): ask it over a stream (gRPC ModelStreamInfer, or POST "
                               f"/v2/models/{request.model_name}/generate_stream)")
        deadline = start + request.timeout_us / 1e6 if request.timeout_us else None
        context = CallContext(deadline=deadline, cancelled=request.cancelled, priority=request.priority)
        outcome = "success"
        checked = gathered = start
        key: bytes | None = None
        cached: Outputs | None = None
        hit = False
        cache_s = 0.0
        held = 0  # bytes read from shared memory, given back when the request is done
        # its regions outlast an unregister until it is done (none registered: nothing to pin)
        pinned = self.shared_memory.pin(request) if self.shared_memory.registered else []
        try:
            context.sequence = sequence_of(request.parameters)
            if any(t.shared is not None for t in request.inputs):
                held = await self.shared_memory.read_inputs(request.inputs)
            wanted = check_outputs(request, runtime)  # Triton checks the outputs asked for first
            arrays = check_inputs(request, runtime)
            checked = time.perf_counter()
            # a sequence's answer depends on its state (an ensemble's stateful step): never cached
            if (self._cache is not None and context.sequence is None
                    and self._registry.entry(request.model_name).config.response_cache):
                key = request_key(self._generation(runtime), str(signature or ""), arrays, [w.name for w in wanted])
                cached = self._cache.get(key)
                gathered = time.perf_counter()
                cache_s = gathered - checked
                hit = cached is not None
            if cached is not None:
                outputs = cached
            else:
                if runtime.takes_request:  # a Python model may ask for them (Triton's request.parameters())
                    _request_facts(context, request, wanted)
                outputs = await runtime.infer_async(arrays, context)
                gathered = time.perf_counter()
                if key is not None and self._cache is not None:
                    self._cache.put(key, _cached(outputs, wanted))
                    cache_s += time.perf_counter() - gathered
            tensors = self._tensors(request.model_name, runtime, outputs, wanted)
            if requests > 1:  # the worker splits the answer by rows: one it cannot split failed here
                _check_rows(request.model_name, tensors, _rows(request))
        except InferdError as exc:
            outcome = exc.code.value
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if held:
                self.shared_memory.release(held)
            if pinned:
                self.shared_memory.unpin(pinned)
            end = time.perf_counter()
            t = context.timings
            t.total = end - start
            if trace is not None:
                trace.handled(version, request.id, start, checked, t.queue, t.compute, end)
            counts = self._version_counts(runtime, request.model_name, version)
            if hit:
                _count_hit(counts.stats, runtime, t, cache_s, cached or {})
            else:
                _count(counts.stats, runtime, outcome, t, checked - start, end - gathered,
                       cache_s if key is not None else None, requests)
            model = counts.metrics
            if model is not None:
                if key is not None and outcome == "success":
                    model.cache(hit)
                if hit:
                    model.request_cached(request.protocol, t.total)
                else:
                    model.request(request.protocol, outcome, t.total, t.queue, t.compute, requests)
        parameters = _response_parameters(outputs) if PARAMETERS_OUTPUT in outputs else {}  # (most give none)
        return InferResponse(model_name=request.model_name, model_version=version, outputs=tensors, id=request.id,
                             parameters=parameters, timings=context.timings)

    def _tensors(self, model: str, runtime: Scheduler, outputs: Outputs, wanted: list[RequestedOutput]
                 ) -> list[Tensor]:
        """The outputs asked for, in order; those asked as a classification as their top classes."""
        datatypes = {spec.name: spec.datatype for spec in runtime.outputs}
        tensors = []
        for w in wanted:
            if w.classification:
                labels = next((t.labels for t in self._registry.entry(model).config.outputs if t.name == w.name), ())
                data = classify(w.name, outputs[w.name], w.classification, labels, runtime.max_batch_size > 0)
                tensors.append(Tensor(w.name, "BYTES", data))
            elif w.shared is not None:  # into the client's shared memory; the answer says where
                tensors.append(self.shared_memory.write_output(Tensor(w.name, datatypes[w.name], outputs[w.name]),
                                                               w.shared))
            else:
                tensors.append(Tensor(w.name, datatypes[w.name], outputs[w.name]))
        return tensors

    def _resolve(self, request: InferRequest, signature: object) -> tuple[Scheduler, str]:
        """``signature``: the request's signature_name parameter (None: the default signature)."""
        if signature:
            return self._registry.get_signature(request.model_name, request.model_version, str(signature))
        return self._registry.get(request.model_name, request.model_version)

    async def infer_stream(self, request: InferRequest) -> AsyncGenerator[InferResponse, None]:
        """Every answer to one request as it comes: a decoupled model's zero, one or many (each
        ``final`` false; an error response is one of them, with ``error`` set), any other model's one
        (``final`` true). Closing the iterator early (the client went away) stops the model."""
        self._access.authorize_inference(request.credentials)
        async with contextlib.aclosing(self.run_stream(request)) as answers:
            async for answer in answers:
                yield answer

    async def run_stream(self, request: InferRequest) -> AsyncGenerator[InferResponse, None]:
        """``infer_stream`` without the credentials check: a model's request to another model (BLS),
        whose caller was checked when its own request came."""
        runtime, version = self._resolve(request, request.parameters.get("signature_name"))
        if not runtime.decoupled and not runtime.parts:
            yield await self.run_step(request)
            return
        start = time.perf_counter()
        deadline = start + request.timeout_us / 1e6 if request.timeout_us else None
        context = CallContext(deadline=deadline, cancelled=request.cancelled, priority=request.priority)
        outcome = "success"
        held = 0
        pinned = self.shared_memory.pin(request) if self.shared_memory.registered else []
        try:
            context.sequence = sequence_of(request.parameters)  # a stateful handler answers in parts too
            if any(t.shared is not None for t in request.inputs):
                held = await self.shared_memory.read_inputs(request.inputs)
            wanted = check_outputs(request, runtime)  # Triton checks the outputs asked for first
            arrays = check_inputs(request, runtime)
            if runtime.takes_request:
                _request_facts(context, request, wanted)
            async with contextlib.aclosing(runtime.infer_stream_async(arrays, context)) as answers:
                async for outputs in answers:
                    if ERROR_OUTPUT in outputs:  # an error response: one answer of the stream, which goes on
                        yield InferResponse(model_name=request.model_name, model_version=version, outputs=[],
                                            id=request.id, timings=context.timings, final=FINAL_OUTPUT in outputs,
                                            error=error_for(*read_error_answer(outputs[ERROR_OUTPUT])))
                        continue
                    tensors = self._tensors(request.model_name, runtime, outputs, wanted)
                    # a decoupled model's answers are each one of many, but for one sent with the
                    # final flag; a model answering in parts (a handler's intermediate answers)
                    # marks those before its last
                    final = FINAL_OUTPUT in outputs or (runtime.parts and INTERMEDIATE_OUTPUT not in outputs)
                    yield InferResponse(model_name=request.model_name, model_version=version, outputs=tensors,
                                        id=request.id, parameters=_response_parameters(outputs),
                                        timings=context.timings, final=final)
        except InferdError as exc:
            outcome = exc.code.value
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            if held:
                self.shared_memory.release(held)
            if pinned:
                self.shared_memory.unpin(pinned)
            if outcome == "success" and context.is_cancelled():  # the model stopped because the client left
                outcome = "cancelled"
            t = context.timings
            t.total = time.perf_counter() - start
            counts = self._version_counts(runtime, request.model_name, version)
            _count(counts.stats, runtime, outcome, t, 0.0, 0.0, None)
            if counts.metrics is not None:
                counts.metrics.request(request.protocol, outcome, t.total, t.queue, t.compute)

    def _generation(self, runtime: Scheduler, within: tuple[Scheduler, ...] = ()) -> str:
        """What made a version's answers, for the cache key: the loaded version itself, and for a
        composed model (an ensemble) the versions its steps' models serve now, so that an answer
        made before a step was reloaded is never served after it."""
        found = self._generations.get(runtime)
        if found is None:
            found = self._generations[runtime] = next(_GENERATIONS)
        parts = [str(found)]
        for name, version in runtime.composed_of:
            try:
                step, _ = self._registry.get(name, version)
            except InferdError:
                parts.append("-")  # not served now: its request fails, nothing is cached
                continue
            parts.append("-" if step in within else f"({self._generation(step, (*within, runtime))})")
        return ",".join(parts)

    def _version_counts(self, runtime: Scheduler, name: str, version: str) -> _VersionCounts:
        """The counts of the version ``runtime`` serves (a reload's new scheduler starts at zero,
        as Triton's statistics do after a reload; the metrics' counters go on)."""
        counts = self._counts.get(runtime)
        if counts is None:
            metrics = self._metrics.for_model(name, version) if self._metrics is not None else None
            counts = self._counts[runtime] = _VersionCounts(metrics)
        return counts

    # -- statistics ------------------------------------------------------------------------
    def statistics(self, name: str | None, version: str | None, credentials: str | None) -> list[ModelStatistics]:
        """Every loaded version's statistics (Triton's statistics extension): of all models, of
        one model (``name``), or of one version. An unknown model or version is NotFound; a known
        one that is not loaded has no rows."""
        self._access.authorize_inference(credentials, "reading statistics")
        return self.loaded_statistics(name, version)

    def loaded_statistics(self, name: str | None, version: str | None) -> list[ModelStatistics]:
        """``statistics`` without the credentials check (the composition root's, for /metrics)."""
        if name is None:
            names = sorted(self._registry.models)
        else:
            self._registry.entry(name)
            names = [name]
        rows = []
        for model in names:
            entry = self._registry.models.get(model)
            if entry is None:
                continue
            slots = entry.sorted_versions()
            if version is not None:
                slots = [slot for slot in slots if slot.version == version]
                if not slots:
                    raise NotFound(f"Request for unknown model: '{model}' version {version} is not found")
            for slot in slots:
                if slot.runtime is not None and slot.state is ModelState.READY:
                    rows.append(self._statistics(model, slot.version, slot.runtime))
        return rows

    def _statistics(self, name: str, version: str, runtime: Scheduler) -> ModelStatistics:
        counters = runtime.statistics()
        counts = self._counts.get(runtime)
        requests = counts.stats if counts is not None else RequestStatistics()
        return ModelStatistics(name=name, version=version,
                               inference_count=counters.inferences + requests.cached_rows,
                               execution_count=counters.executions, requests=requests,
                               batches=counters.batches, pending=counters.queued,
                               cached=self._cache is not None and self._registry.entry(name).config.response_cache)


# a failed request's outcome -> Triton's failure reason (metric_model_reporter.cc): a deadline that passed
# before it ran, a client that went away, the model raising; the rest (and an ensemble's own, as in
# Triton) are OTHER
_FAILURE_REASONS = {"deadline_exceeded": "REJECTED", "cancelled": "CANCELED", "model_failed": "BACKEND"}


def _count_hit(stats: RequestStatistics, runtime: Scheduler, t: Timings, cache_s: float, outputs: Outputs) -> None:
    stats.success.add(t.total)
    stats.cache_hit.add(cache_s)
    batched = runtime.max_batch_size > 0 and outputs
    stats.cached_rows += next(iter(outputs.values())).shape[0] if batched else 1
    stats.last_inference_ms = int(time.time() * 1000)


def _count(stats: RequestStatistics, runtime: Scheduler, outcome: str, t: Timings, input_s: float,
           output_s: float, cache_s: float | None, requests: int = 1) -> None:
    """One request, or ``requests`` that went through together: each waited and ran as long
    (success, queue, compute_infer), and the checking and gathering done once is theirs."""
    if outcome != "success":
        stats.fail.add(t.total * requests, requests)
        reason = "OTHER" if runtime.composed_of else _FAILURE_REASONS.get(outcome, "OTHER")
        stats.failures[reason] = stats.failures.get(reason, 0) + requests
        return
    stats.count_success(t.total, t.queue, input_s, t.compute, output_s, requests)
    if cache_s is not None:
        stats.cache_miss.add(cache_s)
    stats.last_inference_ms = int(time.time() * 1000)


def _metadata(name: str, versions: tuple[str, ...], runtime: Scheduler) -> ModelMetadata:
    return ModelMetadata(name=name, versions=versions, platform=runtime.platform, inputs=runtime.inputs,
                         outputs=runtime.outputs, max_batch_size=runtime.max_batch_size,
                         signature_def=runtime.signature_def, stateful=runtime.stateful)


def _rows(request: InferRequest) -> int:
    """A batched request's rows (its first input's dim 0)."""
    first = request.inputs[0].data if request.inputs else None
    return int(first.shape[0]) if first is not None and first.ndim else 0


def _check_rows(model: str, tensors: list[Tensor], rows: int) -> None:
    for tensor in tensors:
        if tensor.data.ndim == 0 or tensor.data.shape[0] != rows:
            raise ModelError(f"model '{model}' returned output '{tensor.name}' with shape {list(tensor.data.shape)} "
                             f"for a batch of {rows} rows; dim 0 must be the batch")


def _cached(outputs: Outputs, wanted: list[RequestedOutput]) -> Outputs:
    """What the response cache keeps of an answer: the outputs asked for, then its parameters."""
    kept = {w.name: outputs[w.name] for w in wanted}
    if PARAMETERS_OUTPUT in outputs:
        kept[PARAMETERS_OUTPUT] = outputs[PARAMETERS_OUTPUT]
    return kept


def _response_parameters(outputs: Outputs) -> dict[str, Any]:
    """The parameters a model gave its response (``PARAMETERS_OUTPUT``), for the client."""
    if PARAMETERS_OUTPUT not in outputs:
        return {}
    parameters: dict[str, Any] = json.loads(bytes(outputs[PARAMETERS_OUTPUT][0]))
    return parameters


def _request_facts(context: CallContext, request: InferRequest, wanted: list[RequestedOutput]) -> None:
    context.parameters = request.parameters
    context.outputs = tuple(w.name for w in wanted)
    context.request_id = request.id or ""
    context.timeout_us = request.timeout_us or 0
