"""Triton's system shared-memory extension with tritonclient's own shared-memory utilities: tensors read
from and written to client regions over HTTP and gRPC (also through a front-end worker), the
extension's status/register/unregister calls, and every misuse a clear 400 while the server serves on
(a client that shrinks its object after registering it must not take the server down)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient import utils as shm_utils
from tritonclient.utils import InferenceServerException

from tests import models, triton_models
from tests.conftest import RunningServer, serve

ROW = 16 * 4  # one [1, 16] INT32 tensor


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root: Path = tmp_path_factory.mktemp("shm_repo")
    triton_models.python_models(root)
    triton_models.write(root / "slow/1/model.py", SLOW_ADD_SUB)
    triton_models.write(root / "slow/config.pbtxt", triton_models.add_sub_config("slow", "TYPE_INT32"))
    return root


SLOW_ADD_SUB = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(3)
        answers = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", a + b),
                                                       pb_utils.Tensor("OUTPUT1", a - b)]))
        return answers
"""


@pytest.fixture(scope="module", params=[0, 1], ids=["one-process", "workers"])
def server(repo: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with serve(repo, "--allow-client-shm", "--workers", str(request.param), grpc=True) as running:
        yield running


class Region:
    """A POSIX shared-memory object made with tritonclient's utilities, removed at the end."""

    def __init__(self, byte_size: int) -> None:
        self.name = f"r{uuid.uuid4().hex[:12]}"
        self.key = f"/shm-test-{self.name}"
        self.byte_size = byte_size
        self.handle = shm.create_shared_memory_region(self.name, self.key, byte_size)

    def put(self, array: np.ndarray, offset: int = 0) -> None:
        shm.set_shared_memory_region(self.handle, [array], offset=offset)

    def get(self, shape: list[int], offset: int = 0) -> np.ndarray:
        return shm.get_contents_as_numpy(self.handle, np.int32, shape, offset=offset).copy()

    def destroy(self) -> None:
        shm.destroy_shared_memory_region(self.handle)


@pytest.fixture()
def regions() -> Iterator[list[Region]]:
    made: list[Region] = []
    yield made
    for region in made:
        region.destroy()


def _make(regions: list[Region], byte_size: int) -> Region:
    region = Region(byte_size)
    regions.append(region)
    return region


def _client(server: RunningServer, wire: str) -> Any:
    return grpcclient.InferenceServerClient(server.grpc_url) if wire == "grpc" else \
        httpclient.InferenceServerClient(server.url)


@pytest.mark.parametrize("wire", ["http", "grpc"])
def test_inputs_and_outputs_in_shared_memory_answer_as_the_model_does(
        server: RunningServer, regions: list[Region], wire: str) -> None:
    lib = grpcclient if wire == "grpc" else httpclient
    client = _client(server, wire)
    inputs_region, outputs_region = _make(regions, 2 * ROW), _make(regions, 2 * ROW)
    a, b = np.arange(16, dtype=np.int32).reshape(1, 16), np.full((1, 16), 7, np.int32)
    inputs_region.put(a)
    inputs_region.put(b, offset=ROW)
    client.register_system_shared_memory(inputs_region.name, inputs_region.key, 2 * ROW)
    client.register_system_shared_memory(outputs_region.name, outputs_region.key, 2 * ROW)
    try:
        given = [lib.InferInput("INPUT0", [1, 16], "INT32"), lib.InferInput("INPUT1", [1, 16], "INT32")]
        given[0].set_shared_memory(inputs_region.name, ROW)
        given[1].set_shared_memory(inputs_region.name, ROW, offset=ROW)
        wanted = [lib.InferRequestedOutput("OUTPUT0"), lib.InferRequestedOutput("OUTPUT1")]
        wanted[1].set_shared_memory(outputs_region.name, ROW, offset=ROW)  # OUTPUT0 comes in the answer
        result = client.infer("simple", given, outputs=wanted)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(outputs_region.get([1, 16], offset=ROW), a - b)
        answered = result.get_output("OUTPUT1")
        shape = list(answered.shape) if wire == "grpc" else answered["shape"]
        assert [int(d) for d in shape] == [1, 16]
        status = client.get_system_shared_memory_status(region_name=inputs_region.name)
        if wire == "grpc":
            entry = status.regions[inputs_region.name]
            assert (entry.key, entry.offset, entry.byte_size) == (inputs_region.key, 0, 2 * ROW)
        else:
            assert status == [{"name": inputs_region.name, "key": inputs_region.key, "offset": 0,
                               "byte_size": 2 * ROW}]
    finally:
        client.unregister_system_shared_memory(inputs_region.name)
        client.unregister_system_shared_memory(outputs_region.name)
    with pytest.raises(InferenceServerException, match="Unable to find system shared memory region"):
        client.get_system_shared_memory_status(region_name=inputs_region.name)


@pytest.mark.parametrize("wire", ["http", "grpc"])
def test_an_unregister_waits_for_the_requests_in_flight_that_use_the_region(
        server: RunningServer, regions: list[Region], wire: str) -> None:
    """As Triton's: the regions stay (and are listed) until the request answers, then go."""
    lib = grpcclient if wire == "grpc" else httpclient
    inputs_region, outputs_region = _make(regions, 2 * ROW), _make(regions, 2 * ROW)
    a, b = np.arange(16, dtype=np.int32).reshape(1, 16), np.full((1, 16), 7, np.int32)
    inputs_region.put(a)
    inputs_region.put(b, offset=ROW)
    other = httpclient.InferenceServerClient(server.url)
    other.register_system_shared_memory(inputs_region.name, inputs_region.key, 2 * ROW)
    other.register_system_shared_memory(outputs_region.name, outputs_region.key, 2 * ROW)
    given = [lib.InferInput("INPUT0", [1, 16], "INT32"), lib.InferInput("INPUT1", [1, 16], "INT32")]
    given[0].set_shared_memory(inputs_region.name, ROW)
    given[1].set_shared_memory(inputs_region.name, ROW, offset=ROW)
    wanted = [lib.InferRequestedOutput("OUTPUT0"), lib.InferRequestedOutput("OUTPUT1")]
    wanted[0].set_shared_memory(outputs_region.name, ROW)
    wanted[1].set_shared_memory(outputs_region.name, ROW, offset=ROW)
    failures: list[BaseException] = []

    def infer() -> None:
        try:
            _client(server, wire).infer("slow", given, outputs=wanted)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=infer)
    thread.start()
    time.sleep(1.0)  # the request is in the model (3 s)
    other.unregister_system_shared_memory()  # every region, while the request uses two
    listed = {region["name"] for region in other.get_system_shared_memory_status()}
    assert {inputs_region.name, outputs_region.name} <= listed
    thread.join(30)
    assert not failures, failures
    np.testing.assert_array_equal(outputs_region.get([1, 16]), a + b)
    np.testing.assert_array_equal(outputs_region.get([1, 16], offset=ROW), a - b)
    assert other.get_system_shared_memory_status() == []  # gone once it answered


