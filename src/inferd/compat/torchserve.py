"""``inferd torchserve [FLAGS]``: the ``torchserve`` command line and its ``config.properties``.

A TorchServe deployment changes only the command's name: the same flags (``--start``,
``--foreground``, ``--model-store``, ``--models``, ``--ts-config``, ``--ncs``,
``--disable-token-auth``, ``--enable-model-api``), the same ``config.properties`` keys, and the
same three addresses (inference 8080, management 8081, metrics 8082 on 127.0.0.1 by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from inferd.compat import torchserve_snapshots
from inferd.config import Listener, ServerSettings, TorchServeSettings
from inferd.errors import ConfigError

log = logging.getLogger("inferd.torchserve")

TORCHSERVE_ALLOWED_URLS = ("file://.*", "http(s)?://.*")  # TorchServe's default allowed_urls
DEFAULT_ADDRESSES = {"inference_address": "http://127.0.0.1:8080", "management_address": "http://127.0.0.1:8081",
                     "metrics_address": "http://127.0.0.1:8082"}
PID_FILE = Path(tempfile.gettempdir()) / ".model_server.pid"  # where TorchServe keeps it
READY_LINE = "Model server started."  # TorchServe's front end logs it once serving; its launcher waits for it
# keys that only tune TorchServe's Java front end or its workers: accepted, named in a warning
IGNORED = ("number_of_netty_threads", "netty_client_threads", "async_logging",
           "vmargs", "cpu_launcher_enable", "cpu_launcher_args", "ipex_enable",
           "initial_worker_port", "unregister_model_timeout", "prefer_direct_buffer", "enable_metrics_api",
           "blacklist_env_vars", "metrics_format", "cors_allowed_origin", "cors_allowed_methods",
           "cors_allowed_headers", "max_response_size", "use_native_io", "io_ratio", "limit_max_image_pixels",
           "ts_open_inference_protocol", "enable_grpc_ssl",
           "grpc_inference_address", "grpc_management_address", "snapshot_store",
           "default_service_handler", "job_queue_size")
# service_envelope's names (TorchServe's ts.torch_handler.request_envelope modules; runtimes/ts_envelopes.py)
SERVICE_ENVELOPES = ("body", "json", "kserve", "kservev2")
DECODE_ENV, ENVELOPE_ENV = "TS_DECODE_INPUT_REQUEST", "INFERD_TS_SERVICE_ENVELOPE"  # read by runtimes/handler.py
METRICS_CONFIG_ENV = "INFERD_TS_METRICS_CONFIG"  # read by runtimes/ts_metrics.py: a handler's declared metrics
INSTALL_DEPS_ENV = "INFERD_TS_INSTALL_PY_DEP_PER_MODEL"  # read by runtimes/ts_requirements.py
# keys whose honest answer is a refusal: ignoring them would change what is served
REFUSED = {"keystore": "TLS is not served; put a TLS proxy in front",
           "private_key_file": "TLS is not served; put a TLS proxy in front",
           "certificate_file": "TLS is not served; put a TLS proxy in front",
           "plugins_path": "TorchServe's Java plugins cannot run in inferd"}


def parser() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(prog="inferd torchserve", description="inferd with torchserve's flags "
                                    "and config.properties: a TorchServe deployment changes only the command.")
    flags.add_argument("--start", action="store_true", help="start the server, which runs on in a process of its own")
    flags.add_argument("--stop", action="store_true", help="stop the server this machine runs (its pid file)")
    flags.add_argument("--foreground", action="store_true",
                       help="--start: serve in this process; --stop: return once the server has exited")
    flags.add_argument("--ts-config", dest="ts_config", default=None, help="config.properties")
    flags.add_argument("--model-store", dest="model_store", default=None)
    flags.add_argument("--models", nargs="+", default=None, help="all, or [name=]archive.mar ...")
    flags.add_argument("--ncs", "--no-config-snapshots", dest="ncs", action="store_true",
                       help="no config snapshots: none written, none restored")
    flags.add_argument("--disable-token-auth", "--dt", dest="disable_token_auth", action="store_true")
    flags.add_argument("--enable-model-api", dest="enable_model_api", action="store_true")
    flags.add_argument("--log-config", dest="log_config", default=None, help="accepted and ignored (log4j)")
    flags.add_argument("--workflow-store", dest="workflow_store", default=None)
    flags.add_argument("--plugins-path", "--ppath", dest="plugins_path", default=None)
    flags.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return flags


def read_properties(text: str) -> dict[str, str]:
    """Java ``.properties``: ``key=value`` or ``key: value``, ``#``/``!`` comments, a trailing
    backslash continues the line (how ``models={...}`` spans lines)."""
    properties: dict[str, str] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.strip() if not logical else raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            logical += line[:-1]
            continue
        logical += line
        match = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", logical)
        if match:
            properties[match.group(1)] = match.group(2).strip()
        elif logical:
            properties[logical] = ""
        logical = ""
    return properties


def _address(value: str, key: str) -> tuple[str, int]:
    parsed = urlparse(value)
    if parsed.scheme == "https":
        raise ConfigError(f"{key}={value}: TLS is not served; put a TLS proxy in front (use http://)")
    if parsed.scheme != "http" or parsed.hostname is None or parsed.port is None:
        raise ConfigError(f"{key}={value}: expected http://HOST:PORT")
    return parsed.hostname, parsed.port


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _int(properties: dict[str, str], key: str, default: int) -> int:
    value = properties.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{key}={value}: expected an integer") from None


_SEQUENCE_KEYS = (("ts_header_key_sequence_id", "ts_request_sequence_id"),
                  ("ts_header_key_sequence_start", "ts_request_sequence_start"),
                  ("ts_header_key_sequence_end", "ts_request_sequence_end"))
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


def _sequence_headers(properties: dict[str, str]) -> tuple[str, str, str]:
    """The headers a stateful request's sequence travels in (TorchServe's ConfigManager reads these
    keys; a handler's Context reads its own TS_REQUEST_SEQUENCE_* variables, as in TorchServe)."""
    names = []
    for key, default in _SEQUENCE_KEYS:
        name = properties.get(key) or default
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError(f"{key}={name}: expected an HTTP header name (letters, digits, '-', '_', ...)")
        names.append(name)
    return names[0], names[1], names[2]


