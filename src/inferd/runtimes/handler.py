"""TorchServe's handler API, served by inferd: ``initialize(context)``, ``preprocess``,
``inference``, ``postprocess`` and ``handle(data, context)``.

A handler model is a Runtime whose one input, ``body`` (BYTES, one element per request), holds each
request's raw body, with ``content_type`` beside it; its outputs are each request's answer
(``output``, BYTES) and that answer's content type. The batcher stacks several requests into one
``handle`` call exactly as TorchServe's batching does: ``data`` is a list with one dict per request
(``{"body": value}``, or the form's fields for a multipart request), the value decoded by its
content type as TorchServe's worker decodes it (``ts_requests.decode_value``), and a
``service_envelope`` (``ts_envelopes``) reshapes rows and answers around ``handle``.

This module finds, imports and initialises the handler and runs it per batch; the pieces it uses
live beside it: ``ts_context`` (the Context), ``ts_requests`` (bodies in, answers out) and
``ts_shim`` (the ``ts.*`` imports). ``torchserve`` unpacks the archive and reads its manifest.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import os
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from inferd.errors import ConfigError, InvalidInput, describe
from inferd.runtimes import ts_envelopes
from inferd.runtimes.base import Arrays, Emit, Runtime
from inferd.runtimes.ts_context import Context
from inferd.runtimes.ts_requests import decode_row, decodes_input, encode_answer, split_headers, with_headers
from inferd.runtimes.ts_shim import install_torchserve_shim
from inferd.types import INTERMEDIATE_OUTPUT, TensorSpec

# decode_row, encode_answer, Context and install_torchserve_shim lived here before: still importable from here
__all__ = ["INPUTS", "OUTPUTS", "Context", "Handle", "HandlerRuntime", "Initialize", "build", "decode_row",
           "encode_answer", "install_torchserve_shim", "resolve_handler"]

INPUTS = (TensorSpec("body", "BYTES", (-1,)), TensorSpec("content_type", "BYTES", (-1,)))
OUTPUTS = (TensorSpec("output", "BYTES", (-1,)), TensorSpec("content_type", "BYTES", (-1,)),
           TensorSpec("status", "INT32", (-1,)))

MODEL_LOG_ENV = "INFERD_TS_MODEL_LOG"  # set by inferd torchserve (compat/torchserve_logs.py): model_log.log's path
Handle = Callable[[list[dict[str, Any]], Context], Any]  # handle(data, context): one answer per request
Initialize = Callable[[Context], Any]
log = logging.getLogger("inferd.handler")


class HandlerRuntime(Runtime):
    """Runs a TorchServe-style handler (an object with ``handle(data, context)``)."""

    platform = "torchserve_handler"
    inputs = INPUTS
    outputs = OUTPUTS
    parts = True  # send_intermediate_predict_response: answers in chunks before the last

    def __init__(self, handle: Handle, context: Context, max_batch_size: int, name: str,
                 decode: bool = True) -> None:
        self._handle = handle
        self._decode = decode  # TS_DECODE_INPUT_REQUEST: values decoded by content type, else bytes
        self._context = context
        self._name = name
        self.max_batch_size = max(max_batch_size, 1)
        self._loop: asyncio.AbstractEventLoop | None = None  # an async def handle's, made at its first call
        self._loop_lock = threading.Lock()

    def infer(self, inputs: Arrays) -> Arrays:
        bodies = inputs["body"].reshape(-1)
        headers = [split_headers(_text(c)) for c in inputs["content_type"].reshape(-1)]
        kinds = [request_kind(h) for h in headers]
        if len(set(kinds)) > 1 or (kinds[0] == "describe" and len(kinds) > 1):
            return self._infer_by_kind(inputs, kinds)
        rows = [{} if kind == "describe" and not body else decode_row(body, h.get("content-type", ""), self._decode)
                for body, h, kind in zip(bodies, headers, kinds, strict=True)]
        return self._handle_batch(rows, headers)

    def _infer_by_kind(self, inputs: Arrays, kinds: list[str]) -> Arrays:
        """A batch that mixes predictions, explanations and describes: ``handle`` once per kind
        (a handler reads the first request's ``explain``/``describe`` header for its whole batch)
        and once per describe (TorchServe's run alone: BaseHandler answers one), the answers put
        back in the batch's order. A part whose ``handle`` raised fails only its own requests,
        answered as TorchServe's worker answers a failed batch (503; 507 out of memory)."""
        outputs: Arrays = {"output": _objects([b""] * len(kinds)), "content_type": _objects([b""] * len(kinds)),
                           "status": np.zeros(len(kinds), np.int32)}
        for kind, rows in _parts(kinds):
            try:
                answers = self.infer({name: array.reshape(-1)[rows] for name, array in inputs.items()})
            except Exception as exc:
                log.warning("model %s: the %s requests of a mixed batch failed", self._name, kind, exc_info=exc)
                answers = _failed_kind(len(rows), exc, self._name)
            for name, array in outputs.items():
                array[rows] = answers[name]
        return outputs

    def _handle_batch(self, rows: list[dict[str, Any]], headers: list[dict[str, str]]) -> Arrays:
        self._context._start_batch(headers)
        started = time.time()
        try:
            results = self._handle(rows, self._context)
            if inspect.iscoroutine(results):
                results = self._run_async(results)
        except Exception as exc:
            code = getattr(exc, "error_code", None)
            if not isinstance(code, int) or not 100 <= code <= 599:
                raise
            # PredictionException(message, error_code): the batch is answered with that code
            return _failed(len(rows), code, type(exc).__name__, str(getattr(exc, "message", exc)))
        if not isinstance(results, list | tuple) or len(results) != len(rows):
            got = len(results) if isinstance(results, list | tuple) else type(results).__name__
            raise RuntimeError(f"handler of '{self._name}' returned {got} results for a batch of "
                               f"{len(rows)} requests; handle() must return one per request")
        # TorchServe's worker times each successful batch as the model's PredictionTime
        self._context.metrics.add_time("PredictionTime", round((time.time() - started) * 1000, 2))
        answers = [encode_answer(r, self._context.get_response_content_type(i)) for i, r in enumerate(results)]
        return {"output": _objects([a[0] for a in answers]),
                "content_type": _objects([self._answer_type(i, a[1]) for i, a in enumerate(answers)]),
                "status": np.array([self._context.get_response_status(i)[0] for i in range(len(rows))], np.int32)}


    def _answer_type(self, idx: int, content_type: str) -> bytes:
        """Request ``idx``'s content type with the headers the handler set for its answer."""
        return with_headers(content_type, self._context.get_response_headers(idx)).encode()

    def _run_async(self, coroutine: Any) -> Any:
        """An ``async def handle`` (TorchServe's async worker, model-config.yaml
        ``asyncCommunication: true``) runs to its end on this handler's own event loop, one call
        at a time, so what it made on the loop before stays usable."""
        with self._loop_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            return self._loop.run_until_complete(coroutine)

    def infer_parts(self, inputs: Arrays, emit: Emit) -> Arrays:
        """``handle`` on this thread, each intermediate answer it sends handed to ``emit`` (marked
        with INTERMEDIATE_OUTPUT) as it is sent. Once nobody reads them, later ones are dropped;
        the call runs to its end, as TorchServe's does."""
        reading = True

        def send(answers: list[Any], code: int) -> None:
            nonlocal reading
            if reading:
                reading = emit(self._intermediate(answers, code))

        self._context._receive_intermediate(send)
        try:
            return self.infer(inputs)
        finally:
            self._context._receive_intermediate(None)

    def _intermediate(self, answers: list[Any], code: int) -> Arrays:
        encoded = [encode_answer(a, self._context.get_response_content_type(i)) for i, a in enumerate(answers)]
        return {"output": _objects([e[0] for e in encoded]),
                "content_type": _objects([self._answer_type(i, e[1]) for i, e in enumerate(encoded)]),
                "status": np.full(len(encoded), code, np.int32), INTERMEDIATE_OUTPUT: np.ones(1, np.bool_)}


def request_kind(headers: dict[str, str]) -> str:
    """What TorchServe's worker is asked for: ``describe`` (the management API's
    ``customized=true``), ``explain`` (``/explanations``, KServe's explain) or ``predict``."""
    if headers.get("describe") == "True":
        return "describe"
    return "explain" if headers.get("explain") == "True" else "predict"


def _parts(kinds: list[str]) -> list[tuple[str, np.ndarray]]:
    """A mixed batch's parts, in order of first appearance: each kind's rows, each describe alone."""
    parts: list[tuple[str, np.ndarray]] = []
    for kind in dict.fromkeys(kinds):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        parts += [(kind, np.array([i])) for i in rows] if kind == "describe" else [(kind, np.array(rows))]
    return parts


def _failed(count: int, code: int, kind: str, message: str) -> Arrays:
    """``count`` requests answered ``code`` with TorchServe's error shape."""
    body = orjson.dumps({"code": code, "type": kind, "message": message})
    return {"output": _objects([body] * count), "content_type": _objects([b"application/json"] * count),
            "status": np.full(count, code, np.int32)}


def _failed_kind(count: int, exc: Exception, name: str) -> Arrays:
    """The answers of a mixed batch's kind whose ``handle`` raised: 400 for bad input (as alone),
    else TorchServe's worker's 503 (507 out of memory)."""
    if isinstance(exc, InvalidInput):
        return _failed(count, 400, "BadRequestException", exc.message)
    return _failed(count, 507 if isinstance(exc, MemoryError) else 503, "InternalServerException",
                   f"model '{name}' failed: {describe(exc)}")


def _objects(items: list[bytes]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


# -- finding a handler ---------------------------------------------------------------------------

def resolve_handler(handler: str, model_dir: Path) -> tuple[Handle, Initialize]:
    """(handle, initialize) for a manifest's ``handler``: a built-in name, or ``file.py[:function]``
    inside the archive."""
    from inferd.runtimes import builtin_handlers, ts_text

    builtins: dict[str, type[Any]] = {**builtin_handlers.BUILTIN, "text_classifier": ts_text.TextClassifier}
    file_name, _, function = handler.partition(":")
    if Path(file_name).is_absolute() or ".." in Path(file_name).parts or "\\" in file_name:
        raise ConfigError(f"handler '{handler}' must name a file inside the archive (no absolute path, no '..') "
                          "or a built-in handler")
    path = model_dir / file_name
    if not path.suffix:
        path = path.with_suffix(".py")
    if not path.is_file():  # TorchServe imports a handler by its module name: the file's, from the archive
        path = model_dir / Path(path.name)
    if path.is_file():
        module = _import(path, model_dir)
        function = function or "handle"
        if callable(getattr(module, function, None)):
            # a function handler is also its own initialize: TorchServe calls it with data=None first
            entry: Callable[[list[dict[str, Any]] | None, Context], Any] = getattr(module, function)
            return entry, lambda context: entry(None, context)
        classes: list[type[Any]] = [c for _, c in inspect.getmembers(module, inspect.isclass)
                                    if c.__module__ == module.__name__]
        if len(classes) != 1:
            raise ConfigError(f"handler {path.name} must define a `handle` function or exactly one class; "
                              f"found classes {[c.__name__ for c in classes]}")
        service = classes[0]()
        return service.handle, service.initialize
    builtin = builtins.get(Path(file_name).name.removesuffix(".py"))
    if builtin is None:
        raise ConfigError(f"handler '{handler}' is neither a file in the archive nor a built-in handler "
                          f"({', '.join(sorted(builtins))})")
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


def log_to_model_log() -> None:
    """What a handler logs (INFO and up, as TorchServe's worker sets Python's logging) also goes to
    TorchServe's ``model_log.log`` when ``inferd torchserve`` writes one (compat/torchserve_logs.py)."""
    path = os.environ.get(MODEL_LOG_ENV)
    root = logging.getLogger()
    if not path or any(getattr(h, "_inferd_model_log", False) for h in root.handlers):
        return
    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s - %(message)s"))
    handler._inferd_model_log = True  # type: ignore[attr-defined]
    if not root.handlers:  # what Python printed before (warnings and up, on stderr) it still prints
        console = logging.StreamHandler()
        console.setLevel(logging.WARNING)
        root.addHandler(console)
    root.addHandler(handler)
    log.addHandler(handler)  # TorchServe's BaseHandler's lines: "inferd" does not pass them on to the root
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)


def build(model_name: str, model_dir: Path, manifest: dict[str, Any], max_batch_size: int,
          gpu: int | None, model_yaml_config: dict[str, Any] | None = None) -> HandlerRuntime:
    """The handler that ``manifest`` names, imported from ``model_dir`` and initialised."""
    handler = manifest["model"].get("handler") or "base_handler"
    log_to_model_log()
    install_torchserve_shim()
    handle, initialize = resolve_handler(handler, model_dir)
    # as TorchServe's loader: the envelope wraps handle, not a function handler's initialize
    handle = ts_envelopes.wrap(os.environ.get(ts_envelopes.ENVELOPE_ENV), handle)
    context = Context(model_name, str(model_dir), manifest, max(max_batch_size, 1), gpu, model_yaml_config)
    initialize(context)
    return HandlerRuntime(handle, context, max_batch_size, model_name, decodes_input())
