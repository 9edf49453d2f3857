"""TorchServe's inference and management API payloads <-> inferd types. Pure functions."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from inferd.errors import InstanceLost, InvalidInput, ModelError, NotFound
from inferd.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelState,
    SequenceSettings,
    Tensor,
    VersionDescription,
    numpy_dtype,
)

PROTOCOL = "torchserve"


def _bytes_tensor(name: str, value: bytes) -> Tensor:
    array = np.empty(1, dtype=object)
    array[0] = value
    return Tensor(name, "BYTES", array)


# the headers that name a request's stateful sequence (TorchServe's default names)
SEQUENCE_ID = "ts_request_sequence_id"
SEQUENCE_START, SEQUENCE_END = "ts_request_sequence_start", "ts_request_sequence_end"


@dataclass(frozen=True, slots=True)
class SequenceHeaders:
    """The header names a stateful request's sequence travels in (config.properties'
    ``ts_header_key_sequence_id``, ``_start`` and ``_end``; TorchServe's defaults when not given).
    Over gRPC StreamPredictions2, start and end are keys of the request's input map."""

    id: str = SEQUENCE_ID
    start: str = SEQUENCE_START
    end: str = SEQUENCE_END


DEFAULT_SEQUENCE_HEADERS = SequenceHeaders()


def new_sequence(keys: SequenceHeaders = DEFAULT_SEQUENCE_HEADERS) -> dict[str, str]:
    """The headers of a request that starts a sequence the server names, ``ts-seq-<uuid>`` (TorchServe's
    front end, for a stateful model's request that names none)."""
    return {keys.id: f"ts-seq-{uuid.uuid4()}", keys.start: "true"}


# the sequence of a workflow's requests to a stateful node that name none: TorchServe's job group ""
# (RequestInput.getSequenceId). inferd's sequences need a non-empty id; no HTTP header carries a NUL.
WORKFLOW_SHARED_SEQUENCE = "\x00workflow"


def in_shared_workflow_sequence(request: InferRequest) -> None:
    """A workflow node's request that names no sequence joins the one shared sequence (TorchServe's
    group ""), which a stateful model's sequence batcher opens on its first request."""
    if not request.parameters.get("sequence_id"):
        request.parameters = {**request.parameters, "sequence_id": WORKFLOW_SHARED_SEQUENCE,
                              "sequence_start": False, "sequence_end": False}


def named_sequence(headers: dict[str, str], keys: SequenceHeaders = DEFAULT_SEQUENCE_HEADERS) -> str:
    """The sequence id the headers name ("" for none); header names compare without case."""
    return next((value for name, value in headers.items() if name.lower() == keys.id.lower()), "")


def sequence_parameters(headers: dict[str, str], keys: SequenceHeaders = DEFAULT_SEQUENCE_HEADERS
                        ) -> dict[str, Any]:
    """The sequence the headers name, as inferd's ``sequence_id``/``sequence_start``/``sequence_end``
    parameters (which the sequence batcher of a stateful model reads); {} when they name none."""
    found = {name.lower(): value for name, value in headers.items()}
    sequence_id = found.get(keys.id.lower(), "")
    if not sequence_id:
        return {}
    start, end = (found.get(key.lower(), "").strip().lower() == "true" for key in (keys.start, keys.end))
    return {"sequence_id": sequence_id, "sequence_start": start, "sequence_end": end}


_HOP_HEADERS = frozenset({"content-type", "content-length", "connection", "transfer-encoding", "authorization"})


def decode_prediction(body: bytes | bytearray, content_type: str, model: str, version: str | None,
                      headers: dict[str, str] | None = None,
                      keys: SequenceHeaders = DEFAULT_SEQUENCE_HEADERS) -> InferRequest:
    """``POST /predictions/{model}[/{version}]``: the raw body (or a form) is one request. The
    ``content_type`` input carries the content type, then the request's other headers as
    ``name: value`` lines, so the handler's ``context.get_request_header`` sees each of them; the
    sequence they name (``keys.id``, ``ts_request_sequence_id`` by default) is the request's too."""
    lines = [content_type.replace("\r", "").replace("\n", "")]
    for name, value in (headers or {}).items():
        if name not in _HOP_HEADERS:
            lines.append(f"{name}: {value}")
    return InferRequest(model_name=model, model_version=version,
                        inputs=[_bytes_tensor("body", bytes(body)),
                                _bytes_tensor("content_type", "\r\n".join(lines).encode("latin-1"))],
                        protocol=PROTOCOL, parameters=sequence_parameters(headers or {}, keys))