def _infer_json(server: RunningServer, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"http://{server.url}/v2/models/simple/infer", json=body, timeout=30)


def _shared_input(name: str, region: str, byte_size: int, offset: int = 0) -> dict[str, Any]:
    return {"name": name, "datatype": "INT32", "shape": [1, 16],
            "parameters": {"shared_memory_region": region, "shared_memory_byte_size": byte_size,
                           "shared_memory_offset": offset}}


def test_misuse_is_a_clear_400_and_the_server_serves_on(server: RunningServer, regions: list[Region]) -> None:
    region = _make(regions, 2 * ROW)
    base = f"http://{server.url}/v2/systemsharedmemory/region/{region.name}"
    register = requests.post(f"{base}/register", json={"key": region.key, "byte_size": 2 * ROW}, timeout=10)
    assert register.status_code == 200, register.text
    plain = {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}
    cases = [
        ({"inputs": [_shared_input("INPUT0", "nowhere", ROW), plain]},
         "Unable to find shared memory region: 'nowhere'"),
        ({"inputs": [_shared_input("INPUT0", region.name, ROW, offset=ROW + 4), plain]},
         f"Invalid offset + byte size for shared memory region: '{region.name}' (offset 68 + byte size 64 > 128 "
         "bytes)"),
        ({"inputs": [_shared_input("INPUT0", region.name, ROW, offset=2 * ROW), plain]},
         f"Invalid offset for shared memory region: '{region.name}' (offset 128 + byte size 64 > 128 bytes)"),
        ({"inputs": [_shared_input("INPUT0", region.name, ROW - 4), plain]}, "needs 64 bytes, got 60"),
        ({"inputs": [{**_shared_input("INPUT0", region.name, ROW), "data": [1] * 16}, plain]},
         "must set only one of 'data', 'binary_data_size'"),
        ({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16],
                      "parameters": {"shared_memory_byte_size": ROW}}, plain]}, "need shared_memory_region"),
        ({"inputs": [{**plain, "name": "INPUT0"}, plain],
          "outputs": [{"name": "OUTPUT0", "parameters": {"shared_memory_region": region.name,
                                                         "shared_memory_byte_size": 8}}]},
         "should be at least 64 bytes to hold the results"),
    ]
    for body, says in cases:
        answer = _infer_json(server, body)
        assert answer.status_code == 400 and says in answer.json()["error"], (body, answer.text)
    for body, says in ((b"{not json", "malformed JSON"), (b'{"key": "/k"}', "has no 'byte_size' field"),
                       (b'{"byte_size": 8}', "has no 'key' field"),
                       (b'{"key": "/k", "byte_size": -1}', "byte_size must be an integer >= 0")):
        refused = requests.post(f"http://{server.url}/v2/systemsharedmemory/region/z/register", data=body, timeout=10)
        assert refused.status_code == 400 and says in refused.json()["error"], refused.text
    again = requests.post(f"{base}/register", json={"key": region.key, "byte_size": 8}, timeout=10)
    assert again.status_code == 400 and "already in manager" in again.json()["error"]
    for key, says in (("/no-such-object-here", "Unable to open shared memory region"),
                      ("/../etc/passwd", "cannot register shared memory region 'x' - invalid shm key '/../etc/passwd'"),
                      ("/inferd-12-out", "are the server's own")):
        other = requests.post(f"http://{server.url}/v2/systemsharedmemory/region/x/register",
                              json={"key": key, "byte_size": 8}, timeout=10)
        assert other.status_code == 400 and says in other.json()["error"], other.text
    too_large = requests.post(f"http://{server.url}/v2/systemsharedmemory/region/y/register",
                              json={"key": region.key, "byte_size": 4 * ROW}, timeout=10)
    assert too_large.status_code == 400 and "failed to register shared memory region 'y': invalid args: offset 0 + " \
        "byte_size 256 runs past the end" in too_large.json()["error"], too_large.text
    # the object shrinks under the server's feet: a read must fail this request, not the server (SIGBUS)
    os.truncate(f"/dev/shm{region.key}", 8)
    shrunk = _infer_json(server, {"inputs": [_shared_input("INPUT0", region.name, ROW), plain]})
    assert shrunk.status_code == 400 and "truncated" in shrunk.json()["error"], shrunk.text
    ok = _infer_json(server, {"inputs": [{**plain, "name": "INPUT0"}, plain]})
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [2] * 16
    assert requests.post(f"http://{server.url}/v2/systemsharedmemory/unregister", timeout=10).status_code == 200
    assert requests.get(f"http://{server.url}/v2/systemsharedmemory/status", timeout=10).json() == []


