"""The Runtime contract: what every framework adapter and every scheduler wrapper provides."""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import orjson

from inferd.config import ModelConfig, TensorConfig
from inferd.errors import ConfigError, ModelError
from inferd.types import CallContext, TensorSpec, WorkerStatus, numpy_dtype

Arrays = dict[str, np.ndarray]
Emit = Callable[[Arrays], bool]  # takes one part of an answer; False: nobody reads them any more
Answer = Arrays | Exception  # one request's outputs, or what failed that request alone (infer_requests)

# whether the client of the call this thread runs (one request) has gone away: set by the instance
# pool around the call, and in an instance process around the call it was sent; a runtime that can
# tell its model (Triton's request.is_cancelled()) asks it, a process instance passes it on
_CALL_CANCELLED: ContextVar[Callable[[], bool] | None] = ContextVar("inferd_call_cancelled", default=None)


@contextmanager
def call_cancelled_by(cancelled: Callable[[], bool] | None) -> Iterator[None]:
    """Within: ``call_cancelled()`` is ``cancelled``, the running call's own."""
    token = _CALL_CANCELLED.set(cancelled)
    try:
        yield
    finally:
        _CALL_CANCELLED.reset(token)


def call_cancelled() -> Callable[[], bool] | None:
    """Whether the running call's client has gone away, if the caller can tell (None: it cannot)."""
    return _CALL_CANCELLED.get()


_REQUESTS_CANCELLED: ContextVar[Sequence[Callable[[], bool]] | None] = ContextVar("inferd_requests_cancelled",
                                                                                   default=None)


@contextmanager
def requests_cancelled_by(cancelled: Sequence[Callable[[], bool]] | None) -> Iterator[None]:
    """Within: ``requests_cancelled()`` is ``cancelled``, one per request of the running batch
    handed over apart (``infer_requests``), each its own client's."""
    token = _REQUESTS_CANCELLED.set(cancelled)
    try:
        yield
    finally:
        _REQUESTS_CANCELLED.reset(token)


def requests_cancelled() -> Sequence[Callable[[], bool]] | None:
    """Per request of the running batch: whether its client has gone away (None: nobody can tell)."""
    return _REQUESTS_CANCELLED.get()


class AnswerSink(Protocol):
    """Where one request's answers go when a decoupled model runs several requests at once
    (``infer_streams``); called from any thread."""

    def stopped(self) -> bool:
        """Nobody reads this request's answers any more (its client left, or its deadline passed)."""

    def send(self, outputs: Arrays) -> bool:
        """One answer; blocks while the reader is behind. False: nobody reads them any more."""

    def end(self, error: BaseException | None = None) -> None:
        """The request's last word: done, or failed with ``error``. Only the first call counts."""


# Reserved input name: a sequence model's request as Python models see it (Triton's
# ``correlation_id()`` and ``flags()``), given only to runtimes whose ``takes_sequence`` is true
SEQUENCE_INPUT = "__inferd_sequence__"
SEQUENCE_START, SEQUENCE_END = 1, 2  # Triton's TRITONSERVER_REQUEST_FLAG_SEQUENCE_* bits


def pack_sequence(correlation_id: int | str, flags: int) -> np.ndarray:
    """The sequence input's value: a BYTES pair that crosses to process instances like any tensor."""
    kind = b"i:" if isinstance(correlation_id, int) else b"s:"
    array = np.empty(2, dtype=object)
    array[0], array[1] = kind + str(correlation_id).encode(), str(flags).encode()
    return array


REQUEST_INPUT = "__inferd_request__"  # the request's parameters, outputs, id and timeout, for models that ask
# parameters the server itself consumes, not the model's to see (as Triton keeps them from backends)
_SERVERS_PARAMETERS = frozenset(("sequence_id", "sequence_start", "sequence_end", "timeout", "priority",
                                 "binary_data_output", "triton_enable_empty_final_response"))


def with_request(inputs: Arrays, context: CallContext) -> Arrays:
    """``inputs`` and the request's facts (``REQUEST_INPUT``: a one-element BYTES tensor, so it
    crosses to process instances like any tensor) for a runtime that ``takes_request``: on a call
    of one request, or on each request of a batch handed over apart (``requests_apart``), never on
    a dynamic batcher's joined rows."""
    parameters = {k: v for k, v in (context.parameters or {}).items() if k not in _SERVERS_PARAMETERS}
    facts = np.empty(1, dtype=object)
    facts[0] = orjson.dumps({"parameters": parameters, "outputs": list(context.outputs), "id": context.request_id,
                             "timeout": context.timeout_us})
    return {**inputs, REQUEST_INPUT: facts}


