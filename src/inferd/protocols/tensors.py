"""Tensor data on the wire: JSON lists and raw little-endian bytes, for every v2 datatype."""

from __future__ import annotations

import math
import struct
from itertools import chain
from typing import Any

import numpy as np

from inferd.errors import InvalidInput
from inferd.types import numpy_dtype

_JSON_AS_FLOAT32 = frozenset({"BF16"})  # JSON numbers pass through float32 on their way to BF16
MAX_ELEMENTS = 1 << 27  # per tensor; a shape alone never makes the server allocate more
MAX_DIMS = 32  # numpy's own limit is 64; no model takes more, and nesting deeper is refused as well


def element_count(name: str, shape: Any) -> int:
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"input '{name}': shape must be a list of non-negative integers, "
                           f"got {shape!r}")
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input '{name}': shape has {len(shape)} dimensions, more than the limit of {MAX_DIMS}")
    if any(d > MAX_ELEMENTS for d in shape):  # [0, 2**62] holds no element but no array has that shape
        raise InvalidInput(f"input '{name}': shape {shape} has a dimension over the limit of {MAX_ELEMENTS}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidInput(f"input '{name}': shape {shape} has {count} elements, more than the limit of "
                           f"{MAX_ELEMENTS}")
    return count


def dtype_for(name: str, datatype: Any) -> np.dtype[Any]:
    try:
        return numpy_dtype(datatype)
    except (KeyError, TypeError):
        raise InvalidInput(f"input '{name}': unknown datatype {datatype!r}") from None


def checked_cast(array: np.ndarray, datatype: str) -> np.ndarray:
    """Numbers as ``datatype``. Values outside an integer datatype's range are refused with
    ValueError: wrapping them around would answer silently wrong. Every protocol casts through here."""
    dtype = numpy_dtype(datatype)
    if dtype.kind in "iu" and array.dtype.kind in "iuf" and array.size and not np.can_cast(array.dtype, dtype):
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise ValueError(f"values outside {datatype}'s range {info.min}..{info.max}")
    return array.astype(dtype, copy=False)


def from_json(name: str, datatype: str, shape: Any, data: Any) -> np.ndarray:
    """A JSON ``data`` field (flat or nested) as an array of ``shape`` (checked here: any value may come)."""
    count = element_count(name, shape)
    dtype = dtype_for(name, datatype)
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            array = _bytes_from_json(data)
        elif datatype in _JSON_AS_FLOAT32:
            array = _numbers(data, np.dtype(np.float32), "FP32").astype(dtype)
        else:
            array = _numbers(data, dtype, datatype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': data does not hold {datatype} values: {exc}") from None
    if array.size != count:
        raise InvalidInput(f"input '{name}': shape {shape} needs {count} elements, "
                           f"data has {array.size}")
    return array.reshape(shape)


def numbers_from_json(data: list[Any], datatype: str) -> np.ndarray:
    """Flat JSON numbers as a flat array of ``datatype``; ValueError when a value does not fit
    (a fraction for an integer, out of range, a string, a bool for a number)."""
    dtype = numpy_dtype(datatype)
    if datatype in _JSON_AS_FLOAT32:
        return _numbers(data, np.dtype(np.float32), "FP32").astype(dtype)
    return _numbers(data, dtype, datatype)


def _json_kind(array: np.ndarray) -> str:
    """What JSON values numpy read, in JSON's words (not numpy's ``<U3``)."""
    kind = array.dtype.kind
    if kind in "US":
        return "strings"
    if kind in "iuf":
        return "numbers"
    return "null, objects or mixed values" if kind == "O" else f"{array.dtype} values"


def _numbers(data: list[Any], dtype: np.dtype[Any], datatype: str) -> np.ndarray:
    if datatype == "BOOL":
        array = np.asarray(data)
        if array.size and array.dtype != np.bool_:
            raise ValueError(f"expected true/false, got {_json_kind(array)}")
        return array.astype(np.bool_).ravel()
    array = np.asarray(data)
    if array.dtype.kind == "b" or (array.dtype.kind in "iuf" and _holds_bools(data, array)):
        raise ValueError("expected numbers, got true/false")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"expected numbers, got {_json_kind(array)}")
    if dtype.kind in "iu" and array.dtype.kind == "f":
        # numpy turns a mix of small and >= 2**63 integers into float64: look before refusing
        if any(isinstance(item, float) for item in flatten(data)):
            raise ValueError("expected integers, got fractional numbers")
        return np.asarray(data, dtype=dtype).ravel()
    return checked_cast(array, datatype).ravel()


