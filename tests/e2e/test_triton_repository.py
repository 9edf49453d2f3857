"""A repository written for Triton (config.pbtxt, TritonPythonModel, INPUT__0 naming) served unchanged,
called with tritonclient, answers compared with running the model in process."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models, triton_models
from tests.conftest import RunningServer, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("triton_repo")
    triton_models.python_models(root)
    triton_models.framework_models(root)
    triton_models.broken_models(root)
    with serve(root, grpc=True) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: RunningServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url, concurrency=16)


def _inputs(module: object, arrays: dict[str, np.ndarray], datatype: str) -> list:
    tensors = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), datatype)  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def test_python_backend_model_answers_as_written(http: httpclient.InferenceServerClient,
                                                 server: RunningServer) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.ones((2, 16), np.int32)
    result = http.infer("simple", _inputs(httpclient, {"INPUT0": a, "INPUT1": b}, "INT32"))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    strings = {k: v.astype(str).astype(np.object_) for k, v in (("INPUT0", a), ("INPUT1", b))}
    answer = grpc.infer("simple_string", _inputs(grpcclient, strings, "BYTES"))
    assert [int(v) for v in answer.as_numpy("OUTPUT0").reshape(-1)] == list((a + b).reshape(-1))
    words = np.array([[b"triton", "\u00fcber".encode()]], dtype=np.object_)
    echoed = grpc.infer("simple_identity", _inputs(grpcclient, {"INPUT0": words}, "BYTES")).as_numpy("OUTPUT0")
    assert echoed.tolist() == words.tolist()
    small = http.infer("simple_int8", _inputs(httpclient, {"INPUT0": a[:1].astype(np.int8),
                                                           "INPUT1": b[:1].astype(np.int8)}, "INT8"))
    assert small.as_numpy("OUTPUT0").dtype == np.int8


def test_a_model_error_response_is_a_500_with_its_message(http: httpclient.InferenceServerClient) -> None:
    negative = -np.ones((1, 16), np.int32)
    with pytest.raises(InferenceServerException, match="simple adds non-negative numbers only"):
        http.infer("simple", _inputs(httpclient, {"INPUT0": negative, "INPUT1": negative}, "INT32"))


def test_dynamic_batching_comes_from_config_pbtxt(http: httpclient.InferenceServerClient) -> None:
    config = http.get_model_config("simple")
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert config["max_batch_size"] == 8 and config["backend"] == "python"
    a = np.arange(16, dtype=np.int32).reshape(1, 16)

    pending = [http.async_infer("simple", _inputs(httpclient, {"INPUT0": a + i, "INPUT1": a}, "INT32"))
               for i in range(64)]  # 16 at a time (the client's concurrency)
    outputs = [p.get_result().as_numpy("OUTPUT0") for p in pending]
    for i, output in enumerate(outputs):  # every request gets its own rows back
        np.testing.assert_array_equal(output, 2 * a + i)
    stats = http.get_inference_statistics("simple")["model_stats"][0]
    sizes = {b["batch_size"] for b in stats["batch_stats"]}
    assert max(sizes) > 1, f"no batch formed: {stats['batch_stats']}"
    assert max(sizes) <= 8


@pytest.mark.parametrize(("model", "input_name", "output_name"), [("onnx_mlp", "x", "y"),
                                                                  ("torch_mlp", "INPUT__0", "OUTPUT__0")])
def test_onnx_and_torchscript_with_tritons_config(http: httpclient.InferenceServerClient, model: str,
                                                  input_name: str, output_name: str) -> None:
    x = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)
    result = http.infer(model, _inputs(httpclient, {input_name: x}, "FP32"))
    np.testing.assert_allclose(result.as_numpy(output_name), models.run_mlp(x), rtol=1e-5, atol=1e-5)
    config = http.get_model_config(model)
    assert config["platform"] == {"onnx_mlp": "onnxruntime_onnx", "torch_mlp": "pytorch_libtorch"}[model]
    assert config["input"][0]["dims"] == [8]
    if model == "onnx_mlp":  # the backend's settings are applied (tests/runtimes) and answered as written
        assert config["optimization"]["graph"] == {"level": 1}
        assert config["optimization"]["input_pinned_memory"] == {"enable": True}
        assert config["parameters"]["enable_mem_pattern"] == {"string_value": "0"}
    else:
        assert config["parameters"]["INFERENCE_MODE"] == {"string_value": "true"}


def test_a_torchscript_output_of_another_dtype_than_declared_is_refused_not_cast(
        http: httpclient.InferenceServerClient) -> None:
    x = np.ones((1, 8), np.float32)  # FP32 scores cast to INT32 would come back truncated, silently
    with pytest.raises(InferenceServerException, match=(
            "configuration expects datatype TYPE_INT32 for output 'OUTPUT__0', model provides TYPE_FP32")):
        http.infer("torch_int32_out", _inputs(httpclient, {"INPUT__0": x}, "FP32"))
    result = http.infer("torch_mlp", _inputs(httpclient, {"INPUT__0": x}, "FP32"))  # the server still serves
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), models.run_mlp(x), rtol=1e-5, atol=1e-5)


def test_torchscript_outputs_are_found_by_their_index_in_the_name(http: httpclient.InferenceServerClient) -> None:
    a, b = np.array([[1.5, 2.5]], np.float32), np.array([[1, 2]], np.int32)
    inputs = _inputs(httpclient, {"INPUT__0": a}, "FP32") + _inputs(httpclient, {"INPUT__1": b}, "INT32")
    result = http.infer("torch_two_out", inputs)  # declared OUTPUT__1 first: still the model's second output
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), (a * 2).astype(np.float64))
    with pytest.raises(InferenceServerException, match=re.escape(
            "The output OUTPUT__1 in the model configuration refers to an output index which doesn't "
            "exist. This model has 1 outputs")):
        http.infer("torch_no_output_1", _inputs(httpclient, {"INPUT__0": np.ones((1, 8), np.float32)}, "FP32"))


def test_unsupported_key_is_a_load_error_naming_it(server: RunningServer) -> None:
    index = {row["name"]: row for row in requests.post(f"{server.base}/v2/repository/index", timeout=5).json()}
    assert index["repository_agents"]["state"] == "UNAVAILABLE"
    assert "model_repository_agents" in index["repository_agents"]["reason"]
    assert "inferd does not serve that key" in index["repository_agents"]["reason"]


def test_an_arena_shrinkage_naming_an_arena_the_instance_has_not_fails_the_load(server: RunningServer) -> None:
    """onnxruntime takes the run option at load and fails every request with it: refused at load instead."""
    index = {row["name"]: row for row in requests.post(f"{server.base}/v2/repository/index", timeout=5).json()}
    assert index["arena_elsewhere"]["state"] == "UNAVAILABLE"
    assert "names arena 'gpu:0', which an instance on cpu has not" in index["arena_elsewhere"]["reason"]
    assert index["onnx_mlp"]["state"] == "READY"


def test_a_latest_policy_of_no_versions_is_unavailable_saying_why(server: RunningServer) -> None:
    """Triton fails such a load (core's model_lifecycle.cc: "at least one version must be available
    under the version policy"); inferd served the newest version."""
    index = {row["name"]: row for row in requests.post(f"{server.base}/v2/repository/index", timeout=5).json()}
    assert index["no_versions"]["state"] == "UNAVAILABLE"
    assert "key 'version_policy.latest.num_versions' is 0, so no version would load" in index["no_versions"]["reason"]
    assert requests.get(f"{server.base}/v2/models/no_versions/ready", timeout=5).status_code != 200


def test_config_toml_wins_over_config_pbtxt(http: httpclient.InferenceServerClient, server: RunningServer) -> None:
    assert http.get_model_config("both")["max_batch_size"] == 0  # config.toml's, not the pbtxt's 99
    assert "config.toml wins" in server.log()


OPTIONAL_SUM = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            total = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            extra = pb_utils.get_input_tensor_by_name(request, "INPUT1")  # optional: None when not sent
            if extra is not None:
                total = total + extra.as_numpy()
            names = ",".join(t.name() for t in request.inputs())
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", total),
                pb_utils.Tensor("NAMES", np.array([names.encode()], dtype=np.object_)),
                pb_utils.Tensor("PARAMETERS", np.array([request.parameters().encode()], dtype=np.object_))]))
        return responses
