"""Frames between a front-end worker and the process that owns the models: a 4-byte length, then a
pickle (protocol 5, so a numpy tensor goes in as one block of bytes) of a list of messages: what
one side sent in one pass of its loop goes as one frame (one pickle, one write, one wake-up).

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
from typing import Any

LENGTH = struct.Struct("!I")
MAX_FRAME = 2**32 - 1


class FrameTooLarge(ValueError):
    """A frame over MAX_FRAME bytes: the length prefix cannot say it."""


def frame(messages: list[Any]) -> list[bytes]:
    payload = pickle.dumps(messages, protocol=5)
    if len(payload) > MAX_FRAME:
        raise FrameTooLarge(f"{len(payload)} bytes, over the channel's frame size of {MAX_FRAME}")
    return [LENGTH.pack(len(payload)), payload]


class FrameProtocol(asyncio.Protocol):
    """Splits the byte stream into messages and hands each to ``on_message``; pauses reading
    while the peer is owed more than the transport's write buffer holds (backpressure both ways)."""

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[], None],
                 refuse: Callable[[Any, Exception], Any] | None = None) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        # a message that cannot be sent (it does not pickle, or is over MAX_FRAME): what goes in its
        # place (an error answer to its call), or None (its sender has been told)
        self._refuse = refuse
        self._buffer = bytearray()
        self._out: list[Any] = []  # messages sent in this pass of the loop
        self.transport: Any = None  # asyncio's or uvloop's stream transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= LENGTH.size:
            (size,) = LENGTH.unpack_from(buffer, start)
            end = start + LENGTH.size + size
            if len(buffer) < end:
                break
            messages = pickle.loads(memoryview(buffer)[start + LENGTH.size:end])
            start = end
            for message in messages:
                self._on_message(message)
        if start:  # a new buffer: a message may still hold a view of the old one
            self._buffer = buffer[start:]

    def send(self, message: Any) -> None:
        """Frames sent in one pass of the loop leave in one write (a batch's answers, a burst
        of requests): one system call and one wake-up of the other process, not one per frame."""
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

    def _one_by_one(self, message: Any) -> list[bytes]:
        try:
            return frame([message])
        except Exception as exc:
            replacement = self._refuse(message, exc) if self._refuse is not None else None
            return [] if replacement is None else frame([replacement])

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._buffer = bytearray()
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
    header = _read_exactly(sock, LENGTH.size)
    (size,) = LENGTH.unpack(header)
    messages: list[Any] = pickle.loads(_read_exactly(sock, size))
    return messages


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise ConnectionError("the model process closed the channel")
        chunks += chunk
    return bytes(chunks)
