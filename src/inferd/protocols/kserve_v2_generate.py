"""Triton's generate extension: ``POST /v2/models/{m}/generate`` and ``/generate_stream``.

The request is a flat JSON object: each model input by name (a scalar or a list; the shape is the
input's, its variable dims deduced from the list's length as Triton does), plus optional ``id``
and ``parameters``; any other key is a request parameter. Each answer is a flat object too:
``model_name``, ``model_version``, ``id`` and each output by name (one element: the value; more: a
flat list). The stream sends each answer as a Server-Sent Event (``data: {...}``) and an error as
``data: {"error": "..."}``. Pure functions.
"""

from __future__ import annotations

from typing import Any

import orjson

from inferd.errors import InvalidInput
from inferd.protocols import tensors
from inferd.protocols.kserve_v2 import loads, priority, timeout_us
from inferd.types import InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec

_RESERVED = ("id", "parameters")


def decode_generate_request(body: bytes | bytearray, metadata: ModelMetadata, version: str | None) -> InferRequest:
    """As Triton converts a generate request: each key naming a model input is that input, ``id`` the
    request's id, ``parameters`` an object of request parameters, and any other key one parameter
    more (a string, number or boolean)."""
    payload = loads(body, "generate request")
    if not isinstance(payload, dict):
        raise InvalidInput("a generate request must be a JSON object of the model's inputs by name")
    nested = payload.get("parameters", {})
    if not isinstance(nested, dict):
        raise InvalidInput(f"Expected JSON object for keyword: 'parameters', got {type(nested).__name__}")
    parameters: dict[str, Any] = {}
    for key, value in nested.items():
        parameters[key] = _parameter(key, value, "Converting keyword: 'parameters': ")
    specs = {spec.name: spec for spec in metadata.inputs}
    inputs = []
    for key, value in payload.items():
        spec = specs.get(key)
        if spec is not None:
            inputs.append(Tensor(key, spec.datatype, tensors.from_json(key, spec.datatype, _shape(spec, value), value)))
        elif key not in _RESERVED:
            parameters[key] = _parameter(key, value)
    request_id = payload.get("id")
    return InferRequest(model_name=metadata.name, model_version=version, inputs=inputs,
                        id=str(request_id) if request_id is not None else None, parameters=parameters,
                        timeout_us=timeout_us(parameters.get("timeout")),
                        priority=priority(parameters.get("priority")), protocol="kserve_v2_generate")


def _parameter(key: str, value: Any, where: str = "") -> str | int | float | bool:
    if isinstance(value, str | int | float | bool):
        return value
    raise InvalidInput(f"{where}parameter '{key}' has invalid type. It should be either 'int', 'bool', or 'string'.")


def _shape(spec: TensorSpec, value: Any) -> list[int]:
    """A value's shape as Triton's generate deduces it from the input's (the batch dim included): a
    list's length (1 for one value) spread over the fixed dims, the rest to the innermost variable
    dim, every other variable dim 1."""
    count = len(value) if isinstance(value, list) else 1
    if not spec.rank_known:
        return [count]
    shape = list(spec.shape)
    for dim in reversed(shape):
        if dim != -1:
            if dim == 0 or count % dim:
                raise InvalidInput(f"The schema can not convert input '{spec.name}' to tensor with proper shape "
                                   f"{list(spec.shape)} ({count} values)")
            count //= dim
    for index in reversed(range(len(shape))):
        if shape[index] == -1:
            shape[index], count = count, 1
    if count != 1:
        raise InvalidInput(f"The schema can not convert input '{spec.name}' to tensor with proper shape "
                           f"{list(spec.shape)}")
    return shape


def encode_generate_response(response: InferResponse) -> bytes:
    answer: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:  # Triton leaves an empty id out
        answer["id"] = response.id
    for tensor in response.outputs:
        value = tensors.to_json(tensor.data, tensor.datatype, tensor.name)
        answer[tensor.name] = value[0] if len(value) == 1 else value
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


def sse_event(data: bytes) -> bytes:
    """One Server-Sent Event carrying a JSON object (JSON never holds a raw newline)."""
    return b"data: " + data + b"\n\n"


def sse_error(message: str) -> bytes:
    return sse_event(orjson.dumps({"error": message}))
