"""The real `inferd serve` process, called with Triton's own HTTP client and with raw HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import RunningServer, serve


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[RunningServer]:
    with serve(model_repo) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url)


def infer(client: triton.InferenceServerClient, model: str, name: str, x: np.ndarray,
          datatype: str = "FP32", binary: bool = True, version: str = "") -> triton.InferResult:
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return client.infer(model, [tensor], model_version=version)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata()["name"] == "inferd"
    meta = client.get_model_metadata("mlp_onnx")
    assert meta["versions"] == ["2"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 5]}]
    assert client.is_model_ready("mlp_ts")
    assert client.is_model_ready("mlp_onnx", "2")


@pytest.mark.parametrize("model", ["mlp_onnx", "mlp_ts", "mlp_export"])
@pytest.mark.parametrize("binary", [True, False])
def test_mlp_outputs_equal_in_process(client: triton.InferenceServerClient, model: str,
                                      binary: bool) -> None:
    x = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)
    result = infer(client, model, "x", x, binary=binary)
    name = "output__0" if model == "mlp_export" else "y"
    np.testing.assert_allclose(result.as_numpy(name), models.run_mlp(x), rtol=1e-5, atol=1e-5)


def test_versioned_path(client: triton.InferenceServerClient) -> None:
    x = np.ones((1, 8), dtype=np.float32)
    result = infer(client, "mlp_onnx", "x", x, version="2")
    assert result.get_response()["model_version"] == "2"
    with pytest.raises(InferenceServerException, match="version '1'"):
        infer(client, "mlp_onnx", "x", x, version="1")  # the default policy serves the latest only


def test_two_inputs_two_outputs_and_output_selection(client: triton.InferenceServerClient) -> None:
    a = np.array([[1.5, 2.0, -3.0]], dtype=np.float32)
    b = np.array([[1, 2, 3]], dtype=np.int64)
    inputs = [triton.InferInput("a", [1, 3], "FP32"), triton.InferInput("b", [1, 3], "INT64")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b, binary_data=False)
    result = client.infer("two_out", inputs, request_id="req-7",
                          outputs=[triton.InferRequestedOutput("scaled", binary_data=False)])
    response = result.get_response()
    assert response["id"] == "req-7"
    assert [o["name"] for o in response["outputs"]] == ["scaled"]
    expected_sum, expected_scaled = torch.jit.script(models.TwoOut())(torch.from_numpy(a),
                                                                      torch.from_numpy(b))
    np.testing.assert_array_equal(result.as_numpy("scaled"), expected_scaled.numpy())
    assert result.as_numpy("scaled").dtype == np.float64
    full = client.infer("two_out", inputs)
    np.testing.assert_array_equal(full.as_numpy("sum"), expected_sum.numpy())


def test_python_model(client: triton.InferenceServerClient) -> None:
    x = np.array([1.0, 2.5, -4.0])
    result = infer(client, "py_double", "x", x, datatype="FP64")
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2 + 10)
    np.testing.assert_array_equal(result.as_numpy("n"), [3])


def _sample(datatype: str, rng: np.random.Generator) -> np.ndarray:
    shape = (2, 3)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if datatype == "BYTES":
        return np.array([[b"a", "é".encode(), b""], [b"xyz", b"\x00\x01", b"long" * 10]], dtype=object)
    if datatype == "BF16":
        import ml_dtypes

        return rng.standard_normal(shape).astype(ml_dtypes.bfloat16)
    dtype = np.dtype(datatype.lower().replace("fp", "float"))
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


# JSON BYTES are text (arbitrary bytes travel binary) and tritonclient sends BF16 only as binary:
# both are covered in JSON form over raw HTTP in the next test.
CASES = [(t, b) for t in models.ALL_TYPES for b in (True, False) if b or t not in ("BYTES", "BF16")]


@pytest.mark.parametrize(("datatype", "binary"), CASES)
def test_every_datatype_round_trips(client: triton.InferenceServerClient, datatype: str,
                                    binary: bool) -> None:
    x = _sample(datatype, np.random.default_rng(5))
    tensor = triton.InferInput("in", list(x.shape), datatype)
    try:
        tensor.set_data_from_numpy(x, binary_data=binary)  # tritonclient >= 2.6x: ml_dtypes.bfloat16
    except InferenceServerException:  # older releases take BF16 as float32 (exact for these values)
        x = x.astype(np.float32)
        tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput("out", binary_data=binary)]
    result = client.infer(f"echo_{datatype.lower()}", [tensor], outputs=outputs)
    got = result.as_numpy("out")
    assert result.get_output("out")["datatype"] == datatype
    np.testing.assert_array_equal(np.asarray(got, dtype=x.dtype), x)


def test_json_strings_and_bf16_over_raw_http(server: RunningServer) -> None:
    cases = [("BYTES", [["héllo", "wörld"]], ["héllo", "wörld"]),
             ("BF16", [[1.5, -2.0]], [1.5, -2.0]),
             ("FP16", [0.5, 3.0], [0.5, 3.0]),
             ("BOOL", [True, False], [True, False])]
    for datatype, data, expected in cases:
        body = {"inputs": [{"name": "in", "shape": [1, 2], "datatype": datatype, "data": data}]}
        response = requests.post(f"{server.base}/v2/models/echo_{datatype.lower()}/infer",
                                 json=body, timeout=10)
        assert response.status_code == 200, response.text
        output = response.json()["outputs"][0]
        assert output["data"] == expected
        assert output["datatype"] == datatype
        assert output["shape"] == [1, 2]


def test_binary_data_output_parameter(server: RunningServer) -> None:
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    body = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": x.ravel().tolist()}],
            "parameters": {"binary_data_output": True}}
    response = requests.post(f"{server.base}/v2/models/mlp_ts/infer", json=body, timeout=10)
    assert response.status_code == 200
    header_length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:header_length])
    size = header["outputs"][0]["parameters"]["binary_data_size"]
    assert size == 5 * 4
    y = np.frombuffer(response.content[header_length:], dtype=np.float32).reshape(1, 5)
    np.testing.assert_allclose(y, models.run_mlp(x), rtol=1e-5, atol=1e-5)
    assert "compute;dur=" in response.headers["Server-Timing"]


def raw_request(server: RunningServer, model: str, body: bytes) -> requests.Response:
    """Triton's raw binary request: no JSON, the body is the model's one input."""
    return requests.post(f"{server.base}/v2/models/{model}/infer", data=body,
                         headers={"Inference-Header-Content-Length": "0"}, timeout=10)


def binary_outputs(response: requests.Response) -> dict[str, tuple[list[int], bytes]]:
    """Each output's shape and raw bytes, from a binary answer."""
    header_length = int(response.headers["Inference-Header-Content-Length"])
    outputs, offset = {}, header_length
    for output in json.loads(response.content[:header_length])["outputs"]:
        size = output["parameters"]["binary_data_size"]
        outputs[output["name"]] = (output["shape"], response.content[offset:offset + size])
        offset += size
    assert offset == len(response.content)
    return outputs