"""


@pytest.fixture(scope="module")
def optional_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("optional_repo")
    triton_models.write(root / "optional_sum/1/model.py", OPTIONAL_SUM)
    triton_models.write(root / "optional_sum/config.pbtxt", """
        backend: "python"
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] },
                { name: "INPUT1" data_type: TYPE_FP32 dims: [ -1 ] optional: true },
                { name: "INPUT2" data_type: TYPE_FP32 dims: [ -1 ] optional: true } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] },
                 { name: "NAMES" data_type: TYPE_STRING dims: [ 1 ] },
                 { name: "PARAMETERS" data_type: TYPE_STRING dims: [ 1 ] } ]
        """)
    triton_models.write(root / "kind_model/1/model.py", KIND_ECHO)
    triton_models.write(root / "kind_model/config.pbtxt", """
        backend: "python"
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "KIND" data_type: TYPE_STRING dims: [ 1 ] } ]
        instance_group [ { count: 1 kind: KIND_MODEL } ]
        """)
    with serve(root, grpc=True) as running:
        yield running


KIND_ECHO = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.kind = args["model_instance_kind"]

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("KIND", np.array([self.kind.encode()], np.object_))])
                for _ in requests]
"""


def test_a_python_model_of_kind_model_loads_and_is_told_its_kind(optional_server: RunningServer) -> None:
    http = httpclient.InferenceServerClient(optional_server.url)
    answer = http.infer("kind_model", _inputs(httpclient, {"X": np.ones(1, np.float32)}, "FP32"))
    assert answer.as_numpy("KIND").tolist() == [b"MODEL"]  # as Triton's python backend passes it
    assert http.get_model_config("kind_model")["instance_group"][0]["kind"] == "KIND_MODEL"


