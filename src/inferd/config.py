"""Typed configuration: the server's settings and each model's ``config.toml``.

Both are declared once as frozen dataclasses, documented per field, validated when read, and never
changed after start. ``config.toml`` mirrors Triton's model configuration; every key is checked, and
an error names the file and the key.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from inferd.errors import ConfigError
from inferd.types import V2_DATATYPES

BACKENDS = ("onnx", "torch", "python", "tensorflow", "tflite", "torchserve", "ensemble")
MODEL_CONTROL_MODES = ("none", "poll", "explicit")
REMOTE_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss")  # repositories in object storage, through fsspec
INSTANCE_KINDS = ("cpu", "gpu", "process", "model")
# Triton's KIND_MODEL (inputs on the CPU, the model on the devices it was saved with): the backends
# that honour it as Triton's do (pytorch loads without a device; onnxruntime runs it as KIND_CPU)
MODEL_KIND_BACKENDS = ("torch", "onnx", "python")
PROCESS_BY_DEFAULT = ("python", "torchserve")  # backends that run user Python: isolated unless told
INT32_MAX = 2**31 - 1  # what Triton's ModelConfig (protobuf) holds: counts and sizes are int32,
INT64_MAX = 2**63 - 1  # versions, dims and microseconds 64 bits
UINT32_MAX = 2**32 - 1  # rate_limiter counts and priorities (uint32 in Triton's message)
MAX_DELAY_MS = INT64_MAX / 1000 / 1000  # milliseconds that fit a uint64 of microseconds, with room
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")  # a plain folder name
NAME_RULE = ("a model name is 1 to 128 ASCII letters, digits, '_', '.' and '-', starting with a letter or "
             "digit, without '..'")


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model served from a folder of its own, anywhere (TF Serving's models.config): its versions
    are the integer subfolders of ``base_path``. What models.config says wins over the folder's
    config.toml (version policy, labels); config.toml adds what models.config cannot say."""

    name: str
    base_path: Path
    version_policy: VersionPolicy | None = None  # None: config.toml's (or the default: latest 1)
    version_labels: dict[str, int] | None = None  # None: config.toml's


@dataclass(frozen=True, slots=True)
class BatchingDefaults:
    """Batching for every model whose config.toml has no [dynamic_batching] (TF Serving's
    --enable_batching with its batching parameters file)."""

    max_batch_size: int
    dynamic_batching: DynamicBatching
    instances: int = 1  # executions at once (TF Serving's num_batch_threads)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    model_repository: Path | None = None
    remote_repository: str | None = None  # s3://bucket/prefix (gs://, az://): mirrored into repository_cache
    repository_cache: Path | None = None  # where a remote repository is mirrored (default: ~/.cache/inferd)
    host: str = "127.0.0.1"
    http_port: int = 8000  # 0: HTTP off
    grpc_port: int = 8001  # 0: gRPC off
    model_control: str = "none"  # none | poll | explicit
    control_api: bool = False  # model control over the API in any mode (inferd tfserving --model-control-api)
    labels_for_unavailable_versions: bool = False  # TF Serving's --allow_version_labels_for_unavailable_models
    prefer_tflite: bool = False  # TF Serving's --prefer_tflite_model: a version's model.tflite before its SavedModel
    poll_interval: float = 15.0  # seconds between repository scans in poll mode
    auth_token: str | None = None  # Bearer token for model control (and optionally inference); "" = none
    auth_inference: bool = False  # the token also guards inference and metadata
    allow_client_shm: bool = False  # clients may register system shared-memory regions (Triton's --allow-client-shm)
    drain_timeout: float = 30.0  # seconds SIGTERM waits for queued and running requests
    max_body_bytes: int = 64 * 1024 * 1024  # larger bodies get 413
    max_inflight_bytes: int = 512 * 1024 * 1024  # request bytes held at once, all clients; over: 503
    max_connections: int = 1000  # HTTP connections, and gRPC calls at once
    header_timeout: float = 10.0  # seconds a request's line and headers may take to arrive (408)
    body_timeout: float = 60.0  # seconds a request's body may take to arrive (408)
    large_body_rate: int = 256 * 1024 * 1024  # bytes/s of bodies over 1 MiB, per front-end process; 0: no limit
    log_level: str = "info"
    # operability, as Triton offers: --access-log, --log-format, --strict-readiness, --exit-on-error
    access_log: bool = False  # one log line per HTTP request (method, path, status, time)
    log_format: str = "text"  # text | json (one JSON object per line)
    strict_readiness: bool = False  # ready only while every known model version is READY
    exit_on_error: bool = False  # exit 1 when a model fails to load at start
    model_store: Path | None = None  # TorchServe's folder of .mar archives
    models: tuple[str, ...] = ()  # archives to serve at start: ("all",) or NAME=FILE.mar items
    load_models: tuple[str, ...] = ()  # explicit mode: repository models loaded at start ("*" = all)
    model_load_threads: int = 4  # model versions built at once (Triton's --model-load-thread-count)
    model_sources: tuple[ModelSource, ...] = ()  # models in folders of their own (TF Serving's models.config)
    model_config_file: Path | None = None  # TF Serving's models.config, read again every model_config_poll s
    model_config_poll: float = 0.0  # 0: read once
    batching: BatchingDefaults | None = None  # for models without [dynamic_batching] of their own
    metrics_paths: tuple[str, ...] = ("/metrics",)  # where Prometheus metrics answer
    grpc_socket_path: str | None = None  # also serve gRPC on this Unix socket
    grpc_extra_ports: tuple[int, ...] = ()  # also serve gRPC on these ports (TorchServe's management port)
    grpc_options: tuple[tuple[str, str | int], ...] = ()  # extra gRPC server channel arguments
    grpc_server: str = "inferd"  # "inferd": HTTP/2 on the event loop; "grpcio": grpcio's threaded server
    listen_after_load: bool = False  # open the ports once the models loaded (TF Serving's order)
    server_name: str = "inferd"  # what /v2 server metadata calls the server
    model_name: str | None = None  # the name a single model's folder is served under (KServe's {{.Name}})
    torchserve: TorchServeSettings = field(default_factory=lambda: TorchServeSettings())
    listeners: tuple[Listener, ...] = ()  # more HTTP ports, each with some of the APIs (TorchServe's three)
    pid_file: Path | None = None  # written at start, removed at exit (TorchServe's --stop finds it)
    ready_line: str = ""  # printed too once ready: what another server's scripts wait for ("Model server started.")
    workers: int = 0  # front-end processes (HTTP and gRPC) before the one that owns the models; 0: one process
    cache_size: int = 0  # bytes of the response cache (models with [response_cache] enable); 0 = off
    batch_wait: str = "work-conserving"  # a dynamic batcher's wait (BATCH_WAITS), for models that set none
    rate_limit: str = "off"  # Triton's --rate-limit: "execution_count" enforces instance groups' rate_limiter
    rate_limit_resources: tuple[ResourceCount, ...] = ()  # Triton's --rate-limit-resource, in the order given
    # Triton's trace extension (--trace-config): the global trace settings the server starts with
    trace_level: tuple[str, ...] = ()  # () = OFF; ("TIMESTAMPS",)
    trace_rate: int = 1000  # every N-th request is traced
    trace_count: int = -1  # traces still to take; -1: no end
    trace_log_frequency: int = 0  # traces per rolled file <trace_file>.<n>; 0: one file, written at the stop
    trace_file: str = ""
    # Triton's --http-restricted-api / --grpc-restricted-protocol: API groups answering one header's callers only
    http_restrictions: tuple[ApiRestriction, ...] = ()
    grpc_restrictions: tuple[ApiRestriction, ...] = ()
    # Triton's --http-header-forward-pattern / --grpc-header-forward-pattern: matching headers become parameters
    http_header_forward_pattern: str = ""
    grpc_header_forward_pattern: str = ""

    def __post_init__(self) -> None:
        if self.auth_token is not None and not self.auth_token.strip():  # INFERD_AUTH_TOKEN= declared, left empty
            object.__setattr__(self, "auth_token", None)  # no token: model control stays loopback-only
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ConfigError(f"--model-control must be one of {MODEL_CONTROL_MODES}")
        if self.grpc_server not in ("inferd", "grpcio"):
            raise ConfigError(f"--grpc-server must be inferd or grpcio, not {self.grpc_server!r}")
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0..65535, got {port}")
        loopback = self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")
        guarded = self.auth_token or self.torchserve.key_file is not None
        if (self.model_control == "explicit" or self.control_api) and not loopback and not guarded:
            flag = "--model-control-api" if self.control_api else f"--model-control {self.model_control}"
            raise ConfigError(f"{flag} on {self.host} (beyond loopback) needs --auth-token or INFERD_AUTH_TOKEN")
        if self.auth_inference and not self.auth_token:
            raise ConfigError("--auth-inference needs --auth-token (or INFERD_AUTH_TOKEN)")
        if self.models and self.model_store is None:
            raise ConfigError("--models needs --model-store (the folder that holds the archives)")
        if self.model_load_threads < 1:
            raise ConfigError(f"--model-load-thread-count must be >= 1 (versions built at once), "
                              f"got {self.model_load_threads}")
        if self.rate_limit not in RATE_LIMIT_MODES:
            raise ConfigError(f"--rate-limit must be one of {', '.join(RATE_LIMIT_MODES)}, got {self.rate_limit!r}")
        if self.batch_wait not in BATCH_WAITS:
            raise ConfigError(f"--batch-wait must be one of {', '.join(BATCH_WAITS)}, got {self.batch_wait!r}")
        if self.cache_size < 0:
            raise ConfigError(f"--cache-size must be >= 0 bytes (0 = no cache), got {self.cache_size}")
        for flag, value in (("--max-body-size", self.max_body_bytes), ("--max-inflight-size", self.max_inflight_bytes),
                            ("--max-connections", self.max_connections)):
            if value <= 0:
                raise ConfigError(f"{flag} must be positive, got {value}")
        if self.max_inflight_bytes < self.max_body_bytes:
            raise ConfigError(f"--max-inflight-size ({self.max_inflight_bytes}) must hold at least one body "
                              f"of --max-body-size ({self.max_body_bytes})")
        for flag, seconds in (("--drain-timeout", self.drain_timeout), ("--header-timeout", self.header_timeout),
                              ("--body-timeout", self.body_timeout), ("--poll-interval", self.poll_interval)):
            if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and flag != "--drain-timeout"):
                raise ConfigError(f"{flag} must be a finite number of seconds > 0, got {seconds}")
        if self.large_body_rate < 0:
            raise ConfigError("--large-body-rate must be 0 (no limit) or a size per second, "
                              f"got {self.large_body_rate}")
        if not 0 <= self.workers <= 256:
            raise ConfigError(f"--workers must be 0..256, got {self.workers}")
        if self.max_connections < self.workers:
            raise ConfigError(f"--max-connections ({self.max_connections}) must be at least --workers "
                              f"({self.workers}): each worker takes its share of the connections")
        if self.workers and (self.listeners or self.grpc_socket_path or self.grpc_extra_ports):
            raise ConfigError("--workers serves --http-port and --grpc-port; --metrics-port, TorchServe's separate "
                              "addresses and a gRPC Unix socket are served by one process (leave --workers out)")
        self._check_trace()
        header_pattern(self.http_header_forward_pattern, "--http-header-forward-pattern")
        header_pattern(self.grpc_header_forward_pattern, "--grpc-header-forward-pattern")
        if self.remote_repository is not None and self.remote_repository.split("://")[0] not in REMOTE_SCHEMES:
            raise ConfigError(f"model repository {self.remote_repository}: remote repositories are "
                              f"{'://, '.join(REMOTE_SCHEMES)}:// URLs")
        if self.model_name is not None and not (MODEL_NAME.match(self.model_name) and ".." not in self.model_name):
            raise ConfigError(f"--model-name must be a plain name (letters, digits, '_', '.', '-'), "
                              f"got {self.model_name!r}")

    def _check_trace(self) -> None:
        if self.trace_level and not self.trace_file:
            raise ConfigError("--trace-config level=TIMESTAMPS needs a file to write the traces to: "
                              "--trace-config triton,file=PATH")
        if self.trace_level and self.workers:
            raise ConfigError("--trace-config level=TIMESTAMPS is not supported with --workers (a request is "
                              "answered across two processes); serve without --workers to trace")
        for flag, value, low in (("rate", self.trace_rate, 0), ("count", self.trace_count, -1),
                                 ("log-frequency", self.trace_log_frequency, 0)):
            if not low <= value <= 2**32 - 1:
                raise ConfigError(f"--trace-config {flag} must be an integer >= {low}, got {value}")
        if self.trace_level and self.trace_rate == 0:
            raise ConfigError("--trace-config rate must be > 0 (every N-th request is traced), got 0")