def with_explain(headers: dict[str, str], explain: bool, url_path: str | None = None) -> dict[str, str]:
    """The request's headers with TorchServe's ``explain`` header, which its front end adds to every
    REST prediction: ``True`` on ``/explanations`` and KServe's explain, else ``False`` (a client's
    own ``explain`` header does not count); on ``/predictions`` and ``/explanations`` also its
    ``url_path``: the path's segments after the version ("" when none), for the handler to read."""
    own = ("explain", "url_path") if url_path is not None else ("explain",)
    kept = {name: value for name, value in headers.items() if name.lower() not in own}
    added = {"explain": "True" if explain else "False"}
    if url_path is not None:
        added["url_path"] = url_path
    return {**kept, **added}


def decode_describe(model: str, version: str | None, stateful: bool = False,
                    keys: SequenceHeaders = DEFAULT_SEQUENCE_HEADERS) -> InferRequest:
    """The request TorchServe's management API sends a handler for ``customized=true``: no body,
    the ``describe: True`` header (its ``describe_handle`` answers). A stateful model's is a
    sequence of its own that starts and ends with it, so no sequence's state is touched."""
    headers = {"describe": "True"}
    if stateful:
        headers |= {**new_sequence(keys), keys.end: "true"}
    return decode_prediction(b"", "", model, version, headers, keys)


def customized_metadata(response: InferResponse) -> dict[str, Any] | None:
    """The handler's describe answer as describe's ``customizedMetadata``: a JSON object as it is;
    nothing (None) for an empty or ``null`` answer; ``{}`` for anything else, as TorchServe's
    front end (Gson) makes of it."""
    body = encode_prediction(response)[0]
    if not body.strip():
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if parsed is None:
        return None
    return parsed if isinstance(parsed, dict) else {}


def no_describe_worker(model: str) -> str:
    """TorchServe's words when a customized describe finds no worker (ApiUtils)."""
    return f'Model "{model}" has no worker to serve describe request. Please use scale workers API to add workers.'


def decode_form_prediction(fields: dict[str, bytes], model: str, version: str | None,
                           headers: dict[str, str] | None = None,
                           keys: SequenceHeaders = DEFAULT_SEQUENCE_HEADERS) -> InferRequest:
    """TorchServe's gRPC Predictions: each entry of the ``input`` map is a field of the request, as a
    multipart form's are (the handler sees ``{"data": bytearray, ...}``); ``headers`` are what the
    handler's ``context.get_request_header`` sees besides."""
    for name in fields:
        if not name or any(c in name for c in '"\r\n'):
            raise InvalidInput(f"input name {name!r}: a field name without quotes or line breaks")
    boundary = "inferd-form"
    while any(boundary.encode() in value for value in fields.values()):
        boundary += "-x"
    parts = [b"--%s\r\ncontent-disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
             % (boundary.encode(), name.encode(), value) for name, value in fields.items()]
    body = b"".join(parts) + b"--%s--\r\n" % boundary.encode()
    return decode_prediction(body, f"multipart/form-data; boundary={boundary}", model, version, headers, keys)


def choose_versions(rows: list[VersionDescription], name: str, version: str | None, default: str | None
                    ) -> list[VersionDescription]:
    """What describe answers: ``None`` the default version (else the newest), ``all`` every version,
    else that version (TorchServe's ``GET /models/{model}[/{version}]`` and DescribeModel)."""
    if version == "all":
        return rows
    wanted = version or default
    chosen = [row for row in rows if row.version == wanted] if wanted else rows[-1:]
    if not chosen:
        raise NotFound(f"Model version: {version} does not exist for model: {name}")
    return chosen


def prediction_status(response: InferResponse) -> int:
    """The status the handler set with ``context.set_response_status`` (200 when it set none)."""
    for tensor in response.outputs:
        if tensor.name == "status":
            code = int(tensor.data.reshape(-1)[0])
            return code if 100 <= code <= 599 else 200
    return 200


_OUT_OF_MEMORY = ("MemoryError", "ran out of memory", "CUDA out of memory")


def failure_status(exc: ModelError) -> int:
    """The status TorchServe's worker answers a model that raised with: 503 (clients retry on it),
    507 when it ran out of memory, 500 when its instance process died ("Worker died."). For out of
    memory the message is the one signal that crosses the instance process (its MemoryError kills
    the instance)."""
    if isinstance(exc.__cause__, MemoryError) or any(word in exc.message for word in _OUT_OF_MEMORY):
        return 507
    return 500 if isinstance(exc, InstanceLost) else 503


