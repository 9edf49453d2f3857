"""Triton's --http-header-forward-pattern and --grpc-header-forward-pattern with tritonclient and plain
HTTP: request headers (gRPC metadata) whose names match reach a Triton Python model in
``request.parameters()``, case-insensitively unless the pattern starts with ``(?-i)``, also as a
step of an ensemble (which gives its steps its request's parameters, as Triton's does); a reserved
name is refused with 400 / INVALID_ARGUMENT; without a pattern nothing is forwarded."""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, serve

# answers the request's parameters as one JSON string
PARAMETERS_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "PARAMETERS", np.array([request.parameters().encode()], dtype=np.object_))])
                for request in requests]
"""
PARAMETERS_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "PARAMETERS" data_type: TYPE_STRING dims: [ 1 ] } ]
"""
# Triton's L0_parameters ensemble: a copy step, then the parameters model
IDENTITY_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN")
                                                            .as_numpy())]) for r in requests]
"""
IDENTITY_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""
ENSEMBLE_CONFIG = """
platform: "ensemble"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "PARAMETERS" data_type: TYPE_STRING dims: [ 1 ] } ]
ensemble_scheduling { step [
  { model_name: "identity" model_version: -1 input_map { key: "IN" value: "IN" }
    output_map { key: "OUT" value: "copy" } },
  { model_name: "params" model_version: -1 input_map { key: "IN" value: "copy" }
    output_map { key: "PARAMETERS" value: "PARAMETERS" } }
] }
"""
SENT = {"my_header_1": "one", "My_Header_2": 'a "quoted" value\\ ', "other": "not forwarded"}
GRPC_SENT = {name.lower(): value for name, value in SENT.items()}  # gRPC metadata keys are lower-case


def _repository(root: Path) -> Path:
    (root / "params/1").mkdir(parents=True)
    (root / "params/1/model.py").write_text(PARAMETERS_MODEL)
    (root / "params/config.pbtxt").write_text(PARAMETERS_CONFIG)
    (root / "identity/1").mkdir(parents=True)
    (root / "identity/1/model.py").write_text(IDENTITY_MODEL)
    (root / "identity/config.pbtxt").write_text(IDENTITY_CONFIG)
    (root / "ensemble/1").mkdir(parents=True)
    (root / "ensemble/config.pbtxt").write_text(ENSEMBLE_CONFIG)
    return root


@pytest.fixture(scope="module", params=["inferd", "grpcio"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = _repository(tmp_path_factory.mktemp("forward"))
    with serve(root, "--grpc-server", request.param, "--http-header-forward-pattern", "MY_HEADER.*",
               "--grpc-header-forward-pattern", "(?-i)MY_HEADER.*|^my_header_1$", grpc=True) as running:
        yield running


def _infer(lib: Any, client: Any, headers: dict[str, str], model: str = "params",
           parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    tensor = lib.InferInput("IN", [1], "FP32")
    tensor.set_data_from_numpy(np.ones(1, np.float32))
    answer = client.infer(model, [tensor], headers=dict(headers), parameters=parameters or {"asked": "yes"})
    parameters: dict[str, Any] = json.loads(answer.as_numpy("PARAMETERS")[0])
    return parameters


def test_http_headers_matching_the_pattern_become_parameters(server: RunningServer) -> None:
    parameters = _infer(httpclient, httpclient.InferenceServerClient(server.url), SENT)
    # case-insensitive, as Triton's; HTTP header names arrive lower-cased
    assert parameters == {"asked": "yes", "my_header_1": "one", "my_header_2": 'a "quoted" value\\ '}


def test_grpc_metadata_matching_a_case_sensitive_pattern_become_parameters(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    # (?-i): MY_HEADER.* finds no lower-case key; the exact name does
    assert _infer(grpcclient, client, GRPC_SENT) == {"asked": "yes", "my_header_1": "one"}
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(lambda result, error: answers.put(error or result), headers={"my_header_1": "streamed"})
    tensor = grpcclient.InferInput("IN", [1], "FP32")
    tensor.set_data_from_numpy(np.ones(1, np.float32))
    client.async_stream_infer("params", [tensor])
    result = answers.get(timeout=10)
    assert not isinstance(result, InferenceServerException), result
    assert json.loads(result.as_numpy("PARAMETERS")[0]) == {"my_header_1": "streamed"}
    client.stop_stream()


def test_an_ensemble_gives_its_steps_the_request_parameters_and_forwarded_headers(server: RunningServer) -> None:
    """As Triton's ensemble (SetParameters on each step's request): qa/L0_parameters asks its
    ensemble as it asks the model itself."""
    http = httpclient.InferenceServerClient(server.url)
    assert _infer(httpclient, http, SENT, "ensemble") == _infer(httpclient, http, SENT)
    assert _infer(httpclient, http, SENT, "ensemble") == {"asked": "yes", "my_header_1": "one",
                                                          "my_header_2": 'a "quoted" value\\ '}
    kinds = {"text": "value1", "number": 2, "flag": True}
    assert _infer(httpclient, http, {}, "ensemble", kinds) == kinds
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert _infer(grpcclient, grpc, GRPC_SENT, "ensemble") == {"asked": "yes", "my_header_1": "one"}


def test_reserved_headers_are_refused_not_forwarded(tmp_path: Path) -> None:
    with serve(_repository(tmp_path), "--http-header-forward-pattern", ".*", "--grpc-header-forward-pattern", ".*",
               grpc=True) as server:
        for name in ("priority", "sequence_id", "triton_anything"):
            with pytest.raises(InferenceServerException, match=f"Header '{name}' is reserved for Triton usage "
                                                                "and cannot be forwarded") as raised:
                _infer(grpcclient, grpcclient.InferenceServerClient(server.grpc_url), {name: "1"})
            assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
            body = b'{"inputs":[{"name":"IN","shape":[1],"datatype":"FP32","data":[1]}]}'
            request = urllib.request.Request(f"{server.base}/v2/models/params/infer", data=body,
                                             headers={name: "1"}, method="POST")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 400
            assert f"Header '{name}' is reserved" in refused.value.read().decode()
        # every other header reaches the model, the client's own included
        forwarded = _infer(httpclient, httpclient.InferenceServerClient(server.url), {"x-mine": "1"})
        assert forwarded["x-mine"] == "1" and "host" in forwarded


def test_without_a_pattern_no_header_is_forwarded(tmp_path: Path) -> None:
    with serve(_repository(tmp_path), grpc=True) as server:
        assert _infer(httpclient, httpclient.InferenceServerClient(server.url), SENT) == {"asked": "yes"}
        assert _infer(grpcclient, grpcclient.InferenceServerClient(server.grpc_url), GRPC_SENT) == {"asked": "yes"}


def test_a_bad_pattern_stops_the_server(tmp_path: Path) -> None:
    with (pytest.raises(RuntimeError, match=r"--grpc-header-forward-pattern '\(' is not a regular expression"),
          serve(tmp_path, "--grpc-header-forward-pattern", "(", wait_ready=False)):
        pass
