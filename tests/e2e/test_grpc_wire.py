"""inferd's own gRPC server at the HTTP/2 level, driven by an independent HTTP/2 client (the ``h2``
package) over real sockets: answers and trailers as gRPC clients read them, and hostile clients —
oversized declared messages, header bombs, rapid resets, clients that never read, garbage instead
of HTTP/2 — each refused or cut off alone while well-behaved clients keep being served."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import hpack
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton_grpc
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, WindowUpdateFrame
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, holds_in_one_of, probe_waits, serve
from tests.models import write

MODELS = {
    "echo": ("class Model:\n    def infer(self, inputs):\n        return {'y': inputs['x']}\n"),
    "slow": ("import time\n\nclass Model:\n    def infer(self, inputs):\n        time.sleep(1.0)\n"
             "        return {'y': inputs['x']}\n"),
    "grow": ("import numpy as np\n\nclass Model:\n    def infer(self, inputs):\n"
             "        return {'y': np.repeat(inputs['x'], 200_000)}\n"),
    "grow_then_empty": ("import numpy as np\n\nclass Model:\n    def infer(self, inputs):\n"
                        "        return {'y': np.repeat(inputs['x'], 30_000), 'z': np.zeros(0, np.float32)}\n"),
}
CONFIG = """
backend = "python"
[instance_group]
count = 2
[[input]]
name = "x"
datatype = "FP32"
shape = [-1]
[[output]]
name = "y"
datatype = "FP32"
shape = [-1]
"""
EMPTY_OUTPUT = '\n[[output]]\nname = "z"\ndatatype = "FP32"\nshape = [-1]\n'
PATH = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("wire")
    for name, code in MODELS.items():
        write(root / f"{name}/1/model.py", code)
        write(root / f"{name}/config.toml", CONFIG + (EMPTY_OUTPUT if name == "grow_then_empty" else ""))
    with serve(root, "--max-body-size", "1MiB", grpc=True) as running:
        yield running


def request(model: str, values: np.ndarray) -> bytes:
    message = tpb.ModelInferRequest(model_name=model)
    message.inputs.add(name="x", datatype="FP32", shape=[values.size])
    message.raw_input_contents.append(values.astype(np.float32).tobytes())
    body = message.SerializeToString()
    return b"\0" + struct.pack(">I", len(body)) + body


class Client:
    """One HTTP/2 connection speaking gRPC by hand."""

    def __init__(self, server: RunningServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.flush()
        self.headers: dict[int, list[tuple[bytes, bytes]]] = {}
        self.data: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.reset: dict[int, int] = {}
        self.goaway: int | None = None

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def start(self, path: str = PATH, extra: tuple[tuple[str, str], ...] = ()) -> int:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":path", path),
                                        (":authority", "inferd"), ("content-type", "application/grpc"),
                                        ("te", "trailers"), *extra])
        return stream

    def call(self, body: bytes, path: str = PATH, extra: tuple[tuple[str, str], ...] = ()) -> int:
        stream = self.start(path, extra)
        self.conn.send_data(stream, body, end_stream=True)
        self.flush()
        return stream

    def read_until(self, done: object, seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while not done():  # type: ignore[operator]
            assert time.monotonic() < deadline, "no answer in time"
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return
            for event in self.conn.receive_data(chunk):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    self.headers.setdefault(event.stream_id, []).extend(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    self.data[event.stream_id] = self.data.get(event.stream_id, b"") + event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    self.reset[event.stream_id] = event.error_code
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.goaway = event.error_code
            self.flush()

    def status(self, stream: int) -> tuple[str, str]:
        fields = {name.decode(): value.decode() for name, value in self.headers[stream]}
        return fields["grpc-status"], fields.get("grpc-message", "")

    def close(self) -> None:
        self.sock.close()


def well_served(server: RunningServer) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    tensor = triton_grpc.InferInput("x", [3], "FP32")
    tensor.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
    assert client.infer("echo", [tensor]).as_numpy("y").tolist() == [1, 2, 3]
    client.close()


def test_a_call_by_hand_gets_headers_message_and_trailers(server: RunningServer) -> None:
    client = Client(server)
    values = np.arange(5, dtype=np.float32)
    stream = client.call(request("echo", values))
    client.read_until(lambda: stream in client.ended)
    fields = dict(client.headers[stream])
    assert fields[b":status"] == b"200" and fields[b"content-type"] == b"application/grpc"
    assert client.status(stream) == ("0", "")
    data = client.data[stream]
    assert data[0] == 0 and struct.unpack(">I", data[1:5])[0] == len(data) - 5
    answer = tpb.ModelInferResponse.FromString(data[5:])
    assert np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == values.tolist()
    unknown = client.call(request("echo", values), path="/inference.GRPCInferenceService/Nope")
    client.read_until(lambda: unknown in client.ended)
    assert client.status(unknown)[0] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    client.close()


def test_a_declared_message_over_the_limit_is_refused_before_its_bytes(server: RunningServer) -> None:
    client = Client(server)
    stream = client.start()
    client.conn.send_data(stream, b"\0" + struct.pack(">I", 50 << 20))  # 50 MiB announced, nothing sent
    client.flush()
    client.read_until(lambda: stream in client.ended)
    code, message = client.status(stream)
    assert code == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]) and "larger than max" in message
    again = client.call(request("echo", np.ones(2)))  # the connection goes on
    client.read_until(lambda: again in client.ended)
    assert client.status(again) == ("0", "")
    client.close()


def test_grpc_timeout_is_a_deadline_on_the_server(server: RunningServer) -> None:
    client = Client(server)
    started = time.monotonic()
    stream = client.call(request("slow", np.ones(2)), extra=(("grpc-timeout", "200m"),))
    client.read_until(lambda: stream in client.ended)
    assert client.status(stream) == (str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]), "Deadline Exceeded")
    assert time.monotonic() - started < 0.9  # answered at the deadline, not when the model returned
    client.close()
    well_served(server)


def test_a_header_bomb_ends_only_its_connection(server: RunningServer) -> None:
    client = Client(server)
    client.start(extra=(("x-bomb", "a" * 200_000),))  # far over the 64 KiB header list
    client.flush()
    client.read_until(lambda: client.goaway is not None)
    assert client.goaway == 11  # ENHANCE_YOUR_CALM
    client.close()
    well_served(server)


def test_rapid_resets_cancel_their_calls_and_others_are_served(server: RunningServer) -> None:
    client = Client(server)
    for _ in range(300):
        stream = client.call(request("slow", np.ones(2)))
        client.conn.reset_stream(stream)
    client.flush()
    well_served(server)
    ok = client.call(request("echo", np.ones(3)))
    client.read_until(lambda: ok in client.ended)
    assert client.status(ok) == ("0", "")
    client.close()


def test_a_client_that_never_reads_holds_bounded_memory(server: RunningServer) -> None:
    """Answers wait for a window the client never opens: past a bound the connection's new calls
    are refused, and the server's memory stays put while others are served."""
    process = psutil.Process(server.process.pid)
    sock = socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    body = request("grow", np.ones(1))  # 800 kB answers
    sock.sendall(conn.data_to_send())
    before = process.memory_info().rss
    for _ in range(200):  # 160 MB of answers asked for, none readable
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":path", PATH),
                                   (":authority", "inferd"), ("content-type", "application/grpc"), ("te", "trailers")])
        conn.send_data(stream, body, end_stream=True)
        sock.sendall(conn.data_to_send())
    time.sleep(1.0)
    well_served(server)
    grown = process.memory_info().rss - before
    assert grown < 150 << 20, f"RSS grew {grown >> 20} MiB"
    sock.close()
    well_served(server)


