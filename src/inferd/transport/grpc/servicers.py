"""gRPC methods: each decodes with a protocol codec, calls the core, encodes.

Services are registered by name (``inference.GRPCInferenceService``, ...), with inferd's own
message classes as (de)serializers: the service and method names are what travel on the wire.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from inferd.core import Core
from inferd.errors import InferdError, InvalidInput
from inferd.protocols import kserve_v2_grpc, tfserving
from inferd.protocols._proto import kserve_v2_pb2 as pb
from inferd.protocols._proto import tfserving_pb2 as tfs
from inferd.transport.grpc.errors import status_for
from inferd.transport.offload import off_loop
from inferd.types import InferRequest, RequestedOutput, Tensor

log = logging.getLogger("inferd.grpc")

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Method = Callable[[Req, Context], Awaitable[Resp]]
# method name -> (the bound method, its request message class)
Methods = dict[str, tuple[Callable[[Any, Context], Awaitable[Message]], type[Message]]]


class Servicer(Protocol):
    name: str

    def methods(self) -> Methods: ...


def guarded(method: Callable[[Any, Req, Context], Awaitable[Resp]]
            ) -> Callable[[Any, Req, Context], Awaitable[Resp]]:
    """InferdError -> the matching status code with its message; anything else -> INTERNAL."""

    @functools.wraps(method)
    async def call(self: Any, request: Req, context: Context) -> Resp:
        try:
            return await method(self, request, context)
        except InferdError as exc:
            await context.abort(status_for(exc.code), exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("internal error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    return call


def _authorization(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value)
    return None


class KServeV2Servicer:
    """``inference.GRPCInferenceService``."""

    name = "inference.GRPCInferenceService"

    def __init__(self, core: Core) -> None:
        self.data = core.data
        self.control = core.control

    def methods(self) -> Methods:
        return {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest),
            "RepositoryModelLoad": (self.load, pb.RepositoryModelLoadRequest),
            "RepositoryModelUnload": (self.unload, pb.RepositoryModelUnloadRequest),
        }

    @guarded
    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.data.live())

    @guarded
    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.data.ready())

    @guarded
    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.data.is_model_ready(request.name, request.version or None,
                                                                   _authorization(context)))

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
    async def model_infer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        infer_request = await off_loop(request.ByteSize(), kserve_v2_grpc.decode_infer_request, request)
        infer_request.cancelled = context.cancelled
        infer_request.credentials = _authorization(context)
        response = await self.data.infer(infer_request)
        return kserve_v2_grpc.encode_infer_response(response)

    @guarded
    async def repository_index(self, request: pb.RepositoryIndexRequest, context: Context
                               ) -> pb.RepositoryIndexResponse:
        rows = self.control.index(_authorization(context), ready_only=request.ready)
        return kserve_v2_grpc.encode_repository_index(rows)

    @guarded
    async def load(self, request: pb.RepositoryModelLoadRequest, context: Context
                   ) -> pb.RepositoryModelLoadResponse:
        await self.control.load(request.model_name, _authorization(context))
        return pb.RepositoryModelLoadResponse()

    @guarded
    async def unload(self, request: pb.RepositoryModelUnloadRequest, context: Context
                     ) -> pb.RepositoryModelUnloadResponse:
        await self.control.unload(request.model_name, _authorization(context))
        return pb.RepositoryModelUnloadResponse()


class _TFServingBase:
    def __init__(self, core: Core) -> None:
        self.data = core.data

    def _version(self, spec: tfs.ModelSpec, context: Context) -> str | None:
        version, label = tfserving.model_spec_version(spec)
        if label is not None:
            return self.data.resolve_label(spec.name, label, _authorization(context))
        return version


class PredictionServicer(_TFServingBase):
    """``tensorflow.serving.PredictionService``: Predict and GetModelMetadata."""

    name = "tensorflow.serving.PredictionService"

    def methods(self) -> Methods:
        return {"Predict": (self.predict, tfs.PredictRequest),
                "GetModelMetadata": (self.get_model_metadata, tfs.GetModelMetadataRequest)}

    @guarded
    async def predict(self, request: tfs.PredictRequest, context: Context) -> tfs.PredictResponse:
        spec = request.model_spec
        inputs = await off_loop(request.ByteSize(), _decode_tensors, request)
        outputs = [RequestedOutput(name) for name in request.output_filter] or None
        params = {"signature_name": spec.signature_name} if spec.signature_name else {}
        response = await self.data.infer(InferRequest(spec.name, self._version(spec, context), inputs, outputs=outputs,
                                                      parameters=params, protocol=tfserving.PROTOCOL_GRPC,
                                                      cancelled=context.cancelled,
                                                      credentials=_authorization(context)))
        return tfserving.encode_predict_response(response, spec)

    @guarded
    async def get_model_metadata(self, request: tfs.GetModelMetadataRequest, context: Context
                                 ) -> tfs.GetModelMetadataResponse:
        spec = request.model_spec
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise InvalidInput(f"metadata_field must be ['signature_def'], got {fields}")
        credentials = _authorization(context)
        version = self.data.model_metadata(spec.name, self._version(spec, context), credentials).versions[-1]
        signatures = self.data.signature_metadata(spec.name, version, credentials)
        return tfserving.encode_model_metadata(spec.name, version, signatures)


def _decode_tensors(request: tfs.PredictRequest) -> list[Tensor]:
    return [tfserving.decode_tensor(name, proto) for name, proto in sorted(request.inputs.items())]


class ModelServicer(_TFServingBase):
    """``tensorflow.serving.ModelService``: GetModelStatus."""

    name = "tensorflow.serving.ModelService"

    def methods(self) -> Methods:
        return {"GetModelStatus": (self.get_model_status, tfs.GetModelStatusRequest)}

    @guarded
    async def get_model_status(self, request: tfs.GetModelStatusRequest, context: Context
                               ) -> tfs.GetModelStatusResponse:
        spec = request.model_spec
        states = self.data.version_states(spec.name, self._version(spec, context), _authorization(context))
        return tfserving.encode_model_status(states)
