"""TorchServe's HTTP APIs on inferd's port: ``/ping``, ``/predictions``, and management ``/models``.

Reading the management API (list, describe) is always on; changing it (register, scale,
set-default, unregister) needs ``--model-control explicit``, as loading over the v2 API does.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import numpy as np
import orjson

from inferd.errors import InvalidInput, NotFound
from inferd.protocols import torchserve
from inferd.service import InferenceService
from inferd.transport.http.app import HttpRequest, HttpResponse, Router, json_response
from inferd.transport.http.routes import server_timing
from inferd.types import InferRequest, Tensor, numpy_dtype

_TYPES = {400: "BadRequestException", 401: "Unauthorized", 403: "ForbiddenException",
          404: "ModelNotFoundException", 405: "MethodNotAllowedException", 413: "RequestEntityTooLarge",
          500: "InternalServerException", 503: "ServiceUnavailableException", 504: "RequestTimeout"}


def torchserve_error(status: int, message: str) -> HttpResponse:
    """TorchServe's error shape: ``{"code": 404, "type": "ModelNotFoundException", "message": ...}``."""
    return HttpResponse(status, orjson.dumps({"code": status, "type": _TYPES.get(status, "ServerException"),
                                              "message": message}))


class TorchServeRoutes:
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def register(self, router: Router) -> None:
        def add(method: str, pattern: str, handler) -> None:  # type: ignore[no-untyped-def]
            router.add(method, pattern, handler, torchserve_error)

        add("GET", "/ping", self.ping)
        add("POST", "/predictions/{model}", self.predict)
        add("POST", "/predictions/{model}/{version}", self.predict)
        add("PUT", "/predictions/{model}", self.predict)
        add("GET", "/models", self.list_models)
        add("POST", "/models", self.register_model)
        add("GET", "/models/{model}", self.describe)
        add("GET", "/models/{model}/{version}", self.describe)
        add("PUT", "/models/{model}", self.scale)
        add("PUT", "/models/{model}/{version}", self.scale)
        add("PUT", "/models/{model}/{version}/set-default", self.set_default)
        add("DELETE", "/models/{model}", self.unregister)
        add("DELETE", "/models/{model}/{version}", self.unregister)

    # -- inference API -----------------------------------------------------------------------
    async def ping(self, request: HttpRequest) -> HttpResponse:
        if self.service.ready():
            return json_response({"status": "Healthy"})
        return json_response({"status": "Unhealthy"}, 503)

    async def predict(self, request: HttpRequest) -> HttpResponse:
        name, version = request.params["model"], request.params.get("version")
        metadata = self.service.model_metadata(name, version)
        content_type = request.headers.get("content-type", "application/octet-stream")
        if [spec.name for spec in metadata.inputs] == ["body", "content_type"]:
            infer_request = torchserve.decode_prediction(request.body, content_type, name, version)
            infer_request.cancelled = request.disconnected
            infer_request.credentials = request.headers.get("authorization")
            response = await self.service.infer(infer_request)
            body, answer_type = torchserve.encode_prediction(response)
            return HttpResponse(200, body, answer_type.encode("latin-1"), [server_timing(response)])
        return await self._predict_tensors(request, name, version, metadata)

    async def _predict_tensors(self, request: HttpRequest, name: str, version: str | None,
                               metadata) -> HttpResponse:  # type: ignore[no-untyped-def]
        """A model without a handler: the body is JSON data for its input (or {name: data} for
        several inputs); the answer is its output (or {name: data} for several)."""
        try:
            payload = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"model '{name}' takes JSON tensors; the body is not JSON: {exc}") from None
        if isinstance(payload, dict) and "data" in payload and len(metadata.inputs) == 1:
            payload = payload["data"]
        values = payload if isinstance(payload, dict) else {metadata.inputs[0].name: payload}
        tensors, added_batch = [], False
        for spec in metadata.inputs:
            if spec.name not in values:
                raise InvalidInput(f"missing input '{spec.name}' for model '{name}'")
            try:
                array = np.asarray(values[spec.name], dtype=numpy_dtype(spec.datatype))
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"input '{spec.name}': {exc}") from None
            if metadata.max_batch_size > 0 and array.ndim == len(spec.shape) - 1:
                array, added_batch = array[np.newaxis], True
            tensors.append(Tensor(spec.name, spec.datatype, array))
        response = await self.service.infer(InferRequest(name, version, tensors, protocol="torchserve",
                                                         cancelled=request.disconnected,
                                                         credentials=request.headers.get("authorization")))
        outputs = {t.name: (t.data[0] if added_batch else t.data) for t in response.outputs}
        answer = next(iter(outputs.values())) if len(outputs) == 1 else outputs
        return HttpResponse(200, orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY),
                            headers=[server_timing(response)])

    # -- management API ----------------------------------------------------------------------
    async def list_models(self, request: HttpRequest) -> HttpResponse:
        models = [{"modelName": name, "modelUrl": entry.source}
                  for name, entry in sorted(self.service.registry.models.items())]
        return json_response({"models": models})

    async def describe(self, request: HttpRequest) -> HttpResponse:
        name, version = request.params["model"], request.params.get("version")
        rows = self.service.describe_model(name)
        if version not in (None, "all"):
            rows = [row for row in rows if row["version"] == version]
            if not rows:
                raise NotFound(f"model '{name}' has no version '{version}'")
        return json_response([
            torchserve.describe(name, row["version"], row["source"], row["instances"], row["max_batch_size"],
                                row["max_queue_delay_ms"], row["busy"], row["state"], row["default"])
            for row in rows])

    async def register_model(self, request: HttpRequest) -> HttpResponse:
        self._authorize(request, "registering a model")
        query = _query(request)
        name, version, workers = await self.service.register_from_store(
            query.get("url", ""), query.get("model_name") or None, _int(query, "initial_workers", 1),
            _int(query, "batch_size", 1), _float(query, "max_batch_delay", 100.0))
        return json_response({"status": f'Model "{name}" Version: {version} registered with '
                                        f"{workers} initial workers"})

    async def scale(self, request: HttpRequest) -> HttpResponse:
        self._authorize(request, "scaling a model")
        name = request.params["model"]
        query = _query(request)
        workers = _int(query, "min_worker", 0) or _int(query, "max_worker", 0)
        if workers < 1:
            raise InvalidInput("give min_worker (>= 1), e.g. PUT /models/name?min_worker=2")
        self.service.scale(name, workers)
        return json_response({"status": f"Workers scaled to {workers} for model: {name}"})

    async def set_default(self, request: HttpRequest) -> HttpResponse:
        self._authorize(request, "setting the default version")
        name, version = request.params["model"], request.params["version"]
        self.service.set_default_version(name, version)
        return json_response({"status": f'Default version successfully updated for model "{name}" to "{version}"'})

    async def unregister(self, request: HttpRequest) -> HttpResponse:
        self._authorize(request, "unregistering a model")
        name, version = request.params["model"], request.params.get("version")
        if version is None:
            await self.service.unload_model(name)
            return json_response({"status": f'Model "{name}" unregistered'})
        await self.service.unload_version(name, version)
        return json_response({"status": f'Model "{name}" version: {version} unregistered'})

    def _authorize(self, request: HttpRequest, action: str) -> None:
        self.service.access.authorize_control(request.headers.get("authorization"), action)


def _query(request: HttpRequest) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(request.query).items()}


def _int(query: dict[str, str], key: str, default: int) -> int:
    try:
        return int(query.get(key, default))
    except ValueError:
        raise InvalidInput(f"{key} must be an integer, got {query[key]!r}") from None


def _float(query: dict[str, str], key: str, default: float) -> float:
    try:
        return float(query.get(key, default))
    except ValueError:
        raise InvalidInput(f"{key} must be a number, got {query[key]!r}") from None