def test_a_name_registered_twice_is_already_exists_over_grpc_and_400_over_http(
        server: RunningServer, regions: list[Region]) -> None:
    """Triton's shared_memory_manager.cc answers TRITONSERVER_ERROR_ALREADY_EXISTS: gRPC ALREADY_EXISTS,
    and 400 over HTTP (its http_server.cc maps ALREADY_EXISTS to a bad request)."""
    region = _make(regions, ROW)
    http, grpc_client = _client(server, "http"), _client(server, "grpc")
    http.register_system_shared_memory(region.name, region.key, ROW)
    try:
        for client, status in ((grpc_client, "StatusCode.ALREADY_EXISTS"), (http, "400")):
            with pytest.raises(InferenceServerException, match=f"shared memory region '{region.name}' already in "
                                                               "manager") as refused:
                client.register_system_shared_memory(region.name, region.key, ROW)
            assert refused.value.status() == status
        assert [r["name"] for r in http.get_system_shared_memory_status()] == [region.name]  # the first one stays
    finally:
        http.unregister_system_shared_memory(region.name)


def test_cuda_shared_memory_holds_no_region(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    client.unregister_cuda_shared_memory()  # what Triton's examples do first: nothing to do
    assert client.get_cuda_shared_memory_status() == []
    with pytest.raises(InferenceServerException, match="shares no GPU memory"):
        client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64)


