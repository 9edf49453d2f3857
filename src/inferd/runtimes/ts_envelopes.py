"""TorchServe's service envelopes (``service_envelope`` in config.properties): ``body``, ``json``,
``kserve`` and ``kservev2`` turn a batch's requests into the rows its handler gets, and the
handler's answers into the batch's answers, as TorchServe's ``ts.torch_handler.request_envelope``
modules do (read at pytorch/serve@62c4d6a1f). The ``kserve`` and ``kservev2`` envelopes read the
first request of a batch only and answer once, as TorchServe's do (a batch of several fails there too).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from itertools import chain
from typing import Any

import numpy as np

from inferd.errors import ConfigError

ENVELOPE_ENV = "INFERD_TS_SERVICE_ENVELOPE"  # inferd torchserve sets it from service_envelope for its models
Handle = Callable[[Any, Any], Any]


class Envelope:
    """Rows in through ``parse_input``, answers out through ``format_output`` (TorchServe's
    BaseEnvelope: a call with no data, or a handler with no answers, passes through untouched)."""

    def __init__(self, handle: Handle) -> None:
        self._handle_fn = handle  # TorchServe's name: a subclass may call it
        self.context: Any = None

    def handle(self, data: list[dict[str, Any]] | None, context: Any) -> Any:
        self.context = context
        rows = self.parse_input(data) if data else data
        results = self._handle_fn(rows, context)
        return self.format_output(results) if results else results

    def parse_input(self, data: list[dict[str, Any]]) -> Any:
        raise NotImplementedError

    def format_output(self, results: Any) -> Any:
        raise NotImplementedError


def _value(row: dict[str, Any]) -> Any:
    """A request's value as the envelopes take it: its ``data`` field, else its body."""
    return row.get("data") or row.get("body")


class BodyEnvelope(Envelope):
    """``body``: each request's value as the handler's row; answers as they are."""

    def parse_input(self, data: list[dict[str, Any]]) -> Any:
        return [_value(row) for row in data]

    def format_output(self, results: Any) -> Any:
        return results


class JSONEnvelope(Envelope):
    """``json`` (TF Serving's row format): every request's ``instances`` joined into one batch of
    rows (``{"b64": ...}`` values decoded to bytes); the answers split back per request as
    ``{"predictions": [...]}`` JSON text."""

    def __init__(self, handle: Handle) -> None:
        super().__init__(handle)
        self._lengths: list[int] = []  # each request's count of instances, in order

    def parse_input(self, data: list[dict[str, Any]]) -> Any:
        per_request = [self._instances(row) for row in data]
        self._lengths = [len(rows) for rows in per_request]
        return list(chain.from_iterable(per_request))

    def format_output(self, results: Any) -> Any:
        answers, start = [], 0
        for length in self._lengths:
            answers.append(json.dumps({"predictions": results[start:start + length]}))
            start += length
        return answers

    @staticmethod
    def _instances(row: dict[str, Any]) -> Any:
        rows = (_value(row) or row)["instances"]
        if isinstance(rows[0], dict):
            for index, item in enumerate(rows):
                if list(item) == ["b64"]:
                    rows[index] = base64.b64decode(item["b64"])
                    continue
                for column, value in item.items():
                    if isinstance(value, dict) and list(value) == ["b64"]:
                        item[column] = base64.b64decode(value["b64"])
        return rows


class KServeEnvelope(Envelope):
    """``kserve`` (KServe's v1 ``{"instances": [...]}``): the first request's instances are the
    rows; the answers come back as one ``{"predictions": [...]}`` (``explanations`` when the
    request asked to explain)."""

    def parse_input(self, data: list[dict[str, Any]]) -> Any:
        first = _value(data[0])
        if isinstance(first, bytes | bytearray):
            first = json.loads(bytes(first).decode())
        return first.get("instances")

    def format_output(self, results: Any) -> Any:
        explain = self.context is not None and self.context.get_request_header(0, "explain") == "True"
        return [{"explanations" if explain else "predictions": results}]


_DTYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
           "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
           "FP32": "float32", "FP64": "float64", "BYTES": "byte"}
_DATATYPES = {**{numpy: v2 for v2, numpy in _DTYPES.items()}, "object": "BYTES", "U": "BYTES"}


class KServeV2Envelope(Envelope):
    """``kservev2`` (the open inference protocol's JSON): the first request's ``inputs`` are the
    rows, each with its ``data`` shaped as its ``shape`` says (a BYTES input: its first element);
    the answers are one v2 response whose i-th output is the i-th answer, named after the i-th input."""

    def parse_input(self, data: list[dict[str, Any]]) -> Any:
        first = _value(data[0])
        if isinstance(first, bytes | bytearray):
            first = json.loads(bytes(first).decode("utf8"))
        names = []
        for tensor in first["inputs"]:
            if tensor["datatype"] == "BYTES":
                tensor["data"] = tensor["data"][0]
            else:
                tensor["data"] = np.array(tensor["data"]).reshape(tuple(tensor["shape"])).tolist()
            names.append(tensor["name"])
        self.context.input_names = names
        request_id = first.get("id")
        if request_id and request_id.strip():
            self.context.input_request_id = request_id
        return first.get("inputs")

    def format_output(self, results: Any) -> Any:
        context = self.context
        request_id = getattr(context, "input_request_id", None)
        if request_id is not None:
            del context.input_request_id
        names = context.input_names
        del context.input_names
        model = context.manifest.get("model")
        return [{"id": request_id if request_id is not None else context.get_request_id(0),
                 "model_name": model.get("modelName"), "model_version": model.get("modelVersion"),
                 "outputs": [_v2_output(result, names[index]) for index, result in enumerate(results)]}]


def _v2_output(result: Any, name: str) -> dict[str, Any]:
    values = np.array(result).flatten()
    datatype = _DATATYPES.get(str(values.dtype)) or _DATATYPES[values.dtype.kind]
    return {"name": name, "datatype": datatype, "data": values.tolist(), "shape": list(values.shape)}


ENVELOPES: dict[str, type[Envelope]] = {"body": BodyEnvelope, "json": JSONEnvelope, "kserve": KServeEnvelope,
                                         "kservev2": KServeV2Envelope}


def wrap(name: str | None, handle: Handle) -> Handle:
    """``handle`` inside the envelope ``name`` (none: ``handle`` itself)."""
    if not name:
        return handle
    envelope = ENVELOPES.get(name)
    if envelope is None:
        raise ConfigError(f"service_envelope={name}: expected one of {', '.join(ENVELOPES)}")
    return envelope(handle).handle