def test_not_http2_is_closed(server: RunningServer) -> None:
    sock = socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    sock.close()
    assert b"HTTP/1.1 200" not in received
    well_served(server)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_from_tritonclient(server: RunningServer, algorithm: str) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    values = np.linspace(0, 1, 1000, dtype=np.float32)
    tensor = triton_grpc.InferInput("x", [values.size], "FP32")
    tensor.set_data_from_numpy(values)
    result = client.infer("echo", [tensor], compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("y"), values)


def test_tritonclient_deadline_and_unknown_model(server: RunningServer) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    tensor = triton_grpc.InferInput("x", [1], "FP32")
    tensor.set_data_from_numpy(np.ones(1, dtype=np.float32))
    with pytest.raises(InferenceServerException, match="Deadline"):
        client.infer("slow", [tensor], client_timeout=0.2)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("nope", [tensor])
    assert refused.value.status() == "StatusCode.NOT_FOUND"


def test_grpcio_server_still_serves(tmp_path: Path) -> None:
    write(tmp_path / "echo/1/model.py", MODELS["echo"])
    write(tmp_path / "echo/config.toml", CONFIG)
    with serve(tmp_path, "--grpc-server", "grpcio", grpc=True) as running:
        well_served(running)


def test_idle_connections_cannot_lock_clients_out(tmp_path: Path) -> None:
    """At the connection limit, the connection idle longest makes room for a new one."""
    write(tmp_path / "echo/1/model.py", MODELS["echo"])
    write(tmp_path / "echo/config.toml", CONFIG)
    with serve(tmp_path, "--max-connections", "3", grpc=True) as running:
        idle = [Client(running) for _ in range(3)]  # preface and SETTINGS, then nothing
        time.sleep(0.3)
        well_served(running)  # a fourth connection: served
        closed = 0
        for client in idle:
            client.sock.settimeout(2)
            try:
                client.read_until(lambda client=client: client.goaway is not None, seconds=2)
            except (AssertionError, TimeoutError, OSError):
                continue
            closed += client.goaway is not None
        assert closed >= 1
        for client in idle:
            client.close()