def unpack_request(array: np.ndarray) -> tuple[dict[str, Any], list[str], str, int]:
    """(parameters, requested output names, request id, timeout in microseconds) from ``with_request``'s tensor."""
    facts = orjson.loads(bytes(array[0]))
    return facts["parameters"], facts["outputs"], facts["id"], facts["timeout"]


def unpack_sequence(array: np.ndarray) -> tuple[int | str, int]:
    """(correlation ID, flags) from ``pack_sequence``'s value."""
    text = bytes(array[0]).decode()
    correlation_id: int | str = int(text[2:]) if text.startswith("i:") else text[2:]
    return correlation_id, int(bytes(array[1]))


class Runtime(ABC):
    """One loaded model version. ``infer`` is the whole contract a scheduler needs.

    ``infer`` blocks and may run on any thread; frameworks that release the GIL run several calls
    at once. ``infer_async`` is what the service awaits: wrappers such as the DynamicBatcher
    override it, and are Runtimes themselves.
    """

    platform: str = "unknown"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    max_batch_size: int = 0
    out_of_process: bool = False  # calls wait on another process: never run one on the event loop
    calls_models: bool = False  # calls may wait on other models' answers (BLS): never on the event loop either
    restarts: int = 0  # instances replaced after a crash (process instances)
    signature_name: str = ""  # the served signature's name (TensorFlow); "" = the model has one
    signature_def: bytes = b""  # TensorFlow: the SignatureDef proto, serialized (TF Serving's metadata)
    lenient_rank: bool = False  # True: a tensor of another rank is left to the model (TensorFlow's graphs)
    decoupled: bool = False  # answers a request zero, one or many times (infer_stream)
    takes_sequence: bool = False  # Python models: a sequence model's calls carry SEQUENCE_INPUT
    takes_request: bool = False  # calls of one request carry REQUEST_INPUT (its parameters, outputs, id)
    parts: bool = False  # may answer one request in parts before its answer (infer_parts, INTERMEDIATE_OUTPUT)
    calls_at_once: int = 1  # streams (infer_stream) one instance runs at once: a decoupled async execute's several
    # a dynamic batch reaches it as its requests, each with its own inputs and answer (infer_requests):
    # Triton's execute(requests); the batcher then joins and splits nothing
    requests_apart: bool = False
    # inputs the scheduler gives the model itself (a sequence's controls and implicit state), by name: what
    # each is; a request that sends one is told so
    supplied_inputs: Mapping[str, str] = MappingProxyType({})

    @abstractmethod
    def infer(self, inputs: Arrays) -> Arrays:
        """Run the model on named arrays and return named arrays."""

    def infer_on(self, lane: int, inputs: Arrays) -> Arrays:
        """``infer`` on instance ``lane`` (0 .. count-1) every time: a sequence model's state lives
        in one instance. Runtimes whose instances are one object (threads) just ``infer``."""
        return self.infer(inputs)

    def lane_losses(self, lane: int) -> int:
        """How often instance ``lane`` lost its state (its process crashed, was replaced or
        retired): a sequence started before the count changed lives on no instance any more.
        Runtimes whose instances are one object never lose it."""
        return 0

    def infer_stream(self, inputs: Arrays, stop: threading.Event) -> Generator[Arrays, None, None]:
        """A decoupled model's answers to one request, as they come (blocking; on an instance
        thread). ``stop`` is set once nobody reads them any more: stop producing."""
        yield self.infer(inputs)

    def infer_parts(self, inputs: Arrays, emit: Emit) -> Arrays:
        """``infer`` for a model that may send parts of its answer first (``parts``: a TorchServe
        handler's intermediate answers): each part goes to ``emit`` as it is sent, on this thread,
        and the answer is returned. ``emit`` returns False once nobody reads parts: send no more."""
        return self.infer(inputs)

    def infer_requests(self, requests: list[Arrays]) -> list[Answer]:
        """One execution of several requests (``requests_apart``), each with its own inputs (and
        ``REQUEST_INPUT`` when the runtime ``takes_request``): per request, in order, its outputs
        or the exception that fails it alone; raising fails them all. The default runs each alone."""
        answers: list[Answer] = []
        for inputs in requests:
            try:
                answers.append(self.infer(inputs))
            except Exception as exc:
                answers.append(exc)
        return answers

    def infer_requests_on(self, lane: int, requests: list[Arrays]) -> list[Answer]:
        """``infer_requests`` on instance ``lane`` (a sequence batch: its sequences' states live
        there). Runtimes whose instances are one object just ``infer_requests``."""
        return self.infer_requests(requests)

    def infer_streams(self, requests: list[Arrays], sinks: list[AnswerSink]) -> None:
        """A decoupled model's execution of several requests at once (``requests_apart``: Triton's
        ``execute(requests)`` under dynamic batching): each request's answers go to its own sink,
        which the runtime ends (with its error, if it failed); returns once every sink has ended or
        stopped. Only runtimes that take a batch apart and stream have it (the load refuses the rest)."""
        raise NotImplementedError(f"{type(self).__name__} does not run a batch of decoupled requests")

    async def infer_async(self, inputs: Arrays, context: CallContext) -> Arrays:
        start = time.perf_counter()
        outputs = await asyncio.to_thread(self.infer, inputs)
        context.timings.compute = time.perf_counter() - start
        return outputs

    def adopt_metadata(self, inner: Runtime) -> None:
        """A wrapper (pool, batcher) shows the tensors and platform of what it wraps."""
        self.platform, self.inputs, self.outputs = inner.platform, inner.inputs, inner.outputs
        self.decoupled = inner.decoupled
        self.takes_sequence = inner.takes_sequence
        self.takes_request = inner.takes_request
        self.parts = inner.parts
        self.requests_apart = inner.requests_apart
        self.max_batch_size = inner.max_batch_size
        self.out_of_process = inner.out_of_process
        self.calls_models = inner.calls_models
        self.signature_name, self.signature_def = inner.signature_name, inner.signature_def
        self.lenient_rank = inner.lenient_rank

    def other_signatures(self) -> dict[str, Runtime]:
        """Runtimes for the model's other signatures (TensorFlow), sharing what is loaded."""
        return {}

    def scale(self, count: int) -> None:  # noqa: B027 - optional hook
        """The scheduler now runs ``count`` executions at once; a runtime that owns its instances
        (processes) starts or retires them. In-process runtimes have nothing to do."""

    async def drain(self, timeout: float) -> None:  # noqa: B027 - optional hook
        """Return once nothing queued or running is left (or ``timeout`` passed)."""

    def warmup(self) -> None:  # noqa: B027 - optional hook
        """Called once after load; runtimes with a cold first call override it."""

    def unload(self) -> None:  # noqa: B027 - optional hook
        """Release what the model holds. The default has nothing to release."""

    def workers(self) -> list[WorkerStatus] | None:
        """The processes that run this model's calls; None when they run in the server's own."""
        return None

    @property
    def checks_ready(self) -> bool:
        """The model answers readiness itself (Triton's ``is_ready``): ``model_ready`` asks it."""
        return False

    def model_ready(self) -> bool:
        """The model's own answer to a readiness check (called off the event loop; may block up to
        a few seconds); raises when the check itself failed. True for a model without one."""
        return True

    def start_failure(self) -> str:
        """Why an instance failed to start, while fewer run than asked for ("" when none failed):
        an instance update fails with it instead of waiting for a start that keeps failing."""
        return ""

    def describe(self) -> str:
        return self.platform


