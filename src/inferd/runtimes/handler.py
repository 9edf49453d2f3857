"""TorchServe's handler API, served by inferd: ``initialize(context)``, ``preprocess``,
``inference``, ``postprocess`` and ``handle(data, context)``.

A handler model is a Runtime whose one input, ``body`` (BYTES, one element per request), holds each
request's raw body, with ``content_type`` beside it; its outputs are each request's answer
(``output``, BYTES) and that answer's content type. The batcher stacks several requests into one
``handle`` call exactly as TorchServe's batching does: ``data`` is a list with one dict per request
(``{"body": bytes}``, or the form's fields for a multipart request).
"""

from __future__ import annotations

import email.parser
import email.policy
import importlib
import importlib.util
import inspect
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from inferd.errors import ConfigError
from inferd.runtimes.base import Arrays, Runtime
from inferd.types import TensorSpec

INPUTS = (TensorSpec("body", "BYTES", (-1,)), TensorSpec("content_type", "BYTES", (-1,)))
OUTPUTS = (TensorSpec("output", "BYTES", (-1,)), TensorSpec("content_type", "BYTES", (-1,)))


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
        self.request_ids = {i: str(i) for i in range(len(content_types))}
        self._headers = [{"content-type": c} for c in content_types]
        self._content_types = {}


class _NoMetrics:
    """Handlers call ``context.metrics.add_time(...)`` and friends; inferd has its own metrics."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class HandlerRuntime(Runtime):
    """Runs a TorchServe-style handler (an object with ``handle(data, context)``)."""

    platform = "torchserve_handler"
    inputs = INPUTS
    outputs = OUTPUTS

    def __init__(self, handle: Any, context: Context, max_batch_size: int, name: str) -> None:
        self._handle = handle
        self._context = context
        self._name = name
        self.max_batch_size = max(max_batch_size, 1)

    def infer(self, inputs: Arrays) -> Arrays:
        bodies = inputs["body"].reshape(-1)
        content_types = [_text(c) for c in inputs["content_type"].reshape(-1)]
        rows = [decode_row(body, kind) for body, kind in zip(bodies, content_types, strict=True)]
        self._context._start_batch(content_types)
        results = self._handle(rows, self._context)
        if not isinstance(results, list | tuple) or len(results) != len(rows):
            got = len(results) if isinstance(results, list | tuple) else type(results).__name__
            raise RuntimeError(f"handler of '{self._name}' returned {got} results for a batch of "
                               f"{len(rows)} requests; handle() must return one per request")
        answers = [encode_answer(r, self._context.get_response_content_type(i)) for i, r in enumerate(results)]
        return {"output": _objects([a[0] for a in answers]),
                "content_type": _objects([a[1].encode() for a in answers])}


def _objects(items: list[bytes]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def decode_row(body: bytes, content_type: str) -> dict[str, Any]:
    """One request as TorchServe gives it to a handler: the raw body, or the form's fields."""
    if content_type.startswith("multipart/form-data"):
        return _form_fields(body, content_type)
    if content_type.startswith("application/x-www-form-urlencoded"):
        from urllib.parse import parse_qsl

        fields = {k: v.encode() for k, v in parse_qsl(body.decode("latin-1"))}
        return fields or {"body": bytearray(body)}
    return {"body": bytearray(body)}


def _form_fields(body: bytes, content_type: str) -> dict[str, Any]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = bytearray(part.get_payload(decode=True) or b"")
    if not fields:
        fields["body"] = bytearray(body)
    return fields


def encode_answer(result: Any, content_type: str | None) -> tuple[bytes, str]:
    """A handler's answer for one request as bytes, with its content type."""
    if isinstance(result, bytes | bytearray):
        return bytes(result), content_type or "application/octet-stream"
    if isinstance(result, str):
        return result.encode(), content_type or "text/plain; charset=utf-8"
    if hasattr(result, "tolist"):  # numpy arrays, torch tensors
        result = result.tolist()
    return (orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS),
            content_type or "application/json")


