"""``inferd tfserving [FLAGS]``: tensorflow_model_server's command line and files, as settings.

A TF Serving deployment changes only the binary's name: the same flags (``--port``,
``--rest_api_port``, ``--model_name``/``--model_base_path`` or ``--model_config_file``, batching,
monitoring, polling), the same text-format files. A flag inferd does not honour is refused with a
clear error when ignoring it would change what the server answers, and warned about (named, once,
at start) when it only tunes TF Serving's internals.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message

from inferd.compat._proto import tfserving_config_pb2 as pb
from inferd.config import BatchingDefaults, DynamicBatching, ModelSource, ServerSettings, VersionPolicy
from inferd.errors import ConfigError

log = logging.getLogger("inferd.tfserving")

M = TypeVar("M", bound=Message)

# flags tensorflow_model_server takes that only tune its internals: accepted, named in a warning
IGNORED = ("rest_api_timeout_in_ms", "rest_api_num_threads", "tensorflow_session_parallelism",
           "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism", "grpc_max_threads",
           "enable_model_warmup", "num_load_threads", "num_unload_threads", "max_num_load_retries",
           "load_retry_interval_micros", "flush_filesystem_caches", "per_process_gpu_memory_fraction",
           "xla_cpu_compilation_enabled", "enable_profiler", "remove_unused_fields_from_bundle_metagraph",
           "skip_initialize_tpu", "thread_pool_factory_config_file", "mixed_precision",
           "num_request_iterations_for_warmup", "num_tflite_interpreters_per_pool", "num_tflite_pools",
           "xla_gpu_compilation_enabled", "enable_grpc_healthcheck_service")  # grpc.health.v1 is always served
# flags that would change answers or files inferd does not read: refused unless left at the default
REFUSED = {"platform_config_file": "platform configs are not read; models.config's model_platform is",
           "ssl_config_file": "TLS is not served; put a TLS proxy in front",
           "enable_signature_method_name_check": "method names are not checked (TF Serving's default)",
           "saved_model_tags": "only the 'serve' MetaGraph is loaded",
           "tensorflow_session_config_file": "session configs are not read",
           "rest_api_enable_cors_support": "CORS headers are not sent",
           "use_alts_credentials": "ALTS is not served",
           "enable_serialization_as_tensor_content": "Predict answers in the typed fields (float_val, ...), "
                                                     "TF Serving's default",
           "enable_per_model_batching_parameters": "a model's batching_params.pbtxt is not read; its "
                                                   "config.toml [dynamic_batching] is"}
_FALSE = ("", "0", "false", "False")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parser() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(prog="inferd tfserving", description="inferd with tensorflow_model_server's "
                                    "flags and files: a TF Serving deployment changes only the binary's name.")
    flags.add_argument("--port", type=int, default=8500, help="gRPC port (0: off)")
    flags.add_argument("--grpc_socket_path", default="", help="also serve gRPC on this Unix socket")
    flags.add_argument("--rest_api_port", type=int, default=0, help="REST (and metrics) port; 0: off")
    flags.add_argument("--host", default="0.0.0.0",
                       help="inferd's: address to listen on (TF Serving listens on every interface)")
    flags.add_argument("--model_name", default="default")
    flags.add_argument("--model_base_path", default="", help="folder of version folders (1/, 00000123/, ...)")
    flags.add_argument("--model_config_file", default="", help="text-format ModelServerConfig (models.config)")
    flags.add_argument("--model_config_file_poll_wait_seconds", type=int, default=0,
                       help="seconds between reads of the model config file; 0: read once")
    flags.add_argument("--file_system_poll_wait_seconds", type=int, default=1,
                       help="seconds between looks for new versions; 0: look once")
    flags.add_argument("--enable_batching", type=_bool, nargs="?", const=True, default=False)
    flags.add_argument("--allow_version_labels_for_unavailable_models", type=_bool, nargs="?", const=True,
                       default=False, help="HandleReloadConfigRequest may give a new label to a version not "
                                           "available yet (moving a label still needs its version available)")
    flags.add_argument("--prefer_tflite_model", type=_bool, nargs="?", const=True, default=False,
                       help="serve a version folder's model.tflite rather than its saved_model.pb (which serves "
                            "where there is no model.tflite)")
    flags.add_argument("--use_tflite_model", type=_bool, nargs="?", const=True, default=False,
                       help=argparse.SUPPRESS)  # older TF Serving's name for --prefer_tflite_model
    flags.add_argument("--version", type=_bool, nargs="?", const=True, default=False,
                       help="print the version and exit")
    flags.add_argument("--batching_parameters_file", default="")
    flags.add_argument("--monitoring_config_file", default="")
    flags.add_argument("--grpc_channel_arguments", default="", help="name=value,... for the gRPC server")
    flags.add_argument("--grpc-server", choices=("inferd", "grpcio"), default="inferd",
                       help="inferd's: inferd: HTTP/2 on the event loop (fast); grpcio: grpcio's threaded server "
                            "(takes every --grpc_channel_arguments argument)")
    flags.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    flags.add_argument("--model-control-api", action="store_true",
                       help="inferd's: take model control calls (ModelService/HandleReloadConfigRequest, the v2 "
                            "repository API); beyond loopback needs --auth-token")
    flags.add_argument("--auth-token", default=os.environ.get("INFERD_AUTH_TOKEN"),
                       help="inferd's: bearer token model control calls must carry (default: $INFERD_AUTH_TOKEN)")
    for name in IGNORED:
        flags.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    for name in REFUSED:
        flags.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    return flags


def settings_from_flags(args: argparse.Namespace) -> ServerSettings:
    """tensorflow_model_server's flags as inferd's settings (ConfigError: a flag or file inferd refuses)."""
    for name, why in REFUSED.items():
        value = getattr(args, name)
        if value is not None and value not in _FALSE:
            raise ConfigError(f"--{name}={value} is not supported by inferd: {why}")
    ignored = [name for name in IGNORED if getattr(args, name) is not None]
    if ignored:
        log.warning("ignoring tensorflow_model_server flags that tune its internals: %s",
                    ", ".join(f"--{name}" for name in ignored))
    if args.model_config_file and args.model_base_path:
        raise ConfigError("give --model_config_file or --model_name/--model_base_path, not both")
    config_file = Path(args.model_config_file) if args.model_config_file else None
    if config_file is not None:
        sources = read_model_config(config_file)
    elif args.model_base_path:
        sources = (ModelSource(args.model_name, Path(args.model_base_path)),)
    else:
        raise ConfigError("give --model_config_file, or --model_base_path (and --model_name)")
    if args.batching_parameters_file and not args.enable_batching:
        raise ConfigError("--batching_parameters_file needs --enable_batching")
    batching = None
    if args.enable_batching:
        batching = read_batching(Path(args.batching_parameters_file)) if args.batching_parameters_file else \
            batching_defaults(pb.BatchingParameters())
    metrics: tuple[str, ...] = ("/metrics",)
    if args.monitoring_config_file:
        path = read_monitoring(Path(args.monitoring_config_file))
        metrics = ("/metrics", path) if path and path != "/metrics" else metrics
    polls = args.file_system_poll_wait_seconds
    return ServerSettings(
        model_repository=None, host=args.host, http_port=args.rest_api_port, grpc_port=args.port,
        model_control="poll" if polls > 0 else "none", poll_interval=float(max(polls, 1)),
        log_level=args.log_level, model_sources=sources, model_config_file=config_file,
        model_config_poll=float(max(args.model_config_file_poll_wait_seconds, 0)), batching=batching,
        metrics_paths=metrics, grpc_socket_path=args.grpc_socket_path or None,
        grpc_options=grpc_channel_arguments(args.grpc_channel_arguments), grpc_server=args.grpc_server,
        listen_after_load=True, control_api=args.model_control_api, auth_token=args.auth_token,
        labels_for_unavailable_versions=args.allow_version_labels_for_unavailable_models,
        prefer_tflite=args.prefer_tflite_model or args.use_tflite_model)


def _parse(path: Path, message: M, what: str) -> M:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(f"Error parsing text-format tensorflow.serving.{what} from {path}: {exc}") from None


def read_model_config(path: Path) -> tuple[ModelSource, ...]:
    """models.config: its model_config_list, as model sources (relative base paths: from the file)."""
    config = _parse(path, pb.ModelServerConfig(), "ModelServerConfig")
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError(f"{path}: custom_model_config is not supported; use model_config_list")
    return _sources(config.model_config_list, str(path), path.parent)


def reloaded_model_config(data: bytes) -> tuple[ModelSource, ...]:
    """ModelService/HandleReloadConfigRequest's ModelServerConfig (serialized), as model sources,
    with what TF Serving (9d981c5c) refuses refused in its words, in its order: another kind of config
    (model_servers/model_service_impl.cc:66-69), a name listed twice (server_core.cc:117-127), a
    relative base_path (no model_config_list_root_dir; server_core.cc:139-150) and a platform that
    is missing or not TensorFlow's (server_core.cc:78-106, 655-666)."""
    config = pb.ModelServerConfig()
    try:
        config.ParseFromString(data)
    except DecodeError as exc:
        raise ConfigError(f"the ModelServerConfig does not parse: {exc}") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError("ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                          "ModelConfigList is currently supported")
    models = config.model_config_list.config
    names = [model.name for model in models]
    repeated = next((name for index, name in enumerate(names) if name in names[:index]), None)
    if repeated is not None:
        raise ConfigError(f"Illegal to list model {repeated} multiple times in config list")
    relative = next((model for model in models if "://" not in model.base_path
                     and not Path(model.base_path).is_absolute()), None)
    if relative is not None:
        raise ConfigError(f"Expected model {relative.name} to have an absolute path or URI; got "
                          f"base_path()={relative.base_path}")
    for model in models:
        _tf_platform(model)
    return _sources(config.model_config_list, "the reloaded config", None)


def _tf_platform(model: pb.ModelConfig) -> None:
    """TF Serving's GetPlatform (server_core.cc:78-106): model_platform, or the deprecated model_type,
    not both; then its router serves only "tensorflow" here."""
    platform = model.model_platform
    if model.model_type != pb.MODEL_TYPE_UNSPECIFIED:
        if platform:
            raise ConfigError("Illegal setting both ModelServerConfig::model_type (deprecated) and "
                              f"ModelServerConfig::model_platform, model name is {model.name}")
        if model.model_type != pb.TENSORFLOW:
            raise ConfigError(f"ModelServerConfig::model_type choice {model.model_type} not supported.")
        platform = "tensorflow"
    if not platform:
        raise ConfigError("Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                          f"ModelServerConfig::model_platform, model name is {model.name}")
    if platform != "tensorflow":
        raise ConfigError(f"Model {model.name} requests unsupported platform {platform}")


def _sources(models: pb.ModelConfigList, origin: str, folder: Path | None) -> tuple[ModelSource, ...]:
    """A model_config_list as model sources; relative base paths are read from ``folder``."""
    sources: list[ModelSource] = []
    for index, model in enumerate(models.config):
        where = f"{origin}: config #{index} ({model.name or 'no name'})"
        if not model.name or not model.base_path:
            raise ConfigError(f"{where}: needs name and base_path")
        if "://" in model.base_path:
            raise ConfigError(f"{where}: base_path {model.base_path} is a URI; a model config's models are read "
                              "from local folders (a remote repository: inferd serve s3://...)")
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"{where}: model_platform {model.model_platform!r} is not served; inferd's "
                              "TF Serving door serves 'tensorflow' SavedModels (other models: inferd serve)")
        if model.HasField("logging_config"):
            raise ConfigError(f"{where}: logging_config (request logging) is not supported by inferd")
        if any(s.name == model.name for s in sources):  # TF Serving's words (server_core.cc:122-125)
            raise ConfigError(f"{where}: Illegal to list model {model.name} multiple times in config list")
        base = Path(model.base_path)
        sources.append(ModelSource(
            name=model.name, base_path=base if folder is None or base.is_absolute() else folder / base,
            version_policy=_policy(model.model_version_policy, where) if model.HasField("model_version_policy")
            else None,
            version_labels={label: int(v) for label, v in model.version_labels.items()} or None))
    return tuple(sources)


def _policy(policy: pb.ServableVersionPolicy, where: str) -> VersionPolicy:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy(latest=None, all=True)
    if choice == "specific":
        if not policy.specific.versions or min(policy.specific.versions) < 1:
            raise ConfigError(f"{where}: model_version_policy.specific needs versions >= 1")
        return VersionPolicy(latest=None, specific=tuple(policy.specific.versions))
    return VersionPolicy(latest=max(policy.latest.num_versions, 1))


def read_batching(path: Path) -> BatchingDefaults:
    return batching_defaults(_parse(path, pb.BatchingParameters(), "BatchingParameters"), str(path))


def batching_defaults(params: pb.BatchingParameters, where: str = "batching parameters") -> BatchingDefaults:
    """TF Serving's batching parameters (its defaults where a field is absent) as inferd's batching."""
    if params.pad_variable_length_inputs:
        raise ConfigError(f"{where}: pad_variable_length_inputs is not supported by inferd")

    def value(field: str, default: int) -> int:
        return int(getattr(params, field).value) if params.HasField(field) else default

    max_batch = value("max_batch_size", 1000)
    if max_batch < 1:
        raise ConfigError(f"{where}: max_batch_size must be >= 1")
    allowed = tuple(sorted(int(size) for size in params.allowed_batch_sizes))
    if allowed and (allowed[-1] != max_batch or allowed[0] < 1):
        raise ConfigError(f"{where}: allowed_batch_sizes must be >= 1 and end with max_batch_size ({max_batch})")
    for field in ("thread_pool_name", "enable_large_batch_splitting", "max_execution_batch_size"):
        if params.HasField(field):
            log.warning("%s: %s is not used by inferd (ignored)", where, field)
    queue = min(value("max_enqueued_batches", 10) * max_batch, 1 << 20)
    batching = DynamicBatching(max_queue_delay_ms=value("batch_timeout_micros", 0) / 1000.0,
                               preferred_batch_sizes=allowed, max_queue_size=queue)
    return BatchingDefaults(max_batch, batching, instances=max(value("num_batch_threads", 1), 1))


def read_monitoring(path: Path) -> str | None:
    """The path Prometheus metrics answer at (None: Prometheus is not enabled)."""
    config = _parse(path, pb.MonitoringConfig(), "MonitoringConfig")
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    metrics = prometheus.path or "/monitoring/prometheus/metrics"
    if not metrics.startswith("/"):
        raise ConfigError(f"{path}: prometheus_config.path must start with '/', got {metrics!r}")
    return metrics


def grpc_channel_arguments(text: str) -> tuple[tuple[str, str | int], ...]:
    """``name=value,...`` as gRPC server options (integers where the value is one)."""
    options: list[tuple[str, str | int]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--grpc_channel_arguments: expected name=value, got {item!r}")
        options.append((name, int(raw) if raw.isascii() and raw.lstrip("-").isdigit() else raw))
    return tuple(options)


def reader(settings: ServerSettings) -> Callable[[], tuple[ModelSource, ...]] | None:
    """What the server calls to read models.config again (None: no file)."""
    path = settings.model_config_file
    if path is None:
        return None
    return lambda: read_model_config(path)