@dataclass(frozen=True, slots=True)
class TorchServeSettings:
    """TorchServe's model-management settings (``config.properties`` under ``inferd torchserve``)."""

    allowed_urls: tuple[str, ...] = ()  # regexes of URLs POST /models may download; () = the model store only
    default_workers: int = 0  # workers of an archive registered without initial_workers (TorchServe: 0)
    startup_workers: int = 1  # workers of each archive served from the start (--models)
    response_timeout_s: int = 120
    startup_timeout_s: int = 120
    models: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)  # config.properties' models
    model_api: bool = True  # False: registering and unregistering answer 405 (enable_model_api=false)
    workflow_store: Path | None = None  # where POST /workflows finds .war files (None: the model store)
    key_file: Path | None = None  # token authorization: TorchServe's keys, kept in this key_file.json; None: off
    token_expiration_min: float = 60.0  # how long a management or inference key lasts (token_expiration_min)
    # ts_header_key_sequence_id, _start, _end: the headers a stateful request's sequence travels in
    sequence_headers: tuple[str, str, str] = ("ts_request_sequence_id", "ts_request_sequence_start",
                                              "ts_request_sequence_end")
    # handlers' model metrics: metrics_mode (log | prometheus | legacy; "off" under inferd serve), metrics_config's
    # model_metrics, model_metrics_auto_detect (observability/torchserve_model_metrics.py)
    metrics_mode: str = "off"
    metrics_config: Path | None = None
    model_metrics_auto_detect: bool = False
    system_metrics: bool = True  # not disable_system_metrics: the host's gauges are read (compat/torchserve_logs.py)
    # config snapshots (compat/torchserve_snapshots.py): their folder (None: --ncs), the config.properties
    # lines they repeat, and the models a snapshot the server started from restores
    snapshots: Path | None = None
    snapshot_properties: dict[str, str] = field(default_factory=dict)
    restore: dict[str, dict[str, dict[str, object]]] = field(default_factory=dict)


LISTENER_APIS = ("inference", "management", "metrics")


@dataclass(frozen=True, slots=True)
class Listener:
    """One more HTTP address serving some of TorchServe's APIs (``inference_address``,
    ``management_address``, ``metrics_address``)."""

    host: str
    port: int
    apis: tuple[str, ...]


