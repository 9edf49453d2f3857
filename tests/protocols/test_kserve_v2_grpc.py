"""A gRPC infer answer whose raw contents stay the outputs' memory: its bytes are protobuf's own."""

from __future__ import annotations

import pickle

import numpy as np

from inferd.protocols import kserve_v2_grpc
from inferd.protocols._proto import kserve_v2_pb2 as pb
from inferd.types import InferResponse, Tensor


def _response() -> InferResponse:
    big = np.arange(70_000, dtype=np.float32).reshape(2, 35_000)  # a length that takes a 3-byte varint
    words = np.array([b"a", b"\xff" * 200], dtype=object)
    return InferResponse("m", "3", [Tensor("big", "FP32", big), Tensor("words", "BYTES", words),
                                    Tensor("none", "INT8", np.zeros((0,), np.int8))], id="r")


def test_the_answer_in_parts_is_the_message_protobuf_writes() -> None:
    answer = kserve_v2_grpc.encode_infer_answer(_response())
    expected = kserve_v2_grpc.encode_infer_response(_response()).SerializeToString()
    assert answer.SerializeToString() == expected
    parsed = pb.ModelInferResponse.FromString(b"".join(answer.parts()))
    assert [o.name for o in parsed.outputs] == ["big", "words", "none"] and parsed.id == "r"
    np.testing.assert_array_equal(np.frombuffer(parsed.raw_output_contents[0], np.float32),
                                  np.arange(70_000, dtype=np.float32))
    assert parsed.raw_output_contents[2] == b""


def test_the_parts_are_the_arrays_memory_and_a_pickle_is_the_plain_message() -> None:
    response = _response()
    answer = kserve_v2_grpc.encode_infer_answer(response)
    response.outputs[0].data[0, 0] = 7.0  # written after encoding: the answer sends the array as it is
    assert np.frombuffer(answer.parts()[2], np.float32)[0] == 7.0
    copied = pickle.loads(pickle.dumps(answer))  # Ray Serve hands answers between processes so
    assert isinstance(copied, pb.ModelInferResponse)
    assert copied.SerializeToString() == answer.SerializeToString()
