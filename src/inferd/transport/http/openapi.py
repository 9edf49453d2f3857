"""``GET /openapi.json``: an OpenAPI 3.0 description of every HTTP route inferd serves.

Written by hand from the routes (KServe v2, TF Serving REST, TorchServe, /metrics); the test suite
runs schemathesis against a live server with it, so a route that answers a status or shape this
document does not declare fails CI.
"""

from __future__ import annotations

from typing import Any

import inferd
from inferd.transport.http.app import HttpRequest, HttpResponse, Router, json_response

JSON = "application/json"
_STRING = {"type": "string"}
_V2_ERROR = {"type": "object", "required": ["error"], "properties": {"error": _STRING}}
_TS_ERROR = {"type": "object", "required": ["code", "type", "message"],
             "properties": {"code": {"type": "integer"}, "type": _STRING, "message": _STRING}}
_ERRORS = {400: "bad request: what was expected and what came", 401: "missing or wrong bearer token",
           403: "the operation is switched off", 404: "unknown model, version or label",
           413: "body or tensor above a limit", 500: "the model failed while running the request",
           503: "not ready, queue full or draining", 504: "the request's deadline passed"}

_TENSOR_META = {"type": "object", "required": ["name", "datatype", "shape"],
                "properties": {"name": _STRING, "datatype": _STRING,
                               "shape": {"type": "array", "items": {"type": "integer"}}}}
_V2_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"],
              "properties": {"name": _STRING, "shape": {"type": "array", "items": {"type": "integer"}},
                             "datatype": _STRING, "parameters": {"type": "object"}, "data": {}}}
_V2_INFER_REQUEST = {
    "type": "object", "required": ["inputs"],
    "properties": {"id": _STRING, "parameters": {"type": "object"},
                   "inputs": {"type": "array", "items": _V2_TENSOR},
                   "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                                           "properties": {"name": _STRING,
                                                                          "parameters": {"type": "object"}}}}},
}
_V2_INFER_RESPONSE = {
    "type": "object", "required": ["model_name", "outputs"],
    "properties": {"model_name": _STRING, "model_version": _STRING, "id": _STRING,
                   "parameters": {"type": "object"}, "outputs": {"type": "array", "items": _V2_TENSOR}},
}
_MODEL_METADATA = {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                   "properties": {"name": _STRING, "versions": {"type": "array", "items": _STRING},
                                  "platform": _STRING, "inputs": {"type": "array", "items": _TENSOR_META},
                                  "outputs": {"type": "array", "items": _TENSOR_META}}}
_INDEX = {"type": "array", "items": {"type": "object", "required": ["name", "state"],
                                     "properties": {"name": _STRING, "version": _STRING, "state": _STRING,
                                                    "reason": _STRING}}}
_DURATION = {"type": "object", "required": ["count", "ns"],
             "properties": {"count": {"type": "integer"}, "ns": {"type": "integer"}}}
_STATS = {"type": "object", "required": ["model_stats"], "properties": {"model_stats": {"type": "array", "items": {
    "type": "object", "required": ["name", "version", "inference_count", "execution_count", "inference_stats",
                                   "batch_stats"],
    "properties": {"name": _STRING, "version": _STRING, "last_inference": {"type": "integer"},
                   "inference_count": {"type": "integer"}, "execution_count": {"type": "integer"},
                   "inference_stats": {"type": "object", "additionalProperties": _DURATION},
                   "batch_stats": {"type": "array", "items": {"type": "object"}}}}}}}
_MODEL_CONFIG = {"type": "object", "required": ["name", "max_batch_size", "input", "output"],
                 "properties": {"name": _STRING, "platform": _STRING, "backend": _STRING,
                                "max_batch_size": {"type": "integer"},
                                "input": {"type": "array", "items": {"type": "object"}},
                                "output": {"type": "array", "items": {"type": "object"}}}}
