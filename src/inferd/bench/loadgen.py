"""A closed-loop HTTP/1.1 load generator: C keep-alive connections, each sending the same prebuilt
request as soon as its previous answer arrived. asyncio Protocols and httptools' response parser
(C, any header order, chunked answers), so one process sustains far more requests per second than a
Python server can answer (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools


@dataclass(slots=True)
class LoadResult:
    latencies_ns: list[int] = field(default_factory=list)  # successful answers only
    errors: int = 0  # non-2xx answers and broken connections
    seconds: float = 0.0
    failures: dict[str, list[object]] = field(default_factory=dict)  # kind -> [count, a sample message]

    def fail(self, kind: str, message: str) -> None:
        self.errors += 1
        seen = self.failures.setdefault(kind, [0, message[:200]])
        seen[0] = cast(int, seen[0]) + 1


def build_request(url: str, body: bytes, header_length: int | None) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}",
            f"Content-Length: {len(body)}"]
    if header_length is None:
        head.append("Content-Type: application/json")
    else:
        head += ["Content-Type: application/octet-stream",
                 f"Inference-Header-Content-Length: {header_length}"]
    return host, port, ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Client(asyncio.Protocol):
    def __init__(self, request: bytes, result: LoadResult, stop_at: float, done: asyncio.Future[None],
                 counter: list[int]) -> None:
        self._request = request
        self._result = result
        self._stop_at = stop_at
        self._done = done
        self._counter = counter
        self._parser = httptools.HttpResponseParser(self)
        self._sent = 0
        self._transport: asyncio.Transport | None = None
        self._error_body = bytearray()  # an error answer's body, for its message

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TCP connection: a full Transport
        self._send()

    def _send(self) -> None:
        if time.perf_counter() >= self._stop_at:
            if not self._done.done():
                self._done.set_result(None)
            return
        self._sent = time.perf_counter_ns()
        assert self._transport is not None
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()  # a malformed answer: connection_lost counts the error

    def on_body(self, body: bytes) -> None:
        if not 200 <= self._parser.get_status_code() < 300 and len(self._error_body) < 1024:
            self._error_body += body

    def on_message_complete(self) -> None:
        """httptools' callback: one whole answer arrived."""
        status = self._parser.get_status_code()
        if status == 100:
            return
        if 200 <= status < 300:
            self._result.latencies_ns.append(time.perf_counter_ns() - self._sent)
        else:
            self._result.fail(f"HTTP {status}", bytes(self._error_body).decode(errors="replace").strip())
            self._error_body.clear()
        self._counter[0] += 1
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._result.fail("connection lost", str(exc) if exc else "the server closed the connection")
            self._done.set_result(None)


async def run_load(url: str, body: bytes, header_length: int | None, concurrency: int, seconds: float,
                   counter: list[int] | None = None) -> LoadResult:
    """Keep ``concurrency`` requests in flight for ``seconds``."""
    host, port, request = build_request(url, body, header_length)
    loop = asyncio.get_running_loop()
    result, counter = LoadResult(), counter if counter is not None else [0]
    start = time.perf_counter()
    stop_at = start + seconds
    done = [loop.create_future() for _ in range(concurrency)]
    transports = []
    for future in done:
        transport, _ = await loop.create_connection(
            functools.partial(_Client, request, result, stop_at, future, counter), host, port)
        transports.append(transport)
    await asyncio.gather(*done)
    result.seconds = time.perf_counter() - start
    for transport in transports:
        transport.close()
    return result
