"""KServe v2 / Open Inference Protocol over HTTP: JSON bodies and the binary-data extension.

A binary request is ``<JSON header><raw tensor bytes...>``; the header's length travels in the
``Inference-Header-Content-Length`` HTTP header, and every input whose data is raw carries
``parameters.binary_data_size``. Responses do the same for outputs asked for as binary.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

from inferd.errors import InvalidInput
from inferd.protocols import tensors
from inferd.types import InferRequest, InferResponse, ModelMetadata, RequestedOutput, SharedMemoryRef, Tensor

HEADER_LENGTH = "inference-header-content-length"
_SHARED_KEYS = frozenset(("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"))
MAX_INPUTS = 1024
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def loads(body: bytes | bytearray | memoryview, what: str = "request body") -> Any:
    """A JSON body; numbers may be ``NaN``, ``Infinity`` and ``-Infinity``, as Triton reads them."""
    return tensors.loads_non_finite(body, what)


def decode_infer_request(body: bytes | bytearray, header_length: int | None, model_name: str,
                         model_version: str | None) -> InferRequest:
    view = memoryview(body)
    if header_length is None:
        header, raw = view, view[len(view):]
    else:
        if not 0 <= header_length <= len(view):
            raise InvalidInput(f"Inference-Header-Content-Length is {header_length} but the body "
                               f"has {len(view)} bytes")
        header, raw = view[:header_length], view[header_length:]
    payload = loads(header, "inference request")
    if not isinstance(payload, dict):
        raise InvalidInput("the inference request must be a JSON object with an 'inputs' list")
    inputs, used = _inputs(payload.get("inputs"), raw)
    if used != len(raw):
        raise InvalidInput(f"binary data has {len(raw)} bytes after the JSON header, but the "
                           f"inputs' binary_data_size add up to {used}")
    parameters = _object(payload.get("parameters", {}), "parameters")
    if parameters:
        refuse_reserved(parameters)
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        id=_request_id(payload.get("id")),
        outputs=_outputs(payload.get("outputs"), parameters),
        parameters=parameters,
        # most requests have no parameters: they pay for neither check
        timeout_us=timeout_us(parameters.get("timeout")) if parameters else None,
        priority=priority(parameters.get("priority")) if parameters else 0,
    )


def decode_raw_request(body: bytes | bytearray, metadata: ModelMetadata, model_version: str | None) -> InferRequest:
    """Triton's raw binary request (``Inference-Header-Content-Length: 0``): the whole body is the
    data of the model's one input, no JSON; its shape is the model's with the batch dim 1 and one
    variable dim deduced from the byte count. Every output comes back binary."""
    name = metadata.name
    if len(metadata.inputs) != 1:
        raise InvalidInput(f"Raw request must only have 1 input (found 1) to be deduced but got "
                           f"{len(metadata.inputs)} inputs in '{name}' model configuration")
    spec = metadata.inputs[0]
    dims = list(spec.shape[1:] if metadata.max_batch_size > 0 else spec.shape)
    batch = [1] if metadata.max_batch_size > 0 else []
    if spec.datatype == "BYTES":
        if dims != [1] * len(dims):  # the body is one element: no length prefix to split it by
            raise InvalidInput(f"For BYTE datatype raw input '{spec.name}', the model must have input shape [1]")
        data = np.array([bytes(body)], dtype=object).reshape(batch + dims)
        return _raw_request(metadata, model_version, Tensor(spec.name, spec.datatype, data))
    if dims.count(-1) > 1 or not spec.rank_known:
        raise InvalidInput(f"The shape of the raw input '{spec.name}' can not be deduced because there are "
                           f"more than one variable-sized dimension")
    if -1 in dims:
        known = tensors.dtype_for(spec.name, spec.datatype).itemsize * math.prod(d for d in dims if d != -1)
        if known == 0 or len(body) % known:
            raise InvalidInput(f"The shape of the raw input '{spec.name}' can not be deduced: {len(body)} bytes "
                               f"are not a whole number of {spec.datatype} rows of {known} bytes")
        dims[dims.index(-1)] = len(body) // known
    data = tensors.from_raw(spec.name, spec.datatype, batch + dims, memoryview(body))
    return _raw_request(metadata, model_version, Tensor(spec.name, spec.datatype, data))


def _raw_request(metadata: ModelMetadata, model_version: str | None, tensor: Tensor) -> InferRequest:
    outputs = [RequestedOutput(spec.name, binary=True) for spec in metadata.outputs]
    return InferRequest(model_name=metadata.name, model_version=model_version, inputs=[tensor], outputs=outputs)


def _inputs(items: Any, raw: memoryview) -> tuple[list[Tensor], int]:
    if not isinstance(items, list):  # empty for a model without inputs, as Triton takes it
        raise InvalidInput("the inference request needs an 'inputs' list")
    if len(items) > MAX_INPUTS:
        raise InvalidInput(f"the inference request has {len(items)} inputs, more than the limit of {MAX_INPUTS}")
    result, offset = [], 0
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"inputs[{index}] must be an object with name, shape, datatype")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{index}] needs a 'name' string")
        datatype, shape = item.get("datatype"), item.get("shape")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input '{name}' needs a 'datatype' string (e.g. \"FP32\")")
        params = _object(item.get("parameters", {}), f"input '{name}' parameters")
        size = params.get("binary_data_size")
        if params and _SHARED_KEYS.intersection(params):
            result.append(_shared_input(item, name, datatype, shape, params))
            continue
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative "
                                   f"integer, got {size!r}")
            if offset + size > len(raw):
                raise InvalidInput(f"input '{name}': binary_data_size {size} runs past the end "
                                   f"of the body ({len(raw) - offset} bytes left)")
            data = tensors.from_raw(name, datatype, shape, raw[offset:offset + size])
            offset += size
        elif "data" in item:
            data = tensors.from_json(name, datatype, shape, item["data"])
        else:
            raise InvalidInput(f"input '{name}' has neither 'data' nor binary_data_size")
        result.append(Tensor(name, datatype, data))
    return result, offset


def _shared_input(item: dict[str, Any], name: str, datatype: str, shape: Any, params: dict[str, Any]) -> Tensor:
    """An input in a registered shared-memory region: its place, read by the data plane."""
    if "data" in item or "binary_data_size" in params:
        also = "data" if "data" in item else "binary_data_size"
        raise InvalidInput(f"input '{name}' must set only one of 'data', 'binary_data_size' in 'parameters', "
                           f"'shared_memory_region' in 'parameters'; it set 'shared_memory_region' and '{also}'")
    shared = shared_memory(params, f"input '{name}'")
    assert shared is not None
    return Tensor(name, datatype, tensors.shared_placeholder(name, datatype, shape), shared)


def _outputs(items: Any, parameters: dict[str, Any]) -> list[RequestedOutput] | None:
    default = parameters.get("binary_data_output")
    if default is not None and not isinstance(default, bool):
        raise InvalidInput(f"parameters.binary_data_output must be true or false, got {default!r}")
    if items is None:
        return None  # every output; binary_data_output (read when encoding) sets their form
    if not isinstance(items, list):
        raise InvalidInput("'outputs' must be a list of {\"name\": ...} objects")
    result = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a 'name' string")
        params = _object(item.get("parameters", {}), f"output '{item['name']}' parameters")
        binary = params.get("binary_data", default)
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"output '{item['name']}': binary_data must be true or false")
        shared = shared_memory(params, f"output '{item['name']}'") if params else None
        if shared is not None and (params.get("binary_data") or "classification" in params):
            clash = "binary_data" if params.get("binary_data") else "classification"
            raise InvalidInput(f"Output can't set both 'shared_memory_region' and '{clash}'")
        result.append(RequestedOutput(item["name"], binary, classification(item["name"], params.get("classification")),
                                      shared))
    return result


def shared_memory(params: dict[str, Any], what: str) -> SharedMemoryRef | None:
    """A tensor's place in a registered shared-memory region (its ``shared_memory_region``,
    ``shared_memory_offset`` and ``shared_memory_byte_size`` parameters; JSON and gRPC alike)."""
    region = params.get("shared_memory_region")
    if region is None:
        if "shared_memory_byte_size" in params or "shared_memory_offset" in params:
            raise InvalidInput(f"{what}: shared_memory_byte_size and shared_memory_offset need "
                               "shared_memory_region beside them")
        return None
    if not isinstance(region, str) or not region:
        raise InvalidInput(f"{what}: shared_memory_region must be a region's name, got {region!r}")
    values = []
    for key, default in (("shared_memory_offset", 0), ("shared_memory_byte_size", None)):
        value = params.get(key, default)
        if value is None:
            raise InvalidInput(f"{what}: shared_memory_region needs shared_memory_byte_size beside it")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(f"{what}: {key} must be an integer >= 0, got {value!r}")
        values.append(value)
    return SharedMemoryRef(region, values[0], values[1])


def classification(name: str, value: Any) -> int:
    """Triton's classification extension: an output's ``classification`` parameter, the number of
    top classes to answer with (0: the tensor itself)."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"output '{name}': classification must be a class count >= 0, got {value!r}")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _request_id(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidInput(f"'id' must be a string, got {type(value).__name__}")