def test_without_allow_client_shm_regions_are_refused(repo: Path, regions: list[Region]) -> None:
    region = _make(regions, ROW)
    with serve(repo, grpc=True) as server:
        assert "system_shared_memory" not in httpclient.InferenceServerClient(server.url).get_server_metadata()[
            "extensions"]
        for client in (httpclient.InferenceServerClient(server.url), grpcclient.InferenceServerClient(server.grpc_url)):
            with pytest.raises(InferenceServerException, match="Client shared memory is disabled"):
                client.register_system_shared_memory(region.name, region.key, ROW)
        answer = _infer_json(server, {"inputs": [_shared_input("INPUT0", region.name, ROW),
                                                 _shared_input("INPUT1", region.name, ROW)]})
        assert answer.status_code == 400 and "Client shared memory is disabled" in answer.json()["error"]


def test_inputs_in_shared_memory_count_against_max_body_size(repo: Path, regions: list[Region]) -> None:
    values = np.array([[b"abc"] * 300], dtype=np.object_)  # 300 * (4 + 3) bytes, more than 1 KiB
    serialized = shm_utils.serialize_byte_tensor(values)
    size = shm_utils.serialized_byte_size(serialized)
    region = _make(regions, size)
    shm.set_shared_memory_region(region.handle, [serialized])
    with serve(repo, "--allow-client-shm", "--max-body-size", "1KiB") as server:
        client = httpclient.InferenceServerClient(server.url)
        client.register_system_shared_memory(region.name, region.key, size)
        body = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 300],
                            "parameters": {"shared_memory_region": region.name, "shared_memory_byte_size": size}}]}
        answer = requests.post(f"http://{server.url}/v2/models/simple_identity/infer", json=body, timeout=30)
        assert answer.status_code == 413, answer.text
        assert f"hold {size} bytes, more than the 1024 a request may (--max-body-size)" in answer.json()["error"]


SLOW_IDENTITY = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(3)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(
            request, "INPUT0").as_numpy())]) for request in requests]
"""


def test_bytes_read_from_shared_memory_count_against_max_inflight_size(tmp_path: Path, regions: list[Region]) -> None:
    models.write(tmp_path / "slow/1/model.py", SLOW_IDENTITY)
    models.write(tmp_path / "slow/config.pbtxt", """
        name: "slow"
        backend: "python"
        max_batch_size: 0
        input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
        """)
    serialized = shm_utils.serialize_byte_tensor(np.array([b"abc"] * 250, dtype=np.object_))
    size = shm_utils.serialized_byte_size(serialized)  # 1750 bytes: one request fits 3 KiB, two do not
    region = _make(regions, size)
    shm.set_shared_memory_region(region.handle, [serialized])
    body = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [250],
                        "parameters": {"shared_memory_region": region.name, "shared_memory_byte_size": size}}]}
    with serve(tmp_path, "--allow-client-shm", "--max-body-size", "2KiB", "--max-inflight-size", "3KiB") as server:
        httpclient.InferenceServerClient(server.url).register_system_shared_memory(region.name, region.key, size)
        url = f"http://{server.url}/v2/models/slow/infer"
        answers: list[requests.Response] = []
        first = threading.Thread(target=lambda: answers.append(requests.post(url, json=body, timeout=60)))
        first.start()
        time.sleep(1.5)  # the first request holds its 1750 bytes while the model sleeps
        refused = requests.post(url, json=body, timeout=60)
        first.join()
        assert refused.status_code == 503, refused.text
        assert "would pass the limit of 3072 (--max-inflight-size)" in refused.json()["error"]
        assert answers[0].status_code == 200, answers[0].text
        again = requests.post(url, json=body, timeout=60)  # the first gave its bytes back
        assert again.status_code == 200 and again.json()["outputs"][0]["data"] == ["abc"] * 250, again.text
