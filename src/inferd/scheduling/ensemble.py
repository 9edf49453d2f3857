"""Ensembles: a DAG of models run inside the server. Each step is an inference request of its own
that goes through the data plane (``run_step``, given by the composition root), so it is checked,
queued, batched with other requests to that model, cached and counted like any other; nothing goes
back to the client between steps. Steps whose inputs are ready run at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from inferd.config import EnsembleStep, ModelConfig, ensemble_order
from inferd.errors import InferdError, QueueFull
from inferd.runtimes.base import Arrays, Runtime
from inferd.scheduling.scheduler import Scheduler, SchedulerStats
from inferd.types import CallContext, InferRequest, InferResponse, RequestedOutput, Tensor, v2_datatype

StepRunner = Callable[[InferRequest], Awaitable[InferResponse]]


class EnsembleScheduler(Scheduler):
    """Runs an ensemble's steps in dependency order; at most ``max_inflight`` requests at once."""

    def __init__(self, runtime: Runtime, config: ModelConfig, name: str, run_step: StepRunner,
                 max_inflight: int = 1024) -> None:
        self.inner = runtime
        self.adopt_metadata(runtime)
        self.name = name
        self._waves = ensemble_order(config, f"ensemble '{name}'")
        self._run_step = run_step
        self._max_inflight = max_inflight
        self._inflight = 0
        self._executions = 0
        self._inferences = 0

    @property
    def instances(self) -> int:
        return self._max_inflight

    @property
    def busy(self) -> int:
        return self._inflight

    def resize(self, count: int) -> None:
        """An ensemble has no instances of its own: its steps' models scale."""

    def statistics(self) -> SchedulerStats:
        return SchedulerStats(self._max_inflight, self._inflight, 0, self._executions, self._inferences)

    def infer(self, inputs: Arrays) -> Arrays:
        return self.inner.infer(inputs)

    async def infer_async(self, inputs: Arrays, context: CallContext) -> Arrays:
        if self._inflight >= self._max_inflight:
            raise QueueFull(f"ensemble '{self.name}' has {self._max_inflight} requests in flight; retry later")
        self._inflight += 1
        start = time.perf_counter()
        try:
            tensors = dict(inputs)
            for wave in self._waves:
                answers = await asyncio.gather(*(self._step(step, tensors, context) for step in wave))
                for step, answer in zip(wave, answers, strict=True):
                    for output in answer.outputs:
                        tensors[step.output_map[output.name]] = output.data
                    context.timings.queue += answer.timings.queue
                    context.timings.steps[step.model_name] = answer.timings.total
        finally:
            self._inflight -= 1
        context.timings.compute = time.perf_counter() - start - context.timings.queue
        self._executions += 1
        first = next(iter(inputs.values()), None)
        self._inferences += first.shape[0] if self.max_batch_size > 0 and first is not None and first.ndim else 1
        return {spec.name: tensors[spec.name] for spec in self.outputs}

    async def _step(self, step: EnsembleStep, tensors: Arrays, context: CallContext) -> InferResponse:
        inputs = [Tensor(model_input, v2_datatype(tensors[name].dtype), tensors[name])
                  for model_input, name in step.input_map.items()]
        timeout_us = None
        if context.deadline is not None:
            timeout_us = max(int((context.deadline - time.perf_counter()) * 1e6), 1)
        request = InferRequest(
            model_name=step.model_name, inputs=inputs,
            model_version=str(step.model_version) if step.model_version > 0 else None,
            outputs=[RequestedOutput(name) for name in step.output_map], timeout_us=timeout_us,
            protocol="ensemble", cancelled=context.cancelled)
        try:
            return await self._run_step(request)
        except InferdError as exc:
            error = type(exc)(f"ensemble '{self.name}' step '{step.model_name}': {exc.message}")
            raise error from exc
