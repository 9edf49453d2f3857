"""HTTP/2 as a gRPC server needs it: frame headers, settings, and HPACK (RFC 9113, RFC 7541).

Pure functions and one decoder class, no sockets. HPACK's tables and Huffman code come from the
``hpack`` package; decoding is our own because it runs once per call on the loop and the package's
decoder costs ~70 µs a header block (this one ~10 µs). Answers are encoded without the dynamic
table (literal, never indexed), so nothing about the peer's table size needs tracking.
"""

from __future__ import annotations

import re
import struct
from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# flags
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# settings
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = (
    range(1, 7))
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM = 0xB

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
DEFAULT_FRAME_SIZE = 16_384

_HEADER = struct.Struct(">BHBBI")  # length as 8 + 16 bits, type, flags, stream id
_STATIC = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in HeaderTable.STATIC_TABLE]


class ConnectionError_(Exception):
    """The peer broke the protocol: the connection ends with GOAWAY carrying ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamError(Exception):
    """The peer broke the protocol on one stream: that stream is reset with ``code``."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


def frame_header(kind: int, flags: int, stream_id: int, size: int) -> bytes:
    return _HEADER.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _HEADER.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


def parse_header(data: bytes | bytearray, at: int) -> tuple[int, int, int, int]:
    """(payload length, type, flags, stream id) of the frame header at ``at``."""
    high, low, kind, flags, stream_id = _HEADER.unpack_from(data, at)
    return high << 16 | low, kind, flags, stream_id & 0x7FFF_FFFF


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", key, value) for key, value in values.items()))


def parse_settings(payload: bytes) -> dict[int, int]:
    if len(payload) % 6:
        raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6 bytes")
    values = dict(struct.iter_unpack(">HI", payload))
    if values.get(ENABLE_PUSH, 0) > 1:
        raise ConnectionError_(PROTOCOL_ERROR, f"ENABLE_PUSH {values[ENABLE_PUSH]}, expected 0 or 1")
    window = values.get(INITIAL_WINDOW_SIZE, 0)
    if window > MAX_WINDOW:
        raise ConnectionError_(FLOW_CONTROL_ERROR, f"INITIAL_WINDOW_SIZE {window} above 2^31-1")
    frame_size = values.get(MAX_FRAME_SIZE, DEFAULT_FRAME_SIZE)
    if not DEFAULT_FRAME_SIZE <= frame_size < 1 << 24:
        raise ConnectionError_(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {frame_size}, expected 2^14 to 2^24-1")
    return values


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def goaway(last_stream_id: int, code: int, message: str = "") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code) + message.encode()[:256])


def unpadded(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1:len(payload) - payload[0]]


# -- request fields (RFC 9113 §8.2, §8.3) -----------------------------------------------------

_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})
_BAD_NAME = re.compile("[^!-9;-@[-~]|^$")  # controls, space, ':', uppercase, DEL and above; or empty
_PSEUDO, _KEPT, _TE, _FINE, _LENGTH = range(5)
# what each field name seen so far is: one dict look-up a field on the hot path (the same few names
# come on every call); names first seen are checked, then remembered (a bounded number of them)
_NAMES: dict[str, int] = {":method": _PSEUDO, ":scheme": _PSEUDO, ":path": _PSEUDO, ":authority": _PSEUDO,
                          "te": _TE, "content-type": _KEPT, "grpc-timeout": _KEPT, "grpc-encoding": _KEPT,
                          "content-length": _LENGTH}


def request_fields(fields: list[tuple[str, str]]) -> dict[str, str]:
    """A request's pseudo-headers, ``te``, ``content-type``, ``grpc-timeout``, ``grpc-encoding``
    and ``content-length``. StreamError when RFC 9113 calls the request malformed: an unknown,
    repeated or late pseudo-header, a field name with uppercase or other characters HTTP/2
    forbids, a connection-specific field, ``te`` other than ``trailers``, a ``content-length``
    that is no number, or no ``:method``, ``:scheme`` or ``:path``."""
    chosen: dict[str, str] = {}
    regular = False
    kind_of = _NAMES.get
    for name, value in fields:
        kind = kind_of(name)
        if kind == _PSEUDO:
            if regular or name in chosen:
                raise StreamError(f"pseudo-header {name} {'after a regular field' if regular else 'twice'}")
            chosen[name] = value
            continue
        regular = True
        if kind == _FINE:
            continue
        if kind == _KEPT:
            chosen[name] = value
        elif kind == _TE:
            if value != "trailers":
                raise StreamError(f"te: {value!r}, only 'trailers' allowed in HTTP/2")
            chosen[name] = value
        elif kind == _LENGTH:  # the DATA that follows must add up to it (checked as it comes)
            if not (value.isascii() and value.isdigit()) or len(value.lstrip("0")) > 18 or name in chosen:
                raise StreamError(f"content-length: {value[:40]!r}, one number of bytes (under 10^18) expected")
            chosen[name] = value
        else:
            _checked(name)
    if not (chosen.get(":method") and chosen.get(":scheme") and chosen.get(":path")):
        missing = [name for name in (":method", ":scheme", ":path") if not chosen.get(name)]
        raise StreamError(f"request without {', '.join(missing)}")
    return chosen