def refuse_reserved(parameters: dict[str, Any], allowed: frozenset[str] = frozenset()) -> None:
    """Request parameters named ``triton_...`` are Triton's own (it sets them on answers): a
    client's is refused, as Triton refuses it, but for those a protocol takes from clients."""
    for key in parameters:
        if key.startswith("triton_") and key not in allowed:
            also = f" Only the following keys starting with 'triton_' are allowed: {' '.join(sorted(allowed))}" \
                if allowed else ""
            raise InvalidInput(f"parameter keys starting with 'triton_' are reserved for Triton usage and should "
                               f"not be specified (got '{key}').{also}")


# what Triton never takes from a forwarded header (--http/--grpc-header-forward-pattern), beside triton_*
RESERVED_PARAMETERS = frozenset(("sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers",
                                 "binary_data_output"))


def forward_headers(parameters: dict[str, Any], headers: Iterable[tuple[str, str]], pattern: re.Pattern[str]) -> None:
    """Triton's header forwarding: each header whose name ``pattern`` finds is a string request
    parameter of that name (a model sees it in its parameters); a reserved name is refused."""
    for key, value in headers:
        if pattern.search(key) is None:
            continue
        if key in RESERVED_PARAMETERS or key.startswith("triton_"):
            raise InvalidInput(f"Header '{key}' is reserved for Triton usage and cannot be forwarded.")
        parameters[key] = value