IMAGE_FORMATS = ("jpeg",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's examples' normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An input's ``image`` table: clients send encoded images (BYTES, one per row); the model gets
    them decoded (on its GPU when it has one), the shorter side resized to ``resize`` (bilinear,
    antialiased), centre-cropped to ``crop``, scaled to [0, 1] and normalised: float32 N×3×crop×crop."""

    format: str = "jpeg"
    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True, slots=True)
class TensorConfig:
    name: str
    datatype: str
    shape: tuple[int, ...]  # without the batch dim when max_batch_size > 0; -1 = any size
    format: str = ""  # config.pbtxt's image layout hint (FORMAT_NCHW, FORMAT_NHWC), shown, not used
    label_filename: str = ""  # an output's class labels, one a line, in the model's folder
    labels: tuple[str, ...] = ()  # read from label_filename when the configuration is read
    image: ImageInput | None = None  # an input of encoded images the runtime decodes (torch models)
    reshape: tuple[int, ...] | None = None  # Triton's reshape: the model's own shape (batch dim aside)
    ragged: bool = False  # Triton's allow_ragged_batch: requests of any shape batch, the model gets them flat, joined
    optional: bool = False  # Triton's optional input: a request may leave it out


# Triton's BatchInput kinds (model_config.proto): what the batcher computes from a batch's requests
BATCH_INPUT_KINDS = ("BATCH_ELEMENT_COUNT", "BATCH_ACCUMULATED_ELEMENT_COUNT",
                     "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE",
                     "BATCH_ITEM_SHAPE", "BATCH_ITEM_SHAPE_FLATTEN")
BATCH_OUTPUT_KINDS = ("BATCH_SCATTER_WITH_INPUT_SHAPE",)


@dataclass(frozen=True, slots=True)
class BatchInput:
    """A model input the dynamic batcher computes from each batch (Triton's batch_input)."""

    kind: str  # one of BATCH_INPUT_KINDS
    target_names: tuple[str, ...]  # the model inputs that get it
    datatype: str  # INT32 or FP32
    source_inputs: tuple[str, ...]  # the request input it is computed from (exactly one)


@dataclass(frozen=True, slots=True)
class BatchOutput:
    """How a model output of a ragged batch goes back to its requests (Triton's batch_output)."""

    kind: str  # one of BATCH_OUTPUT_KINDS
    target_names: tuple[str, ...]  # the outputs split so
    source_inputs: tuple[str, ...]  # the input whose per-request shape each request's part takes (exactly one)


TIMEOUT_ACTIONS = ("reject", "delay")  # Triton's ModelQueuePolicy.TimeoutAction REJECT, DELAY
# when a free instance takes a batch short of a preferred size: "work-conserving" at once while every
# instance is idle (inferd's default); "delay" only once the oldest request waited max_queue_delay (Triton's)
BATCH_WAITS = ("work-conserving", "delay")
BATCH_WAIT_PARAMETER = "inferd.batch_wait"  # config.pbtxt's spelling of batch_wait, any backend


def batch_waits(own: str, parameters: Mapping[str, str], server: str) -> bool:
    """Whether a batcher waits as Triton's ("delay"): its table's own batch_wait, else the model's
    inferd.batch_wait parameter, else the server's --batch-wait."""
    return (own or parameters.get(BATCH_WAIT_PARAMETER) or server) == "delay"


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """One queue's rules (Triton's ModelQueuePolicy): the default queue's, or a priority level's."""

    max_queue_size: int = 1024  # a full queue answers 503 at once
    default_timeout_ms: float = 0.0  # 0 = no deadline
    allow_timeout_override: bool = False  # a request's own timeout may shorten default_timeout_ms (Triton's)
    timeout_action: str = "reject"  # at the timeout: "reject" fails the request; "delay" moves it behind
    #                                 the requests of its level (and the levels above) that are in time


@dataclass(frozen=True, slots=True)
class DynamicBatching:
    max_queue_delay_ms: float = 0.0  # longest a request waits for company once an instance is free
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024  # the default queue policy: every queue's without a policy of its own
    default_timeout_ms: float = 0.0
    allow_timeout_override: bool = False
    timeout_action: str = "reject"
    priority_levels: int = 0  # > 0: a queue per level, 1 the highest; a batch takes the highest levels first
    default_priority_level: int = 0  # the level of a request without a priority (or 0, or one above the levels)
    priority_queue_policy: dict[int, QueuePolicy] = field(default_factory=dict)  # a level's own policy
    batch_wait: str = ""  # one of BATCH_WAITS (config.toml's); "": config.pbtxt's parameter, else --batch-wait

    def waits(self, parameters: Mapping[str, str], server: str) -> bool:
        """Whether batches wait as Triton's ("delay"): this table's batch_wait, else the model's
        inferd.batch_wait parameter, else the server's --batch-wait."""
        return batch_waits(self.batch_wait, parameters, server)

    @property
    def default_policy(self) -> QueuePolicy:
        return QueuePolicy(self.max_queue_size, self.default_timeout_ms, self.allow_timeout_override,
                           self.timeout_action)

    def policy(self, level: int) -> QueuePolicy:
        """A priority level's queue policy: its own, else the default one."""
        return self.priority_queue_policy.get(level) or self.default_policy

    def level_of(self, priority: int) -> int:
        """The level a request's ``priority`` parameter asks for, as Triton's InferenceRequest::SetPriority
        resolves it: 0, or a level the model does not have, is the default level. Without levels: 0, the
        one queue."""
        if not self.priority_levels:
            return 0
        return priority if 0 < priority <= self.priority_levels else self.default_priority_level


SEQUENCE_CONTROLS = ("START", "END", "READY", "CORRID")  # Triton's CONTROL_SEQUENCE_<kind>
CORRID_DATATYPES = ("UINT64", "INT64", "UINT32", "INT32", "BYTES")


@dataclass(frozen=True, slots=True)
class SequenceControl:
    """A tensor the sequence batcher gives the model with every request (Triton's control_input):
    START, END and READY carry ``false_true[1]`` when the request starts or ends its sequence (READY:
    always, one request per execution), else ``false_true[0]``; CORRID carries the sequence's id."""

    name: str
    kind: str  # one of SEQUENCE_CONTROLS
    datatype: str = "INT32"  # START/END/READY: INT32, FP32 or BOOL; CORRID: one of CORRID_DATATYPES
    false_true: tuple[float, float] = (0, 1)


@dataclass(frozen=True, slots=True)
class InitialState:
    """A sequence's first state (Triton's initial_state): zeros, or a file of the model folder's
    ``initial_state/`` in Triton's raw layout (row-major), whose bytes are read as the model loads."""

    name: str
    datatype: str
    dims: tuple[int, ...]  # fixed sizes, without the batch dim
    source: str = "zero"  # "zero" | "file"
    file: str = ""
    data: bytes = b""  # the file's bytes, once read


@dataclass(frozen=True, slots=True)
class SequenceState:
    """An implicit state (Triton's sequence_batching.state): the server keeps, per sequence, what
    the model answered as ``output_name`` and feeds it back as ``input_name`` with the sequence's next
    request; the client never sends or sees either."""

    input_name: str
    output_name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dim; -1 = any size (the state may change shape)
    initial: InitialState | None = None  # None: zeros, each -1 dim as 1 (Triton's: unset memory of that shape)
    same_buffer: bool = False  # Triton's use_same_buffer_for_input_output: a memory hint; answers are the same

    def start_shape(self) -> tuple[int, ...]:
        """The state's shape at a sequence's start, without the batch dim."""
        if self.initial is not None:
            return self.initial.dims
        return tuple(1 if d < 0 else d for d in self.dims)


@dataclass(frozen=True, slots=True)
class SequenceBatching:
    """Stateful models (Triton's sequence_batching): every request names its sequence
    (``sequence_id``, ``sequence_start``, ``sequence_end``); one sequence's requests run in order on
    one instance; a sequence idle longer than ``max_sequence_idle_us`` is forgotten."""

    max_sequence_idle_us: int = 1_000_000  # Triton's default
    controls: tuple[SequenceControl, ...] = ()
    strategy: str = ""  # Triton's "direct" | "oldest" as the file named it; "": none named (Triton's default, direct)
    states: tuple[SequenceState, ...] = ()  # implicit state, kept by the server per sequence
    # TorchServe's sequenceBatching: a sequence starts with its first request (no START flag), as its job groups do
    implicit_start: bool = False
    # TorchServe's maxNumSequence and maxSequenceJobQueueSize: sequences live at once, and a sequence's requests
    # waiting behind its running one; a request beyond either is refused (0: no limit, as Triton)
    max_sequences: int = 0
    max_queued_per_sequence: int = 0
    # TorchServe's sequenceTimeoutMSec: a sequence is forgotten once idle after this long since it started,
    # however recently it was used (0: no limit)
    max_sequence_lifetime_us: int = 0
    # how a model that batches combines its sequences (Triton's direct and oldest fields; 0: not set)
    max_queue_delay_us: int = 0  # direct and oldest: longest a ready request waits for a fuller batch
    minimum_slot_utilization: float = 0.0  # direct: the share of slots ready that runs at once
    max_candidate_sequences: int = 0  # oldest: sequences an instance batches from (0: max_batch_size)
    preferred_batch_sizes: tuple[int, ...] = ()  # oldest
    preserve_ordering: bool = False  # oldest: answers leave in the order the requests came, across sequences
    batch_wait: str = ""  # one of BATCH_WAITS (config.toml's); "": config.pbtxt's parameter, else --batch-wait

    def waits(self, parameters: Mapping[str, str], server: str) -> bool:
        """Whether a free instance holds a batch for max_queue_delay as Triton's strategies do ("delay")."""
        return batch_waits(self.batch_wait, parameters, server)


@dataclass(frozen=True, slots=True)
class RateResource:
    """One resource an instance holds while it executes (Triton's rate_limiter ``resources``)."""

    name: str
    count: int
    shared: bool = False  # Triton's ``global``: one count for the whole server, not one per device


@dataclass(frozen=True, slots=True)
class RateLimit:
    """An instance group's ``rate_limiter``: what each of its executions holds under ``--rate-limit
    execution_count`` (scheduling/ratelimit.py), and its priority there (0 counts as 1; priority 2
    gets half the turns of priority 1). With ``--rate-limit off`` it is answered back and changes nothing."""

    resources: tuple[RateResource, ...] = ()
    priority: int = 0


@dataclass(frozen=True, slots=True)
class ResourceCount:
    """``--rate-limit-resource NAME:COUNT[:DEVICE]``: how many of a resource the server has, on one
    device or (device None) on each; a global resource takes the largest count given for its name."""

    name: str
    count: int
    device: int | None = None


RATE_LIMIT_MODES = ("off", "execution_count")

# Triton's API groups a front end may restrict to callers carrying one header (--http-restricted-api,
# --grpc-restricted-protocol)
RESTRICTABLE_APIS = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
                     "statistics", "trace", "logging")
GRPC_RESTRICTION_PREFIX = "triton-grpc-protocol-"  # what Triton puts before a gRPC restriction's key


@dataclass(frozen=True, slots=True)
class ApiRestriction:
    """One restricted API group: it answers only requests whose ``header`` is ``value``."""

    api: str
    header: str
    value: str


def header_pattern(pattern: str, flag: str) -> re.Pattern[str] | None:
    """``--http-header-forward-pattern`` / ``--grpc-header-forward-pattern``: found anywhere in a
    header's name, case-insensitively (as Triton prefixes ``(?i)``) unless it starts with ``(?-i)``."""
    if not pattern:
        return None
    sensitive = pattern.startswith("(?-i)")
    try:
        return re.compile(pattern[5:] if sensitive else pattern, 0 if sensitive else re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"{flag} {pattern!r} is not a regular expression: {exc}") from None


def parse_restrictions(items: list[str], flag: str, what: str, prefix: str = "") -> tuple[ApiRestriction, ...]:
    """``--http-restricted-api`` / ``--grpc-restricted-protocol`` items, ``<api>[,<api>...]:<key>=<value>``,
    as Triton reads them: each API in one group only; gRPC keys get Triton's metadata prefix."""
    restrictions: dict[str, ApiRestriction] = {}
    for item in items:
        apis, colon, setting = item.partition(":")
        key, equals, value = setting.partition("=")
        if not colon or not apis or not equals or not key:
            raise ConfigError(f"{flag} option format is '<{what}s>:<key>=<value>', got {item!r}")
        for api in apis.split(","):
            if api not in RESTRICTABLE_APIS:
                raise ConfigError(f"unknown restricted {what} '{api}' (one of {', '.join(RESTRICTABLE_APIS)})")
            if api in restrictions:
                raise ConfigError(f"restricted {what} '{api}' can not be specified in multiple config groups")
            restrictions[api] = ApiRestriction(api, (prefix + key).lower(), value)
    return tuple(restrictions.values())


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    count: int = 1  # executions of the model that may run at once
    kind: str = ""  # cpu | gpu | process | model; "" = process for Python models and handlers, else cpu
    gpus: tuple[int, ...] = ()
    # process: a call not answered by then kills the instance; 0 = no limit (a config.pbtxt model's, as Triton's)
    response_timeout_s: float = 120.0
    memory_limit_mb: int = 0  # process: resident memory beyond this restarts the instance; 0 = none
    rate_limiter: RateLimit | None = None  # Triton's rate_limiter section; None: the group has none

    def resolved_kind(self, backend: str) -> str:
        return self.kind or ("process" if backend in PROCESS_BY_DEFAULT else "cpu")

    @property
    def instances(self) -> int:
        """Executions at once: ``count`` on each listed GPU (as Triton counts), else ``count``."""
        return self.count * len(self.gpus) if self.kind == "gpu" and self.gpus else self.count


PRECISIONS = ("bf16", "fp16")
COMPILERS = ("torch_compile", "cuda_graphs")


@dataclass(frozen=True, slots=True)
class WarmupInput:
    """One input of a warm-up sample: zeros, random values, or a file's raw bytes."""

    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dimension
    source: str  # "zero" | "random" | "file"
    file: str = ""  # relative to the model folder's warmup/


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """Triton's model_warmup: a request run ``count`` times through each instance at load."""

    name: str
    batch_size: int
    count: int
    inputs: tuple[WarmupInput, ...]


@dataclass(frozen=True, slots=True)
class Optimization:
    """``[optimization]``: how a model runs, never what it computes (beyond the precision asked for).
    Torch models honour every key; ONNX and TensorFlow only ``warmup`` (others are a load error)."""

    precision: str = ""  # "" = as saved; "bf16" | "fp16": module and float inputs cast, outputs cast back
    channels_last: bool = False  # 4-D float inputs and the module in NHWC memory order
    compile: str = ""  # "" | "torch_compile" | "cuda_graphs": each of batch_sizes compiled or captured
    batch_sizes: tuple[int, ...] = ()  # compile: the sizes to build; a batch is padded up to the nearest
    warmup: bool = False  # run zeros through every batch size at load, so the first request is not slow

    @property
    def enabled(self) -> bool:
        return self != Optimization()


@dataclass(frozen=True, slots=True)
class Accelerator:
    """One of config.pbtxt's ``optimization.execution_accelerators``: for onnxruntime, an execution
    provider ("openvino" on the CPU; "tensorrt" or "cuda" on a GPU) and its options."""

    name: str
    parameters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class BackendOptimization:
    """config.pbtxt's ``optimization``, as Triton's backends read it. inferd applies onnxruntime's graph
    level and execution accelerators; the rest (priority, pinned memory, TensorRT's CUDA graphs) does
    nothing on a CPU and is kept as written (``answer``, the message as JSON) to be answered back."""

    graph_level: int = 0  # Triton's: 0 every optimization, -1 basic, 1 basic and extended, 2 none
    cpu_accelerators: tuple[Accelerator, ...] = ()
    gpu_accelerators: tuple[Accelerator, ...] = ()
    answer: str = ""


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    latest: int | None = 1
    all: bool = False
    specific: tuple[int, ...] = ()

    def choose(self, available: list[int]) -> list[int]:
        """The versions this policy serves, from the ones on disk (ascending)."""
        if self.all:
            return list(available)
        if self.specific:
            return [v for v in available if v in self.specific]
        return list(available)[-(self.latest or 1):]


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    """One step of an ensemble (Triton's ``ensemble_scheduling.step``): a model run on the
    ensemble's tensors. ``input_map``: the model's input -> the ensemble tensor it takes;
    ``output_map``: the model's output -> the ensemble tensor it becomes."""

    model_name: str
    model_version: int = -1  # -1: the model's default (newest ready) version
    input_map: dict[str, str] = field(default_factory=dict)
    output_map: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    backend: str | None = None  # inferred from the artifact when absent
    max_batch_size: int = 0  # 0: no batch dimension; >0: dim 0 is the batch, at most this many rows
    intra_op_threads: int = 0  # threads inside one execution; 0 = the framework's default
    dynamic_batching: DynamicBatching | None = None  # present = batching on
    instance_group: InstanceGroup = field(default_factory=InstanceGroup)
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    version_labels: dict[str, int] = field(default_factory=dict)
    inputs: tuple[TensorConfig, ...] = ()
    outputs: tuple[TensorConfig, ...] = ()
    parameters: dict[str, str] = field(default_factory=dict)  # config.pbtxt's: for the model's own code
    source: str = ""  # the file it was read from ("" = none: everything inferred)
    handler: str = ""  # a TorchServe archive's handler, overriding its manifest's (registration's handler=)
    response_cache: bool = False  # identical requests answered from the server's cache (--cache-size)
    ensemble: tuple[EnsembleStep, ...] = ()  # backend "ensemble": its steps, in any order (a DAG)
    decoupled: bool = False  # zero, one or many answers per request ([model_transaction_policy])
    sequence_batching: SequenceBatching | None = None  # present = a stateful model fed by sequences
    optimization: Optimization = field(default_factory=Optimization)
    warmup_samples: tuple[WarmupSample, ...] = ()  # config.pbtxt's model_warmup: run at load, before ready
    default_model_filename: str = ""  # the artifact's name in each version folder ("": model.onnx, model.pt, ...)
    backend_optimization: BackendOptimization = field(default_factory=BackendOptimization)  # config.pbtxt's
    batch_inputs: tuple[BatchInput, ...] = ()  # config.pbtxt's batch_input: computed per batch (ragged batching)
    batch_outputs: tuple[BatchOutput, ...] = ()  # config.pbtxt's batch_output: outputs scattered per request

    @property
    def ragged(self) -> bool:
        """Whether the dynamic batcher joins and splits this model's batches Triton's ragged way."""
        return bool(self.batch_inputs or self.batch_outputs or any(t.ragged for t in self.inputs))


def check_model_config(config: ModelConfig, where: str) -> ModelConfig:
    """The rules between keys, whichever file (or override) the configuration came from."""
    batching = config.dynamic_batching
    if batching is not None and config.max_batch_size == 0:
        raise ConfigError(f"{where}: key 'dynamic_batching' needs max_batch_size > 0 (the batch dimension)")
    if batching and any(size > config.max_batch_size for size in batching.preferred_batch_sizes):
        raise ConfigError(f"{where}: key 'dynamic_batching.preferred_batch_sizes' "
                          f"must not exceed max_batch_size ({config.max_batch_size})")
    if batching:
        check_priority_levels(batching, where)
    if BATCH_WAIT_PARAMETER in config.parameters and batching is None and config.sequence_batching is None:
        raise ConfigError(f"{where}: parameter '{BATCH_WAIT_PARAMETER}' needs dynamic_batching or sequence_batching "
                          "(it says how that batcher waits)")
    if config.instance_group.gpus and config.instance_group.kind != "gpu":
        raise ConfigError(f"{where}: [instance_group] key 'gpus' needs kind = \"gpu\"")
    if config.max_batch_size == 0 and any(t.image for t in config.inputs):
        raise ConfigError(f"{where}: an input with [image] needs max_batch_size > 0 (the model gets N×3×H×W)")
    for what, tensors in (("input", config.inputs), ("output", config.outputs)):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: {what} names must be unique, got {names}")
    if config.decoupled:
        for clash, present in (("response_cache", config.response_cache),
                               ("platform \"ensemble\"", config.backend == "ensemble")):
            if present:
                raise ConfigError(f"{where}: a decoupled model cannot have {clash} (its answers stream "
                                  "as the model sends them, never from a cache)")
    if config.sequence_batching is not None:
        check_sequence_batching(config, where)
    if config.ragged:
        check_ragged_batching(config, where)
    if config.backend == "ensemble":
        if config.dynamic_batching is not None:
            raise ConfigError(f"{where}: an ensemble is not batched itself (each step's model batches)")
        ensemble_order(config, where)
    elif config.ensemble:
        raise ConfigError(f"{where}: ensemble steps need platform = \"ensemble\"")
    return config


def check_ragged_batching(config: ModelConfig, where: str) -> None:
    """Triton's rules for batch_input and batch_output (core 73aad7c3, model_config_utils.cc ValidateBatchIO),
    and inferd's: ragged batches are joined by the dynamic batcher, so the model needs one."""
    if config.dynamic_batching is None:
        raise ConfigError(f"{where}: allow_ragged_batch, batch_input and batch_output need dynamic_batching "
                          "(inferd's dynamic batcher joins ragged requests and computes batch inputs)")
    inputs = {t.name for t in config.inputs}
    outputs = {t.name for t in config.outputs}
    targets: set[str] = set()
    for given in config.batch_inputs:
        what = f"{where}: batch_input {given.kind}"
        _check_sources(what, given.source_inputs, inputs)
        if given.datatype not in ("INT32", "FP32"):
            raise ConfigError(f"{what}: data_type must be TYPE_INT32 or TYPE_FP32, got TYPE_{given.datatype}")
        if not given.target_names:
            raise ConfigError(f"{what}: needs a target_name (the model input it feeds)")
        for name in given.target_names:
            if name in inputs or name in targets:
                raise ConfigError(f"{what}: target_name '{name}' is already "
                                  f"{'a request input' if name in inputs else 'another batch input'}")
            targets.add(name)
    scattered: set[str] = set()
    for output in config.batch_outputs:
        what = f"{where}: batch_output {output.kind}"
        _check_sources(what, output.source_inputs, inputs)
        if not output.target_names:
            raise ConfigError(f"{what}: needs a target_name (the output it splits)")
        for name in output.target_names:
            if name not in outputs:
                raise ConfigError(f"{what}: unknown target output name '{name}'; the outputs are {sorted(outputs)}")
            if name in scattered:
                raise ConfigError(f"{what}: target output name '{name}' can only be specified once")
            scattered.add(name)


def _check_sources(what: str, sources: tuple[str, ...], inputs: set[str]) -> None:
    if len(sources) != 1:
        raise ConfigError(f"{what}: expects 1 source_input, got {len(sources)}")
    if sources[0] not in inputs:
        raise ConfigError(f"{what}: unknown source input name '{sources[0]}'; the inputs are {sorted(inputs)}")


def check_priority_levels(batching: DynamicBatching, where: str) -> None:
    """Triton's rules (model_config_utils.cc): with priority levels, the default level and every
    level that has a policy of its own are levels the model has. Without, both are ignored."""
    levels = batching.priority_levels
    if levels == 0:
        return
    if not 1 <= batching.default_priority_level <= levels:
        raise ConfigError(f"{where}: key 'dynamic_batching.default_priority_level' must be in range [1, {levels}] "
                          f"(priority_levels = {levels}), got {batching.default_priority_level}")
    outside = sorted(level for level in batching.priority_queue_policy if not 1 <= level <= levels)
    if outside:
        raise ConfigError(f"{where}: key 'dynamic_batching.priority_queue_policy' names level {outside[0]}; "
                          f"levels must be in range [1, {levels}] (priority_levels = {levels})")


def check_sequence_batching(config: ModelConfig, where: str) -> None:
    """What a sequence model cannot also be, and controls that could not be delivered."""
    for clash, present in (("dynamic_batching", config.dynamic_batching is not None),
                           ("response_cache", config.response_cache),
                           ("model_transaction_policy decoupled", config.decoupled),
                           ("platform \"ensemble\"", config.backend == "ensemble")):
        if present:
            raise ConfigError(f"{where}: a sequence_batching model cannot have {clash} (each request of a "
                              "sequence runs alone, in order, on the instance that holds its state)")
    assert config.sequence_batching is not None
    check_sequence_strategy(config.sequence_batching, config.max_batch_size, where)
    controls = config.sequence_batching.controls
    names = [c.name for c in controls]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: sequence_batching control_input names must be unique, got {names}")
    declared = {t.name for t in config.inputs} & set(names)
    if declared:
        raise ConfigError(f"{where}: control input '{sorted(declared)[0]}' is also declared as an input; the "
                          "sequence batcher supplies it, so declare it only under sequence_batching")
    for control in controls:
        allowed = CORRID_DATATYPES if control.kind == "CORRID" else ("INT32", "FP32", "BOOL")
        if control.datatype not in allowed:
            raise ConfigError(f"{where}: control input '{control.name}' ({control.kind}) must be one of "
                              f"{' '.join(allowed)}, got {control.datatype}")
    check_states(config, where)


def check_sequence_strategy(batching: SequenceBatching, max_batch_size: int, where: str) -> None:
    """Triton's refusals of the direct and oldest fields (model_config_utils.cc)."""
    if batching.strategy not in ("", "direct", "oldest"):
        raise ConfigError(f"{where}: sequence_batching strategy must be direct or oldest, got {batching.strategy!r}")
    if not 0.0 <= batching.minimum_slot_utilization <= 1.0:
        raise ConfigError(f"{where}: sequence batching minimum slot utilization must be in range (0.0, 1.0], got "
                          f"{batching.minimum_slot_utilization}")
    for size in batching.preferred_batch_sizes:
        if size <= 0 or size > max_batch_size:
            raise ConfigError(f"{where}: sequence batching preferred batch size must be positive and <= max batch "
                              f"size ({max_batch_size}), got {size}")
    if batching.max_candidate_sequences < 0:
        raise ConfigError(f"{where}: sequence batching max_candidate_sequences must be >= 0, got "
                          f"{batching.max_candidate_sequences}")


def check_states(config: ModelConfig, where: str) -> None:
    """Implicit states the sequence batcher can keep: named, numeric, apart from the model's own
    inputs and controls, and an initial state that fits (Triton's rules)."""
    assert config.sequence_batching is not None
    states = config.sequence_batching.states
    controls = {c.name for c in config.sequence_batching.controls}
    declared = {t.name for t in config.inputs}
    for key in ("input_name", "output_name"):
        names = [getattr(s, key) for s in states]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: sequence_batching state {key}s must be unique, got {names}")
    for state in states:
        what = f"{where}: sequence_batching state '{state.input_name}'"
        if not state.input_name or not state.output_name:
            raise ConfigError(f"{where}: every sequence_batching state needs an input_name and an output_name, got "
                              f"input_name {state.input_name!r}, output_name {state.output_name!r}")
        if state.datatype not in V2_DATATYPES:
            raise ConfigError(f"{what}: data_type must be a tensor type (TYPE_FP32, TYPE_INT32, TYPE_STRING, ...), "
                              f"got {state.datatype or 'none'}")
        if state.datatype == "BYTES" and state.initial is not None and state.initial.source == "file":
            raise ConfigError(f"{what}: a BYTES (TYPE_STRING) state starts from empty strings (zero_data); "
                              "initial_state data_file is served for numeric states only")
        if any(d < -1 for d in state.dims):
            raise ConfigError(f"{what}: dims must be sizes (-1 = any), got {list(state.dims)}")
        if state.input_name in declared:
            raise ConfigError(f"{what} is also declared as an input; the server feeds it from the sequence's "
                              "last answer, so declare it only under sequence_batching state")
        if state.input_name in controls:
            raise ConfigError(f"{what} has the name of a control input")
        if state.initial is not None:
            _check_initial_state(state, state.initial, what)



def with_state_tensors(config: ModelConfig) -> ModelConfig:
    """The configuration a runtime loads with: the declared inputs and outputs, then the implicit
    states' tensors (in state order: a TorchScript model takes them as its last arguments and
    returns them last), which the sequence batcher feeds and keeps."""
    batching = config.sequence_batching
    if batching is None or not batching.states:
        return config
    inputs, outputs = config.inputs, config.outputs
    if inputs:  # none declared: the model describes itself (ONNX), its state tensors included
        inputs += tuple(TensorConfig(s.input_name, s.datatype, s.dims) for s in batching.states)
    if outputs:
        shown = {t.name for t in outputs}  # a state output may be declared, for clients to read too
        outputs += tuple(TensorConfig(s.output_name, s.datatype, s.dims)
                         for s in batching.states if s.output_name not in shown)
    return replace(config, inputs=inputs, outputs=outputs)

def _check_initial_state(state: SequenceState, initial: InitialState, what: str) -> None:
    if not initial.name:
        raise ConfigError(f"{what}: initial_state needs a 'name'")
    if initial.datatype != state.datatype:
        raise ConfigError(f"{what}: initial_state data_type {initial.datatype or 'none'} does not match the "
                          f"state's {state.datatype}")
    if len(initial.dims) != len(state.dims) or any(d < 0 for d in initial.dims) or any(
            want >= 0 and want != got for want, got in zip(state.dims, initial.dims, strict=True)):
        raise ConfigError(f"{what}: initial_state dims {list(initial.dims)} must be fixed sizes (no -1) that fit "
                          f"the state's dims {list(state.dims)}")
    if initial.source == "file":
        parts = initial.file.replace("\\", "/").split("/")
        if not initial.file or initial.file.startswith("/") or ".." in parts:
            raise ConfigError(f"{what}: initial_state data_file must be a file under the model's initial_state/ "
                              f"folder, got {initial.file!r}")
    elif initial.source != "zero":
        raise ConfigError(f"{what}: initial_state needs zero_data or data_file")


def ensemble_order(config: ModelConfig, where: str) -> list[list[EnsembleStep]]:
    """The ensemble's steps in waves: each wave's inputs are all made by the waves before it (or
    are the ensemble's inputs). Refuses what could never run: a tensor nothing makes, a tensor made
    twice, a cycle, an ensemble output no step makes."""
    if not config.ensemble:
        raise ConfigError(f"{where}: an ensemble needs at least one step (ensemble_scheduling.step)")
    if not config.inputs or not config.outputs:
        raise ConfigError(f"{where}: an ensemble must declare its inputs and outputs")
    made = {t.name for t in config.inputs}
    for step in config.ensemble:
        if not step.model_name or not step.input_map or not step.output_map:
            raise ConfigError(f"{where}: every ensemble step needs model_name, input_map and output_map")
        for tensor in step.output_map.values():
            if tensor in made:
                raise ConfigError(f"{where}: ensemble tensor '{tensor}' is made twice (step "
                                  f"'{step.model_name}' and an input or an earlier step)")
            made.add(tensor)
    waves: list[list[EnsembleStep]] = []
    have = {t.name for t in config.inputs}
    remaining = list(config.ensemble)
    while remaining:
        wave = [s for s in remaining if all(t in have for t in s.input_map.values())]
        if not wave:
            step = remaining[0]
            missing = sorted(t for t in step.input_map.values() if t not in have)
            why = "no step makes it" if any(t not in made for t in missing) else "the steps form a cycle"
            raise ConfigError(f"{where}: ensemble step '{step.model_name}' takes '{missing[0]}', but {why}")
        waves.append(wave)
        for step in wave:
            have.update(step.output_map.values())
        remaining = [s for s in remaining if s not in wave]
    unmade = [t.name for t in config.outputs if t.name not in have]
    if unmade:
        raise ConfigError(f"{where}: ensemble output '{unmade[0]}' is made by no step")
    return waves


class _Table:
    """Reads one TOML table, checking every key's type and refusing unknown keys."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self._data = dict(data)
        self._where = where
        self._known: list[str] = []  # every key asked for, to suggest one for a typo

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._where}: key '{key}' {problem}")

    def take(self, key: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
        self._known.append(key)
        if key not in self._data:
            return default
        value = self._data.pop(key)
        if isinstance(value, bool) and bool not in _as_tuple(kinds):
            raise self.fail(key, f"must be {_kind_names(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.fail(key, f"must be {_kind_names(kinds)}, got {value!r}")
        return value

    def take_int(self, key: str, default: int, minimum: int = 0, maximum: int = INT32_MAX) -> int:
        value = self.take(key, int, default)
        if value < minimum:
            raise self.fail(key, f"must be >= {minimum}, got {value}")
        if value > maximum:
            raise self.fail(key, f"must be <= {maximum}, got {value}")
        return int(value)

    def take_ints(self, key: str, minimum: int = 0, maximum: int = INT32_MAX) -> tuple[int, ...]:
        values = self.take(key, list, [])
        if not all(isinstance(v, int) and not isinstance(v, bool) and minimum <= v <= maximum for v in values):
            raise self.fail(key, f"must be a list of integers from {minimum} to {maximum}, got {values!r}")
        return tuple(values)

    def finish(self) -> None:
        if self._data:
            key = sorted(self._data)[0]
            nearest = difflib.get_close_matches(key, self._known, n=1, cutoff=0.6)
            raise self.fail(key, f"is not known; did you mean '{nearest[0]}'?" if nearest else "is not known")


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _kind_names(kinds: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kinds))


def load_model_config(path: Path) -> ModelConfig:
    """Read and validate a model's config.toml. A missing file is the all-default config."""
    if not path.exists():
        return ModelConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:  # a folder, no permission, an I/O error
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:  # arrays or tables nested thousands deep
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    return parse_model_config(data, str(path))


def parse_model_config(data: dict[str, Any], where: str) -> ModelConfig:
    table = _Table(data, where)
    backend = table.take("backend", str)
    platform = table.take("platform", str)
    if platform is not None:
        if platform != "ensemble" or backend not in (None, "ensemble"):
            raise table.fail("platform", f"may only be \"ensemble\" (other models name a backend), got {platform!r}")
        backend = "ensemble"
    if backend is not None and backend not in BACKENDS:
        raise table.fail("backend", f"must be one of {BACKENDS}, got {backend!r}")
    max_batch_size = table.take_int("max_batch_size", 0)
    intra_op_threads = table.take_int("intra_op_threads", 0)
    batching = _dynamic_batching(table.take("dynamic_batching", dict), where)
    config = ModelConfig(
        backend=backend,
        max_batch_size=max_batch_size,
        intra_op_threads=intra_op_threads,
        dynamic_batching=batching,
        instance_group=_instance_group(table.take("instance_group", dict, {}), where),
        version_policy=_version_policy(table.take("version_policy", dict, {}), where),
        version_labels=_version_labels(table.take("version_labels", dict, {}), where),
        inputs=_tensors(table.take("input", list, []), f"{where}: input"),
        outputs=_tensors(table.take("output", list, []), f"{where}: output"),
        response_cache=_response_cache(table.take("response_cache", dict, {}), where),
        ensemble=_ensemble(table.take("ensemble_scheduling", dict, {}), where),
        decoupled=_decoupled(table.take("model_transaction_policy", dict, {}), where),
        sequence_batching=_sequence_batching(table.take("sequence_batching", dict), where),
        optimization=_optimization(table.take("optimization", dict, {}), where, max_batch_size),
        source=where,
    )
    table.finish()
    return check_model_config(config, where)


def _dynamic_batching(data: dict[str, Any] | None, where: str) -> DynamicBatching | None:
    if data is None:
        return None
    table = _Table(data, f"{where}: [dynamic_batching]")
    delay = table.take("max_queue_delay_ms", (int, float), 0.0)
    if not math.isfinite(delay) or not 0 <= delay <= MAX_DELAY_MS:
        raise table.fail("max_queue_delay_ms", f"must be a finite number >= 0 (at most {MAX_DELAY_MS:g}), "
                                               f"got {delay}")
    default = _queue_policy(table)
    result = DynamicBatching(
        max_queue_delay_ms=float(delay),
        preferred_batch_sizes=tuple(sorted(table.take_ints("preferred_batch_sizes", minimum=1))),
        max_queue_size=default.max_queue_size,
        default_timeout_ms=default.default_timeout_ms,
        allow_timeout_override=default.allow_timeout_override,
        timeout_action=default.timeout_action,
        priority_levels=table.take_int("priority_levels", 0, maximum=INT64_MAX),
        default_priority_level=table.take_int("default_priority_level", 0, maximum=INT64_MAX),
        priority_queue_policy=_priority_queue_policy(table.take("priority_queue_policy", dict, {}), where),
        batch_wait=_batch_wait(table),
    )
    table.finish()
    return result


def _batch_wait(table: _Table) -> str:
    wait = str(table.take("batch_wait", str, ""))
    if wait and wait not in BATCH_WAITS:
        raise table.fail("batch_wait", f"must be one of {BATCH_WAITS}, got {wait!r}")
    return wait


def _queue_policy(table: _Table) -> QueuePolicy:
    """A queue policy's keys, read from ``table`` ([dynamic_batching] or one level's table)."""
    timeout = table.take("default_timeout_ms", (int, float), 0.0)
    if not math.isfinite(timeout) or not 0 <= timeout <= MAX_DELAY_MS:
        raise table.fail("default_timeout_ms", f"must be a finite number >= 0 (at most {MAX_DELAY_MS:g}), "
                                               f"got {timeout}")
    action = table.take("timeout_action", str, "reject")
    if action not in TIMEOUT_ACTIONS:
        raise table.fail("timeout_action", f"must be one of {TIMEOUT_ACTIONS}, got {action!r}")
    return QueuePolicy(max_queue_size=table.take_int("max_queue_size", 1024, minimum=1),
                       default_timeout_ms=float(timeout),
                       allow_timeout_override=bool(table.take("allow_timeout_override", bool, False)),
                       timeout_action=action)


def _priority_queue_policy(data: dict[str, Any], where: str) -> dict[int, QueuePolicy]:
    """[dynamic_batching.priority_queue_policy.N] tables: level N's queue policy."""
    policies = {}
    for key, value in data.items():
        what = f"{where}: [dynamic_batching.priority_queue_policy.{key}]"
        if not (key.isascii() and key.isdigit()) or not isinstance(value, dict):
            raise ConfigError(f"{what} must be a table named by a priority level (1, 2, ...)")
        table = _Table(value, what)
        policies[int(key)] = _queue_policy(table)
        table.finish()
    return policies


def _instance_group(data: dict[str, Any], where: str) -> InstanceGroup:
    table = _Table(data, f"{where}: [instance_group]")
    kind = table.take("kind", str, "")
    if kind and kind not in INSTANCE_KINDS:
        raise table.fail("kind", f"must be one of {INSTANCE_KINDS}, got {kind!r}")
    timeout = table.take("response_timeout_s", (int, float), 120.0)
    if not math.isfinite(timeout) or timeout <= 0:
        raise table.fail("response_timeout_s", f"must be a finite number > 0, got {timeout}")
    limiter = table.take("rate_limiter", dict)
    group = InstanceGroup(count=table.take_int("count", 1, minimum=1), kind=kind,
                          gpus=table.take_ints("gpus"), response_timeout_s=float(timeout),
                          memory_limit_mb=table.take_int("memory_limit_mb", 0),
                          rate_limiter=None if limiter is None else _rate_limiter(limiter, where))
    table.finish()
    return group


def _rate_limiter(data: dict[str, Any], where: str) -> RateLimit:
    """``[instance_group.rate_limiter]``: ``priority`` and ``resources = [{ name, count, global }]``."""
    table = _Table(data, f"{where}: [instance_group.rate_limiter]")
    items = table.take("resources", list, [])
    priority = table.take_int("priority", 0, maximum=UINT32_MAX)
    table.finish()
    resources = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: [instance_group.rate_limiter] resources #{index} must be a table "
                              "{ name = \"R1\", count = 4, global = false }")
        entry = _Table(item, f"{where}: [instance_group.rate_limiter] resources #{index}")
        resources.append(RateResource(entry.take("name", str, ""), entry.take_int("count", 0, maximum=UINT32_MAX),
                                      entry.take("global", bool, False)))
        entry.finish()
    return check_rate_limit(RateLimit(tuple(resources), priority), where)


