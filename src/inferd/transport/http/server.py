"""inferd's own HTTP/1.1 server: httptools parses, an asyncio Protocol per connection, no ASGI hop.

A bare ASGI app on uvicorn spends most of its time building ASGI scopes and messages and a task per
request; here a parsed request goes straight to ``HttpApp.dispatch``. Keep-alive, pipelining
(answers in order, one request at a time per connection), ``Expect: 100-continue`` and idle
timeouts are handled here, and so is everything that keeps one client from taking the server:
see ``HttpLimits``. Everything else is the app's business.

A connection reads only what it can answer: reading pauses while its unsent answers pass
``write_buffer_bytes`` or ``max_pipelined`` requests wait. A request is refused before its body
is read (413 by ``Content-Length``, 404/405, a failed credentials check, 503 over the shared byte
budget); a refusal, like a parse error, is queued behind the answers already owed, sent with
``connection: close``, and the rest of what the client sends is discarded for a moment so the
client reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote

import httptools

from inferd.transport.budget import ByteBudget
from inferd.transport.http.app import HttpApp, HttpRequest, HttpResponse, error_response

log = logging.getLogger("inferd.http")

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_REASONS[499] = b"Client Closed Request"
_LINGER_S = 2.0  # after a refusal, how long the rest of the client's request is read and dropped
_IDLE, _HEAD, _BODY = 0, 1, 2  # where a connection is in reading its next request
_FEED_STEP = 1024  # bytes parsed at a time while requests (not a body of known size) arrive:
# at most ~30 of the smallest requests, so one read of pipelined requests stops near max_pipelined
_KEEP_AS_READ = 64 * 1024  # a body with more than this left to come is kept as read, not parsed
_CHUNKED_STEP = 64 * 1024  # the same for a chunked body (no request ends inside it unseen for long)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one client may hold: each limit answers with a status instead of growing the server."""

    max_connections: int = 1000  # over it: an idle or stalled connection is dropped, else 503
    max_url_bytes: int = 8 * 1024  # 414
    max_header_bytes: int = 64 * 1024  # request line and headers together; 431
    max_headers: int = 100  # 431
    header_timeout_s: float = 10.0  # from a request's first byte to the end of its headers; 408
    body_timeout_s: float = 60.0  # from the end of the headers to the end of the body; 408
    keep_alive_s: float = 75.0  # an idle keep-alive connection is closed after this
    write_buffer_bytes: int = 1024 * 1024  # unsent answers above this pause reading and answering
    max_pipelined: int = 64  # parsed requests a connection may queue before reading pauses
    # bodies over large_body_bytes are read at most this fast, all connections together (reading
    # costs the loop ~0.7 ms per MiB): uploads that are never finished cannot take it from others
    large_body_bytes: int = 1024 * 1024
    large_body_rate: float = 256 * 1024 * 1024  # bytes/s; 0: no limit (--large-body-rate)


class _Refuse(Exception):
    """Raised in a parser callback: the request is answered with ``response`` and no more is read."""

    def __init__(self, status: int, message: str = "", response: HttpResponse | None = None) -> None:
        super().__init__(message)
        self.response = response or error_response(status, message)


# One parsed request waiting its turn (request, None, keep_alive, budget bytes it holds), or a
# refusal that ends the connection (None, response, False, 0).
_Job = tuple[HttpRequest | None, HttpResponse | None, bool, int]


def _head(status: int, response: HttpResponse, keep_alive: bool) -> bytes:
    length = b"transfer-encoding: chunked" if response.stream is not None else b"content-length: %d" % (
        response.size())
    lines = [b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n%s\r\n" % (
        status, _REASONS.get(status, b"Unknown"), response.content_type, length)]
    for name, value in response.headers:
        lines.append(b"%s: %s\r\n" % (name, value))
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


_JOIN_BELOW = 64 * 1024  # smaller answers go out as one buffer; larger ones beside their head, uncopied


