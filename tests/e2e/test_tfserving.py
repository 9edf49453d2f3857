"""The TensorFlow Serving drop-in: SavedModels from Keras 3 and tf.saved_model.save, called with TF
Serving's REST API and with the stubs of the tensorflow-serving-api package."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from tests import models, tf_models
from tests.conftest import RunningServer, serve


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, model_repo: Path) -> Path:
    root = tmp_path_factory.mktemp("tf")
    tf_models.build(root)
    shutil.copytree(model_repo / "mlp_onnx", root / "mlp_onnx")
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with serve(repo, grpc=True) as running:
        yield running


def post(server: RunningServer, path: str, body: dict) -> requests.Response:
    return requests.post(f"{server.base}/v1/models/{path}", json=body, timeout=30)


X = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)


def test_status_and_metadata(server: RunningServer) -> None:
    status = requests.get(f"{server.base}/v1/models/keras_mlp", timeout=10).json()
    assert status["model_version_status"] == [{"version": "1", "state": "AVAILABLE",
                                               "status": {"error_code": "OK", "error_message": ""}}]
    meta = requests.get(f"{server.base}/v1/models/calculator/metadata", timeout=10).json()
    signatures = meta["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "add", "lengths", "shout"}
    assert signatures["add"]["inputs"]["a"]["dtype"] == "DT_INT64"
    assert signatures["serving_default"]["inputs"]["x"]["tensor_shape"]["dim"][1]["size"] == "3"
    assert requests.get(f"{server.base}/v1/models/calculator/labels/stable", timeout=10).status_code == 200


def test_keras_model_row_and_columnar(server: RunningServer, repo: Path) -> None:
    expected = tf_models.run_signature(repo / "keras_mlp/1", "serving_default", features=X)["output_0"]
    rows = post(server, "keras_mlp:predict", {"instances": X.tolist()})
    assert rows.status_code == 200, rows.text
    np.testing.assert_allclose(rows.json()["predictions"], expected, rtol=1e-5, atol=1e-6)
    columns = post(server, "keras_mlp/versions/1:predict", {"inputs": {"features": X.tolist()}})
    np.testing.assert_allclose(columns.json()["outputs"], expected, rtol=1e-5, atol=1e-6)


def test_named_signatures_labels_and_b64(server: RunningServer, repo: Path) -> None:
    path = repo / "calculator/1/model.savedmodel"
    answer = post(server, "calculator/labels/stable:predict",
                  {"signature_name": "add", "instances": [{"a": 2, "b": 5}, {"a": -1, "b": 4}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == [{"product": 10, "total": 7}, {"product": -4, "total": 3}]
    text = [b"hello", b"\xff\x00bin"]
    answer = post(server, "calculator:predict", {"signature_name": "lengths", "inputs": {
        "text": [text[0].decode(), {"b64": base64.b64encode(text[1]).decode()}]}})
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    expected = tf_models.run_signature(path, "lengths", text=np.array(text, dtype=object))
    assert outputs["length"] == expected["length"].tolist()
    assert [base64.b64decode(o["b64"]) for o in outputs["upper_bytes"]] == list(expected["upper_bytes"])
    y = post(server, "calculator:predict", {"instances": [[1.0, 2.0, 3.0]]}).json()["predictions"]
    assert y == [[3.0, 5.0, 7.0]]


def test_rest_errors_in_tf_serving_shape(server: RunningServer) -> None:
    for path, body, status, message in (
        ("nope:predict", {"instances": [[1]]}, 404, "Request for unknown model: 'nope' is not found"),
        ("keras_mlp:predict", {"instances": [[1.0, 2.0]]}, 400, "expected shape [-1, 4]"),
        ("keras_mlp:predict", {"rows": []}, 400, "exactly one of 'instances'"),
        ("keras_mlp:predict", {"instances": [["a", "b", "c", "d"]]}, 400, "DT_FLOAT"),
        # TF Serving's words: predict_util.cc:87-94 at 9d981c5c (FAILED_PRECONDITION, REST's 400)
        ("calculator:predict", {"signature_name": "nope", "instances": [[1.0, 2.0, 3.0]]}, 400,
         'Serving signature key "nope" not found. (the model has: add, lengths, serving_default, shout)'),
        ("calculator/labels/canary:predict", {"instances": [[1.0, 2.0, 3.0]]}, 400,
         "Unrecognized servable version label: canary"),
        ("calculator:predict", {"instances": [[1.0, 2.0, 3.0], [4.0, [5.0], 6.0]]}, 400, "ragged"),
        ("calculator:predict", {"inputs": [[[1.0, 2.0, 3.0]], [4.0, 5.0, 6.0]]}, 400, "ragged"),
        ("calculator:predict", {"instances": [[True, 2.0, 3.0]]}, 400, "expected numbers, got true/false"),
        ("calculator:predict", {"signature_name": "add", "inputs": {"a": [True], "b": [1]}}, 400, "true/false"),
        ("keras_mlp/versions/3:predict", {"instances": X.tolist()}, 404, "unknown version '3'"),
    ):
        response = post(server, path, body)
        assert response.status_code == status, (path, response.text)
        assert message in response.json()["error"]


def test_rest_numbers_are_never_cast_silently(server: RunningServer) -> None:
    """TF Serving's JSON rules: an INT64 input takes integers that fit, a float input numbers."""
    for a, message in ((1.9, "expected integers, got fractional numbers"), (2**63 + 5, "DT_INT64"),
                       ("7", "expected numbers")):
        answer = post(server, "calculator:predict", {"signature_name": "add", "inputs": {"a": [a], "b": [1]}})
        assert answer.status_code == 400, (a, answer.text)
        assert message in answer.json()["error"], answer.text
    mixed = post(server, "calculator:predict", {"signature_name": "add", "inputs": {"a": [1, 2**63 + 5], "b": [1, 1]}})
    assert mixed.status_code == 400, mixed.text
    ok = post(server, "calculator:predict", {"signature_name": "add", "inputs": {"a": [2**62], "b": [1]}})
    assert ok.json()["outputs"]["total"] == [2**62 + 1]
    ragged = post(server, "keras_mlp:predict", {"instances": [[1.0, 2.0, 3.0, 4.0], [1.0]]})
    assert ragged.status_code == 400 and "ragged" in ragged.json()["error"]


