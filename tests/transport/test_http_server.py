"""inferd's HTTP/1.1 server at the byte level: keep-alive, pipelining, 100-continue, bad requests."""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Iterator

import pytest

from inferd.transport.http.app import HttpApp, HttpRequest, HttpResponse, Router, json_response
from inferd.transport.http.server import HttpLimits, HttpServer
from tests.conftest import free_port, holds_in_one_of


async def echo(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(0.01 if request.query == "slow" else 0)
    return json_response({"path": request.path, "query": request.query, "size": len(request.body),
                          "model": request.params.get("model"), "crc": zlib.crc32(request.body)})


def make_app(limit: int = 1000) -> HttpApp:
    router = Router()
    router.add("POST", "/echo/{model}", echo)
    router.add("GET", "/echo/{model}", echo)
    return HttpApp(router, limit)


@pytest.fixture
def port() -> Iterator[int]:
    yield free_port()


async def exchange(port: int, raw: bytes, limit: int = 1000) -> bytes:
    server = HttpServer(make_app(limit), "127.0.0.1", port)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        data = b""
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 2)
            if not chunk:
                break
            data += chunk
            answered = data.count(b"HTTP/1.1 2") + data.count(b"HTTP/1.1 4") >= raw.count(b"HTTP/1.1\r\n")
            if answered and (b"connection: close" in data or data.endswith(b"}")):
                break
        writer.close()
        return data
    finally:
        await server.close(1)


def bodies(data: bytes) -> list[dict]:
    return [json.loads(part[part.index(b"{"):part.rindex(b"}") + 1])
            for part in data.split(b"HTTP/1.1 ")[1:] if b"{" in part]


def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    raw = (b"GET /echo/a?slow HTTP/1.1\r\nHost: x\r\n\r\n"
           b"POST /echo/b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
           b"GET /echo/c%20d HTTP/1.1\r\nHost: x\r\n\r\n")
    data = asyncio.run(exchange(port, raw))
    answers = bodies(data)
    assert [a["model"] for a in answers] == ["a", "b", "c d"]
    assert answers[0]["query"] == "slow"
    assert answers[1]["size"] == 3


def test_chunked_body_and_expect_continue(port: int) -> None:
    raw = (b"POST /echo/m HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
           b"Expect: 100-continue\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n")
    data = asyncio.run(exchange(port, raw))
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert bodies(data)[-1]["size"] == 8


def test_oversized_body_gets_413_and_the_connection_closes(port: int) -> None:
    raw = b"POST /echo/m HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    data = asyncio.run(exchange(port, raw, limit=1000))
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in data
    assert b"over the limit of 1000 bytes" in data


def test_malformed_http_gets_400(port: int) -> None:
    data = asyncio.run(exchange(port, b"GARBAGE\r\n\r\n"))
    assert data.startswith(b"HTTP/1.1 400 ")


def test_unknown_path_and_wrong_method(port: int) -> None:
    raw = (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
           b"DELETE /echo/m HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = asyncio.run(exchange(port, raw))
    assert b"HTTP/1.1 404 Not Found" in data
    assert b"HTTP/1.1 405 Method Not Allowed" in data


def test_the_app_is_also_plain_asgi() -> None:
    app = make_app()
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"abcd", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/echo/z", "headers": [], "query_string": b"q"}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"]) == {"path": "/echo/z", "query": "q", "size": 4, "model": "z",
                                           "crc": zlib.crc32(b"abcd")}


@pytest.mark.parametrize(("path", "root", "status", "seen"), [
    ("/inferd/echo/z", "/inferd", 200, "/echo/z"),  # mounted under a prefix (Ray Serve's route_prefix)
    ("/echo/z", "", 200, "/echo/z"),
    ("/inferdx/echo/z", "/inferd", 404, None),  # a longer first segment is not under the prefix
])
def test_asgi_honours_root_path(path: str, root: str, status: int, seen: str | None) -> None:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "root_path": root, "headers": [], "query_string": b""}
    asyncio.run(make_app()(scope, receive, send))
    assert sent[0]["status"] == status
    if seen is not None:
        assert json.loads(sent[1]["body"])["path"] == seen


