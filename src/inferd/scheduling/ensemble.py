"""Ensembles: a DAG of models run inside the server. Each step is an inference request of its own
that goes through the data plane (``run_step``, given by the composition root), so it is checked,
queued, batched with other requests to that model, cached and counted like any other; nothing goes
back to the client between steps. Steps whose inputs are ready run at once."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable

import numpy as np

from inferd.config import EnsembleStep, ModelConfig, ensemble_order
from inferd.errors import ConfigError, InferdError, ModelError, QueueFull
from inferd.runtimes.base import Arrays, Runtime
from inferd.scheduling.scheduler import Scheduler, SchedulerStats
from inferd.types import (
    BatchStatistics,
    CallContext,
    Duration,
    InferRequest,
    InferResponse,
    RequestedOutput,
    Tensor,
    TensorSpec,
    v2_datatype,
)

StepRunner = Callable[[InferRequest], Awaitable[InferResponse]]
# A step's model as it serves now (name, version; -1 = its default), or None when none is ready.
StepModel = Callable[[str, int], Runtime | None]
# The ensembles the running request is inside of, outermost first: a step that is one of them is a cycle.
_ENCLOSING: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("inferd_ensembles", default=())


class EnsembleScheduler(Scheduler):
    """Runs an ensemble's steps in dependency order; at most ``max_inflight`` requests at once."""

    def __init__(self, runtime: Runtime, config: ModelConfig, name: str, run_step: StepRunner,
                 max_inflight: int = 1024, step_model: StepModel | None = None) -> None:
        self.inner = runtime
        self.adopt_metadata(runtime)
        self.takes_request = True  # the data plane hands it the request's parameters and id for its steps
        self.name = name
        self.model = name.rsplit(":", 1)[0]
        self._waves = ensemble_order(config, f"ensemble '{name}'")
        self.steps = tuple(step.model_name for step in config.ensemble)
        self.composed_of = tuple((step.model_name, str(step.model_version) if step.model_version > 0 else None)
                                 for step in config.ensemble)
        self._makers = {tensor: (step.model_name, output) for step in config.ensemble
                        for output, tensor in step.output_map.items()}
        self._step_model = step_model
        if step_model is not None:
            check_steps(self, config, step_model)
        self._run_step = run_step
        self._max_inflight = max_inflight
        self._inflight = 0
        self._executions = 0
        self._inferences = 0
        self._batches: dict[int, Duration] = {}  # an ensemble request's batch size -> requests and their time

    @property
    def instances(self) -> int:
        return self._max_inflight

    @property
    def busy(self) -> int:
        return self._inflight

    def resize(self, count: int) -> None:
        """An ensemble has no instances of its own: its steps' models scale."""

    def statistics(self) -> SchedulerStats:
        batches = tuple(BatchStatistics(rows, Duration(d.count, d.ns)) for rows, d in sorted(self._batches.items()))
        return SchedulerStats(self._max_inflight, self._inflight, 0, self._executions, self._inferences, batches)

    def infer(self, inputs: Arrays) -> Arrays:
        return self.inner.infer(inputs)

    async def infer_async(self, inputs: Arrays, context: CallContext) -> Arrays:
        if self._inflight >= self._max_inflight:
            raise QueueFull(f"ensemble '{self.name}' has {self._max_inflight} requests in flight; retry later")
        self._inflight += 1
        start = time.perf_counter()
        enclosing = _ENCLOSING.set((*_ENCLOSING.get(), self.model))
        try:
            tensors = dict(inputs)
            # whether a tensor's first dimension is a batch's (None: its step's model is not ready now)
            batched: dict[str, bool | None] = dict.fromkeys(inputs, self.max_batch_size > 0)
            for wave in self._waves:
                answers = await asyncio.gather(*(self._step(step, tensors, batched, context) for step in wave))
                for step, answer in zip(wave, answers, strict=True):
                    step_batches = self._step_batches(step)
                    for output in answer.outputs:
                        tensors[step.output_map[output.name]] = output.data
                        batched[step.output_map[output.name]] = step_batches
                    context.timings.queue += answer.timings.queue
                    context.timings.steps[step.model_name] = answer.timings.total
        finally:
            _ENCLOSING.reset(enclosing)
            self._inflight -= 1
        context.timings.compute = time.perf_counter() - start - context.timings.queue
        outputs = {spec.name: self._checked(spec, _as_batched(tensors[spec.name], batched.get(spec.name), spec,
                                                              self.max_batch_size > 0))
                   for spec in self.outputs}
        self._count_success(inputs, context.timings.compute)
        return outputs

    def _count_success(self, inputs: Arrays, compute_s: float) -> None:
        """A request that succeeded is one execution of its batch size (at least 1), as Triton's
        ensemble counts it in the ensemble's batch_stats; failed ones are not counted."""
        first = next(iter(inputs.values()), None)
        rows = first.shape[0] if self.max_batch_size > 0 and first is not None and first.ndim else 1
        self._executions += 1
        self._inferences += rows
        self._batches.setdefault(max(rows, 1), Duration()).add(compute_s)

    def _checked(self, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
        """An output as the ensemble declares it, or the ensemble's error (a 500): a step's model
        changed since the load checked it, or was not loaded then."""
        step, output = self._makers[spec.name]
        made = _datatype(array)
        if made != spec.datatype:
            raise ModelError(f"ensemble '{self.name}' output '{spec.name}' is declared {spec.datatype}, but "
                             f"step '{step}' made it (its output '{output}') as {made}")
        if spec.rank_known and not _fits(array.shape, spec.shape):
            raise ModelError(f"ensemble '{self.name}' output '{spec.name}' is declared shape {list(spec.shape)}, "
                             f"but step '{step}' made it (its output '{output}') of shape {list(array.shape)}")
        return array

    def _step_batches(self, step: EnsembleStep) -> bool | None:
        """Whether the step's model batches (its tensors' first dimension is the batch's); None: not ready."""
        model = self._step_model(step.model_name, step.model_version) if self._step_model is not None else None
        return None if model is None else model.max_batch_size > 0

    async def _step(self, step: EnsembleStep, tensors: Arrays, batched: dict[str, bool | None],
                    context: CallContext) -> InferResponse:
        if step.model_name in _ENCLOSING.get():
            chain = " -> ".join((*_ENCLOSING.get(), step.model_name))
            raise ModelError(f"ensemble '{self.name}' step '{step.model_name}' is an ensemble this request "
                             f"runs inside of (a cycle: {chain}); it was not run")
        self._check_outputs(step)
        model = self._step_model(step.model_name, step.model_version) if self._step_model is not None else None
        specs = {spec.name: spec for spec in model.inputs} if model is not None else {}
        arrays = {model_input: _as_batched(tensors[name], batched.get(name), specs.get(model_input),
                                           model is not None and model.max_batch_size > 0)
                  for model_input, name in step.input_map.items()}
        inputs = [Tensor(model_input, v2_datatype(array.dtype), array) for model_input, array in arrays.items()]
        timeout_us = None
        if context.deadline is not None:
            timeout_us = max(int((context.deadline - time.perf_counter()) * 1e6), 1)
        request = InferRequest(
            model_name=step.model_name, inputs=inputs,
            model_version=str(step.model_version) if step.model_version > 0 else None,
            outputs=[RequestedOutput(name) for name in step.output_map], timeout_us=timeout_us,
            protocol="ensemble", cancelled=context.cancelled, parameters=_step_parameters(context),
            id=context.request_id or None,
            priority=context.priority)  # as Triton's ensemble passes its request's priority to each step
        try:
            return await self._run_step(request)
        except InferdError as exc:  # Triton's words (its clients match the start), then which step
            error = type(exc)(f"in ensemble '{self.model}', {exc.message} (at its step '{step.model_name}')")
            raise error from exc

    def _check_outputs(self, step: EnsembleStep) -> None:
        """A step's mapped outputs exist on its model as it serves now: else the ensemble is wrong
        (a 500 naming it), not the client's request."""
        model = self._step_model(step.model_name, step.model_version) if self._step_model is not None else None
        if model is None:
            return  # not ready: the step's own request says so (404 / 503)
        have = {spec.name for spec in model.outputs}
        for output in step.output_map:
            if output not in have:
                raise ModelError(f"ensemble '{self.name}' step '{step.model_name}' maps output '{output}', "
                                 f"which the model does not have (its outputs: {', '.join(sorted(have))})")


def check_steps(ensemble: EnsembleScheduler, config: ModelConfig, step_model: StepModel) -> None:
    """Load-time checks against the steps' models that serve now (one not ready yet is checked
    by each request instead): no step is the ensemble itself or an ensemble that leads back to
    it, each mapped tensor exists on its model, and each tensor's datatype and shape agree
    wherever it is made and taken. Raises ConfigError naming the tensor, the step and both sides."""
    where = f"ensemble '{ensemble.name}'"
    _check_no_cycle(ensemble, step_model, where)
    batches = ensemble.max_batch_size > 0
    declared = {spec.name: (spec, batches, "the ensemble's input") for spec in ensemble.inputs}
    outputs = {spec.name: spec for spec in ensemble.outputs}
    for step in config.ensemble:
        model = step_model(step.model_name, step.model_version)
        if model is None:
            continue
        specs = {spec.name: spec for spec in model.outputs}
        step_batches = model.max_batch_size > 0
        for output, tensor in step.output_map.items():
            if output not in specs:
                raise ConfigError(f"{where} step '{step.model_name}' maps output '{output}', which the model "
                                  f"does not have (its outputs: {', '.join(sorted(specs))})")
            declared[tensor] = (specs[output], step_batches, f"step '{step.model_name}' output '{output}'")
            if tensor in outputs:
                _agree(where, tensor, (outputs[tensor], batches), "the ensemble declares",
                       (specs[output], step_batches), f"step '{step.model_name}' makes it from its output '{output}'")
    for step in config.ensemble:
        model = step_model(step.model_name, step.model_version)
        if model is None:
            continue
        specs = {spec.name: spec for spec in model.inputs}
        for model_input, tensor in step.input_map.items():
            if model_input not in specs:
                raise ConfigError(f"{where} step '{step.model_name}' maps input '{model_input}', which the model "
                                  f"does not have (its inputs: {', '.join(sorted(specs))})")
            if tensor in declared:
                made, made_batched, by = declared[tensor]
                _agree(where, tensor, (specs[model_input], model.max_batch_size > 0),
                       f"step '{step.model_name}' takes it as '{model_input}'", (made, made_batched), by)


def _check_no_cycle(ensemble: EnsembleScheduler, step_model: StepModel, where: str) -> None:
    """No step leads back to this ensemble: itself, or ensembles (loaded now) whose steps do."""
    path = [ensemble.model]
    seen: set[str] = set()

    def visit(steps: tuple[str, ...]) -> None:
        for name in steps:
            if name == ensemble.model:
                raise ConfigError(f"{where}: its steps form a cycle of models: {' -> '.join((*path, name))}")
            inner = step_model(name, -1)
            if isinstance(inner, EnsembleScheduler) and name not in seen:
                seen.add(name)
                path.append(name)
                visit(inner.steps)
                path.pop()

    visit(ensemble.steps)


def _agree(where: str, tensor: str, first: tuple[TensorSpec, bool], says: str, second: tuple[TensorSpec, bool],
           by: str) -> None:
    """Two sides of a tensor (each a spec and whether its model batches) agree: the datatype, and as
    Triton's, the shapes without the batch dimension or with it (a batching model's ``[-1]`` is a
    non-batching one's ``[1]``: the request converts, see ``_as_batched``)."""
    (one, one_batches), (other, other_batches) = first, second
    if one.datatype != other.datatype:
        raise ConfigError(f"{where}: tensor '{tensor}': {says} {one.datatype}, but {by} as {other.datatype}")
    if one.rank_known and other.rank_known and not _compatible(one.shape, other.shape) and \
            not _compatible(_dims(one, one_batches), _dims(other, other_batches)):
        raise ConfigError(f"{where}: tensor '{tensor}': {says} shape {list(one.shape)}, but {by} "
                          f"of shape {list(other.shape)}")


def _dims(spec: TensorSpec, batches: bool) -> tuple[int, ...]:
    """A tensor's shape without its batch dimension (Triton's config dims)."""
    return spec.shape[1:] if batches else spec.shape


def _as_batched(array: np.ndarray, batched: bool | None, spec: TensorSpec | None, batches: bool) -> np.ndarray:
    """A tensor given to a step (or answered by the ensemble) as Triton's ensemble reshapes one
    between a batching model and a non-batching one (``ReshapeTensorDims``): one without a batch
    dimension that fits the batching side's dims gets a batch of 1; a batch of 1 that does not fit
    the non-batching side's dims loses its batch dimension. Anything else goes as it is."""
    if batched is None or spec is None or not spec.rank_known or batched == batches:
        return array
    dims = _dims(spec, batches)
    if batches:
        return np.expand_dims(array, 0) if _fits(array.shape, dims) else array
    if array.ndim and array.shape[0] == 1 and not _fits(array.shape, dims):
        return array.reshape(array.shape[1:])
    return array


def _compatible(one: tuple[int, ...], other: tuple[int, ...]) -> bool:
    return len(one) == len(other) and all(a < 0 or b < 0 or a == b for a, b in zip(one, other, strict=True))


def _fits(shape: tuple[int, ...], declared: tuple[int, ...]) -> bool:
    return len(shape) == len(declared) and all(d < 0 or d == n for n, d in zip(shape, declared, strict=True))


def _step_parameters(context: CallContext) -> dict[str, object]:
    """The ensemble request's parameters (the client's and the headers forwarded into them), given
    to every step as Triton's ensemble does (``SetParameters``), with its sequence (correlation ID
    and START/END flags), so that a stateful step model sees the sequence it is part of."""
    parameters = dict(context.parameters or {})
    sequence = context.sequence
    if sequence is not None:
        parameters.update(sequence_id=sequence.id, sequence_start=sequence.start, sequence_end=sequence.end)
    return parameters


def _datatype(array: np.ndarray) -> str:
    try:
        return v2_datatype(array.dtype)
    except KeyError:
        return str(array.dtype)
