"""TorchServe's gRPC APIs: ``org.pytorch.serve.grpc.inference.InferenceAPIsService`` (Ping, Predictions,
StreamPredictions, StreamPredictions2) and ``...management.ManagementAPIsService`` (RegisterModel,
UnregisterModel, ScaleWorker, SetDefault, ListModels, DescribeModel), over the same core as TorchServe's
REST doors.

A prediction's ``input`` map reaches a handler as a form's fields do (``{"data": bytearray}``);
management answers are TorchServe's JSON in ``ManagementResponse.msg``, pretty-printed as its server
writes them. A prediction's error has the status TorchServe's InferenceImpl and GRPCJob give it
(``_torchserve_error``): the call's status on Predictions and StreamPredictions, a ``status`` on the
stream (which goes on) on StreamPredictions2. Management errors: NOT_FOUND for an unknown model or
version, PERMISSION_DENIED for registering with the model API off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import grpc
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from inferd.core import Core
from inferd.core.torchserve import RegisterRequest
from inferd.errors import Forbidden, InferdError, InvalidInput, ModelError, NotFound, Unauthenticated, Unavailable
from inferd.protocols import torchserve
from inferd.protocols._proto import torchserve_pb2 as ts
from inferd.transport.grpc.errors import status_for
from inferd.transport.grpc.servicers import Context, Methods, StreamMethods, Turn, _authorization, guarded
from inferd.types import InferResponse, ModelState, VersionDescription

log = logging.getLogger("inferd.grpc")
INFERENCE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
MANAGEMENT = "org.pytorch.serve.grpc.management.ManagementAPIsService"

# GRPCUtils.getGRPCStatusCode: the status a handler's or worker's HTTP code becomes
_GRPC_FOR_HTTP = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                  403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
                  409: grpc.StatusCode.ABORTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                  416: grpc.StatusCode.OUT_OF_RANGE, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
                  499: grpc.StatusCode.CANCELLED, 501: grpc.StatusCode.UNIMPLEMENTED,
                  503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
# ErrorInfo reasons on StreamPredictions2: the Java exception TorchServe names
_BAD_REQUEST = "BadRequestException.()"
_WORKER_ERROR = "org.pytorch.serve.http.InternalServerException"
_NO_WORKER = "InternalServerException.()"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def grpc_status_for_http(status: int) -> grpc.StatusCode:
    """TorchServe's gRPC status for an HTTP status code (its GRPCUtils.getGRPCStatusCode)."""
    if status in _GRPC_FOR_HTTP:
        return _GRPC_FOR_HTTP[status]
    if 200 <= status < 300:
        return grpc.StatusCode.OK
    if 400 <= status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL if 500 <= status < 600 else grpc.StatusCode.UNKNOWN


class _Refused(InferdError):
    """A prediction TorchServe refuses with a status of its own choosing (not ErrorCode's)."""

    def __init__(self, status: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


def _no_worker(name: str, version: str | None) -> str:
    """TorchServe's words when a model cannot take the job (no worker, its queue full), its
    misplaced quote after a version included."""
    where = f'Model "{name}' + (f'" Version {version}' if version is not None else "")
    return (f'{where}" has no worker to serve inference request. Please use scale workers API to add workers. '
            "If this is a sequence inference, please check if it is closed, or expired; or exceeds "
            "maxSequenceJobQueueSize")


def _torchserve_error(exc: InferdError, name: str, version: str | None) -> tuple[grpc.StatusCode, str, str]:
    """(status, message, ErrorInfo reason) of a failed prediction, as TorchServe gives them: its own
    refusals as they are; a model that cannot take the job INTERNAL; a model that raised, or a
    handler's error status, by TorchServe's table of HTTP codes; inferd's other errors by its own."""
    if isinstance(exc, _Refused):
        return exc.status, exc.message, exc.reason
    if isinstance(exc, Unavailable):
        return grpc.StatusCode.INTERNAL, _no_worker(name, version), _NO_WORKER
    if isinstance(exc, ModelError):  # the server's log keeps what raised it
        log.error("TorchServe prediction of model '%s' failed: %s", name, exc.message, exc_info=exc)
        return grpc_status_for_http(torchserve.failure_status(exc)), exc.message, _WORKER_ERROR
    return status_for(exc.code), exc.message, type(exc).__name__


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2)


