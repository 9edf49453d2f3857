"""KServe v2 over gRPC with Triton's own gRPC client: typed and raw contents, metadata, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import RunningServer, serve


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[RunningServer]:
    with serve(model_repo, grpc=True) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.grpc_url)


def test_health_metadata_and_index(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "inferd"
    meta = client.get_model_metadata("mlp_onnx")
    assert list(meta.versions) == ["2"]
    assert [(i.name, i.datatype, list(i.shape)) for i in meta.inputs] == [("x", "FP32", [-1, 8])]
    assert client.is_model_ready("mlp_ts")
    assert not client.is_model_ready("corrupt_onnx")
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["mlp_ts"].state == "READY"
    assert index["bad_config"].state == "UNAVAILABLE" and "max_batch_sise" in index["bad_config"].reason


@pytest.mark.parametrize("model", ["mlp_onnx", "mlp_ts", "mlp_export"])
def test_raw_contents_equal_in_process(client: triton.InferenceServerClient, model: str) -> None:
    x = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    tensor = triton.InferInput("x", [3, 8], "FP32")
    tensor.set_data_from_numpy(x)  # tritonclient.grpc sends raw_input_contents
    result = client.infer(model, [tensor], request_id="g1")
    name = "output__0" if model == "mlp_export" else "y"
    np.testing.assert_allclose(result.as_numpy(name), models.run_mlp(x), rtol=1e-5, atol=1e-5)
    assert result.get_response().id == "g1"


def typed_request(model: str, name: str, datatype: str, x: np.ndarray):
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=list(x.shape))
    field = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
             "BYTES": "bytes_contents", "INT8": "int_contents", "UINT16": "uint_contents",
             "BOOL": "bool_contents"}[datatype]
    getattr(tensor.contents, field).extend(x.reshape(-1).tolist())
    return request


def test_typed_contents(client: triton.InferenceServerClient) -> None:
    stub = client._client_stub
    x = np.array([1.5, -2.0, 3.25])
    response = stub.ModelInfer(typed_request("py_double", "x", "FP64", x))
    y = np.frombuffer(response.raw_output_contents[0], dtype=np.float64)
    np.testing.assert_array_equal(y, x * 2 + 10)
    for datatype, values in (("INT8", np.array([[-3, 7]], np.int8)), ("UINT16", np.array([[9, 65535]], np.uint16)),
                             ("BOOL", np.array([[True, False]])), ("BYTES", np.array([[b"a", b"\xff"]], object))):
        response = stub.ModelInfer(typed_request(f"echo_{datatype.lower()}", "in", datatype, values))
        raw = response.raw_output_contents[0]
        if datatype == "BYTES":
            assert raw == b"\x01\x00\x00\x00a\x01\x00\x00\x00\xff"
        else:
            np.testing.assert_array_equal(np.frombuffer(raw, dtype=values.dtype).reshape(values.shape), values)


@pytest.mark.parametrize("datatype", models.ALL_TYPES)
def test_every_datatype_over_grpc(client: triton.InferenceServerClient, datatype: str) -> None:
    from tests.e2e.test_kserve_http import _sample

    x = _sample(datatype, np.random.default_rng(8))
    tensor = triton.InferInput("in", list(x.shape), datatype)
    try:
        tensor.set_data_from_numpy(x)  # tritonclient >= 2.6x takes BF16 as ml_dtypes.bfloat16
    except InferenceServerException:  # older releases as float32 (these values are exact in bfloat16)
        x = x.astype(np.float32)
        tensor.set_data_from_numpy(x)
    got = client.infer(f"echo_{datatype.lower()}", [tensor]).as_numpy("out")
    np.testing.assert_array_equal(np.asarray(got, dtype=x.dtype), x)


@pytest.mark.parametrize(("call", "code", "message"), [
    (lambda c: c.infer("nope", [_x()]), "NOT_FOUND", "Request for unknown model: 'nope' is not found"),
    (lambda c: c.infer("mlp_ts", [_x(shape=(1, 7))]), "INVALID_ARGUMENT", "expected shape [-1, 8]"),
    (lambda c: c.infer("mlp_ts", [_x(name="z")]), "INVALID_ARGUMENT", "unknown input 'z'"),
    (lambda c: c.infer("mlp_ts", [_x(dtype="FP64")]), "INVALID_ARGUMENT", "expected datatype FP32, got FP64"),
    (lambda c: c.infer("corrupt_onnx", [_x()]), "UNAVAILABLE", "corrupt_onnx"),
    (lambda c: c.infer("mlp_ts", [_x()], model_version="9"), "NOT_FOUND", "unknown version '9'"),
    (lambda c: c.unload_model("mlp_ts"), "PERMISSION_DENIED", "--model-control explicit"),
])
def test_errors_have_the_right_status_and_message(client: triton.InferenceServerClient, call, code, message) -> None:
    with pytest.raises(InferenceServerException) as info:
        call(client)
    assert info.value.status() == f"StatusCode.{code}"
    assert message in info.value.message()


def _x(shape: tuple[int, ...] = (1, 8), name: str = "x", dtype: str = "FP32") -> triton.InferInput:
    array = np.ones(shape, dtype=np.float64 if dtype == "FP64" else np.float32)
    tensor = triton.InferInput(name, list(shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_failing_model_is_internal_with_its_message(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("x", [2], "FP64")
    tensor.set_data_from_numpy(np.array([666.0, 1.0]))
    with pytest.raises(InferenceServerException) as info:
        client.infer("py_double", [tensor])
    assert info.value.status() == "StatusCode.INTERNAL"
    assert "the model refuses 666" in info.value.message()



def test_parameters_named_triton_are_refused_but_the_empty_final_response(server: RunningServer) -> None:
    # tritonclient refuses such keys itself: a raw ModelInferRequest, as other clients may send
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))
    request = service_pb2.ModelInferRequest(model_name="mlp_ts")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 8])
    request.raw_input_contents.append(np.ones(8, np.float32).tobytes())
    request.parameters["triton_anything"].bool_param = True
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameter keys starting with 'triton_' are reserved for Triton usage" in refused.value.details()
    assert "allowed: triton_enable_empty_final_response" in refused.value.details()
    del request.parameters["triton_anything"]
    request.parameters["triton_enable_empty_final_response"].bool_param = False
    assert stub.ModelInfer(request, timeout=10).outputs[0].name == "y"
