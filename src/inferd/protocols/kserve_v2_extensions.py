"""Triton's extensions of the v2 protocol, in the shapes its clients read: statistics, model
configuration, and the repository extension's load parameters. JSON (HTTP) and messages (gRPC)."""

from __future__ import annotations

from typing import Any

import orjson

from inferd.errors import InvalidInput
from inferd.modelconfig import ServedConfig, model_config_json, model_config_message
from inferd.protocols._proto import kserve_v2_pb2 as pb
from inferd.types import Duration, IndexEntry, ModelStatistics

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


def load_override_json(body: bytes | bytearray, name: str) -> str | None:
    """The configuration override of an HTTP load request (``{"parameters": {"config": "..."}}``)."""
    if not body.strip():
        return None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"failed to load '{name}': malformed JSON in the load request: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput(f"failed to load '{name}': the load request must be a JSON object")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"failed to load '{name}': 'parameters' must be an object")
    return _override(parameters, name)


def load_override_message(message: pb.RepositoryModelLoadRequest) -> str | None:
    """The configuration override of a gRPC load request (parameter ``config``, a string)."""
    parameters: dict[str, Any] = {}
    for key, value in message.parameters.items():
        choice = value.WhichOneof("parameter_choice")
        parameters[key] = getattr(value, choice) if choice else None
    return _override(parameters, message.model_name)


def _override(parameters: dict[str, Any], name: str) -> str | None:
    files = sorted(key for key in parameters if key.startswith("file:"))
    if files:
        shown = files[0] if len(files[0]) <= 64 else files[0][:61] + "..."
        raise InvalidInput(f"failed to load '{name}': file overrides ({shown}) are not supported; put the "
                           "model's files in the repository")
    unknown = sorted(set(parameters) - {"config"})
    if unknown:
        raise InvalidInput(f"failed to load '{name}': unknown load parameter '{unknown[0]}' (known: config)")
    config = parameters.get("config")
    if config is None:
        return None
    if isinstance(config, dict):
        return orjson.dumps(config).decode()
    if not isinstance(config, str):
        raise InvalidInput(f"failed to load '{name}': parameter 'config' must be a model configuration in "
                           f"JSON, got {type(config).__name__}")
    return config
