"""Triton's extensions of the v2 protocol, in the shapes its clients read: statistics, model
configuration, the repository extension's load parameters, and shared-memory regions. JSON (HTTP) and
messages (gRPC)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from inferd.errors import InvalidInput, NotFound
from inferd.modelconfig import ServedConfig, model_config_json, model_config_message
from inferd.protocols._proto import kserve_v2_pb2 as pb
from inferd.types import Duration, IndexEntry, LoadOverride, ModelStatistics, SharedMemoryRegion, override_file_path

_REQUEST_STATS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
                  "cache_miss")


# -- statistics ------------------------------------------------------------------------------------
def statistics_json(rows: list[ModelStatistics]) -> dict[str, Any]:
    return {"model_stats": [_model_stats(row) for row in rows]}


def _model_stats(row: ModelStatistics) -> dict[str, Any]:
    stats = row.requests
    inference_stats = {key: getattr(stats, key).to_dict() for key in _REQUEST_STATS}
    return {
        "name": row.name, "version": row.version, "last_inference": stats.last_inference_ms,
        "inference_count": row.inference_count, "execution_count": row.execution_count,
        "inference_stats": inference_stats,
        "batch_stats": [{"batch_size": b.batch_size, "compute_input": Duration(b.compute_infer.count).to_dict(),
                         "compute_infer": b.compute_infer.to_dict(),
                         "compute_output": Duration(b.compute_infer.count).to_dict()} for b in row.batches],
        "memory_usage": [],
    }


def statistics_message(rows: list[ModelStatistics]) -> pb.ModelStatisticsResponse:
    message = pb.ModelStatisticsResponse()
    for row in rows:
        stats = row.requests
        item = message.model_stats.add(name=row.name, version=row.version, last_inference=stats.last_inference_ms,
                                       inference_count=row.inference_count, execution_count=row.execution_count)
        for key in _REQUEST_STATS:
            duration: Duration = getattr(stats, key)
            target = getattr(item.inference_stats, key)
            target.count, target.ns = duration.count, duration.ns
        for batch in row.batches:
            entry = item.batch_stats.add(batch_size=batch.batch_size)
            entry.compute_infer.count, entry.compute_infer.ns = batch.compute_infer.count, batch.compute_infer.ns
            entry.compute_input.count = entry.compute_output.count = batch.compute_infer.count
    return message


# -- model configuration -----------------------------------------------------------------------------
def config_json(served: ServedConfig) -> dict[str, Any]:
    return model_config_json(served)


def config_message(served: ServedConfig) -> pb.ModelConfigResponse:
    return pb.ModelConfigResponse(config=model_config_message(served).SerializeToString())


# -- repository --------------------------------------------------------------------------------------
def index_message(rows: list[IndexEntry]) -> pb.RepositoryIndexResponse:
    message = pb.RepositoryIndexResponse()
    for row in rows:
        message.models.add(name=row.name, version=row.version, state=row.state, reason=row.reason)
    return message


def load_override_json(body: bytes | bytearray, name: str) -> LoadOverride | None:
    """The overrides of an HTTP load request: ``{"parameters": {"config": "...", "file:1/model.onnx":
    "<base64>"}}``, as tritonclient's ``load_model(config=..., files=...)`` sends them."""
    parameters = _parameters_json(body, name, "load")
    return None if parameters is None else _override(parameters, name, base64_files=True)


def _parameters_json(body: bytes | bytearray, name: str, action: str) -> dict[str, Any] | None:
    """A repository request's ``{"parameters": {...}}`` (None for an empty body)."""
    if not body.strip():
        return None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"failed to {action} '{name}': malformed JSON in the {action} request: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput(f"failed to {action} '{name}': the {action} request must be a JSON object")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"failed to {action} '{name}': 'parameters' must be an object")
    return parameters


def load_override_message(message: pb.RepositoryModelLoadRequest) -> LoadOverride | None:
    """The overrides of a gRPC load request: parameter ``config`` (a string) and ``file:<path>``
    parameters (bytes)."""
    parameters: dict[str, Any] = {}
    for key, value in message.parameters.items():
        choice = value.WhichOneof("parameter_choice")
        parameters[key] = getattr(value, choice) if choice else None
    return _override(parameters, message.model_name, base64_files=False)


def unload_dependents_json(body: bytes | bytearray, name: str) -> bool:
    """An HTTP unload's ``{"parameters": {"unload_dependents": true}}`` (tritonclient's
    ``unload_model(name, unload_dependents=True)``); other parameters are ignored, as Triton does."""
    parameters = _parameters_json(body, name, "unload")
    return parameters is not None and _unload_dependents(parameters.get("unload_dependents", False), name)


def unload_dependents_message(message: pb.RepositoryModelUnloadRequest) -> bool:
    """A gRPC unload's ``unload_dependents`` parameter (a ``bool_param``)."""
    if "unload_dependents" not in message.parameters:
        return False
    value = message.parameters["unload_dependents"]
    choice = value.WhichOneof("parameter_choice")
    return _unload_dependents(getattr(value, choice) if choice else None, message.model_name)


def _unload_dependents(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"failed to unload '{name}': parameter 'unload_dependents' must be a boolean, "
                           f"got {_short(repr(value))}")
    return value


