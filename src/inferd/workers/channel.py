"""Frames between a front-end worker and the process that owns the models: what one side sent in
one pass of its loop goes as one frame (one pickle, one write, one wake-up of the other side).

A frame is a 4-byte length, then the count of out-of-band buffers (2 bytes) and each one's length
(8 bytes), then a pickle (protocol 5) of the list of messages, then those buffers. Large tensors
travel out of band (the codec wraps them in ``pickle.PickleBuffer``): the sender writes the array's
own memory, the receiver reads a large frame straight into a buffer of its own and the arrays view
it, so a tensor is copied once each way, by the kernel. Small frames are read into one reused
buffer and unpickled from there (their bytes are copied out by pickle).

The socket is a Unix socket in a folder only the server's user can enter, and both ends are inferd
processes started by the same command; pickle is safe here for that reason alone — never point a
channel at anything a client can reach.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

import numpy as np

LENGTH = struct.Struct("!I")
COUNT = struct.Struct("!H")
SIZE = struct.Struct("!Q")
NONE = COUNT.pack(0)
MAX_FRAME = 2**32 - 1
MAX_BUFFERS = 2**16 - 1
RECEIVE = 256 * 1024  # the reused buffer small frames are read into
OWN_BUFFER = 64 * 1024  # a frame at least this large is read into a buffer of its own


class FrameTooLarge(ValueError):
    """A frame over MAX_FRAME bytes (the length prefix cannot say it) or with too many buffers."""


def frame(messages: list[Any]) -> list[Any]:
    """The frame's parts, for ``writelines``: its head, the pickle, the out-of-band buffers."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(messages, protocol=5, buffer_callback=buffers.append)
    if not buffers:  # most frames: a few small tensors, all in the pickle
        if len(payload) + COUNT.size > MAX_FRAME:
            raise FrameTooLarge(f"{len(payload) + COUNT.size} bytes, over the channel's frame size of {MAX_FRAME}")
        return [LENGTH.pack(len(payload) + COUNT.size) + NONE, payload]
    raws = [buffer.raw() for buffer in buffers]
    if len(raws) > MAX_BUFFERS:
        raise FrameTooLarge(f"{len(raws)} tensors in one frame, over the channel's {MAX_BUFFERS}")
    table = COUNT.pack(len(raws)) + b"".join(SIZE.pack(raw.nbytes) for raw in raws)
    size = len(table) + len(payload) + sum(raw.nbytes for raw in raws)
    if size > MAX_FRAME:
        raise FrameTooLarge(f"{size} bytes, over the channel's frame size of {MAX_FRAME}")
    return [LENGTH.pack(size) + table, payload, *raws]


def unframe(body: memoryview, own: bool) -> list[Any]:
    """The messages of a frame's body (what follows its length). ``own``: the body is the
    frame's own buffer, which its arrays may view; otherwise their bytes are copied out."""
    (count,) = COUNT.unpack_from(body)
    if not count:
        return cast(list[Any], pickle.loads(body[COUNT.size:]))
    sizes = [SIZE.unpack_from(body, COUNT.size + SIZE.size * n)[0] for n in range(count)]
    start = COUNT.size + SIZE.size * count
    end = len(body) - sum(sizes)
    buffers = []
    for size in sizes:
        buffers.append(body[end:end + size] if own else bytes(body[end:end + size]))
        end += size
    messages: list[Any] = pickle.loads(body[start:len(body) - sum(sizes)], buffers=buffers)
    return messages


class FrameProtocol(asyncio.BufferedProtocol):
    """Reads frames from the stream and hands each message to ``on_message``; sends what is
    given to ``send`` in one frame per pass of the loop."""

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[], None],
                 refuse: Callable[[Any, Exception], Any] | None = None) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        # a message that cannot be sent (it does not pickle, or is over MAX_FRAME): what goes in its
        # place (an error answer to its call), or None (its sender has been told)
        self._refuse = refuse
        self._view = memoryview(bytearray(RECEIVE))
        self._start = self._end = 0  # what is read and not yet taken: _view[_start:_end]
        self._own: memoryview | None = None  # a large frame's body, being read into its own buffer
        self._filled = 0
        self._out: list[Any] = []  # messages sent in this pass of the loop
        self.transport: Any = None  # asyncio's or uvloop's stream transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._own is not None:
            return self._own[self._filled:]
        if len(self._view) - self._end < OWN_BUFFER:  # what is left of a small frame goes to the front
            left = bytes(self._view[self._start:self._end])
            self._view[:len(left)] = left
            self._start, self._end = 0, len(left)
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._own is not None:
            self._filled += nbytes
            if self._filled < len(self._own):
                return
            body, self._own = self._own, None
            self._deliver(unframe(body, own=True))
        else:
            self._end += nbytes
        self._take()

    def _take(self) -> None:
        """Every whole frame in the reused buffer; the start of a large one moves to its own."""
        view = self._view
        while self._end - self._start >= LENGTH.size and self._own is None:
            (size,) = LENGTH.unpack_from(view, self._start)
            body = self._start + LENGTH.size
            if size >= OWN_BUFFER:
                here = min(self._end - body, size)
                self._own = memoryview(cast(Any, np.empty(size, np.uint8)))  # not zeroed: the read fills it
                self._own[:here] = view[body:body + here]
                self._filled = here
                self._start = body + here
                if here == size:  # all of it was here already
                    own, self._own = self._own, None
                    self._deliver(unframe(own, own=True))
                continue
            if self._end - body < size:
                break
            self._start = body + size
            self._deliver(unframe(view[body:body + size], own=False))
        if self._start == self._end:
            self._start = self._end = 0

    def _deliver(self, messages: list[Any]) -> None:
        for message in messages:
            self._on_message(message)

    def send(self, message: Any) -> None:
        """Messages sent in one pass of the loop leave in one frame and one write (a batch's
        answers, a burst of requests): one wake-up of the other process, not one per message."""
        if self.transport is None or self.transport.is_closing():
            return
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(message)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is None or self.transport.is_closing():
            return
        try:
            framed = frame(out)
        except Exception:  # one message that cannot go (a model's own exception) spoils no other
            framed = [part for message in out for part in self._one_by_one(message)]
        self.transport.writelines(framed)

    def _one_by_one(self, message: Any) -> list[Any]:
        try:
            return frame([message])
        except Exception as exc:
            replacement = self._refuse(message, exc) if self._refuse is not None else None
            return [] if replacement is None else frame([replacement])

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._own = None
        self._on_lost()


def describe(exc: BaseException, limit: int = 300) -> str:
    """An exception as "Class: message", even one whose ``str`` fails or runs long."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__


def read_frame(sock: socket.socket) -> list[Any]:
    """One frame's messages from a blocking socket (the worker's line for calls that must answer at once)."""
    (size,) = LENGTH.unpack(_read_exactly(sock, LENGTH.size))
    return unframe(memoryview(_read_exactly(sock, size)), own=True)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise ConnectionError("the model process closed the channel")
        chunks += chunk
    return bytes(chunks)
