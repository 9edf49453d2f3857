"""Under ``--workers N`` the gRPC calls at once and the request bytes held are counted by all workers
together (``transport/shared_counts.py``). Every way a call or a body can end early — a deadline, a
cancel, a stream reset mid-upload, a malformed message, a dropped connection, an abandoned HTTP
body, a killed worker — gives its count back: the slots sum to zero again, and the whole limit is
there for the next client."""

from __future__ import annotations

import contextlib
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.utils import InferenceServerException

from inferd.workers.owner import FOLDER_PREFIX
from tests.conftest import RunningServer, serve
from tests.e2e.test_grpc_limits import MIB, SLOW_CONFIG, call_all_on_one_channel
from tests.e2e.test_grpc_wire import CONFIG as ECHO_CONFIG
from tests.e2e.test_grpc_wire import MODELS as WIRE_MODELS
from tests.e2e.test_grpc_wire import Client
from tests.e2e.test_grpc_wire import request as wire_request
from tests.e2e.test_http_limits import upload_and_abandon
from tests.e2e.test_workers import workers_of
from tests.models import write

SLEEPY_MODEL = '''
import time

class Model:
    def infer(self, inputs):
        time.sleep(float(inputs["in"].size == 3) * 3.0 + 0.6)
        return {"out": inputs["in"][:4]}
'''
LIMITS = ("--workers", "2", "--max-connections", "8", "--max-body-size", "20MiB", "--max-inflight-size", "40MiB")
PATH = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write(tmp_path / "slow/1/model.py", SLEEPY_MODEL)
    write(tmp_path / "slow/config.toml", SLOW_CONFIG)
    return tmp_path


def slots(server: RunningServer, name: str) -> list[int]:
    """Each worker's count of ``name`` (``grpc-calls`` or ``inflight-bytes``) as the workers share it."""
    (folder,) = Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}{server.process.pid}-*")
    raw = (folder / name).read_bytes()
    return list(struct.unpack(f"<{len(raw) // 8}q", raw))


def all_given_back(server: RunningServer, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(slots(server, "grpc-calls")) and not any(slots(server, "inflight-bytes")):
            return
        time.sleep(0.1)
    raise AssertionError(f"counts not given back: calls {slots(server, 'grpc-calls')}, "
                         f"bytes {slots(server, 'inflight-bytes')}")


def whole_limit_serves(server: RunningServer) -> None:
    """The server's 8 calls at once, and 3 requests of 12 MiB within its 40 MiB, all answered."""
    assert call_all_on_one_channel(server.grpc_url, 8) == ["ok"] * 8
    assert call_all_on_one_channel(server.grpc_url, 3, 12 * MIB) == ["ok"] * 3


def message(size: int) -> bytes:
    request = tpb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="in", datatype="UINT8", shape=[size])
    request.raw_input_contents.append(b"\x07" * size)
    return request.SerializeToString()


def framed(body: bytes, declared: int | None = None) -> bytes:
    return b"\0" + struct.pack(">I", len(body) if declared is None else declared) + body


def upload_partly(client: Client, declared: int) -> int:
    """A call whose message declares ``declared`` bytes, of which 48 KiB are sent (within the window)."""
    stream = client.start()
    data = framed(b"\x01" * (48 * 1024 - 5), declared=declared)
    for start in range(0, len(data), 16 * 1024):
        client.conn.send_data(stream, data[start:start + 16 * 1024])
    return stream


def hand_clients(server: RunningServer, count: int) -> list[Client]:
    """Raw HTTP/2 connections: the kernel spreads them over the workers."""
    return [Client(server) for _ in range(count)]


