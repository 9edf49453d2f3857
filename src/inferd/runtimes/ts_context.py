"""The ``context`` TorchServe hands a handler: its manifest, system properties, per-request details."""

from __future__ import annotations

from typing import Any


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
        self.metrics = _NoMetrics()
        self._content_types: dict[int, str] = {}
        self._headers: list[dict[str, str]] = []

    @property
    def system_properties(self) -> dict[str, Any]:
        return self._system_properties

    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self._headers[idx].get(key.lower()) if idx < len(self._headers) else None

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self._headers[idx] if idx < len(self._headers) else {}

    def set_response_content_type(self, idx: int, value: str) -> None:
        self._content_types[idx] = value

    def get_response_content_type(self, idx: int) -> str | None:
        return self._content_types.get(idx)

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """Kept for compatibility; inferd answers 500 when a handler raises instead."""

    def _start_batch(self, content_types: list[str]) -> None:
        """Called by HandlerRuntime before each ``handle``: one request id and header set per row."""
        self.request_ids = {i: str(i) for i in range(len(content_types))}
        self._headers = [{"content-type": c} for c in content_types]
        self._content_types = {}


class _NoMetrics:
    """Handlers call ``context.metrics.add_time(...)`` and friends; inferd has its own metrics."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
