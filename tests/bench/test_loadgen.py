"""The load generator frames answers like an HTTP client: any header order, chunked bodies, errors."""

from __future__ import annotations

import asyncio

import pytest

from inferd.bench.loadgen import LoadResult, run_load

TRITON_ORDER = (b"HTTP/1.1 200 OK\r\nInference-Header-Content-Length: 12\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: 16\r\n\r\n" + b"{\"a\": 1}    " + b"\x00" * 4)
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\n!!!\r\n0\r\n\r\n"
FAILED = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 23\r\n\r\n{\"error\": \"queue full\"}"


async def _serve(answer: bytes, seconds: float) -> tuple[LoadResult, int]:
    """Answer every request on the socket with ``answer``; load it for ``seconds``; (result, served)."""
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                served += 1
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await run_load(f"http://127.0.0.1:{port}/v2/models/m/infer", b"x" * 20, 10, 4, seconds)
    return result, served


@pytest.mark.parametrize(("answer", "failing"), [(TRITON_ORDER, False), (CHUNKED, False), (FAILED, True)])
def test_answers_are_framed_whatever_their_headers(answer: bytes, failing: bool) -> None:
    result, served = asyncio.run(_serve(answer, 0.3))
    answers = len(result.latencies_ns) + result.errors
    assert answers > 20
    assert answers <= served <= answers + 4  # at most the last request of each connection is unanswered
    if failing:  # errors are counted by kind with a sample, and are not throughput
        assert result.latencies_ns == []
        assert result.failures == {"HTTP 503": [answers, '{"error": "queue full"}']}
    else:
        assert result.errors == 0 and result.failures == {}
