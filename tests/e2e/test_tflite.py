"""TFLite models (``<version>/model.tflite``) as TF Serving serves them under --prefer_tflite_model, and
in an `inferd serve` repository; answers compared with tf.lite.Interpreter run in this process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from tests import tflite_models
from tests.conftest import RunningServer, serve
from tests.e2e.test_tfserving_cli import TFServing, tfserving

LITE_SCALE, SAVED_MODEL_SCALE = 2.0, 3.0  # the two formats answer apart: which one served shows
X = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def lite() -> bytes:
    return tflite_models.calculator_tflite(LITE_SCALE)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, lite: bytes) -> Path:
    """both/1: a SavedModel and a model.tflite; saved/1: a SavedModel only; lite/1: model.tflite only."""
    root = tmp_path_factory.mktemp("tflite")
    tflite_models.save_calculator(root / "both" / "1", SAVED_MODEL_SCALE)
    tflite_models.write_tflite(root / "both" / "1", lite)
    tflite_models.save_calculator(root / "saved" / "1", SAVED_MODEL_SCALE)
    tflite_models.write_tflite(root / "lite" / "1", lite)
    return root


def models_config(folders: Path, tmp_path: Path) -> Path:
    config = tmp_path / "models.config"
    config.write_text("model_config_list: {\n" + "\n".join(
        f'  config: {{ name: "{name}", base_path: "{folders / name}", model_platform: "tensorflow" }}'
        for name in ("both", "saved")) + "\n}\n")
    return config


@pytest.fixture(scope="module")
def preferred(folders: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TFServing]:
    config = models_config(folders, tmp_path_factory.mktemp("config"))
    with tfserving(f"--model_config_file={config}", "--prefer_tflite_model=true") as server:
        yield server


def rest(base: str, path: str, body: dict) -> requests.Response:
    return requests.post(f"{base}/v1/models/{path}", json=body, timeout=30)


def test_prefer_tflite_model_serves_model_tflite_over_saved_model(preferred: TFServing, lite: bytes) -> None:
    expected = tflite_models.run_signature(lite, "serving_default", x=X)
    rows = rest(preferred.base, "both:predict", {"instances": X.tolist()})
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    np.testing.assert_allclose([p["scaled"] for p in predictions], expected["scaled"], rtol=1e-6)
    np.testing.assert_allclose([p["total"] for p in predictions], expected["total"], rtol=1e-6)
    np.testing.assert_allclose(expected["scaled"], X * LITE_SCALE)  # TFLite's answer, not the SavedModel's
    columns = rest(preferred.base, "both:predict", {"signature_name": "add", "inputs": {"a": X.tolist(),
                                                                                         "b": X.tolist()}})
    np.testing.assert_allclose(columns.json()["outputs"], tflite_models.run_signature(lite, "add", a=X, b=X)["sum"])
    # a version folder without model.tflite falls back to its SavedModel, as in TF Serving
    fallback = rest(preferred.base, "saved:predict", {"instances": X.tolist()})
    np.testing.assert_allclose([p["scaled"] for p in fallback.json()["predictions"]], X * SAVED_MODEL_SCALE,
                               rtol=1e-6)


def test_grpc_predict_signatures_strings_and_metadata(preferred: TFServing, lite: bytes) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

    stub = preferred.stub()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "both"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(X[:1]))
    response = stub.Predict(request, timeout=30)
    expected = tflite_models.run_signature(lite, "serving_default", x=X[:1])
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scaled"]), expected["scaled"])
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["total"]), expected["total"])
    assert response.model_spec.signature_name == "serving_default"

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "both", "echo"
    words = np.array([b"ab\x00c", b"", b"xyz"], dtype=object)
    request.inputs["s"].CopyFrom(tf.make_tensor_proto(words))
    response = stub.Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["same"]).tolist() == \
        tflite_models.run_signature(lite, "echo", s=words)["same"].tolist() == [b"ab\x00c", b"", b"xyz"]

    meta_request = get_model_metadata_pb2.GetModelMetadataRequest()
    meta_request.model_spec.name = "both"
    meta_request.metadata_field.append("signature_def")
    signatures = get_model_metadata_pb2.SignatureDefMap()
    stub.GetModelMetadata(meta_request, timeout=30).metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {"serving_default", "add", "echo"}
    default = signatures.signature_def["serving_default"]
    assert default.inputs["x"].name == "serving_default_x:0"  # the TFLite tensor, not the SavedModel's
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 3]
    assert signatures.signature_def["echo"].inputs["s"].dtype == tf.string.as_datatype_enum


def test_wrong_inputs_are_clear_errors(preferred: TFServing) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    wrong_name = rest(preferred.base, "both:predict", {"inputs": {"y": X.tolist()}})
    assert wrong_name.status_code == 400 and "'x'" in wrong_name.json()["error"]
    wrong_shape = rest(preferred.base, "both:predict", {"inputs": {"x": [[1.0, 2.0, 3.0, 4.0]]}})
    assert wrong_shape.status_code == 400
    assert "expected shape [-1, 3]" in wrong_shape.json()["error"] and "[1, 4]" in wrong_shape.json()["error"]
    # another rank goes to the interpreter (TF Serving resizes to what is sent); it refuses this one
    wrong_rank = rest(preferred.base, "both:predict", {"inputs": {"x": [1.0, 2.0, 3.0]}})
    assert wrong_rank.status_code == 400, wrong_rank.text
    assert "TFLite could not run inputs x [3] (it takes x [-1, 3])" in wrong_rank.json()["error"]

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "both"
    request.inputs["nope"].CopyFrom(tf.make_tensor_proto(X))
    with pytest.raises(grpc.RpcError) as refused:
        preferred.stub().Predict(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'x'" in (refused.value.details() or "")
    assert rest(preferred.base, "both:predict", {"instances": X.tolist()}).status_code == 200  # still serving


def test_without_the_flag_the_saved_model_serves(folders: Path, tmp_path: Path) -> None:
    with tfserving(f"--model_base_path={folders / 'both'}", "--model_name=both") as server:
        rows = rest(server.base, "both:predict", {"instances": X.tolist()})
        np.testing.assert_allclose([p["scaled"] for p in rows.json()["predictions"]], X * SAVED_MODEL_SCALE,
                                   rtol=1e-6)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, folders: Path, lite: bytes) -> Path:
    """lite: its own signatures, two instances; stored: SignatureDefs in its metadata (TF Serving's
    testdata way); bare: no signatures at all; both: a SavedModel beside model.tflite."""
    from tensorflow.core.protobuf import meta_graph_pb2

    root = tmp_path_factory.mktemp("tflite_repo")
    tflite_models.write_tflite(root / "lite" / "1", lite)
    (root / "lite" / "config.toml").write_text("[instance_group]\ncount = 2\n")
    definition = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    definition.inputs["values"].name = "serving_default_x:0"
    definition.outputs["times_two"].name = "PartitionedCall:0"
    single = tflite_models.calculator_tflite(LITE_SCALE, only_default=True)
    tflite_models.write_tflite(root / "stored" / "1",
                               tflite_models.with_stored_signature_defs(single, {"serving_default": definition}))
    tflite_models.write_tflite(root / "bare" / "1", tflite_models.without_signatures(single))
    (root / "both").symlink_to(folders / "both", target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def served(repository: Path) -> Iterator[RunningServer]:
    with serve(repository, grpc=True) as server:
        yield server


def test_a_tflite_models_configuration_names_tritons_tflite_backend(served: RunningServer) -> None:
    """Triton's configuration endpoint, over HTTP and gRPC: the backend is Triton's TFLite backend
    (armnn_tflite), where it was empty."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    over_http = httpclient.InferenceServerClient(served.url).get_model_config("lite")
    over_grpc = grpcclient.InferenceServerClient(served.grpc_url).get_model_config("lite").config
    assert (over_http["backend"], over_grpc.backend) == ("armnn_tflite", "armnn_tflite")
    assert over_http["platform"] == over_grpc.platform == "tflite"  # as the model's metadata says