STREAM_PATH = "/inference.GRPCInferenceService/ModelStreamInfer"


def messages(data: bytes) -> list[bytes]:
    """The length-prefixed gRPC messages of a stream's DATA, in order."""
    found, at = [], 0
    while at < len(data):
        size = struct.unpack(">I", data[at + 1:at + 5])[0]
        found.append(data[at + 5:at + 5 + size])
        at += 5 + size
    return found


def test_a_non_grpc_content_type_gets_a_well_formed_415(server: RunningServer) -> None:
    client = Client(server)
    stream = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":path", PATH),
                                      (":authority", "inferd"), ("content-type", "text/plain")], end_stream=True)
    client.flush()
    client.read_until(lambda: stream in client.ended)  # h2 rejects a response without :status
    fields = dict(client.headers[stream])
    assert fields[b":status"] == b"415" and fields[b"content-type"].startswith(b"text/plain")
    assert b"content-type application/grpc expected, got text/plain" in client.data[stream]
    client.close()


def test_a_stream_cut_inside_a_message_is_an_error(server: RunningServer) -> None:
    client = Client(server)
    stream = client.start(STREAM_PATH)
    client.conn.send_data(stream, request("echo", np.ones(2))[:-3], end_stream=True)
    client.flush()
    client.read_until(lambda: stream in client.ended)
    assert client.status(stream)[0] == str(grpc.StatusCode.INTERNAL.value[0])
    client.close()


def test_stream_answers_waiting_for_a_slow_reader_all_come(server: RunningServer) -> None:
    """Several requests of one stream wait at once for the client to read: every one is woken."""
    client = Client(server)
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    stream = client.start(STREAM_PATH)
    client.conn.send_data(stream, request("grow", np.ones(1)) * 10, end_stream=True)  # 10 x 800 kB answers
    client.flush()
    time.sleep(1.5)  # more than the 4 MiB a stream may hold unsent: its requests wait
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
    client.flush()
    client.read_until(lambda: stream in client.ended, seconds=15)
    assert client.status(stream) == ("0", "")
    assert len(messages(client.data[stream])) == 10
    client.close()


