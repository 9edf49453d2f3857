from __future__ import annotations

import json

import numpy as np
import pytest

from inferd.errors import InvalidInput
from inferd.protocols import kserve_v2
from inferd.types import InferRequest, InferResponse, RequestedOutput, Tensor


def test_decode_mixed_json_and_binary_inputs() -> None:
    raw = np.arange(6, dtype=np.int16)
    header = json.dumps({"id": "r1", "inputs": [
        {"name": "a", "shape": [2, 3], "datatype": "INT16", "parameters": {"binary_data_size": 12}},
        {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
    ], "outputs": [{"name": "o", "parameters": {"binary_data": True}}],
        "parameters": {"timeout": 5000}}).encode()
    request = kserve_v2.decode_infer_request(header + raw.tobytes(), len(header), "m", "2")
    assert request.id == "r1"
    assert request.model_version == "2"
    assert request.inputs[0].data.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert request.inputs[1].data.tolist() == [b"hi"]
    assert request.outputs == [RequestedOutput("o", True)]
    assert request.timeout_us == 5000


def test_encode_binary_and_json_outputs() -> None:
    request = InferRequest("m", None, [], outputs=[RequestedOutput("a", True), RequestedOutput("b")])
    a = np.array([1.0, 2.0], dtype=np.float32)
    response = InferResponse("m", "1", [Tensor("a", "FP32", a), Tensor("b", "INT64", np.array([7]))],
                             id="x")
    header, binary = kserve_v2.encode_infer_response(response, request)
    assert json.loads(header)["id"] == "x"
    assert json.loads(header)["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert json.loads(header)["outputs"][1]["data"] == [7]
    assert np.frombuffer(b"".join(binary), dtype=np.float32).tolist() == [1.0, 2.0]
    big = np.zeros(32 * 1024, np.float32)  # 128 KiB: sent from the output's own memory, not a copy
    _, views = kserve_v2.encode_infer_response(InferResponse("m", "1", [Tensor("a", "FP32", big)]), request)
    big[0] = 5.0
    assert np.frombuffer(views[0], dtype=np.float32)[0] == 5.0


def test_binary_data_output_makes_every_output_binary() -> None:
    request = InferRequest("m", None, [], parameters={"binary_data_output": True})
    response = InferResponse("m", "1", [Tensor("a", "INT8", np.array([1, 2], dtype=np.int8))])
    _, binary = kserve_v2.encode_infer_response(response, request)
    assert b"".join(binary) == b"\x01\x02"


def test_json_only_response_has_no_header_length() -> None:
    response = InferResponse("m", "1", [Tensor("a", "FP16", np.array([0.5], dtype=np.float16))])
    header, binary = kserve_v2.encode_infer_response(response, InferRequest("m", None, []))
    assert binary == []
    assert json.loads(header)["outputs"][0]["data"] == [0.5]


def test_decode_takes_a_classification_count() -> None:
    body = (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}], '
            b'"outputs": [{"name": "o", "parameters": {"classification": 3}}, {"name": "p"}]}')
    request = kserve_v2.decode_infer_request(body, None, "m", None)
    assert request.outputs is not None
    assert [(o.name, o.classification) for o in request.outputs] == [("o", 3), ("p", 0)]


@pytest.mark.parametrize(("body", "message"), [
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}', "neither 'data' nor"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1], '
     b'"parameters": {"shared_memory_region": "r"}}]}', "must set only one of 'data'"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}], '
     b'"outputs": [{"name": "o", "parameters": {"classification": "3"}}]}', "classification must be a class count"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": 3}',
     "'outputs' must be a list"),
])
def test_decode_refuses(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        kserve_v2.decode_infer_request(body, None, "m", None)


def test_decode_takes_non_finite_numbers_as_triton_does() -> None:
    body = (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3],'
            b' "data": [NaN, Infinity, -Infinity]}]}')
    request = kserve_v2.decode_infer_request(body, None, "m", None)
    np.testing.assert_array_equal(request.inputs[0].data, np.array([np.nan, np.inf, -np.inf], np.float32))


def _with_parameters(parameters: dict[str, object]) -> InferRequest:
    body = json.dumps({"inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": [1]}],
                       "parameters": parameters}).encode()
    return kserve_v2.decode_infer_request(body, None, "m", None)


def test_priority_is_a_level_and_none_or_zero_is_the_models_default() -> None:
    assert _with_parameters({"priority": 3}).priority == 3
    assert _with_parameters({"priority": 0}).priority == 0
    assert _with_parameters({}).priority == 0


@pytest.mark.parametrize("value", [-1, "1", 1.5, True, 2**64])
def test_a_priority_that_is_no_level_is_refused_with_the_range(value: object) -> None:
    with pytest.raises(InvalidInput, match=r"parameters.priority must be a priority level: an integer from 0 to "
                                           r"18446744073709551615 \(1 is the highest level; 0 the model's default"):
        _with_parameters({"priority": value})