class TorchServeInferenceServicer:
    name = INFERENCE
    RPCS: ClassVar[dict[str, tuple[str, type[Message]]]] = {
        "Ping": ("ping", empty_pb2.Empty), "Predictions": ("predictions", ts.PredictionsRequest)}

    def __init__(self, core: Core) -> None:
        self.data = core.data
        self.control = core.control
        self.keys = torchserve.SequenceHeaders(*core.control.torchserve_sequence_headers)

    def methods(self) -> Methods:
        return {rpc: (getattr(self, method), request) for rpc, (method, request) in self.RPCS.items()}

    def streams(self) -> StreamMethods:
        return {"StreamPredictions": (self.stream_predictions, ts.PredictionsRequest),
                "StreamPredictions2": (self.stream_predictions2, ts.PredictionsRequest)}

    @guarded
    async def ping(self, request: empty_pb2.Empty, context: Context) -> ts.TorchServeHealthResponse:
        self.control.authorize_door(_authorization(context), "inference")  # TorchServe's interceptor checks all
        return ts.TorchServeHealthResponse(health=_pretty({"status": "Healthy" if self.data.ready() else "Unhealthy"}))

    @guarded
    async def predictions(self, request: ts.PredictionsRequest, context: Context) -> ts.PredictionResponse:
        """The handler's last answer (its intermediate ones go out over StreamPredictions only)."""
        last = ts.PredictionResponse()
        try:
            async for answer in self._answers(request, context):
                last = answer
        except InferdError as exc:
            await _abort(context, exc, request)
        return last

    async def stream_predictions(self, request: ts.PredictionsRequest, context: Context
                                 ) -> AsyncGenerator[ts.PredictionResponse, None]:
        try:
            async for answer in self._answers(request, context):
                yield answer
        except InferdError as exc:  # the status line is the call's, as a unary call's error
            await _abort(context, exc, request)

    async def stream_predictions2(self, request: ts.PredictionsRequest, context: Context
                                  ) -> AsyncGenerator[ts.PredictionResponse, None]:
        """One request of a StreamPredictions2 stream (TorchServe's stateful sequences): its answers,
        or its error as a ``status`` on the stream, which goes on. The stream's requests reach the
        model in the order they came. A stateful model (sequenceBatching) runs each sequence's
        requests one at a time on the worker holding its state, and different sequences at once;
        any other model gets the next request once this one is answered. The client's half-close
        ends the stream once the last request is answered; a caller without access ends it with
        the call's status."""
        turn: Turn | None = getattr(context, "turn", None)
        try:
            if turn is not None:
                await turn.wait()
            headers = _sequence_headers(request, self.keys)
            async for answer in self._answers(request, context, headers, turn):
                yield answer
        except (Unauthenticated, Forbidden) as exc:
            await context.abort(status_for(exc.code), exc.message)
        except InferdError as exc:
            yield _error_response(*_torchserve_error(exc, request.model_name, request.model_version or None))
        except Exception as exc:  # the other requests of the stream go on
            log.exception("internal error in StreamPredictions2")
            yield _error_response(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}",
                                  type(exc).__name__)
        finally:
            if turn is not None:
                turn.entered()

    async def _answers(self, request: ts.PredictionsRequest, context: Context, headers: dict[str, str] | None = None,
                       turn: Turn | None = None) -> AsyncGenerator[ts.PredictionResponse, None]:
        """The request's answers. ``headers``: its sequence (StreamPredictions2); a stateful model's
        request without them starts a sequence of its own. ``turn``: its stream's order, handed on
        once a stateful model admitted it (its sequence batcher keeps each sequence's order)."""
        self.control.authorize_door(_authorization(context), "inference")  # TorchServe's interceptor: first
        name, version = request.model_name, request.model_version or None
        if not name:
            raise _Refused(grpc.StatusCode.INTERNAL, "Parameter model_name is required.", _BAD_REQUEST)
        try:
            metadata = self.data.model_metadata(name, version, _authorization(context))
        except NotFound:  # in TorchServe's words, and with its status (InferenceImpl answers INTERNAL)
            raise _model_not_found(name, version) from None
        if not torchserve.is_handler_model(metadata):
            data = request.input.get("data") or request.input.get("body")
            if data is None:
                raise InvalidInput(f"model '{name}' takes its tensor as input 'data' (JSON numbers)")
            infer_request, added_batch = torchserve.decode_tensor_prediction(data, metadata, version)
            infer_request.credentials = _authorization(context)
            response = await self.data.infer(infer_request)
            yield ts.PredictionResponse(prediction=torchserve.encode_tensor_prediction(response, added_batch))
            return
        if metadata.stateful and headers is None:
            headers = torchserve.new_sequence(self.keys)
        infer_request = torchserve.decode_form_prediction(dict(request.input), name, version, headers, self.keys)
        infer_request.credentials = _authorization(context)
        async with contextlib.aclosing(self.data.infer_stream(infer_request)) as stream:
            # its first step (up to its sequence's place in the batcher) runs before the next request's
            first = asyncio.ensure_future(anext(stream, None))
            if turn is not None and metadata.stateful:
                turn.entered()
            answer = await first
            while answer is not None:
                yield _prediction(answer)
                answer = await anext(stream, None)


