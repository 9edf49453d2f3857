"""HTTP routes for KServe v2 and /metrics: each decodes with a protocol codec, calls the core, encodes."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import time
from collections.abc import AsyncGenerator
from urllib.parse import urlsplit

from inferd.core import Core, shared_memory
from inferd.errors import ErrorCode, Forbidden, InferdError, InvalidInput, NotFound, Unavailable
from inferd.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from inferd.observability.tracing import RequestTrace
from inferd.protocols import kserve_v2, kserve_v2_extensions, kserve_v2_generate
from inferd.transport.http.app import (
    Guard,
    Handler,
    HttpRequest,
    HttpResponse,
    Router,
    credentials,
    error_response,
    json_response,
)
from inferd.transport.http.errors import status_for
from inferd.transport.offload import off_loop
from inferd.transport.restrictions import Restriction
from inferd.types import InferRequest, InferResponse

SSE = b"text/event-stream; charset=utf-8"  # as Triton names it

OK = HttpResponse(200, b"")
LIVE = HttpResponse(200, b'{"live":true}')
READY = HttpResponse(200, b'{"ready":true}')

log = logging.getLogger("inferd.http")


def inference_guard(core: Core) -> Guard:
    """``--auth-inference``, checked before an inference body is read."""
    return lambda request: core.data.authorize(credentials(request), "inference")


def control_guard(core: Core) -> Guard:
    """Model control's credentials, checked before a body is read. With no token, only loopback
    may change what is served: a browser's cross-site request (a foreign ``Origin``) or a
    rebound DNS name (a foreign ``Host``) is refused."""

    def guard(request: HttpRequest) -> None:
        core.control.authorize(credentials(request))
        if not core.control.open_to_loopback:
            return
        for header in ("origin", "host"):
            value = request.headers.get(header)
            if value is not None and not _is_loopback(value if header == "origin" else f"//{value}"):
                raise Forbidden(f"model control without --auth-token is for loopback clients; the "
                                f"request's {header.title()} is {value!r}")

    return guard


def restricted(restriction: Restriction | None, guard: Guard | None) -> Guard | None:
    """Triton's --http-restricted-api: a request to a restricted API group without its header and
    value is refused (403) before anything else is checked or read."""
    if restriction is None:
        return guard
    header, value = restriction.header, restriction.value
    message = f"This API is restricted, expecting header '{header}'"

    def check(request: HttpRequest) -> None:
        if request.headers.get(header) != value:
            raise Forbidden(message)
        if guard is not None:
            guard(request)

    return check


def _is_loopback(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_timing(response: InferResponse) -> tuple[bytes, bytes]:
    t = response.timings
    value = (f"queue;dur={t.queue * 1000:.3f}, compute;dur={t.compute * 1000:.3f}, "
             f"total;dur={t.total * 1000:.3f}")
    for model, seconds in t.steps.items():  # an ensemble's steps, each under its model's name
        value += f", step.{model};dur={seconds * 1000:.3f}"
    return b"server-timing", value.encode()


def model_and_version(request: HttpRequest) -> tuple[str, str | None]:
    name, version = request.params["model"], request.params.get("version")
    if version is not None and not (version.isascii() and version.isdigit()):
        raise NotFound(f"unknown version '{version}' of model '{name}': versions are integers")
    return name, version


class KServeV2Routes:
    """``/v2/...``: health, metadata, infer and the repository extension."""

    def __init__(self, core: Core, restrictions: tuple[Restriction, ...] = (),
                 forward: re.Pattern[str] | None = None) -> None:
        self.core = core
        self.data = core.data
        self.control = core.control
        self.tracer = core.tracer
        self.restrictions = {restriction.api: restriction for restriction in restrictions}
        self.forward = forward  # --http-header-forward-pattern: headers that become request parameters

    def register(self, router: Router) -> None:
        infer, control = inference_guard(self.core), control_guard(self.core)

        def add(method: str, pattern: str, handler: Handler, api: str, guard: Guard | None = None) -> None:
            router.add(method, pattern, handler, guard=restricted(self.restrictions.get(api), guard))

        add("GET", "/v2/health/live", self.live, "health")
        add("GET", "/v2/health/ready", self.ready, "health")
        add("GET", "/v2", self.server_metadata, "metadata")
        add("GET", "/v2/models/stats", self.statistics, "statistics")  # before /v2/models/{model}
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            add("GET", prefix, self.model_metadata, "metadata")
            add("GET", prefix + "/ready", self.model_ready, "health")
            add("GET", prefix + "/config", self.model_config, "model-config")
            add("GET", prefix + "/stats", self.statistics, "statistics")
            add("POST", prefix + "/infer", self.infer, "inference", infer)
            add("POST", prefix + "/generate", self.generate, "inference", infer)
            add("POST", prefix + "/generate_stream", self.generate_stream, "inference", infer)
        add("POST", "/v2/repository/index", self.repository_index, "model-repository")
        add("POST", "/v2/repository/models/{model}/load", self.load, "model-repository", control)
        add("POST", "/v2/repository/models/{model}/unload", self.unload, "model-repository", control)
        add("GET", "/v2/logging", self.logging, "logging", infer)
        add("POST", "/v2/logging", self.logging, "logging", infer)
        for path in ("/v2/trace/setting", "/v2/models/{model}/trace/setting"):
            add("GET", path, self.trace_setting, "trace", infer)
            add("POST", path, self.trace_setting, "trace", infer)
        for kind in ("systemsharedmemory", "cudasharedmemory"):
            shared = self.system_shared_memory if kind == "systemsharedmemory" else self.cuda_shared_memory
            for prefix in (f"/v2/{kind}", f"/v2/{kind}/region/{{region}}"):
                add("GET", prefix + "/status", shared, "shared-memory", infer)
                add("POST", prefix + "/unregister", shared, "shared-memory", infer)
            add("POST", f"/v2/{kind}/region/{{region}}/register", shared, "shared-memory", infer)

    async def live(self, request: HttpRequest) -> HttpResponse:
        return LIVE if self.data.live() else error_response(503, "server is not live")

    async def ready(self, request: HttpRequest) -> HttpResponse:
        return READY if self.data.ready() else error_response(503, "server is not ready")

    async def server_metadata(self, request: HttpRequest) -> HttpResponse:
        return json_response(self.data.server_metadata(credentials(request)).to_dict())

    async def model_metadata(self, request: HttpRequest) -> HttpResponse:
        name, version = model_and_version(request)
        return json_response(self.data.model_metadata(name, version, credentials(request)).to_dict())

    async def model_ready(self, request: HttpRequest) -> HttpResponse:
        name, version = model_and_version(request)
        self.data.model_ready(name, version, credentials(request))
        if not await self.data.model_says_ready(name, version):
            raise Unavailable(f"model '{name}' is not ready: its own readiness check (is_ready) said no")
        return OK

    async def model_config(self, request: HttpRequest) -> HttpResponse:
        name, version = model_and_version(request)
        served = self.control.model_config(name, version, credentials(request))
        return json_response(kserve_v2_extensions.config_json(served))

    async def statistics(self, request: HttpRequest) -> HttpResponse:
        name = request.params.get("model")
        version = model_and_version(request)[1] if name is not None else None
        stats = self.data.statistics(name, version, credentials(request))
        return json_response(kserve_v2_extensions.statistics_json(stats))

    async def infer(self, request: HttpRequest) -> HttpResponse:
        name, version = model_and_version(request)
        self.data.model_ready(name, version, credentials(request))  # unknown model: 404 at once
        if self.tracer.active:  # all that tracing costs a request while it is off
            trace = self.tracer.sample(name)
            if trace is not None:
                return await self._infer_traced(request, name, version, trace)
        infer_request = await self._decode(request, name, version)
        response = await self.data.infer(infer_request)
        header, binary = kserve_v2.encode_infer_response(response, infer_request)
        headers = [server_timing(response)]
        if not binary:
            return HttpResponse(200, header, headers=headers)
        headers.append((b"inference-header-content-length", str(len(header)).encode()))
        return HttpResponse(200, header, b"application/octet-stream", headers, tail=tuple(binary))

    async def _decode(self, request: HttpRequest, name: str, version: str | None) -> InferRequest:
        """The request an infer body holds: JSON (and binary data after it), or, with a header
        length of 0, the raw data of the model's one input (Triton's raw binary request)."""
        header_length = _header_length(request)
        if header_length == 0:
            metadata = self.data.model_metadata(name, version, credentials(request))
            infer_request = kserve_v2.decode_raw_request(request.body, metadata, version)
        else:
            infer_request = await off_loop(_decode_work(request.body, header_length),
                                           kserve_v2.decode_infer_request, request.body, header_length, name, version)
        infer_request.cancelled = request.disconnected
        infer_request.credentials = credentials(request)
        if self.forward is not None:
            kserve_v2.forward_headers(infer_request.parameters, request.headers.items(), self.forward)
        return infer_request

    async def _infer_traced(self, request: HttpRequest, name: str, version: str | None, trace: RequestTrace
                            ) -> HttpResponse:
        """``infer`` for a request the tracer sampled: its timestamps from the read that brought
        its first bytes to the answer handed to the connection."""
        now = time.perf_counter()
        trace.stamp("HTTP_RECV_START", request.received or now)
        trace.stamp("HTTP_RECV_END", request.read or now)
        try:
            infer_request = await self._decode(request, name, version)
            response = await self.data.infer(infer_request, trace)
            if trace.wants_tensors:
                trace.tensors(((t.name, t.datatype, t.data) for t in infer_request.inputs),
                              ((t.name, t.datatype, t.data) for t in response.outputs))
            header, binary = kserve_v2.encode_infer_response(response, infer_request)
        finally:
            self.tracer.finish_soon(trace, "HTTP", time.perf_counter())
        headers = [server_timing(response)]
        if not binary:
            return HttpResponse(200, header, headers=headers)
        headers.append((b"inference-header-content-length", str(len(header)).encode()))
        return HttpResponse(200, header, b"application/octet-stream", headers, tail=tuple(binary))

    def _generate_request(self, request: HttpRequest) -> InferRequest:
        name, version = model_and_version(request)
        metadata = self.data.model_metadata(name, version, credentials(request))
        infer_request = kserve_v2_generate.decode_generate_request(request.body, metadata, version)
        infer_request.cancelled = request.disconnected
        infer_request.credentials = credentials(request)
        if self.forward is not None:
            kserve_v2.forward_headers(infer_request.parameters, request.headers.items(), self.forward)
        return infer_request

    async def generate(self, request: HttpRequest) -> HttpResponse:
        """Triton's generate: one answer. A decoupled model must answer exactly once here."""
        infer_request = self._generate_request(request)
        answers: list[InferResponse] = []
        async with contextlib.aclosing(self.data.infer_stream(infer_request)) as stream:
            async for answer in stream:
                answers.append(answer)
                if len(answers) > 1:
                    raise InvalidInput(f"generate expects model to produce exactly 1 response: model "
                                       f"'{infer_request.model_name}' answered more than once; ask it with "
                                       ".../generate_stream")
        if not answers:
            raise InvalidInput(f"generate expects model to produce exactly 1 response: model "
                               f"'{infer_request.model_name}' gave no answer to this request")
        if isinstance(answers[0].error, InferdError):  # the model's one answer was an error response
            raise answers[0].error
        return HttpResponse(200, kserve_v2_generate.encode_generate_response(answers[0]),
                            headers=[server_timing(answers[0])])

    async def generate_stream(self, request: HttpRequest) -> HttpResponse:
        """Triton's generate_stream: each answer as a Server-Sent Event, as it comes. An error
        before the first answer is the status; one after it is an ``error`` event that ends it. A
        decoupled model's error response is an ``error`` event and the stream goes on (Triton's
        http_server.cc); as the first answer it sets the status too."""
        infer_request = self._generate_request(request)
        stream = self.data.infer_stream(infer_request)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            return HttpResponse(200, b"", SSE)
        except BaseException:
            await stream.aclose()
            raise
        status = status_for(first.error.code) if isinstance(first.error, InferdError) else 200
        return HttpResponse(status, _sse(first), SSE, [(b"cache-control", b"no-cache")], stream=_events(stream))

    async def repository_index(self, request: HttpRequest) -> HttpResponse:
        ready_only = False
        if request.body.strip():
            payload = kserve_v2.loads(request.body, "repository index request")
            if not isinstance(payload, dict):
                raise InvalidInput("the repository index request must be a JSON object")
            ready_only = payload.get("ready", False)
            if not isinstance(ready_only, bool):  # "false" would be truthy
                raise InvalidInput(f"Invalid value for 'ready': expected a boolean, got {type(ready_only).__name__}")
        rows = self.control.repository_index(credentials(request), ready_only)
        return json_response([row.to_dict() for row in rows])

    async def load(self, request: HttpRequest) -> HttpResponse:
        name = request.params["model"]
        override = kserve_v2_extensions.load_override_json(request.body, name)
        await self.control.load(name, credentials(request), override)
        return OK

    async def unload(self, request: HttpRequest) -> HttpResponse:
        name = request.params["model"]
        dependents = kserve_v2_extensions.unload_dependents_json(request.body, name)
        await self.control.unload(name, credentials(request), dependents)
        return OK


    async def logging(self, request: HttpRequest) -> HttpResponse:
        """Triton's logging extension: the log settings, after the body's changes (POST)."""
        if request.method == "GET":
            return json_response(self.data.log_settings(credentials(request)))
        changes = kserve_v2.loads(request.body, "log settings") if request.body.strip() else {}
        if not isinstance(changes, dict):
            raise InvalidInput("log settings must be a JSON object, e.g. {\"log_verbose_level\": 1}")
        return json_response(self.data.update_log_settings(changes, credentials(request)))

    async def trace_setting(self, request: HttpRequest) -> HttpResponse:
        """Triton's trace extension: the trace settings (global, or a model's), after the body's
        changes (POST; a null value clears one)."""
        model = request.params.get("model")
        if request.method == "GET":
            return json_response(self.data.trace_settings(model, credentials(request)))
        changes = kserve_v2.loads(request.body, "trace settings") if request.body.strip() else {}
        if not isinstance(changes, dict):
            raise InvalidInput("trace settings must be a JSON object, e.g. {\"trace_rate\": \"1\"}")
        return json_response(self.data.update_trace_settings(model, changes, credentials(request)))

    async def system_shared_memory(self, request: HttpRequest) -> HttpResponse:
        """Triton's system shared-memory extension: status, register, unregister."""
        name, action, who = request.params.get("region"), request.path.rsplit("/", 1)[-1], credentials(request)
        if action == "status":
            return json_response(kserve_v2_extensions.shared_memory_status_json(
                self.data.shared_memory_status(name, who)))
        if action == "register":
            key, offset, byte_size = kserve_v2_extensions.shared_memory_register_json(request.body)
            self.data.register_shared_memory(name or "", key, offset, byte_size, who)
        else:
            self.data.unregister_shared_memory(name, who)
        return OK

    async def cuda_shared_memory(self, request: HttpRequest) -> HttpResponse:
        """CUDA shared memory: no region is ever held, so status lists none and unregister has nothing to do."""
        name, action = request.params.get("region"), request.path.rsplit("/", 1)[-1]
        if action == "status":
            return json_response(kserve_v2_extensions.cuda_shared_memory_status(name))
        self.data.authorize(credentials(request), "changing shared memory")
        if not self.data.shared_memory_allowed():
            raise InvalidInput(shared_memory.DISABLED)
        if action == "register":
            raise kserve_v2_extensions.cuda_shared_memory_refusal(name or "")
        return OK


