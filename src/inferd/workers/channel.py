"""Frames between a front-end worker and the process that owns the models: what one side sent in
one pass of its loop goes as one frame (one pickle, one write, one wake-up of the other side).

A frame is a 4-byte length, then the count of out-of-band buffers (2 bytes) and each one's length
(8 bytes), then a pickle (protocol 5) of the list of messages, then those buffers. Buffers of 64
KiB or more (large tensors: the codec wraps them in ``pickle.PickleBuffer``) travel out of band:
the sender writes the array's own memory, the receiver reads each straight into an allocation of
its own that the array views, so a tensor is copied once each way, by the kernel; an array handed
to ``send`` must not be written to afterwards. Smaller frames are read into one reused buffer and
unpickled from there (pickle copies out what it keeps).

The socket is a Unix socket in a folder only the server's user can enter, and both ends are inferd
processes started by the same command; pickle is safe here for that reason alone — never point a
channel at anything a client can reach.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
import threading
import weakref
from collections.abc import Callable
from typing import Any, cast

import numpy as np

LENGTH = struct.Struct("!I")
HEAD = struct.Struct("!IH")  # the frame's length, its count of out-of-band buffers
COUNT = struct.Struct("!H")
SIZE = struct.Struct("!Q")
NONE = COUNT.pack(0)
MAX_FRAME = 2**32 - 1
MAX_BUFFERS = 4096  # a frame with more goes message by message (its table stays within OWN_BUFFER)
OUT_OF_BAND = 64 * 1024  # a buffer this large travels after the pickle, read into memory of its own
RECEIVE = 256 * 1024  # the reused buffer the rest is read into
OWN_BUFFER = 64 * 1024  # a pickle this large is read into memory of its own too


class FrameTooLarge(ValueError):
    """A frame over MAX_FRAME bytes (the length prefix cannot say it) or with too many buffers."""


def frame(messages: list[Any]) -> list[Any]:
    """The frame's parts, for ``writelines``: its head, the pickle, the out-of-band buffers."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:  # False: after the pickle; True: inside it
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND:
            return True
        buffers.append(raw)
        return False

    payload = pickle.dumps(messages, protocol=5, buffer_callback=out_of_band)
    if not buffers:  # most frames: a few small tensors, all in the pickle
        if len(payload) + COUNT.size > MAX_FRAME:
            raise FrameTooLarge(f"{len(payload) + COUNT.size} bytes, over the channel's frame size of {MAX_FRAME}")
        return [LENGTH.pack(len(payload) + COUNT.size) + NONE, payload]
    if len(buffers) > MAX_BUFFERS:
        raise FrameTooLarge(f"{len(buffers)} large tensors in one frame, over the channel's {MAX_BUFFERS}")
    table = COUNT.pack(len(buffers)) + b"".join(SIZE.pack(raw.nbytes) for raw in buffers)
    size = len(table) + len(payload) + sum(raw.nbytes for raw in buffers)
    if size > MAX_FRAME:
        raise FrameTooLarge(f"{size} bytes, over the channel's frame size of {MAX_FRAME}")
    return [LENGTH.pack(size) + table, payload, *buffers]


def unframe(body: memoryview) -> list[Any]:
    """The messages of a frame's body (what follows its length) read whole (the blocking line)."""
    (count,) = COUNT.unpack_from(body)
    sizes = [SIZE.unpack_from(body, COUNT.size + SIZE.size * n)[0] for n in range(count)]
    end = len(body) - sum(sizes)
    buffers = []
    for size in sizes:
        buffers.append(body[end:end + size])
        end += size
    messages: list[Any] = pickle.loads(body[COUNT.size + SIZE.size * count:len(body) - sum(sizes)], buffers=buffers)
    return messages


class _Pool:
    """Memory for large tensors, used again once no array views it. A new allocation for each
    costs a page fault per 4 KiB every time (the allocator hands large blocks back to the system
    when they are freed): 2.3x the CPU of the whole hop for an image at c=8."""

    KEPT = 32  # free buffers kept at most ...
    KEPT_BYTES = 64 * 2**20  # ... and bytes, per connection: the oldest go first

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()  # buffers come back from any thread (where an array was dropped)

    def take(self, size: int) -> memoryview:
        """``size`` bytes, in a buffer at most twice as large (it lives as long as the tensor)."""
        base = None
        with self._lock:
            for n, candidate in enumerate(self._free):
                if size <= candidate.nbytes <= 2 * size:
                    base = self._free.pop(n)
                    break
        if base is None:
            base = np.empty(size, np.uint8)  # not zeroed: a read fills it
        handle = base[:size]  # what the arrays view; when the last of them goes, so does it
        weakref.finalize(handle, _give_back, weakref.ref(self), base)  # (a kept array keeps no pool)
        return memoryview(cast(Any, handle))

    def give_back(self, base: np.ndarray) -> None:
        with self._lock:
            free = self._free
            free.append(base)
            while len(free) > self.KEPT or sum(buffer.nbytes for buffer in free) > self.KEPT_BYTES:
                free.pop(0)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