def test_calls_and_bytes_ended_early_are_given_back_by_every_worker(repo: Path) -> None:
    with serve(repo, *LIMITS, grpc=True) as server:
        tensor = triton_grpc.InferInput("in", [8], "UINT8")
        tensor.set_data_from_numpy(np.full(8, 7, dtype=np.uint8))
        clients = [triton_grpc.InferenceServerClient(server.grpc_url) for _ in range(4)]
        for client in clients:  # grpc-timeout: DEADLINE_EXCEEDED while the model still runs
            with pytest.raises(InferenceServerException, match="Deadline"):
                client.infer("slow", [tensor], client_timeout=0.2)
        cancelled = [client.async_infer("slow", [tensor], lambda *_, **__: None) for client in clients]
        time.sleep(0.2)
        for context in cancelled:
            context.cancel()
        clients[0].start_stream(lambda *_, **__: None)  # a bidirectional call, cancelled with requests running
        for _ in range(2):
            clients[0].async_stream_infer("slow", [tensor])
        time.sleep(0.3)
        clients[0].stop_stream(cancel_requests=True)
        raw = hand_clients(server, 6)
        for client in raw[:2]:  # 12 MiB declared (taken from the budget), 48 KiB sent, stream reset
            stream = upload_partly(client, declared=12 * MIB)
            client.conn.reset_stream(stream)
            client.flush()
        for client in raw[2:4]:  # the same, and the connection dropped mid-upload
            stream = upload_partly(client, declared=12 * MIB)
            client.flush()
        malformed = raw[4].call(framed(b"\xff" * 64))  # admitted, counted, then not a message
        raw[4].read_until(lambda: malformed in raw[4].ended)
        assert raw[4].status(malformed)[0] != "0"
        raw[5].call(framed(message(8)))  # a call running when its connection goes
        time.sleep(0.3)
        assert sum(slots(server, "grpc-calls")) > 0 and sum(slots(server, "inflight-bytes")) > 0
        for client in raw:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        for client in clients:
            client.close()
        all_given_back(server)
        whole_limit_serves(server)
        all_given_back(server)


def test_grpcio_server_counts_calls_with_every_worker_too(repo: Path) -> None:
    """--grpc-server grpcio counts its calls in grpc's C core, a worker's alone: a worker's share
    (2 of 8) refused one connection's calls far below the server's limit."""
    with serve(repo, *LIMITS, "--grpc-server", "grpcio", grpc=True) as server:
        tensor = triton_grpc.InferInput("in", [8], "UINT8")
        tensor.set_data_from_numpy(np.full(8, 7, dtype=np.uint8))
        client = triton_grpc.InferenceServerClient(server.grpc_url)
        for _ in range(3):
            with pytest.raises(InferenceServerException, match="Deadline"):
                client.infer("slow", [tensor], client_timeout=0.2)
        cancelled = [client.async_infer("slow", [tensor], lambda *_, **__: None) for _ in range(3)]
        time.sleep(0.2)
        for context in cancelled:
            context.cancel()
        client.start_stream(lambda *_, **__: None)  # a bidirectional call, cancelled with requests running
        for _ in range(2):
            client.async_stream_infer("slow", [tensor])
        time.sleep(0.3)
        assert sum(slots(server, "grpc-calls")) > 0
        client.stop_stream(cancel_requests=True)
        client.close()
        all_given_back(server)
        outcomes = call_all_on_one_channel(server.grpc_url, 11)
        assert outcomes.count("ok") == 8, outcomes
        assert all(o.startswith("StatusCode.RESOURCE_EXHAUSTED") for o in outcomes if o != "ok"), outcomes
        all_given_back(server)
        whole_limit_serves(server)


def test_answers_clients_never_read_fill_the_shared_budget_at_most_and_are_given_back(tmp_path: Path) -> None:
    """Clients on both workers that send stream and unary calls whose answers (800 KB each) they never
    read: the answers waiting hold the budget together and no more than it, and all of it comes back
    when the clients reset their connections."""
    write(tmp_path / "grow/1/model.py", WIRE_MODELS["grow"])
    write(tmp_path / "grow/config.toml", ECHO_CONFIG)
    limit = 24 * MIB
    with serve(tmp_path, "--workers", "2", "--max-inflight-size", "24MiB", "--max-body-size", "4MiB",
               grpc=True) as server:
        clients = hand_clients(server, 4)
        for client in clients:
            stream = client.start("/inference.GRPCInferenceService/ModelStreamInfer")
            for _ in range(20):
                client.conn.send_data(stream, wire_request("grow", np.ones(4)))
            client.call(wire_request("grow", np.ones(4)))
        deadline = time.monotonic() + 15
        while sum(slots(server, "inflight-bytes")) < limit // 2:
            assert time.monotonic() < deadline, slots(server, "inflight-bytes")
            time.sleep(0.1)
        for _ in range(20):  # the answers still coming wait for room: never past the limit
            assert sum(slots(server, "inflight-bytes")) <= limit, slots(server, "inflight-bytes")
            time.sleep(0.1)
        for client in clients:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
        all_given_back(server)