def _metrics_settings(properties: dict[str, str]) -> dict[str, Any]:
    """``metrics_mode``, ``metrics_config`` and ``model_metrics_auto_detect`` (how handlers' model
    metrics are kept: observability/torchserve_model_metrics.py)."""
    mode = properties.get("metrics_mode", "log").strip().lower()
    if mode not in ("log", "prometheus", "legacy"):
        raise ConfigError(f"metrics_mode={mode}: expected one of log, prometheus, legacy")
    config = properties.get("metrics_config")
    return {"metrics_mode": mode, "metrics_config": Path(config) if config else None,
            "model_metrics_auto_detect": _true(properties.get("model_metrics_auto_detect"))}


def _handler_environ(properties: dict[str, str]) -> dict[str, str]:
    """What TorchServe's front end tells its workers of ``metrics_config``, ``decode_input_request`` (the
    ``TS_DECODE_INPUT_REQUEST`` variable, ``true`` by default), ``service_envelope`` and
    ``install_py_dep_per_model`` (whether an archive's requirements are installed): the
    variables the server's handler models read, in this process and its instance processes."""
    envelope = properties.get("service_envelope", "")
    if envelope and envelope not in SERVICE_ENVELOPES:
        raise ConfigError(f"service_envelope={envelope}: expected one of {', '.join(SERVICE_ENVELOPES)}")
    metrics_config = properties.get("metrics_config", "")
    return {DECODE_ENV: properties.get("decode_input_request", "true"), ENVELOPE_ENV: envelope,
            METRICS_CONFIG_ENV: str(Path(metrics_config).resolve()) if metrics_config else "",
            INSTALL_DEPS_ENV: "true" if _true(properties.get("install_py_dep_per_model")) else ""}


