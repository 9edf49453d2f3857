"""Triton's generate extension: ``POST /v2/models/{m}/generate`` and ``/generate_stream``.

The request is a flat JSON object: each model input by name (a scalar or a list; the shape is the
value's, with a batch dimension of 1 added for batching models), plus optional ``id`` and
``parameters``. Each answer is a flat object too: ``model_name``, ``model_version``, ``id`` and
each output by name (one element: the value; more: a flat list). The stream sends each answer as
a Server-Sent Event (``data: {...}``) and an error as ``data: {"error": "..."}``. Pure functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from inferd.errors import InvalidInput
from inferd.protocols import tensors
from inferd.protocols.kserve_v2 import loads, priority, timeout_us
from inferd.types import InferRequest, InferResponse, ModelMetadata, Tensor

_RESERVED = ("id", "parameters")


def decode_generate_request(body: bytes | bytearray, metadata: ModelMetadata, version: str | None) -> InferRequest:
    payload = loads(body, "generate request")
    if not isinstance(payload, dict):
        raise InvalidInput("a generate request must be a JSON object of the model's inputs by name")
    parameters = payload.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"'parameters' must be a JSON object, got {type(parameters).__name__}")
    specs = {spec.name: spec for spec in metadata.inputs}
    unknown = sorted(key for key in payload if key not in specs and key not in _RESERVED)
    if unknown:
        expected = ", ".join(f"'{name}'" for name in specs) or "none"
        raise InvalidInput(f"unknown input '{unknown[0]}' for model '{metadata.name}'; it takes {expected}")
    inputs = []
    for name, spec in specs.items():
        if name not in payload:
            continue  # the data plane says which input is missing
        value = payload[name]
        try:
            if spec.datatype == "BYTES":
                shape = [len(value)] if isinstance(value, list) else []
            else:
                shape = list(np.shape(value))
        except ValueError:
            raise InvalidInput(f"input '{name}': nested lists of different lengths are not a tensor") from None
        if not shape:
            shape = [1]
        if metadata.max_batch_size > 0:
            shape = [1, *shape]
        inputs.append(Tensor(name, spec.datatype, tensors.from_json(name, spec.datatype, shape, value)))
    request_id = payload.get("id")
    return InferRequest(model_name=metadata.name, model_version=version, inputs=inputs,
                        id=str(request_id) if request_id is not None else None, parameters=parameters,
                        timeout_us=timeout_us(parameters.get("timeout")),
                        priority=priority(parameters.get("priority")), protocol="kserve_v2_generate")


def encode_generate_response(response: InferResponse) -> bytes:
    answer: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
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