def test_a_read_of_many_pipelined_requests_is_parsed_only_as_far_as_max_pipelined(port: int) -> None:
    """1,000 requests in one write: the server parses until ``max_pipelined`` wait, keeps the rest
    unparsed, and goes on as answers leave (parsing them all at once held the loop for all of them)."""
    seen: list[int] = []

    async def run() -> bytes:
        router = Router()

        async def count(request: HttpRequest) -> HttpResponse:
            seen.append(max(len(c._pending) for c in server.connections))
            return json_response({"n": request.query})

        router.add("GET", "/n", count)
        server = HttpServer(HttpApp(router, 1000), "127.0.0.1", port, limits=HttpLimits(max_pipelined=16))
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"".join(b"GET /n?%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(1000)))
            data = b""
            while data.count(b"HTTP/1.1 200") < 1000:
                data += await asyncio.wait_for(reader.read(65536), 5)
            writer.close()
            return data
        finally:
            await server.close(1)

    answers = bodies(asyncio.run(run()))
    assert [a["n"] for a in answers] == [str(i) for i in range(1000)]  # every one, in order
    # at most max_pipelined and what one step of parsing holds (1 KiB: ~30 of these), not all 1,000
    assert max(seen) <= 16 + 32, f"up to {max(seen)} parsed requests waited at once"


def test_large_bodies_are_read_no_faster_than_their_rate_and_small_requests_pass(port: int) -> None:
    """Bodies over ``large_body_bytes`` share ``large_body_rate``: a 24 MiB upload at 8 MiB/s takes
    about 3 s (unpaced, a fraction of one), while small requests on another connection are answered
    at once."""
    size = 24 << 20

    async def run() -> tuple[float, bytes, list[float]]:
        limits = HttpLimits(large_body_bytes=1 << 20, large_body_rate=8 << 20)
        server = HttpServer(make_app(32 << 20), "127.0.0.1", port, limits=limits)
        await server.start()
        try:
            async def upload() -> tuple[float, bytes]:
                started = time.perf_counter()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /echo/big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
                writer.write(b"\0" * size)
                await writer.drain()
                answer = await asyncio.wait_for(reader.readuntil(b"}"), 20)
                writer.close()
                return time.perf_counter() - started, answer

            async def small() -> list[float]:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                waits = []
                for _ in range(20):
                    started = time.perf_counter()
                    writer.write(b"GET /echo/small HTTP/1.1\r\nHost: x\r\n\r\n")
                    await asyncio.wait_for(reader.readuntil(b"}"), 5)
                    waits.append(time.perf_counter() - started)
                    await asyncio.sleep(0.05)
                writer.close()
                return waits

            (took, answer), waits = await asyncio.gather(upload(), small())
            return took, answer, waits
        finally:
            await server.close(1)

    def paced_beside_small() -> str | None:
        took, answer, waits = asyncio.run(run())
        assert b'"size":%d' % size in answer
        assert took > 2.0, f"24 MiB were read in {took:.2f} s: faster than 8 MiB/s"
        return None if max(waits) < 0.5 else f"small requests waited {waits}"

    holds_in_one_of(3, paced_beside_small)


@pytest.mark.parametrize("size", [1, 900, 5000, 64 * 1024, 64 * 1024 + 1, 300_000])
@pytest.mark.parametrize("pieces", [1, 3, 7])
def test_bodies_in_any_pieces_arrive_whole_and_the_next_request_is_read(port: int, size: int,
                                                                          pieces: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    raw = (b"POST /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size + body
           + b"GET /echo/b HTTP/1.1\r\nHost: x\r\n\r\n")

    async def run() -> bytes:
        server = HttpServer(make_app(1 << 20), "127.0.0.1", port)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            step = -(-len(raw) // pieces)
            for start in range(0, len(raw), step):  # the pieces arrive as separate reads
                writer.write(raw[start:start + step])
                await writer.drain()
                await asyncio.sleep(0.01)
            data = b""
            while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"}"):
                data += await asyncio.wait_for(reader.read(65536), 5)
            writer.close()
            return data
        finally:
            await server.close(1)

    answers = bodies(asyncio.run(run()))
    assert [(a["model"], a["size"], a["crc"]) for a in answers] == [("a", size, zlib.crc32(body)), ("b", 0, 0)]


def test_a_large_body_rate_of_0_never_waits() -> None:
    free = HttpServer(make_app(1 << 20), "127.0.0.1", 0, limits=HttpLimits(large_body_bytes=1, large_body_rate=0))
    assert [free.large_body_wait(64 << 20) for _ in range(3)] == [0.0, 0.0, 0.0]
    limits = HttpLimits(large_body_bytes=1, large_body_rate=1 << 20)
    paced = HttpServer(make_app(1 << 20), "127.0.0.1", 0, limits=limits)
    assert paced.large_body_wait(4 << 20) > 3.9  # 4 MiB at 1 MiB/s
