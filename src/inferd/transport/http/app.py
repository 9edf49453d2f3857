"""A plain ASGI application: read the body (bounded), route, call a handler, write the answer.

No web framework on the hot path: one router lookup, one body buffer, one send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from inferd.errors import InferdError, InvalidInput, PayloadTooLarge
from inferd.transport.http.errors import status_for
from inferd.transport.offload import inflate_off_loop

log = logging.getLogger("inferd.http")
access_log = logging.getLogger("inferd.access")

JSON = b"application/json"


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytearray
    params: dict[str, str] = field(default_factory=dict)  # from the route pattern
    disconnected: Callable[[], bool] | None = None  # true once the client has gone away
    # monotonic seconds of the reads that brought its first and its last bytes (0: not known)
    received: float = 0.0
    read: float = 0.0


@dataclass(slots=True)
class HttpResponse:
    status: int = 200
    body: bytes = b""
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    stream: AsyncGenerator[bytes, None] | None = None  # sent chunk by chunk after body (chunked encoding)
    tail: tuple[bytes | memoryview, ...] = ()  # sent after body as they are: a binary answer's tensors, uncopied

    def size(self) -> int:
        """The body's bytes, its tail's included (a stream's are not known ahead)."""
        if not self.tail:
            return len(self.body)
        return len(self.body) + sum(map(len, self.tail))  # (a tail's views are of bytes: their len is their size)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]
ErrorFormat = Callable[[int, str], HttpResponse]  # each protocol keeps its own error shape
Guard = Callable[[HttpRequest], None]  # raises InferdError: checked before the body is read


def credentials(request: HttpRequest) -> str | None:
    """The caller's ``Authorization`` header: the core decides what it allows."""
    return request.headers.get("authorization")


def json_response(value: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))


def error_response(status: int, message: str) -> HttpResponse:
    """The v2 (and TF Serving) error shape: ``{"error": "..."}``."""
    return HttpResponse(status, orjson.dumps({"error": message}))


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    parts: tuple[str, ...]
    handler: Handler
    format_error: ErrorFormat = error_response
    guard: Guard | None = None


