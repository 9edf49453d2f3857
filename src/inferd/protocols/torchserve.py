"""TorchServe's inference and management API payloads <-> inferd types. Pure functions."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from inferd.errors import InvalidInput
from inferd.types import InferRequest, InferResponse, ModelMetadata, ModelState, Tensor, VersionDescription, numpy_dtype

PROTOCOL = "torchserve"


def _bytes_tensor(name: str, value: bytes) -> Tensor:
    array = np.empty(1, dtype=object)
    array[0] = value
    return Tensor(name, "BYTES", array)


def decode_prediction(body: bytes | bytearray, content_type: str, model: str,
                      version: str | None) -> InferRequest:
    """``POST /predictions/{model}[/{version}]``: the raw body (or a form) is one request."""
    return InferRequest(model_name=model, model_version=version,
                        inputs=[_bytes_tensor("body", bytes(body)),
                                _bytes_tensor("content_type", content_type.encode("latin-1"))],
                        protocol=PROTOCOL)


def encode_prediction(response: InferResponse) -> tuple[bytes, str]:
    """The handler's answer for the one request, and its content type."""
    outputs = {tensor.name: tensor.data for tensor in response.outputs}
    if "output" not in outputs:
        raise InvalidInput(f"model '{response.model_name}' is not a handler model; call it over "
                           "/v2/models/{model}/infer")
    body = outputs["output"].reshape(-1)[0]
    kind = outputs.get("content_type")
    content_type = kind.reshape(-1)[0].decode("latin-1") if kind is not None else "application/json"
    return bytes(body), content_type


def is_handler_model(metadata: ModelMetadata) -> bool:
    """A handler (.mar) model takes the raw body and its content type; others take tensors."""
    return [spec.name for spec in metadata.inputs] == ["body", "content_type"]


def decode_tensor_prediction(body: bytes | bytearray, metadata: ModelMetadata, version: str | None
                             ) -> tuple[InferRequest, bool]:
    """A model without a handler: the body is JSON data for its input (``{"data": ...}`` too), or
    ``{name: data}`` for several inputs. The flag says a batch dim was added (one example given)."""
    name = metadata.name
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"model '{name}' takes JSON tensors; the body is not JSON: {exc}") from None
    if isinstance(payload, dict) and "data" in payload and len(metadata.inputs) == 1:
        payload = payload["data"]
    values = payload if isinstance(payload, dict) else {metadata.inputs[0].name: payload}
    tensors, added_batch = [], False
    for spec in metadata.inputs:
        if spec.name not in values:
            raise InvalidInput(f"missing input '{spec.name}' for model '{name}'")
        try:
            array = np.asarray(values[spec.name], dtype=numpy_dtype(spec.datatype))
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInput(f"input '{spec.name}': {exc}") from None
        if metadata.max_batch_size > 0 and array.ndim == len(spec.shape) - 1:
            array, added_batch = array[np.newaxis], True
        tensors.append(Tensor(spec.name, spec.datatype, array))
    return InferRequest(name, version, tensors, protocol=PROTOCOL), added_batch


def encode_tensor_prediction(response: InferResponse, added_batch: bool) -> bytes:
    """The output (``{name: data}`` for several), without the batch dim the request did not give."""
    outputs = {t.name: (t.data[0] if added_batch else t.data) for t in response.outputs}
    answer = next(iter(outputs.values())) if len(outputs) == 1 else outputs
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


def describe(name: str, row: VersionDescription) -> dict[str, Any]:
    """One entry of ``GET /models/{model}``, in TorchServe's shape."""
    ready = row.state is ModelState.READY
    worker_status = "READY" if ready else row.state.value
    return {
        "modelName": name,
        "modelVersion": row.version,
        "modelUrl": row.source,
        "runtime": "python",
        "minWorkers": row.instances,
        "maxWorkers": row.instances,
        "batchSize": row.max_batch_size,
        "maxBatchDelay": row.max_queue_delay_ms,
        "loadedAtStartup": True,
        "isDefault": row.default,
        "workers": [{"id": str(9000 + i), "status": worker_status, "busy": i < row.busy, "gpu": False}
                    for i in range(row.instances)],
    }
