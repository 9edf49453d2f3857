"""inferd's own HTTP/1.1 server: httptools parses, an asyncio Protocol per connection, no ASGI hop.

A bare ASGI app on uvicorn spends most of its time building ASGI scopes and messages and a task per
request; here a parsed request goes straight to ``HttpApp.dispatch``. Keep-alive, pipelining
(answers in order, one request at a time per connection), ``Expect: 100-continue``, body limits
(413, then close) and idle timeouts are handled here; everything else is the app's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from http import HTTPStatus
from urllib.parse import unquote

import httptools

from inferd.transport.http.app import HttpApp, HttpRequest, HttpResponse, error_response

log = logging.getLogger("inferd.http")

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_REASONS[499] = b"Client Closed Request"
_MAX_PIPELINED = 64  # parsed requests a connection may queue before reading pauses


def _head(status: int, response: HttpResponse, keep_alive: bool) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n" % (
        status, _REASONS.get(status, b"Unknown"), response.content_type, len(response.body))]
    for name, value in response.headers:
        lines.append(b"%s: %s\r\n" % (name, value))
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._app = server.app
        self._limit = server.app.max_body_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[tuple[HttpRequest, bool]] = deque()
        self._busy = False
        self._closed = False
        self._reset()
        self.last_active = time.monotonic()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._too_large = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        declared = self._headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limit:
            self._too_large = True
        elif self._headers.get("expect", "").lower() == "100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._body += body
        if len(self._body) > self._limit:
            self._too_large = True

    def on_message_complete(self) -> None:
        keep_alive = self._parser.should_keep_alive() and not self._too_large
        method = self._parser.get_method().decode("ascii")
        path, _, query = self._url.partition(b"?")
        text = path.decode("latin-1")
        request = HttpRequest(method, unquote(text) if "%" in text else text, query.decode("latin-1"),
                              self._headers, self._body, disconnected=self._is_closed)
        if self._too_large:
            request.params["too_large"] = self._headers.get("content-length", "")
        self._pending.append((request, keep_alive))
        if len(self._pending) > _MAX_PIPELINED and self._transport is not None:
            self._transport.pause_reading()
        if not self._busy:
            self._next()

    # -- answering -------------------------------------------------------------------------
    def _is_closed(self) -> bool:
        return self._closed

    def _next(self) -> None:
        if not self._pending or self._closed:
            return
        request, keep_alive = self._pending.popleft()
        self._busy = True
        loop = self._server.loop
        assert loop is not None
        task = loop.create_task(self._answer(request, keep_alive))
        self._server.tasks.add(task)
        task.add_done_callback(self._server.tasks.discard)

    async def _answer(self, request: HttpRequest, keep_alive: bool) -> None:
        if "too_large" in request.params:
            declared = request.params.pop("too_large")
            response = self._app.too_large(int(declared) if declared.isdigit() else None)
        else:
            response = await self._app.dispatch(request)
        self._busy = False
        self.last_active = time.monotonic()
        if self._closed or self._transport is None:
            return
        body = b"" if request.method == "HEAD" else response.body
        self._transport.write(_head(response.status, response, keep_alive) + body)
        if not keep_alive:
            self._transport.close()
            self._closed = True
            return
        if self._transport.is_reading() is False and len(self._pending) <= _MAX_PIPELINED:
            self._transport.resume_reading()
        self._next()

    def _fail(self, status: int, message: str) -> None:
        if self._transport is not None and not self._closed:
            response = error_response(status, message)
            self._transport.write(_head(status, response, False) + response.body)
            self._transport.close()
        self._closed = True

    def close_if_idle(self, idle_s: float) -> None:
        idle = not self._busy and not self._pending
        if idle and time.monotonic() - self.last_active > idle_s and self._transport is not None:
            self._transport.close()


class HttpServer:
    """Listens on host:port and serves ``app``; ``close`` stops accepting and drains."""

    def __init__(self, app: HttpApp, host: str, port: int, keep_alive_s: float = 75.0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.keep_alive_s = keep_alive_s
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start(); connections exist only after

    async def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port,
                                                backlog=4096, reuse_address=True)
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(self.keep_alive_s, 5.0))
            for connection in list(self.connections):
                connection.close_if_idle(self.keep_alive_s)

    async def close(self, timeout: float) -> None:
        """Stop accepting, let running requests finish (bounded), then close every connection."""
        if self._server is not None:
            self._server.close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)
        for connection in list(self.connections):
            connection.close_if_idle(0)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