class Router:
    """Patterns like ``/v2/models/{model}/infer``; ``{name}`` matches one path segment.

    ``refuse`` shapes the 404 (unknown path) and 405 (wrong method) answers; ``refuse_under``
    gives the paths under one first segment (``/predictions``) their protocol's own shape."""

    def __init__(self, refuse: ErrorFormat = error_response) -> None:
        self._routes: dict[int, list[Route]] = {}
        self._cache: dict[tuple[str, str], tuple[Route | None, dict[str, str], bool]] = {}
        self._refuse = refuse
        self._refusals: dict[str, ErrorFormat] = {}

    def refuse_under(self, segment: str, refuse: ErrorFormat) -> None:
        """Unknown paths and wrong methods under ``/<segment>`` are answered by ``refuse``."""
        self._refusals[segment.strip("/")] = refuse

    def refusal(self, request: HttpRequest, known: bool) -> HttpResponse:
        """The answer to a request no route takes: 405 on a known path, else 404."""
        refuse = self._refusals.get(request.path.strip("/").split("/", 1)[0], self._refuse)
        if known:
            return refuse(405, f"method {request.method} is not allowed on {request.path}")
        return refuse(404, f"no such endpoint: {request.method} {request.path}")

    def add(self, method: str, pattern: str, handler: Handler, format_error: ErrorFormat = error_response,
            guard: Guard | None = None) -> None:
        """``guard`` checks the caller (credentials, origin) before the body is read."""
        parts = tuple(pattern.strip("/").split("/"))
        self._routes.setdefault(len(parts), []).append(Route(method, parts, handler, format_error, guard))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, params, path_known): a known path with the wrong method has no route; HEAD is
        GET without the body."""
        if method == "HEAD":
            method = "GET"
        found = self._cache.get((method, path))
        if found is None:
            found = self._match_uncached(method, path)
            if found[0] is not None and len(self._cache) < 4096:  # repeat paths skip the scan
                self._cache[(method, path)] = found
        return found

    def _match_uncached(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        segments = path.strip("/").split("/")
        known = False
        for route in self._routes.get(len(segments), ()):
            params = _match(route.parts, segments)
            if params is None:
                continue
            if route.method == method:
                return route, params, True
            known = True
        return None, {}, known


def _match(parts: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for part, segment in zip(parts, segments, strict=True):
        if part.startswith("{"):
            name, _, suffix = part[1:].partition("}")  # "{model}:predict" matches "m:predict"
            if suffix:
                if not segment.endswith(suffix) or len(segment) == len(suffix):
                    return None
                segment = segment[: -len(suffix)]
            if not segment:
                return None
            params[name] = segment
        elif part != segment:
            return None
    return params


class HttpApp:
    """Routes a request to its handler and turns errors into answers.

    ``dispatch`` is what inferd's own HTTP server (``transport/http/server.py``) calls; the object
    is also a plain ASGI application, for embedding inferd under any ASGI server.
    """

    def __init__(self, router: Router, max_body_bytes: int, access_log: bool = False) -> None:
        self.router = router
        self.max_body_bytes = max_body_bytes
        if access_log:  # decided once, so the hot path pays nothing when it is off
            self._unlogged = self.dispatch
            self.dispatch = self._logged_dispatch  # type: ignore[method-assign]

    async def _logged_dispatch(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = await self._unlogged(request)
        access_log.info("%s %s %d %d %.2fms", request.method, request.path, response.status, response.size(),
                        (time.perf_counter() - started) * 1000)
        return response

    async def dispatch(self, request: HttpRequest) -> HttpResponse:
        route, params, known = self.router.match(request.method, request.path)
        if route is None:
            return self.router.refusal(request, known)
        request.params = params
        try:
            if route.guard is not None:
                route.guard(request)
            encoding = request.headers.get("content-encoding")
            if encoding and encoding != "identity":
                # the work is what it inflates to, not what came: a 250 KB gzip bomb is 256 MiB of zeros
                inflated = min(len(request.body) * _MAX_DEFLATE_RATIO, self.max_body_bytes)
                request.body = await inflate_off_loop(inflated, _decompress, request.body, encoding,
                                                      self.max_body_bytes)
            return await route.handler(request)
        except InferdError as exc:
            status = status_for(exc.code)
            if status == 500:  # a model's failure: the server's log keeps what raised it
                log.error("%s %s answered 500: %s", request.method, request.path, exc.message, exc_info=exc)
            return route.format_error(status, exc.message)
        except asyncio.CancelledError:
            if request.disconnected is None or not request.disconnected():
                raise
            return route.format_error(499, "the client went away; the request was dropped")
        except Exception as exc:  # a real server fault: log it, answer 500, keep serving
            log.exception("internal error on %s %s", request.method, request.path)
            return route.format_error(500, f"internal error: {type(exc).__name__}: {exc}")

    def refuse_early(self, request: HttpRequest) -> HttpResponse | None:
        """The answer to a request that need not be read any further: unknown path (404), wrong
        method (405), or a caller its route's guard turns away (401, 403)."""
        route, _, known = self.router.match(request.method, request.path)
        if route is None:
            return self.router.refusal(request, known)
        if route.guard is not None:
            try:
                route.guard(request)
            except InferdError as exc:
                return route.format_error(status_for(exc.code), exc.message)
        return None

    def too_large(self, size: int | None = None) -> HttpResponse:
        said = f"request body of {size} bytes" if size is not None else "request body"
        return error_response(413, f"{said} is over the limit of {self.max_body_bytes} bytes "
                                   "(--max-body-size)")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path, root = scope["path"], scope.get("root_path", "")
        if root and (path == root or path.startswith(root + "/")):  # mounted under a prefix (Ray Serve's route_prefix)
            path = path[len(root):] or "/"
        request = HttpRequest(scope["method"], path,
                              scope.get("query_string", b"").decode("latin-1"), headers, bytearray(),
                              disconnected=_disconnect_probe(receive))
        try:
            request.body = await self._read_body(headers, receive)
        except PayloadTooLarge as exc:
            response = error_response(413, exc.message)
        else:
            response = await self.dispatch(request)
        head = [(b"content-type", response.content_type),
                (b"content-length", str(response.size()).encode()), *response.headers]
        if response.stream is not None:
            head = [h for h in head if h[0] != b"content-length"]
        await send({"type": "http.response.start", "status": response.status, "headers": head})
        await send({"type": "http.response.body", "body": response.body,
                    "more_body": response.stream is not None or bool(response.tail)})
        for index, part in enumerate(response.tail, 1):
            await send({"type": "http.response.body", "body": bytes(part), "more_body": index < len(response.tail)})
        if response.stream is not None:
            async with contextlib.aclosing(response.stream) as chunks:
                async for chunk in chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    async def _read_body(self, headers: dict[str, str], receive: Any) -> bytearray:
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of "
                                  f"{limit} bytes (--max-body-size)")
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                raise PayloadTooLarge(f"request body is over the limit of {limit} bytes "
                                      "(--max-body-size)")
        return body


def _disconnect_probe(receive: Any) -> Callable[[], bool] | None:
    """A free check of whether the client went away: uvicorn's request cycle (the object behind
    ``receive``) keeps a ``disconnected`` flag. Other ASGI servers: no probe, nothing dropped."""
    cycle = getattr(receive, "__self__", None)
    if cycle is None or not hasattr(cycle, "disconnected"):
        return None
    return lambda: bool(cycle.disconnected)


_MAX_DEFLATE_RATIO = 1032  # deflate's best case: one input byte expands to at most ~1032


def _decompress(body: bytearray, encoding: str, limit: int) -> bytearray:
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise InvalidInput(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    if encoding == "gzip" and len(body) >= 18:
        # gzip's trailer gives the inflated size mod 2**32: the real size is at least that, so a
        # trailer over the limit refuses the body without inflating any of it
        said = int.from_bytes(body[-4:], "little")
        if said > limit:
            raise PayloadTooLarge(f"the gzip body inflates to at least {said} bytes (its trailer says so), "
                                  f"over the limit of {limit} bytes (--max-body-size)")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(bytes(body), limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"body is not valid {encoding}: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed body is over the limit of {limit} bytes")
    return bytearray(out)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