def test_rest_scalar_string_output_is_one_value(server: RunningServer) -> None:
    """A rank-0 output is written as a single value, strings too (TF's json_tensor.cc)."""
    for given in ("abc", {"b64": base64.b64encode(b"abc").decode()}):
        answer = post(server, "calculator:predict", {"signature_name": "shout", "inputs": given})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"outputs": "ABC"}


def test_rest_non_finite_numbers_and_float32_in_shortest_form(server: RunningServer) -> None:
    """TF Serving reads and writes NaN, Infinity and -Infinity, and prints a float32 as the shortest
    text that reads back as that float32."""
    answer = requests.post(f"{server.base}/v1/models/calculator:predict",
                           data=b'{"inputs": [[NaN, Infinity, -Infinity]]}', timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.text == '{"outputs":[[NaN,Infinity,-Infinity]]}'
    answer = post(server, "calculator:predict", {"instances": [[0.1, 1.1, 0.7]]})  # 2x + 1 in float32
    assert answer.text == '{"predictions":[[1.2,3.2,2.4]]}'  # not 1.2000000476837158


def test_rest_columnar_inputs_ignore_keys_outside_the_signature(server: RunningServer) -> None:
    answer = post(server, "calculator:predict", {"signature_name": "add", "inputs": {"a": [2], "b": [3], "c": [9]}})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"outputs": {"product": [6], "total": [5]}}


def test_rest_status_ignores_a_label(server: RunningServer) -> None:
    for label in ("stable", "nope"):
        status = requests.get(f"{server.base}/v1/models/calculator/labels/{label}", timeout=10)
        assert status.status_code == 200, status.text
        assert [row["version"] for row in status.json()["model_version_status"]] == ["1"]


