"""What one client may hold of inferd's HTTP server, at the byte level over real sockets: memory
(freed state, backpressure, connection limit, byte budget, header caps), time (header and body
timeouts) and order (refusals and 100 Continue never overtake an answer owed)."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import uvloop

from inferd.errors import Unauthenticated
from inferd.transport.budget import ByteBudget
from inferd.transport.http.app import HttpApp, HttpRequest, HttpResponse, Router, json_response
from inferd.transport.http.server import HttpLimits, HttpServer
from tests.conftest import free_port

BIG = b"x" * 200_000


async def echo(request: HttpRequest) -> HttpResponse:
    if request.query == "slow":
        await asyncio.sleep(0.3)
    if request.query == "big":
        return HttpResponse(200, BIG)
    return json_response({"size": len(request.body)})


def guard(request: HttpRequest) -> None:
    if request.headers.get("authorization") != "Bearer ok":
        raise Unauthenticated("needs the token")


SEEN: list[bytearray] = []  # bodies the /keep route was given


async def keep(request: HttpRequest) -> HttpResponse:
    """Holds on to the body and grows it: a body still viewed elsewhere could not be resized."""
    SEEN.append(request.body)
    request.body.append(0)
    return json_response({"size": len(request.body) - 1})


def make_app(limit: int = 10_000) -> HttpApp:
    router = Router()
    router.add("POST", "/keep", keep)
    router.add("GET", "/echo", echo)
    router.add("POST", "/echo", echo)
    router.add("POST", "/guarded", echo, guard=guard)
    return HttpApp(router, limit)


@asynccontextmanager
async def running(limits: HttpLimits | None = None, budget: int = 100_000,
                  body_limit: int = 10_000) -> AsyncIterator[HttpServer]:
    server = HttpServer(make_app(body_limit), "127.0.0.1", free_port(), limits, ByteBudget(budget))
    await server.start()
    try:
        yield server
    finally:
        await server.close(1)


async def connect(server: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_all(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    """Everything until the server closes."""
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), timeout):
        data += chunk
    return data


def run(test: Callable[[], Awaitable[None]], loop: str = "asyncio") -> None:
    (uvloop.run if loop == "uvloop" else asyncio.run)(test())


def test_a_connection_closed_mid_body_frees_its_state_at_once() -> None:
    async def test() -> None:
        async with running() as server:
            _reader, writer = await connect(server)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\n" + b"y" * 4000)
            await writer.drain()
            await asyncio.sleep(0.1)
            connection = weakref.ref(next(iter(server.connections)))
            assert server.budget.used == 9000  # reserved by Content-Length
            writer.transport.abort()
            await asyncio.sleep(0.1)
            assert server.budget.used == 0
            assert not server.connections
            gc.disable()  # freed by reference counting, not by a collection
            try:
                assert connection() is None
            finally:
                gc.enable()

    run(test)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])  # the server runs on uvloop
def test_a_body_read_straight_into_place_keeps_every_limit(loop: str) -> None:
    """A body of known length up to large_body_bytes whose rest is still coming is read by the
    kernel into its bytearray (not through the parser): it arrives whole with the request pipelined
    behind it; stalled, it times out (408); abandoned, its state and budget are freed at once."""
    size, head = 300_000, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n"

    async def test() -> None:
        limits = HttpLimits(body_timeout_s=0.5)
        async with running(limits, budget=1_000_000, body_limit=1 << 20) as server:
            whole_r, whole_w = await connect(server)
            stalled_r, stalled_w = await connect(server)
            _gone_r, gone_w = await connect(server)
            for writer in (whole_w, stalled_w, gone_w):
                writer.write(head + b"z" * 100_000)
                await writer.drain()
            await asyncio.sleep(0.2)
            assert all(connection._into is not None for connection in server.connections)
            assert server.budget.used == 3 * size

            gone_w.transport.abort()
            await asyncio.sleep(0.1)
            assert server.budget.used == 2 * size and len(server.connections) == 2

            whole_w.write(b"z" * 200_000 + b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answers = await read_all(whole_r)
            assert answers.count(b"HTTP/1.1 200 ") == 2
            assert b'{"size":300000}' in answers and answers.endswith(b'{"size":0}')

            stalled = await read_all(stalled_r)
            assert stalled.startswith(b"HTTP/1.1 408 ") and b"--body-timeout" in stalled
            await asyncio.sleep(0.1)
            assert server.budget.used == 0

    run(test, loop)


def test_a_body_is_read_into_place_only_once_a_quarter_of_it_came() -> None:
    """A few bytes of a claimed 1 MiB body do not make the server fill a MiB: they are kept as they
    came (the budget still reserves the claim); once a quarter has come, the rest is read in place."""
    async def test() -> None:
        async with running(budget=2_000_000, body_limit=1 << 20) as server:
            reader, writer = await connect(server)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n" + b"q" * 70_000)
            await writer.drain()
            await asyncio.sleep(0.1)
            connection = next(iter(server.connections))
            assert connection._into is None and server.budget.used == 1 << 20
            writer.write(b"q" * 200_000)  # 270,000 of 1,048,576: past a quarter
            await writer.drain()
            await asyncio.sleep(0.1)
            assert connection._into is not None
            writer.write(b"q" * (1048576 - 270_000) + b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answers = await read_all(reader)
            assert b'{"size":1048576}' in answers and answers.endswith(b'{"size":0}')

    run(test)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_body_read_into_place_belongs_to_its_request_alone_once_read(loop: str) -> None:
    """The reader lets go of the body when it is whole (uvloop keeps the reader itself until the
    connection closes): a handler may resize it, and an idle keep-alive connection keeps none."""
    async def test() -> None:
        SEEN.clear()
        async with running(budget=1_000_000, body_limit=1 << 20) as server:
            reader, writer = await connect(server)
            writer.write(b"POST /keep HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + b"k" * 100_000)
            await writer.drain()
            await asyncio.sleep(0.1)
            assert next(iter(server.connections))._into is not None
            writer.write(b"k" * 200_000)
            head = await asyncio.wait_for(reader.readuntil(b'{"size":300000}'), 3)
            assert head.startswith(b"HTTP/1.1 200 ")
            await asyncio.sleep(0.1)
            holders = sys.getrefcount(SEEN[0]) - 1  # (not inside the assert: pytest's rewriting keeps values)
            assert len(SEEN) == 1 and len(SEEN[0]) == 300_001
            assert holders == 1, "only SEEN holds the body"
            writer.close()

    run(test, loop)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_connection_closed_while_its_body_is_read_into_place_is_freed_at_once(loop: str) -> None:
    async def test() -> None:
        async with running(budget=1_000_000, body_limit=1 << 20) as server:
            _reader, writer = await connect(server)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\n" + b"y" * 150_000)
            await writer.drain()
            await asyncio.sleep(0.1)
            connection = weakref.ref(next(iter(server.connections)))
            assert connection()._into is not None  # type: ignore[union-attr]
            writer.transport.abort()
            await asyncio.sleep(0.1)
            assert server.budget.used == 0 and not server.connections
            gc.disable()  # freed by reference counting: the reader and the connection let go of each other
            try:
                assert connection() is None
            finally:
                gc.enable()

    run(test, loop)


def test_a_client_that_never_reads_stops_being_read() -> None:
    async def test() -> None:
        async with running(HttpLimits(write_buffer_bytes=64 * 1024)) as server:
            reader, writer = await connect(server)
            calls = 0
            original = server.app.dispatch

            async def counted(request: HttpRequest) -> HttpResponse:
                nonlocal calls
                calls += 1
                return await original(request)

            server.app.dispatch = counted  # type: ignore[method-assign]
            request = b"GET /echo?big HTTP/1.1\r\nHost: x\r\n\r\n"
            for _ in range(200):  # 40 MB of answers asked for, none read
                writer.write(request * 10)
                await asyncio.sleep(0)
            await asyncio.sleep(0.5)
            assert calls < 60, calls  # answered only while the kernel's buffers took them
            connection = next(iter(server.connections))
            assert connection._transport is not None
            assert connection._transport.get_write_buffer_size() < 2 * 64 * 1024 + len(BIG) + 1000
            got = 0
            while got < len(BIG) * 100:  # reading again resumes answering
                got += len(await asyncio.wait_for(reader.read(1 << 20), 3))
            assert calls >= 100
            writer.close()

    run(test)


def test_at_the_connection_limit_a_stalled_connection_makes_room_else_503() -> None:
    async def test() -> None:
        async with running(HttpLimits(max_connections=2)) as server:
            stalled_r, stalled_w = await connect(server)
            stalled_w.write(b"GET /ec")  # a request that never finishes
            busy_r, busy_w = await connect(server)
            busy_w.write(b"GET /echo?slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.1)
            new_r, new_w = await connect(server)
            await asyncio.sleep(0.05)
            assert await asyncio.wait_for(stalled_r.read(), 2) == b""  # dropped to make room
            new_w.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(new_r.read(1000), 2)).startswith(b"HTTP/1.1 200 ")
            new_w.write(b"GET /echo?slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.05)
            third_r, _ = await connect(server)  # both are owed an answer: nobody to drop
            refused = await read_all(third_r)
            assert refused.startswith(b"HTTP/1.1 503 ") and b"--max-connections" in refused
            assert (await asyncio.wait_for(busy_r.read(1000), 2)).startswith(b"HTTP/1.1 200 ")

    run(test)


def test_bodies_over_the_shared_budget_are_refused_before_they_are_read() -> None:
    async def test() -> None:
        async with running(budget=8000) as server:
            first_r, first_w = await connect(server)
            first_w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6000\r\n\r\nabc")
            await asyncio.sleep(0.05)
            second_r, second_w = await connect(server)
            second_w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6000\r\n\r\n")
            refused = await read_all(second_r)
            assert refused.startswith(b"HTTP/1.1 503 ") and b"--max-inflight-size" in refused
            first_w.write(b"z" * 5997)
            assert b'{"size":6000}' in await asyncio.wait_for(first_r.read(1000), 2)
            assert server.budget.used == 0
            chunked_r, chunked_w = await connect(server)  # unknown length: counted as it comes
            chunked_w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + b"1f40\r\n" + b"c" * 8000 + b"\r\n" + b"10\r\n" + b"c" * 16 + b"\r\n0\r\n\r\n")
            assert (await read_all(chunked_r)).startswith(b"HTTP/1.1 503 ")
            assert server.budget.used == 0

    run(test)


def test_content_length_over_the_limit_is_refused_without_reading_the_body() -> None:
    async def test() -> None:
        async with running() as server:
            reader, writer = await connect(server)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
            answer = await read_all(reader)  # no body was sent: the answer cannot have waited for it
            assert answer.startswith(b"HTTP/1.1 413 ") and b"connection: close" in answer
            assert b"10000000 bytes is over the limit of 10000" in answer

    run(test)


def test_a_refused_caller_or_path_is_answered_before_the_body() -> None:
    async def test() -> None:
        async with running() as server:
            for head, status in ((b"POST /guarded", b"401"), (b"POST /nope", b"404"), (b"PUT /echo", b"405")):
                reader, writer = await connect(server)
                writer.write(head + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                             b"Expect: 100-continue\r\n\r\n")
                answer = await read_all(reader)
                assert answer.startswith(b"HTTP/1.1 " + status), answer  # and no 100 Continue
            reader, writer = await connect(server)
            writer.write(b"POST /guarded HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ok\r\n"
                         b"Content-Length: 3\r\nConnection: close\r\n\r\nabc")
            assert b'{"size":3}' in await read_all(reader)

    run(test)


def test_request_line_and_headers_are_capped() -> None:
    async def test() -> None:
        async with running(HttpLimits(max_url_bytes=100, max_header_bytes=2000, max_headers=20)) as server:
            cases = [(b"GET /echo?" + b"a" * 200 + b" HTTP/1.1\r\n\r\n", b"414"),
                     (b"GET /echo HTTP/1.1\r\n" + b"X-A: b\r\n" * 21 + b"\r\n", b"431"),
                     (b"GET /echo HTTP/1.1\r\nX-Big: " + b"b" * 3000 + b"\r\n\r\n", b"431")]
            for raw, status in cases:
                reader, writer = await connect(server)
                writer.write(raw)
                assert (await read_all(reader)).startswith(b"HTTP/1.1 " + status)
            reader, writer = await connect(server)  # a header that never ends, one read at a time
            writer.write(b"GET /echo HTTP/1.1\r\nX-Big: ")
            for _ in range(30):
                writer.write(b"b" * 100)
                await asyncio.sleep(0.01)
            assert (await read_all(reader)).startswith(b"HTTP/1.1 431 ")
            for pieces in (1, 3):  # under the limit, in one read or several: served, not counted twice
                raw = b"GET /echo HTTP/1.1\r\n" + b"X-A: " + b"b" * 95 + b"\r\n" + (
                    b"X-B: " + b"b" * 95 + b"\r\n") * 17 + b"Connection: close\r\n\r\n"
                assert 1800 < len(raw) < 2000
                reader, writer = await connect(server)
                step = -(-len(raw) // pieces)
                for start in range(0, len(raw), step):
                    writer.write(raw[start:start + step])
                    await asyncio.sleep(0.01)
                assert (await read_all(reader)).startswith(b"HTTP/1.1 200 ")

    run(test)


def test_repeated_headers_are_joined_in_linear_time() -> None:
    async def test() -> None:
        seen: list[str] = []

        async def capture(request: HttpRequest) -> HttpResponse:
            seen.append(request.headers["x-r"])
            return HttpResponse(200, b"")

        async with running(HttpLimits(max_headers=5000, max_header_bytes=1 << 20)) as server:
            server.app.router.add("GET", "/capture", capture)
            reader, writer = await connect(server)
            writer.write(b"GET /capture HTTP/1.1\r\n" + b"X-R: v\r\n" * 4000 + b"Connection: close\r\n\r\n")
            assert (await read_all(reader)).startswith(b"HTTP/1.1 200 ")
            assert seen == [", ".join(["v"] * 4000)]

    run(test)


def test_slow_headers_and_bodies_time_out_while_others_are_served() -> None:
    async def test() -> None:
        limits = HttpLimits(header_timeout_s=0.5, body_timeout_s=0.5)
        async with running(limits) as server:
            slow_head_r, slow_head_w = await connect(server)
            slow_body_r, slow_body_w = await connect(server)
            slow_body_w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            start = time.monotonic()
            for byte in b"GET /echo HTTP/1.1\r\nHost: x":  # a byte every 50 ms
                slow_head_w.write(bytes([byte]))
                slow_body_w.write(b"b")
                await asyncio.sleep(0.05)
                if slow_head_r.at_eof():
                    break
            head_answer = await read_all(slow_head_r)
            assert head_answer.startswith(b"HTTP/1.1 408 ") and b"--header-timeout" in head_answer
            body_answer = await read_all(slow_body_r)
            assert body_answer.startswith(b"HTTP/1.1 408 ") and b"--body-timeout" in body_answer
            assert time.monotonic() - start < 2.0
            reader, writer = await connect(server)
            writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await read_all(reader)).startswith(b"HTTP/1.1 200 ")

    run(test)


def test_a_parse_error_and_100_continue_wait_for_the_answers_before_them() -> None:
    async def test() -> None:
        async with running() as server:
            reader, writer = await connect(server)
            writer.write(b"GET /echo?slow HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
            answer = await read_all(reader)
            assert answer.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 400 " in answer
            reader, writer = await connect(server)
            writer.write(b"GET /echo?slow HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            first = await asyncio.wait_for(reader.readuntil(b"}"), 2)
            assert first.startswith(b"HTTP/1.1 200 ")
            assert await asyncio.wait_for(reader.readexactly(25), 2) == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"ok")
            assert b'{"size":2}' in await asyncio.wait_for(reader.readuntil(b"}"), 2)

    run(test)


def test_head_answers_like_get_without_the_body() -> None:
    async def test() -> None:
        async with running() as server:
            reader, writer = await connect(server)
            writer.write(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await read_all(reader)
            head, rest = answer.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 10" in head
            assert rest.startswith(b"HTTP/1.1 200 ")  # no body between the two answers

    run(test)


def test_answers_while_draining_say_connection_close() -> None:
    async def test() -> None:
        server = HttpServer(make_app(), "127.0.0.1", free_port())
        await server.start()
        reader, writer = await connect(server)
        writer.write(b"GET /echo?slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        closing = asyncio.create_task(server.close(5))
        answer = await read_all(reader)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" in answer
        await closing

    run(test)