# -- finding a handler ---------------------------------------------------------------------------

def install_torchserve_shim() -> None:
    """Make ``from ts.torch_handler.base_handler import BaseHandler`` (and the other usual imports)
    resolve to inferd's classes when TorchServe itself is not installed."""
    if "ts" in sys.modules:
        return  # installed already, or TorchServe itself is imported: use it
    if importlib.util.find_spec("ts") is not None:
        try:
            import ts.torch_handler.base_handler  # noqa: F401 - TorchServe is here: use it
            return
        except ImportError:
            pass
    from inferd.runtimes import builtin_handlers

    modules = {
        "ts": {}, "ts.torch_handler": {},
        "ts.torch_handler.base_handler": {"BaseHandler": builtin_handlers.BaseHandler},
        "ts.torch_handler.image_classifier": {"ImageClassifier": builtin_handlers.ImageClassifier},
        "ts.torch_handler.vision_handler": {"VisionHandler": builtin_handlers.ImageClassifier},
        "ts.context": {"Context": Context},
        "ts.utils": {}, "ts.utils.util": {"map_class_to_label": builtin_handlers.map_class_to_label,
                                          "load_label_mapping": builtin_handlers.load_label_mapping},
    }
    for name, members in modules.items():
        if name in sys.modules and not getattr(sys.modules[name], "__inferd_shim__", False):
            continue
        module = types.ModuleType(name)
        module.__dict__.update(members, __inferd_shim__=True, __path__=[])
        sys.modules[name] = module


def resolve_handler(handler: str, model_dir: Path) -> tuple[Any, Any]:
    """(handle, initialize) for a manifest's ``handler``: a built-in name, or ``file.py[:function]``
    inside the archive."""
    from inferd.runtimes import builtin_handlers

    file_name, _, function = handler.partition(":")
    path = model_dir / file_name
    if not path.suffix:
        path = path.with_suffix(".py")
    if path.is_file():
        module = _import(path, model_dir)
        function = function or "handle"
        if callable(getattr(module, function, None)):
            entry = getattr(module, function)
            return entry, lambda context: entry(None, context)
        classes = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
        if len(classes) != 1:
            raise ConfigError(f"handler {path.name} must define a `handle` function or exactly one class; "
                              f"found classes {[c.__name__ for c in classes]}")
        service = classes[0]()
        return service.handle, service.initialize
    builtin = builtin_handlers.BUILTIN.get(handler.removesuffix(".py"))
    if builtin is None:
        raise ConfigError(f"handler '{handler}' is neither a file in the archive nor a built-in handler "
                          f"({', '.join(sorted(builtin_handlers.BUILTIN))})")
    service = builtin()
    return service.handle, service.initialize


def _import(path: Path, model_dir: Path) -> types.ModuleType:
    """Import a handler file the way TorchServe does: its folder on sys.path, by module name."""
    install_torchserve_shim()
    if str(model_dir) not in sys.path:
        sys.path.insert(0, str(model_dir))
    name = path.stem
    sys.modules.pop(name, None)  # two archives may both ship a handler.py
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import handler {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def read_manifest(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "MAR-INF" / "MANIFEST.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"archive has no readable MAR-INF/MANIFEST.json: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
        raise ConfigError("MAR-INF/MANIFEST.json has no 'model' object")
    return manifest


def build(model_name: str, model_dir: Path, max_batch_size: int, gpu: int | None) -> HandlerRuntime:
    manifest = read_manifest(model_dir)
    handler = manifest["model"].get("handler") or "base_handler"
    install_torchserve_shim()
    handle, initialize = resolve_handler(handler, model_dir)
    context = Context(model_name, str(model_dir), manifest, max(max_batch_size, 1), gpu)
    initialize(context)
    return HandlerRuntime(handle, context, max_batch_size, model_name)