@dataclass(frozen=True, slots=True)
class Started:
    settings: ServerSettings
    key_file: Path | None  # TorchServe's key_file.json, when token authorization is on
    handler_environ: dict[str, str] = field(default_factory=dict)  # for the handlers: _handler_environ
    system_metrics: bool = True  # not disable_system_metrics: ts_metrics.log has the host's (torchserve_logs.py)


def settings_from_flags(args: argparse.Namespace, environ: dict[str, str] | None = None,
                        cwd: Path | None = None) -> Started:
    """Flags + config.properties (+ ``TS_*`` variables when ``enable_envvars_config=true``) ->
    the settings ``inferd serve`` runs with, TorchServe's three addresses as listeners."""
    environ = dict(os.environ) if environ is None else environ
    cwd = cwd or Path.cwd()
    config_path = args.ts_config or environ.get("TS_CONFIG_FILE")
    snapshots = None if args.ncs else torchserve_snapshots.folder(environ, cwd)
    if config_path is None and snapshots is not None:  # TorchServe starts from its newest snapshot
        newest = torchserve_snapshots.latest(snapshots)
        config_path = str(newest) if newest is not None else None
    properties: dict[str, str] = {}
    if config_path:
        try:
            properties = read_properties(Path(config_path).read_text())
        except OSError as exc:
            raise ConfigError(f"--ts-config {config_path}: {exc.strerror or exc}") from None
    if _true(properties.get("enable_envvars_config")):
        for name, value in environ.items():
            if name.startswith("TS_") and name != "TS_CONFIG_FILE":
                properties[name[3:].lower()] = value
    if args.plugins_path:
        raise ConfigError(f"--plugins-path: {REFUSED['plugins_path']}")
    for key, why in REFUSED.items():
        if properties.get(key):
            raise ConfigError(f"{key} in {config_path}: {why}")
    ignored = sorted(key for key in properties if key in IGNORED)
    if ignored:
        log.warning("config.properties keys that tune TorchServe's internals, ignored: %s", ", ".join(ignored))

    store_text = args.model_store or properties.get("model_store")
    model_store = Path(store_text) if store_text else None
    workflow_store = args.workflow_store or properties.get("workflow_store")
    for flag, folder in (("--model-store", model_store), ("--workflow-store", workflow_store)):
        if folder is not None and not Path(folder).is_dir():  # TorchServe's words; it does not start either
            raise ConfigError(f"{flag} directory not found: {folder}")
    models_text = " ".join(args.models) if args.models else properties.get("load_models", "")
    models = tuple(item for item in re.split(r"[,\s]+", models_text) if item)
    if models == ("standalone",):
        models = ()
    restore = {}
    if properties.get(torchserve_snapshots.SNAPSHOT_KEY):  # a snapshot's models, not load_models
        restore = torchserve_snapshots.models_of(properties[torchserve_snapshots.SNAPSHOT_KEY], str(config_path))
        torchserve_snapshots.check_archives(restore, model_store, str(config_path))
        models = ()
    listeners: list[Listener] = []
    hosts = set()
    for key, apis in (("inference_address", ("inference",)), ("management_address", ("management",)),
                      ("metrics_address", ("metrics",))):
        host, port = _address(properties.get(key, DEFAULT_ADDRESSES[key]), key)
        hosts.add(host)
        same = next((i for i, listener in enumerate(listeners) if (listener.host, listener.port) == (host, port)), None)
        if same is not None:  # TorchServe lets two APIs share an address
            listeners[same] = Listener(host, port, (*listeners[same].apis, *apis))
        else:
            listeners.append(Listener(host, port, apis))

    token_auth = not _token_auth_disabled(args, properties, environ)
    model_api = args.enable_model_api or _true(properties.get("enable_model_api"))
    key_file = cwd / "key_file.json" if token_auth else None
    try:
        per_model = json.loads(properties["models"]) if properties.get("models") else {}
    except ValueError as exc:
        raise ConfigError(f"models in {config_path} is not JSON: {exc}") from None
    gpus = _int(properties, "number_of_gpu", 0)
    default_workers = _int(properties, "default_workers_per_model", 0)
    startup_workers = default_workers or gpus or (os.cpu_count() or 1)
    allowed = properties.get("allowed_urls")
    torchserve = TorchServeSettings(
        allowed_urls=tuple(u for u in allowed.split(",") if u) if allowed else TORCHSERVE_ALLOWED_URLS,
        default_workers=default_workers, startup_workers=startup_workers,
        response_timeout_s=_int(properties, "default_response_timeout", 120),
        startup_timeout_s=_int(properties, "default_startup_timeout", 120),
        models=per_model if isinstance(per_model, dict) else {}, model_api=model_api,
        workflow_store=Path(workflow_store) if workflow_store else None, key_file=key_file,
        token_expiration_min=_float(properties, "token_expiration_min", 60.0),
        sequence_headers=_sequence_headers(properties), **_metrics_settings(properties),
        system_metrics=not _true(properties.get("disable_system_metrics")),
        snapshots=snapshots, restore=restore,
        snapshot_properties=_snapshot_properties(properties, model_store, models_text, config_path))
    host = "127.0.0.1" if hosts == {"127.0.0.1"} else sorted(hosts)[0]
    grpc_inference, grpc_management = _int(properties, "grpc_inference_port", 7070), _int(
        properties, "grpc_management_port", 7071)
    settings = ServerSettings(
        model_repository=None, host=host, http_port=0, model_control="explicit",
        # TorchServe's gRPC inference and management ports (each serves both APIs here)
        grpc_port=grpc_inference, grpc_extra_ports=(grpc_management,) if grpc_management != grpc_inference else (),
        model_store=model_store,
        models=models if model_store is not None else (), log_level=args.log_level,
        max_body_bytes=_int(properties, "max_request_size", 6553500), torchserve=torchserve,
        listeners=tuple(listeners), pid_file=PID_FILE, access_log=True,  # access_log.log (torchserve_logs.py)
        ready_line=READY_LINE)
    handler_environ = _handler_environ(properties)
    return Started(settings, key_file, handler_environ, not _true(properties.get("disable_system_metrics")))