def raw_frames(sock: socket.socket, until: object, seconds: float = 10) -> list[tuple[Frame, bytes]]:
    """Frames as they come (hyperframe parses them: h2's client state machine stops at GOAWAY),
    each with its payload, until ``until(frame)``."""
    frames, buffer, deadline = [], b"", time.monotonic() + seconds
    while True:
        while len(buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
            if len(buffer) < 9 + length:
                break
            payload, buffer = buffer[9:9 + length], buffer[9 + length:]
            frame.parse_body(memoryview(payload))
            frames.append((frame, payload))
            if until(frame):  # type: ignore[operator]
                return frames
        assert time.monotonic() < deadline, "no answer in time"
        chunk = sock.recv(1 << 16)
        assert chunk, "closed before the answer"
        buffer += chunk


def test_a_draining_server_still_reads_its_calls_frames(tmp_path: Path) -> None:
    """SIGTERM with an answer waiting for the client's window: the client's WINDOW_UPDATEs are
    still read, the answer completes, and the connection ends with GOAWAY."""
    write(tmp_path / "grow/1/model.py", MODELS["grow"])
    write(tmp_path / "grow/config.toml", CONFIG)
    with serve(tmp_path, "--drain-timeout", "20", grpc=True) as running:
        client = Client(running)
        stream = client.call(request("grow", np.ones(1)))  # 800 kB, the window lets 64 KiB out
        time.sleep(0.5)
        started = time.monotonic()
        running.process.terminate()
        time.sleep(0.3)
        client.sock.sendall(WindowUpdateFrame(0, window_increment=1 << 24).serialize()
                            + WindowUpdateFrame(stream, window_increment=1 << 24).serialize())
        frames = raw_frames(client.sock, lambda f: f.stream_id == stream and "END_STREAM" in f.flags)
        assert time.monotonic() - started < 5
        assert any(isinstance(f, GoAwayFrame) for f, _ in frames)
        data = b"".join(p for f, p in frames if isinstance(f, DataFrame))
        assert len(messages(data)[0]) > 700_000
        decoder = hpack.Decoder()
        fields = [dict(decoder.decode(p)) for f, p in frames if isinstance(f, HeadersFrame)]
        assert fields[-1]["grpc-status"] == "0"
        client.close()


def test_a_stream_sent_past_its_window_is_reset(tmp_path: Path) -> None:
    """A client ignoring flow control while its stream's requests wait (64 running at most) would
    pile messages up unbounded: past the window it granted, the server resets the stream."""
    write(tmp_path / "hang/1/model.py", MODELS["slow"].replace("1.0", "5.0"))
    write(tmp_path / "hang/config.toml", CONFIG)
    with serve(tmp_path, grpc=True) as running:
        client = Client(running)
        stream = client.start(STREAM_PATH)
        client.flush()
        client.read_until(lambda: client.conn.remote_settings.initial_window_size == 1 << 20)
        small = request("hang", np.ones(1))
        client.sock.sendall(DataFrame(stream, data=small * 70).serialize())  # 64 run, 6 wait
        big = b"\0" + struct.pack(">I", 4 << 20) + bytes(1 << 20)  # granted: 1 MiB in all
        frames = [DataFrame(stream, data=big[at:at + (1 << 14)]).serialize() for at in range(0, len(big), 1 << 14)]
        client.sock.sendall(b"".join(frames))
        client.read_until(lambda: stream in client.reset)
        assert client.reset[stream] == 3  # FLOW_CONTROL_ERROR
        client.close()
        well_served_by = Client(running)  # the server goes on
        again = well_served_by.call(request("hang", np.ones(1)), extra=(("grpc-timeout", "100m"),))
        well_served_by.read_until(lambda: again in well_served_by.ended)
        assert well_served_by.status(again)[0] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
        well_served_by.close()


def test_padding_priority_and_window_changes_mid_answer(server: RunningServer) -> None:
    """Padded and prioritised frames are read as their content; an answer larger than the window
    follows SETTINGS that shrink it to nothing, open it a little, then widely with larger frames."""
    client = Client(server)
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    stream = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":path", PATH),
                                      (":authority", "inferd"), ("content-type", "application/grpc"),
                                      ("te", "trailers")],
                             priority_weight=200, priority_depends_on=0, priority_exclusive=False)
    body = request("grow", np.arange(3))
    client.conn.send_data(stream, body[:7], pad_length=40)
    client.conn.send_data(stream, body[7:], end_stream=True, pad_length=255)
    client.flush()
    time.sleep(0.5)
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    client.flush()
    time.sleep(0.3)
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
                                 h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20})
    client.flush()
    client.read_until(lambda: stream in client.ended)
    assert client.status(stream) == ("0", "")
    answer = tpb.ModelInferResponse.FromString(messages(client.data[stream])[0])
    expected = np.repeat(np.arange(3, dtype=np.float32), 200_000)
    np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[0], np.float32), expected)
    client.close()