def _give_back(pool: weakref.ref[_Pool], base: np.ndarray) -> None:
    alive = pool()
    if alive is not None:
        alive.give_back(base)


class _Parts:
    """A large frame read straight into memory of its own: its pickle, and each out-of-band
    buffer in a buffer of its own (aligned as numpy aligns, and free again with the last array
    that views it, not with its whole frame)."""

    def __init__(self, pickle_size: int, sizes: list[int], pool: _Pool) -> None:
        self._parts = [memoryview(bytearray(pickle_size)), *(pool.take(size) for size in sizes)]
        self._index = self._filled = 0  # the part being read, and how much of it is
        self.advance(0)

    @property
    def done(self) -> bool:
        return self._index == len(self._parts)

    def space(self) -> memoryview:
        return self._parts[self._index][self._filled:]

    def advance(self, nbytes: int) -> None:
        self._filled += nbytes
        while self._index < len(self._parts) and self._filled == len(self._parts[self._index]):
            self._index += 1
            self._filled = 0

    def fill(self, data: memoryview) -> int:
        """Take what ``data`` holds of the parts; returns how many bytes that was."""
        taken = 0
        while taken < len(data) and not self.done:
            space = self.space()
            n = min(len(space), len(data) - taken)
            space[:n] = data[taken:taken + n]
            taken += n
            self.advance(n)
        return taken

    def messages(self) -> list[Any]:
        messages: list[Any] = pickle.loads(self._parts[0], buffers=self._parts[1:])
        return messages


class FrameProtocol(asyncio.BufferedProtocol):
    """Reads frames from the stream and hands each message to ``on_message``; sends what is
    given to ``send`` in one frame per pass of the loop."""

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[], None],
                 refuse: Callable[[Any, Exception], Any] | None = None,
                 gather: Callable[[], list[Any]] | None = None) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        # what the owner holds back until the pass ends (``wake``): sent first in the pass's frame
        self._gather = gather
        # a message that cannot be sent (it does not pickle, or is over MAX_FRAME): what goes in its
        # place (an error answer to its call), or None (its sender has been told)
        self._refuse = refuse
        self._view = memoryview(bytearray(RECEIVE))
        self._start = self._end = 0  # what is read and not yet taken: _view[_start:_end]
        self._parts: _Parts | None = None  # a large frame being read into memory of its own
        self._pool = _Pool()
        self._out: list[Any] = []  # messages sent in this pass of the loop
        self._woken = False  # a flush is due for ``gather``'s sake
        self.transport: Any = None  # asyncio's or uvloop's stream transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._parts is not None:
            return self._parts.space()
        if len(self._view) - self._end < OWN_BUFFER:  # what is left of a small frame goes to the front
            left = bytes(self._view[self._start:self._end])
            self._view[:len(left)] = left
            self._start, self._end = 0, len(left)
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._parts is None:
            self._end += nbytes
            self._take()
            return
        self._parts.advance(nbytes)
        if self._parts.done:
            parts, self._parts = self._parts, None
            self._deliver(parts.messages())

    def _take(self) -> None:
        """Every small frame whole in the reused buffer; a large one's parts go to their own."""
        view = self._view
        while self._parts is None and self._end - self._start >= HEAD.size:
            size, count = HEAD.unpack_from(view, self._start)
            head = HEAD.size + SIZE.size * count
            if self._end - self._start < head:
                break
            if not count and size < OWN_BUFFER:  # unpickled from here (pickle copies what it keeps)
                end = self._start + LENGTH.size + size
                if self._end < end:
                    break
                messages = pickle.loads(view[self._start + HEAD.size:end])
                self._start = end
                self._deliver(messages)
                continue
            sizes = [SIZE.unpack_from(view, self._start + HEAD.size + SIZE.size * n)[0] for n in range(count)]
            parts = _Parts(LENGTH.size + size - head - sum(sizes), sizes, self._pool)
            self._start += head
            self._start += parts.fill(view[self._start:self._end])
            if parts.done:
                self._deliver(parts.messages())
            else:
                self._parts = parts  # the reads that follow go straight into its parts
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
        if not self._out and not self._woken:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(message)

    def wake(self) -> None:
        """Flush at the end of this pass even if nothing is sent: ``gather`` has messages then."""
        if self.transport is None or self.transport.is_closing() or self._woken:
            return
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._woken = True

    def _flush(self) -> None:
        out, self._out = self._out, []
        woken, self._woken = self._woken, False
        if self.transport is None or self.transport.is_closing():
            return  # what ``gather`` holds is failed by its owner's on_lost
        if woken and self._gather is not None:
            out = [*self._gather(), *out]
            if not out:
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
        self._parts = None
        self._pool.clear()
        self._on_lost()


def read_frame(sock: socket.socket) -> list[Any]:
    """One frame's messages from a blocking socket (the worker's line for calls that must answer at once)."""
    (size,) = LENGTH.unpack(_read_exactly(sock, LENGTH.size))
    return unframe(memoryview(_read_exactly(sock, size)))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise ConnectionError("the model process closed the channel")
        chunks += chunk
    return bytes(chunks)