async def _events(stream: AsyncGenerator[InferResponse, None]) -> AsyncGenerator[bytes, None]:
    async with contextlib.aclosing(stream) as answers:
        try:
            async for answer in answers:
                yield _sse(answer)
        except InferdError as exc:
            if exc.code is ErrorCode.MODEL_FAILED:  # a 500 after the status went out: logged as one
                log.error("generate_stream: %s", exc.message, exc_info=exc)
            yield kserve_v2_generate.sse_error(exc.message)


def _sse(answer: InferResponse) -> bytes:
    """One answer as a Server-Sent Event: its outputs, or an error response's ``error``."""
    if answer.error is not None:
        return kserve_v2_generate.sse_error(_words(answer.error))
    return kserve_v2_generate.sse_event(kserve_v2_generate.encode_generate_response(answer))


def _words(error: Exception) -> str:
    return error.message if isinstance(error, InferdError) else str(error)


def _decode_work(body: bytearray, header_length: int | None) -> int:
    """The bytes decoding must read one by one: the JSON, and binary data only where BYTES
    elements are split out of it; numbers in binary data become arrays over the body as it is."""
    if header_length is None or not 0 <= header_length <= len(body):
        return len(body)
    return len(body) if body.find(b"BYTES", 0, header_length) >= 0 else header_length


def _header_length(request: HttpRequest) -> int | None:
    value = request.headers.get(kserve_v2.HEADER_LENGTH)
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()):  # int() would take "²" or "٣" (and fail or not)
        raise InvalidInput(f"Inference-Header-Content-Length must be a byte count, got {value!r}")
    return int(value)


class MetricsRoutes:
    """``/metrics`` in the Prometheus text format."""

    def __init__(self, core: Core) -> None:
        self._metrics = core.metrics
        self._data = core.data

    def register(self, router: Router, paths: tuple[str, ...] = ("/metrics",)) -> None:
        for path in paths:  # TF Serving's monitoring config names a path of its own
            router.add("GET", path, self.metrics)

    async def metrics(self, request: HttpRequest) -> HttpResponse:
        self._data.authorize(credentials(request), "reading metrics")
        if self._metrics is None:
            return error_response(404, "metrics are off")
        return HttpResponse(200, self._metrics.exposition(), METRICS_CONTENT_TYPE)
