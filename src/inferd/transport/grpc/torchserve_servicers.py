"""TorchServe's gRPC APIs: ``org.pytorch.serve.grpc.inference.InferenceAPIsService`` (Ping, Predictions,
StreamPredictions) and ``...management.ManagementAPIsService`` (RegisterModel, UnregisterModel,
ScaleWorker, SetDefault, ListModels, DescribeModel), over the same core as TorchServe's REST doors.

A prediction's ``input`` map reaches a handler as a form's fields do (``{"data": bytearray}``);
management answers are TorchServe's JSON in ``ManagementResponse.msg``, pretty-printed as its server
writes them. Errors are the call's status: NOT_FOUND for an unknown model or version, INTERNAL for a
model that failed, PERMISSION_DENIED for registering with the model API off.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from inferd.core import Core
from inferd.core.torchserve import RegisterRequest
from inferd.errors import Forbidden, InferdError, InvalidInput, ModelError, NotFound
from inferd.protocols import torchserve
from inferd.protocols._proto import torchserve_pb2 as ts
from inferd.transport.grpc.errors import status_for
from inferd.transport.grpc.servicers import Context, Methods, StreamMethods, _authorization, guarded
from inferd.types import InferRequest, InferResponse

INFERENCE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
MANAGEMENT = "org.pytorch.serve.grpc.management.ManagementAPIsService"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2)


class TorchServeInferenceServicer:
    name = INFERENCE
    RPCS: ClassVar[dict[str, tuple[str, type[Message]]]] = {
        "Ping": ("ping", empty_pb2.Empty), "Predictions": ("predictions", ts.PredictionsRequest)}

    def __init__(self, core: Core) -> None:
        self.data = core.data

    def methods(self) -> Methods:
        return {rpc: (getattr(self, method), request) for rpc, (method, request) in self.RPCS.items()}

    def streams(self) -> StreamMethods:
        return {"StreamPredictions": (self.stream_predictions, ts.PredictionsRequest)}

    @guarded
    async def ping(self, request: empty_pb2.Empty, context: Context) -> ts.TorchServeHealthResponse:
        return ts.TorchServeHealthResponse(health=_pretty({"status": "Healthy" if self.data.ready() else "Unhealthy"}))

    @guarded
    async def predictions(self, request: ts.PredictionsRequest, context: Context) -> ts.PredictionResponse:
        """The handler's last answer (its intermediate ones go out over StreamPredictions only)."""
        last = ts.PredictionResponse()
        async for answer in self._answers(request, context):
            last = answer
        return last

    async def stream_predictions(self, request: ts.PredictionsRequest, context: Context
                                 ) -> AsyncGenerator[ts.PredictionResponse, None]:
        try:
            async for answer in self._answers(request, context):
                yield answer
        except InferdError as exc:  # the status line is the call's, as a unary call's error
            await context.abort(status_for(exc.code), exc.message)

    async def _answers(self, request: ts.PredictionsRequest, context: Context
                       ) -> AsyncGenerator[ts.PredictionResponse, None]:
        name, version = request.model_name, request.model_version or None
        try:
            metadata = self.data.model_metadata(name, version, _authorization(context))
        except NotFound:  # in TorchServe's words
            raise NotFound(f"Model not found: {name}" if version is None else
                           f"Model version: {version} does not exist for model: {name}") from None
        if not torchserve.is_handler_model(metadata):
            data = request.input.get("data") or request.input.get("body")
            if data is None:
                raise InvalidInput(f"model '{name}' takes its tensor as input 'data' (JSON numbers)")
            infer_request, added_batch = torchserve.decode_tensor_prediction(data, metadata, version)
            infer_request.credentials = _authorization(context)
            response = await self.data.infer(infer_request)
            yield ts.PredictionResponse(prediction=torchserve.encode_tensor_prediction(response, added_batch))
            return
        infer_request = torchserve.decode_form_prediction(dict(request.input), name, version)
        infer_request.credentials = _authorization(context)
        async with contextlib.aclosing(self.data.infer_stream(infer_request)) as stream:
            async for answer in stream:
                yield _prediction(answer, infer_request)


def _prediction(answer: InferResponse, request: InferRequest) -> ts.PredictionResponse:
    body, _ = torchserve.encode_prediction(answer)
    status = torchserve.prediction_status(answer)
    if status >= 400:  # the handler set an error status (context.set_response_status): the call fails
        message = body.decode("utf-8", "replace")
        raise (InvalidInput(message) if status < 500 else ModelError(message))
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

    def methods(self) -> Methods:
        return {rpc: (getattr(self, method), request) for rpc, (method, request) in self.RPCS.items()}

    def streams(self) -> StreamMethods:
        return {}

    @guarded
    async def list_models(self, request: ts.ListModelsRequest, context: Context) -> ts.ManagementResponse:
        names = [(m.name, m.source) for m in self.control.models(_authorization(context))]
        return ts.ManagementResponse(msg=_pretty(torchserve.list_page(names, request.limit or 100,
                                                                      request.next_page_token)))

    @guarded
    async def describe(self, request: ts.DescribeModelRequest, context: Context) -> ts.ManagementResponse:
        name, who = request.model_name, _authorization(context)
        if name not in {m.name for m in self.control.models(who)}:
            raise NotFound(f"Model not found: {name}")
        rows = torchserve.choose_versions(self.control.describe(name, who), name, request.model_version or None,
                                          self.control.default_version(name))
        return ts.ManagementResponse(msg=_pretty([torchserve.describe(name, row) for row in rows]))

    @guarded
    async def register(self, request: ts.RegisterModelRequest, context: Context) -> ts.ManagementResponse:
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
        minimum = request.min_worker or 1
        _, message = await self.control.scale_workers(request.model_name, request.model_version or None, minimum,
                                                      request.max_worker or minimum, request.synchronous,
                                                      _authorization(context))
        return ts.ManagementResponse(msg=_pretty({"status": message}))

    @guarded
    async def set_default(self, request: ts.SetDefaultRequest, context: Context) -> ts.ManagementResponse:
        name, version = request.model_name, request.model_version
        self.control.set_default_version(name, version, _authorization(context))
        return ts.ManagementResponse(msg=_pretty(
            {"status": f'Default version successfully updated for model "{name}" to "{version}"'}))

    @guarded
    async def unregister(self, request: ts.UnregisterModelRequest, context: Context) -> ts.ManagementResponse:
        self._model_api()
        name = request.model_name
        await self.control.unregister(name, request.model_version or None, _authorization(context))
        return ts.ManagementResponse(msg=_pretty({"status": f'Model "{name}" unregistered'}))

    def _model_api(self) -> None:
        if not self.control.torchserve_model_api:
            raise Forbidden("Requested method is not allowed, please refer to API document. (model API disabled: "
                            "enable_model_api=true or --enable-model-api)")