SEARCH_AT_ONCE = 128  # elements: searching these by type costs less than numpy's look for a 0 or a 1


def _holds_bools(data: list[Any], array: np.ndarray) -> bool:
    """Whether JSON's true/false hide among numbers (``array`` is ``data`` read by numpy, which
    reads them as 1 and 0). A small array is searched by type at once; any other only when it
    holds a 0 or a 1 (the search costs as much as the conversion)."""
    if not array.size:
        return False
    at_once = array.size <= SEARCH_AT_ONCE and array.ndim <= 2  # deeper lists are flattened in Python
    if not at_once and not ((array == 0) | (array == 1)).any():
        return False
    # numpy read regular nesting, so the array's rank is the lists' depth
    leaves = data if array.ndim == 1 else chain.from_iterable(data) if array.ndim == 2 else flatten(data)
    return bool in set(map(type, leaves))


def _bytes_from_json(data: list[Any]) -> np.ndarray:
    flat = flatten(data)
    out = np.empty(len(flat), dtype=object)
    for index, item in enumerate(flat):
        if isinstance(item, str):
            out[index] = item.encode("utf-8")
        elif isinstance(item, bool | int | float):
            out[index] = str(item).encode("utf-8")
        else:
            raise ValueError(f"expected strings, got {type(item).__name__}")
    return out


def flatten(data: list[Any]) -> list[Any]:
    """Nested lists' leaves in order, without recursion; nesting deeper than ``MAX_DIMS`` is a
    ValueError (it could never match a shape, and recursing that deep would exhaust the stack)."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) >= MAX_DIMS:
                    raise ValueError(f"lists nested deeper than {MAX_DIMS} levels")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def to_json(array: np.ndarray, datatype: str) -> Any:
    """An array as a flat JSON-ready value. Numeric arrays go to orjson as numpy (no lists)."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [_text(item) for item in flat]
    if datatype == "BF16":
        return flat.astype(np.float32)
    if datatype == "FP16":
        return flat.astype(np.float32)  # orjson has no float16
    return np.ascontiguousarray(flat)


def _text(item: Any) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return str(item)


def from_raw(name: str, datatype: str, shape: Any, raw: memoryview | bytes) -> np.ndarray:
    """Raw little-endian bytes (BYTES: 4-byte length + bytes per element) as an array of ``shape``
    (checked here: any value may come)."""
    count = element_count(name, shape)
    dtype = dtype_for(name, datatype)
    if datatype == "BYTES":
        return _bytes_from_raw(name, raw, count).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(f"input '{name}': shape {shape} of {datatype} needs {expected} bytes, "
                           f"got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=count).reshape(shape)


def _bytes_from_raw(name: str, raw: memoryview | bytes, count: int) -> np.ndarray:
    if count * 4 > len(raw):  # every element has a 4-byte length: checked before allocating
        raise InvalidInput(f"input '{name}': {count} BYTES elements need at least {count * 4} bytes, "
                           f"got {len(raw)}")
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(f"input '{name}': BYTES data ends after {index} of {count} elements")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"input '{name}': BYTES element {index} claims {length} bytes, "
                               f"only {len(view) - offset} remain")
        out[index] = bytes(view[offset:offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(f"input '{name}': {len(view) - offset} bytes left over after "
                           f"{count} BYTES elements")
    return out


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            item = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(struct.pack("<I", len(item)))
            parts.append(item)
        return b"".join(parts)
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()
