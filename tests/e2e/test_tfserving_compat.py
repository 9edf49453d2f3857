"""TF Serving's behaviour as its own clients and tests rely on it, with the tensorflow-serving-api
stubs against a real `inferd serve`: typed Predict answers (float_val), TF's shape rules, metadata
as the SavedModel writes it, Classify / Regress / MultiInference over gRPC and REST, zero-padded
version folders, and TF Serving's JSON rules on the REST path. Where a rule is TF Serving's own, the
test names the file of tensorflow/serving that decides it."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from tests import tf_models
from tests.conftest import ROOT, RunningServer, serve


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tfcompat")
    tf_models.build_half_plus_two_tf1(root / "half_plus_two" / "00000123")
    tf_models.build_half_plus_two_tf2(root / "half_plus_two_tf2" / "00000007")
    tf_models.build_offset_versions(root / "offset", {1: 100.0, 2: 200.0})
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with serve(repo, grpc=True) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: RunningServer):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_url))


def predict_x(model: str, values: list[float], shape: list[int], signature: str = ""):
    """The request TF Serving's own server test sends: float_val and a shape, by hand."""
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.extend(values)
    for size in shape:
        request.inputs["x"].tensor_shape.dim.add().size = size
    return request


def test_predict_answers_typed_fields_and_the_graph_decides_the_rank(stub) -> None:
    from tensorflow.core.framework import types_pb2

    # [1] for an input of shape [-1, 1]: TF Serving feeds it to the graph, which computes [1]
    result = stub.Predict(predict_x("half_plus_two", [2.0], [1]), timeout=30)
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [3.0]
    assert not result.outputs["y"].tensor_content
    assert (result.model_spec.name, result.model_spec.signature_name, result.model_spec.version.value) == (
        "half_plus_two", "serving_default", 123)
    result = stub.Predict(predict_x("half_plus_two", [2.0, 4.0], [2, 1]), timeout=30)
    assert list(result.outputs["y"].float_val) == [3.0, 4.0]
    assert [d.size for d in result.outputs["y"].tensor_shape.dim] == [2, 1]
    # a known dim is still checked, with a clear message
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(predict_x("half_plus_two", [1.0, 2.0], [1, 2]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected shape [-1, 1]" in info.value.details()


def test_unknown_rank_takes_any_shape_and_int_outputs_are_typed(stub) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "any_rank"
    z = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    request.inputs["z"].CopyFrom(tf.make_tensor_proto(z))
    output = stub.Predict(request, timeout=30).outputs["w"]
    np.testing.assert_array_equal(tf.make_ndarray(output), z * 0.5)
    assert list(output.float_val) == (z * 0.5).ravel().tolist()
    request.inputs["z"].CopyFrom(tf.make_tensor_proto(np.float32(4.0)))
    assert list(stub.Predict(request, timeout=30).outputs["w"].float_val) == [2.0]


def test_unknown_model_is_a_servable_not_found(stub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(predict_x("intentionally_missing_model", [2.0], [1]), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details().startswith("Servable not found for request: Latest(intentionally_missing_model)")


def test_grpc_metadata_is_the_saved_models_signature_defs(stub, repo: Path) -> None:
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "half_plus_two"
    request.metadata_field.append("signature_def")
    result = stub.GetModelMetadata(request, timeout=30)
    assert result.model_spec.version.value == 123
    served = get_model_metadata_pb2.SignatureDefMap()
    result.metadata["signature_def"].Unpack(served)
    from tensorflow.python.saved_model import loader_impl

    written = loader_impl.parse_saved_model(str(repo / "half_plus_two/00000123")).meta_graphs[0].signature_def
    assert set(served.signature_def) == set(written)
    for name, definition in written.items():
        assert served.signature_def[name] == definition, name
    assert served.signature_def["serving_default"].inputs["x"].name == "x:0"
    assert served.signature_def["classify_x_to_y"].method_name == "tensorflow/serving/classify"
    assert served.signature_def["any_rank"].inputs["z"].tensor_shape.unknown_rank


def test_rest_metadata_prints_every_field_as_tf_serving(server: RunningServer) -> None:
    meta = requests.get(f"{server.base}/v1/models/half_plus_two/metadata", timeout=10).json()
    assert meta["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "123"}
    defs = meta["metadata"]["signature_def"]["signature_def"]
    assert defs["serving_default"] == {
        "inputs": {"x": {"dtype": "DT_FLOAT", "name": "x:0", "tensor_shape": {
            "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}}},
        "outputs": {"y": {"dtype": "DT_FLOAT", "name": "y:0", "tensor_shape": {
            "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}}},
        "method_name": "tensorflow/serving/predict", "defaults": {}}
    assert defs["classify_x_to_y"]["inputs"]["inputs"]["tensor_shape"] == {"dim": [], "unknown_rank": True}
    assert defs["regress_x_to_y"]["method_name"] == "tensorflow/serving/regress"


@pytest.mark.parametrize("model", ["half_plus_two", "half_plus_two_tf2"])
def test_classify_regress_multi_inference_over_grpc(stub, model: str, repo: Path) -> None:
    from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

    version = 123 if model == "half_plus_two" else 7
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "classify_x_to_y"
    for x in (2.0, 6.0):
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)
    result = stub.Classify(request, timeout=30)
    assert [[c.score for c in row.classes] for row in result.result.classifications] == [[3.0], [5.0]]
    label = "" if model == "half_plus_two" else "half_plus_two"
    assert result.result.classifications[0].classes[0].label == label
    assert (result.model_spec.signature_name, result.model_spec.version.value) == ("classify_x_to_y", version)

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "regress_x_to_y"
    context = request.input.example_list_with_context
    context.context.features.feature["x"].float_list.value.append(10.0)
    context.examples.add()  # takes x from the context
    context.examples.add().features.feature["x"].float_list.value.append(4.0)  # its own x wins
    result = stub.Regress(request, timeout=30)
    assert [r.value for r in result.result.regressions] == [7.0, 4.0]

    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
        task = request.tasks.add()
        task.model_spec.name, task.model_spec.signature_name = model, signature
        task.method_name = f"tensorflow/serving/{method}"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    result = stub.MultiInference(request, timeout=30)
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert [r.model_spec.signature_name for r in result.results] == ["regress_x_to_y", "classify_x_to_y"]


def test_classify_errors(stub) -> None:
    from tensorflow_serving.apis import classification_pb2, inference_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "classify_x_to_y"
    for problem, message in (("empty", "Input is empty"), ("predict signature", "expected one input tensor")):
        if problem == "predict signature":
            request.model_spec.signature_name = "any_rank"
            request.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)
            message = "expected a DT_STRING input keyed 'inputs'"
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in info.value.details(), info.value.details()
    multi = inference_pb2.MultiInferenceRequest()
    for model in ("half_plus_two", "half_plus_two_tf2"):
        task = multi.tasks.add()
        task.model_spec.name, task.method_name = model, "tensorflow/serving/regress"
    multi.input.example_list.examples.add()
    with pytest.raises(grpc.RpcError) as info:
        stub.MultiInference(multi, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "All ModelSpecs in a MultiInferenceRequest must access the same model name."
    # TF Serving answers a method other than classify and regress UNIMPLEMENTED
    # (servables/tensorflow/multi_inference.cc:80-83 at 9d981c5c)
    multi.tasks[1].model_spec.name, multi.tasks[1].method_name = "half_plus_two", "tensorflow/serving/predict"
    multi.tasks[1].model_spec.signature_name = "classify_x_to_y"
    with pytest.raises(grpc.RpcError) as info:
        stub.MultiInference(multi, timeout=30)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert info.value.details().startswith("Unsupported signature method_name: tensorflow/serving/predict")
    # an unknown signature, in TF Serving's words (multi_inference.cc:65-70, classifier.cc:157-161)
    multi.tasks[1].method_name, multi.tasks[1].model_spec.signature_name = "tensorflow/serving/regress", "nope"
    with pytest.raises(grpc.RpcError) as info:
        stub.MultiInference(multi, timeout=30)
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Requested signature not found in model graph: nope")
    request.model_spec.signature_name = "nope"
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("No signature was found with the name: nope (the model has: ")


def test_classify_and_regress_over_rest(server: RunningServer) -> None:
    def post(path: str, body: dict) -> requests.Response:
        return requests.post(f"{server.base}/v1/models/{path}", json=body, timeout=30)

    answer = post("half_plus_two:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"results": [[["", 3.0]]]}
    answer = post("half_plus_two_tf2:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert answer.json() == {"results": [[["half_plus_two", 3.0]]]}
    answer = post("half_plus_two:regress", {"signature_name": "regress_x_to_y", "context": {"x": 8.0},
                                            "examples": [{"x": 2.0}, {}]})
    assert answer.json() == {"results": [3.0, 6.0]}
    answer = post("half_plus_two:regress", {"signature_name": "regress_x_to_y2", "examples": [{"x": 2.0}]})
    assert answer.json() == {"results": [4.0]}
    answer = post("half_plus_two:regress", {"signature_name": "nope", "examples": [{"x": 2.0}]})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("No signature was found with the name: nope (the model has: ")
    answer = post("half_plus_two:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": [None]}]})
    assert answer.status_code == 400 and "a feature holds strings" in answer.json()["error"]
    answer = post("nope:regress", {"examples": [{"x": 1.0}]})
    assert answer.status_code == 404
    assert answer.json()["error"].startswith("Servable not found for request: Latest(nope)")


def test_rest_predict_as_tf_servings_test_sends_it(server: RunningServer) -> None:
    answer = requests.post(f"{server.base}/v1/models/half_plus_two:predict", json={"instances": [2.0, 3.0, 4.0]},
                           timeout=30)
    assert answer.json() == {"predictions": [3.0, 3.5, 4.0]}
    answer = requests.post(f"{server.base}/v1/models/half_plus_two:predict", json={"inputs": [2.0, 3.0, 4.0]},
                           timeout=30)
    assert answer.json() == {"outputs": [3.0, 3.5, 4.0]}
    status = requests.get(f"{server.base}/v1/models/half_plus_two", timeout=10).json()
    assert status["model_version_status"][0]["version"] == "123"


def test_rest_row_format_with_a_string_and_a_numeric_output_and_b64() -> None:
    """examples/models/text_stats gives a string and an INT64 per row: row format answers 200."""
    with serve(ROOT / "examples/models", "--model-control", "explicit", "--load-model", "text_stats") as server:
        def post(body: dict) -> requests.Response:
            return requests.post(f"{server.base}/v1/models/text_stats:predict", json=body, timeout=30)

        answer = post({"instances": ["hi", "inferd"]})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": [{"upper": "HI!", "length": 2}, {"upper": "INFERD!", "length": 6}]}
        answer = post({"instances": [{"b64": base64.b64encode(b"ok").decode()}]})
        assert answer.json() == {"predictions": [{"upper": "OK!", "length": 2}]}
        answer = post({"instances": [{"b64": "not base64 at all!"}]})
        assert answer.status_code == 400 and "not valid base64" in answer.json()["error"], answer.text


def rest(server: RunningServer, path: str, body: dict | bytes) -> requests.Response:
    if isinstance(body, bytes):
        return requests.post(f"{server.base}/v1/models/{path}", data=body, timeout=30)
    return requests.post(f"{server.base}/v1/models/{path}", json=body, timeout=30)


def test_rest_classify_and_regress_write_float32_as_tf_serving(server: RunningServer) -> None:
    """json_tensor.cc WriteDecimal: a score or regression is a float32, written in its shortest form
    (2.05, not 2.049999952316284), NaN and infinities as tokens."""
    answer = rest(server, "half_plus_two:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 0.1}]})
    assert answer.text == '{"results":[2.05]}'
    answer = rest(server, "half_plus_two:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 0.1}]})
    assert answer.text == '{"results":[[["",2.05]]]}'
    answer = rest(server, "half_plus_two:regress",
                  b'{"signature_name": "regress_x_to_y", "examples": [{"x": NaN}, {"x": Infinity}]}')
    assert answer.text == '{"results":[NaN,Infinity]}', answer.text


def test_rest_row_format_refuses_a_scalar_output(server: RunningServer) -> None:
    """json_tensor.cc MakeRowFormatJsonFromTensors: an output without a batch dim has no rows."""
    answer = rest(server, "offset:predict", {"signature_name": "total", "instances": [1.0, 2.0]})
    assert answer.status_code == 400, answer.text
    assert "Tensor name: total has no shape information" in answer.json()["error"]
    assert rest(server, "offset:predict", {"signature_name": "total", "inputs": [1.0, 2.0]}).json() == {"outputs": 3.0}


def test_rest_instances_objects_name_the_one_input(server: RunningServer) -> None:
    """json_tensor.cc FillTensorMapFromInstancesList: objects (but {"b64": ...}) name the inputs, for
    one input too."""
    answer = rest(server, "offset:predict", {"signature_name": "total", "instances": [{"x": 1.0}, {"x": 2.0}]})
    assert answer.status_code == 400 and "no shape information" in answer.json()["error"]  # read as rows of x
    answer = rest(server, "offset:predict", {"signature_name": "total", "instances": [{"y": 1.0}]})
    assert answer.status_code == 400
    assert "unknown input 'y'; the signature takes ['x']" in answer.json()["error"], answer.text


def test_rest_example_features_hold_one_kind_of_value(server: RunningServer) -> None:
    """json_tensor.cc AddValueToFeature: each value's JSON kind picks the list; a feature mixing
    integers and fractions is refused (TF Serving: "Unexpected element type in feature")."""
    answer = rest(server, "offset:regress", {"signature_name": "sum", "examples": [{"f": [1.0, 2.5]}]})
    assert answer.json() == {"results": [3.5]}
    for mixed in ([1, 2.5], [2.5, 1], [True, 0.5]):
        answer = rest(server, "offset:regress", {"signature_name": "sum", "examples": [{"f": mixed}]})
        assert answer.status_code == 400, (mixed, answer.text)
        assert "Unexpected element type in feature" in answer.json()["error"]


def test_model_status_of_an_unknown_model_or_version_in_tf_servings_words(server: RunningServer, stub) -> None:
    """get_model_status_impl.cc: NOT_FOUND "Could not find ..." over gRPC and REST (404)."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    models = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.grpc_url))
    for name, version, message in (("nope", None, "Could not find any versions of model nope"),
                                   ("offset", 9, "Could not find version 9 of model offset")):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        with pytest.raises(grpc.RpcError) as info:
            models.GetModelStatus(request, timeout=30)
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.NOT_FOUND, message)
        path = name if version is None else f"{name}/versions/{version}"
        answer = requests.get(f"{server.base}/v1/models/{path}", timeout=10)
        assert (answer.status_code, answer.json()) == (404, {"error": message})


def test_grpc_multi_inference_runs_every_task_on_the_first_tasks_servable(stub) -> None:
    """multi_inference_helper.cc: the first task's ModelSpec picks the servable (version or label)
    for all; multi_inference.cc: a signature named twice ("" is serving_default) is refused."""
    from tensorflow_serving.apis import inference_pb2

    def multi(*tasks: tuple[str, str, int | None]) -> inference_pb2.MultiInferenceRequest:
        request = inference_pb2.MultiInferenceRequest()
        for signature, method, version in tasks:
            task = request.tasks.add()
            task.model_spec.name, task.model_spec.signature_name = "offset", signature
            task.method_name = f"tensorflow/serving/{method}"
            if version is not None:
                task.model_spec.version.value = version
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)
        return request

    for first, second, offset in ((1, None, 100.0), (None, 1, 200.0)):
        result = stub.MultiInference(multi(("regress", "regress", first), ("classify", "classify", second)),
                                     timeout=30)
        assert result.results[0].regression_result.regressions[0].value == 1.0 + offset
        assert result.results[1].classification_result.classifications[0].classes[0].score == 1.0 + offset
        assert [r.model_spec.version.value for r in result.results] == [int(offset // 100)] * 2
    with pytest.raises(grpc.RpcError) as info:
        stub.MultiInference(multi(("", "regress", None), ("serving_default", "regress", None)), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Duplicate evaluation of signature: serving_default"


def test_grpc_metadata_fields_as_tf_serving_checks_them(stub) -> None:
    """get_model_metadata_impl.cc: at least one field, each "signature_def" (repeating one is fine)."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    for fields, message in ((["signature_def", "signature_def"], None),
                            ([], "GetModelMetadataRequest must specify at least one metadata_field"),
                            (["signature_def", "x"], "Metadata field x is not supported")):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
        request.model_spec.name = "offset"
        if message is None:
            assert stub.GetModelMetadata(request, timeout=30).model_spec.version.value == 2
            continue
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModelMetadata(request, timeout=30)
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_model_status_is_ok_while_a_version_loads_and_an_error_only_where_it_failed(tmp_path: Path) -> None:
    """get_model_status_impl.cc: a version's status is its health (status_util.cc ToStatusProto), which
    basic_manager.cc publishes as OK while it loads; only a failed version carries an error."""
    from tests.models import PYTHON_CONFIG, PYTHON_MODEL, write

    write(tmp_path / "slow/1/model.py", PYTHON_MODEL.replace("self.offset = 10",
                                                             "self.offset = 10\n        __import__('time').sleep(4)"))
    write(tmp_path / "slow/config.toml", PYTHON_CONFIG)
    write(tmp_path / "broken/1/model.py", PYTHON_MODEL.replace("self.offset = 10", "raise RuntimeError('no load')"))
    write(tmp_path / "broken/config.toml", PYTHON_CONFIG)
    with serve(tmp_path, wait_ready=False) as server:
        seen: list[dict] = []
        deadline = time.monotonic() + 60
        while not any(row["state"] == "AVAILABLE" for row in seen) and time.monotonic() < deadline:
            answer = requests.get(f"{server.base}/v1/models/slow", timeout=10)
            if answer.status_code == 200:
                seen.extend(answer.json()["model_version_status"])
            time.sleep(0.05)
        loading = [row for row in seen if row["state"] == "LOADING"]
        assert loading and seen[-1]["state"] == "AVAILABLE", seen
        assert all(row["status"] == {"error_code": "OK", "error_message": ""} for row in seen), seen
        broken = requests.get(f"{server.base}/v1/models/broken", timeout=10).json()["model_version_status"]
        assert broken[0]["state"] == "END" and broken[0]["status"]["error_code"] == "UNKNOWN", broken
        assert "no load" in broken[0]["status"]["error_message"]
