"""inferd's own HTTP/2 server holding clients to RFC 9113 and the gRPC-over-HTTP/2 spec, frame by
frame over raw sockets: malformed requests reset their stream, broken frames end the connection
with the code the RFC names, floods of control frames end it with ENHANCE_YOUR_CALM while real
keepalive pings from grpcio are answered, and a client's half-close still gets its answers."""

from __future__ import annotations

import gzip
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import hpack
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.conftest import RunningServer, serve
from tests.e2e.test_grpc_wire import CONFIG, MODELS, PATH, STREAM_PATH, messages, raw_frames, request, well_served
from tests.models import write

GRPC_FIELDS = [(":method", "POST"), (":scheme", "http"), (":path", PATH), (":authority", "inferd"),
               ("content-type", "application/grpc"), ("te", "trailers")]
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR, ENHANCE_YOUR_CALM = 1, 3, 5, 6, 11


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("strict")
    for name, code in MODELS.items():
        write(root / f"{name}/1/model.py", code)
        write(root / f"{name}/config.toml", CONFIG)
    with serve(root, "--max-body-size", "4MiB", grpc=True) as running:
        yield running


class Raw:
    """One HTTP/2 connection written frame by frame: no client library between the test and the wire."""

    def __init__(self, server: RunningServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
        self.frames: list[tuple[Frame, bytes]] = []

    def send(self, *frames: Frame | bytes) -> None:
        self.sock.sendall(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames))

    def headers(self, stream: int, fields: list[tuple[str, str]], end: bool = True) -> HeadersFrame:
        flags = ["END_HEADERS", "END_STREAM"] if end else ["END_HEADERS"]
        return HeadersFrame(stream, self.encoder.encode(fields, huffman=False), flags=flags)

    def until(self, done: object, seconds: float = 10) -> list[tuple[Frame, bytes]]:
        self.frames += raw_frames(self.sock, done, seconds)
        return self.frames

    def fields(self, stream: int) -> dict[str, str]:
        found: dict[str, str] = {}
        for frame, payload in self.frames:
            if isinstance(frame, HeadersFrame) and frame.stream_id == stream:
                found.update(self.decoder.decode(payload))
        return found

    def goaway(self) -> int:
        frame = self.until(lambda f: isinstance(f, GoAwayFrame))[-1][0]
        assert isinstance(frame, GoAwayFrame)
        return int(frame.error_code)

    def reset(self, stream: int) -> int:
        frame = self.until(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == stream)[-1][0]
        assert isinstance(frame, RstStreamFrame)
        return int(frame.error_code)

    def ended(self, stream: int) -> None:
        self.until(lambda f: f.stream_id == stream and "END_STREAM" in f.flags)

    def close(self) -> None:
        self.sock.close()


# -- request headers ------------------------------------------------------------------------------

def replaced(name: str, value: str | None) -> list[tuple[str, str]]:
    """GRPC_FIELDS with ``name`` set to ``value`` (None: left out)."""
    fields = [(n, v) for n, v in GRPC_FIELDS if n != name]
    return fields if value is None else [*fields, (name, value)] if not name.startswith(":") \
        else [(name, value), *fields]


@pytest.mark.parametrize("fields", [
    pytest.param([*GRPC_FIELDS, ("X-Upper", "1")], id="uppercase name"),
    pytest.param([*GRPC_FIELDS, ("connection", "keep-alive")], id="connection"),
    pytest.param([*GRPC_FIELDS, ("keep-alive", "5")], id="keep-alive"),
    pytest.param([*GRPC_FIELDS, ("transfer-encoding", "chunked")], id="transfer-encoding"),
    pytest.param(replaced("te", "trailers, deflate"), id="te other than trailers"),
    pytest.param([*GRPC_FIELDS[:4], ("content-type", "application/grpc"), (":method", "POST")], id="pseudo late"),
    pytest.param([*GRPC_FIELDS, (":status", "200")], id="response pseudo-header"),
    pytest.param([(":path", PATH), *GRPC_FIELDS], id="pseudo-header twice"),
    pytest.param(replaced(":scheme", None), id="no scheme"),
    pytest.param(replaced(":path", None), id="no path"),
    pytest.param(replaced(":path", ""), id="empty path"),
    pytest.param(replaced(":method", None), id="no method"),
    pytest.param([], id="no fields, first on its connection"),
])
def test_a_malformed_request_resets_only_its_stream(server: RunningServer, fields: list[tuple[str, str]]) -> None:
    raw = Raw(server)
    raw.send(raw.headers(1, fields, end=False), DataFrame(1, request("echo", np.ones(2)), flags=["END_STREAM"]))
    assert raw.reset(1) == PROTOCOL_ERROR
    assert not any(isinstance(f, HeadersFrame) for f, _ in raw.frames)  # no call ran
    raw.send(raw.headers(3, GRPC_FIELDS, end=False), DataFrame(3, request("echo", np.ones(2)), flags=["END_STREAM"]))
    raw.ended(3)  # the connection goes on
    assert raw.fields(3)["grpc-status"] == "0"
    raw.close()


