"""Tensor data on the wire: JSON lists and raw little-endian bytes, for every v2 datatype."""

from __future__ import annotations

import json
import math
import struct
from itertools import chain
from typing import Any, cast

import numpy as np
import orjson

from inferd.errors import InvalidInput
from inferd.types import numpy_dtype

_JSON_AS_FLOAT32 = frozenset({"BF16"})  # JSON numbers pass through float32 on their way to BF16
MAX_ELEMENTS = 1 << 27  # per tensor; a shape alone never makes the server allocate more
MAX_DIMS = 32  # numpy's own limit is 64; no model takes more
MAX_JSON_DEPTH = 100  # nested lists in a JSON 'data' field (Triton's HTTP_MAX_JSON_NESTING_DEPTH): flattened below it


def element_count(name: str, shape: Any) -> int:
    if not isinstance(shape, list):
        raise _not_a_shape(name, shape)
    too_large = False  # one pass over the dims: every input of every request comes through here
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise _not_a_shape(name, shape)
        too_large = too_large or d > MAX_ELEMENTS  # [0, 2**62] holds no element but no array has that shape
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input '{name}': shape has {len(shape)} dimensions, more than the limit of {MAX_DIMS}")
    if too_large:
        raise InvalidInput(f"input '{name}': shape {shape} has a dimension over the limit of {MAX_ELEMENTS}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidInput(f"input '{name}': shape {shape} has {count} elements, more than the limit of "
                           f"{MAX_ELEMENTS}")
    return count


def _not_a_shape(name: str, shape: Any) -> InvalidInput:
    return InvalidInput(f"input '{name}': shape must be a list of non-negative integers, got {shape!r}")


def shared_placeholder(name: str, datatype: Any, shape: Any) -> np.ndarray:
    """An input whose bytes are in shared memory, until the data plane reads them: its shape and
    dtype, no memory (a broadcast zero)."""
    element_count(name, shape)
    return np.broadcast_to(np.zeros((), dtype_for(name, datatype)), shape)


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
    try:
        array = np.asarray(data)
    except ValueError:  # nested deeper than numpy's 64 dims, or ragged: Triton reads the values in order
        data = flatten(data)
        array = np.asarray(data)
    if datatype == "BOOL":
        if array.size and array.dtype != np.bool_:
            raise ValueError(f"expected true/false, got {_json_kind(array)}")
        return array.astype(np.bool_).ravel()
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
    """Nested lists' leaves in order, without recursion; nesting ``MAX_JSON_DEPTH`` deep or more is
    a ValueError in Triton's words (the shape says how the values are laid out, not the nesting)."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) >= MAX_JSON_DEPTH - 1:  # as Triton counts: the values too are a level
                    raise ValueError(f"JSON nesting depth exceeds maximum allowed limit ({MAX_JSON_DEPTH})")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def to_json(array: np.ndarray, datatype: str, name: str = "") -> Any:
    """An array as a flat JSON-ready value. Numeric arrays go to orjson as numpy (no lists); NaN and
    infinities as the tokens Triton writes (``NaN``, ``Infinity``, ``-Infinity``: orjson alone writes
    null, which reads back as NaN for an infinity)."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [_text(item, name, index) for index, item in enumerate(flat)]
    if datatype in ("BF16", "FP16"):
        flat = flat.astype(np.float32)  # orjson has neither
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return non_finite_json(flat)
    return np.ascontiguousarray(flat)


_NON_FINITE = {"nan": orjson.Fragment(b"NaN"), "inf": orjson.Fragment(b"Infinity"),
               "-inf": orjson.Fragment(b"-Infinity")}


def non_finite_json(array: np.ndarray) -> Any:
    """Nested lists of numpy scalars (``array``'s shape), each non-finite value as its JSON token."""
    flat = array.reshape(-1)
    items: list[Any] = list(flat)
    for index in np.flatnonzero(~np.isfinite(flat)).tolist():
        items[index] = _NON_FINITE[str(float(flat[index]))]
    for size in reversed(array.shape[1:]):
        items = [items[start:start + size] for start in range(0, len(items), size)]
    return items if array.ndim else items[0]


def loads_non_finite(body: bytes | bytearray | memoryview, what: str) -> Any:
    """A JSON body whose numbers may be ``NaN``, ``Infinity`` and ``-Infinity``, as Triton and TF
    Serving read them. orjson refuses those; only a body it refused that names one is read again,
    by Python's parser."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        body = bytes(body)
        if b"NaN" not in body and b"Infinity" not in body:
            raise InvalidInput(f"malformed JSON in the {what}: {exc}") from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than Python's stack
        raise InvalidInput(f"malformed JSON in the {what}: {exc}") from None


def _text(item: Any, name: str, index: int) -> str:
    """A BYTES element as a JSON string. Bytes that are not UTF-8 have no JSON string: refused (a
    replacement character would answer silently wrong), naming the binary form that carries them."""
    if not isinstance(item, bytes):
        return str(item)
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"output '{name}': BYTES element {index} is not UTF-8 text, which JSON cannot "
                           "carry; ask for this output as binary data") from None


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
    """The raw layout (row-major little-endian; BYTES length-prefixed) as new bytes."""
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            item = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(struct.pack("<I", len(item)))
            parts.append(item)
        return b"".join(parts)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()  # (row-major whatever the array's own layout)


_VIEW_FROM = 64 * 1024  # smaller tensors are copied: cheaper than the views, and joined on their way out anyway


def raw_view(array: np.ndarray, datatype: str) -> bytes | memoryview:
    """The raw layout as a view of the array's own memory wherever it already is that layout and
    large enough to matter: sending a 16 MiB answer then copies it once fewer. The view keeps the
    array alive; nothing writes to an answer's arrays after the model returns."""
    if datatype == "BYTES" or array.nbytes < _VIEW_FROM:
        return to_raw(array, datatype)
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return memoryview(cast(Any, array.reshape(-1).view(np.uint8)))
