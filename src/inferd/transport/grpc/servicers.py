"""gRPC methods: each decodes with a protocol codec, calls the InferenceService, encodes.

Services are registered by name (``inference.GRPCInferenceService``, ...), with inferd's own
message classes as (de)serializers: the service and method names are what travel on the wire.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import grpc

import inferd
from inferd.errors import InferdError, InvalidInput, NotFound, Unavailable
from inferd.protocols import kserve_v2_grpc, tfserving
from inferd.protocols._proto import kserve_v2_pb2 as pb
from inferd.protocols._proto import tfserving_pb2 as tfs
from inferd.service import InferenceService
from inferd.transport.grpc.errors import status_for
from inferd.types import InferRequest, RequestedOutput

log = logging.getLogger("inferd.grpc")

Method = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def guarded(method: Method) -> Method:
    """InferdError -> the matching status code with its message; anything else -> INTERNAL."""

    @functools.wraps(method)
    async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
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


class KServeV2Servicer:
    """``inference.GRPCInferenceService``."""

    name = "inference.GRPCInferenceService"

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def methods(self) -> dict[str, tuple[Method, Any]]:
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
    async def server_live(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.service.live())

    @guarded
    async def server_ready(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready())

    @guarded
    async def model_ready(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        try:  # an unknown or unloaded model is not ready, not an error (as Triton answers)
            self.service.model_ready(request.name, request.version or None)
        except (NotFound, Unavailable):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @guarded
    async def server_metadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        meta = self.service.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=inferd.__version__,
                                         extensions=meta["extensions"])

    @guarded
    async def model_metadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        return kserve_v2_grpc.encode_model_metadata(
            self.service.model_metadata(request.name, request.version or None))

    @guarded
    async def model_infer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        infer_request = kserve_v2_grpc.decode_infer_request(request)
        infer_request.cancelled = context.cancelled
        infer_request.credentials = _authorization(context)
        response = await self.service.infer(infer_request)
        return kserve_v2_grpc.encode_infer_response(response)

    @guarded
    async def repository_index(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        message = pb.RepositoryIndexResponse()
        for row in self.service.repository_index(ready_only=request.ready):
            message.models.add(**row)
        return message

    @guarded
    async def load(self, request: Any, context: Any) -> pb.RepositoryModelLoadResponse:
        self.service.access.authorize_control(_authorization(context), "loading a model")
        await self.service.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @guarded
    async def unload(self, request: Any, context: Any) -> pb.RepositoryModelUnloadResponse:
        self.service.access.authorize_control(_authorization(context), "unloading a model")
        await self.service.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()



def _authorization(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value)
    return None


class _TFServingBase:
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def _version(self, spec: Any) -> str | None:
        version, label = tfserving.model_spec_version(spec)
        if label is not None:
            return self.service.resolve_label(spec.name, label)
        return version


class PredictionServicer(_TFServingBase):
    """``tensorflow.serving.PredictionService``: Predict and GetModelMetadata."""

    name = "tensorflow.serving.PredictionService"

    def methods(self) -> dict[str, tuple[Method, Any]]:
        return {"Predict": (self.predict, tfs.PredictRequest),
                "GetModelMetadata": (self.get_model_metadata, tfs.GetModelMetadataRequest)}

    @guarded
    async def predict(self, request: Any, context: Any) -> tfs.PredictResponse:
        spec = request.model_spec
        version = self._version(spec)
        inputs = [tfserving.decode_tensor(name, proto) for name, proto in sorted(request.inputs.items())]
        outputs = [RequestedOutput(name) for name in request.output_filter] or None
        params = {"signature_name": spec.signature_name} if spec.signature_name else {}
        response = await self.service.infer(InferRequest(spec.name, version, inputs, outputs=outputs,
                                                         parameters=params, protocol=tfserving.PROTOCOL_GRPC,
                                                         cancelled=context.cancelled,
                                                         credentials=_authorization(context)))
        message = tfs.PredictResponse()
        message.model_spec.name = spec.name
        message.model_spec.version.value = int(response.model_version) if response.model_version.isdigit() else 0
        message.model_spec.signature_name = spec.signature_name or "serving_default"
        for tensor in response.outputs:
            message.outputs[tensor.name].CopyFrom(tfserving.encode_tensor(tensor.data, tensor.datatype))
        return message

    @guarded
    async def get_model_metadata(self, request: Any, context: Any) -> tfs.GetModelMetadataResponse:
        spec = request.model_spec
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise InvalidInput(f"metadata_field must be ['signature_def'], got {fields}")
        metadata = self.service.model_metadata(spec.name, self._version(spec))
        version = metadata.versions[-1]
        signatures = self.service.signature_metadata(spec.name, version)
        message = tfs.GetModelMetadataResponse()
        message.model_spec.name = spec.name
        message.model_spec.version.value = int(version) if version.isdigit() else 0
        packed = message.metadata["signature_def"]
        packed.type_url = tfserving.SIGNATURE_DEF_MAP_URL  # TF Serving's type name: clients Unpack by it
        packed.value = tfserving.signature_def_map(signatures).SerializeToString()
        return message


class ModelServicer(_TFServingBase):
    """``tensorflow.serving.ModelService``: GetModelStatus."""

    name = "tensorflow.serving.ModelService"
    _STATES: ClassVar[dict[str, int]] = {"READY": 30, "LOADING": 20, "UNLOADING": 40, "UNAVAILABLE": 50}

    def methods(self) -> dict[str, tuple[Method, Any]]:
        return {"GetModelStatus": (self.get_model_status, tfs.GetModelStatusRequest)}

    @guarded
    async def get_model_status(self, request: Any, context: Any) -> tfs.GetModelStatusResponse:
        spec = request.model_spec
        message = tfs.GetModelStatusResponse()
        for version, state, reason in self.service.version_states(spec.name, self._version(spec)):
            status = message.model_version_status.add(version=int(version) if version.isdigit() else 0,
                                                      state=self._STATES.get(state, 0))
            status.status.error_code = 0 if state == "READY" else 2
            status.status.error_message = reason
        return message