def check_rate_limit(limit: RateLimit, where: str) -> RateLimit:
    """Each resource named, once: a group that lists a name twice would hold which count?"""
    seen: set[str] = set()
    for resource in limit.resources:
        if not resource.name:
            raise ConfigError(f"{where}: instance_group rate_limiter: every resource needs a name")
        if resource.name in seen:
            raise ConfigError(f"{where}: instance_group rate_limiter lists resource '{resource.name}' twice; "
                              "list each resource once with the count one execution holds")
        seen.add(resource.name)
    return limit


def _ensemble(data: dict[str, Any], where: str) -> tuple[EnsembleStep, ...]:
    table = _Table(data, f"{where}: [ensemble_scheduling]")
    items = table.take("step", list, [])
    table.finish()
    steps = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: ensemble step #{index} must be a table ([[ensemble_scheduling.step]])")
        step = _Table(item, f"{where}: ensemble step #{index}")
        name = step.take("model_name", str, "")
        version = step.take("model_version", int, -1)
        maps = {key: step.take(key, dict, {}) for key in ("input_map", "output_map")}
        step.finish()
        for key, mapping in maps.items():
            if not all(isinstance(v, str) for v in mapping.values()):
                raise step.fail(key, f"must map tensor names to tensor names, got {mapping!r}")
        if version < -1 or version == 0 or version > INT64_MAX:
            raise step.fail("model_version", f"must be a version >= 1 (or -1: the default), got {version}")
        steps.append(EnsembleStep(name, version, maps["input_map"], maps["output_map"]))
    return tuple(steps)