def raised_message(body: bytes, status: int) -> str | None:
    """The message of a handler's ``PredictionException`` (its requests answered ``{"code", "type",
    "message"}`` with that code as the status); None for any other answer, one whose status the
    handler set with ``context.set_response_status`` too."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if (isinstance(parsed, dict) and set(parsed) == {"code", "type", "message"} and parsed["code"] == status
            and isinstance(parsed["message"], str)):
        return parsed["message"]
    return None


def encode_prediction(response: InferResponse) -> tuple[bytes, str]:
    """The handler's answer for the one request, and its content type."""
    outputs = {tensor.name: tensor.data for tensor in response.outputs}
    if "output" not in outputs:
        raise InvalidInput(f"model '{response.model_name}' is not a handler model; call it over "
                           "/v2/models/{model}/infer")
    body = outputs["output"].reshape(-1)[0]
    kind = outputs.get("content_type")
    content_type = kind.reshape(-1)[0].decode("latin-1") if kind is not None else "application/json"
    return bytes(body), content_type.split("\r\n", 1)[0]


def prediction_headers(response: InferResponse) -> list[tuple[bytes, bytes]]:
    """The headers the handler set for its answer (``context.set_response_header``: the lines
    after the content type in its ``content_type`` output), sent with it as TorchServe's front end
    sends them; the framing ones (length, transfer encoding, connection) stay the server's."""
    kind = next((tensor.data for tensor in response.outputs if tensor.name == "content_type"), None)
    if kind is None:
        return []
    headers = []
    for line in bytes(kind.reshape(-1)[0]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower().decode("latin-1") not in _HOP_HEADERS:
            headers.append((name.strip(), value.strip()))
    return headers


def is_handler_model(metadata: ModelMetadata) -> bool:
    """A handler (.mar) model takes the raw body and its content type; others take tensors."""
    return [spec.name for spec in metadata.inputs] == ["body", "content_type"]


def decode_tensor_prediction(body: bytes | bytearray, metadata: ModelMetadata, version: str | None
                             ) -> tuple[InferRequest, bool]:
    """A model without a handler: the body is JSON data for its input (``{"data": ...}`` too), or
    ``{name: data}`` for several inputs. The flag says a batch dim was added (one example given)."""
    name = metadata.name
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"model '{name}' takes JSON tensors; the body is not JSON: {exc}") from None
    if isinstance(payload, dict) and "data" in payload and len(metadata.inputs) == 1:
        payload = payload["data"]
    values = payload if isinstance(payload, dict) else {metadata.inputs[0].name: payload}
    tensors, added_batch = [], False
    for spec in metadata.inputs:
        if spec.name not in values:
            raise InvalidInput(f"missing input '{spec.name}' for model '{name}'")
        try:
            array = np.asarray(values[spec.name], dtype=numpy_dtype(spec.datatype))
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInput(f"input '{spec.name}': {exc}") from None
        if metadata.max_batch_size > 0 and array.ndim == len(spec.shape) - 1:
            array, added_batch = array[np.newaxis], True
        tensors.append(Tensor(spec.name, spec.datatype, array))
    return InferRequest(name, version, tensors, protocol=PROTOCOL), added_batch


def encode_tensor_prediction(response: InferResponse, added_batch: bool) -> bytes:
    """The output (``{name: data}`` for several), without the batch dim the request did not give."""
    outputs = {t.name: (t.data[0] if added_batch else t.data) for t in response.outputs}
    answer = next(iter(outputs.values())) if len(outputs) == 1 else outputs
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


def java_int(value: str | None, default: int) -> int:
    """A query parameter read as TorchServe reads it (``Integer.parseInt``): an optional sign and
    digits within 32 bits; anything else counts as not given."""
    if value is None or not re.fullmatch(r"[+-]?[0-9]+", value):
        return default
    number = int(value)
    return number if -(2**31) <= number < 2**31 else default


def java_bool(value: str | None, default: bool) -> bool:
    """``Boolean.parseBoolean``: "true" in any case is true, anything else given is false."""
    return default if value is None else value.lower() == "true"