@dataclass(frozen=True, slots=True)
class LoadContext:
    """Everything a runtime's ``load`` needs to know about the model it loads."""

    name: str
    version: str
    artifact: Path
    config: ModelConfig
    device: str = "cpu"  # "cpu" or "cuda:N"
    extra: dict[str, object] = field(default_factory=dict)
    instance: int = 0  # which of the model's process instances loads it (0 in process)


def specs_from_config(tensors: tuple[TensorConfig, ...], max_batch_size: int) -> tuple[TensorSpec, ...]:
    """Config shapes omit the batch dim when the model batches; specs carry the full shape."""
    prefix = (-1,) if max_batch_size > 0 else ()
    return tuple(TensorSpec(t.name, t.datatype, prefix + t.shape, optional=t.optional) for t in tensors)


def require_specs(context: LoadContext, what: str,
                  inputless: bool = False) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs from config.toml, for formats that cannot describe themselves.
    ``inputless``: the model may take no input at all (a Triton Python model may)."""
    config = context.config
    if (not config.inputs and not inputless) or not config.outputs:
        missing = "[[input]]" if not config.inputs else "[[output]]"
        raise ConfigError(
            f"model '{context.name}': a {what} does not describe its tensors; config.toml must "
            f"declare every {missing} with name, datatype and shape"
        )
    mbs = config.max_batch_size
    return specs_from_config(config.inputs, mbs), specs_from_config(config.outputs, mbs)


def warmup_inputs(specs: tuple[TensorSpec, ...], rows: int, name: str) -> Arrays:
    """Zeros of every input's declared shape with ``rows`` rows (0: the model has no batch dim)."""
    arrays: Arrays = {}
    for spec in specs:
        shape = list(spec.shape)
        if rows:
            shape = shape[1:]
        if spec.datatype == "BYTES" or not spec.rank_known or any(d < 0 for d in shape):
            raise ConfigError(f"model '{name}': warm-up and compile need fixed input shapes, but input "
                              f"'{spec.name}' is {spec.datatype} {list(spec.shape)}; declare its shape "
                              "in config.toml, or turn [optimization] warmup/compile off")
        arrays[spec.name] = np.zeros(([rows] if rows else []) + shape, dtype=numpy_dtype(spec.datatype))
    return arrays