def timeout_us(value: Any) -> int | None:
    """The ``timeout`` request parameter (JSON and gRPC alike): microseconds, an integer >= 0."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(f"parameters.timeout must be microseconds (an integer >= 0), "
                           f"got {value!r}")
    return value


def priority(value: Any) -> int:
    """The ``priority`` request parameter (Triton's schedule policy; JSON and gRPC alike): a level,
    1 the highest; 0 or none: the model's default level."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise InvalidInput(f"parameters.priority must be a priority level: an integer from 0 to {2**64 - 1} "
                           f"(1 is the highest level; 0 the model's default level), got {value!r}")
    return value


def encode_infer_response(response: InferResponse, request: InferRequest
                          ) -> tuple[bytes, list[bytes | memoryview]]:
    """The JSON (header), and the binary outputs' raw data to send after it, uncopied (none: a
    JSON answer; else the header's length is the inference-header-content-length)."""
    binary_flags, default = _binary_flags(request)
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": list(tensor.shape)}
        if tensor.shared is not None:  # written to the client's shared memory: no data, as Triton answers
            pass
        elif binary_flags.get(tensor.name, default):
            raw = tensors.raw_view(tensor.data, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensors.to_json(tensor.data, tensor.datatype, tensor.name)
        outputs.append(entry)
    payload: dict[str, Any] = {"model_name": response.model_name,
                               "model_version": response.model_version, "outputs": outputs}
    if response.id is not None:
        payload["id"] = response.id
    if response.parameters:  # a model's own (Triton's response parameters)
        payload["parameters"] = response.parameters
    return orjson.dumps(payload, option=_DUMPS_OPTIONS), chunks


def _binary_flags(request: InferRequest) -> tuple[dict[str, bool | None], bool]:
    default = bool(request.parameters.get("binary_data_output", False))
    flags = {o.name: o.binary for o in request.outputs or []}
    return {k: (default if v is None else v) for k, v in flags.items()}, default


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_DUMPS_OPTIONS)
