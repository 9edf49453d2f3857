from __future__ import annotations

import numpy as np
import orjson
import pytest

from inferd.errors import InvalidInput
from inferd.protocols import tensors
from inferd.types import numpy_dtype, v2_datatype
from tests.models import ALL_TYPES


def sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([b"", b"abc", "ü".encode(), b"z" * 300], dtype=object).reshape(2, 2)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]])
    dtype = numpy_dtype(datatype)
    return (np.arange(4, dtype=np.float32) * (1.5 if dtype.kind == "f" else 1) + 1).astype(
        dtype).reshape(2, 2)


@pytest.mark.parametrize("datatype", ALL_TYPES)
def test_raw_round_trip(datatype: str) -> None:
    x = sample(datatype)
    raw = tensors.to_raw(x, datatype)
    back = tensors.from_raw("x", datatype, [2, 2], raw)
    assert back.dtype == x.dtype
    assert back.tolist() == x.tolist()


@pytest.mark.parametrize("datatype", ALL_TYPES)
def test_json_round_trip(datatype: str) -> None:
    x = sample(datatype)
    wire = orjson.loads(orjson.dumps(tensors.to_json(x, datatype), option=orjson.OPT_SERIALIZE_NUMPY))
    back = tensors.from_json("x", datatype, [2, 2], wire)
    assert back.dtype == x.dtype
    if datatype == "BYTES":
        assert back.tolist() == x.tolist()
    else:
        np.testing.assert_array_equal(back.astype(np.float64), x.astype(np.float64))


def test_nested_json_is_accepted() -> None:
    back = tensors.from_json("x", "INT32", [2, 2], [[1, 2], [3, 4]])
    assert back.tolist() == [[1, 2], [3, 4]]


def test_big_unsigned_integers_survive_json() -> None:
    back = tensors.from_json("x", "UINT64", [2], [2**64 - 1, 5])
    assert back.tolist() == [2**64 - 1, 5]


@pytest.mark.parametrize(("datatype", "data", "message"), [
    ("INT32", [1.5, 2], "fractional"),
    ("FP32", ["a", "b"], "does not hold FP32"),
    ("BOOL", [1, 0], "true/false"),
    ("FP32", [1.0], "needs 2 elements, data has 1"),
    ("INT8", [1000, 1], "does not hold INT8"),
    ("FP32", [True, 2.5], "got true/false"),
    ("INT64", [True, False], "got true/false"),
    ("INT32", [False, 4], "got true/false"),
    ("BF16", [1.0, True], "got true/false"),
    ("BF16", ["1", "2"], "does not hold BF16"),
    ("FP64", ["a", "b"], "expected numbers, got strings$"),  # JSON's words, not numpy's <U1
    ("FP64", [None, 1], "expected numbers, got null, objects or mixed values"),
    ("BOOL", ["a", "b"], "expected true/false, got strings$"),
    ("BOOL", [1, 0], "expected true/false, got numbers$"),
])
def test_bad_json_data(datatype: str, data: list, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        tensors.from_json("x", datatype, [2], data)


@pytest.mark.parametrize("size", [3, tensors.SEARCH_AT_ONCE, tensors.SEARCH_AT_ONCE + 1, 5000])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("datatype", ["FP32", "INT64"])
def test_a_true_among_numbers_is_found_however_the_data_is_laid_out(size: int, depth: int, datatype: str) -> None:
    values: list = [2.5 if datatype == "FP32" else 7] * size  # no 0 and no 1 but the bool itself
    values[size // 2] = True
    data: list = values
    for _ in range(depth - 1):
        data = [data]
    shape = [1] * (depth - 1) + [size]
    with pytest.raises(InvalidInput, match="got true/false"):
        tensors.from_json("x", datatype, shape, data)
    values[size // 2] = 1  # the same data with a number there is taken
    assert tensors.from_json("x", datatype, shape, data).shape == tuple(shape)


def test_bad_raw_bytes_data() -> None:
    with pytest.raises(InvalidInput, match="claims 100 bytes"):
        tensors.from_raw("s", "BYTES", [1], b"\x64\x00\x00\x00abc")
    with pytest.raises(InvalidInput, match="left over"):
        tensors.from_raw("s", "BYTES", [1], b"\x01\x00\x00\x00ab")
    with pytest.raises(InvalidInput, match="needs 8 bytes, got 7"):
        tensors.from_raw("x", "FP32", [2], b"\0" * 7)


def test_datatype_table_is_a_bijection() -> None:
    for datatype in ALL_TYPES:
        assert v2_datatype(numpy_dtype(datatype)) == datatype


def test_a_shape_alone_never_allocates() -> None:
    with pytest.raises(InvalidInput, match="more than the limit"):
        tensors.from_raw("x", "FP32", [1 << 20, 1 << 20], b"")
    with pytest.raises(InvalidInput, match="need at least"):
        tensors.from_raw("s", "BYTES", [1 << 26], b"\x00" * 8)


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64", "BF16"])
def test_non_finite_floats_are_written_as_tritons_json_tokens(datatype: str) -> None:
    """Triton writes NaN, Infinity and -Infinity (rapidjson's kWriteNanAndInfFlag); orjson alone
    writes null, which a client reads back as NaN even for an infinity."""
    x = np.array([1.5, np.nan, np.inf, -np.inf, -0.0], dtype=np.float32).astype(numpy_dtype(datatype))
    body = orjson.dumps(tensors.to_json(x, datatype), option=orjson.OPT_SERIALIZE_NUMPY)
    assert body == b"[1.5,NaN,Infinity,-Infinity,-0.0]"
    back = tensors.from_json("x", datatype, [5], tensors.loads_non_finite(body, "test"))
    assert back.tobytes() == x.tobytes()


def test_json_without_non_finite_tokens_stays_strict() -> None:
    with pytest.raises(InvalidInput, match="malformed JSON"):
        tensors.loads_non_finite(b"[1, nan]", "test")
    with pytest.raises(InvalidInput, match="malformed JSON"):
        tensors.loads_non_finite(memoryview(b"[NaN,"), "test")


def test_bytes_that_are_not_utf8_have_no_json_string() -> None:
    x = np.array([b"", b"a\x00b", "é".encode(), b"\xff\xfe"], dtype=object)
    with pytest.raises(InvalidInput, match=r"output 'y': BYTES element 3 is not UTF-8 .* binary data"):
        tensors.to_json(x, "BYTES", "y")
    assert tensors.to_json(x[:3], "BYTES", "y") == ["", "a\x00b", "é"]
