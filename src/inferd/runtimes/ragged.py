"""Triton's ragged batching: joining a batch's requests whose ragged inputs differ in shape, the batch
inputs computed from them, and splitting the model's outputs back per request.

As Triton's backends do (triton-inference-server/backend 3f57fb90: backend_input_collector.cc,
backend_output_responder.cc; the kinds as common 83adf7cf's model_config.proto documents them):
a ragged input (``allow_ragged_batch``) reaches the model as one 1-D tensor, each request's elements
flattened and concatenated in batch order; a batch input is computed from its source input's shape in
each request; an output named by a ``BATCH_SCATTER_WITH_INPUT_SHAPE`` batch output is read flat and
handed back in parts shaped like the output's dims, each -1 taken from the source input's dims in
that request; every other output is split by each request's rows (dim 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inferd.config import BatchInput, ModelConfig
from inferd.errors import ModelError
from inferd.runtimes.base import Arrays
from inferd.types import TensorSpec

_DTYPES = {"INT32": np.int32, "FP32": np.float32}


def batch_input_value(kind: str, shapes: Sequence[tuple[int, ...]], datatype: str) -> np.ndarray:
    """The tensor a batch input of ``kind`` holds for requests whose source input has ``shapes``
    (each with its batch dim first), in ``datatype`` (INT32 or FP32)."""
    dtype = _DTYPES[datatype]
    counts = [int(np.prod(shape)) for shape in shapes]  # a request's elements, its batch dim included
    if kind == "BATCH_ELEMENT_COUNT":
        return np.array(counts, dtype=dtype)
    if kind == "BATCH_ACCUMULATED_ELEMENT_COUNT":
        return np.cumsum(counts).astype(dtype)
    if kind == "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO":
        return np.concatenate([[0], np.cumsum(counts)]).astype(dtype)
    if kind == "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE":  # only its shape says something (Triton leaves it uninitialized)
        return np.zeros(max(counts), dtype=dtype)
    items = [shape[1:] for shape in shapes for _ in range(shape[0])]  # each batch item's shape, batch dim aside
    width = len(shapes[0]) - 1
    table = np.array(items, dtype=dtype).reshape(len(items), width)
    if kind == "BATCH_ITEM_SHAPE":
        return table
    if kind == "BATCH_ITEM_SHAPE_FLATTEN":
        return table.reshape(-1)
    raise ValueError(f"unknown batch input kind {kind!r}")


class RaggedBatching:
    """The join and split of one model's batches, from its configuration."""

    def __init__(self, config: ModelConfig) -> None:
        self.ragged = frozenset(t.name for t in config.inputs if t.ragged)
        self.batch_inputs: tuple[BatchInput, ...] = config.batch_inputs
        self.supplied = {name: f"batch input {given.kind}, computed by the server from each batch"
                         for given in config.batch_inputs for name in given.target_names}
        dims = {t.name: t.shape for t in config.outputs}
        # a scattered output -> (its source input, its per-request shape with the batch dim: -1s to fill)
        self.scattered = {name: (output.source_inputs[0], (-1, *dims[name]))
                          for output in config.batch_outputs for name in output.target_names}
        # what clients send and get, where the model's own tensor is flat
        self._client_shapes = {t.name: (-1, *t.shape) for t in config.inputs if t.ragged} | {
            name: shape for name, (_, shape) in self.scattered.items()}

    def client_specs(self, specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        """The model's tensors as clients see them: batch inputs left out (the server's to give), ragged
        inputs and scattered outputs with the batch dim and the configured dims (the model's are 1-D)."""
        return tuple(TensorSpec(spec.name, spec.datatype, self._client_shapes.get(spec.name, spec.shape))
                     for spec in specs if spec.name not in self.supplied)

    def key(self, inputs: Arrays) -> tuple[object, ...]:
        """Requests batch together when their keys are equal: a ragged input's shape does not count."""
        return tuple((name, None if name in self.ragged else array.shape[1:], array.dtype.str)
                     for name, array in inputs.items())

    def join(self, requests: Sequence[Arrays]) -> Arrays:
        """The model's inputs for a batch of ``requests`` (one or more), batch inputs included."""
        joined: Arrays = {}
        for name in requests[0]:
            if name in self.ragged:
                joined[name] = np.concatenate([request[name].reshape(-1) for request in requests])
            else:
                joined[name] = (requests[0][name] if len(requests) == 1
                                else np.concatenate([request[name] for request in requests]))
        for given in self.batch_inputs:
            source = given.source_inputs[0]
            value = batch_input_value(given.kind, [request[source].shape for request in requests], given.datatype)
            for target in given.target_names:
                joined[target] = value
        return joined

    def split(self, outputs: Arrays, requests: Sequence[Arrays], model: str) -> list[Arrays]:
        """Each request's part of the batch's ``outputs``, in order."""
        rows = [int(next(iter(request.values())).shape[0]) for request in requests]
        parts: list[Arrays] = [{} for _ in requests]
        for name, array in outputs.items():
            scatter = self.scattered.get(name)
            if scatter is not None:
                pieces = self._scatter(name, array, scatter, requests, model)
            else:
                pieces = _by_rows(name, array, rows, model)
            for part, piece in zip(parts, pieces, strict=True):
                part[name] = piece
        return parts

    @staticmethod
    def _scatter(name: str, array: np.ndarray, scatter: tuple[str, tuple[int, ...]], requests: Sequence[Arrays],
                 model: str) -> list[np.ndarray]:
        source, template = scatter
        shapes = []
        for request in requests:
            given = request[source].shape
            shapes.append(tuple(given[i] if d == -1 and i < len(given) else d for i, d in enumerate(template)))
        sizes = [int(np.prod(shape)) for shape in shapes]
        flat = array.reshape(-1)
        if flat.size != sum(sizes):
            raise ModelError(f"model '{model}' returned output '{name}' with {flat.size} elements; scattered "
                             f"with the shapes of input '{source}' (batch_output BATCH_SCATTER_WITH_INPUT_SHAPE) "
                             f"its requests need {sum(sizes)}: {[list(s) for s in shapes]}")
        pieces, start = [], 0
        for shape, size in zip(shapes, sizes, strict=True):
            pieces.append(flat[start:start + size].reshape(shape))
            start += size
        return pieces


def _by_rows(name: str, array: np.ndarray, rows: list[int], model: str) -> list[np.ndarray]:
    if len(rows) == 1:  # a request alone gets the output whole, as the batcher's plain split gives it
        return [array]
    total = sum(rows)
    if array.ndim == 0 or array.shape[0] != total:
        raise ModelError(f"model '{model}' returned output '{name}' with shape {list(array.shape)} for a batch "
                         f"of {total} rows; dim 0 must be the batch (or name the output in a batch_output)")
    pieces, start = [], 0
    for size in rows:
        pieces.append(array[start:start + size])
        start += size
    return pieces