def _snapshot_properties(properties: dict[str, str], model_store: Path | None, models_text: str,
                         config_path: str | None) -> dict[str, str]:
    """What a snapshot repeats: config.properties with the flags' model store and models (TorchServe's
    ConfigManager.getConfiguration)."""
    kept = {key: value for key, value in properties.items() if key != torchserve_snapshots.SNAPSHOT_KEY}
    if model_store is not None:
        kept["model_store"] = str(model_store.resolve())
    if models_text:
        kept["load_models"] = models_text
    if config_path:
        kept["tsConfigFile"] = config_path
    return kept


def _token_auth_disabled(args: argparse.Namespace, properties: dict[str, str], environ: dict[str, str]) -> bool:
    """TorchServe's order: ``TS_DISABLE_TOKEN_AUTHORIZATION`` (with ``enable_envvars_config=true``),
    then ``--disable-token-auth``, then ``disable_token_authorization``."""
    variable = environ.get("TS_DISABLE_TOKEN_AUTHORIZATION")
    if variable is not None and _true(properties.get("enable_envvars_config")):
        return _true(variable)
    return bool(args.disable_token_auth) or _true(properties.get("disable_token_authorization"))


def _float(properties: dict[str, str], key: str, default: float) -> float:
    value = properties.get(key)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{key}={value}: expected a number") from None
    if not number > 0:
        raise ConfigError(f"{key}={value}: expected a number > 0")
    return number