def warm_up(runtime: Runtime, config: ModelConfig, name: str) -> None:
    """``[optimization] warmup`` for runtimes that only run: zeros through a batch of 1 and of
    max_batch_size (the sizes given, if any) before the first request."""
    optimization = config.optimization
    if not optimization.warmup:
        return
    rows = config.max_batch_size
    if not rows:
        sizes: tuple[int, ...] = (0,)  # no batch dimension: the declared shape, once
    else:
        sizes = optimization.batch_sizes or ((1, rows) if rows > 1 else (1,))
    for size in dict.fromkeys(sizes):
        runtime.infer(warmup_inputs(runtime.inputs, size, name))


def refuse_accelerators(config: ModelConfig, name: str, framework: str, graph_levels: tuple[int, ...]) -> None:
    """config.pbtxt's execution accelerators are onnxruntime's providers: another framework refuses
    them, and the graph levels it cannot apply, rather than load without them."""
    optimization = config.backend_optimization
    if optimization.cpu_accelerators or optimization.gpu_accelerators:
        raise ConfigError(f"model '{name}': optimization.execution_accelerators are applied to onnxruntime models "
                          f"only; {framework} cannot run on them (remove the key)")
    if optimization.graph_level not in graph_levels:
        raise ConfigError(f"model '{name}': optimization.graph.level {optimization.graph_level} is not applied to "
                          f"{framework} models (it takes {', '.join(map(str, graph_levels))}; remove the key)")


def refuse_torch_options(config: ModelConfig, name: str, framework: str) -> None:
    """Options only torch models honour are a load error elsewhere, never silently ignored."""
    optimization = config.optimization
    for key, value in (("precision", optimization.precision), ("channels_last", optimization.channels_last),
                       ("compile", optimization.compile), ("batch_sizes", optimization.batch_sizes)):
        if value:
            raise ConfigError(f"model '{name}': [optimization] {key} is honoured by torch models only; "
                              f"{framework} cannot apply it (convert the model, e.g. to bf16, before "
                              "serving it, or remove the key)")
    for tensor in config.inputs:
        if tensor.image is not None:
            raise ConfigError(f"model '{name}': input '{tensor.name}' has an [image] table, which torch models "
                              f"only decode; {framework} models take the decoded tensor")


def conform_outputs(raw: Arrays, specs: tuple[TensorSpec, ...], model: str, check_shapes: bool = True) -> Arrays:
    """Give each declared output its declared dtype; a missing output is the model's fault.
    ``check_shapes`` false: any shape goes (Triton does not hold a Python model's outputs to its dims)."""
    result: Arrays = {}
    for spec in specs:
        if spec.name not in raw:
            raise RuntimeError(f"model '{model}' did not return output '{spec.name}' "
                               f"(it returned {sorted(raw)})")
        value = raw[spec.name]
        if type(value) is not np.ndarray:
            value = np.asarray(value)
        if check_shapes and spec.rank_known and not _shape_fits(value.shape, spec.shape):
            raise ModelError(f"model '{model}' returned output '{spec.name}' of shape {list(value.shape)}, "
                             f"but it declares shape {list(spec.shape)}")
        if spec.datatype == "BYTES":
            value = _as_bytes_array(value)
        else:
            wanted = numpy_dtype(spec.datatype)
            if value.dtype != wanted:
                try:
                    value = value.astype(wanted)
                except (ValueError, TypeError, OverflowError) as exc:
                    raise ModelError(f"model '{model}' returned output '{spec.name}' as {value.dtype}, which "
                                     f"does not convert to its declared {spec.datatype}: {exc}") from None
        result[spec.name] = value
    return result


def _shape_fits(shape: tuple[int, ...], declared: tuple[int, ...]) -> bool:
    return len(shape) == len(declared) and all(d < 0 or d == n for n, d in zip(shape, declared, strict=True))


def _as_bytes_array(value: np.ndarray) -> np.ndarray:
    if value.dtype == object and all(isinstance(v, bytes) for v in value.flat):
        return value
    out = np.empty(value.shape, dtype=object)
    for index, item in np.ndenumerate(value):
        out[index] = item if isinstance(item, bytes) else str(item).encode("utf-8")
    return out
