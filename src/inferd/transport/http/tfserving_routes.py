"""TensorFlow Serving's REST API on inferd's HTTP port: status, metadata, :predict, :classify and
:regress."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from inferd.core import Core
from inferd.errors import InvalidInput, NotFound, ServableNotFound
from inferd.protocols import tfserving, tfserving_examples
from inferd.transport.http.app import HttpRequest, HttpResponse, Router, credentials, json_response
from inferd.transport.http.routes import inference_guard, server_timing
from inferd.transport.offload import off_loop
from inferd.types import ModelMetadata

_PREFIXES = ("/v1/models/{model}", "/v1/models/{model}/versions/{version}", "/v1/models/{model}/labels/{label}")
Handler = Callable[[Any, HttpRequest], Awaitable[HttpResponse]]


def _servable(handler: Handler) -> Handler:
    """An unknown model or version in TF Serving's words ("Servable not found for request: ...")."""

    @functools.wraps(handler)
    async def call(self: Any, request: HttpRequest) -> HttpResponse:
        try:
            return await handler(self, request)
        except ServableNotFound as exc:
            raise tfserving.servable_not_found(request.params["model"], request.params.get("version"), exc) from None

    return call


class TFServingRoutes:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.data = core.data

    def register(self, router: Router) -> None:
        for prefix in _PREFIXES:
            router.add("GET", prefix, self.status)
            router.add("GET", prefix + "/metadata", self.metadata)
            router.add("POST", prefix + ":predict", self.predict, guard=inference_guard(self.core))
            router.add("POST", prefix + ":classify", self.classify, guard=inference_guard(self.core))
            router.add("POST", prefix + ":regress", self.regress, guard=inference_guard(self.core))

    def _version(self, request: HttpRequest) -> str | None:
        label = request.params.get("label")
        if label is not None:
            return self.data.resolve_label(request.params["model"], label, credentials(request))
        return request.params.get("version")

    async def status(self, request: HttpRequest) -> HttpResponse:
        name, version = request.params["model"], request.params.get("version")  # a label is ignored: every version
        try:
            states = self.data.version_states(name, version, credentials(request))
        except NotFound:
            raise tfserving.status_not_found(name, version) from None
        return json_response(tfserving.rest_status(states))

    @_servable
    async def metadata(self, request: HttpRequest) -> HttpResponse:
        name = request.params["model"]
        metadata = self.data.model_metadata(name, self._version(request), credentials(request))
        signatures = self.data.signature_metadata(name, metadata.versions[-1] if metadata.versions else None,
                                                  credentials(request))
        return json_response(tfserving.rest_metadata(name, metadata.versions[-1], signatures))

    def _signature(self, request: HttpRequest, name: str, version: str | None, payload: Any, method: str
                   ) -> tuple[str, dict[str, ModelMetadata]]:
        signature = payload.get("signature_name") if isinstance(payload, dict) else None
        if signature is not None and not isinstance(signature, str):
            raise InvalidInput("signature_name must be a string")
        specs = self.data.signature_metadata(name, version, credentials(request))
        chosen = signature or next(iter(specs))
        if chosen not in specs:
            raise tfserving.signature_not_found(chosen, method, specs)
        return chosen, specs

    @_servable
    async def predict(self, request: HttpRequest) -> HttpResponse:
        name, version = request.params["model"], self._version(request)
        payload = await off_loop(len(request.body), tfserving.loads_rest, request.body, "predict request")
        chosen, specs = self._signature(request, name, version, payload, tfserving.PREDICT_METHOD)
        signature = payload.get("signature_name") if isinstance(payload, dict) else None
        infer_request, rows = await off_loop(len(request.body), tfserving.decode_rest_predict, payload,
                                             specs[chosen].inputs, name, version, signature)
        infer_request.cancelled = request.disconnected
        infer_request.credentials = credentials(request)
        response = await self.data.infer(infer_request)
        body = orjson.dumps(tfserving.encode_rest_predict(response, rows), option=orjson.OPT_SERIALIZE_NUMPY)
        return HttpResponse(200, body, headers=[server_timing(response)])

    @_servable
    async def classify(self, request: HttpRequest) -> HttpResponse:
        return await self._examples(request, tfserving.CLASSIFY_METHOD)

    @_servable
    async def regress(self, request: HttpRequest) -> HttpResponse:
        return await self._examples(request, tfserving.REGRESS_METHOD)

    async def _examples(self, request: HttpRequest, method: str) -> HttpResponse:
        name, version = request.params["model"], self._version(request)
        payload = await off_loop(len(request.body), tfserving.loads_rest, request.body, "request")
        chosen, specs = self._signature(request, name, version, payload, method)
        examples = tfserving_examples.rest_examples(payload)
        infer_request = tfserving_examples.examples_request(name, version, chosen, specs[chosen], examples, method,
                                                            rest=True)
        infer_request.cancelled = request.disconnected
        infer_request.credentials = credentials(request)
        response = await self.data.infer(infer_request)
        if method == tfserving.CLASSIFY_METHOD:
            body = tfserving_examples.rest_classification(
                tfserving_examples.classification_result(response, len(examples)))
        else:
            body = tfserving_examples.rest_regression(tfserving_examples.regression_result(response, len(examples)))
        body_bytes = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        return HttpResponse(200, body_bytes, headers=[server_timing(response)])