@pytest.mark.parametrize(("declared", "parts", "status"), [
    pytest.param(lambda n: n, [1], "0", id="equal: answered"),
    pytest.param(lambda n: n + 1, [1], None, id="one byte more than sent"),
    pytest.param(lambda n: n - 1, [2, 2], None, id="less than two DATA frames"),
    pytest.param(lambda n: "ten", [1], None, id="no number"),
    pytest.param(lambda n: "9" * 5000, [1], None, id="5,000 digits"),
    pytest.param(lambda n: 5, [], None, id="no DATA at all"),
])
def test_content_length_must_add_up_to_the_data(server: RunningServer, declared: Any, parts: list[int],
                                                status: str | None) -> None:
    """RFC 9113 §8.1.1: a request whose DATA does not add up to its content-length is malformed."""
    raw = Raw(server)
    body = request("echo", np.ones(2))
    fields = [*GRPC_FIELDS, ("content-length", str(declared(len(body))))]
    if not parts:
        raw.send(raw.headers(1, fields, end=True))
    else:
        raw.send(raw.headers(1, fields, end=False))
        pieces = [body] if parts == [1] else [body[:len(body) // 2], body[len(body) // 2:]]
        for n, piece in enumerate(pieces):
            raw.send(DataFrame(1, piece, flags=["END_STREAM"] if n == len(pieces) - 1 else []))
    if status is None:
        assert raw.reset(1) == PROTOCOL_ERROR
    else:
        raw.ended(1)
        assert raw.fields(1)["grpc-status"] == status
    raw.send(raw.headers(3, GRPC_FIELDS, end=False), DataFrame(3, request("echo", np.ones(2)), flags=["END_STREAM"]))
    raw.ended(3)  # the connection goes on
    assert raw.fields(3)["grpc-status"] == "0"
    raw.close()


def test_get_is_405_with_a_grpc_status_as_grpc_go_answers(server: RunningServer) -> None:
    raw = Raw(server)
    raw.send(raw.headers(1, replaced(":method", "GET")))
    raw.ended(1)
    fields = raw.fields(1)
    assert fields[":status"] == "405" and fields["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    assert "expects POST" in fields["grpc-message"]
    raw.close()


def test_no_te_trailers_is_refused_as_grpc_core_does(server: RunningServer) -> None:
    raw = Raw(server)
    raw.send(raw.headers(1, replaced("te", None), end=False), DataFrame(1, request("echo", np.ones(2)),
                                                                         flags=["END_STREAM"]))
    raw.ended(1)
    fields = raw.fields(1)
    assert fields[":status"] == "200" and fields["grpc-status"] == str(grpc.StatusCode.UNKNOWN.value[0])
    assert "te" in fields["grpc-message"]
    raw.close()


def test_pseudo_headers_in_request_trailers_reset_the_stream(server: RunningServer) -> None:
    raw = Raw(server)
    raw.send(raw.headers(1, GRPC_FIELDS, end=False), DataFrame(1, request("slow", np.ones(2))),
             raw.headers(1, [(":path", "/x")]))
    assert raw.reset(1) == PROTOCOL_ERROR
    raw.close()


# -- frames ---------------------------------------------------------------------------------------

def frame(kind: int, stream: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


CONNECTION_ERRORS = [
    pytest.param(frame(3, 1, b"\0\0\0"), FRAME_SIZE_ERROR, id="RST_STREAM of 3 bytes"),
    pytest.param(frame(3, 0, b"\0\0\0\0"), PROTOCOL_ERROR, id="RST_STREAM on stream 0"),
    pytest.param(frame(3, 9, b"\0\0\0\x08"), PROTOCOL_ERROR, id="RST_STREAM on an idle stream"),
    pytest.param(frame(8, 0, b"\0\0\0"), FRAME_SIZE_ERROR, id="WINDOW_UPDATE of 3 bytes"),
    pytest.param(frame(8, 0, b"\0\0\0\0"), PROTOCOL_ERROR, id="WINDOW_UPDATE of 0"),
    pytest.param(frame(8, 0, struct.pack(">I", 2**31 - 1)), FLOW_CONTROL_ERROR, id="window past 2^31-1"),
    pytest.param(frame(8, 9, b"\0\0\0\x01"), PROTOCOL_ERROR, id="WINDOW_UPDATE on an idle stream"),
    pytest.param(frame(6, 0, b"\0" * 7), FRAME_SIZE_ERROR, id="PING of 7 bytes"),
    pytest.param(frame(6, 1, b"\0" * 8), PROTOCOL_ERROR, id="PING on a stream"),
    pytest.param(frame(4, 0, b"\0" * 5), FRAME_SIZE_ERROR, id="SETTINGS of 5 bytes"),
    pytest.param(frame(4, 0, b"\0" * 6, flags=1), FRAME_SIZE_ERROR, id="SETTINGS ACK with a payload"),
    pytest.param(frame(4, 1, b""), PROTOCOL_ERROR, id="SETTINGS on a stream"),
    pytest.param(frame(4, 0, struct.pack(">HI", 2, 2)), PROTOCOL_ERROR, id="ENABLE_PUSH 2"),
    pytest.param(frame(2, 0, b"\0" * 5), PROTOCOL_ERROR, id="PRIORITY on stream 0"),
    pytest.param(frame(7, 1, b"\0" * 8), PROTOCOL_ERROR, id="GOAWAY on a stream"),
    pytest.param(frame(0, 9, b"\0" * 5), PROTOCOL_ERROR, id="DATA on an idle stream"),
    pytest.param(frame(9, 1, b"", flags=4), PROTOCOL_ERROR, id="CONTINUATION without HEADERS"),
    pytest.param(frame(0, 1, b"\x06Test", flags=8), PROTOCOL_ERROR, id="DATA padded past its end"),
]


@pytest.mark.parametrize(("bad", "code"), CONNECTION_ERRORS)
def test_a_broken_frame_ends_the_connection_with_the_rfcs_code(server: RunningServer, bad: bytes, code: int) -> None:
    """Stream 1 is a call in progress (the slow model) when the broken frame comes."""
    raw = Raw(server)
    raw.send(raw.headers(1, GRPC_FIELDS, end=False), DataFrame(1, request("slow", np.ones(2)), flags=["END_STREAM"]))
    raw.send(bad)
    assert raw.goaway() == code
    raw.close()
    well_served(server)


def test_a_new_stream_id_below_the_last_ends_the_connection(server: RunningServer) -> None:
    raw = Raw(server)
    raw.send(raw.headers(5, GRPC_FIELDS, end=False), raw.headers(3, GRPC_FIELDS, end=False))
    assert raw.goaway() == PROTOCOL_ERROR
    raw.close()


def test_continuation_after_a_complete_header_block_ends_the_connection(server: RunningServer) -> None:
    raw = Raw(server)
    raw.send(raw.headers(1, GRPC_FIELDS, end=False), ContinuationFrame(1, b"", flags=["END_HEADERS"]))
    assert raw.goaway() == PROTOCOL_ERROR
    raw.close()


@pytest.mark.parametrize(("bad", "code"), [
    pytest.param(frame(2, 1, b"\0" * 4), FRAME_SIZE_ERROR, id="PRIORITY of 4 bytes"),
    pytest.param(frame(8, 1, b"\0\0\0\0"), PROTOCOL_ERROR, id="WINDOW_UPDATE of 0"),
    pytest.param(frame(8, 1, struct.pack(">I", 2**31 - 1)), FLOW_CONTROL_ERROR, id="window past 2^31-1"),
    pytest.param(frame(0, 1, b"\0" * 5), STREAM_CLOSED, id="DATA after END_STREAM"),
    pytest.param(frame(2, 1, b"\0\0\0\1\xff"), PROTOCOL_ERROR, id="PRIORITY on itself"),
])
def test_a_broken_frame_on_a_call_resets_only_that_call(server: RunningServer, bad: bytes, code: int) -> None:
    raw = Raw(server)
    raw.send(raw.headers(1, GRPC_FIELDS, end=False), DataFrame(1, request("slow", np.ones(2)), flags=["END_STREAM"]))
    raw.send(bad)
    assert raw.reset(1) == code
    raw.send(raw.headers(3, GRPC_FIELDS, end=False), DataFrame(3, request("echo", np.ones(2)), flags=["END_STREAM"]))
    raw.ended(3)
    assert raw.fields(3)["grpc-status"] == "0"
    raw.close()


def test_headers_depending_on_their_own_stream_reset_it(server: RunningServer) -> None:
    raw = Raw(server)
    block = raw.encoder.encode(GRPC_FIELDS, huffman=False)
    raw.send(frame(1, 1, b"\0\0\0\1\xff" + block, flags=0x4 | 0x20))  # END_HEADERS, PRIORITY on stream 1
    assert raw.reset(1) == PROTOCOL_ERROR
    raw.send(raw.headers(3, GRPC_FIELDS, end=False), DataFrame(3, request("echo", np.ones(2)), flags=["END_STREAM"]))
    raw.ended(3)  # the HPACK table followed the reset block: the next call decodes
    assert raw.fields(3)["grpc-status"] == "0"
    raw.close()


def test_data_after_the_clients_own_reset_is_stream_closed(server: RunningServer) -> None:
    """A refused call (405) was reset by the server; once the client resets it too, it knows the
    stream is closed, and DATA on it is an error rather than a late frame."""
    raw = Raw(server)
    raw.send(raw.headers(1, replaced(":method", "PUT"), end=False), RstStreamFrame(1, 8), DataFrame(1, b"test"))
    raw.until(lambda f: isinstance(f, RstStreamFrame) and f.error_code == STREAM_CLOSED)
    raw.close()


def test_data_on_a_stream_closed_both_ways_is_stream_closed(server: RunningServer) -> None:
    raw = Raw(server)
    raw.send(raw.headers(1, GRPC_FIELDS, end=False), DataFrame(1, request("echo", np.ones(2)), flags=["END_STREAM"]))
    raw.ended(1)
    raw.send(DataFrame(1, b"\0" * 5))
    assert raw.reset(1) == STREAM_CLOSED
    raw.close()


# -- floods ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("flood", [
    pytest.param(lambda i: PingFrame(0, struct.pack(">Q", i)).serialize(), id="PING"),
    pytest.param(lambda i: SettingsFrame(0).serialize(), id="empty SETTINGS"),
    pytest.param(lambda i: DataFrame(1, b"").serialize(), id="empty DATA"),
    pytest.param(lambda i: RstStreamFrame(2 * (i % 1000) + 1, 8).serialize(), id="RST_STREAM of closed streams"),
])
def test_a_flood_of_control_frames_is_told_to_calm_down(server: RunningServer, flood: object) -> None:
    raw = Raw(server)
    raw.send(raw.headers(1, GRPC_FIELDS, end=False), raw.headers(2001, GRPC_FIELDS, end=True))
    raw.send(b"".join(flood(i) for i in range(1100)))  # type: ignore[operator]
    assert raw.goaway() == ENHANCE_YOUR_CALM
    raw.close()
    well_served(server)


def test_rapid_reset_churn_is_told_to_calm_down(server: RunningServer) -> None:
    raw = Raw(server)
    churn = []
    for stream in range(1, 2400, 2):
        churn += [raw.headers(stream, GRPC_FIELDS, end=False), RstStreamFrame(stream, 8)]
    raw.send(*churn)
    assert raw.goaway() == ENHANCE_YOUR_CALM
    raw.close()
    well_served(server)


class PingCounter:
    """A TCP relay between a client and the server that counts the client's PING frames."""

    def __init__(self, server: RunningServer) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.target, self.pings, self.goaways = ("127.0.0.1", server.grpc_port), 0, 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        buffer, skip = b"", 24 if from_client else 0  # the client's preface comes first
        try:
            while chunk := source.recv(1 << 16):
                sink.sendall(chunk)
                buffer += chunk
                if skip:
                    if len(buffer) < skip:
                        continue
                    buffer, skip = buffer[skip:], 0
                while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                    kind, flags = buffer[3], buffer[4]
                    if from_client and kind == 6 and not flags & 1:
                        self.pings += 1
                    if not from_client and kind == 7:
                        self.goaways += 1
                    buffer = buffer[9 + int.from_bytes(buffer[:3], "big"):]
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        self.listener.close()


def test_grpcio_keepalive_pings_every_200ms_keep_working(server: RunningServer) -> None:
    """tritonclient's keepalive (grpcio's channel arguments) pinging every 200 ms, idle and with
    calls flowing, permitted without calls as grpc-core allows: every ping is answered, nothing
    is told to calm down, and the calls succeed."""
    relay = PingCounter(server)
    options = triton_grpc.KeepAliveOptions(keepalive_time_ms=200, keepalive_timeout_ms=2000,
                                           keepalive_permit_without_calls=True, http2_max_pings_without_data=0)
    client = triton_grpc.InferenceServerClient(relay.url, keepalive_options=options)
    tensor = triton_grpc.InferInput("x", [3], "FP32")
    tensor.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
    assert client.infer("echo", [tensor]).as_numpy("y").tolist() == [1, 2, 3]
    time.sleep(2.0)  # idle: pings without calls
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # data flowing
        assert client.infer("echo", [tensor]).as_numpy("y").tolist() == [1, 2, 3]
    assert relay.pings >= 4 and relay.goaways == 0
    client.close()
    relay.close()


# -- half-close, compressed streams ---------------------------------------------------------------

def test_a_half_closed_client_gets_the_answers_it_asked_for(server: RunningServer) -> None:
    """shutdown(SHUT_WR) after three complete calls (the slow model: a second each): all three
    are answered, then the server closes too."""
    raw = Raw(server)
    for stream in (1, 3, 5):
        raw.send(raw.headers(stream, GRPC_FIELDS, end=False),
                 DataFrame(stream, request("slow", np.full(2, stream)), flags=["END_STREAM"]))
    raw.sock.shutdown(socket.SHUT_WR)
    ended: set[int] = set()

    def done(f: Frame) -> bool:
        if "END_STREAM" in f.flags:
            ended.add(f.stream_id)
        return ended == {1, 3, 5}

    raw.until(done, seconds=15)
    for stream in (1, 3, 5):
        assert raw.fields(stream)["grpc-status"] == "0"
    raw.sock.settimeout(5)
    while raw.sock.recv(1 << 16):  # then the server's FIN
        pass
    raw.close()


def gzipped(message: bytes) -> bytes:
    body = gzip.compress(message[5:])
    return b"\1" + struct.pack(">I", len(body)) + body


def test_large_gzip_messages_on_a_stream_are_inflated_off_the_loop_and_answered(server: RunningServer) -> None:
    """A message of more than 256 KiB compressed inflates on a thread, a small one on the loop;
    a broken one ends its stream with INTERNAL."""
    from tritonclient.grpc import service_pb2 as tpb

    raw = Raw(server)
    raw.send(WindowUpdateFrame(0, 1 << 24), SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 24}))
    fields = [*GRPC_FIELDS[:2], (":path", STREAM_PATH), *GRPC_FIELDS[3:], ("grpc-encoding", "gzip")]
    big = np.random.default_rng(0).random(200_000).astype(np.float32)  # 800 kB, ~740 kB gzipped
    sent = gzipped(request("echo", big)) + gzipped(request("echo", np.ones(3)))
    raw.send(raw.headers(1, fields, end=False))
    raw.send(*[DataFrame(1, sent[at:at + 16_384]) for at in range(0, len(sent), 16_384)])
    raw.send(DataFrame(1, b"", flags=["END_STREAM"]))
    raw.ended(1)
    answers = [tpb.ModelStreamInferResponse.FromString(m) for m in
               messages(b"".join(p for f, p in raw.frames if isinstance(f, DataFrame) and f.stream_id == 1))]
    outputs = sorted((np.frombuffer(a.infer_response.raw_output_contents[0], np.float32) for a in answers), key=len)
    assert [len(o) for o in outputs] == [3, 200_000] and np.array_equal(outputs[1], big)
    assert raw.fields(1)["grpc-status"] == "0"
    raw.send(raw.headers(3, fields, end=False), DataFrame(3, b"\1\0\0\0\4oops", flags=["END_STREAM"]))
    raw.ended(3)
    assert raw.fields(3)["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    assert "decompress" in raw.fields(3)["grpc-message"]
    raw.close()
