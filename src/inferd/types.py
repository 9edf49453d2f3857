"""The internal currency: tensors, requests, responses, metadata, and the v2 datatype table."""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Protocol, cast

import numpy as np

# v2 datatype name -> numpy dtype. BYTES is an object array of ``bytes``; BF16 uses ml_dtypes.
_NUMPY_BY_V2: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
V2_DATATYPES: tuple[str, ...] = (*_NUMPY_BY_V2, "BF16")
# Reserved output name: present in an answer of a runtime that answers in parts (``Runtime.parts``:
# a TorchServe handler's send_intermediate_predict_response) when it is not the request's last
INTERMEDIATE_OUTPUT = "__inferd_intermediate__"
# Reserved output name: present in a decoupled model's answer sent with its final flag (Triton's
# ``send(response, flags=COMPLETE_FINAL)``), which is then the request's last, flagged final
FINAL_OUTPUT = "__inferd_final__"
# Reserved output name: a decoupled model's error response (Triton's ``send(InferenceResponse(error=...))``),
# one answer of its stream, which goes on until the final flag: a BYTES pair, an ErrorCode's value
# and the message (``error_answer`` / ``read_error_answer``)
ERROR_OUTPUT = "__inferd_error__"
# Reserved output name: a response's own parameters (Triton's ``InferenceResponse(parameters=...)``),
# which the client gets as the response's parameters: one BYTES element, their JSON
PARAMETERS_OUTPUT = "__inferd_parameters__"


def error_answer(code: str, message: str) -> np.ndarray:
    """``ERROR_OUTPUT``'s value: it crosses to and from process instances as any BYTES tensor."""
    pair = np.empty(2, dtype=object)
    pair[0], pair[1] = code.encode(), message.encode()
    return pair


def read_error_answer(pair: np.ndarray) -> tuple[str, str]:
    """(code, message) from ``error_answer``'s value."""
    return bytes(pair[0]).decode(), bytes(pair[1]).decode(errors="replace")


def bfloat16() -> np.dtype[Any]:
    """numpy has no bfloat16; ml_dtypes (a dependency of onnx, jax and tensorflow) provides it."""
    try:
        import ml_dtypes
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("BF16 tensors need the ml_dtypes package: pip install ml_dtypes") from exc
    return cast("np.dtype[Any]", np.dtype(ml_dtypes.bfloat16))


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype that holds a v2 datatype. Raises KeyError for an unknown name."""
    if datatype == "BF16":
        return bfloat16()
    return _NUMPY_BY_V2[datatype]


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """The v2 datatype name of a numpy dtype. Raises KeyError when there is none."""
    if dtype.kind in "OSU":
        return "BYTES"
    if dtype.name == "bfloat16":
        return "BF16"
    for name, candidate in _NUMPY_BY_V2.items():
        if candidate == dtype:
            return name
    raise KeyError(str(dtype))


@dataclass(frozen=True, slots=True)
class SharedMemoryRef:
    """Where a tensor's bytes are in a registered shared-memory region (Triton's shared-memory
    extension): the region's name, and the offset and length within it."""

    region: str
    offset: int
    byte_size: int


@dataclass(frozen=True, slots=True)
class SharedMemoryRegion:
    """A registered region: a part of a POSIX shared-memory object (its ``key``, as shm_open names it)."""

    name: str
    key: str
    offset: int
    byte_size: int


@dataclass(slots=True)
class Tensor:
    """A named tensor. ``data`` is a numpy array already in ``shape``; BYTES is dtype object.
    ``shared``: an input whose bytes are still in shared memory (``data`` only shows its shape and
    dtype until the data plane reads them), or an output the data plane wrote there."""

    name: str
    datatype: str
    data: np.ndarray
    shared: SharedMemoryRef | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the protocol's default
    classification: int = 0  # > 0: the top classes instead of the tensor (Triton's classification extension)
    shared: SharedMemoryRef | None = None  # written to this shared-memory region instead of the answer


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str | None
    inputs: list[Tensor]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None: all outputs
    parameters: dict[str, Any] = field(default_factory=dict)
    timeout_us: int | None = None  # per-request deadline, microseconds (Triton's "timeout")
    protocol: str = "kserve_v2"  # which protocol decoded it (a metrics label)
    cancelled: Callable[[], bool] | None = None  # true once the client has gone away
    credentials: str | None = None  # the Authorization header/metadata, for --auth-inference
    priority: int = 0  # Triton's "priority": a dynamic batcher's level, 1 the highest; 0 = the model's default


