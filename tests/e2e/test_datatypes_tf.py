"""Every TensorFlow dtype through a real SavedModel: TF Serving's gRPC Predict (tensor_content and
the typed fields) and REST, and the v2 wires, bit for bit against the signature run in-process."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import ml_dtypes
import numpy as np
import pytest
import requests
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from tests.conftest import RunningServer, serve
from tests.e2e.test_datatypes import NUMERIC, edge_values, same_bits

tf = pytest.importorskip("tensorflow")
apis = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

TF_TYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
            "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
            "FP32": "float32", "FP64": "float64", "BF16": "bfloat16", "BYTES": "string"}
NOT_IN_JSON = {"FP16": "half", "BF16": "bfloat16", "UINT16": "uint16"}  # TF's JSON has no conversion for them
TYPED = {"BOOL": "bool_val", "UINT8": "int_val", "UINT16": "int_val", "INT8": "int_val", "INT16": "int_val",
         "INT32": "int_val", "INT64": "int64_val", "UINT32": "uint32_val", "UINT64": "uint64_val",
         "FP32": "float_val", "FP64": "double_val", "FP16": "half_val", "BF16": "half_val", "BYTES": "string_val"}


def values(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    if datatype == "BYTES":  # TensorFlow's strings are bytes: any byte goes
        return np.resize(np.array([b"", b"a\x00b", b"\xff\xfe", "\u00e9".encode()], dtype=object), shape)
    x = np.resize(edge_values(datatype), shape)
    return x.view(np.uint16).view(tf.bfloat16.as_numpy_dtype) if datatype == "BF16" else x


def cast(x: Any, to: Any) -> dict[str, Any]:
    return {"y": tf.cast(x, to)}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tf_datatypes")
    module = tf.Module()
    signatures = {}
    for datatype, name in TF_TYPES.items():
        spec = tf.TensorSpec([None, None], getattr(tf, name), name="x")
        signatures[f"id_{datatype.lower()}"] = tf.function(lambda x: {"y": tf.identity(x)}, input_signature=[spec])
    fp32 = tf.TensorSpec([None, None], tf.float32, name="x")
    signatures["serving_default"] = tf.function(lambda x: {"y": tf.transpose(x)}, input_signature=[fp32])
    for datatype in NOT_IN_JSON:  # FP32 in, a type TF Serving's JSON cannot write out
        signatures[f"to_{datatype.lower()}"] = tf.function(
            functools.partial(cast, to=getattr(tf, TF_TYPES[datatype])), input_signature=[fp32])
    scalar = tf.TensorSpec([], tf.string, name="x")
    signatures["sc_bytes"] = tf.function(lambda x: {"y": tf.identity(x)}, input_signature=[scalar])
    for key, function in signatures.items():
        setattr(module, key, function)
    tf.saved_model.save(module, str(root / "tf_types/1"), signatures=signatures)
    for datatype in ("UINT64", "BF16", "BYTES"):  # the v2 wires reach a default signature only
        single = tf.Module()
        single.f = signatures[f"id_{datatype.lower()}"]
        tf.saved_model.save(single, str(root / f"tf_{datatype.lower()}/1"), signatures={"serving_default": single.f})
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with serve(repo, grpc=True) as running:
        yield running


@functools.cache
def loaded(path: str) -> Any:
    return tf.saved_model.load(path)


def in_process(repo: Path, model: str, signature: str, x: np.ndarray) -> np.ndarray:
    function = loaded(str(repo / model / "1")).signatures[signature]
    feed = tf.constant(list(x.reshape(-1)), dtype=tf.string, shape=x.shape) if x.dtype == object else tf.constant(x)
    return function(x=feed)["y"].numpy()


def predict(server: RunningServer, signature: str, x: np.ndarray, datatype: str, typed: bool) -> np.ndarray:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf_types"
    request.model_spec.signature_name = signature
    proto = request.inputs["x"]
    proto.dtype = tf.as_dtype(TF_TYPES[datatype]).as_datatype_enum
    for size in x.shape:
        proto.tensor_shape.dim.add(size=size)
    if datatype == "BYTES" or typed:
        flat = x.reshape(-1)
        items = flat.view(np.uint16).tolist() if datatype in ("FP16", "BF16") else flat.tolist()
        getattr(proto, TYPED[datatype]).extend(items)
    else:
        proto.tensor_content = x.tobytes()
    with grpc.insecure_channel(server.grpc_url) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return tf.make_ndarray(response.outputs["y"])


@pytest.mark.parametrize("typed", [False, True], ids=["tensor_content", "typed"])
@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_tfserving_grpc_answers_the_same_bits(server: RunningServer, repo: Path, datatype: str, typed: bool) -> None:
    for shape in [(2, 4), (0, 3)]:
        x = values(datatype, shape)
        got = predict(server, f"id_{datatype.lower()}", x, datatype, typed)
        same_bits(got, in_process(repo, "tf_types", f"id_{datatype.lower()}", x))


@pytest.mark.parametrize("datatype", [d for d in NUMERIC if d not in NOT_IN_JSON] + ["BYTES"])
def test_tfserving_rest_answers_the_same_values(server: RunningServer, repo: Path, datatype: str) -> None:
    x = values(datatype, (2, 4))
    data = [[{"b64": base64.b64encode(v).decode()} for v in row] for row in x] if datatype == "BYTES" else x.tolist()
    body = {"signature_name": f"id_{datatype.lower()}", "inputs": {"x": data}}
    response = requests.post(f"{server.base}/v1/models/tf_types:predict",
                             data=json.dumps(body), timeout=30)
    assert response.status_code == 200, response.text
    outputs = json.loads(response.text)["outputs"]
    want = in_process(repo, "tf_types", f"id_{datatype.lower()}", x)
    if datatype == "BYTES":
        got = np.array([[base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode() for v in row]
                        for row in outputs], dtype=object)
    else:
        got = np.array(outputs, dtype=want.dtype)
    same_bits(got, want)


@pytest.mark.parametrize("datatype", NOT_IN_JSON)
@pytest.mark.parametrize("field", ["inputs", "instances"])
def test_tfserving_rest_refuses_what_tf_json_does_not_convert(server: RunningServer, datatype: str,
                                                              field: str) -> None:
    """TF Serving's JSON converts no half, bfloat16 or uint16 value: AddValueToTensor's default case
    answers UNIMPLEMENTED (util/json_tensor.cc:336-339 at 9d981c5c), which its REST server answers
    with 501 (model_servers/http_server.cc:74-75)."""
    rows = [[1.5, 2.0], [3.0, 4.0]] if datatype != "UINT16" else [[1, 2], [3, 4]]
    body = {"signature_name": f"id_{datatype.lower()}", field: {"x": rows} if field == "inputs" else rows}
    response = requests.post(f"{server.base}/v1/models/tf_types:predict", data=json.dumps(body), timeout=30)
    assert response.status_code == 501, response.text
    first = "1.5" if datatype != "UINT16" else "1"
    assert response.json() == {"error": f"Conversion of JSON Value: {first} to type: {NOT_IN_JSON[datatype]}"}


@pytest.mark.parametrize("datatype", NOT_IN_JSON)
def test_tfserving_rest_refuses_outputs_tf_json_does_not_write(server: RunningServer, datatype: str) -> None:
    """Nor does it write one out: AddSingleValueAndAdvance's default case is INVALID_ARGUMENT, a 400
    (util/json_tensor.cc:939-946 at 9d981c5c); an empty output has no value to write."""
    url = f"{server.base}/v1/models/tf_types:predict"
    body = {"signature_name": f"to_{datatype.lower()}", "inputs": {"x": [[1.0, 2.0]]}}
    response = requests.post(url, data=json.dumps(body), timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(f"Failed to write JSON value for tensor type: {NOT_IN_JSON[datatype]}")
    empty = requests.post(url, data=json.dumps({**body, "inputs": {"x": [[], []]}}), timeout=30)
    assert empty.status_code == 200 and empty.json() == {"outputs": [[], []]}, empty.text


@pytest.mark.parametrize("binary", [True, False])
def test_v2_on_a_signature_transposed_output(server: RunningServer, repo: Path, binary: bool) -> None:
    x = values("FP32", (2, 3))
    client = thttp.InferenceServerClient(server.url)
    tensor = thttp.InferInput("x", [2, 3], "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    got = client.infer("tf_types", [tensor], outputs=[thttp.InferRequestedOutput("y", binary_data=binary)])
    same_bits(got.as_numpy("y"), in_process(repo, "tf_types", "serving_default", x))


@pytest.mark.parametrize("datatype", ["UINT64", "BF16", "BYTES"])
def test_v2_grpc_and_http_binary(server: RunningServer, repo: Path, datatype: str) -> None:
    model = f"tf_{datatype.lower()}"
    x = values(datatype, (2, 4))
    if datatype == "BF16":
        x = x.view(np.uint16).view(ml_dtypes.bfloat16)  # tritonclient's BF16
    want = in_process(repo, model, "serving_default", x.view(np.uint16).view(tf.bfloat16.as_numpy_dtype)
                      if datatype == "BF16" else x)
    for client, module in ((thttp.InferenceServerClient(server.url), thttp),
                           (tgrpc.InferenceServerClient(server.grpc_url), tgrpc)):
        tensor = module.InferInput("x", list(x.shape), datatype)
        tensor.set_data_from_numpy(x)
        got = client.infer(model, [tensor]).as_numpy("y")
        if datatype == "BF16":
            assert got.view(np.uint16).tobytes() == want.view(np.uint16).tobytes()
        else:
            same_bits(got, want)
