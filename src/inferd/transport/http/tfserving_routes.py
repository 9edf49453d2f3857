"""TensorFlow Serving's REST API on inferd's HTTP port: status, metadata and :predict."""

from __future__ import annotations

import orjson

from inferd.core import Core
from inferd.errors import InvalidInput
from inferd.protocols import kserve_v2, tfserving
from inferd.transport.http.app import HttpRequest, HttpResponse, Router, credentials, json_response
from inferd.transport.http.routes import inference_guard, server_timing
from inferd.transport.offload import off_loop

_PREFIXES = ("/v1/models/{model}", "/v1/models/{model}/versions/{version}", "/v1/models/{model}/labels/{label}")


class TFServingRoutes:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.data = core.data

    def register(self, router: Router) -> None:
        for prefix in _PREFIXES:
            router.add("GET", prefix, self.status)
            router.add("GET", prefix + "/metadata", self.metadata)
            router.add("POST", prefix + ":predict", self.predict, guard=inference_guard(self.core))
            router.add("POST", prefix + ":classify", self.unsupported)
            router.add("POST", prefix + ":regress", self.unsupported)

    def _version(self, request: HttpRequest) -> str | None:
        label = request.params.get("label")
        if label is not None:
            return self.data.resolve_label(request.params["model"], label, credentials(request))
        return request.params.get("version")

    async def status(self, request: HttpRequest) -> HttpResponse:
        name = request.params["model"]
        states = self.data.version_states(name, self._version(request), credentials(request))
        return json_response(tfserving.rest_status(states))

    async def metadata(self, request: HttpRequest) -> HttpResponse:
        name = request.params["model"]
        metadata = self.data.model_metadata(name, self._version(request), credentials(request))
        signatures = self.data.signature_metadata(name, metadata.versions[-1] if metadata.versions else None,
                                                  credentials(request))
        return json_response(tfserving.rest_metadata(name, metadata.versions[-1], signatures))

    async def predict(self, request: HttpRequest) -> HttpResponse:
        name, version = request.params["model"], self._version(request)
        payload = await off_loop(len(request.body), kserve_v2.loads, request.body, "predict request")
        signature = payload.get("signature_name") if isinstance(payload, dict) else None
        if signature is not None and not isinstance(signature, str):
            raise InvalidInput("signature_name must be a string")
        specs = self.data.signature_metadata(name, version, credentials(request))
        chosen = signature or next(iter(specs))
        if chosen not in specs:
            raise InvalidInput(f"model '{name}' has no signature '{chosen}'; it has {', '.join(sorted(specs))}")
        infer_request, rows = await off_loop(len(request.body), tfserving.decode_rest_predict, payload,
                                             specs[chosen].inputs, name, version, signature)
        infer_request.cancelled = request.disconnected
        infer_request.credentials = credentials(request)
        response = await self.data.infer(infer_request)
        body = orjson.dumps(tfserving.encode_rest_predict(response, rows))
        return HttpResponse(200, body, headers=[server_timing(response)])

    async def unsupported(self, request: HttpRequest) -> HttpResponse:
        raise InvalidInput("only :predict is served; :classify and :regress need TF Serving's Example "
                           "protos, which inferd does not support")
