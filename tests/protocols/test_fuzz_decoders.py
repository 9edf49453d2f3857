"""Property-based fuzzing of the wire decoders: whatever arrives, a decoder either decodes it or
raises InvalidInput (which every transport answers with a 4xx) — never another exception."""

from __future__ import annotations

import contextlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferd.errors import InvalidInput
from inferd.protocols import kserve_v2, tfserving
from inferd.runtimes.ts_requests import decode_row
from inferd.types import TensorSpec

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=30)
datatypes = st.sampled_from(["BOOL", "UINT8", "INT8", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64", "BF16",
                             "BYTES", "FLOAT", "", "int"])
shapes = st.lists(st.integers(-2, 6), max_size=4)
v2_inputs = st.fixed_dictionaries({"name": st.text(max_size=4) | json_values, "datatype": datatypes | json_values,
                                   "shape": shapes | json_values},
                                  optional={"data": json_values, "parameters": st.dictionaries(
                                      st.sampled_from(["binary_data_size", "x"]), json_values, max_size=2)})
v2_bodies = st.fixed_dictionaries({"inputs": st.lists(v2_inputs, max_size=3) | json_values},
                                  optional={"outputs": json_values, "id": json_values, "parameters": json_values})
fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(st.binary(max_size=200), st.none() | st.integers(-5, 300))
def test_v2_decoder_on_any_bytes(body: bytes, header_length: int | None) -> None:
    with contextlib.suppress(InvalidInput):
        kserve_v2.decode_infer_request(bytearray(body), header_length, "m", None)


@fuzz
@given(v2_bodies, st.binary(max_size=64))
def test_v2_decoder_on_v2_shaped_bodies(body: dict, tail: bytes) -> None:
    header = json.dumps(body).encode()
    for payload, length in ((header, None), (header + tail, len(header))):
        try:
            request = kserve_v2.decode_infer_request(bytearray(payload), length, "m", None)
        except InvalidInput:
            continue
        for tensor in request.inputs:  # what decodes is consistent with what it claims
            assert list(tensor.data.shape) == json.loads(header)["inputs"][request.inputs.index(tensor)]["shape"]


SPECS = (TensorSpec("a", "FP32", (-1, 2)), TensorSpec("s", "BYTES", (-1,)))


@fuzz
@given(json_values, st.sampled_from([SPECS, SPECS[:1]]))
def test_tf_serving_rest_decoder(payload: object, specs: tuple[TensorSpec, ...]) -> None:
    for body in (payload, {"instances": payload}, {"inputs": payload}):
        with contextlib.suppress(InvalidInput):
            tfserving.decode_rest_predict(body, specs, "m", None, None)


@fuzz
@given(st.binary(max_size=300), st.sampled_from(["application/json", "multipart/form-data; boundary=xyz",
                                                  "multipart/form-data", "application/x-www-form-urlencoded"]))
def test_torchserve_rows(body: bytes, content_type: str) -> None:
    row = decode_row(body, content_type)
    assert isinstance(row, dict) and row