class ModelCalls(Protocol):
    """What a model may ask of the server that serves it (Triton's BLS: a Python model's requests to
    other models). Blocking, called on the model's own thread, never on the event loop's. The server
    process answers with its data plane (``core/model_calls.py``); an instance process forwards each
    call to its server (``isolation/calls.py``)."""

    def infer(self, request: InferRequest) -> InferResponse:
        """One request's one answer; raises the InferdError a client of the server would get."""

    def start_infer(self, request: InferRequest) -> Future[InferResponse]:
        """``infer`` without waiting (any thread may ask): the answer, or its error, comes in the
        future, and no thread is held meanwhile, so a model may await many calls at once."""

    def infer_stream(self, request: InferRequest) -> Generator[InferResponse, None, None]:
        """Every answer to one request (a decoupled model's zero, one or many); closing the
        generator early cancels the rest."""

    def is_model_ready(self, name: str, version: str | None) -> bool:
        """Whether the model (version) answers requests now."""

    def record_metric(self, update: MetricUpdate) -> None:
        """A change to a metric the model defines, for the server's /metrics (never raises)."""

    def load_model(self, name: str, config: str | None, files: dict[str, bytes] | None = None) -> None:
        """Load (or reload) a model, its configuration's keys replaced by ``config`` (JSON) if given;
        ``files`` (relative path -> content, checked by ``override_file_path``, with ``config``)
        are the model folder it loads from instead of the repository's."""

    def unload_model(self, name: str, unload_dependents: bool) -> None:
        """Unload a model (and the models an ensemble's load brought along, with ``unload_dependents``)."""


@dataclass(frozen=True, slots=True)
class MetricUpdate:
    """One change to a metric a model defines itself (Triton's ``pb_utils.MetricFamily``): the server
    adds it up across the model's instances and shows it on /metrics under the model's names."""

    family: str
    description: str
    kind: str  # "counter" | "gauge" | "histogram"
    labels: tuple[tuple[str, str], ...]
    # "create" (the series exists, at 0) | "hold" (create, and a model instance holds it) | "increment" |
    # "set" | "observe" | "drop" (a holder unloaded: the series goes with the last, as Triton counts them)
    op: str
    value: float = 0.0
    buckets: tuple[float, ...] = ()  # a histogram's upper bounds
    # "triton": a pb_utils.MetricFamily's (/metrics); "torchserve": a handler's context.metrics value
    # (op "update": a counter adds it, a gauge is set to it, a histogram observes it; description: its unit)
    source: str = "triton"


@dataclass(slots=True)
class Timings:
    """Where one request's time went, in seconds."""

    queue: float = 0.0
    compute: float = 0.0
    total: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # an ensemble's steps: model -> its total


@dataclass(frozen=True, slots=True)
class SequenceId:
    """The sequence a request belongs to (Triton's correlation ID, an integer or a string; 0 and ""
    mean none) and whether it starts or ends it."""

    id: int | str
    start: bool = False
    end: bool = False

    def present(self) -> bool:
        return self.id not in (0, "")


@dataclass(slots=True)
class CallContext:
    """What travels with one call down to the scheduler: its deadline, its clock, its client."""

    timings: Timings = field(default_factory=Timings)
    deadline: float | None = None  # time.perf_counter() value; None = no deadline
    cancelled: Callable[[], bool] | None = None  # true once the client has gone away
    sequence: SequenceId | None = None  # a stateful model's request: its sequence (sequence_id parameters)
    # the request as a Python model may ask for it (Triton's request.parameters(), requested_output_names())
    parameters: dict[str, Any] | None = None
    outputs: tuple[str, ...] = ()
    request_id: str = ""
    timeout_us: int = 0  # the request's own timeout (Triton's request.timeout()); 0: none
    priority: int = 0  # the request's priority parameter (0: the model's default level)

    def is_cancelled(self) -> bool:
        return self.cancelled is not None and self.cancelled()


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
    final: bool = True  # the request's last answer (a decoupled model's answers are not, one by one)
    # a decoupled model's error response (an InferdError; no outputs): one answer of its stream, which
    # goes on, as Triton delivers one (gRPC ``error_message``, a generate_stream ``error`` event)
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """What a model takes or gives. ``shape`` is the full shape; -1 is any size (the batch dim
    is -1 when the model batches). ``rank_known`` false: any shape at all (TensorFlow's unknown
    rank; ``shape`` is then ``(-1,)``)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    rank_known: bool = True
    optional: bool = False  # an input a request may leave out (Triton's optional; not in metadata, as Triton's)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    signature_def: bytes = b""  # TensorFlow: the signature's SignatureDef proto as the SavedModel holds it
    stateful: bool = False  # its requests name their sequence (sequence_batching)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
        }


def version_key(version: str) -> tuple[int, tuple[int, ...], str]:
    """Versions are strings that sort numerically: "2" < "10", and TorchServe's "1.0" < "1.10"."""
    parts = version.split(".")
    if all(p.isascii() and p.isdigit() for p in parts):
        return 0, tuple(int(p) for p in parts), ""
    return 1, (), version


class ModelState(enum.Enum):
    """Where one model version is in its life; each protocol names these in its own words."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One row of the repository index. ``version`` is "" for a model none of whose versions is
    known yet (loading, or a broken config.toml)."""

    name: str
    version: str
    state: ModelState
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "state": self.state.value, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class LoadOverride:
    """What a load request overrides (Triton's load parameters): ``config``, a ModelConfig in JSON
    whose keys replace the model's own; ``files``, a model folder (relative path -> content) that
    replaces the repository's for this load."""

    config: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)