def _send(transport: asyncio.Transport, head: bytes, response: HttpResponse) -> None:
    body, tail = response.body, response.tail
    if not tail:
        if len(body) < _JOIN_BELOW:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
    elif response.size() < _JOIN_BELOW:
        transport.write(b"".join((head, body, *tail)))
    else:
        transport.writelines((head, body, *tail))  # uvloop sends them with one writev, or keeps them by reference


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._app = server.app
        self._limits = server.limits
        self._budget = server.budget
        self._max_body = server.app.max_body_bytes
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[_Job] = deque()
        self._busy = False  # a request of this connection is being answered
        self._closed = False
        self._stopped = False  # nothing more is parsed: a refusal is queued or was sent
        self._write_paused = False
        self._reading = True
        self._continue_due = False  # 100 Continue owed once the answers before it have left
        self._phase = _IDLE
        self.phase_since = self.last_active = time.monotonic()
        self._began_here = False
        self._request: HttpRequest | None = None  # the request being read, once its headers came
        self._body: list[bytes] | None = None  # its chunks, joined once it is complete
        self._body_size = self._expected = 0
        self._backlog: bytearray | None = None  # read but not parsed: max_pipelined requests wait
        self._backlog_due = False
        self._keep_alive = True  # the request being read allows another after it
        self._kept = False  # the body being read bypasses the parser (see _take_body)
        self._into: _BodyReader | None = None  # reads the rest of that body straight into place
        self._whole: bytearray | None = None  # the body it read
        self._large = 0  # bytes of a large body read in this turn (they spend the server's rate)
        self._throttled = False  # reading waits: large bodies came faster than large_body_rate
        self._reserved = 0  # budget bytes held by the request being read
        self._url = b""
        self._headers: dict[str, str] = {}
        self._repeated: dict[str, list[str]] | None = None
        self._header_count = self._head_bytes = self._head_partial = 0
        self._counted = False  # reserved by Content-Length (else chunk by chunk)

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_write_buffer_limits(high=self._limits.write_buffer_bytes)  # type: ignore[attr-defined]
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._server.admit(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Free everything now: the parser and this object point at each other (a cycle only a
        full collection would find), and buffered bodies would otherwise wait for it."""
        self._closed = True
        self._server.connections.discard(self)
        self._budget.give(self._reserved + sum(job[3] for job in self._pending))
        self._pending.clear()
        self._reserved = 0
        self._body = self._backlog = None
        if self._into is not None:
            self._into.release()
        self._request = self._into = self._whole = None
        self._parser = None
        self._transport = None

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()
        self._next()

    def data_received(self, data: bytes) -> None:
        if self._stopped or self._parser is None:
            return  # a refusal is on its way: the rest is dropped
        self.last_active = time.monotonic()
        if self._backlog is not None:  # a read already under way when reading paused
            self._backlog += data
            return
        self._feed(memoryview(data))

    def _feed(self, data: memoryview) -> None:
        """Parse ``data`` a step at a time: once ``max_pipelined`` requests wait, the rest waits
        unparsed (with reading paused) until answers drain, so one read of pipelined requests
        cannot hold the loop for all of them. A body with a known length goes in one step."""
        offset, size = 0, len(data)
        while offset < size:
            if self._stopped or self._parser is None:
                return
            if len(self._pending) >= self._limits.max_pipelined:
                self._backlog = bytearray(data[offset:])
                self._update_reading()
                return
            if (self._phase == _BODY and self._counted and self._body is not None
                    and (self._kept or self._expected - self._body_size > _KEEP_AS_READ)):
                offset += self._take_body(data, offset)
                continue
            step = _FEED_STEP
            if self._phase == _BODY:
                step = max(_CHUNKED_STEP, self._expected - self._body_size) if self._counted else _CHUNKED_STEP
            piece = data[offset:offset + step]
            offset += len(piece)
            self._parse(piece)
        if self._large:
            self._throttle()

    def _throttle(self) -> None:
        wait = self._server.large_body_wait(self._large)
        self._large = 0
        if wait > 0 and not self._throttled and self._server.loop is not None:
            self._throttled = True
            self._update_reading()
            self._server.loop.call_later(wait, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttled = False
        self._update_reading()

    def _take_body(self, data: memoryview, offset: int) -> int:
        """The rest of a body of known length, kept as it came (a whole read is kept without a
        copy) rather than fed through the parser, which would copy every byte once more; the
        parser that read the headers is replaced by a fresh one for the next request. A body of
        up to ``large_body_bytes`` with more to come is read straight into place instead."""
        need = self._expected - self._body_size
        piece = data[offset:offset + need]
        came = self._body_size + len(piece)
        if (len(piece) < need and self._expected <= self._limits.large_body_bytes and came * 4 >= self._expected
                and self._transport is not None):  # (a quarter first: a few bytes sent cannot fill a MiB here)
            assert self._body is not None
            self._into = _BodyReader(self, self._body, piece)
            self._kept = True
            self._body, self._body_size = [], came
            self._transport.set_protocol(self._into)
            return len(piece)
        whole = offset == 0 and len(piece) == len(data) and isinstance(data.obj, bytes)
        chunk = data.obj if whole else bytes(piece)
        assert self._body is not None and isinstance(chunk, bytes)
        self._kept = True  # the parser saw none of it: the rest of this body is kept likewise
        self._body.append(chunk)
        self._body_size += len(chunk)
        if self._expected > self._limits.large_body_bytes:
            self._large += len(chunk)
        if self._body_size == self._expected:
            self._kept = False
            self._parser = httptools.HttpRequestParser(self)
            self.on_message_complete()
        return len(chunk)

    def _read_into(self, nbytes: int) -> None:
        """``_BodyReader`` read ``nbytes`` more of the body; once it is whole, this connection
        reads again (the next request is parsed as usual)."""
        self.last_active = time.monotonic()
        self._body_size += nbytes
        if self._body_size < self._expected:
            return
        assert self._into is not None and self._into.body is not None
        self._whole = self._into.body
        self._stop_reading_into()
        self._kept = False
        self._parser = httptools.HttpRequestParser(self)
        self.on_message_complete()

    def _stop_reading_into(self) -> None:
        """Back to this protocol. The reader lets go of the body first: uvloop keeps the last
        buffered protocol's callbacks (and with them the reader) until the connection closes."""
        reader, self._into = self._into, None
        if reader is None:
            return
        reader.release()
        if self._transport is not None:
            self._transport.set_protocol(self)

    def _feed_backlog(self) -> None:
        self._backlog_due = False
        backlog, self._backlog = self._backlog, None
        if backlog is not None and not self._closed:
            self._feed(memoryview(backlog))
            self._update_reading()

    def _parse(self, data: memoryview) -> None:
        assert self._parser is not None
        self._began_here = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refusal = exc.__context__
            if not isinstance(refusal, _Refuse):
                raise
            self._refuse(refusal.response)
        except httptools.HttpParserUpgrade:
            self._refuse(error_response(400, "protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            self._refuse(error_response(400, f"malformed HTTP request: {exc}"))
        else:
            if self._phase == _HEAD and not self._began_here:  # headers spread over pieces
                # bytes fed since the piece they began in are all head bytes: a header that never
                # ends is refused by them (the parser reports a header only once it is complete)
                self._head_partial += len(data)
                if self._head_partial > self._limits.max_header_bytes:
                    self._refuse(error_response(
                        431, f"request headers are over {self._limits.max_header_bytes} bytes"))

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._repeated = None
        self._header_count = self._head_bytes = self._head_partial = 0
        self._counted = False
        self._phase, self.phase_since = _HEAD, self.last_active  # the read that brought it
        self._began_here = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_url_bytes:
            raise _Refuse(414, f"the request target is over {self._limits.max_url_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        """The number of headers is checked here; their bytes once they are complete (and per
        read in ``data_received`` while they are not: a read holds at most one socket buffer)."""
        self._header_count += 1
        self._head_bytes += len(name) + len(value)
        if self._header_count > self._limits.max_headers:
            raise _Refuse(431, f"a request has over {self._limits.max_headers} headers")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key not in self._headers:
            self._headers[key] = text
            return
        if self._repeated is None:  # repeated headers are joined once, at the end: linear
            self._repeated = {}
        self._repeated.setdefault(key, [self._headers[key]]).append(text)

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        if self._head_bytes > self._limits.max_header_bytes:
            raise _Refuse(431, f"request headers are over {self._limits.max_header_bytes} bytes")
        received = self.phase_since  # the read that brought its first bytes (a trace's HTTP_RECV_START)
        self._phase, self.phase_since = _BODY, self.last_active
        self._keep_alive = self._parser.should_keep_alive()
        headers = self._headers
        if self._repeated:
            for key, values in self._repeated.items():
                headers[key] = ", ".join(values)
        method = self._parser.get_method().decode("ascii")
        path, _, query = self._url.partition(b"?")
        text = path.decode("latin-1")
        request = self._request = HttpRequest(method, unquote(text) if "%" in text else text,
                                              query.decode("latin-1"), headers, bytearray(),
                                              disconnected=self._is_closed, received=received)
        self._body, self._body_size = [], 0
        declared = headers.get("content-length")
        chunked = "transfer-encoding" in headers and "chunked" in headers["transfer-encoding"].lower()
        if not chunked and (declared is None or declared == "0"):
            return  # no body: nothing to refuse early
        size = int(declared) if declared is not None and declared.isascii() and declared.isdigit() else 0
        if size > self._max_body:
            raise _Refuse(413, response=self._app.too_large(size))
        early = self._app.refuse_early(request)
        if early is not None:
            raise _Refuse(early.status, response=early)
        if size:
            self._take(size)
        self._counted = bool(size)
        self._expected = size
        if headers.get("expect", "").lower() == "100-continue":
            self._continue_due = True
            self._send_continue()

    def on_body(self, body: bytes) -> None:
        """Chunks are kept as they came and joined once: appending to one buffer reallocates and
        copies it again and again as it grows (most of the loop's time under big uploads)."""
        if self._body is None:
            return
        self._body.append(body)
        self._body_size += len(body)
        if self._body_size > self._limits.large_body_bytes or self._expected > self._limits.large_body_bytes:
            self._large += len(body)
        if self._counted:
            return
        if self._body_size > self._max_body:
            raise _Refuse(413, response=self._app.too_large())
        self._take(len(body))

    def on_message_complete(self) -> None:
        assert self._parser is not None
        request = self._request
        self._phase = _IDLE
        self._continue_due = False
        if request is None:  # refused while reading
            return
        keep_alive = self._keep_alive and not self._server.draining
        request.read = self.last_active  # (a trace's HTTP_RECV_END)
        chunks = self._body
        if self._whole is not None:
            request.body, self._whole = self._whole, None
        elif chunks:
            request.body = bytearray(chunks[0]) if len(chunks) == 1 else bytearray().join(chunks)
        self._pending.append((request, None, keep_alive, self._reserved))
        self._request, self._body, self._reserved = None, None, 0
        if len(self._pending) >= self._limits.max_pipelined:
            self._update_reading()
        if not self._busy:
            self._next()

    def _take(self, size: int) -> None:
        if not self._budget.take(size):
            raise _Refuse(503, self._budget.refusal(size))
        self._reserved += size

    # -- answering, in order ---------------------------------------------------------------
    def _is_closed(self) -> bool:
        return self._closed

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None:
            return
        want = self._stopped or not (self._write_paused or self._backlog is not None or self._throttled
                                     or len(self._pending) >= self._limits.max_pipelined)
        if want != self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _next(self) -> None:
        if self._busy or self._closed or self._write_paused:
            return
        if not self._pending:
            self._send_continue()
            return
        request, refusal, keep_alive, reserved = self._pending.popleft()
        if self._backlog is not None:
            if not self._backlog_due and len(self._pending) < self._limits.max_pipelined:
                self._backlog_due = True  # parsed on the loop's next turn, not inside this callback
                assert self._server.loop is not None
                self._server.loop.call_soon(self._feed_backlog)
        elif not self._reading:
            self._update_reading()
        if refusal is not None:
            self._write(refusal, False)
            self._linger()
            return
        self._busy = True
        loop = self._server.loop
        assert loop is not None and request is not None
        task = loop.create_task(self._answer(request, keep_alive, reserved))
        self._server.tasks.add(task)
        task.add_done_callback(self._server.tasks.discard)

    async def _answer(self, request: HttpRequest, keep_alive: bool, reserved: int) -> None:
        try:
            response = await self._app.dispatch(request)
        finally:
            if reserved:
                self._budget.give(reserved)
            self._busy = False
        self.last_active = time.monotonic()
        if self._closed:
            return
        keep_alive = keep_alive and not self._server.draining
        head = _head(response.status, response, keep_alive)
        if response.stream is not None:
            self._busy = True  # the next answer waits for the stream's end
            try:
                keep_alive = await self._stream(head, response.body, response.stream) and keep_alive
            finally:
                self._busy = False
            if self._closed:
                return
        elif request.method == "HEAD":
            self._transport.write(head)  # type: ignore[union-attr]
        else:
            _send(self._transport, head, response)  # type: ignore[arg-type]
        if not keep_alive:
            self._close()
        elif self._pending or self._continue_due:
            self._next()

    async def _stream(self, head: bytes, first: bytes, chunks: AsyncGenerator[bytes, None]) -> bool:
        """Send a streamed answer in chunked encoding, each chunk as it comes; waits while the
        client reads slowly (``pause_writing``), and stops the stream if the client goes away.
        The chunks not yet sent count against the byte budget: a chunk waits for room in it (the
        model waits behind it), so slow readers cannot grow the server's memory together.
        False: the answer could not be finished (the connection must close)."""
        held = [0]  # budget bytes this stream holds: what sits in the transport's buffer
        try:
            async with contextlib.aclosing(chunks) as stream:
                assert self._transport is not None
                if not await self._send_chunk(head + (b"%x\r\n%s\r\n" % (len(first), first) if first else b""),
                                              held):
                    return False
                async for chunk in stream:
                    while self._write_paused and not self._closed:
                        await asyncio.sleep(0.005)
                    if chunk and not await self._send_chunk(b"%x\r\n%s\r\n" % (len(chunk), chunk), held):
                        return False
            if self._closed or self._transport is None:
                return False
            self._transport.write(b"0\r\n\r\n")
            return True
        finally:
            self._budget.give(held[0])

    async def _send_chunk(self, data: bytes, held: list[int]) -> bool:
        """Write ``data`` once the budget has room for it; False if the client went away."""
        size = len(data)
        while True:
            if self._closed or self._transport is None:
                return False
            sent = held[0] - self._transport.get_write_buffer_size()
            if sent > 0:  # bytes that left the buffer give their room back
                self._budget.give(sent)
                held[0] -= sent
            if self._budget.take(size):
                held[0] += size
                break
            if held[0] == 0 and size > self._budget.limit:
                break  # larger than the whole budget: it goes alone, once this stream holds nothing
            await asyncio.sleep(0.005)
        self._transport.write(data)
        return True

    def _write(self, response: HttpResponse, keep_alive: bool, head_only: bool = False) -> None:
        if self._transport is not None:
            head = _head(response.status, response, keep_alive)
            if head_only:
                self._transport.write(head)
            else:
                _send(self._transport, head, response)

    def _send_continue(self) -> None:
        """``100 Continue`` only once every earlier answer has left: it never overtakes one."""
        if self._continue_due and not self._busy and not self._pending and self._transport is not None:
            self._continue_due = False
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _refuse(self, response: HttpResponse) -> None:
        """Stop parsing; the refusal goes out after the answers this connection is owed."""
        self._budget.give(self._reserved)
        self._reserved = 0
        self._request = self._body = self._whole = None
        self._stop_reading_into()  # what the client still sends comes here, to be dropped
        self._stopped = True
        self._continue_due = False
        self._pending.append((None, response, False, 0))
        self._update_reading()
        self._next()

    def _linger(self) -> None:
        """Close after a refusal: stop writing, drop what the client still sends for a moment
        (closing with unread bytes would reset the connection before the client read the answer)."""
        self._closed = self._stopped = True
        transport = self._transport
        if transport is None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._update_reading()
        assert self._server.loop is not None
        self._server.loop.call_later(_LINGER_S, transport.close)

    def _close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- the server's sweep ----------------------------------------------------------------
    def idle(self) -> bool:
        return not self._busy and not self._pending and self._phase == _IDLE

    def evictable(self) -> bool:
        """Nothing owed to it: idle keep-alive, or a request still arriving."""
        return not self._busy and not self._pending and not self._closed

    def check(self, now: float) -> None:
        limits = self._limits
        if self._closed or self._stopped or self._transport is None:
            return
        if self._phase == _IDLE:
            if self.idle() and now - self.last_active > limits.keep_alive_s:
                self._close()
        elif not self._reading:
            return  # paused by us (answers owed): the client's clock is not running
        elif self._phase == _HEAD and now - self.phase_since > limits.header_timeout_s:
            self._refuse(error_response(
                408, f"request headers took over {limits.header_timeout_s:g} s (--header-timeout)"))
        elif self._phase == _BODY and now - self.phase_since > limits.body_timeout_s:
            self._refuse(error_response(
                408, f"request body took over {limits.body_timeout_s:g} s (--body-timeout)"))


class _BodyReader(asyncio.BufferedProtocol):
    """The connection's protocol while the rest of one body of known length arrives: the kernel
    reads it straight into the request's bytearray, the only copy. It never offers more room than
    the body has left, so a request pipelined behind it stays unread; then ``_Connection`` reads
    again. The connection's limits hold meanwhile: its clocks and budget are the connection's."""

    def __init__(self, connection: _Connection, chunks: list[bytes], piece: memoryview) -> None:
        self.connection = connection
        self.body: bytearray | None = bytearray(connection._expected)
        self._view = memoryview(self.body)
        filled = 0
        came: list[bytes | memoryview] = [*chunks, piece]  # through the parser's step, and this read
        for chunk in came:
            self._view[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        self._filled = filled

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        self.connection._read_into(nbytes)

    def release(self) -> None:
        """Let go of the body (and its view: a bytearray viewed cannot be resized by a handler)."""
        self.body = None
        self._view.release()
        self._view = memoryview(b"")

    def pause_writing(self) -> None:
        self.connection.pause_writing()

    def resume_writing(self) -> None:
        self.connection.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.connection_lost(exc)


class HttpServer:
    """Listens on host:port and serves ``app``; ``close`` stops accepting and drains."""

    def __init__(self, app: HttpApp, host: str, port: int, limits: HttpLimits | None = None,
                 budget: ByteBudget | None = None, reuse_port: bool = False) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.reuse_port = reuse_port  # several processes share the port (--workers)
        self.limits = limits or HttpLimits()
        self.budget = budget or ByteBudget(8 * app.max_body_bytes)
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start(); connections exist only after
        self._large_allowance = float(self.limits.large_body_bytes)  # a token bucket of large-body bytes
        self._large_clock = time.monotonic()

    def large_body_wait(self, size: int) -> float:
        """Spend ``size`` bytes of large bodies; how long the reader should wait before reading on."""
        rate = self.limits.large_body_rate
        if not rate:
            return 0.0
        now = time.monotonic()
        self._large_allowance = min(self._large_allowance + (now - self._large_clock) * rate,
                                    float(self.limits.large_body_bytes)) - size
        self._large_clock = now
        return -self._large_allowance / rate if self._large_allowance < 0 else 0.0

    async def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port,
                                                backlog=4096, reuse_address=True, reuse_port=self.reuse_port)
        self._sweeper = loop.create_task(self._sweep())

    def admit(self, connection: _Connection) -> None:
        """At the connection limit, the connection that has waited longest without being owed an
        answer (a stalled request first, then an idle keep-alive one) makes room; when every
        connection is owed one, the newcomer gets 503."""
        if len(self.connections) >= self.limits.max_connections:
            victims = [c for c in self.connections if c.evictable()]
            if not victims:
                connection._write(error_response(503, f"the server has {len(self.connections)} connections, "
                                                      "its limit (--max-connections); retry shortly"), False)
                connection._close()
                return
            min(victims, key=lambda c: (c.idle(), c.last_active)).abort()
        self.connections.add(connection)

    async def _sweep(self) -> None:
        step = max(min(self.limits.header_timeout_s, self.limits.keep_alive_s) / 4, 0.05)
        while True:
            await asyncio.sleep(min(step, 1.0))
            now = time.monotonic()
            for connection in list(self.connections):
                connection.check(now)

    async def close(self, timeout: float) -> None:
        """Stop accepting, let running requests finish (within ``timeout``, a real bound), then
        close every connection; answers sent meanwhile say ``connection: close``."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection.idle():
                connection._close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=max(timeout, 0.0))
        for task in list(self.tasks):
            task.cancel()
        for connection in list(self.connections):
            connection._close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
