"""inferd's own gRPC server: HTTP/2 read, run and answered on the event loop.

Why not grpcio's server: its Python layer costs ~0.3 ms of a core per call (an echo server tops out
near 2.9k calls/s on one core here), which held inferd's gRPC below real Triton's C++ front end.
Here a call is handled like an HTTP/1.1 request of inferd's own HTTP server: a protocol object per
connection parses frames (``h2.py``), a task per call runs the servicer method, and the answer's
HEADERS, DATA and trailers leave in one write per loop pass with the other answers of that pass.
The servicers are the same objects the grpcio server registers (``servicers.py``).

Bounds: at most ``max_calls`` calls at once over all connections (RESOURCE_EXHAUSTED; under
``--workers N``, over every worker's connections: ``shared_counts.py``), as many connections,
``max_streams`` streams per connection (REFUSED_STREAM), a request message's declared length
checked against the limit and taken from the shared byte budget before its bytes are read,
a unary call's whole message awaited ``body_timeout_s`` from its HEADERS (one sweep a second),
flow-control windows so a client cannot send more than the server reads, reading paused while a
client does not read its answers, header blocks capped, and the preface awaited
``HANDSHAKE_S`` seconds at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import socket
import struct
import time
import zlib
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any, NoReturn, cast

import grpc
from google.protobuf.message import DecodeError, Message

from inferd.core import Core
from inferd.protocols import kserve_v2_grpc
from inferd.protocols._proto import kserve_v2_pb2
from inferd.transport.budget import ByteBudget
from inferd.transport.grpc import h2
from inferd.transport.grpc.errors import SHUTTING_DOWN
from inferd.transport.grpc.health import NativeHealth
from inferd.transport.grpc.servicers import (
    Context,
    KServeV2Servicer,
    ModelServicer,
    PredictionServicer,
    Servicer,
    StreamTurns,
    Turn,
    restricted_paths,
    restriction_refusal,
)
from inferd.transport.grpc.torchserve_servicers import TorchServeInferenceServicer, TorchServeManagementServicer
from inferd.transport.offload import inflate_off_loop
from inferd.transport.restrictions import Restriction
from inferd.transport.shared_counts import SharedCount

log = logging.getLogger("inferd.grpc")

STREAM_WINDOW = 1 << 20  # what a client may send on one stream before the server reads it
CONNECTION_WINDOW = 16 << 20  # ... and on one connection
FRAME_SIZE = 1 << 20  # the largest frame the server accepts (announced in SETTINGS)
MAX_HEADER_BLOCK = 64 << 10
MAX_STREAMS_PER_CONNECTION = 1000
STREAM_INFLIGHT = 64  # requests of one stream running at once; then its messages wait, unread
STREAM_BUFFER = 4 << 20  # answer bytes of one stream waiting for a slow client; then its models wait
_JOIN_BELOW = 64 * 1024  # smaller writes are joined into one buffer; larger ones go as their parts
CONNECTION_BUFFER = 64 << 20  # answer bytes of one connection waiting for its windows; then new calls are refused
HANDSHAKE_S = 10.0
CHATTER = 1000  # frames that ask for work and carry no call (PING, SETTINGS, RST_STREAM, empty DATA, ...)
CHATTER_S = 1.0  # ... in this many seconds: then the connection ends with ENHANCE_YOUR_CALM
REMEMBERED_RESETS = 256  # streams the server reset whose late frames are ignored

UNARY, STREAM = 0, 1
_OK = h2.literal("grpc-status", "0")
_STATUS_415 = h2.literal(":status", "415")
_STATUS_405 = h2.literal(":status", "405")
_PLAIN = h2.literal("content-type", "text/plain; charset=utf-8")
_GRPC = h2.literal("content-type", "application/grpc")
_RESPONSE_HEADERS = h2.STATUS_200 + _GRPC
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_MAX_DEFLATE_RATIO = 1032  # deflate's best case: one byte in, ~1032 out
_DECOMPRESS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

_ON_ITSELF = 0x100  # (beyond a frame's flags) a HEADERS frame whose stream depends on itself

Route = tuple[int, Callable[..., Any], Any]  # (UNARY | STREAM, the method, what parses its requests: FromString)


class _Aborted(grpc.aio.AbortError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _CallContext:
    """What a servicer method may ask of its call (the slice of grpc's context inferd uses)."""

    __slots__ = ("_call", "message_size", "turn")

    def __init__(self, call: _Call, message_size: int, turn: Turn | None = None) -> None:
        self._call = call
        self.message_size = message_size  # the request as it came: no need to serialize it to know
        self.turn = turn  # a stream request's place in its stream's order

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Aborted(code, details)

    def cancelled(self) -> bool:
        return self._call.done

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(field for field in self._call.headers if not field[0].startswith(":"))

    def header(self, name: str) -> str | None:
        """One metadata value (the first of that name), without copying the rest."""
        for key, value in self._call.headers:
            if key == name:
                return value
        return None

    def time_remaining(self) -> float | None:
        deadline = self._call.deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def opened(self) -> float:
        """When the call's HEADERS came (monotonic seconds)."""
        return self._call.opened


class _Call:
    """One HTTP/2 stream: a gRPC call from its HEADERS to its trailers."""

    __slots__ = (
        "body",
        "budgeted",
        "credit",
        "deadline",
        "done",
        "drained",
        "encoding",
        "ended",
        "expected",
        "headers",
        "headers_sent",
        "held",
        "id",
        "opened",
        "outbox",
        "recv_window",
        "route",
        "send_window",
        "task",
        "tasks",
        "timer",
        "trailers",
        "turns",
        "unsent",
        "waiting",
    )
    opened: float  # monotonic seconds when its HEADERS came (set by the connection as it opens the call)

    def __init__(self, stream_id: int, headers: list[tuple[str, str]], send_window: int) -> None:
        self.id, self.headers, self.send_window = stream_id, headers, send_window
        self.route: Route | None = None
        self.encoding: str | None = None
        self.body = bytearray()
        self.ended = False  # the client sent END_STREAM
        self.expected: int | None = None  # content-length, when the client sent one: DATA still to come
        self.done = False  # answered, reset or cut off: nothing more runs for it
        self.headers_sent = False
        self.budgeted = 0
        self.task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.waiting: deque[bytes] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: float | None = None
        self.outbox: deque[bytes | memoryview] = deque()
        self.unsent = 0
        self.trailers: bytes | None = None
        self.drained: asyncio.Future[None] | None = None
        self.credit = 0  # bytes read and not yet given back to the client
        self.recv_window = STREAM_WINDOW  # what the client may still send on it
        self.held = 0  # stream answer bytes counted against the byte budget until sent
        self.turns: StreamTurns | None = None  # a stream's: its requests reach the data plane in the order they came


class _Head:
    """What a well-formed request's header fields ask for, read once per header list (a client's
    calls repeat theirs: the connection keeps the last one's)."""

    __slots__ = ("content_length", "content_type", "encoding", "grpc", "method", "path", "restriction", "route",
                 "te", "timeout")

    def __init__(self, fields: dict[str, str], server: NativeGrpcServer) -> None:
        """``fields``: what ``h2.request_fields`` found in the list."""
        self.method, self.path, self.te = fields[":method"], fields[":path"], "te" in fields
        self.route = server.routes.get(self.path)  # None: no such method
        self.restriction = server.restricted.get(self.path)
        self.content_type = fields.get("content-type", "")
        self.grpc = self.content_type.startswith("application/grpc")
        self.encoding = fields.get("grpc-encoding")
        self.timeout = fields.get("grpc-timeout")
        length = fields.get("content-length")
        self.content_length = None if length is None else int(length)


def _status_trailers(code: grpc.StatusCode, details: str) -> bytes:
    encoded = "".join(c if " " <= c <= "~" and c != "%" else "".join(f"%{b:02X}" for b in c.encode())
                      for c in details[:4096])
    return h2.literal("grpc-status", str(code.value[0])) + (h2.literal("grpc-message", encoded) if encoded else b"")


def _inflate(encoding: str | None, flag: int, payload: memoryview, limit: int) -> bytes | memoryview:
    """A message as sent, or inflated when its flag says so (never past ``limit`` bytes)."""
    if not flag:
        return payload
    wbits = _DECOMPRESS.get(encoding or "")
    if wbits is None:
        raise _Aborted(grpc.StatusCode.INTERNAL, "a compressed message without a grpc-encoding")
    try:
        inflater = zlib.decompressobj(wbits)
        message = inflater.decompress(payload, limit + 1)
    except zlib.error as exc:
        raise _Aborted(grpc.StatusCode.INTERNAL, f"cannot decompress the message: {exc}") from None
    if len(message) > limit or inflater.unconsumed_tail:
        raise _Aborted(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"Received message larger than max (more than {limit} bytes inflated)")
    return message


def _carries(headers: list[tuple[str, str]], restriction: Restriction) -> bool:
    """Whether a call's metadata holds the restriction's key with its value (the first of that key)."""
    return next((value for key, value in headers if key == restriction.header), None) == restriction.value


def _timeout(value: str) -> float | None:
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not (digits.isascii() and digits.isdigit()) or len(value) > 9:  # '²'.isdigit()
        return None
    return int(digits) * unit


class _Connection(asyncio.Protocol):
    def __init__(self, server: NativeGrpcServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.started = False
        self.decoder = h2.HeaderDecoder(max_list_size=MAX_HEADER_BLOCK)
        self.calls: dict[int, _Call] = {}
        self.blocked: dict[int, _Call] = {}  # calls with answer bytes waiting for a window
        self.last_id = 0
        self.send_window = h2.DEFAULT_WINDOW
        self.peer_window = h2.DEFAULT_WINDOW
        self.peer_frame = h2.DEFAULT_FRAME_SIZE
        self.received = 0  # connection-level bytes read and not yet given back to the client
        self.recv_window = CONNECTION_WINDOW  # what the client may still send on the connection
        self.block: tuple[int, int, bytearray] | None = None  # a header block awaiting CONTINUATION
        self.out: list[bytes | memoryview] = []
        self.queued = 0  # bytes in self.out
        self.throttled = False  # answers wait for this loop pass's bytes to be written
        self.unsent = 0  # answer bytes held for the client's flow-control windows
        self.flush_pending = False
        self.writable: asyncio.Future[None] | None = None  # set while the client does not read
        self.closing = False
        self.timer: asyncio.TimerHandle | None = None
        self.active_at = time.monotonic()  # when a call last started or ended
        self.discarding = False  # closing: what the client still sends is dropped
        self.fin_sent = False  # closed from our side: nothing more is written
        self.chatter = 0  # frames of CHATTER counted since chatter_since
        self.chatter_since = time.monotonic()
        self.reset_ids: dict[int, None] = {}  # streams the server reset (oldest first): late frames are dropped
        self.eof = False  # the client shut its side of the socket: close once the calls are answered
        self.last_request: list[tuple[str, str]] = []  # the last well-formed request's fields ...
        self.last_head: _Head | None = None  # ... and what they ask for

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self.server.connections) >= self.server.max_calls and not self.server.evict_idle():
            self.transport.close()  # every connection has calls running: no room
            return
        self.server.connections.add(self)
        self._write(h2.settings({h2.MAX_CONCURRENT_STREAMS: self.server.max_streams, h2.ENABLE_PUSH: 0,
                                 h2.INITIAL_WINDOW_SIZE: STREAM_WINDOW, h2.MAX_FRAME_SIZE: FRAME_SIZE,
                                 h2.MAX_HEADER_LIST_SIZE: MAX_HEADER_BLOCK})
                    + h2.window_update(0, CONNECTION_WINDOW - h2.DEFAULT_WINDOW))
        self.timer = self.loop.call_later(HANDSHAKE_S, self._handshake_timeout)

    def _handshake_timeout(self) -> None:
        if not self.started and self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        for call in list(self.calls.values()):
            self._cut(call)
        self.calls.clear()
        self.blocked.clear()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.out.clear()
        self.queued = 0

    def eof_received(self) -> bool:
        """The client sent FIN (a half-close): it sends nothing more but may still read. The calls
        it completed are answered; one it left halfway cannot end and is cut. Then we close."""
        self.eof = True
        for call in list(self.calls.values()):
            if not call.ended:
                self._cut(call)
        if not self.calls:
            self.loop.call_soon(self._close)
        return True  # keep the socket open for the answers

    def pause_writing(self) -> None:
        """The client does not read: read nothing more from it until it does."""
        self.writable = self.loop.create_future()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self._pump_blocked()

    def _write(self, *data: bytes | memoryview) -> None:
        """Queue bytes (one frame, or a frame's header and its payload) for this loop pass's write."""
        if self.fin_sent:  # closed: a second GOAWAY (a stop after the client's FIN) goes nowhere
            return
        self.out.extend(data)
        self.queued += sum(map(len, data))
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_pending = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            if self.queued < _JOIN_BELOW:
                self.transport.write(b"".join(self.out))
            else:  # large answers' frames go as they are: uvloop writes them with writev
                self.transport.writelines(self.out)
        self.out.clear()
        self.queued = 0
        if self.throttled and self.writable is None:
            self.throttled = False
            self._pump_blocked()

    def goaway(self, code: int = h2.NO_ERROR, message: str = "") -> None:
        """No new calls on this connection; it closes once its calls are answered."""
        self.closing = True
        self._write(h2.goaway(self.last_id, code, message))
        if code != h2.NO_ERROR or not self.calls:
            self.loop.call_soon(self._close)

    def _close(self) -> None:
        """Send what is left and our FIN, then drop what the client still sends until it closes
        (at most a second): closing with unread bytes would make the kernel answer RST, and the
        client could lose the GOAWAY saying why."""
        self._flush()
        transport = self.transport
        if transport is None or transport.is_closing() or self.fin_sent:
            return
        self.discarding = True
        self.buffer.clear()
        for call in list(self.calls.values()):
            self._cut(call)
        self.fin_sent = True
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(1.0, transport.abort)
        else:
            transport.close()

    # -- reading ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        buffer = self.buffer
        buffer += data
        if not self.started:
            if len(buffer) < len(h2.PREFACE):
                if not h2.PREFACE.startswith(bytes(buffer)):
                    cast(asyncio.Transport, self.transport).abort()
                return
            if buffer[:len(h2.PREFACE)] != h2.PREFACE:
                cast(asyncio.Transport, self.transport).abort()
                return
            del buffer[:len(h2.PREFACE)]
            self.started = True
        at, size = 0, len(buffer)
        view = memoryview(buffer)
        try:
            while size - at >= 9 and not self.discarding:  # a draining connection still reads its calls' frames
                length, kind, flags, stream_id = h2.parse_header(buffer, at)
                if length > FRAME_SIZE:
                    raise h2.ConnectionError_(h2.FRAME_SIZE_ERROR, f"frame of {length} bytes, limit {FRAME_SIZE}")
                if size - at - 9 < length:
                    break
                payload = bytes(view[at + 9:at + 9 + length])
                at += 9 + length
                self._frame(kind, flags, stream_id, payload)
        except h2.ConnectionError_ as exc:
            log.debug("gRPC connection error: %s", exc)
            self.discarding = True  # nothing more is read: the connection closes
            self.goaway(exc.code, str(exc))
            return
        finally:
            view.release()
        del buffer[:at]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.block is not None and kind != h2.CONTINUATION:
            raise h2.ConnectionError_(h2.PROTOCOL_ERROR, "a header block was cut by another frame")
        if kind == h2.DATA:
            self._data(flags, stream_id, payload)
        elif kind == h2.HEADERS:
            if stream_id == 0 or stream_id % 2 == 0:
                raise h2.ConnectionError_(h2.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
            block = h2.unpadded(flags, payload) if flags & h2.PADDED else payload
            if flags & h2.PRIORITY_FLAG:
                if int.from_bytes(block[:4], "big") & 0x7FFF_FFFF == stream_id:
                    flags |= _ON_ITSELF  # RFC 9113 §5.3.1: reset once its block is read
                block = block[5:]
            if len(block) > MAX_HEADER_BLOCK:
                raise h2.ConnectionError_(h2.ENHANCE_YOUR_CALM, f"header block over {MAX_HEADER_BLOCK} bytes")
            if flags & h2.END_HEADERS:
                self._headers(stream_id, flags, block)
            else:
                self.block = (stream_id, flags, bytearray(block))
        elif kind == h2.CONTINUATION:
            if self.block is None or self.block[0] != stream_id:
                raise h2.ConnectionError_(h2.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
            if not payload and not flags & h2.END_HEADERS:
                self._chatter()
            self.block[2].extend(payload)
            if len(self.block[2]) > MAX_HEADER_BLOCK:
                raise h2.ConnectionError_(h2.ENHANCE_YOUR_CALM, f"header block over {MAX_HEADER_BLOCK} bytes")
            if flags & h2.END_HEADERS:
                first, self.block = self.block, None
                self._headers(stream_id, first[1], bytes(first[2]))
        elif kind == h2.RST_STREAM:
            self._rst_stream(stream_id, payload)
        elif kind == h2.SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == h2.PING:
            if stream_id:
                raise h2.ConnectionError_(h2.PROTOCOL_ERROR, f"PING on stream {stream_id}")
            if len(payload) != 8:
                raise h2.ConnectionError_(h2.FRAME_SIZE_ERROR, "PING of other than 8 bytes")
            if not flags & h2.ACK:
                self._chatter()
                self._write(h2.frame(h2.PING, h2.ACK, 0, payload))
        elif kind == h2.WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == h2.PRIORITY:  # read and ignored: answers go out as their windows allow
            if stream_id == 0:
                raise h2.ConnectionError_(h2.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5 or int.from_bytes(payload[:4], "big") & 0x7FFF_FFFF == stream_id:
                self._chatter()
                self._reset(stream_id, h2.FRAME_SIZE_ERROR if len(payload) != 5 else h2.PROTOCOL_ERROR)
        elif kind == h2.GOAWAY:  # the client closes when it is done
            if stream_id:
                raise h2.ConnectionError_(h2.PROTOCOL_ERROR, f"GOAWAY on stream {stream_id}")
        elif kind == h2.PUSH_PROMISE:
            raise h2.ConnectionError_(h2.PROTOCOL_ERROR, "a client may not push")
        # unknown frame types are ignored

    def _chatter(self) -> None:
        """One more frame that costs the server work and carries no call: past CHATTER of them
        in CHATTER_S seconds (a PING, SETTINGS, reset or empty-frame flood) the connection ends.
        Keepalive pings, even every few ms, stay far below."""
        self.chatter += 1
        if self.chatter > CHATTER:
            now = time.monotonic()
            if now - self.chatter_since < CHATTER_S:
                raise h2.ConnectionError_(h2.ENHANCE_YOUR_CALM, f"more than {CHATTER} control frames in "
                                                                f"{CHATTER_S:g} s")
            self.chatter, self.chatter_since = 1, now

    def _reset(self, stream_id: int, code: int) -> None:
        """RST_STREAM from the server: the stream's call stops, and frames the client sent
        before it heard are dropped (RFC 9113 §5.1, closed)."""
        self._write(h2.rst_stream(stream_id, code))
        self._remember_reset(stream_id)
        call = self.calls.get(stream_id)
        if call is not None:
            self._cut(call)

    def _remember_reset(self, stream_id: int) -> None:
        resets = self.reset_ids
        resets[stream_id] = None
        if len(resets) > REMEMBERED_RESETS:
            del resets[next(iter(resets))]

    def _rst_stream(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise h2.ConnectionError_(h2.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise h2.ConnectionError_(h2.FRAME_SIZE_ERROR, "RST_STREAM of other than 4 bytes")
        self._chatter()
        self.reset_ids.pop(stream_id, None)  # the client knows the stream is closed: more frames on it are errors
        call = self.calls.get(stream_id)
        if call is not None:
            self._cut(call)
        elif stream_id > self.last_id:
            raise h2.ConnectionError_(h2.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise h2.ConnectionError_(h2.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & h2.ACK:
            if payload:
                raise h2.ConnectionError_(h2.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        self._chatter()
        values = h2.parse_settings(payload)
        window = values.get(h2.INITIAL_WINDOW_SIZE)
        if window is not None:
            change = window - self.peer_window
            for call in self.calls.values():
                call.send_window += change
                if call.send_window > h2.MAX_WINDOW:
                    raise h2.ConnectionError_(h2.FLOW_CONTROL_ERROR, f"stream {call.id}'s window above 2^31-1")
            self.peer_window = window
        self.peer_frame = values.get(h2.MAX_FRAME_SIZE, self.peer_frame)
        self._write(h2.frame(h2.SETTINGS, h2.ACK, 0))
        self._pump_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise h2.ConnectionError_(h2.FRAME_SIZE_ERROR, "WINDOW_UPDATE of other than 4 bytes")
        increment = struct.unpack(">I", payload)[0] & 0x7FFF_FFFF
        if stream_id == 0:
            if increment == 0:
                raise h2.ConnectionError_(h2.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            if self.send_window + increment > h2.MAX_WINDOW:
                raise h2.ConnectionError_(h2.FLOW_CONTROL_ERROR, "the connection's window above 2^31-1")
            self.send_window += increment
            self._pump_blocked()
            return
        call = self.calls.get(stream_id)
        if call is None:
            if stream_id > self.last_id:
                raise h2.ConnectionError_(h2.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return  # a closed stream: the client may not have heard yet
        if increment == 0:
            self._reset(call.id, h2.PROTOCOL_ERROR)
        elif call.send_window + increment > h2.MAX_WINDOW:
            self._reset(call.id, h2.FLOW_CONTROL_ERROR)
        else:
            call.send_window += increment
            self._pump(call)

    def _headers(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self.decoder.decode(block)  # always: the table must follow every block
        if flags & _ON_ITSELF:
            self.last_id = max(self.last_id, stream_id)
            self._reset(stream_id, h2.PROTOCOL_ERROR)
            return
        call = self.calls.get(stream_id)
        if call is not None:  # the client's trailers end its side; anything else breaks the stream
            if call.ended or not flags & h2.END_STREAM:
                self._reset(stream_id, h2.STREAM_CLOSED if call.ended else h2.PROTOCOL_ERROR)
            elif any(name[:1] == ":" for name, _ in headers) or call.expected:
                self._reset(stream_id, h2.PROTOCOL_ERROR)  # RFC 9113 §8.1: no pseudo-headers in trailers;
                # §8.1.1: the DATA did not add up to content-length
            else:
                self._received(call, b"", True)
            return
        if stream_id <= self.last_id:
            if stream_id in self.reset_ids:
                return  # sent before the client heard of the reset
            if stream_id == self.last_id:
                raise h2.ConnectionError_(h2.STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
            raise h2.ConnectionError_(h2.PROTOCOL_ERROR, f"stream {stream_id} after stream {self.last_id}: "
                                                         "new streams' ids grow")
        self.last_id = stream_id
        head = self.last_head
        if head is None or headers != self.last_request:  # (a client's calls repeat their fields: same objects)
            try:
                head = _Head(h2.request_fields(headers), self.server)
            except h2.StreamError as exc:
                log.debug("malformed gRPC request on stream %d: %s", stream_id, exc)
                self._chatter()
                self._reset(stream_id, exc.code)
                return
            self.last_request, self.last_head = headers, head
        if self.closing or len(self.calls) >= self.server.max_streams or self.unsent > CONNECTION_BUFFER:
            self._reset(stream_id, h2.REFUSED_STREAM)  # (a client not reading its answers)
            return
        call = _Call(stream_id, headers, self.peer_window)
        call.ended = bool(flags & h2.END_STREAM)
        if head.content_length is not None:
            call.expected = head.content_length
            if call.ended and call.expected:  # RFC 9113 §8.1.1: a body said, none sent
                self._chatter()
                self._reset(stream_id, h2.PROTOCOL_ERROR)
                return
        self.calls[stream_id] = call
        call.opened = self.active_at = time.monotonic()  # (a trace's GRPC_WAITREAD_START)
        self._begin(call, head)
        if call.ended and not call.done:
            self._received(call, b"", True)

    def _begin(self, call: _Call, head: _Head) -> None:
        if not head.grpc:  # a plain answer: not a gRPC status
            self._refuse(call, _STATUS_415 + _PLAIN, f"inferd serves gRPC here: content-type application/grpc "
                                                     f"expected, got {head.content_type or 'none'}\n".encode())
            return
        method = head.method
        if method != "POST":  # as grpc-go answers
            self._refuse(call, _STATUS_405 + _GRPC + _status_trailers(
                grpc.StatusCode.INTERNAL, f":method {method}, gRPC expects POST"))
            return
        if not head.te:  # as grpc-core answers: te: trailers tells proxies that drop trailers
            self._finish(call, grpc.StatusCode.UNKNOWN, "Missing te: trailers header")
            return
        call.encoding, timeout, route = head.encoding, head.timeout, head.route
        if route is None:
            self._finish(call, grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {head.path}")
            return
        restriction = head.restriction
        if restriction is not None and not _carries(call.headers, restriction):  # before any message is read
            self._finish(call, grpc.StatusCode.UNAVAILABLE, restriction_refusal(restriction))
            return
        if not self.server.admit():
            self._finish(call, grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
            return
        call.route = route  # counted among the calls at once until _end
        if route[0] == STREAM:
            call.turns = StreamTurns()
        if call.encoding not in (None, "identity", *_DECOMPRESS):
            self._finish(call, grpc.StatusCode.UNIMPLEMENTED, f"Compression algorithm '{call.encoding}' not supported")
            return
        seconds = _timeout(timeout) if timeout is not None else None
        if timeout is not None and seconds is None:
            self._finish(call, grpc.StatusCode.INTERNAL, f"malformed grpc-timeout header: {timeout!r}")
            return
        if seconds is not None:
            call.deadline = time.monotonic() + seconds
            call.timer = self.loop.call_later(seconds, self._expired, call)

    def _refuse(self, call: _Call, head: bytes, body: bytes = b"") -> None:
        """An HTTP answer that is no gRPC call (415, 405): its headers, a plain body within the
        client's windows, and the end."""
        self._end(call)
        call.headers_sent = True
        if body:
            self._write(h2.frame(h2.HEADERS, h2.END_HEADERS, call.id, head))
            call.outbox.append(body)
            call.unsent += len(body)
            self.unsent += len(body)
            call.trailers = h2.frame(h2.DATA, h2.END_STREAM, call.id)
        else:
            call.trailers = h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, call.id, head)
        self._pump(call)

    def _expired(self, call: _Call) -> None:
        if not call.done:
            self._finish(call, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise h2.ConnectionError_(h2.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.received += size
        self.recv_window -= size
        if self.recv_window < 0:
            raise h2.ConnectionError_(h2.FLOW_CONTROL_ERROR, "DATA past the connection's window")
        if self.received >= CONNECTION_WINDOW // 2:
            self._write(h2.window_update(0, self.received))
            self.recv_window += self.received
            self.received = 0
        if not payload and not flags & h2.END_STREAM:
            self._chatter()  # an empty frame asks for work and brings nothing
        data = h2.unpadded(flags, payload) if flags & h2.PADDED else payload  # (bad padding: a connection error)
        call = self.calls.get(stream_id)
        if call is None:
            if stream_id > self.last_id:
                raise h2.ConnectionError_(h2.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            if stream_id not in self.reset_ids:  # (sent before the client heard of the reset: dropped)
                self._chatter()
                self._reset(stream_id, h2.STREAM_CLOSED)  # after END_STREAM both ways, or never opened
            return
        if call.ended:
            self._reset(stream_id, h2.STREAM_CLOSED)
            return
        call.credit += size
        call.recv_window -= size
        if call.recv_window < 0:  # a client ignoring flow control: its messages would pile up
            self._reset(call.id, h2.FLOW_CONTROL_ERROR)
            return
        if call.expected is not None:  # RFC 9113 §8.1.1: DATA adds up to content-length, no more, no less
            call.expected -= len(data)
            if call.expected < 0 or (call.expected and flags & h2.END_STREAM):
                self._reset(call.id, h2.PROTOCOL_ERROR)
                return
        self._received(call, data, bool(flags & h2.END_STREAM))

    def _received(self, call: _Call, data: bytes, end: bool) -> None:
        route = call.route
        if call.done or route is None:
            call.ended = call.ended or end
            return
        body = call.body
        body += data
        call.ended = end
        if route[0] == UNARY:
            if not self._sized(call, body):
                return
            if end:
                self._run_unary(call, route, body)
            elif call.credit >= STREAM_WINDOW // 2:
                self._grant(call)
            return
        while len(body) >= 5:  # a stream: every whole message starts, or waits for a slot
            if not self._sized(call, body):
                return
            length = int.from_bytes(body[1:5], "big")
            if len(body) < 5 + length:
                break
            call.waiting.append(bytes(body[:5 + length]))  # inflated when it runs, large ones off the loop
            del body[:5 + length]
        if end and body:
            self._finish(call, grpc.StatusCode.INTERNAL, "the stream ended inside a request message")
            return
        self._start_stream_requests(call)
        if end and not call.tasks and not call.waiting:
            self._finish(call, grpc.StatusCode.OK, "")
        elif self.server.draining:
            self.end_if_idle(call)

    def _sized(self, call: _Call, body: bytearray) -> bool:
        """The message's declared length against the limit and (unary) the byte budget, before
        its bytes are read; False when the call was refused."""
        if len(body) < 5:
            return True
        length = int.from_bytes(body[1:5], "big")
        limit = self.server.max_message_bytes
        if length > limit:
            self._finish(call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"Received message larger than max ({length} vs. {limit})")
            return False
        if call.route is not None and call.route[0] == UNARY:
            if len(body) > 5 + length:
                self._finish(call, grpc.StatusCode.INTERNAL, "more than one request message in a unary call")
                return False
            if not call.budgeted:
                budget = self.server.budget
                if not budget.take(length + 1):
                    self._finish(call, grpc.StatusCode.RESOURCE_EXHAUSTED, budget.refusal(length))
                    return False
                call.budgeted = length + 1
        return True

    def end_stalled_uploads(self, opened_before: float) -> None:
        """The unary calls opened before ``opened_before`` whose message has not all come (with
        its END_STREAM): each holds a place among the calls at once, and from its declared length
        its room in the byte budget, which a client that stalls would hold for good."""
        for call in list(self.calls.values()):
            route = call.route
            if route is None or route[0] != UNARY or call.ended or call.done or call.opened >= opened_before:
                continue  # (a unary call runs once its END_STREAM came)
            came = max(len(call.body) - 5, 0)
            of = f" of {int.from_bytes(call.body[1:5], 'big')}" if len(call.body) >= 5 else ""
            self._finish(call, grpc.StatusCode.DEADLINE_EXCEEDED,
                         f"the request message did not arrive within --body-timeout "
                         f"({self.server.body_timeout_s:g} s): {came}{of} bytes came")

    # -- running ------------------------------------------------------------------------------

    def _run_unary(self, call: _Call, route: Route, body: bytearray) -> None:
        if len(body) < 5 or len(body) != 5 + int.from_bytes(body[1:5], "big"):
            self._finish(call, grpc.StatusCode.INTERNAL, "the request message is missing or cut short")
            return
        call.body = bytearray()
        call.task = self.loop.create_task(self._unary(call, route, body))

    async def _unary(self, call: _Call, route: Route, framed: bytearray) -> None:
        try:
            payload = memoryview(framed)[5:]
            if framed[0]:  # a large message inflates on a thread: the loop serves others meanwhile
                # (large by what it may inflate to: a small bomb is a big job)
                limit = self.server.max_message_bytes
                payload = memoryview(await inflate_off_loop(min(len(payload) * _MAX_DEFLATE_RATIO, limit),
                                                            _inflate, call.encoding, framed[0], payload, limit))
            try:
                request = route[2].FromString(payload)  # (any buffer is read)
            except DecodeError:
                self._finish(call, grpc.StatusCode.INTERNAL, "Exception deserializing request!")
                return
            size = len(payload)
            del framed, payload
            answer: Message = await route[1](request, _CallContext(call, size))  # (no cast: a call each)
            call.task = None  # nothing of the call is left running to cancel: it ends right here
            if not call.done:
                parts = getattr(answer, "parts", None)  # an answer that keeps its tensors' memory (InferAnswer)
                self._answer(call, *(parts() if parts is not None else (answer.SerializeToString(),)))
                self._finish(call, grpc.StatusCode.OK, "")
        except _Aborted as exc:
            self._finish(call, exc.code, exc.details)
        except asyncio.CancelledError:
            pass  # reset by the client, past its deadline, or the server stopping
        except Exception as exc:
            log.exception("internal error in %s", call.route)
            self._finish(call, grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    def _start_stream_requests(self, call: _Call) -> None:
        route = cast(Route, call.route)
        while call.waiting and len(call.tasks) < STREAM_INFLIGHT:
            message = call.waiting.popleft()
            task = self.loop.create_task(self._stream_request(call, route, message))
            call.tasks.add(task)
            task.add_done_callback(functools.partial(self._stream_request_done, call))
        if not call.waiting and call.credit >= STREAM_WINDOW // 4 and not call.ended:
            self._grant(call)

    def _grant(self, call: _Call) -> None:
        """The client may send as much more as was read since the last grant."""
        self._write(h2.window_update(call.id, call.credit))
        call.recv_window += call.credit
        call.credit = 0

    def _stream_request_done(self, call: _Call, task: asyncio.Task[None]) -> None:
        call.tasks.discard(task)
        if call.done:
            return
        self._start_stream_requests(call)
        if call.ended and not call.tasks and not call.waiting:
            self._finish(call, grpc.StatusCode.OK, "")
        elif self.server.draining:
            self.end_if_idle(call)

    def end_if_idle(self, call: _Call) -> None:
        """While the server drains, a stream the client keeps open with nothing running (no request
        in flight, none half read) ends with UNAVAILABLE: it would otherwise hold the drain for all
        of --drain-timeout. Its answers already queued go out first."""
        if (not call.done and not call.ended and call.route is not None and call.route[0] == STREAM
                and not call.tasks and not call.waiting and not call.body):
            self._finish(call, grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    async def _stream_request(self, call: _Call, route: Route, framed: bytes) -> None:
        """One request message of a stream (length-prefixed, as it came) and its answers."""
        turn = cast(StreamTurns, call.turns).next()  # before any await: tasks start in the order their messages came
        try:
            await self._answer_stream_request(call, route, framed, turn)
        finally:
            turn.entered()  # (it never reached the servicer: the next request need not wait)

    async def _answer_stream_request(self, call: _Call, route: Route, framed: bytes, turn: Turn) -> None:
        payload: bytes | memoryview = memoryview(framed)[5:]
        try:
            if framed[0]:  # a large message inflates on a thread: the loop serves others meanwhile
                # (large by what it may inflate to, as for unary calls)
                limit = self.server.max_message_bytes
                payload = await inflate_off_loop(min(len(payload) * _MAX_DEFLATE_RATIO, limit), _inflate,
                                                 call.encoding, framed[0], payload, limit)
            request = route[2].FromString(payload)  # (any buffer is read)
        except _Aborted as exc:
            self._finish(call, exc.code, exc.details)
            return
        except DecodeError:
            self._finish(call, grpc.StatusCode.INTERNAL, "Exception deserializing request!")
            return
        except asyncio.CancelledError:
            return
        produce = cast(Callable[[Any, Context], AsyncGenerator[Message, None]], route[1])
        size = len(payload)
        await turn.wait()  # room in arrival order: a later request never holds room an earlier one waits for
        held = await self._room(size)  # the request counts while it runs: its model waits for room
        del framed, payload
        try:
            async with contextlib.aclosing(produce(request, cast(Context, _CallContext(call, size, turn)))) as answers:
                async for answer in answers:
                    if call.done:
                        return
                    data = answer.SerializeToString()
                    call.held += await self._room(len(data) + 5)  # until its bytes are sent
                    if call.done:
                        return
                    self._answer(call, data)
                    self._pump(call)
                    if call.unsent > STREAM_BUFFER:  # the client reads slowly: its models wait
                        if call.drained is None or call.drained.done():  # one future: every waiter wakes
                            call.drained = self.loop.create_future()
                        await call.drained
                    if self.writable is not None:
                        await self.writable
        except _Aborted as exc:
            self._finish(call, exc.code, exc.details)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.exception("internal error in a gRPC stream")
            self._finish(call, grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.server.budget.give(held)

    async def _room(self, size: int) -> int:
        """Wait until the shared byte budget holds ``size`` more bytes; what was taken (0 for more
        than the whole budget: it goes uncounted rather than waiting forever)."""
        budget = self.server.budget
        while not budget.take(size):
            if size > budget.limit:
                return 0
            await asyncio.sleep(0.005)
        return size

    # -- answering ----------------------------------------------------------------------------

    def _answer(self, call: _Call, *message: bytes | memoryview) -> None:
        """One message (in parts, sent as they are: sliced into frames, never joined) queued on the
        call; the caller's ``_pump`` (or ``_finish``, for a unary answer and its trailers) sends it."""
        size = sum(map(len, message))
        if self.unsent and self.unsent + size > CONNECTION_BUFFER:
            self._finish(call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"the client holds more than {CONNECTION_BUFFER} bytes of answers unread on this connection")
            return
        if not call.headers_sent:
            call.headers_sent = True
            self._write(h2.frame(h2.HEADERS, h2.END_HEADERS, call.id, _RESPONSE_HEADERS))
        if size < _JOIN_BELOW:
            call.outbox.append(memoryview(b"".join((b"\0", size.to_bytes(4, "big"), *message))))
        else:  # large parts go as views; the small ones between them (tags, lengths, small outputs)
            # ride together in one frame, never one each; nothing empty is queued (an empty frame
            # would wait for window it does not use)
            small: list[bytes | memoryview] = [b"\0" + size.to_bytes(4, "big")]
            for part in message:
                if len(part) < _JOIN_BELOW:
                    small.append(part)
                    continue
                _queue_joined(call.outbox, small)
                small = []
                call.outbox.append(memoryview(part))
            _queue_joined(call.outbox, small)
        call.unsent += size + 5
        self.unsent += size + 5

    def _finish(self, call: _Call, code: grpc.StatusCode, details: str) -> None:
        """The call's trailers, after whatever it still has to send; nothing more runs for it."""
        if call.done:
            return
        self._end(call)
        status = _OK if code is grpc.StatusCode.OK else _status_trailers(code, details)
        if call.headers_sent:
            call.trailers = h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, call.id, status)
        else:  # trailers only
            call.headers_sent = True
            call.trailers = h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, call.id,
                                     _RESPONSE_HEADERS + status)
        self._pump(call)

    def _end(self, call: _Call) -> None:
        call.done = True
        if call.timer is not None:
            call.timer.cancel()
        if call.task is not None and not call.task.done() and call.task is not asyncio.current_task():
            call.task.cancel()
        for task in call.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        call.waiting.clear()
        if call.budgeted:
            self.server.budget.give(call.budgeted)
            call.budgeted = 0
        if call.route is not None:
            self.server.release()
            call.route = None
        if call.drained is not None and not call.drained.done():
            call.drained.set_result(None)

    def _cut(self, call: _Call) -> None:
        """Reset by the client, or its connection gone: stop everything, send nothing (what it
        still had to send is dropped)."""
        self._end(call)
        self.unsent -= call.unsent
        call.unsent = 0
        call.outbox.clear()
        self.blocked.pop(call.id, None)
        self._forget(call)

    def _forget(self, call: _Call) -> None:
        """The call is over (cut, or its trailers sent: ``_pump`` leaves nothing of it queued)."""
        self.active_at = time.monotonic()
        if call.held:
            self.server.budget.give(call.held)
            call.held = 0
        self.calls.pop(call.id, None)
        if (self.closing or self.eof) and not self.calls and self.transport is not None:
            self.loop.call_soon(self._close)

    def _pump(self, call: _Call) -> None:
        """Send what the windows allow; the trailers once everything before them is out."""
        outbox = call.outbox
        while outbox:
            room = min(call.send_window, self.send_window, self.peer_frame)
            if room <= 0 or self.writable is not None or self.queued > FRAME_SIZE:
                self.blocked[call.id] = call  # (a window, the socket's buffer or this pass's writes is full)
                self.throttled = self.throttled or room > 0
                return
            head = outbox[0]
            if len(head) <= room:
                outbox.popleft()
                chunk = head
            else:
                chunk, outbox[0] = head[:room], head[room:]
            size = len(chunk)
            call.send_window -= size
            self.send_window -= size
            call.unsent -= size
            self.unsent -= size
            if call.held:
                sent = min(call.held, size)
                call.held -= sent
                self.server.budget.give(sent)
            self._write(h2.frame_header(h2.DATA, 0, call.id, size), chunk)
        self.blocked.pop(call.id, None)
        if call.drained is not None and not call.drained.done():
            call.drained.set_result(None)
        if call.trailers is not None:
            self._write(call.trailers)
            call.trailers = None
            if not call.ended:
                self._write(h2.rst_stream(call.id, h2.NO_ERROR))  # answered: the client may stop sending
                self._remember_reset(call.id)
            self._forget(call)

    def _pump_blocked(self) -> None:
        for call in list(self.blocked.values()):
            self._pump(call)


def _queue_joined(outbox: deque[bytes | memoryview], parts: list[bytes | memoryview]) -> None:
    joined = b"".join(parts)
    if joined:
        outbox.append(memoryview(joined))


def _reader(request_type: type[Message]) -> Any:
    """What parses a route's requests: a v2 infer request's raw tensors are read in place (this
    server keeps the bytes a request came in; grpcio's does not), any other message by protobuf."""
    return kserve_v2_grpc.RawInferRequest if request_type is kserve_v2_pb2.ModelInferRequest else request_type


def channel_arguments(options: tuple[tuple[str, str | int], ...], max_message_bytes: int) -> dict[str, int]:
    """grpcio's channel arguments that mean something to this server (TF Serving's
    ``--grpc_channel_arguments``); the others are named in the log and ignored."""
    chosen = {"max_message_bytes": max_message_bytes, "max_streams": MAX_STREAMS_PER_CONNECTION}
    for key, value in options:
        if key == "grpc.max_receive_message_length" and int(value) > 0:
            chosen["max_message_bytes"] = int(value)
        elif key == "grpc.max_concurrent_streams" and int(value) > 0:
            chosen["max_streams"] = int(value)
        elif key not in ("grpc.so_reuseport", "grpc.max_send_message_length"):
            log.warning("gRPC channel argument %s has no effect on inferd's gRPC server (--grpc-server grpcio "
                        "takes it)", key)
    return chosen


class NativeGrpcServer:
    """Must be built on the event loop's thread. Same surface as the grpcio-based ``GrpcServer``."""

    def __init__(self, core: Core, host: str, port: int, max_message_bytes: int = 64 << 20,
                 budget: ByteBudget | None = None, max_calls: int = 1000, socket_path: str | None = None,
                 reuse_port: bool = False, max_streams: int = MAX_STREAMS_PER_CONNECTION,
                 extra_ports: tuple[int, ...] = (), restrictions: tuple[Restriction, ...] = (),
                 header_forward: re.Pattern[str] | None = None, shared_calls: tuple[SharedCount, int] | None = None,
                 body_timeout_s: float = 60.0) -> None:
        """``max_calls`` bounds this server's connections, and its calls at once unless
        ``shared_calls`` (a worker's: the slots every worker counts its calls in, and the limit
        over all of them) is given."""
        self.host, self.port, self.socket_path, self.reuse_port = host, port, socket_path, reuse_port
        self.shared_calls = shared_calls
        self.restricted = restricted_paths(restrictions)  # Triton's --grpc-restricted-protocol
        self.extra_ports = extra_ports  # the same services on these ports too (TorchServe's management port)
        self.max_message_bytes, self.max_calls, self.max_streams = max_message_bytes, max_calls, max_streams
        self.budget = budget or ByteBudget(8 * max_message_bytes)
        self.body_timeout_s = body_timeout_s  # from a unary call's HEADERS to its whole message
        self._sweeper: asyncio.Task[None] | None = None
        self.active = 0
        self.draining = False  # stop() began: streams end once nothing of theirs runs
        self.connections: set[_Connection] = set()
        servicers: list[Servicer] = [KServeV2Servicer(core, header_forward), PredictionServicer(core),
                                     ModelServicer(core),
                                     TorchServeInferenceServicer(core), TorchServeManagementServicer(core)]
        self.health = NativeHealth([s.name for s in servicers])
        self.routes: dict[str, Route] = {}
        for servicer in [*servicers, self.health]:
            for name, (method, request_type) in servicer.methods().items():
                self.routes[f"/{servicer.name}/{name}"] = (UNARY, method, _reader(request_type))
            for name, (stream, request_type) in servicer.streams().items():
                self.routes[f"/{servicer.name}/{name}"] = (STREAM, stream, _reader(request_type))
        self._servers: list[asyncio.Server] = []

    def admit(self) -> bool:
        """Count a call starting, or False at the limit (this server's, or all workers')."""
        if self.shared_calls is None:
            if self.active >= self.max_calls:
                return False
            self.active += 1
            return True
        slots, limit = self.shared_calls
        if self.active + slots.others() >= limit:
            return False
        self.active += 1
        slots.publish(self.active)
        return True

    def release(self) -> None:
        self.active -= 1
        if self.shared_calls is not None:
            self.shared_calls[0].publish(self.active)

    def evict_idle(self) -> bool:
        """Room for a new connection at the limit: the one idle longest (no call running) gets
        GOAWAY and closes, so idle connections held open cannot lock clients out."""
        idle = [c for c in self.connections if not c.calls and not c.closing]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.active_at)
        oldest.goaway(h2.NO_ERROR, "idle connection closed to make room")
        self.connections.discard(oldest)
        return True

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=1024,
                                          reuse_port=self.reuse_port or None)
        self._servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        for extra in self.extra_ports:
            self._servers.append(await loop.create_server(lambda: _Connection(self), self.host, extra, backlog=1024))
        if self.socket_path:
            self._servers.append(await loop.create_unix_server(lambda: _Connection(self), self.socket_path))
        self._sweeper = loop.create_task(self._sweep_stalled_uploads())

    async def _sweep_stalled_uploads(self) -> None:
        """Once a second, as HTTP's header and body timeouts: no timer per call."""
        while True:
            await asyncio.sleep(1.0)
            opened_before = time.monotonic() - self.body_timeout_s
            for connection in list(self.connections):
                connection.end_stalled_uploads(opened_before)

    async def stop(self, grace: float) -> None:
        """Refuse new calls (GOAWAY), let running ones finish for up to ``grace`` seconds, then cut
        the rest. Health watchers hear NOT_SERVING first."""
        self.health.drain()
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.draining = True
        for connection in list(self.connections):
            connection.goaway()
            for call in list(connection.calls.values()):
                connection.end_if_idle(call)
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