def override_file_path(key: str) -> str | None:
    """A load's override file ``file:1/model.onnx`` -> ``1/model.onnx``; None unless it is a
    path that stays inside the model folder (no '..'). A leading '/' is the folder's, as Triton
    joins ``file:/1/model.py`` under the model's folder (its QA loads models so)."""
    if not key.startswith("file:"):
        return None
    path = key[len("file:"):].lstrip("/")
    parts = PurePosixPath(path).parts
    if (not path or "\\" in path or "\0" in path
            or any(part in ("", ".", "..") for part in parts)):
        return None
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One row of the v2 repository index: a known version's state, or a model of the repository
    that is not loaded (state "" before any load; UNAVAILABLE with reason "unloaded" after one)."""

    name: str
    version: str = ""
    state: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "state": self.state, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class SequenceSettings:
    """A TorchServe model's stateful settings as its describe answers them: ``stateful`` is
    model-config.yaml's ``sequenceBatching``; the rest are read only with ``sequenceMaxIdleMSec`` > 0
    (0 otherwise), as TorchServe's Model reads them."""

    stateful: bool = False
    max_idle_ms: int = 0  # sequenceMaxIdleMSec
    timeout_ms: int = 0  # sequenceTimeoutMSec (answered, not applied: a sequence ends by END or idleness)
    max_sequences: int = 0  # maxNumSequence
    max_queued_per_sequence: int = 0  # maxSequenceJobQueueSize


@dataclass(frozen=True, slots=True)
class VersionDescription:
    """What management APIs show of one version: where it came from and how it is scheduled."""

    version: str
    state: ModelState
    reason: str
    source: str
    instances: int
    busy: int
    max_batch_size: int
    max_queue_delay_ms: float
    default: bool
    workers: tuple[WorkerStatus, ...] = ()  # the version's executions as they run now
    settings: WorkerSettings | None = None  # how they were asked for (TorchServe's registration)
    sequences: SequenceSettings = SequenceSettings()  # a TorchServe stateful model's settings


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One execution of a loaded version: a process of its own, or a thread of the server's."""

    id: int
    pid: int
    started: float  # time.time() when it was ready
    ready: bool
    memory_bytes: int = 0
    gpu: int | None = None


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What a TorchServe registration and its scaling asked for (``describe`` shows it)."""

    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay_ms: int
    response_timeout_s: int
    startup_timeout_s: int
    runtime: str = "python"
    device_type: str = "cpu"
    loaded_at_startup: bool = False
    url: str = ""
    sequences: SequenceSettings = SequenceSettings()  # what the archive's model-config.yaml says
    retrying: bool = False  # its workers failed to start and are tried again (describe lists them)


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "extensions": list(self.extensions)}


@dataclass(slots=True)
class Duration:
    """How many times something happened and how long it took altogether (Triton's
    StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class RequestStatistics:
    """What the data plane saw of one model version's requests, in Triton's terms: ``success`` and
    ``fail`` time whole requests; ``queue``, ``compute_input`` (checking and converting inputs),
    ``compute_infer`` (the execution the request was part of) and ``compute_output`` (gathering
    its outputs) split the successful ones; ``cache_hit`` (lookup and copy out) and ``cache_miss``
    (lookup and insertion) time the response cache's part of the requests it saw. ``failures``
    splits ``fail`` by Triton's reasons (REJECTED, CANCELED, BACKEND, OTHER)."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    cached_rows: int = 0  # rows answered from the cache (Triton counts them in inference_count)
    last_inference_ms: int = 0  # milliseconds since the epoch; 0 = never
    failures: dict[str, int] = field(default_factory=dict)  # failed requests by reason

    def count_success(self, total: float, queue: float, input_s: float, infer: float, output_s: float,
                      requests: int = 1) -> None:
        """``requests`` successes that went through together: each waited (``queue``), ran
        (``infer``) and took as long in all (``total``); the checking (``input_s``) and gathering
        (``output_s``) done once for them are theirs together. One call for the five durations."""
        for duration, seconds in ((self.success, total * requests), (self.queue, queue * requests),
                                  (self.compute_input, input_s), (self.compute_infer, infer * requests),
                                  (self.compute_output, output_s)):
            duration.count += requests
            duration.ns += int(seconds * 1e9)


@dataclass(frozen=True, slots=True)
class BatchStatistics:
    """Executions of one batch size and the time they took (the model call as a whole)."""

    batch_size: int
    compute_infer: Duration


@dataclass(frozen=True, slots=True)
class ModelStatistics:
    """One model version's statistics: the requests (data plane) and the executions (scheduler)."""

    name: str
    version: str
    inference_count: int  # rows run (batch sizes added up)
    execution_count: int  # model calls
    requests: RequestStatistics
    batches: tuple[BatchStatistics, ...]
    pending: int = 0  # requests waiting for an instance now (queued, not yet running)
    cached: bool = False  # the response cache answers this model (--cache-size and its response_cache)
