"""An inference request and its answer as plain tuples for the channel.

Pickling the dataclasses themselves costs several times more (each object's state goes through
Python-level reduce functions, numpy arrays through theirs); tuples of str, int and bytes are
pickled by C alone. Numeric tensors travel as (dtype, shape, bytes), large ones as (dtype, shape,
a ``PickleBuffer`` of the array): out of band, uncopied (see channel.py); anything else (BYTES
object arrays, bfloat16) as the array.
"""

from __future__ import annotations

import pickle
from typing import Any, cast

import numpy as np

from inferd.errors import ErrorCode, InferdError, error_for
from inferd.types import InferRequest, InferResponse, RequestedOutput, SharedMemoryRef, Tensor, Timings

NUMERIC = frozenset("biufc")
OUT_OF_BAND = 64 * 1024  # a tensor this large crosses as its own memory, not as a copy in the pickle


def _pack_tensor(tensor: Tensor) -> tuple[Any, ...]:
    data = tensor.data
    if tensor.shared is not None:  # its bytes are in the client's shared memory: only where they are crosses
        return tensor.name, tensor.datatype, data.dtype.str, data.shape, tensor.shared
    if data.dtype.kind in NUMERIC and data.dtype.isnative:
        if data.nbytes >= OUT_OF_BAND:  # must not change until sent: tensors handed on are not written to
            return tensor.name, tensor.datatype, data.dtype.str, data.shape, pickle.PickleBuffer(
                cast(Any, np.ascontiguousarray(data)))
        return tensor.name, tensor.datatype, data.dtype.str, data.shape, data.tobytes()
    return tensor.name, tensor.datatype, None, None, data


def _unpack_tensor(packed: tuple[Any, ...]) -> Tensor:
    name, datatype, dtype, shape, data = packed
    if dtype is None:
        return Tensor(name, datatype, data)
    if isinstance(data, SharedMemoryRef):
        return Tensor(name, datatype, np.broadcast_to(np.zeros((), dtype), shape), data)
    return Tensor(name, datatype, np.frombuffer(data, dtype=dtype).reshape(shape))


def pack_request(request: InferRequest) -> tuple[Any, ...]:
    """Everything but ``cancelled`` (a callable of the worker's: it stays there)."""
    outputs = None if request.outputs is None else tuple(
        (o.name, o.binary, o.classification, o.shared) for o in request.outputs)
    return (request.model_name, request.model_version, tuple(_pack_tensor(t) for t in request.inputs), request.id,
            outputs, request.parameters, request.timeout_us, request.priority, request.protocol, request.credentials)


def unpack_request(packed: tuple[Any, ...]) -> InferRequest:
    name, version, inputs, request_id, outputs, parameters, timeout_us, priority, protocol, credentials = packed
    wanted = None if outputs is None else [RequestedOutput(*output) for output in outputs]
    return InferRequest(name, version, [_unpack_tensor(t) for t in inputs], request_id, wanted, parameters,
                        timeout_us, protocol, None, credentials, priority)


def pack_response(response: InferResponse) -> tuple[Any, ...]:
    t = response.timings
    return (response.model_name, response.model_version, tuple(_pack_tensor(o) for o in response.outputs),
            response.id, response.parameters, (t.queue, t.compute, t.total, t.steps), response.final,
            _pack_error(response.error))


def unpack_response(packed: tuple[Any, ...]) -> InferResponse:
    name, version, outputs, response_id, parameters, (queue, compute, total, steps), final, error = packed
    return InferResponse(name, version, [_unpack_tensor(o) for o in outputs], response_id, parameters,
                         Timings(queue, compute, total, steps), final, error_for(*error) if error else None)


def _pack_error(error: Exception | None) -> tuple[str, str] | None:
    """A decoupled model's error response as (its ErrorCode's value, its message)."""
    if error is None:
        return None
    if isinstance(error, InferdError):
        return error.code.value, error.message
    return ErrorCode.INTERNAL.value, str(error)
