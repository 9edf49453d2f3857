"""inferd's gRPC server remembers header blocks that leave the HPACK table as it was (a client's
calls repeat theirs byte for byte). Over a real socket, a block that reads a dynamic table entry is
sent, remembered, and sent again after the table changed under it: the second time it must be read
against the table as it is now, so the call goes where the client now means, not where it went."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import hpack
import pytest
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame

from tests.conftest import RunningServer, serve
from tests.e2e.test_grpc_wire import raw_frames

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LIVE = "/inference.GRPCInferenceService/ServerLive"
GONE = "/inference.GRPCInferenceService/NoSuchMethod"


def _string(text: str) -> bytes:
    data = text.encode()
    assert len(data) < 127
    return bytes([len(data)]) + data


# :method POST and :scheme http (static 3 and 7), :authority (name static 1) without indexing
PSEUDO = b"\x83\x86" + b"\x01" + _string("inferd")
# content-type (name static 31) and te (a new name), both without indexing
REGULAR = b"\x0f\x10" + _string("application/grpc") + b"\x00" + _string("te") + _string("trailers")
NEWEST = b"\xbe"  # index 62: the newest entry of the dynamic table


def _added_path(path: str) -> bytes:
    """:path (name static 4) as a literal added to the dynamic table."""
    return b"\x44" + _string(path)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serve(None, grpc=True) as running:
        yield running


def test_a_remembered_block_is_read_again_once_the_table_changed(server: RunningServer) -> None:
    blocks = {1: PSEUDO + _added_path(LIVE) + REGULAR,   # the table: LIVE
              3: PSEUDO + NEWEST + REGULAR,              # LIVE, read from the table: remembered
              5: PSEUDO + _added_path(GONE) + REGULAR,   # the table: GONE, LIVE
              7: PSEUDO + NEWEST + REGULAR}              # the same bytes as 3: now GONE
    assert blocks[3] == blocks[7]
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10) as sock:
        sock.sendall(PREFACE + SettingsFrame(0).serialize())
        for stream, block in blocks.items():
            headers = HeadersFrame(stream, block)
            headers.flags.add("END_HEADERS")
            sock.sendall(headers.serialize() + DataFrame(stream, b"\0" * 5, flags=["END_STREAM"]).serialize())
        ended: set[int] = set()

        def all_ended(frame: object) -> bool:
            if "END_STREAM" in getattr(frame, "flags", ()) and getattr(frame, "stream_id", 0):
                ended.add(frame.stream_id)  # type: ignore[attr-defined]
            return ended == set(blocks)
        frames = raw_frames(sock, all_ended, seconds=20)
    decoder = hpack.Decoder()  # the server's answers, read in the order they came
    status: dict[int, str] = {}
    for frame, _ in frames:
        if isinstance(frame, HeadersFrame):
            for name, value in decoder.decode(frame.data, raw=False):
                if name == "grpc-status":
                    status[frame.stream_id] = value
    assert status == {1: "0", 3: "0", 5: "12", 7: "12"}, status  # 12: UNIMPLEMENTED (no such method)