_HEALTH = {"type": "object", "properties": {"live": {"type": "boolean"}, "ready": {"type": "boolean"}}}
_TF_STATUS = {"type": "object", "required": ["model_version_status"],
              "properties": {"model_version_status": {"type": "array", "items": {"type": "object"}}}}
_TF_PREDICT = {"type": "object", "properties": {"signature_name": _STRING, "instances": {}, "inputs": {}}}
_TF_ANSWER = {"type": "object", "properties": {"predictions": {}, "outputs": {}}}
_TF_EXAMPLES = {"type": "object", "required": ["examples"],
                "properties": {"signature_name": _STRING, "context": {"type": "object"},
                               "examples": {"type": "array", "items": {"type": "object"}}}}
_TF_RESULTS = {"type": "object", "required": ["results"], "properties": {"results": {"type": "array"}}}
_STATUS = {"type": "object", "required": ["status"], "properties": {"status": _STRING}}


def _param(name: str, where: str = "path", schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": schema or _STRING}


def _op(summary: str, ok: dict[str, Any] | None, errors: tuple[int, ...], *, error_schema: dict[str, Any] = _V2_ERROR,
        body: dict[str, Any] | None = None, params: tuple[str, ...] = (),
        query: tuple[dict[str, Any], ...] = (), ok_type: str = JSON) -> dict[str, Any]:
    """One operation: ``ok`` is the 200 body's schema (None: an empty 200)."""
    responses: dict[str, Any] = {"200": {"description": "OK"}}
    if ok is not None:
        responses["200"]["content"] = {ok_type: {"schema": ok}}
    for code in errors:
        responses[str(code)] = {"description": _ERRORS[code], "content": {JSON: {"schema": error_schema}}}
    operation: dict[str, Any] = {"summary": summary, "responses": responses,
                                 "parameters": [_param(p) for p in params] + list(query)}
    if body is not None:
        operation["requestBody"] = {"required": False, "content": body}
    return operation


def _v2_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": _op("server is live: {\"live\": true}", _HEALTH, (503,))},
        "/v2/health/ready": {"get": _op("every model that should load has loaded: {\"ready\": true}", _HEALTH,
                                        (503,))},
        "/v2/models/stats": {"get": _op("statistics of every loaded model version (Triton's shape)", _STATS, ())},
        "/v2": {"get": _op("server metadata", {"type": "object", "required": ["name", "version", "extensions"]}, ())},
        "/v2/repository/index": {"post": _op(
            "the repository's models, versions and states", _INDEX, (400,),
            body={JSON: {"schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}})},
    }
    for action in ("load", "unload"):
        paths[f"/v2/repository/models/{{model}}/{action}"] = {"post": _op(
            f"{action} a model (model control explicit); load takes parameters.config, a JSON model "
            "configuration whose keys replace the model's own, and file:<path> parameters (base64), the "
            "model folder for this load", None, (400, 401, 403, 404, 503), params=("model",),
            body={JSON: {"schema": {"type": "object", "properties": {"parameters": {"type": "object"}}}}})}
    paths.update(_shared_memory_paths())
    settings = {"type": "object", "additionalProperties": True}
    paths["/v2/logging"] = {
        "get": _op("Triton's logging extension: the log settings", settings, (401,)),
        "post": _op("change log settings (log_info, log_warning, log_error, log_verbose_level, log_format)",
                    settings, (400, 401), body={JSON: {"schema": settings}})}
    trace = {"type": "object", "required": ["trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file",
                                            "trace_mode"],
             "properties": {"trace_level": {"type": "array", "items": {"type": "string"}},
                            **{key: {"type": "string"} for key in ("trace_rate", "trace_count", "log_frequency",
                                                                   "trace_file", "trace_mode")}}}
    for path, named in (("/v2/trace/setting", ()), ("/v2/models/{model}/trace/setting", ("model",))):
        paths[path] = {
            "get": _op("Triton's trace extension: the trace settings (a model's: 400 unless it is loaded)", trace,
                       (400, 401), params=named),
            "post": _op("change trace settings (trace_level, trace_rate, trace_count, log_frequency; null clears "
                        "one)", trace, (400, 401), params=named, body={JSON: {"schema": settings}})}
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    for prefix, params in (("/v2/models/{model}", ("model",)),
                           ("/v2/models/{model}/versions/{version}", ("model", "version"))):
        paths[prefix] = {"get": _op("model metadata", _MODEL_METADATA, (404, 503), params=params)}
        paths[prefix + "/ready"] = {"get": _op("model is ready", None, (404, 503), params=params)}
        paths[prefix + "/config"] = {"get": _op("model configuration (Triton's ModelConfig as JSON)", _MODEL_CONFIG,
                                                (404, 503), params=params)}
        paths[prefix + "/stats"] = {"get": _op("statistics of the model's loaded versions (Triton's shape)", _STATS,
                                               (404,), params=params)}
        paths[prefix + "/infer"] = {"post": _op(
            "run the model (JSON, or the binary-data extension)", _V2_INFER_RESPONSE,
            (400, 401, 404, 413, 500, 503, 504), params=params,
            body={JSON: {"schema": _V2_INFER_REQUEST}, **binary})}
        generate_body = {JSON: {"schema": {"type": "object", "additionalProperties": True}}}
        paths[prefix + "/generate"] = {"post": _op(
            "Triton's generate extension: the model's inputs by name in, its outputs by name out (one answer)",
            {"type": "object", "required": ["model_name", "model_version"]}, (400, 401, 404, 500, 503, 504),
            params=params, body=generate_body)}
        paths[prefix + "/generate_stream"] = {"post": _op(
            "the generate extension as Server-Sent Events: each answer of a decoupled model as it comes",
            {"type": "string"}, (400, 401, 404, 500, 503, 504), params=params, body=generate_body,
            ok_type="text/event-stream")}
    return paths


def _shared_memory_paths() -> dict[str, Any]:
    """Triton's shared-memory extension (system regions with --allow-client-shm; CUDA holds none)."""
    region = {"type": "object", "required": ["name", "byte_size"],
              "properties": {"name": _STRING, "key": _STRING, "offset": {"type": "integer"},
                             "device_id": {"type": "integer"}, "byte_size": {"type": "integer"}}}
    register = {JSON: {"schema": {"type": "object", "properties": {
        "key": _STRING, "offset": {"type": "integer"}, "byte_size": {"type": "integer"}}}}}
    paths: dict[str, Any] = {}
    for kind in ("systemsharedmemory", "cudasharedmemory"):
        for prefix, params in ((f"/v2/{kind}", ()), (f"/v2/{kind}/region/{{region}}", ("region",))):
            paths[prefix + "/status"] = {"get": _op(f"{kind}: registered regions", {"type": "array", "items": region},
                                                    (400, 401, 404), params=params)}
            paths[prefix + "/unregister"] = {"post": _op(f"{kind}: unregister the region, or all of them", None,
                                                         (400, 401), params=params)}
        paths[f"/v2/{kind}/region/{{region}}/register"] = {"post": _op(
            f"{kind}: register a region (key, offset, byte_size)", None, (400, 401), params=("region",),
            body=register)}
    return paths


def _tfserving_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for prefix, params in (("/v1/models/{model}", ("model",)),
                           ("/v1/models/{model}/versions/{version}", ("model", "version")),
                           ("/v1/models/{model}/labels/{label}", ("model", "label"))):
        paths[prefix] = {"get": _op("TF Serving model status", _TF_STATUS, (400, 404), params=params)}
        paths[prefix + "/metadata"] = {"get": _op("TF Serving model metadata", {"type": "object"}, (400, 404, 503),
                                                  params=params)}
        paths[prefix + ":predict"] = {"post": _op(
            "TF Serving predict (row `instances` or columnar `inputs`)", _TF_ANSWER,
            (400, 401, 404, 413, 500, 503, 504), params=params, body={JSON: {"schema": _TF_PREDICT}})}
        for verb, what in (("classify", "classes and scores"), ("regress", "one value")):
            paths[prefix + ":" + verb] = {"post": _op(
                f"TF Serving {verb}: tf.Example features in, {what} per example", _TF_RESULTS,
                (400, 401, 404, 413, 500, 503, 504), params=params, body={JSON: {"schema": _TF_EXAMPLES}})}
    return paths


def _torchserve_paths() -> dict[str, Any]:
    ts = _TS_ERROR  # TorchServe routes answer errors in its own shape
    any_body = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    answer = {"description": "the handler's answer, in its own content type",
              "content": {"*/*": {"schema": {}}}}
    workers = (_param("min_worker", "query", {"type": "integer"}), _param("max_worker", "query", {"type": "integer"}))
    paths: dict[str, Any] = {
        "/ping": {"get": _op("TorchServe health", _STATUS, (500,), error_schema=ts)},
        "/models": {
            "get": _op("TorchServe: registered models", {"type": "object", "required": ["models"]}, (400,),
                       error_schema=ts),
            "post": _op("TorchServe: register an archive from the model store", _STATUS,
                        (400, 401, 403, 404, 503), query=(_param("url", "query"), _param("model_name", "query"),
                                                          _param("initial_workers", "query", {"type": "integer"})),
                        error_schema=ts),
        },
    }
    predictions = (("/predictions/{model}", ("model",)), ("/predictions/{model}/{version}", ("model", "version")))
    for path, params in predictions:
        operation = _op("TorchServe inference: the raw body goes to the handler", {},
                        (400, 401, 404, 413, 500, 503, 504), params=params, body=any_body, error_schema=ts)
        operation["responses"]["200"] = answer
        paths[path] = {"post": operation}
    explanations = (("/explanations/{model}", ("model",)), ("/explanations/{model}/{version}", ("model", "version")),
                    ("/v1/models/{model}:explain", ("model",)), ("/v2/models/{model}/explain", ("model",)))
    for path, params in explanations:
        operation = _op("TorchServe explanations: the raw body goes to the handler's explain_handle", {},
                        (400, 401, 404, 413, 500, 503, 504), params=params, body=any_body, error_schema=ts)
        operation["responses"]["200"] = answer
        paths[path] = {"post": operation}
    customized = _param("customized", "query")  # true: the handler's describe_handle answers too
    for path, params in (("/models/{model}", ("model",)), ("/models/{model}/{version}", ("model", "version"))):
        paths[path] = {
            "get": _op("TorchServe: describe a model", {"type": "array", "items": {"type": "object"}},
                       (404, 500, 503), params=params, query=(customized,), error_schema=ts),
            "put": _op("TorchServe: scale workers", _STATUS, (400, 401, 403, 404), params=params, query=workers,
                       error_schema=ts),
            "delete": _op("TorchServe: unregister", _STATUS, (400, 401, 403, 404), params=params, error_schema=ts),
        }
    paths["/models/{model}/{version}/set-default"] = {"put": _op(
        "TorchServe: set the default version", _STATUS, (401, 403, 404), params=("model", "version"), error_schema=ts)}
    return paths


def document() -> dict[str, Any]:
    metrics = _op("Prometheus metrics", {"type": "string"}, (404,), ok_type="text/plain")
    return {
        "openapi": "3.0.3",
        "info": {"title": "inferd", "version": inferd.__version__,
                 "description": "KServe v2, TF Serving REST and TorchServe inference and management APIs, "
                                "on one port. Errors carry what was expected and what came."},
        "paths": {**_v2_paths(), **_tfserving_paths(), **_torchserve_paths(), "/metrics": {"get": metrics}},
    }


class OpenApiRoutes:
    """``/openapi.json``."""

    def __init__(self) -> None:
        self._document = json_response(document())

    def register(self, router: Router) -> None:
        router.add("GET", "/openapi.json", self.openapi)

    async def openapi(self, request: HttpRequest) -> HttpResponse:
        return self._document
