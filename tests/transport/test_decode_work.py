"""What decides whether a request is decoded off the event loop: the work its decoding reads byte
by byte, not its size. Numbers in binary data become arrays over the body (HTTP) or are copied
(gRPC raw contents); JSON, typed contents and BYTES elements are parsed."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from inferd.protocols._proto import kserve_v2_pb2 as pb
from inferd.transport.grpc.servicers import decode_work, message_size
from inferd.transport.http.routes import _decode_work


def binary_body(datatype: str, raw: bytes) -> tuple[bytearray, int]:
    header = json.dumps({"inputs": [{"name": "x", "shape": [len(raw) // 4], "datatype": datatype,
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return bytearray(header + raw), len(header)


def test_http_binary_numbers_cost_their_json_only_and_bytes_or_json_cost_everything() -> None:
    raw = np.ones(150_528, np.float32).tobytes()
    body, header = binary_body("FP32", raw)
    assert _decode_work(body, header) == header
    body, header = binary_body("BYTES", raw)
    assert _decode_work(body, header) == len(body)
    assert _decode_work(bytearray(b'{"inputs": []}' * 1000), None) == 14_000
    assert _decode_work(bytearray(b"{}"), 99) == 2  # a header length past the body: the whole (refused later)


class Sized:
    def __init__(self, size: int) -> None:
        self.message_size = size


def grpc_request(datatype: str, typed: bool = False) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[150_528])
    if typed:
        tensor.contents.fp32_contents.extend([1.0] * 150_528)
    else:
        request.raw_input_contents.append(np.ones(150_528, np.float32).tobytes())
    return request


def test_grpc_raw_numbers_count_an_eighth_and_the_wire_size_is_taken_as_given() -> None:
    context: Any = Sized(602_200)
    assert decode_work(grpc_request("FP32"), context) == 602_200 // 8
    assert decode_work(grpc_request("BYTES"), context) == 602_200
    assert decode_work(grpc_request("FP32", typed=True), context) == 602_200
    request = grpc_request("FP32")
    assert message_size(request, object()) == request.ByteSize()  # grpcio's server: counted by serializing
