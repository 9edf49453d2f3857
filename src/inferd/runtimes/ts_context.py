"""The ``context`` TorchServe hands a handler: its manifest, system properties, per-request details."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from typing import Any

from inferd.runtimes.ts_metrics import MetricsCache

log = logging.getLogger("inferd.handler")
IntermediateSink = Callable[[list[Any], int], None]  # (one answer per request, status code)


class Context:
    """What TorchServe hands a handler: the manifest, system properties, per-request details."""

    def __init__(self, model_name: str, model_dir: str, manifest: dict[str, Any], batch_size: int,
                 gpu: int | None, model_yaml_config: dict[str, Any] | None = None) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties = {"model_dir": model_dir, "gpu_id": gpu, "batch_size": batch_size,
                                   "server_name": "inferd", "server_version": "0.1.0",
                                   "limit_max_image_pixels": True}
        self.model_yaml_config = model_yaml_config or {}
        self.request_ids: dict[int, str] = {}
        self.metrics = MetricsCache(model_name)
        self.metrics.set_request_ids(str(uuid.uuid4()))  # as TorchServe's loader: the load's metrics are the model's
        self._response_headers: dict[int, dict[str, str]] = {}  # per request, as the handler set them
        self._statuses: dict[int, tuple[int, str]] = {}
        self._headers: list[dict[str, str]] = []
        self._sinks: dict[int, IntermediateSink] = {}  # per thread running a streamed call
        # the request headers that carry a stateful sequence (TorchServe's names, its env overrides)
        self.header_key_sequence_id = os.getenv("TS_REQUEST_SEQUENCE_ID", "ts_request_sequence_id")
        self.header_key_sequence_start = os.getenv("TS_REQUEST_SEQUENCE_START", "ts_request_sequence_start")
        self.header_key_sequence_end = os.getenv("TS_REQUEST_SEQUENCE_END", "ts_request_sequence_end")

    def _receive_intermediate(self, sink: IntermediateSink | None) -> None:
        """Where this thread's intermediate answers go (None: nowhere) while it runs a call."""
        if sink is None:
            self._sinks.pop(threading.get_ident(), None)
        else:
            self._sinks[threading.get_ident()] = sink

    def _send_intermediate(self, answers: list[Any], code: int) -> None:
        """What ``send_intermediate_predict_response`` reaches: the answers go out as a chunk each."""
        sink = self._sinks.get(threading.get_ident())
        if sink is None:
            log.debug("model %s: an intermediate answer outside /predictions is dropped", self.model_name)
            return
        sink(answers, code)

    @property
    def system_properties(self) -> dict[str, Any]:
        return self._system_properties

    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> str | None:
        """Any header of request ``idx``, by name in any case (TorchServe's door passes them all)."""
        return self._headers[idx].get(key.lower()) if idx < len(self._headers) else None

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self._headers[idx] if idx < len(self._headers) else {}

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        return self.get_response_headers(idx).get("content-type")

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        """A header of request ``idx``'s answer (TorchServe's front end sends each with it)."""
        self._response_headers.setdefault(idx, {})[key] = value

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """The HTTP status of request ``idx``'s answer (its body is still the handler's answer)."""
        self._statuses[idx] = (code, phrase)

    def get_response_status(self, idx: int) -> tuple[int, str]:
        return self._statuses.get(idx, (200, ""))

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self._response_headers.setdefault(idx, {})

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for idx in range(len(self._headers)):
            self.set_response_status(code, phrase, idx)

    def get_sequence_id(self, idx: int) -> str | None:
        """The sequence request ``idx`` belongs to: its ``ts_request_sequence_id`` header (sent over
        HTTP, or set by StreamPredictions2); None without one, as in TorchServe."""
        return self.get_request_header(idx, self.header_key_sequence_id)

    @property
    def request_processor(self) -> list[Any]:
        return [_RequestProcessor(headers) for headers in self._headers]

    def _start_batch(self, headers: list[dict[str, str]]) -> None:
        """Called by HandlerRuntime before each ``handle``: a header set per row and, as TorchServe's
        front end makes one per request (a client's ``x-request-id`` is not taken), a random UUID."""
        self.request_ids = {i: str(uuid.uuid4()) for i in range(len(headers))}
        self.metrics.set_request_ids(self.request_ids)
        self._headers = headers
        self._response_headers = {}
        self._statuses = {}


class _RequestProcessor:
    """``context.request_processor[i]``: a request's headers, as TorchServe's RequestProcessor."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def get_request_property(self, key: str) -> str | None:
        return self._headers.get(key.lower())

    def get_request_properties(self) -> dict[str, str]:
        return dict(self._headers)


def send_intermediate_predict_response(ret: list[Any], req_id_map: dict[int, str], message: str, code: int,
                                       context: Context | None = None) -> None:
    """TorchServe's ``ts.handler_utils.utils`` / ``ts.protocol.otf_message_handler`` function: one
    answer per request of the batch, sent at once as a chunk of each request's ``/predictions``
    answer, before the answer ``handle`` returns."""
    if context is None:
        raise TypeError("send_intermediate_predict_response needs the handler's context")
    context._send_intermediate(list(ret), code)