def _sequence_batching(data: dict[str, Any] | None, where: str) -> SequenceBatching | None:
    if data is None:
        return None
    table = _Table(data, f"{where}: [sequence_batching]")
    idle = table.take_int("max_sequence_idle_microseconds", 1_000_000, minimum=1, maximum=INT64_MAX)
    items = table.take("control_input", list, [])
    states = _states(table.take("state", list, []), where)
    direct, oldest = table.take("direct", dict), table.take("oldest", dict)
    wait = _batch_wait(table)
    table.finish()
    if direct is not None and oldest is not None:
        raise ConfigError(f"{where}: [sequence_batching] takes one of [sequence_batching.direct] and "
                          "[sequence_batching.oldest], got both")
    strategy = _sequence_strategy(direct, oldest, where)
    controls = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: sequence_batching control_input #{index} must be a table "
                              "([[sequence_batching.control_input]])")
        control = _Table(item, f"{where}: sequence_batching control_input #{index}")
        name = control.take("name", str, "")
        kind = control.take("kind", str, "")
        datatype = control.take("datatype", str, "UINT64" if kind == "CORRID" else "INT32")
        values = control.take("false_true", list, [0, 1])
        control.finish()
        if not name:
            raise control.fail("name", "is required")
        if kind not in SEQUENCE_CONTROLS:
            raise control.fail("kind", f"must be one of {' '.join(SEQUENCE_CONTROLS)}, got {kind!r}")
        if len(values) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise control.fail("false_true", f"must be two numbers (the false and the true value), got {values!r}")
        controls.append(SequenceControl(name, kind, datatype, (values[0], values[1])))
    return replace(strategy, max_sequence_idle_us=idle, controls=tuple(controls), states=states, batch_wait=wait)