def test_an_optional_input_may_be_left_out(optional_server: RunningServer) -> None:
    http = httpclient.InferenceServerClient(optional_server.url)
    grpc = grpcclient.InferenceServerClient(optional_server.grpc_url)
    a, b = np.arange(3, dtype=np.float32), np.full(3, 10, np.float32)
    for module, client in ((httpclient, http), (grpcclient, grpc)):
        alone = client.infer("optional_sum", _inputs(module, {"INPUT0": a}, "FP32"))
        np.testing.assert_array_equal(alone.as_numpy("OUTPUT0"), a)
        assert alone.as_numpy("NAMES").tolist() == [b"INPUT0"]  # the model sees only what was sent
        both = client.infer("optional_sum", _inputs(module, {"INPUT0": a, "INPUT1": b}, "FP32"))
        np.testing.assert_array_equal(both.as_numpy("OUTPUT0"), a + b)
    config = http.get_model_config("optional_sum")
    assert [i.get("optional", False) for i in config["input"]] == [False, True, True]


def test_a_missing_required_input_is_refused_in_tritons_words(optional_server: RunningServer) -> None:
    grpc = grpcclient.InferenceServerClient(optional_server.grpc_url)
    with pytest.raises(InferenceServerException) as refused:
        grpc.infer("optional_sum", _inputs(grpcclient, {"INPUT1": np.ones(3, np.float32)}, "FP32"))
    assert "expected number of inputs between 1 and 3 but got 1 inputs for model 'optional_sum'. Got input(s) " \
           "['INPUT1'], but missing required input(s) ['INPUT0']. Please provide all required input(s)." \
           in refused.value.message()
    assert "'INPUT1' (FP32 [-1], optional)" in refused.value.message()


def test_an_input_or_output_named_twice_is_refused(optional_server: RunningServer) -> None:
    x = {"name": "INPUT0", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}
    twice = requests.post(f"{optional_server.base}/v2/models/optional_sum/infer", timeout=10,
                          json={"inputs": [x], "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]})
    assert twice.status_code == 400 and "output 'OUTPUT0' already exists in request" in twice.json()["error"]
    grpc = grpcclient.InferenceServerClient(optional_server.grpc_url)
    a = np.ones(3, np.float32)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT0")]
    with pytest.raises(InferenceServerException, match="output 'OUTPUT0' already exists in request"):
        grpc.infer("optional_sum", _inputs(grpcclient, {"INPUT0": a}, "FP32"), outputs=outputs)
    inputs = requests.post(f"{optional_server.base}/v2/models/optional_sum/infer", json={"inputs": [x, x]},
                           timeout=10)
    assert inputs.status_code == 400 and "input 'INPUT0' already exists in request" in inputs.json()["error"]


def test_generate_takes_keys_that_are_no_input_as_parameters(optional_server: RunningServer) -> None:
    response = requests.post(f"{optional_server.base}/v2/models/optional_sum/generate", timeout=10,
                             json={"INPUT0": [1, 2, 3], "temperature": 0.5, "stop": "\n", "id": ""})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["OUTPUT0"] == [1, 2, 3] and answer["NAMES"] == "INPUT0"
    assert json.loads(answer["PARAMETERS"]) == {"temperature": 0.5, "stop": "\n"}
    assert "id" not in answer  # an empty id is left out, as Triton answers
    stream = requests.post(f"{optional_server.base}/v2/models/optional_sum/generate_stream", json={"INPUT0": 1},
                           timeout=10)
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert json.loads(stream.content.removeprefix(b"data: "))["OUTPUT0"] == 1