def _model_not_found(name: str, version: str | None) -> _Refused:
    if version is None:
        return _Refused(grpc.StatusCode.INTERNAL, f"Model not found: {name}",
                        "org.pytorch.serve.archive.model.ModelNotFoundException")
    return _Refused(grpc.StatusCode.INTERNAL, f"Model version: {version} does not exist for model: {name}",
                    "org.pytorch.serve.archive.model.ModelVersionNotFoundException")


def _sequence_headers(request: ts.PredictionsRequest, keys: torchserve.SequenceHeaders) -> dict[str, str]:
    """The headers StreamPredictions2 gives a request (TorchServe's InferenceImpl): its
    ``sequence_id``; a request without one starts a sequence (``ts-seq-<uuid>``) when its input says
    ``<keys.start>: true`` (``ts_request_sequence_start``), else it is refused. ``<keys.end>: true``
    in the input marks the sequence's last request."""
    def said(key: str) -> bool:
        return request.input.get(key, b"false").decode("utf-8", "replace").strip().lower() == "true"

    headers: dict[str, str] = {}
    sequence_id = request.sequence_id
    if not sequence_id:
        if not said(keys.start):
            raise _Refused(grpc.StatusCode.INTERNAL, "Parameter sequenceId is required.", _BAD_REQUEST)
        sequence_id = f"ts-seq-{uuid.uuid4()}"
        headers[keys.start] = "true"
    if any(c in sequence_id for c in "\r\n"):
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT,
                       f"sequence_id {sequence_id!r}: a sequence id without line breaks", _BAD_REQUEST)
    headers[keys.id] = sequence_id
    if said(keys.end):
        headers[keys.end] = "true"
    return headers


async def _abort(context: Context, exc: InferdError, request: ts.PredictionsRequest) -> None:
    status, message, _ = _torchserve_error(exc, request.model_name, request.model_version or None)
    await context.abort(status, message)


def _error_response(status: grpc.StatusCode, message: str, reason: str) -> ts.PredictionResponse:
    """A StreamPredictions2 request's error: google.rpc.Status with an ErrorInfo, as TorchServe's."""
    info = any_pb2.Any(type_url=_ERROR_INFO, value=ts.ErrorInfo(reason=reason).SerializeToString())
    return ts.PredictionResponse(status=ts.RpcStatus(code=status.value[0], message=message, details=[info]))


def _prediction(answer: InferResponse) -> ts.PredictionResponse:
    """A handler's answer; its PredictionException fails the prediction with that code's status (the
    worker answers the batch with it), while an error status it set with ``set_response_status`` is
    answered OK with its body, as TorchServe's GRPCJob answers every prediction of a batch that ran."""
    body, _ = torchserve.encode_prediction(answer)
    status = torchserve.prediction_status(answer)
    raised = torchserve.raised_message(body, status) if status >= 400 else None
    if raised is not None:
        raise _Refused(grpc_status_for_http(status), raised, _WORKER_ERROR)
    return ts.PredictionResponse(prediction=body)


