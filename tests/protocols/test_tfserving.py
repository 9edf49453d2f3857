"""TF Serving's codecs without a server: typed answers as TensorFlow reads them, JSON rules, examples."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from inferd.errors import InvalidInput
from inferd.protocols import tfserving, tfserving_examples
from inferd.protocols._proto import tfserving_pb2 as pb
from inferd.types import InferResponse, Tensor, bfloat16


@pytest.mark.parametrize(("datatype", "field", "values"), [
    ("FP32", "float_val", np.array([[1.5, -2.0]], np.float32)),
    ("FP64", "double_val", np.array([1e300, 0.1])),
    ("INT64", "int64_val", np.array([2**62, -3], np.int64)),
    ("INT32", "int_val", np.array([7, -8], np.int32)),
    ("UINT8", "int_val", np.array([255, 0], np.uint8)),
    ("BOOL", "bool_val", np.array([True, False])),
    ("UINT64", "uint64_val", np.array([2**64 - 1], np.uint64)),
    ("FP16", "half_val", np.array([0.5, 65504], np.float16)),
    ("BF16", "half_val", np.array([1.0, -3.0], np.float32).astype(bfloat16())),
])
def test_answers_fill_the_typed_field_tensorflow_reads(datatype: str, field: str, values: np.ndarray) -> None:
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    proto = tfserving.encode_tensor(values, datatype)
    assert not proto.tensor_content and len(getattr(proto, field)) == values.size
    theirs = tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    read = tf.make_ndarray(theirs)
    assert read.shape == values.shape
    np.testing.assert_array_equal(read.astype(np.float64) if datatype == "BF16" else read,
                                  values.astype(np.float64) if datatype == "BF16" else values)


@pytest.mark.parametrize(("datatype", "field", "values"), [
    ("UINT64", "uint64_val", [0, 2**64 - 1, 2**53 + 1]),
    ("INT64", "int64_val", [-2**63, 2**63 - 1, 2**53 + 1]),
    ("UINT32", "uint32_val", [0, 2**32 - 1]),
    ("INT32", "int_val", [-2**31, 2**31 - 1]),
    ("UINT16", "int_val", [0, 65535]),
])
def test_typed_integers_are_read_exactly(datatype: str, field: str, values: list[int]) -> None:
    """numpy alone reads [0, 2**64 - 1] as float64: 2**64 - 1 became 0 and 2**53 + 1 became 2**53."""
    proto = pb.TensorProto(dtype=tfserving.encode_tensor(np.zeros(1, np.dtype(datatype.lower())), datatype).dtype)
    proto.tensor_shape.dim.add(size=len(values))
    getattr(proto, field).extend(values)
    assert tfserving.decode_tensor("x", proto).data.tolist() == values


def test_strings_answer_in_string_val() -> None:
    values = np.empty(2, dtype=object)
    values[:] = [b"a", b"\xff"]
    assert list(tfserving.encode_tensor(values, "BYTES").string_val) == [b"a", b"\xff"]


@pytest.mark.parametrize(("datatype", "value", "message"), [
    ("INT64", [1.9], "fractional"), ("INT64", [2**63 + 5], "DT_INT64"), ("INT32", [2**31], "range"),
    ("FP32", ["1"], "expected numbers"), ("BYTES", [{"b64": "%%%"}], "not valid base64"),
    ("BYTES", [3], "expected strings"), ("FP32", [[1.0], [2.0, 3.0]], "ragged"),
    ("FP32", [[1, 2, 3], [4, [5], 6]], "ragged"), ("FP32", [[[1, 2, 3]], [4, 5, 6]], "ragged"),
    ("FP32", [[1, 2], 3], "ragged"), ("BYTES", [["a"], []], "ragged"),
    ("FP32", [[True, 2.0]], "got true/false"), ("INT64", [1, False], "got true/false"),
])
def test_rest_json_rules(datatype: str, value: list, message: str) -> None:
    from inferd.types import TensorSpec

    spec = (TensorSpec("x", datatype, (-1,)),)
    with pytest.raises(InvalidInput, match=message):
        tfserving.decode_rest_predict({"inputs": value}, spec, "m", None, None)


def test_columnar_inputs_ignore_keys_outside_the_signature() -> None:
    from inferd.types import TensorSpec

    specs = (TensorSpec("x", "FP32", (-1,)),)
    request, rows = tfserving.decode_rest_predict({"inputs": {"x": [1.0], "c": "ignored"}}, specs, "m", None, None)
    assert [(t.name, t.data.tolist()) for t in request.inputs] == [("x", [1.0])] and not rows


def test_rest_reads_and_writes_non_finite_numbers_and_float32_shortest() -> None:
    payload = tfserving.loads_rest(bytearray(b'{"inputs": [NaN, Infinity, -Infinity, 1.5]}'), "request")
    assert np.isnan(payload["inputs"][0]) and payload["inputs"][1:] == [np.inf, -np.inf, 1.5]
    with pytest.raises(InvalidInput, match="malformed JSON"):
        tfserving.loads_rest(b'{"inputs": [NaN, }', "request")
    values = np.array([[1.2, np.nan], [np.inf, -np.inf]], np.float32)
    for row_format, expected in ((False, b'{"outputs":[[1.2,NaN],[Infinity,-Infinity]]}'),
                                 (True, b'{"predictions":[[1.2,NaN],[Infinity,-Infinity]]}')):
        body = tfserving.encode_rest_predict(InferResponse("m", "1", [Tensor("y", "FP32", values)]), row_format)
        assert orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY) == expected
    scalars = InferResponse("m", "1", [Tensor("y", "FP32", np.array(np.nan, np.float32)),
                                       Tensor("s", "BYTES", np.array(b"ABC")), Tensor("f", "FP32", np.float32(0.1))])
    assert orjson.dumps(tfserving.encode_rest_predict(scalars, False), option=orjson.OPT_SERIALIZE_NUMPY) == (
        b'{"outputs":{"y":NaN,"s":"ABC","f":0.1}}')


def test_b64_takes_both_alphabets_without_padding() -> None:
    assert tfserving.decode_b64("_-8") == b"\xff\xef"
    assert tfserving.decode_b64("aGk") == b"hi"


def test_row_format_splits_string_and_number_columns() -> None:
    text = np.empty(2, dtype=object)
    text[:] = [b"x", b"\xff"]
    response = InferResponse("m", "1", [Tensor("s", "BYTES", text), Tensor("n", "INT64", np.array([1, 2]))])
    assert tfserving.encode_rest_predict(response, row_format=True) == {
        "predictions": [{"s": "x", "n": 1}, {"s": {"b64": "/w=="}, "n": 2}]}
    uneven = InferResponse("m", "1", [Tensor("a", "INT64", np.array([1, 2])), Tensor("b", "INT64", np.array([1]))])
    with pytest.raises(InvalidInput, match="batch size"):
        tfserving.encode_rest_predict(uneven, row_format=True)


def test_context_merges_into_every_example_with_the_examples_keys_winning() -> None:
    import tensorflow as tf

    message = pb.Input()
    both = message.example_list_with_context
    both.context.features.feature["x"].float_list.value.append(1.0)
    both.context.features.feature["c"].bytes_list.value.append(b"ctx")
    both.examples.add().features.feature["x"].float_list.value.append(5.0)
    (serialized,) = tfserving_examples.serialized_examples(message)
    parsed = tf.train.Example.FromString(serialized).features.feature
    assert list(parsed["x"].float_list.value) == [5.0]
    assert list(parsed["c"].bytes_list.value) == [b"ctx"]
    rest = tfserving_examples.rest_examples({"examples": [{"n": 3, "f": [1.0, 2.5], "s": "t", "b": {"b64": "aGk="}}]})
    parsed = tf.train.Example.FromString(rest[0]).features.feature
    assert list(parsed["n"].int64_list.value) == [3]
    assert list(parsed["f"].float_list.value) == [1.0, 2.5]
    assert list(parsed["b"].bytes_list.value) == [b"hi"]
    rest = tfserving_examples.rest_examples({"examples": [{"t": True, "m": [False, 3]}]})
    parsed = tf.train.Example.FromString(rest[0]).features.feature  # TF Serving stores true/false as int64
    assert (list(parsed["t"].int64_list.value), list(parsed["m"].int64_list.value)) == ([1], [0, 3])
    with pytest.raises(InvalidInput, match="Input is empty"):
        tfserving_examples.serialized_examples(pb.Input())
    for mixed in ([1, 2.5], [0.5, 2], ["a", 1], [True, 0.5]):  # TF Serving: one kind of value per feature
        with pytest.raises(InvalidInput, match="Unexpected element type in feature"):
            tfserving_examples.rest_examples({"examples": [{"f": mixed}]})


def test_rest_scores_and_regressions_are_float32_in_shortest_form() -> None:
    classified = pb.ClassificationResult()
    classified.classifications.add().classes.add(label="a", score=0.1)
    regressed = pb.RegressionResult()
    for value in (2.05, float("nan"), float("-inf")):
        regressed.regressions.add(value=value)
    for body, expected in ((tfserving_examples.rest_classification(classified), b'{"results":[[["a",0.1]]]}'),
                           (tfserving_examples.rest_regression(regressed), b'{"results":[2.05,NaN,-Infinity]}')):
        assert orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY) == expected


def test_row_format_refuses_a_scalar_output_and_objects_name_the_one_input() -> None:
    from inferd.types import TensorSpec

    scalar = InferResponse("m", "1", [Tensor("total", "FP32", np.array(3.0, np.float32))])
    with pytest.raises(InvalidInput, match="Tensor name: total has no shape information"):
        tfserving.encode_rest_predict(scalar, row_format=True)
    specs = (TensorSpec("x", "BYTES", (-1,)),)
    with pytest.raises(InvalidInput, match="instances\\[0\\] has unknown input 'y'"):
        tfserving.decode_rest_predict({"instances": [{"y": "a"}]}, specs, "m", None, None)
    request, rows = tfserving.decode_rest_predict({"instances": [{"b64": "aGk="}]}, specs, "m", None, None)
    assert request.inputs[0].data.tolist() == [b"hi"] and rows


@pytest.mark.parametrize(("datatype", "value"), [("FP16", 70000), ("BF16", 65536), ("FP16", -1)])
def test_half_val_outside_16_bits_is_invalid_input(datatype: str, value: int) -> None:
    proto = pb.TensorProto(dtype=pb.DT_HALF if datatype == "FP16" else pb.DT_BFLOAT16)
    proto.tensor_shape.dim.add().size = 2
    proto.half_val.extend([value, 1])
    with pytest.raises(InvalidInput, match=f"0..65535\\), got {value}"):
        tfserving.decode_tensor("x", proto)


def test_rest_lists_nested_past_the_dimension_limit_are_invalid_input() -> None:
    from inferd.types import TensorSpec

    value: object = 1.0
    for _ in range(990):
        value = [value]
    with pytest.raises(InvalidInput, match="nested deeper than 32"):
        tfserving.decode_rest_predict({"inputs": value}, (TensorSpec("x", "FP32", (-1,)),), "m", None, None)
