"""Requests and answers survive the trip to the model process unchanged, every datatype."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from inferd.errors import InvalidInput
from inferd.types import InferRequest, InferResponse, RequestedOutput, SharedMemoryRef, Tensor, Timings, numpy_dtype
from inferd.workers.codec import pack_request, pack_response, unpack_request, unpack_response
from tests.models import ALL_TYPES


def sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"a", b"\x00\xff"], [b"", "é".encode()]], dtype=object)
    return np.arange(6).reshape(2, 3).astype(numpy_dtype(datatype))


@pytest.mark.parametrize("datatype", ALL_TYPES)
def test_a_request_round_trips_with_every_datatype(datatype: str) -> None:
    data = sample(datatype)
    request = InferRequest("m", "2", [Tensor("x", datatype, data), Tensor("t", datatype, data.T)], id="r1",
                           outputs=[RequestedOutput("y", True), RequestedOutput("z", classification=3)],
                           parameters={"a": 1},
                           timeout_us=500, protocol="tfserving", cancelled=lambda: False, credentials="Bearer k",
                           priority=2)
    back = unpack_request(pickle.loads(pickle.dumps(pack_request(request), protocol=5)))
    assert (back.model_name, back.model_version, back.id, back.parameters, back.timeout_us, back.protocol,
            back.credentials, back.priority) == ("m", "2", "r1", {"a": 1}, 500, "tfserving", "Bearer k", 2)
    assert back.cancelled is None  # the worker keeps it
    assert [(o.name, o.binary, o.classification) for o in back.outputs or []] == [("y", True, 0), ("z", None, 3)]
    for sent, got in zip(request.inputs, back.inputs, strict=True):
        assert (got.name, got.datatype, got.data.dtype, got.data.shape) == (sent.name, sent.datatype,
                                                                               sent.data.dtype, sent.data.shape)
        assert got.data.tolist() == sent.data.tolist()


def test_an_answer_round_trips_with_its_timings() -> None:
    response = InferResponse("m", "1", [Tensor("y", "FP32", np.ones((2, 2), np.float32))], id="7",
                             parameters={"p": "q"}, timings=Timings(0.001, 0.002, 0.004, {"pre": 0.001}), final=False)
    back = unpack_response(pickle.loads(pickle.dumps(pack_response(response), protocol=5)))
    assert (back.model_name, back.model_version, back.id, back.parameters) == ("m", "1", "7", {"p": "q"})
    assert (back.timings.queue, back.timings.compute, back.timings.total) == (0.001, 0.002, 0.004)
    assert back.timings.steps == {"pre": 0.001} and back.final is False
    np.testing.assert_array_equal(back.outputs[0].data, np.ones((2, 2), np.float32))


def test_an_error_response_crosses_as_its_error() -> None:
    """A decoupled model's error response (one answer of its stream) keeps its kind and words."""
    response = InferResponse("m", "1", [], "r", final=False, error=InvalidInput("value -1 refused"))
    back = unpack_response(pickle.loads(pickle.dumps(pack_response(response), protocol=5)))
    assert isinstance(back.error, InvalidInput) and back.error.message == "value -1 refused" and not back.final
    assert unpack_response(pack_response(InferResponse("m", "1", []))).error is None


def test_tensors_in_shared_memory_cross_as_their_place_only() -> None:
    """A region's input (a zero-stride stand-in) and an output written to a region carry their
    shape and place, never a materialised copy of their bytes."""
    where = SharedMemoryRef("r", 64, 4096)
    stand_in = np.broadcast_to(np.zeros((), np.float32), (1, 1024))
    request = InferRequest("m", None, [Tensor("x", "FP32", stand_in, where)],
                           outputs=[RequestedOutput("y", None, 0, SharedMemoryRef("out", 0, 16))])
    packed = pickle.dumps(pack_request(request), protocol=5)
    assert len(packed) < 1024
    back = unpack_request(pickle.loads(packed))
    assert back.inputs[0].shared == where and back.inputs[0].data.shape == (1, 1024)
    assert back.outputs is not None and back.outputs[0].shared == SharedMemoryRef("out", 0, 16)
    answer = InferResponse("m", "1", [Tensor("y", "FP32", np.ones((1, 4), np.float32), SharedMemoryRef("out", 0, 16))])
    returned = unpack_response(pickle.loads(pickle.dumps(pack_response(answer), protocol=5)))
    assert returned.outputs[0].shared == SharedMemoryRef("out", 0, 16) and returned.outputs[0].shape == (1, 4)


def test_a_request_with_all_outputs_stays_all_outputs() -> None:
    request = InferRequest("m", None, [Tensor("x", "INT64", np.array([1, 2]))])
    assert unpack_request(pack_request(request)).outputs is None


def test_the_codec_knows_every_field_it_must_carry() -> None:
    """A field added to these types must be added to codec.py too (then here)."""
    from dataclasses import fields

    assert [f.name for f in fields(InferRequest)] == ["model_name", "model_version", "inputs", "id", "outputs",
                                                      "parameters", "timeout_us", "protocol", "cancelled",
                                                      "credentials", "priority"]
    assert [f.name for f in fields(InferResponse)] == ["model_name", "model_version", "outputs", "id", "parameters",
                                                       "timings", "final", "error"]
    assert [f.name for f in fields(RequestedOutput)] == ["name", "binary", "classification", "shared"]
    assert [f.name for f in fields(Tensor)] == ["name", "datatype", "data", "shared"]
    assert [f.name for f in fields(Timings)] == ["queue", "compute", "total", "steps"]