def list_page(names: list[tuple[str, str]], limit: int, token: int) -> dict[str, Any]:
    """``GET /models?limit=&next_page_token=`` as TorchServe pages it (limit outside 0..100 is 100)."""
    limit = 100 if limit > 100 or limit < 0 else limit
    token = max(token, 0)
    last = token + limit
    page: dict[str, Any] = {}
    if last > len(names):
        last = len(names)
    else:
        page["nextPageToken"] = str(last)
    page["models"] = [{"modelName": name, "modelUrl": url} for name, url in names[token:last]]
    return page


def workflow_page(workflows: list[tuple[str, str]], limit: int, token: int) -> dict[str, Any]:
    """``GET /workflows?limit=&next_page_token=``, paged as ``GET /models``."""
    page = list_page(workflows, limit, token)
    rows = page.pop("models")
    page["workflows"] = [{"workflowName": row["modelName"], "workflowUrl": row["modelUrl"]} for row in rows]
    return page


def workflow_leaves(leaves: dict[str, bytes]) -> bytes:
    """``/wfpredict``'s answer: the one leaf node's bytes as they are, or several leaves as
    ``{node: its answer}``, each answer a JSON object (TorchServe's WorkflowManager.predict)."""
    if len(leaves) == 1:
        return next(iter(leaves.values()))
    combined: dict[str, Any] = {}
    for node, answer in leaves.items():
        try:
            combined[node] = orjson.loads(answer)
        except orjson.JSONDecodeError:
            combined[node] = None
        if not isinstance(combined[node], dict):
            raise ValueError(f"leaf node {node} answered {answer[:60]!r}; a workflow with several leaves "
                             "needs each to answer a JSON object")
    return orjson.dumps(combined)


def describe(name: str, row: VersionDescription) -> dict[str, Any]:
    """One entry of ``GET /models/{model}``, in TorchServe's shape, with the workers as they run."""
    settings = row.settings
    ready = row.state is ModelState.READY
    answer: dict[str, Any] = {
        "modelName": name,
        "modelVersion": row.version,
        "modelUrl": row.source,
        "runtime": settings.runtime if settings else "python",
        "minWorkers": settings.min_workers if settings else row.instances,
        "maxWorkers": settings.max_workers if settings else row.instances,
        "batchSize": settings.batch_size if settings else max(row.max_batch_size, 1),
        "maxBatchDelay": settings.max_batch_delay_ms if settings else int(row.max_queue_delay_ms),
        "responseTimeout": settings.response_timeout_s if settings else 120,
        "startupTimeout": settings.startup_timeout_s if settings else 120,
        "deviceType": settings.device_type if settings else "cpu",
        "loadedAtStartup": settings.loaded_at_startup if settings else True,
        **_sequence_fields(row.sequences),
        "isDefault": row.default,
        "status": "READY" if ready else row.state.value,
        "workers": [{"id": str(9000 + worker.id), "startTime": _iso(worker.started),
                     "status": "READY" if worker.ready and ready else "UNLOADING",
                     "memoryUsage": worker.memory_bytes, "pid": worker.pid, "gpu": worker.gpu is not None,
                     "gpuUsage": "N/A"} for worker in row.workers] or _starting_workers(row),
        "jobQueueStatus": {"remainingCapacity": 1000, "pendingRequests": row.busy},
    }
    if row.reason:
        answer["reason"] = row.reason
    return answer


def _starting_workers(row: VersionDescription) -> list[dict[str, Any]]:
    """The workers a loading version is starting: TorchServe lists its worker threads from their
    start, "UNLOADING" (not running a loaded model) with no pid yet, so a client polling for READY
    finds them; and while workers that failed to start are tried again (TorchServe lists its
    stopped worker threads)."""
    if row.settings is None or not (row.state is ModelState.LOADING or row.settings.retrying):
        return []
    now = _iso(time.time())
    return [{"id": str(9000 + i), "startTime": now, "status": "UNLOADING", "memoryUsage": 0, "pid": -1,
             "gpu": False, "gpuUsage": "N/A"} for i in range(row.settings.min_workers)]


def _sequence_fields(sequences: SequenceSettings) -> dict[str, Any]:
    """DescribeModelResponse's stateful fields (pytorch/serve 62c4d6a1), answered for every model as
    TorchServe does (false and 0 for one without sequences)."""
    return {"stateful": sequences.stateful, "sequenceMaxIdleMSec": sequences.max_idle_ms,
            "sequenceTimeoutMSec": sequences.timeout_ms, "maxNumSequence": sequences.max_sequences,
            "maxSequenceJobQueueSize": sequences.max_queued_per_sequence}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