def test_unary_messages_that_stall_midway_give_their_room_back_at_the_body_timeout(repo: Path) -> None:
    """A unary message's declared length is taken from the budget before its bytes come: three
    calls that declare 13 MiB and send 10 bytes held 39 of the 40 MiB, shared by every worker, and
    five that sent only their HEADERS the rest of the calls at once, for as long as their
    connection stayed open. They end at --body-timeout, as an HTTP body does."""
    with serve(repo, *LIMITS, "--body-timeout", "2", grpc=True) as server:
        client = hand_clients(server, 1)[0]
        stalled = []
        for _ in range(3):
            stalled.append(client.start())
            client.conn.send_data(stalled[-1], framed(b"\x01" * 10, declared=13 * MIB))
        stalled += [client.start() for _ in range(5)]  # HEADERS only: 8 calls at once, the limit
        client.flush()
        time.sleep(0.3)
        refused = call_all_on_one_channel(server.grpc_url, 1, 12 * MIB)
        assert refused[0].startswith("StatusCode.RESOURCE_EXHAUSTED"), refused
        client.read_until(lambda: all(stream in client.ended for stream in stalled), seconds=15)
        for stream in stalled:
            code, details = client.status(stream)
            assert code == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]) and "--body-timeout" in details, details
        all_given_back(server)
        whole_limit_serves(server)
        client.close()


def test_http_bodies_abandoned_under_workers_give_the_shared_budget_back(repo: Path) -> None:
    with serve(repo, *LIMITS, grpc=True) as server:
        for _ in range(4):  # Content-Length reserved up front, the body cut off midway
            upload_and_abandon(server, 12 * MIB, 2 * MIB)
        for _ in range(4):  # chunked, counted chunk by chunk, never finished
            with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
                sock.sendall(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
                for _ in range(3):
                    sock.sendall(b"%x\r\n%s\r\n" % (MIB, b"x" * MIB))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for _ in range(2):  # chunked past --max-body-size: refused midway
            with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
                sock.sendall(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
                with contextlib.suppress(OSError):  # the server may close while we still send
                    for _ in range(21):
                        sock.sendall(b"%x\r\n%s\r\n" % (MIB, b"x" * MIB))
                assert sock.recv(64).startswith(b"HTTP/1.1 413"), "a body past --max-body-size was not a 413"
        all_given_back(server)
        whole_limit_serves(server)


def worker_number(process: psutil.Process) -> int:
    return int(process.environ()["INFERD_WORKER"])


def replaced_and_listening(server: RunningServer, number: int, dead: int) -> bool:
    """Worker ``number`` runs again, in another process than ``dead``, and listens for gRPC."""
    for worker in workers_of(server):
        try:
            if worker.pid != dead and worker_number(worker) == number:
                return any(c.status == psutil.CONN_LISTEN and c.laddr.port == server.grpc_port
                           for c in worker.connections("tcp"))
        except psutil.Error:  # gone meanwhile
            continue
    return False


def test_a_killed_workers_counts_are_given_back_when_it_is_replaced(repo: Path) -> None:
    with serve(repo, *LIMITS, grpc=True) as server:
        long_call = triton_grpc.InferInput("in", [3], "UINT8")  # the model sleeps 3.6 s on these
        long_call.set_data_from_numpy(np.full(3, 7, dtype=np.uint8))
        clients = [triton_grpc.InferenceServerClient(server.grpc_url) for _ in range(6)]
        outcomes: list[str] = []

        def call(client: triton_grpc.InferenceServerClient) -> None:
            try:
                client.infer("slow", [long_call])
                outcomes.append("ok")
            except InferenceServerException as exc:
                outcomes.append(str(exc.status()))

        threads = [threading.Thread(target=call, args=(client,)) for client in clients]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while sum(slots(server, "grpc-calls")) < 6:
            assert time.monotonic() < deadline, slots(server, "grpc-calls")
            time.sleep(0.05)
        busy = next(w for w in workers_of(server) if slots(server, "grpc-calls")[worker_number(w)] > 0)
        number, held = worker_number(busy), slots(server, "grpc-calls")[worker_number(busy)]
        busy.kill()
        killed = time.monotonic()
        while slots(server, "grpc-calls")[number]:
            assert time.monotonic() - killed < 30, "a killed worker's calls stayed counted"
            time.sleep(0.05)
        given_back_s = time.monotonic() - killed
        for thread in threads:
            thread.join(30)
        assert outcomes.count("ok") == 6 - held and outcomes.count("StatusCode.UNAVAILABLE") == held, outcomes
        all_given_back(server)
        whole_limit_serves(server)  # before its replacement listens, too
        assert given_back_s < 1.0, f"the killed worker's {held} calls held capacity for {given_back_s:.1f} s"
        while not replaced_and_listening(server, number, busy.pid):  # it zeroes its own slots as it starts
            assert time.monotonic() - killed < 60, server.log()
            time.sleep(0.1)
        assert not any(slots(server, "grpc-calls")) and not any(slots(server, "inflight-bytes"))
        whole_limit_serves(server)
        for client in clients:
            client.close()
