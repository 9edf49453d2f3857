"""TorchServe's inference and management API payloads <-> inferd types. Pure functions."""

from __future__ import annotations

from typing import Any

import numpy as np

from inferd.errors import InvalidInput
from inferd.types import InferRequest, InferResponse, Tensor

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


def describe(name: str, version: str, source: str, workers: int, batch_size: int, max_batch_delay_ms: float,
             busy: int, state: str, default: bool) -> dict[str, Any]:
    """One entry of ``GET /models/{model}``, in TorchServe's shape."""
    status = "READY" if state == "READY" else "UNLOADING" if state == "UNLOADING" else "LOADING"
    return {
        "modelName": name,
        "modelVersion": version,
        "modelUrl": source,
        "runtime": "python",
        "minWorkers": workers,
        "maxWorkers": workers,
        "batchSize": batch_size,
        "maxBatchDelay": max_batch_delay_ms,
        "loadedAtStartup": True,
        "isDefault": default,
        "workers": [{"id": str(9000 + i), "status": status if state == "READY" else state,
                     "busy": i < busy, "gpu": False} for i in range(workers)],
    }
