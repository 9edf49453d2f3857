"""A gRPC infer answer whose raw contents stay the outputs' memory: its bytes are protobuf's own."""

from __future__ import annotations

import pickle
import time

import numpy as np
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _infer_request(sizes: tuple[int, ...]) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", model_version="2", id="r")
    message.parameters["timeout"].int64_param = 7
    for index, size in enumerate(sizes):
        message.inputs.add(name=f"x{index}", datatype="UINT8", shape=[size])
        message.raw_input_contents.append(bytes([index + 1]) * size)
    message.outputs.add(name="y")
    return message


def test_a_large_requests_raw_inputs_are_read_in_place_and_decode_as_protobufs() -> None:
    message = _infer_request((70_000, 0, 300))
    payload = bytearray(message.SerializeToString())
    parsed = kserve_v2_grpc.RawInferRequest.FromString(memoryview(payload))
    assert isinstance(parsed, kserve_v2_grpc.RawInferRequest) and parsed.ByteSize() >= len(payload) - 16
    ours, theirs = (kserve_v2_grpc.decode_infer_request(m) for m in (parsed, message))
    assert (ours.model_name, ours.model_version, ours.id, ours.parameters, ours.timeout_us) == (
        theirs.model_name, theirs.model_version, theirs.id, theirs.parameters, theirs.timeout_us)
    for mine, expected in zip(ours.inputs, theirs.inputs, strict=True):
        assert (mine.name, mine.datatype) == (expected.name, expected.datatype)
        np.testing.assert_array_equal(mine.data, expected.data)
        assert not mine.data.flags.writeable  # as protobuf's bytes were: a model cannot write the request
    assert [o.name for o in ours.outputs or []] == ["y"]
    small = _infer_request((10,))
    assert isinstance(kserve_v2_grpc.RawInferRequest.FromString(small.SerializeToString()), pb.ModelInferRequest)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_cut_or_corrupted_large_request_is_judged_as_protobuf_judges_it(data: st.DataObject) -> None:
    payload = bytearray(_infer_request((70_000, 5)).SerializeToString())
    cut = data.draw(st.integers(kserve_v2_grpc.SPLIT_FROM, len(payload)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=3))
    payload = payload[:cut]
    for at, value in flips:
        payload[at] = value
    try:
        expected: object = pb.ModelInferRequest.FromString(bytes(payload))
    except DecodeError:
        expected = DecodeError
    try:
        parsed = kserve_v2_grpc.RawInferRequest.FromString(bytes(payload))
    except DecodeError:
        assert expected is DecodeError
        return
    assert expected is not DecodeError, "protobuf refuses what was parsed"
    message = parsed.message if isinstance(parsed, kserve_v2_grpc.RawInferRequest) else parsed
    joined = pb.ModelInferRequest()
    joined.CopyFrom(message)
    joined.raw_input_contents.extend(bytes(raw) for raw in parsed.raw_input_contents)
    assert joined == expected


def test_a_request_of_thousands_of_fields_is_left_to_protobuf() -> None:
    """The walk over a request's fields is Python: a hostile 64 MiB of two-byte fields would hold
    the event loop for seconds, where protobuf reads them in C. Past 4,096 fields it stops."""
    message = _infer_request((70_000,))
    for _ in range(40_000):
        message.outputs.add()
    payload = message.SerializeToString()
    started = time.perf_counter()
    parsed = kserve_v2_grpc.RawInferRequest.FromString(payload)
    assert time.perf_counter() - started < 0.5
    assert isinstance(parsed, pb.ModelInferRequest) and len(parsed.outputs) == 40_001
