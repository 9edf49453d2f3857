"""A client's cancel reaches a Triton Python model as Triton delivers it: ``request.is_cancelled()``
of a plain request turns true when its gRPC call is cancelled or its HTTP client disconnects, and
a decoupled stream's ``response_sender.is_cancelled()`` when the stream is cancelled, while
``execute`` runs in its instance process (Triton's QA lifecycle and decoupled execute_cancel)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests import models
from tests.conftest import RunningServer, serve

# waits WAIT seconds unless its client cancels first, asking every 0.1 s; logs which it was
WAITS = """
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(json.loads(args["model_config"]))

    def execute(self, requests):
        request = requests[0]
        seconds = float(pb_utils.get_input_tensor_by_name(request, "WAIT").as_numpy()[0])
        sender = request.get_response_sender() if self.decoupled else None
        asked = sender if self.decoupled else request
        waited = 0.0
        while waited < seconds and not asked.is_cancelled():
            time.sleep(0.1)
            waited += 0.1
        told = "cancelled" if asked.is_cancelled() else "not cancelled"
        pb_utils.Logger.log_info(f"[waits] {request.request_id()} {told} after {waited:.1f} s")
        response = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([waited], np.float32))])
        if self.decoupled:
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
        return [response]
"""

# a dynamic batch's requests: waits WAIT seconds, until every request's own client cancelled; logs each
WAITS_BATCHED = """
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        seconds = max(float(pb_utils.get_input_tensor_by_name(r, "WAIT").as_numpy()[0, 0]) for r in requests)
        waited = 0.0
        while waited < seconds and not all(r.is_cancelled() for r in requests):
            time.sleep(0.1)
            waited += 0.1
        for request in requests:
            told = "cancelled" if request.is_cancelled() else "not cancelled"
            pb_utils.Logger.log_info(f"[waits] {request.request_id()} {told} of {len(requests)}")
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[waited]], np.float32))])
                for _ in requests]
"""

BATCHED_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "WAIT" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 3000000 }
"""

CONFIG = """
backend: "python"
input [ {{ name: "WAIT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
{extra}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("cancel_repo")
    for name, extra in (("waits", ""), ("waits_decoupled", "model_transaction_policy { decoupled: true }")):
        models.write(root / name / "1/model.py", WAITS)
        models.write(root / name / "config.pbtxt", CONFIG.format(extra=extra))
    models.write(root / "waits_batched" / "1/model.py", WAITS_BATCHED)
    models.write(root / "waits_batched" / "config.pbtxt", BATCHED_CONFIG)
    with serve(root, grpc=True) as running:
        yield running


def _wait_input(seconds: float) -> list[grpcclient.InferInput]:
    wait = grpcclient.InferInput("WAIT", [1], "FP32")
    wait.set_data_from_numpy(np.array([seconds], np.float32))
    return [wait]


def _told(server: RunningServer, request_id: str, timeout: float = 10.0) -> str:
    """What the model logged for ``request_id`` ("cancelled after ..." / "not cancelled after ...")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.lines:
            if f"[waits] {request_id} " in line:
                return line.split(f"[waits] {request_id} ", 1)[1].strip()
        time.sleep(0.1)
    raise AssertionError(f"the model logged nothing for {request_id!r}:\n{server.log()[-3000:]}")


def test_grpc_cancel_reaches_a_plain_request(server: RunningServer) -> None:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        future = client.async_infer("waits", _wait_input(30.0), lambda result, error: None, request_id="grpc-1")
        time.sleep(1.5)  # executing
        future.cancel()
        told = _told(server, "grpc-1")
    assert told.startswith("cancelled after "), told
    assert float(told.split()[-2]) < 10.0, told


def test_http_disconnect_reaches_a_plain_request(server: RunningServer) -> None:
    body = json.dumps({"id": "http-1", "inputs": [{"name": "WAIT", "shape": [1], "datatype": "FP32",
                                                   "data": [30.0]}]})
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=1.5)
    connection.request("POST", "/v2/models/waits/infer", body, {"Content-Type": "application/json"})
    with pytest.raises(TimeoutError):
        connection.getresponse()
    connection.close()  # the client leaves while execute runs
    told = _told(server, "http-1")
    assert told.startswith("cancelled after "), told


def test_a_request_nobody_cancels_is_not_cancelled(server: RunningServer) -> None:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer("waits", _wait_input(0.5), request_id="kept-1")
    assert result.as_numpy("OUT")[0] == pytest.approx(0.5, abs=0.05)
    assert _told(server, "kept-1") == "not cancelled after 0.5 s"


def test_stream_cancel_reaches_a_decoupled_request(server: RunningServer) -> None:
    errors: list[object] = []
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: errors.append(error))
        client.async_stream_infer("waits_decoupled", _wait_input(30.0), request_id="stream-1")
        time.sleep(1.5)  # executing
        client.stop_stream(cancel_requests=True)
        told = _told(server, "stream-1")
    assert told.startswith("cancelled after "), told
    assert float(told.split()[-2]) < 10.0, told


def test_grpc_cancel_reaches_its_own_request_of_a_batch(server: RunningServer) -> None:
    first, wait = grpcclient.InferInput("WAIT", [1, 1], "FP32"), grpcclient.InferInput("WAIT", [1, 1], "FP32")
    first.set_data_from_numpy(np.array([[1.0]], np.float32))
    wait.set_data_from_numpy(np.array([[4.0]], np.float32))
    answers: list[object] = []
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        # the instance is busy with a first request, so the next two queue and run as one batch
        client.async_infer("waits_batched", [first], lambda result, error: None, request_id="batch-first")
        time.sleep(0.3)
        leaving = client.async_infer("waits_batched", [wait], lambda result, error: None, request_id="batch-gone")
        client.async_infer("waits_batched", [wait], lambda result, error: answers.append(result or error),
                           request_id="batch-kept")
        time.sleep(2.5)  # both run as one execution
        leaving.cancel()
        gone, kept = _told(server, "batch-gone"), _told(server, "batch-kept")
    assert (gone, kept) == ("cancelled of 2", "not cancelled of 2")
    assert len(answers) == 1 and not isinstance(answers[0], Exception), answers