def test_every_kind_of_call_end_gives_back_its_slot_and_bytes(tmp_path: Path) -> None:
    """With room for 3 calls and 1 MiB of request bytes at once: after calls ended in every way
    (answered, reset at each point, past deadlines, refused, cut by a connection error or close),
    3 calls still run at once and a request of nearly 1 MiB still fits."""
    for name in ("echo", "slow"):
        write(tmp_path / f"{name}/1/model.py", MODELS[name])
        write(tmp_path / f"{name}/config.toml", CONFIG)
    with serve(tmp_path, "--max-connections", "3", "--max-body-size", "1MiB", "--max-inflight-size", "1MiB",
               grpc=True) as running:
        client = Client(running)
        slow, half = request("slow", np.ones(2)), request("echo", np.ones(1000))[:2000]
        ended = [client.call(request("echo", np.ones(2)))]  # answered
        reset = client.start()  # reset after HEADERS
        client.conn.reset_stream(reset)
        reset = client.start()  # ... inside its message (its bytes are budgeted)
        client.conn.send_data(reset, half)
        client.conn.reset_stream(reset)
        running_reset = client.call(slow)  # ... while it runs
        client.flush()
        time.sleep(0.2)
        client.conn.reset_stream(running_reset)
        ended.append(client.call(slow, extra=(("grpc-timeout", "100m"),)))  # past its deadline, running
        late = client.start(extra=(("grpc-timeout", "100m"),))  # ... inside its message
        client.conn.send_data(late, half)
        ended.append(late)
        ended.append(client.call(request("echo", np.ones(2)), path="/inference.GRPCInferenceService/Nope"))
        ended.append(client.call(slow, extra=(("grpc-timeout", "soon"),)))
        ended.append(client.call(slow, extra=(("grpc-encoding", "snappy"),)))
        stream = client.start(STREAM_PATH)  # a stream reset with a request running
        client.conn.send_data(stream, slow)
        client.flush()
        time.sleep(0.2)
        client.conn.reset_stream(stream)
        stream = client.start(STREAM_PATH)  # a stream answered to its end
        client.conn.send_data(stream, request("echo", np.ones(2)) * 3, end_stream=True)
        ended.append(stream)
        stream = client.start(STREAM_PATH, extra=(("grpc-timeout", "100m"),))  # a stream past its deadline
        client.conn.send_data(stream, slow)
        ended.append(stream)
        client.flush()
        client.read_until(lambda: all(stream in client.ended for stream in ended))
        client.close()
        closed = Client(running)  # a connection closed with calls at every point
        closed.call(slow)
        closed.conn.send_data(closed.start(), half)
        closed.conn.send_data(closed.start(STREAM_PATH), slow)
        closed.flush()
        time.sleep(0.2)
        closed.close()
        broken = Client(running)  # a connection ended by a protocol error with calls at every point
        broken.call(slow)
        broken.conn.send_data(broken.start(), half)
        broken.flush()
        time.sleep(0.2)
        broken.sock.sendall(b"\0\0\1\0\0\0\0\0\0x")  # DATA on stream 0
        broken.read_until(lambda: broken.goaway is not None)
        broken.close()
        time.sleep(3.0)  # the cut slow requests leave the model's two instances

        client = Client(running)
        calls = [client.call(slow) for _ in range(3)]
        client.read_until(lambda: all(call in client.ended for call in calls))
        assert [client.status(call) for call in calls] == [("0", "")] * 3
        big = client.call(request("echo", np.ones(262_000)))
        client.read_until(lambda: big in client.ended)
        assert client.status(big) == ("0", "")
        client.close()