def v2_infer(server: RunningServer, model: str, name: str, array: np.ndarray) -> requests.Response:
    body = {"inputs": [{"name": name, "datatype": "FP32", "shape": list(array.shape),
                        "data": array.ravel().tolist()}]}
    return requests.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=30)


def outputs(answer: requests.Response) -> dict[str, np.ndarray]:
    assert answer.status_code == 200, answer.text
    return {o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"]) for o in answer.json()["outputs"]}


def test_serve_a_repository_of_tflite_models(served: RunningServer, lite: bytes) -> None:
    metadata = requests.get(f"{served.base}/v2/models/lite", timeout=10).json()
    assert metadata["platform"] == "tflite"
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    expected = tflite_models.run_signature(lite, "serving_default", x=X)
    got = outputs(v2_infer(served, "lite", "x", X))
    np.testing.assert_allclose(got["scaled"], expected["scaled"])
    np.testing.assert_allclose(got["total"], expected["total"])
    # TF Serving's metadata SignatureDefs win over the model's own signatures; keys are theirs
    stored = outputs(v2_infer(served, "stored", "values", X))
    np.testing.assert_allclose(stored["times_two"], X * LITE_SCALE)
    # no signature at all: one serving_default of the model's tensors, named without ':0' (TF Serving's)
    bare_meta = requests.get(f"{served.base}/v2/models/bare", timeout=10).json()
    assert [i["name"] for i in bare_meta["inputs"]] == ["serving_default_x"]
    # (both outputs would be 'PartitionedCall' so: where names would clash they keep their ':N')
    assert [o["name"] for o in bare_meta["outputs"]] == ["PartitionedCall:0", "PartitionedCall:1"]
    bare = outputs(v2_infer(served, "bare", "serving_default_x", X))
    np.testing.assert_allclose(bare["PartitionedCall:0"], expected["scaled"])
    np.testing.assert_allclose(bare["PartitionedCall:1"], expected["total"])
    # without --prefer_tflite_model a SavedModel beside model.tflite is what serves
    both = outputs(v2_infer(served, "both", "x", X))
    np.testing.assert_allclose(both["scaled"], X * SAVED_MODEL_SCALE, rtol=1e-6)


def test_instances_run_apart_at_once(served: RunningServer, lite: bytes) -> None:
    """Two instances call at once with other batch sizes: each thread's interpreter is its own, so
    no call sees another's resized inputs."""
    failures: list[str] = []

    def client(rows: int) -> None:
        batch = (np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) + rows)
        expected = tflite_models.run_signature(lite, "serving_default", x=batch)["scaled"]
        for _ in range(15):
            got = outputs(v2_infer(served, "lite", "x", batch))["scaled"]
            if got.shape != expected.shape or not np.allclose(got, expected):
                failures.append(f"{rows} rows: got {got.tolist()}")

    threads = [threading.Thread(target=client, args=(rows,)) for rows in (1, 2, 5, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