def _sequence_strategy(direct: dict[str, Any] | None, oldest: dict[str, Any] | None,
                       where: str) -> SequenceBatching:
    """``[sequence_batching.direct]`` or ``[sequence_batching.oldest]``: Triton's fields, as a
    SequenceBatching holding only them."""
    if direct is not None:
        table = _Table(direct, f"{where}: [sequence_batching.direct]")
        utilization = table.take("minimum_slot_utilization", (int, float), 0.0)
        result = SequenceBatching(strategy="direct", max_queue_delay_us=table.take_int(
            "max_queue_delay_microseconds", 0, maximum=INT64_MAX), minimum_slot_utilization=float(utilization))
        table.finish()
        return result
    if oldest is not None:
        table = _Table(oldest, f"{where}: [sequence_batching.oldest]")
        result = SequenceBatching(
            strategy="oldest", max_queue_delay_us=table.take_int("max_queue_delay_microseconds", 0, maximum=INT64_MAX),
            max_candidate_sequences=table.take_int("max_candidate_sequences", 0),
            preferred_batch_sizes=tuple(sorted(set(table.take_ints("preferred_batch_size", minimum=1)))),
            preserve_ordering=table.take("preserve_ordering", bool, False))
        table.finish()
        return result
    return SequenceBatching()