def test_raw_binary_request_body_is_the_one_inputs_data(server: RunningServer) -> None:
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    response = raw_request(server, "mlp_ts", x.tobytes())  # dims [8]: batch 1 of them
    assert response.status_code == 200, response.text
    shape, raw = binary_outputs(response)["y"]
    assert shape == [1, 5]
    np.testing.assert_allclose(np.frombuffer(raw, np.float32).reshape(1, 5), models.run_mlp(x),
                               rtol=1e-5, atol=1e-5)
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # dims [-1], no batching: 5 deduced from 40 bytes
    outputs = binary_outputs(raw_request(server, "py_double", values.tobytes()))
    assert outputs["y"][0] == [5]
    np.testing.assert_array_equal(np.frombuffer(outputs["y"][1], np.float64), values * 2 + 10)
    assert np.frombuffer(outputs["n"][1], np.int32).tolist() == [5]


@pytest.mark.parametrize(("model", "body", "message"), [
    ("two_out", bytes(24), "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in "
                           "'two_out' model configuration"),
    ("echo_fp32", bytes(16), "The shape of the raw input 'in' can not be deduced because there are more than "
                             "one variable-sized dimension"),
    ("echo_bytes", b"abc", "For BYTE datatype raw input 'in', the model must have input shape [1]"),
    ("py_double", bytes(12), "can not be deduced: 12 bytes are not a whole number of FP64 rows of 8 bytes"),
    ("mlp_ts", bytes(64), "input 'x': shape [1, 8] of FP32 needs 32 bytes, got 64"),
], ids=["two inputs", "two variable dims", "bytes not one element", "not whole rows", "not the fixed size"])
def test_raw_binary_request_without_one_shape_to_deduce_gets_400(server: RunningServer, model: str,
                                                                 body: bytes, message: str) -> None:
    response = raw_request(server, model, body)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_repository_index_reports_broken_models(server: RunningServer) -> None:
    rows = requests.post(f"{server.base}/v2/repository/index", timeout=10).json()
    states = {row["name"]: row for row in rows}
    for name in ("mlp_onnx", "mlp_ts", "mlp_export", "py_double", "two_out", "echo_bf16"):
        assert states[name]["state"] == "READY", states[name]
    assert states["bad_config"]["state"] == "UNAVAILABLE"
    assert "max_batch_sise" in states["bad_config"]["reason"]
    assert "config.toml" in states["bad_config"]["reason"]
    assert states["corrupt_onnx"]["state"] == "UNAVAILABLE"
    assert states["corrupt_onnx"]["reason"]
    assert "[[input]]" in states["ts_no_config"]["reason"]
    ready = requests.post(f"{server.base}/v2/repository/index", json={"ready": True}, timeout=10)
    assert {row["name"] for row in ready.json()} >= {"mlp_onnx", "mlp_ts"}
    assert "bad_config" not in {row["name"] for row in ready.json()}
    assert "model corrupt_onnx version 1 unavailable" in server.log()