def _override(parameters: dict[str, Any], name: str, base64_files: bool) -> LoadOverride | None:
    unknown = sorted(key for key in parameters if key != "config" and not key.startswith("file:"))
    if unknown:
        raise InvalidInput(f"failed to load '{name}': unknown load parameter '{_short(unknown[0])}' "
                           "(known: config, file:<path>)")
    files = {_file_path(key, name): _file_content(key, parameters[key], name, base64_files)
             for key in sorted(parameters) if key.startswith("file:")}
    config = parameters.get("config")
    if config is None:
        if files:
            raise InvalidInput(f"failed to load '{name}', failed to poll from model repository: file overrides "
                               "need parameter 'config', the model configuration of the folder they make")
        return None
    if isinstance(config, dict):
        config = orjson.dumps(config).decode()
    elif not isinstance(config, str):
        raise InvalidInput(f"failed to load '{name}': parameter 'config' must be a model configuration in "
                           f"JSON, got {type(config).__name__}")
    return LoadOverride(config=config, files=files)


def _short(key: str) -> str:
    return key if len(key) <= 64 else key[:61] + "..."


def _file_path(key: str, name: str) -> str:
    """``file:1/model.onnx`` -> ``1/model.onnx``: a relative path that stays inside the model folder."""
    path = override_file_path(key)
    if path is None:
        raise InvalidInput(f"failed to load '{name}': override file '{_short(key)}' must be file:<relative "
                           "path> inside the model folder (e.g. file:1/model.onnx), without '..'")
    return path


def _file_content(key: str, value: Any, name: str, base64_files: bool) -> bytes:
    if base64_files:
        if not isinstance(value, str):
            raise InvalidInput(f"failed to load '{name}': override file '{_short(key)}' must be base64 text, "
                               f"got {type(value).__name__}")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"failed to load '{name}': override file '{_short(key)}' is not valid "
                               "base64") from None
    if not isinstance(value, bytes):
        raise InvalidInput(f"failed to load '{name}': override file '{_short(key)}' must be a bytes "
                           f"parameter, got {type(value).__name__}")
    return value


# -- shared memory (system; CUDA regions are never held: no GPU memory is shared here) ---------------
def shared_memory_register_json(body: bytes | bytearray) -> tuple[str, int, int]:
    """A register request's key, offset and byte_size, as Triton reads them."""
    try:
        payload = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON in the shared memory register request: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput("a shared memory register request must be a JSON object with 'key' and 'byte_size'")
    if "key" not in payload:
        raise InvalidInput("Shared memory register request has no 'key' field")
    if "byte_size" not in payload:
        raise InvalidInput("Shared memory register request has no 'byte_size' field")
    key, offset, byte_size = payload["key"], payload.get("offset", 0), payload["byte_size"]
    if not isinstance(key, str):
        raise InvalidInput(f"a shared memory register request's 'key' must be a string, got {key!r}")
    return key, offset, byte_size


def shared_memory_status_json(rows: list[SharedMemoryRegion]) -> list[dict[str, Any]]:
    return [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in rows]


def shared_memory_status_message(rows: list[SharedMemoryRegion]) -> pb.SystemSharedMemoryStatusResponse:
    message = pb.SystemSharedMemoryStatusResponse()
    for r in rows:
        message.regions[r.name].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(
            name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size))
    return message


def cuda_shared_memory_status(name: str | None) -> list[dict[str, Any]]:
    """No CUDA region is ever registered: all of them is none, one of them unknown."""
    if name:
        raise NotFound(f"Unable to find cuda shared memory region: '{name}'")
    return []


def cuda_shared_memory_refusal(name: str) -> InvalidInput:
    return InvalidInput(f"failed to register CUDA shared memory region '{name}': this server shares no GPU memory "
                        "(use system shared memory)")


# -- logging -------------------------------------------------------------------------------------------
def log_settings_changes(message: pb.LogSettingsRequest) -> dict[str, object]:
    return {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in message.settings.items()}


def log_settings_message(values: dict[str, bool | int | str]) -> pb.LogSettingsResponse:
    message = pb.LogSettingsResponse()
    for key, value in values.items():
        entry = message.settings[key]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.uint32_param = value
        else:
            entry.string_param = value
    return message


# -- trace ---------------------------------------------------------------------------------------------
def trace_settings_changes(message: pb.TraceSettingRequest) -> dict[str, object]:
    """A TraceSetting request's changes: a value list left empty clears the setting (None); one
    value is the value (trace_level's list stays a list)."""
    changes: dict[str, object] = {}
    for key, setting in message.settings.items():
        values = list(setting.value)
        if not values:
            changes[key] = None
        elif key == "trace_level":
            changes[key] = values
        elif len(values) == 1:
            changes[key] = values[0]
        else:
            raise InvalidInput(f"expect only 1 value for '{key}', got {len(values)}")
    return changes


def trace_settings_message(values: dict[str, Any]) -> pb.TraceSettingResponse:
    message = pb.TraceSettingResponse()
    for key, value in values.items():
        message.settings[key].value.extend(value if isinstance(value, list) else [value])
    return message