def test_a_grpc_timeout_of_non_ascii_digits_is_malformed_not_a_crash(server: RunningServer) -> None:
    """'²' is a digit to str.isdigit but not to int: the header ends its call, not the connection."""
    client = Client(server)
    stream = client.call(request("echo", np.ones(2)), extra=((b"grpc-timeout", b"\xb2S"),))  # type: ignore[arg-type]
    client.read_until(lambda: stream in client.ended or client.goaway is not None)
    assert client.status(stream)[0] == str(grpc.StatusCode.INTERNAL.value[0])
    again = client.call(request("echo", np.ones(2)))
    client.read_until(lambda: again in client.ended)
    assert client.status(again) == ("0", "")
    client.close()


def test_a_client_with_wide_windows_that_never_reads_holds_bounded_memory(server: RunningServer) -> None:
    """Windows opened to the maximum, nothing read: the answers may not all pile up in the socket's
    buffer (flow control no longer bounds them; what is unsent is)."""
    process = psutil.Process(server.process.pid)
    sock = socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    conn.increment_flow_control_window(2**31 - 1 - 65_535)
    body = request("grow", np.ones(1))  # 800 kB answers
    before = process.memory_info().rss
    for _ in range(400):  # 320 MB of answers asked for in one go, none read
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":path", PATH),
                                   (":authority", "inferd"), ("content-type", "application/grpc"), ("te", "trailers")])
        conn.send_data(stream, body, end_stream=True)
    sock.sendall(conn.data_to_send())
    time.sleep(4.0)
    well_served(server)
    grown = process.memory_info().rss - before
    sock.close()
    assert grown < 150 << 20, f"RSS grew {grown >> 20} MiB"
    well_served(server)