def _states(items: list[Any], where: str) -> tuple[SequenceState, ...]:
    """``[[sequence_batching.state]]`` tables (Triton's state, its dims as ``shape``); what they say is
    checked with the model's other keys (``check_states``)."""
    states = []
    for index, item in enumerate(items):
        what = f"{where}: sequence_batching state #{index}"
        if not isinstance(item, dict):
            raise ConfigError(f"{what} must be a table ([[sequence_batching.state]])")
        table = _Table(item, what)
        datatype = table.take("datatype", str, "")
        state = SequenceState(table.take("input_name", str, ""), table.take("output_name", str, ""), datatype,
                              table.take_ints("shape", minimum=-1, maximum=INT64_MAX),
                              _initial_state(table.take("initial_state", dict), datatype, f"{what}: [initial_state]"),
                              table.take("use_same_buffer_for_input_output", bool, False))
        if table.take("use_growable_memory", bool, False):
            raise table.fail("use_growable_memory", GROWABLE_REFUSED)
        table.finish()
        states.append(state)
    return tuple(states)


GROWABLE_REFUSED = ("is not served: Triton grows the state in CUDA virtual memory; inferd keeps each sequence's "
                    "state as the model answered it, so leave it false")


def _initial_state(data: dict[str, Any] | None, datatype: str, where: str) -> InitialState | None:
    if data is None:
        return None
    table = _Table(data, where)
    name = table.take("name", str, "")
    given = table.take("datatype", str, datatype)
    dims = table.take_ints("shape", maximum=INT64_MAX)
    zero = table.take("zero_data", bool, False)
    file = table.take("data_file", str, "")
    table.finish()
    if zero == bool(file):
        raise ConfigError(f"{where}: give one of zero_data = true or data_file = \"<file in initial_state/>\"")
    return InitialState(name, given, dims, "file" if file else "zero", file)