def test_repository_index_ready_must_be_a_boolean(server: RunningServer) -> None:
    for ready in ("false", 0, [True]):  # "false" was read as true: every READY model but no other
        response = requests.post(f"{server.base}/v2/repository/index", json={"ready": ready}, timeout=10)
        assert response.status_code == 400, response.text
        assert "Invalid value for 'ready': expected a boolean" in response.json()["error"]
    assert len(requests.post(f"{server.base}/v2/repository/index", json={"ready": False}, timeout=10).json()) > \
        len(requests.post(f"{server.base}/v2/repository/index", json={"ready": True}, timeout=10).json())


def test_parameters_named_triton_are_refused_as_tritons_own(server: RunningServer) -> None:
    x = {"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}
    for key in ("triton_final_response", "triton_enable_empty_final_response", "triton_anything"):
        response = requests.post(f"{server.base}/v2/models/mlp_ts/infer", timeout=10,
                                 json={"inputs": [x], "parameters": {key: True}})
        assert response.status_code == 400, response.text
        assert "parameter keys starting with 'triton_' are reserved for Triton usage" in response.json()["error"]
        assert key in response.json()["error"]
    ours = requests.post(f"{server.base}/v2/models/mlp_ts/infer", json={"inputs": [x], "parameters": {"t": 1}},
                         timeout=10)
    assert ours.status_code == 200, ours.text


def test_model_control_is_off_by_default(server: RunningServer) -> None:
    response = requests.post(f"{server.base}/v2/repository/models/mlp_ts/unload", timeout=10)
    assert response.status_code == 403
    assert "--model-control explicit" in response.json()["error"]