class TorchServeManagementServicer:
    name = MANAGEMENT
    RPCS: ClassVar[dict[str, tuple[str, type[Message]]]] = {
        "ListModels": ("list_models", ts.ListModelsRequest), "DescribeModel": ("describe", ts.DescribeModelRequest),
        "RegisterModel": ("register", ts.RegisterModelRequest), "ScaleWorker": ("scale", ts.ScaleWorkerRequest),
        "SetDefault": ("set_default", ts.SetDefaultRequest),
        "UnregisterModel": ("unregister", ts.UnregisterModelRequest)}

    def __init__(self, core: Core) -> None:
        self.control = core.control
        self.data = core.data

    def methods(self) -> Methods:
        return {rpc: (getattr(self, method), request) for rpc, (method, request) in self.RPCS.items()}

    def streams(self) -> StreamMethods:
        return {}

    @guarded
    async def list_models(self, request: ts.ListModelsRequest, context: Context) -> ts.ManagementResponse:
        self.control.authorize_door(_authorization(context), "management")
        names = [(m.name, m.source) for m in self.control.models(_authorization(context))]
        return ts.ManagementResponse(msg=_pretty(torchserve.list_page(names, request.limit or 100,
                                                                      request.next_page_token)))

    @guarded
    async def describe(self, request: ts.DescribeModelRequest, context: Context) -> ts.ManagementResponse:
        self.control.authorize_door(_authorization(context), "management")
        name, who = request.model_name, _authorization(context)
        if name not in {m.name for m in self.control.models(who)}:
            raise NotFound(f"Model not found: {name}")
        version = request.model_version or None
        rows = torchserve.choose_versions(self.control.describe(name, who), name, version,
                                          self.control.default_version(name))
        answer = [torchserve.describe(name, row) for row in rows]
        if request.customized and version != "all":
            try:
                await self._customize(name, rows[0], answer, who)
            except _Refused as exc:
                await context.abort(exc.status, exc.message)
        return ts.ManagementResponse(msg=_pretty(answer))

    async def _customize(self, name: str, row: VersionDescription, answer: list[dict[str, Any]],
                         who: str | None) -> None:
        """``customized``: the handler's ``describe_handle`` answer as ``customizedMetadata``
        (TorchServe's ManagementImpl and GRPCJob: no worker is INTERNAL, a handler that raised its
        worker's status)."""
        if row.state is not ModelState.READY:
            raise _Refused(grpc.StatusCode.INTERNAL, torchserve.no_describe_worker(name), _NO_WORKER)
        model = self.data.model_metadata(name, row.version, who)
        if not torchserve.is_handler_model(model):
            return
        keys = torchserve.SequenceHeaders(*self.control.torchserve_sequence_headers)
        describe_request = torchserve.decode_describe(name, row.version, model.stateful, keys)
        describe_request.credentials = who
        try:
            response = await self.data.infer(describe_request)
        except ModelError as exc:
            log.error("describe of model '%s' failed: %s", name, exc.message, exc_info=exc)
            raise _Refused(grpc_status_for_http(torchserve.failure_status(exc)), exc.message, _WORKER_ERROR) from exc
        metadata = torchserve.customized_metadata(response)
        if metadata is not None:
            answer[0]["customizedMetadata"] = metadata

    @guarded
    async def register(self, request: ts.RegisterModelRequest, context: Context) -> ts.ManagementResponse:
        self.control.authorize_door(_authorization(context), "management")
        self._model_api()
        registration = RegisterRequest(  # 0 and "": TorchServe's defaults, as its gRPC door reads them
            url=request.url or None, model_name=request.model_name or None, runtime=request.runtime or None,
            handler=request.handler or None, batch_size=request.batch_size or -1,
            max_batch_delay_ms=request.max_batch_delay or -100, initial_workers=request.initial_workers or None,
            synchronous=request.synchronous, response_timeout_s=request.response_timeout or -1,
            startup_timeout_s=request.startup_timeout or -1)
        _, message = await self.control.register_from_store(registration, _authorization(context))
        return ts.ManagementResponse(msg=_pretty({"status": message}))

    @guarded
    async def scale(self, request: ts.ScaleWorkerRequest, context: Context) -> ts.ManagementResponse:
        self.control.authorize_door(_authorization(context), "management")
        minimum = request.min_worker or 1
        _, message = await self.control.scale_workers(request.model_name, request.model_version or None, minimum,
                                                      request.max_worker or minimum, request.synchronous,
                                                      _authorization(context))
        return ts.ManagementResponse(msg=_pretty({"status": message}))

    @guarded
    async def set_default(self, request: ts.SetDefaultRequest, context: Context) -> ts.ManagementResponse:
        self.control.authorize_door(_authorization(context), "management")
        name, version = request.model_name, request.model_version
        self.control.set_default_version(name, version, _authorization(context))
        return ts.ManagementResponse(msg=_pretty(
            {"status": f'Default version successfully updated for model "{name}" to "{version}"'}))

    @guarded
    async def unregister(self, request: ts.UnregisterModelRequest, context: Context) -> ts.ManagementResponse:
        self.control.authorize_door(_authorization(context), "management")
        self._model_api()
        name = request.model_name
        await self.control.unregister(name, request.model_version or None, _authorization(context))
        return ts.ManagementResponse(msg=_pretty({"status": f'Model "{name}" unregistered'}))

    def _model_api(self) -> None:
        if not self.control.torchserve_model_api:
            # TorchServe's gRPC words (its REST answer is the 405 of an unknown method)
            raise Forbidden("Model API disabled (enable_model_api=true or --enable-model-api enables it)")

