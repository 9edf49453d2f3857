"""HTTP routes for KServe v2 and /metrics: each decodes with a protocol codec, calls the core, encodes."""

from __future__ import annotations

from inferd.core import Core
from inferd.errors import InvalidInput, NotFound
from inferd.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from inferd.protocols import kserve_v2, kserve_v2_extensions
from inferd.transport.http.app import (
    HttpRequest,
    HttpResponse,
    Router,
    error_response,
    json_response,
)
from inferd.types import InferResponse

OK = HttpResponse(200, b"")
LIVE = HttpResponse(200, b'{"live":true}')
READY = HttpResponse(200, b'{"ready":true}')


def server_timing(response: InferResponse) -> tuple[bytes, bytes]:
    t = response.timings
    value = (f"queue;dur={t.queue * 1000:.3f}, compute;dur={t.compute * 1000:.3f}, "
             f"total;dur={t.total * 1000:.3f}")
    return b"server-timing", value.encode()


def model_and_version(request: HttpRequest) -> tuple[str, str | None]:
    name, version = request.params["model"], request.params.get("version")
    if version is not None and not version.isdigit():
        raise NotFound(f"unknown version '{version}' of model '{name}': versions are integers")
    return name, version


class KServeV2Routes:
    """``/v2/...``: health, metadata, infer and the repository extension."""

    def __init__(self, core: Core) -> None:
        self.data = core.data
        self.control = core.control

    def register(self, router: Router) -> None:
        router.add("GET", "/v2/health/live", self.live)
        router.add("GET", "/v2/health/ready", self.ready)
        router.add("GET", "/v2", self.server_metadata)
        router.add("GET", "/v2/models/stats", self.statistics)  # before /v2/models/{model}
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            router.add("GET", prefix, self.model_metadata)
            router.add("GET", prefix + "/ready", self.model_ready)
            router.add("GET", prefix + "/config", self.model_config)
            router.add("GET", prefix + "/stats", self.statistics)
            router.add("POST", prefix + "/infer", self.infer)
        router.add("POST", "/v2/repository/index", self.repository_index)
        router.add("POST", "/v2/repository/models/{model}/load", self.load)
        router.add("POST", "/v2/repository/models/{model}/unload", self.unload)

    async def live(self, request: HttpRequest) -> HttpResponse:
        return LIVE if self.data.live() else error_response(503, "server is not live")

    async def ready(self, request: HttpRequest) -> HttpResponse:
        return READY if self.data.ready() else error_response(503, "server is not ready")

    async def server_metadata(self, request: HttpRequest) -> HttpResponse:
        return json_response(self.data.server_metadata().to_dict())

    async def model_metadata(self, request: HttpRequest) -> HttpResponse:
        name, version = model_and_version(request)
        return json_response(self.data.model_metadata(name, version).to_dict())

    async def model_ready(self, request: HttpRequest) -> HttpResponse:
        name, version = model_and_version(request)
        self.data.model_ready(name, version)
        return OK

    async def model_config(self, request: HttpRequest) -> HttpResponse:
        name, version = model_and_version(request)
        return json_response(kserve_v2_extensions.config_json(self.control.model_config(name, version)))

    async def statistics(self, request: HttpRequest) -> HttpResponse:
        name = request.params.get("model")
        version = model_and_version(request)[1] if name is not None else None
        return json_response(kserve_v2_extensions.statistics_json(self.data.statistics(name, version)))

    async def infer(self, request: HttpRequest) -> HttpResponse:
        name, version = model_and_version(request)
        self.data.model_ready(name, version)  # unknown model: 404 before reading the body
        header_length = _header_length(request)
        infer_request = kserve_v2.decode_infer_request(request.body, header_length, name, version)
        infer_request.cancelled = request.disconnected
        infer_request.credentials = request.headers.get("authorization")
        response = await self.data.infer(infer_request)
        body, json_length = kserve_v2.encode_infer_response(response, infer_request)
        headers = [server_timing(response)]
        if json_length is None:
            return HttpResponse(200, body, headers=headers)
        headers.append((b"inference-header-content-length", str(json_length).encode()))
        return HttpResponse(200, body, b"application/octet-stream", headers)

    async def repository_index(self, request: HttpRequest) -> HttpResponse:
        ready_only = False
        if request.body.strip():
            payload = kserve_v2.loads(request.body, "repository index request")
            if not isinstance(payload, dict):
                raise InvalidInput("the repository index request must be a JSON object")
            ready_only = bool(payload.get("ready", False))
        return json_response([row.to_dict() for row in self.control.repository_index(ready_only)])

    async def load(self, request: HttpRequest) -> HttpResponse:
        name = request.params["model"]
        override = kserve_v2_extensions.load_override_json(request.body, name)
        await self.control.load(name, request.headers.get("authorization"), override)
        return OK

    async def unload(self, request: HttpRequest) -> HttpResponse:
        await self.control.unload(request.params["model"], request.headers.get("authorization"))
        return OK


def _header_length(request: HttpRequest) -> int | None:
    value = request.headers.get(kserve_v2.HEADER_LENGTH)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InvalidInput(f"Inference-Header-Content-Length must be a byte count, got {value!r}")
    return int(value)


class MetricsRoutes:
    """``/metrics`` in the Prometheus text format."""

    def __init__(self, core: Core) -> None:
        self._metrics = core.metrics

    def register(self, router: Router, paths: tuple[str, ...] = ("/metrics",)) -> None:
        for path in paths:  # TF Serving's monitoring config names a path of its own
            router.add("GET", path, self.metrics)

    async def metrics(self, request: HttpRequest) -> HttpResponse:
        if self._metrics is None:
            return error_response(404, "metrics are off")
        return HttpResponse(200, self._metrics.exposition(), METRICS_CONTENT_TYPE)
