"""The socket between the server and an instance process: length-prefixed pickled messages.

The server never blocks on it: it reads what has arrived and keeps watching the process (exit,
memory, ``response_timeout_s``) until a whole message is there, so a partial message cannot stall a
call past its timeout. Anything it cannot read (an oversized length, bytes that do not unpickle, a
message that is not the answer it waits for) is a ``ProtocolError``: the instance is killed.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

_LENGTH = struct.Struct("!Q")
MAX_MESSAGE = 256 * 1024 * 1024  # headers only travel here (tensors go through shared memory)


class ProtocolError(Exception):
    """The other side sent something that is not a message of ours."""


class MessageTooLarge(ProtocolError):
    """A message over ``MAX_MESSAGE``, refused before it was sent."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: tuple[Any, ...], refuse_oversized: bool = False) -> None:
        """``refuse_oversized``: a message over ``MAX_MESSAGE`` is ``MessageTooLarge`` here, before a
        byte of it goes, so the channel stays usable (the other side would drop it as broken)."""
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if refuse_oversized and len(payload) > MAX_MESSAGE:
            raise MessageTooLarge(f"{len(payload)} bytes, over the {MAX_MESSAGE} a message between the server "
                                  "and an instance process holds")
        self.sock.sendall(_LENGTH.pack(len(payload)) + payload)

    def receive(self) -> Any:
        """Block until a whole message is here (the instance process's side)."""
        while (message := self._complete()) is None:
            self._fill()
        return message

    def receive_ready(self) -> Any:
        """Read what has arrived (call when the socket is readable): a message, or None while
        one is still incomplete."""
        self._fill()
        return self._complete()

    def buffered(self) -> Any:
        """A whole message already read with an earlier one (the process sent two in a row: a
        batch of streams' last request end, then the execution's end), or None."""
        return self._complete()

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("the other side closed the channel")
        self._buffer += chunk

    def _complete(self) -> Any:
        if len(self._buffer) < _LENGTH.size:
            return None
        (size,) = _LENGTH.unpack_from(self._buffer)
        if size > MAX_MESSAGE:
            raise ProtocolError(f"a message of {size} bytes announced (at most {MAX_MESSAGE})")
        end = _LENGTH.size + size
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[_LENGTH.size:end])
        del self._buffer[:end]
        try:
            return pickle.loads(payload)
        except Exception as exc:
            raise ProtocolError(f"a message that does not unpickle: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        self.sock.close()
