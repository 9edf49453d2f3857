"""Triton's ``reshape``: a tensor whose shape in requests (``dims``) differs from the shape the
model itself takes or gives (``reshape { shape }``), e.g. a [3, 224, 224] image for a model that
wants [1, 3, 224, 224]. The framework runtime is loaded with the model's shapes; this wrapper shows
clients the declared ones and reshapes every input on its way in and every output on its way out
(the batch dimension, when the model batches, stays as it is)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Generator

from inferd.config import ModelConfig, TensorConfig
from inferd.errors import ModelError
from inferd.runtimes.base import Answer, Arrays, Emit, LoadContext, Runtime
from inferd.types import TensorSpec, WorkerStatus


def reshaped(config: ModelConfig) -> bool:
    return any(t.reshape is not None for t in (*config.inputs, *config.outputs))


def model_context(context: LoadContext) -> LoadContext:
    """The context the framework runtime loads with: every reshaped tensor in the model's own shape."""
    def own(tensors: tuple[TensorConfig, ...]) -> tuple[TensorConfig, ...]:
        return tuple(t if t.reshape is None else dataclasses.replace(t, shape=t.reshape) for t in tensors)

    config = dataclasses.replace(context.config, inputs=own(context.config.inputs),
                                 outputs=own(context.config.outputs))
    return dataclasses.replace(context, config=config)


class ReshapedRuntime(Runtime):
    def __init__(self, inner: Runtime, config: ModelConfig, name: str) -> None:
        self.inner = inner
        self.adopt_metadata(inner)
        self.restarts = inner.restarts
        self._name = name
        self._batched = config.max_batch_size > 0
        self._to_model = {t.name: t.reshape for t in config.inputs if t.reshape is not None}
        self._to_client = {t.name: t.shape for t in config.outputs if t.reshape is not None}
        declared = {t.name: t.shape for t in (*config.inputs, *config.outputs) if t.reshape is not None}
        prefix = (-1,) if self._batched else ()
        self.inputs = tuple(_shown(spec, declared, prefix) for spec in inner.inputs)
        self.outputs = tuple(_shown(spec, declared, prefix) for spec in inner.outputs)

    def infer(self, inputs: Arrays) -> Arrays:
        return self._out(self.inner.infer(self._in(inputs)))

    def infer_on(self, lane: int, inputs: Arrays) -> Arrays:
        return self._out(self.inner.infer_on(lane, self._in(inputs)))

    def infer_stream(self, inputs: Arrays, stop: threading.Event) -> Generator[Arrays, None, None]:
        for answer in self.inner.infer_stream(self._in(inputs), stop):
            yield self._out(answer)

    def infer_parts(self, inputs: Arrays, emit: Emit) -> Arrays:
        return self._out(self.inner.infer_parts(self._in(inputs), lambda part: emit(self._out(part))))

    def infer_requests(self, requests: list[Arrays]) -> list[Answer]:
        return [self._answer(answer) for answer in self.inner.infer_requests([self._in(r) for r in requests])]

    def infer_requests_on(self, lane: int, requests: list[Arrays]) -> list[Answer]:
        return [self._answer(answer) for answer in self.inner.infer_requests_on(lane, [self._in(r) for r in requests])]

    def _answer(self, answer: Answer) -> Answer:
        """One request's answer reshaped; an output that does not reshape fails that request alone."""
        if isinstance(answer, Exception):
            return answer
        try:
            return self._out(answer)
        except ModelError as exc:
            return exc

    def _in(self, inputs: Arrays) -> Arrays:
        return {name: array if name not in self._to_model else array.reshape(self._rows(array) + self._to_model[name])
                for name, array in inputs.items()}

    def _out(self, outputs: Arrays) -> Arrays:
        result = {}
        for name, array in outputs.items():
            shape = self._to_client.get(name)
            try:
                result[name] = array if shape is None else array.reshape(self._rows(array) + shape)
            except ValueError:
                raise ModelError(f"model '{self._name}': output '{name}' of shape {list(array.shape)} does not "
                                 f"reshape to its dims {list(shape or ())}") from None
        return result

    def _rows(self, array: object) -> tuple[int, ...]:
        return (array.shape[0],) if self._batched else ()  # type: ignore[attr-defined]

    def lane_losses(self, lane: int) -> int:
        return self.inner.lane_losses(lane)

    def warmup(self) -> None:
        self.inner.warmup()

    def scale(self, count: int) -> None:
        self.inner.scale(count)

    async def drain(self, timeout: float) -> None:
        await self.inner.drain(timeout)

    def unload(self) -> None:
        self.inner.unload()

    def workers(self) -> list[WorkerStatus] | None:
        return self.inner.workers()

    def start_failure(self) -> str:
        return self.inner.start_failure()

    def describe(self) -> str:
        return self.inner.describe()


def _shown(spec: TensorSpec, declared: dict[str, tuple[int, ...]], prefix: tuple[int, ...]) -> TensorSpec:
    shape = declared.get(spec.name)
    return spec if shape is None else dataclasses.replace(spec, shape=prefix + shape)