def test_every_model_through_tf_serving_and_tf_through_v2(server: RunningServer) -> None:
    x = np.random.default_rng(6).standard_normal((2, 8)).astype(np.float32)
    answer = post(server, "mlp_onnx:predict", {"instances": x.tolist()})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["predictions"], models.run_mlp(x), rtol=1e-5, atol=1e-5)
    body = {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": X.ravel().tolist()}]}
    v2 = requests.post(f"{server.base}/v2/models/keras_mlp/infer", json=body, timeout=10)
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["shape"] == [2, 3]


@pytest.fixture(scope="module")
def stubs(server: RunningServer):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(server.grpc_url)
    return (prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


def test_grpc_predict_metadata_status(stubs, repo: Path) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

    prediction, model_service = stubs
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "keras_mlp"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(X))
    response = prediction.Predict(request, timeout=30)
    expected = tf_models.run_signature(repo / "keras_mlp/1", "serving_default", features=X)["output_0"]
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["output_0"]), expected, rtol=1e-5, atol=1e-6)
    assert response.model_spec.version.value == 1

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "calculator"
    request.model_spec.signature_name = "add"
    request.model_spec.version_label = "stable"
    request.inputs["a"].CopyFrom(tf.make_tensor_proto(np.array([3, 4], dtype=np.int64)))
    request.inputs["b"].CopyFrom(tf.make_tensor_proto(np.array([10, 20], dtype=np.int64)))
    request.output_filter.append("total")
    response = prediction.Predict(request, timeout=30)
    assert list(response.outputs) == ["total"]
    assert tf.make_ndarray(response.outputs["total"]).tolist() == [13, 24]

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "calculator"
    request.model_spec.signature_name = "lengths"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(np.array([b"ab", b"xyz"], dtype=object)))
    response = prediction.Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["upper_bytes"]).tolist() == [b"AB", b"XYZ"]

    meta_request = get_model_metadata_pb2.GetModelMetadataRequest()
    meta_request.model_spec.name = "calculator"
    meta_request.metadata_field.append("signature_def")
    meta = prediction.GetModelMetadata(meta_request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {"serving_default", "add", "lengths", "shout"}
    assert signatures.signature_def["add"].inputs["a"].dtype == tf.int64.as_datatype_enum

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "keras_mlp"
    status = model_service.GetModelStatus(status_request, timeout=30)
    assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]


def test_grpc_model_spec_errors_as_tf_serving_gives_them(stubs) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

    prediction, model_service = stubs

    def predict(**spec: str) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.SetInParent()
        for key, value in spec.items():
            setattr(request.model_spec, key, value)
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 3), np.float32)))
        return request

    duplicated = predict(name="calculator")
    duplicated.output_filter.extend(["y", "y"])
    no_spec = predict_pb2.PredictRequest()
    no_spec.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 3), np.float32)))
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name, metadata.model_spec.version_label = "calculator", "canary"
    for call, request, code, message in (
        (prediction.Predict, predict(name="calculator", signature_name="nope"), grpc.StatusCode.FAILED_PRECONDITION,
         'Serving signature key "nope" not found.'),
        (prediction.Predict, predict(name=""), grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
        (prediction.Predict, no_spec, grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
        (prediction.Predict, duplicated, grpc.StatusCode.INVALID_ARGUMENT, "duplicate output tensor alias: y"),
        (prediction.Predict, predict(name="calculator", version_label="canary"), grpc.StatusCode.INVALID_ARGUMENT,
         "Unrecognized servable version label: canary"),
        (prediction.GetModelMetadata, metadata, grpc.StatusCode.INVALID_ARGUMENT,
         "Unrecognized servable version label: canary"),
        (model_service.GetModelStatus, get_model_status_pb2.GetModelStatusRequest(), grpc.StatusCode.INVALID_ARGUMENT,
         "Missing ModelSpec"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=30)
        assert (info.value.code(), message in info.value.details()) == (code, True), info.value.details()
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name, status_request.model_spec.version_label = "calculator", "canary"
    status = model_service.GetModelStatus(status_request, timeout=30)  # TF Serving ignores the label here
    assert [s.version for s in status.model_version_status] == [1]


def test_grpc_errors(stubs) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    prediction, _ = stubs
    for name, inputs, code, message in (
        ("nope", {"features": X}, grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'nope' is not found"),
        ("keras_mlp", {"features": X[:, :2]}, grpc.StatusCode.INVALID_ARGUMENT, "expected shape [-1, 4]"),
        ("keras_mlp", {"wrong": X}, grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'wrong'"),
    ):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        with pytest.raises(grpc.RpcError) as info:
            prediction.Predict(request, timeout=30)
        assert info.value.code() == code
        assert message in info.value.details()
