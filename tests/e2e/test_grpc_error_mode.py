"""Triton's grpc error mode with tritonclient: a ModelStreamInfer stream opened with metadata
``triton_grpc_error: true`` ends with a model error's gRPC status (INTERNAL) instead of carrying the
error as an in-stream message and going on, for a model's returned error and for a decoupled model's
error response; without the metadata the stream goes on. Both gRPC servers."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, serve

# answers OUT = IN, or an error response when IN is 666
REFUSES_666 = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if x[0] == 666:
                answers.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("666 refused")))
            else:
                answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x)]))
        return answers
"""
# decoupled: OUT = IN, then an error response, then the final flag
ANSWERS_THEN_FAILS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x)]))
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("second answer failed")))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""
CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""
GRPC_ERROR = {"triton_grpc_error": "true"}


@pytest.fixture(scope="module", params=["inferd", "grpcio"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("grpc_error")
    for name, model, extra in (("refuses", REFUSES_666, ""),
                               ("decoupled", ANSWERS_THEN_FAILS, "model_transaction_policy { decoupled: true }\n")):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1/model.py").write_text(model)
        (root / name / "config.pbtxt").write_text(CONFIG + extra)
    with serve(root, "--grpc-server", request.param, grpc=True) as running:
        yield running


def _stream(server: RunningServer, headers: dict[str, str] | None) -> tuple[grpcclient.InferenceServerClient,
                                                                         queue.Queue[Any]]:
    answers: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(lambda result, error: answers.put(error if error is not None else result),
                        headers=dict(headers) if headers else None)
    return client, answers


def _send(client: grpcclient.InferenceServerClient, model: str, value: float) -> None:
    tensor = grpcclient.InferInput("IN", [1], "FP32")
    tensor.set_data_from_numpy(np.array([value], np.float32))
    client.async_stream_infer(model, [tensor])


def test_a_model_error_ends_the_stream_with_its_status(server: RunningServer) -> None:
    client, answers = _stream(server, GRPC_ERROR)
    _send(client, "refuses", 1.0)
    assert answers.get(timeout=10).as_numpy("OUT").tolist() == [1.0]
    _send(client, "refuses", 666.0)
    error = answers.get(timeout=10)
    assert isinstance(error, InferenceServerException)
    assert error.status() == "StatusCode.INTERNAL" and "666 refused" in error.message()
    with pytest.raises(InferenceServerException, match="no longer in valid state"):
        _send(client, "refuses", 2.0)  # the stream is over
    client.stop_stream()


def test_without_the_metadata_the_error_is_a_message_and_the_stream_goes_on(server: RunningServer) -> None:
    client, answers = _stream(server, None)
    _send(client, "refuses", 666.0)
    error = answers.get(timeout=10)
    assert isinstance(error, InferenceServerException) and error.status() is None  # an in-stream error_message
    assert "666 refused" in error.message()
    _send(client, "refuses", 3.0)
    assert answers.get(timeout=10).as_numpy("OUT").tolist() == [3.0]
    client.stop_stream()


def test_a_decoupled_error_response_ends_the_stream_after_the_answers_before_it(server: RunningServer) -> None:
    client, answers = _stream(server, GRPC_ERROR)
    _send(client, "decoupled", 5.0)
    assert answers.get(timeout=10).as_numpy("OUT").tolist() == [5.0]
    error = answers.get(timeout=10)
    assert isinstance(error, InferenceServerException)
    assert error.status() == "StatusCode.INTERNAL" and "second answer failed" in error.message()
    with pytest.raises(queue.Empty):
        answers.get(timeout=1)  # nothing after the end, the delayed final flag included
    client.stop_stream()