def test_headers_again_on_an_open_call_reset_only_that_stream(server: RunningServer) -> None:
    """Trailers without END_STREAM, or HEADERS after the client's side ended, break the stream
    (RST_STREAM), not the connection; the call is not run twice."""
    client = Client(server)
    block = hpack.Encoder().encode([hpack.NeverIndexedHeaderTuple("x-trailer", "1")])  # leaves the table be
    first = client.start()  # no END_STREAM yet
    client.flush()
    client.sock.sendall(HeadersFrame(first, data=block, flags=["END_HEADERS"]).serialize())
    client.read_until(lambda: first in client.reset)
    assert client.reset[first] == 1  # PROTOCOL_ERROR
    second = client.start("/inference.GRPCInferenceService/ModelInfer")
    client.conn.send_data(second, request("slow", np.ones(1)), end_stream=True)
    client.flush()
    time.sleep(0.2)  # the call runs (its model sleeps 1 s); its side has ended
    client.sock.sendall(HeadersFrame(second, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
    client.read_until(lambda: second in client.reset)
    assert client.reset[second] == 5  # STREAM_CLOSED
    ok = client.call(request("echo", np.ones(2)))
    client.read_until(lambda: ok in client.ended)
    assert client.status(ok) == ("0", "")
    client.close()


def test_a_small_gzip_bomb_inflates_off_the_loop(tmp_path: Path) -> None:
    """Under 256 KiB on the wire but 256 MiB inflated: whether it inflates on a thread is decided
    by what it may inflate to (the whole --max-body-size), not by its size on the wire; meanwhile
    every other client is answered promptly."""
    import gzip
    import threading


    write(tmp_path / "echo/1/model.py", MODELS["echo"])
    write(tmp_path / "echo/config.toml", CONFIG)
    bomb = gzip.compress(b"\0" * (256 << 20), 9)
    assert len(bomb) < 256 * 1024
    framed = b"\1" + struct.pack(">I", len(bomb)) + bomb
    with serve(tmp_path, grpc=True) as running:

        def six_bombs() -> str | None:
            statuses: list[str] = []

            def bombs() -> None:
                for _ in range(6):
                    statuses.append(send_within_windows(Client(running), framed, (("grpc-encoding", "gzip"),)))

            waits = probe_waits(running.base, threading.Thread(target=bombs))
            assert statuses == [str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])] * 6
            assert len(waits) > 5
            # on the loop, each bomb held it ~0.5-0.8 s (64 MiB inflated): six probes that slow; two
            # slow probes are left to a busy shared machine
            return None if waits[-3] < 0.3 else f"the slowest probes waited {waits[-6:]}"

        holds_in_one_of(3, six_bombs)
        well_served(running)


def send_within_windows(client: Client, framed: bytes, extra: tuple[tuple[str, str], ...]) -> str:
    """One call whose message is larger than the flow-control windows: sent as the server opens
    them; its grpc-status."""
    stream = client.start(extra=extra)
    sent = 0
    while sent < len(framed):
        client.read_until(lambda: client.conn.local_flow_control_window(stream) > 0)
        size = min(client.conn.local_flow_control_window(stream), client.conn.max_outbound_frame_size,
                   len(framed) - sent)
        client.conn.send_data(stream, framed[sent:sent + size], end_stream=sent + size == len(framed))
        client.flush()
        sent += size
    client.read_until(lambda: stream in client.ended or stream in client.reset, seconds=60)
    status = client.status(stream)[0]
    client.close()
    return status


def test_an_answer_that_fills_the_window_exactly_ends_without_more_window(server: RunningServer) -> None:
    """An answer sent from its outputs' memory in parts: an empty last output is no DATA frame of
    its own, so an answer exactly the size of the window gets its trailers without a WINDOW_UPDATE."""
    tensor = triton_grpc.InferInput("x", [3], "FP32")
    tensor.set_data_from_numpy(np.arange(3, dtype=np.float32))
    grpc_client = triton_grpc.InferenceServerClient(server.grpc_url)
    size = 5 + grpc_client.infer("grow_then_empty", [tensor]).get_response().ByteSize()
    grpc_client.close()
    assert size > 64 * 1024  # sent in parts, not joined
    client = Client(server)
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: size})
    client.conn.increment_flow_control_window(size)
    stream = client.call(request("grow_then_empty", np.arange(3)))
    data, frames, ended = b"", 0, False
    deadline = time.monotonic() + 5
    while not ended and time.monotonic() < deadline:  # read, and never give window back
        client.sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = client.sock.recv(1 << 16)
        except TimeoutError:
            break
        for event in client.conn.receive_data(chunk):
            if isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                data, frames = data + event.data, frames + 1
                assert event.data, "an empty DATA frame"
            elif isinstance(event, h2.events.TrailersReceived):
                client.headers[stream] = list(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
    assert ended and client.status(stream) == ("0", ""), f"{len(data)} of {size} bytes, no trailers"
    answer = tpb.ModelInferResponse.FromString(messages(data)[0])
    np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[0], np.float32),
                                  np.repeat(np.arange(3, dtype=np.float32), 30_000))
    assert answer.raw_output_contents[1] == b""
    client.close()