def _checked(name: str) -> int:
    """A field name not seen before: StreamError, or _FINE (remembered while there is room)."""
    if name[:1] == ":":
        raise StreamError(f"pseudo-header {name} in a request")
    if _BAD_NAME.search(name):
        raise StreamError(f"field name {name!r}: lowercase letters, digits and !#$%&'*+-.^_`|~ expected")
    if name in _CONNECTION_SPECIFIC:
        raise StreamError(f"connection-specific field {name!r} in HTTP/2")
    if len(_NAMES) < 1024:
        _NAMES[name] = _FINE
    return _FINE


# -- HPACK --------------------------------------------------------------------------------------

def _integer(value: int, prefix: int, first: int = 0) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: str, value: str) -> bytes:
    """One header field, literal and never indexed: no dynamic table on either side."""
    raw_name, raw_value = name.encode("latin-1"), value.encode("latin-1")
    return b"\x10" + _integer(len(raw_name), 7) + raw_name + _integer(len(raw_value), 7) + raw_value


STATUS_200 = b"\x88"  # static table entry 8, ":status: 200"


class HeaderDecoder:
    """One connection's HPACK decoder: the dynamic table lives as long as the connection."""

    def __init__(self, max_table_size: int = 4096, max_list_size: int = 65_536) -> None:
        self._table: deque[tuple[str, str]] = deque()
        self._size = 0
        self._max = self._limit = max_table_size
        self._max_list = max_list_size
        self._huffman: dict[bytes, str] = {}  # the same values come again and again
        # blocks that left the table as it was, and what they decoded to: a client's calls send
        # the same few bytes of indexed fields each time (forgotten whenever the table changes)
        self._blocks: dict[bytes, list[tuple[str, str]]] = {}
        self._changed = False

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        """The block's fields; the list may be one returned before: read it, do not change it."""
        known = self._blocks.get(block)
        if known is not None:
            return known
        headers = self._decode(block)
        if self._changed:
            self._changed = False
            self._blocks.clear()
        elif len(block) <= 1024:
            if len(self._blocks) >= 64:
                self._blocks.clear()
            self._blocks[block] = headers
        return headers

    def _decode(self, block: bytes) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        total, at, end, updates = 0, 0, len(block), 0
        try:
            while at < end:
                byte = block[at]
                if byte & 0x80:  # indexed field
                    index, at = self._int(block, at, 7)
                    field = self._get(index)
                elif byte & 0x40:  # literal, added to the table
                    field, at = self._literal(block, at, 6)
                    self._add(field)
                elif byte & 0x20:  # table size update: first in the block, two at most (RFC 7541 §4.2)
                    updates += 1
                    if headers or updates > 2:
                        raise ConnectionError_(COMPRESSION_ERROR, "HPACK table size update out of place")
                    size, at = self._int(block, at, 5)
                    if size > self._limit:
                        raise ConnectionError_(COMPRESSION_ERROR, "HPACK table size above the limit")
                    self._max = size
                    self._changed = True
                    self._evict(0)
                    continue
                else:  # literal, not added (without indexing, or never indexed)
                    field, at = self._literal(block, at, 4)
                total += len(field[0]) + len(field[1]) + 32
                if total > self._max_list:
                    raise ConnectionError_(ENHANCE_YOUR_CALM, f"header list over {self._max_list} bytes")
                headers.append(field)
        except IndexError:
            raise ConnectionError_(COMPRESSION_ERROR, "truncated HPACK block") from None
        return headers

    def _int(self, block: bytes, at: int, prefix: int) -> tuple[int, int]:
        limit = (1 << prefix) - 1
        value = block[at] & limit
        at += 1
        if value < limit:
            return value, at
        shift = 0
        while True:
            byte = block[at]
            at += 1
            value += (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, at
            shift += 7
            if shift > 28:
                raise ConnectionError_(COMPRESSION_ERROR, "HPACK integer too large")

    def _string(self, block: bytes, at: int) -> tuple[str, int]:
        huffman = block[at] & 0x80
        length, at = self._int(block, at, 7)
        if at + length > len(block):
            raise ConnectionError_(COMPRESSION_ERROR, "HPACK string past the block's end")
        raw = block[at:at + length]
        if not huffman:
            return raw.decode("latin-1"), at + length
        text = self._huffman.get(raw)
        if text is None:
            try:
                text = decode_huffman(raw).decode("latin-1")
            except Exception:
                raise ConnectionError_(COMPRESSION_ERROR, "bad Huffman string") from None
            if length <= 128:  # short values repeat (paths, types, agents); long ones would pile up
                if len(self._huffman) > 512:
                    self._huffman.clear()
                self._huffman[raw] = text
        return text, at + length

    def _literal(self, block: bytes, at: int, prefix: int) -> tuple[tuple[str, str], int]:
        index, at = self._int(block, at, prefix)
        if index:
            name = self._get(index)[0]
        else:
            name, at = self._string(block, at)
        value, at = self._string(block, at)
        return (name, value), at

    def _get(self, index: int) -> tuple[str, str]:
        if 0 < index <= len(_STATIC):
            return _STATIC[index - 1]
        dynamic = index - len(_STATIC) - 1
        if 0 <= dynamic < len(self._table):
            return self._table[dynamic]
        raise ConnectionError_(COMPRESSION_ERROR, f"HPACK index {index} not in the table")

    def _add(self, field: tuple[str, str]) -> None:
        self._changed = True
        size = len(field[0]) + len(field[1]) + 32
        if size > self._max:
            self._table.clear()
            self._size = 0
            return
        self._evict(size)
        self._table.appendleft(field)
        self._size += size

    def _evict(self, room: int) -> None:
        while self._table and self._size + room > self._max:
            name, value = self._table.pop()
            self._size -= len(name) + len(value) + 32