def _optimization(data: dict[str, Any], where: str, max_batch_size: int) -> Optimization:
    table = _Table(data, f"{where}: [optimization]")
    precision = table.take("precision", str, "")
    compile_with = table.take("compile", str, "")
    result = Optimization(precision=precision, channels_last=bool(table.take("channels_last", bool, False)),
                          compile=compile_with, batch_sizes=tuple(sorted(set(table.take_ints("batch_sizes", 1)))),
                          warmup=bool(table.take("warmup", bool, False)))
    if precision and precision not in PRECISIONS:
        raise table.fail("precision", f"must be one of {PRECISIONS}, got {precision!r}")
    if compile_with and compile_with not in COMPILERS:
        raise table.fail("compile", f"must be one of {COMPILERS}, got {compile_with!r}")
    if result.batch_sizes and max_batch_size == 0:
        raise table.fail("batch_sizes", "needs max_batch_size > 0 (a batch dimension to pad)")
    if result.batch_sizes and result.batch_sizes[-1] > max_batch_size:
        raise table.fail("batch_sizes", f"must not exceed max_batch_size ({max_batch_size}), "
                                        f"got {list(result.batch_sizes)}")
    table.finish()
    return result


def capture_sizes(optimization: Optimization, max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes a compiled model is built for: those configured, else powers of two up to
    max_batch_size and max_batch_size itself; () when the model has no batch dimension (one shape)."""
    if optimization.batch_sizes or max_batch_size == 0:
        return optimization.batch_sizes
    sizes = {max_batch_size}
    size = 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def _image(data: dict[str, Any] | None, where: str) -> ImageInput | None:
    if data is None:
        return None
    table = _Table(data, where)
    image_format = table.take("format", str, "jpeg")
    resize = table.take_int("resize", 256, minimum=1)
    crop = table.take_int("crop", 224, minimum=1)
    mean = _three(table, "mean", IMAGENET_MEAN)
    std = _three(table, "std", IMAGENET_STD)
    table.finish()
    if image_format not in IMAGE_FORMATS:
        raise table.fail("format", f"must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if crop > resize:
        raise table.fail("crop", f"must not exceed resize ({resize}), got {crop}")
    if not all(value > 0 for value in std):
        raise table.fail("std", f"must be three numbers > 0, got {list(std)}")
    return ImageInput(image_format, resize, crop, mean, std)


def _three(table: _Table, key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
    values = table.take(key, list, list(default))
    if len(values) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                                   for v in values):
        raise table.fail(key, f"must be three numbers (R, G, B), got {values!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def _decoupled(data: dict[str, Any], where: str) -> bool:
    table = _Table(data, f"{where}: [model_transaction_policy]")
    decoupled = bool(table.take("decoupled", bool, False))
    table.finish()
    return decoupled


def _response_cache(data: dict[str, Any], where: str) -> bool:
    table = _Table(data, f"{where}: [response_cache]")
    enable = bool(table.take("enable", bool, False))
    table.finish()
    return enable


def _version_policy(data: dict[str, Any], where: str) -> VersionPolicy:
    table = _Table(data, f"{where}: [version_policy]")
    latest = table.take("latest", int)
    take_all = table.take("all", bool, False)
    specific = table.take_ints("specific", minimum=1, maximum=INT64_MAX)
    table.finish()
    chosen = sum([latest is not None, take_all, bool(specific)])
    if chosen > 1:
        raise ConfigError(f"{where}: [version_policy] takes one of 'latest', 'all', 'specific'")
    if latest is not None and not 1 <= latest <= INT32_MAX:
        raise table.fail("latest", f"must be from 1 to {INT32_MAX}, got {latest}")
    if chosen == 0:
        return VersionPolicy()
    return VersionPolicy(latest=latest, all=take_all, specific=specific)


def _version_labels(data: dict[str, Any], where: str) -> dict[str, int]:
    for label, version in data.items():
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= INT64_MAX:
            raise ConfigError(f"{where}: [version_labels] key '{label}' must be a version "
                              f"number from 1 to {INT64_MAX}, got {version!r}")
    return dict(data)


def _tensors(items: list[Any], where: str) -> tuple[TensorConfig, ...]:
    tensors = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{where} #{index}: must be a table ([[{where.split()[-1]}]])")
        table = _Table(item, f"{where} #{index}")
        name = table.take("name", str)
        datatype = table.take("datatype", str)
        shape = table.take("shape", list)
        label_filename = table.take("label_filename", str, "")
        optional = table.take("optional", bool, False) if where.endswith(": input") else False
        image = _image(table.take("image", dict), f"{where} #{index}: [image]")
        table.finish()
        if not name:
            raise table.fail("name", "is required")
        if datatype not in V2_DATATYPES:
            raise table.fail("datatype", f"must be one of {' '.join(V2_DATATYPES)}, got {datatype!r}")
        if shape is None or not all(isinstance(d, int) and not isinstance(d, bool) and -1 <= d <= INT64_MAX
                                    for d in shape):
            raise table.fail("shape", f"must be a list of sizes (-1 = any), got {shape!r}")
        if image is not None and (datatype != "BYTES" or list(shape) != [1] or "output" in where):
            raise table.fail("image", "is for inputs of datatype \"BYTES\" and shape [1] (one encoded image "
                                      f"a row), got {datatype} {shape}")
        tensors.append(TensorConfig(name=name, datatype=datatype, shape=tuple(shape), label_filename=label_filename,
                                    image=image, optional=optional))
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: names must be unique, got {names}")
    return tuple(tensors)


@dataclass(frozen=True, slots=True)
class ServedConfig:
    """A model's configuration as it is served: its name, the platform and backend that load it,
    and the configuration with every tensor (read from the model when the file did not say)."""

    name: str
    platform: str
    backend: str
    config: ModelConfig
