"""TorchServe's HTTP APIs on inferd's port: ``/ping``, ``/predictions``, and management ``/models``.

Reading the management API (list, describe) is always on; changing it (register, scale,
set-default, unregister) needs ``--model-control explicit``, as loading over the v2 API does.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson

from inferd.core import Core
from inferd.errors import InvalidInput, NotFound
from inferd.protocols import torchserve
from inferd.transport.http.app import Guard, Handler, HttpRequest, HttpResponse, Router, json_response
from inferd.transport.http.routes import control_guard, inference_guard, server_timing
from inferd.transport.offload import off_loop

_TYPES = {400: "BadRequestException", 401: "Unauthorized", 403: "ForbiddenException",
          404: "ModelNotFoundException", 405: "MethodNotAllowedException", 413: "RequestEntityTooLarge",
          500: "InternalServerException", 503: "ServiceUnavailableException", 504: "RequestTimeout"}


def torchserve_error(status: int, message: str) -> HttpResponse:
    """TorchServe's error shape: ``{"code": 404, "type": "ModelNotFoundException", "message": ...}``."""
    return HttpResponse(status, orjson.dumps({"code": status, "type": _TYPES.get(status, "ServerException"),
                                              "message": message}))


class TorchServeRoutes:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.data = core.data
        self.control = core.control

    def register(self, router: Router) -> None:
        def add(method: str, pattern: str, handler: Handler, guard: Guard | None = None) -> None:
            router.add(method, pattern, handler, torchserve_error, guard)

        infer, control = inference_guard(self.core), control_guard(self.core)
        add("GET", "/ping", self.ping)
        add("POST", "/predictions/{model}", self.predict, infer)
        add("POST", "/predictions/{model}/{version}", self.predict, infer)
        add("PUT", "/predictions/{model}", self.predict, infer)
        add("GET", "/models", self.list_models)
        add("POST", "/models", self.register_model, control)
        add("GET", "/models/{model}", self.describe)
        add("GET", "/models/{model}/{version}", self.describe)
        add("PUT", "/models/{model}", self.scale, control)
        add("PUT", "/models/{model}/{version}", self.scale, control)
        add("PUT", "/models/{model}/{version}/set-default", self.set_default, control)
        add("DELETE", "/models/{model}", self.unregister, control)
        add("DELETE", "/models/{model}/{version}", self.unregister, control)

    # -- inference API -----------------------------------------------------------------------
    async def ping(self, request: HttpRequest) -> HttpResponse:
        if self.data.ready():
            return json_response({"status": "Healthy"})
        return json_response({"status": "Unhealthy"}, 503)

    async def predict(self, request: HttpRequest) -> HttpResponse:
        name, version = request.params["model"], request.params.get("version")
        metadata = self.data.model_metadata(name, version, _credentials(request))
        if torchserve.is_handler_model(metadata):
            content_type = request.headers.get("content-type", "application/octet-stream")
            infer_request = torchserve.decode_prediction(request.body, content_type, name, version)
        else:
            infer_request, added_batch = await off_loop(len(request.body), torchserve.decode_tensor_prediction,
                                                        request.body, metadata, version)
        infer_request.cancelled = request.disconnected
        infer_request.credentials = request.headers.get("authorization")
        response = await self.data.infer(infer_request)
        if torchserve.is_handler_model(metadata):
            body, answer_type = torchserve.encode_prediction(response)
            return HttpResponse(200, body, answer_type.encode("latin-1"), [server_timing(response)])
        return HttpResponse(200, torchserve.encode_tensor_prediction(response, added_batch),
                            headers=[server_timing(response)])

    # -- management API ----------------------------------------------------------------------
    async def list_models(self, request: HttpRequest) -> HttpResponse:
        models = self.control.models(_credentials(request))
        return json_response({"models": [{"modelName": m.name, "modelUrl": m.source} for m in models]})

    async def describe(self, request: HttpRequest) -> HttpResponse:
        name, version = request.params["model"], request.params.get("version")
        rows = self.control.describe(name, _credentials(request))
        if version not in (None, "all"):
            rows = [row for row in rows if row.version == version]
            if not rows:
                raise NotFound(f"model '{name}' has no version '{version}'")
        return json_response([torchserve.describe(name, row) for row in rows])

    async def register_model(self, request: HttpRequest) -> HttpResponse:
        query = _query(request)
        registered = await self.control.register_from_store(
            query.get("url", ""), query.get("model_name") or None, _int(query, "initial_workers", 1),
            _int(query, "batch_size", 1), _float(query, "max_batch_delay", 100.0), _credentials(request))
        return json_response({"status": f'Model "{registered.name}" Version: {registered.version} registered '
                                        f"with {registered.workers} initial workers"})

    async def scale(self, request: HttpRequest) -> HttpResponse:
        name = request.params["model"]
        query = _query(request)
        workers = _int(query, "min_worker", 0) or _int(query, "max_worker", 0)
        self.control.scale(name, workers, _credentials(request))
        return json_response({"status": f"Workers scaled to {workers} for model: {name}"})

    async def set_default(self, request: HttpRequest) -> HttpResponse:
        name, version = request.params["model"], request.params["version"]
        self.control.set_default_version(name, version, _credentials(request))
        return json_response({"status": f'Default version successfully updated for model "{name}" to "{version}"'})

    async def unregister(self, request: HttpRequest) -> HttpResponse:
        name, version = request.params["model"], request.params.get("version")
        if version is None:
            await self.control.unload(name, _credentials(request))
            return json_response({"status": f'Model "{name}" unregistered'})
        await self.control.unload_version(name, version, _credentials(request))
        return json_response({"status": f'Model "{name}" version: {version} unregistered'})


def _credentials(request: HttpRequest) -> str | None:
    return request.headers.get("authorization")


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
