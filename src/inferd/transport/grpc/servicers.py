"""gRPC methods: each decodes with a protocol codec, calls the core, encodes.

Services are registered by name (``inference.GRPCInferenceService``, ...), with inferd's own
message classes as (de)serializers: the service and method names are what travel on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any, ClassVar, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from inferd.core import Core, shared_memory
from inferd.errors import (
    ErrorCode,
    Forbidden,
    InferdError,
    InvalidInput,
    ModelError,
    NotFound,
    ServableNotFound,
    Unauthenticated,
)
from inferd.observability.tracing import RequestTrace
from inferd.protocols import kserve_v2, kserve_v2_extensions, kserve_v2_grpc, tfserving, tfserving_examples
from inferd.protocols._proto import kserve_v2_pb2 as pb
from inferd.protocols._proto import tfserving_pb2 as tfs
from inferd.transport.grpc.errors import status_for
from inferd.transport.offload import OFF_LOOP_BYTES, off_loop
from inferd.transport.restrictions import Restriction
from inferd.types import InferRequest, InferResponse, RequestedOutput, Tensor

log = logging.getLogger("inferd.grpc")

Context = grpc.aio.ServicerContext[Any, Any]


def message_size(request: Message, context: Context) -> int:
    """The request's size on the wire, which decides whether decoding it leaves the loop. inferd's
    own server knows it; ``ByteSize()`` (grpcio's server) serializes the message again to count:
    14 ms of the loop for a 4 MB tensor."""
    size = getattr(context, "message_size", None)
    return request.ByteSize() if size is None else int(size)


class Turn:
    """One request's place on its stream: it takes its room in the byte budget, decodes and enters
    the data plane only after the request before it entered, so one sequence's requests reach the
    sequence batcher in the order they came even when an earlier one is slower to decode or find
    room (Triton's stream keeps that order); their models still run at once."""

    __slots__ = ("_before", "_entered")

    def __init__(self, before: asyncio.Event | None) -> None:
        self._before = before
        self._entered = asyncio.Event()

    async def wait(self) -> None:
        if self._before is not None:
            await self._before.wait()
            self._before = None

    def entered(self) -> None:
        """This request reached the data plane, or never will: the next one may go."""
        self._entered.set()


class StreamTurns:
    """Hands each request of one stream its turn, in arrival order (called before any await)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: asyncio.Event | None = None

    def next(self) -> Turn:
        turn = Turn(self._last)
        self._last = turn._entered
        return turn


def decode_work(request: pb.ModelInferRequest, context: Context) -> int:
    """What decoding reads one by one: typed contents and BYTES elements are parsed, raw numbers
    only copied (about an eighth of the cost per byte: 42 us for a 602 KB image here)."""
    size = message_size(request, context)
    if size <= OFF_LOOP_BYTES:  # decoded here whatever it holds: nothing more to weigh
        return size
    if request.raw_input_contents and all(tensor.datatype != "BYTES" for tensor in request.inputs):
        return size // 8
    return size

Req = TypeVar("Req", bound=Message)
Answer = Message | kserve_v2_grpc.InferAnswer  # what a method answers: anything with SerializeToString()
Resp = TypeVar("Resp", bound=Answer)
Method = Callable[[Req, Context], Awaitable[Resp]]
# method name -> (the bound method, its request message class)
Methods = dict[str, tuple[Callable[[Any, Context], Awaitable[Answer]], type[Message]]]
# bidirectional: method name -> (each request message's answers, the request message class)
StreamMethods = dict[str, tuple[Callable[[Any, Context], AsyncGenerator[Message, None]], type[Message]]]


class Servicer(Protocol):
    name: str

    def methods(self) -> Methods: ...

    def streams(self) -> StreamMethods: ...


def guarded(method: Callable[[Any, Req, Context], Awaitable[Resp]]
            ) -> Callable[[Any, Req, Context], Awaitable[Resp]]:
    """InferdError -> the matching status code with its message; anything else -> INTERNAL."""

    @functools.wraps(method)
    async def call(self: Any, request: Req, context: Context) -> Resp:
        try:
            return await method(self, request, context)
        except InferdError as exc:
            code = status_for(exc.code)
            if code is grpc.StatusCode.INTERNAL:  # a model's failure: the server's log keeps what raised it
                log.error("%s answered INTERNAL: %s", method.__name__, exc.message, exc_info=exc)
            await context.abort(code, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("internal error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    return call


# Triton's API group of each gRPC method, which --grpc-restricted-protocol restricts
RESTRICTED_GROUPS = {
    "/inference.GRPCInferenceService/" + rpc: api
    for api, rpcs in (
        ("health", ("ServerLive", "ServerReady", "ModelReady")),
        ("metadata", ("ServerMetadata", "ModelMetadata")),
        ("inference", ("ModelInfer", "ModelStreamInfer")),
        ("model-repository", ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")),
        ("statistics", ("ModelStatistics",)),
        ("model-config", ("ModelConfig",)),
        ("logging", ("LogSettings",)),
        ("trace", ("TraceSetting",)),
        ("shared-memory", ("SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
                           "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister")),
    )
    for rpc in rpcs
} | {"/grpc.health.v1.Health/Check": "health"}


def restricted_paths(restrictions: tuple[Restriction, ...]) -> dict[str, Restriction]:
    """Method path -> its group's restriction, for the groups restricted."""
    by_api = {restriction.api: restriction for restriction in restrictions}
    return {path: by_api[api] for path, api in RESTRICTED_GROUPS.items() if api in by_api}


def restriction_refusal(restriction: Restriction) -> str:
    """Triton's words when a call lacks the restriction's metadata (with status UNAVAILABLE)."""
    return f"This protocol is restricted, expecting header '{restriction.header}'"


def _authorization(context: Context) -> str | None:
    return _metadata(context, "authorization")


def _metadata(context: Context, name: str) -> str | None:
    header = getattr(context, "header", None)  # inferd's own server reads it without copying the metadata
    if header is not None:
        found: str | None = header(name)
        return found
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return str(value)
    return None


def _end_stream_on_errors(context: Context) -> bool:
    """Triton's grpc error mode: a stream opened with metadata ``triton_grpc_error: true`` ends
    with a model error's status instead of carrying it as an ``error_message`` and going on."""
    return _metadata(context, "triton_grpc_error") == "true"


def _as_inferd_error(error: Exception) -> InferdError:
    """A decoupled model's error response as the error it stands for (INTERNAL unless it says)."""
    return error if isinstance(error, InferdError) else ModelError(kserve_v2_grpc.error_message(error))


class KServeV2Servicer:
    """``inference.GRPCInferenceService``."""

    name = "inference.GRPCInferenceService"

    def __init__(self, core: Core, forward: re.Pattern[str] | None = None) -> None:
        self.data = core.data
        self.control = core.control
        self.tracer = core.tracer
        # --grpc-header-forward-pattern: metadata that becomes request parameters
        self.forward = forward

    def _bind_call(self, infer_request: InferRequest, context: Context) -> None:
        """What an infer request takes from its call: whether the client went away, its credentials,
        and the metadata --grpc-header-forward-pattern makes parameters."""
        infer_request.cancelled = context.cancelled
        infer_request.credentials = _metadata(context, "authorization")
        if self.forward is not None:
            kserve_v2.forward_headers(infer_request.parameters, context.invocation_metadata() or (), self.forward)

    # RPC name -> (method, request message): also what Ray Serve's gRPC proxy registers
    RPCS: ClassVar[dict[str, tuple[str, type[Message]]]] = {
        "ServerLive": ("server_live", pb.ServerLiveRequest),
        "ServerReady": ("server_ready", pb.ServerReadyRequest),
        "ModelReady": ("model_ready", pb.ModelReadyRequest),
        "ServerMetadata": ("server_metadata", pb.ServerMetadataRequest),
        "ModelMetadata": ("model_metadata", pb.ModelMetadataRequest),
        "ModelInfer": ("model_infer", pb.ModelInferRequest),
        "RepositoryIndex": ("repository_index", pb.RepositoryIndexRequest),
        "RepositoryModelLoad": ("load", pb.RepositoryModelLoadRequest),
        "RepositoryModelUnload": ("unload", pb.RepositoryModelUnloadRequest),
        "ModelStatistics": ("statistics", pb.ModelStatisticsRequest),
        "ModelConfig": ("model_config", pb.ModelConfigRequest),
        "LogSettings": ("log_settings", pb.LogSettingsRequest),
        "TraceSetting": ("trace_setting", pb.TraceSettingRequest),
        "SystemSharedMemoryStatus": ("shared_memory_status", pb.SystemSharedMemoryStatusRequest),
        "SystemSharedMemoryRegister": ("register_shared_memory", pb.SystemSharedMemoryRegisterRequest),
        "SystemSharedMemoryUnregister": ("unregister_shared_memory", pb.SystemSharedMemoryUnregisterRequest),
        "CudaSharedMemoryStatus": ("cuda_shared_memory_status", pb.CudaSharedMemoryStatusRequest),
        "CudaSharedMemoryRegister": ("register_cuda_shared_memory", pb.CudaSharedMemoryRegisterRequest),
        "CudaSharedMemoryUnregister": ("unregister_cuda_shared_memory", pb.CudaSharedMemoryUnregisterRequest),
    }

    def methods(self) -> Methods:
        return {rpc: (getattr(self, method), request) for rpc, (method, request) in self.RPCS.items()}

    def streams(self) -> StreamMethods:
        """Bidirectional methods: each request message's answers, as they come."""
        return {"ModelStreamInfer": (self.model_stream_infer, pb.ModelInferRequest)}

    async def model_stream_infer(self, request: pb.ModelInferRequest, context: Context
                                 ) -> AsyncGenerator[pb.ModelStreamInferResponse, None]:
        """One request of a ModelStreamInfer stream: its answers, or its error as a message on the
        stream (the stream goes on, as Triton's does; with ``triton_grpc_error: true`` a model's
        error ends the stream with its status instead); a caller without access ends the stream
        with UNAUTHENTICATED / PERMISSION_DENIED, as the unary calls answer. A transport that keeps
        the stream's order gives each request its ``turn`` on the context."""
        turn: Turn | None = getattr(context, "turn", None)
        end_on_errors, running = _end_stream_on_errors(context), False
        try:
            infer_request = await off_loop(decode_work(request, context), kserve_v2_grpc.decode_infer_request,
                                          request)
            self._bind_call(infer_request, context)
            final = False
            if turn is not None:
                await turn.wait()
            running = True
            async with contextlib.aclosing(self.data.infer_stream(infer_request)) as answers:
                # its first step (up to the scheduler's queue) runs before the next request's
                first = asyncio.ensure_future(anext(answers, None))
                if turn is not None:
                    turn.entered()
                response = await first
                while response is not None:
                    final = response.final
                    if response.error is not None and end_on_errors:
                        raise _as_inferd_error(response.error)  # ends the stream below
                    yield kserve_v2_grpc.encode_stream_response(response)
                    response = await anext(answers, None)
            if not final and infer_request.parameters.get(kserve_v2_grpc.EMPTY_FINAL) is True:
                yield kserve_v2_grpc.stream_final_response(infer_request)
        except (Unauthenticated, Forbidden) as exc:  # the caller, not one request: the stream ends with it
            await context.abort(status_for(exc.code), exc.message)
        except InferdError as exc:
            if turn is not None:
                turn.entered()  # before its error waits to be sent
            if exc.code is ErrorCode.MODEL_FAILED:  # an INTERNAL answer: the log keeps what raised it
                log.error("ModelStreamInfer: %s", exc.message, exc_info=exc)
            if running and end_on_errors:  # a model's error, as Triton's grpc error mode ends the stream
                await context.abort(status_for(exc.code), exc.message)
            yield kserve_v2_grpc.stream_error(exc.message)
        except Exception as exc:
            if turn is not None:
                turn.entered()
            log.exception("internal error in ModelStreamInfer")
            yield kserve_v2_grpc.stream_error(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if turn is not None:
                turn.entered()

    @guarded
    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.data.live())

    @guarded
    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.data.ready())

    @guarded
    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        version = request.version or None
        ready = self.data.is_model_ready(request.name, version, _authorization(context))
        return pb.ModelReadyResponse(ready=ready and await self.data.model_says_ready(request.name, version))

    @guarded
    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context
                              ) -> pb.ServerMetadataResponse:
        meta = self.data.server_metadata(_authorization(context))
        return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)

    @guarded
    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context
                             ) -> pb.ModelMetadataResponse:
        metadata = self.data.model_metadata(request.name, request.version or None, _authorization(context))
        return kserve_v2_grpc.encode_model_metadata(metadata)

    @guarded
    async def model_infer(self, request: pb.ModelInferRequest, context: Context) -> kserve_v2_grpc.InferAnswer:
        if self.tracer.active:  # all that tracing costs a request while it is off
            trace = self.tracer.sample(request.model_name)
            if trace is not None:
                return await self._model_infer_traced(request, context, trace)
        infer_request = await off_loop(decode_work(request, context), kserve_v2_grpc.decode_infer_request,
                                          request)
        self._bind_call(infer_request, context)
        response = await self.data.infer(infer_request)
        return kserve_v2_grpc.encode_infer_answer(response)  # its raw contents uncopied until sent

    async def _model_infer_traced(self, request: pb.ModelInferRequest, context: Context, trace: RequestTrace
                                  ) -> kserve_v2_grpc.InferAnswer:
        """``model_infer`` for a request the tracer sampled. GRPC_WAITREAD_START: the call's HEADERS
        came (grpcio's server does not say: then, like _END, when this method got the message)."""
        now = time.perf_counter()
        opened = getattr(context, "opened", None)
        trace.stamp("GRPC_WAITREAD_START", opened() if opened is not None else now)
        trace.stamp("GRPC_WAITREAD_END", now)
        try:
            infer_request = await off_loop(decode_work(request, context), kserve_v2_grpc.decode_infer_request,
                                           request)
            self._bind_call(infer_request, context)
            response = await self.data.infer(infer_request, trace)
            if trace.wants_tensors:
                trace.tensors(((t.name, t.datatype, t.data) for t in infer_request.inputs),
                              ((t.name, t.datatype, t.data) for t in response.outputs))
            return kserve_v2_grpc.encode_infer_answer(response)
        finally:
            self.tracer.finish_soon(trace, "GRPC", time.perf_counter())

    @guarded
    async def repository_index(self, request: pb.RepositoryIndexRequest, context: Context
                               ) -> pb.RepositoryIndexResponse:
        rows = self.control.repository_index(_authorization(context), ready_only=request.ready)
        return kserve_v2_extensions.index_message(rows)

    @guarded
    async def load(self, request: pb.RepositoryModelLoadRequest, context: Context
                   ) -> pb.RepositoryModelLoadResponse:
        override = kserve_v2_extensions.load_override_message(request)
        await self.control.load(request.model_name, _authorization(context), override)
        return pb.RepositoryModelLoadResponse()

    @guarded
    async def statistics(self, request: pb.ModelStatisticsRequest, context: Context
                         ) -> pb.ModelStatisticsResponse:
        rows = self.data.statistics(request.name or None, request.version or None, _authorization(context))
        return kserve_v2_extensions.statistics_message(rows)

    @guarded
    async def log_settings(self, request: pb.LogSettingsRequest, context: Context) -> pb.LogSettingsResponse:
        changes = kserve_v2_extensions.log_settings_changes(request)
        who = _authorization(context)
        values = self.data.update_log_settings(changes, who) if changes else self.data.log_settings(who)
        return kserve_v2_extensions.log_settings_message(values)

    @guarded
    async def trace_setting(self, request: pb.TraceSettingRequest, context: Context) -> pb.TraceSettingResponse:
        """Triton's trace extension: no settings in the request reads them; a value list left
        empty clears one."""
        changes = kserve_v2_extensions.trace_settings_changes(request)
        model, who = request.model_name or None, _authorization(context)
        values = (self.data.update_trace_settings(model, changes, who) if changes
                  else self.data.trace_settings(model, who))
        return kserve_v2_extensions.trace_settings_message(values)

    # Triton's shared-memory extension (system regions; off unless --allow-client-shm)
    @guarded
    async def shared_memory_status(self, request: pb.SystemSharedMemoryStatusRequest, context: Context
                                   ) -> pb.SystemSharedMemoryStatusResponse:
        rows = self.data.shared_memory_status(request.name or None, _authorization(context))
        return kserve_v2_extensions.shared_memory_status_message(rows)

    @guarded
    async def register_shared_memory(self, request: pb.SystemSharedMemoryRegisterRequest, context: Context
                                     ) -> pb.SystemSharedMemoryRegisterResponse:
        self.data.register_shared_memory(request.name, request.key, request.offset, request.byte_size,
                                         _authorization(context))
        return pb.SystemSharedMemoryRegisterResponse()

    @guarded
    async def unregister_shared_memory(self, request: pb.SystemSharedMemoryUnregisterRequest, context: Context
                                       ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.data.unregister_shared_memory(request.name or None, _authorization(context))
        return pb.SystemSharedMemoryUnregisterResponse()

    @guarded
    async def cuda_shared_memory_status(self, request: pb.CudaSharedMemoryStatusRequest, context: Context
                                        ) -> pb.CudaSharedMemoryStatusResponse:
        self.data.authorize(_authorization(context), "reading shared memory status")
        kserve_v2_extensions.cuda_shared_memory_status(request.name or None)  # none is ever held
        return pb.CudaSharedMemoryStatusResponse()

    @guarded
    async def register_cuda_shared_memory(self, request: pb.CudaSharedMemoryRegisterRequest, context: Context
                                          ) -> pb.CudaSharedMemoryRegisterResponse:
        self._shared_memory_allowed(context)
        raise kserve_v2_extensions.cuda_shared_memory_refusal(request.name)

    @guarded
    async def unregister_cuda_shared_memory(self, request: pb.CudaSharedMemoryUnregisterRequest, context: Context
                                            ) -> pb.CudaSharedMemoryUnregisterResponse:
        self._shared_memory_allowed(context)
        return pb.CudaSharedMemoryUnregisterResponse()

    def _shared_memory_allowed(self, context: Context) -> None:
        self.data.authorize(_authorization(context), "changing shared memory")
        if not self.data.shared_memory_allowed():
            raise InvalidInput(shared_memory.DISABLED)

    @guarded
    async def model_config(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        served = self.control.model_config(request.name, request.version or None, _authorization(context))
        return kserve_v2_extensions.config_message(served)

    @guarded
    async def unload(self, request: pb.RepositoryModelUnloadRequest, context: Context
                     ) -> pb.RepositoryModelUnloadResponse:
        dependents = kserve_v2_extensions.unload_dependents_message(request)
        await self.control.unload(request.model_name, _authorization(context), dependents)
        return pb.RepositoryModelUnloadResponse()


class _TFServingBase:
    # RPC name -> (method, request message): also what Ray Serve's gRPC proxy registers
    RPCS: ClassVar[dict[str, tuple[str, type[Message]]]] = {}

    def methods(self) -> Methods:
        return {rpc: (getattr(self, method), request) for rpc, (method, request) in self.RPCS.items()}

    def streams(self) -> StreamMethods:
        return {}

    def __init__(self, core: Core) -> None:
        self.data = core.data

    def _version(self, spec: tfs.ModelSpec, context: Context) -> str | None:
        """The version a ModelSpec names, its label resolved; a spec without a name is refused first."""
        if not spec.name:
            raise InvalidInput("ModelSpec has no name specified.")
        version, label = tfserving.model_spec_version(spec)
        if label is not None:
            return self.data.resolve_label(spec.name, label, _authorization(context))
        return version


def tf_guarded(method: Callable[[Any, Req, Context], Awaitable[Resp]]
               ) -> Callable[[Any, Req, Context], Awaitable[Resp]]:
    """``guarded``, with a missing ModelSpec refused and an unknown model or version worded as TF
    Serving words them."""

    @functools.wraps(method)
    async def call(self: Any, request: Req, context: Context) -> Resp:
        if not request.HasField("model_spec"):
            raise InvalidInput("Missing ModelSpec")
        try:
            return await method(self, request, context)
        except ServableNotFound as exc:
            spec = getattr(request, "model_spec", None)
            if spec is None:
                raise
            version, _ = tfserving.model_spec_version(spec)
            raise tfserving.servable_not_found(spec.name, version, exc) from None

    return guarded(call)


class PredictionServicer(_TFServingBase):
    """``tensorflow.serving.PredictionService``: Predict, Classify, Regress, MultiInference and
    GetModelMetadata."""

    name = "tensorflow.serving.PredictionService"
    RPCS: ClassVar[dict[str, tuple[str, type[Message]]]] = {
        "Predict": ("predict", tfs.PredictRequest),
        "Classify": ("classify", tfs.ClassificationRequest),
        "Regress": ("regress", tfs.RegressionRequest),
        "MultiInference": ("multi_inference", tfs.MultiInferenceRequest),
        "GetModelMetadata": ("get_model_metadata", tfs.GetModelMetadataRequest),
    }

    @tf_guarded
    async def predict(self, request: tfs.PredictRequest, context: Context) -> tfs.PredictResponse:
        spec = request.model_spec
        inputs = await off_loop(message_size(request, context), _decode_tensors, request)
        outputs = _output_filter(request.output_filter) or None
        params = {"signature_name": spec.signature_name} if spec.signature_name else {}
        try:
            response = await self.data.infer(InferRequest(
                spec.name, self._version(spec, context), inputs, outputs=outputs, parameters=params,
                protocol=tfserving.PROTOCOL_GRPC, cancelled=context.cancelled, credentials=_authorization(context)))
        except ServableNotFound:
            raise
        except NotFound as exc:  # past the servable, only the signature can be missing: TF's FAILED_PRECONDITION
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"Serving signature key \"{spec.signature_name}\" not found. ({exc.message})")
        return tfserving.encode_predict_response(response, spec)

    async def _run_examples(self, name: str, version: str | None, signature_name: str, examples: Any, method: str,
                            context: Context) -> tuple[InferResponse, str]:
        """Run one classify or regress task; (the answer, the signature that ran)."""
        signatures = self.data.signature_metadata(name, version, _authorization(context))
        signature = signature_name or next(iter(signatures))
        if signature not in signatures:
            raise tfserving.signature_not_found(signature, method, signatures)
        request = tfserving_examples.examples_request(name, version, signature, signatures[signature],
                                                       examples, method, rest=False)
        request.cancelled, request.credentials = context.cancelled, _authorization(context)
        return await self.data.infer(request), signature

    @tf_guarded
    async def classify(self, request: tfs.ClassificationRequest, context: Context
                       ) -> tfs.ClassificationResponse:
        examples = tfserving_examples.serialized_examples(request.input)
        spec = request.model_spec
        response, signature = await self._run_examples(spec.name, self._version(spec, context), spec.signature_name,
                                                       examples, tfserving.CLASSIFY_METHOD, context)
        answer = tfs.ClassificationResponse()
        answer.result.CopyFrom(tfserving_examples.classification_result(response, len(examples)))
        tfserving_examples.fill_model_spec(answer.model_spec, request.model_spec.name, signature,
                                           response.model_version)
        return answer

    @tf_guarded
    async def regress(self, request: tfs.RegressionRequest, context: Context) -> tfs.RegressionResponse:
        examples = tfserving_examples.serialized_examples(request.input)
        spec = request.model_spec
        response, signature = await self._run_examples(spec.name, self._version(spec, context), spec.signature_name,
                                                       examples, tfserving.REGRESS_METHOD, context)
        answer = tfs.RegressionResponse()
        answer.result.CopyFrom(tfserving_examples.regression_result(response, len(examples)))
        tfserving_examples.fill_model_spec(answer.model_spec, request.model_spec.name, signature,
                                           response.model_version)
        return answer

    @guarded
    async def multi_inference(self, request: tfs.MultiInferenceRequest, context: Context
                              ) -> tfs.MultiInferenceResponse:
        if not request.tasks:
            raise InvalidInput("a MultiInferenceRequest needs at least one task")
        first = request.tasks[0].model_spec
        try:
            return await self._multi_inference(request, context)
        except ServableNotFound as exc:
            raise tfserving.servable_not_found(first.name, tfserving.model_spec_version(first)[0], exc) from None

    async def _multi_inference(self, request: tfs.MultiInferenceRequest, context: Context
                               ) -> tfs.MultiInferenceResponse:
        """Every task runs on the servable the first task's ModelSpec names (its version or label), as
        in TF Serving; the other tasks' versions are not read. The tasks are checked once that
        servable is found (multi_inference_helper.cc:53-57 at 9d981c5c)."""
        first = request.tasks[0].model_spec
        version = self._version(first, context)
        known = self.data.signature_metadata(first.name, version, _authorization(context))
        methods = [tfserving_examples.task_method(task, first.name) for task in request.tasks]
        signatures = [task.model_spec.signature_name or next(iter(known)) for task in request.tasks]
        repeated = next((name for i, name in enumerate(signatures) if name in signatures[:i]), None)
        if repeated is not None:
            raise InvalidInput(f"Duplicate evaluation of signature: {repeated}")
        missing = next((name for name in signatures if name not in known), None)
        if missing is not None:  # multi_inference.cc:65-70
            raise InvalidInput(f"Requested signature not found in model graph: {missing}")
        examples = tfserving_examples.serialized_examples(request.input)
        answer = tfs.MultiInferenceResponse()
        for signature_name, method in zip(signatures, methods, strict=True):
            response, signature = await self._run_examples(first.name, version, signature_name, examples, method,
                                                           context)
            version = response.model_version  # the version the first task ran on runs the others
            result = answer.results.add()
            if method == tfserving.CLASSIFY_METHOD:
                result.classification_result.CopyFrom(
                    tfserving_examples.classification_result(response, len(examples)))
            else:
                result.regression_result.CopyFrom(tfserving_examples.regression_result(response, len(examples)))
            tfserving_examples.fill_model_spec(result.model_spec, first.name, signature, response.model_version)
        return answer

    @tf_guarded
    async def get_model_metadata(self, request: tfs.GetModelMetadataRequest, context: Context
                                 ) -> tfs.GetModelMetadataResponse:
        spec = request.model_spec
        if not request.metadata_field:
            raise InvalidInput("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise InvalidInput(f"Metadata field {field} is not supported")
        credentials = _authorization(context)
        version = self.data.model_metadata(spec.name, self._version(spec, context), credentials).versions[-1]
        signatures = self.data.signature_metadata(spec.name, version, credentials)
        return tfserving.encode_model_metadata(spec.name, version, signatures)


def _output_filter(names: Iterable[str]) -> list[RequestedOutput]:
    outputs: dict[str, RequestedOutput] = {}
    for name in names:
        if name in outputs:
            raise InvalidInput(f"duplicate output tensor alias: {name}")
        outputs[name] = RequestedOutput(name)
    return list(outputs.values())


def _decode_tensors(request: tfs.PredictRequest) -> list[Tensor]:
    return [tfserving.decode_tensor(name, proto) for name, proto in sorted(request.inputs.items())]


class ModelServicer(_TFServingBase):
    """``tensorflow.serving.ModelService``: GetModelStatus and HandleReloadConfigRequest."""

    name = "tensorflow.serving.ModelService"
    RPCS: ClassVar[dict[str, tuple[str, type[Message]]]] = {
        "GetModelStatus": ("get_model_status", tfs.GetModelStatusRequest),
        "HandleReloadConfigRequest": ("handle_reload_config_request", tfs.ReloadConfigRequest)}

    def __init__(self, core: Core) -> None:
        super().__init__(core)
        self.control = core.control

    @guarded
    async def handle_reload_config_request(self, request: tfs.ReloadConfigRequest, context: Context
                                           ) -> tfs.ReloadConfigResponse:
        """A new model_config_list, applied as model control (authorized as every change). TF Serving
        answers a failure as the call's status (model_service_impl.cc:71-83), so only that travels."""
        failed = await self.control.reload_model_config(request.config, _authorization(context))
        if failed:
            await context.abort(grpc.StatusCode.UNKNOWN, tfserving.models_not_available(failed))
        return tfserving.reload_config_response(list(request.metric_names))

    @tf_guarded
    async def get_model_status(self, request: tfs.GetModelStatusRequest, context: Context
                               ) -> tfs.GetModelStatusResponse:
        spec = request.model_spec
        version, _ = tfserving.model_spec_version(spec)  # TF Serving ignores a label here: every version
        try:
            states = self.data.version_states(spec.name, version, _authorization(context))
        except NotFound:
            raise tfserving.status_not_found(spec.name, version) from None
        return tfserving.encode_model_status(states)
