"""Triton's trace extension (``triton`` mode): which requests are traced, and the trace file.

The settings (``trace_level``, ``trace_rate``, ``trace_count``, ``log_frequency``, ``trace_file``)
are global, and a model may override any of them until they are cleared (``null``). Every
``trace_rate``-th request of a setting is traced while ``trace_count`` lasts (-1: always); a traced
request's timestamps are written in Triton's JSON, kept until ``log_frequency`` traces are collected
(then written to ``<trace_file>.<n>``, n counting from 0) or, with ``log_frequency`` 0, until the
setting changes or the server stops (then appended to ``<trace_file>``, a JSON array).

The request path asks ``Tracer.active`` once; everything else here runs for traced requests only.
All of it runs on the event loop, but for the files, written on a thread of their own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

log = logging.getLogger("inferd.trace")

LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
SETTINGS = ("trace_level", "trace_rate", "trace_count", "log_frequency")
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
TRACE_WORKERS_REFUSAL = ("tracing is not supported with --workers: each request is answered across two processes; "
                         "serve without --workers to trace")


@dataclass(frozen=True, slots=True)
class TraceValues:
    """One setting's values. ``level`` is empty for OFF."""

    level: tuple[str, ...] = ()
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0
    file: str = ""

    def invalid_reason(self) -> str:
        """Why this setting cannot trace ("" if it can), in Triton's words."""
        if not self.level:
            return "tracing is disabled"
        if self.rate == 0:
            return "sample rate must be non-zero"
        if not self.file:
            return "trace file name is not given"
        return ""

    def to_dict(self) -> dict[str, Any]:
        """Triton's response shape: every value a string, the level a list."""
        return {"trace_level": list(self.level) or ["OFF"], "trace_rate": str(self.rate),
                "trace_count": str(self.count), "log_frequency": str(self.log_frequency),
                "trace_file": self.file, "trace_mode": "triton"}


def parse_level(values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``["TIMESTAMPS"]`` -> ``("TIMESTAMPS",)``; ``["OFF"]`` -> ``()``. Raises ValueError."""
    levels: list[str] = []
    for value in values:
        if not isinstance(value, str) or value.upper() not in LEVELS:
            raise ValueError(f"trace_level must be OFF, TIMESTAMPS or TENSORS, got {value!r}")
        value = value.upper()
        if value == "OFF":
            if len(values) != 1:
                raise ValueError("Expect only one trace level 'OFF' is specified")
            return ()
        if value not in levels:
            levels.append(value)
    return tuple(levels)


def parse_number(key: str, value: object, low: int, high: int) -> int:
    """A setting's number: a string of digits (Triton's clients send strings) or an integer."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"Unable to parse '{key}', got: {value!r} (expected a number as a string, e.g. \"1\")")
    text = str(value).strip()
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"Unable to parse '{key}', got: {text}") from None
    if key == "trace_count" and number < low:
        raise ValueError(f"Unable to parse 'trace_count'. Expecting value >= {low}, got: {text}")
    if not low <= number <= high:
        raise ValueError(f"Unable to parse '{key}', value is out of range [ {low}, {high} ], got: {text}")
    return number


def parse_changes(changes: dict[str, object]) -> dict[str, object]:
    """A settings request's changes, checked: each key to its new value, or None to clear it."""
    checked: dict[str, object] = {}
    for key, value in changes.items():
        if key == "trace_file":
            raise ValueError("trace file location can not be updated through network protocol")
        if key == "trace_mode":
            raise ValueError("trace mode can not be updated through network protocol")
        if key not in SETTINGS:
            raise ValueError(f"unknown trace setting '{key}' (known: {', '.join(SETTINGS)})")
        if value is None:
            checked[key] = None
        elif key == "trace_level":
            if not isinstance(value, (str, list)):
                raise ValueError(f"trace_level must be a list of levels, e.g. [\"TIMESTAMPS\"], got {value!r}")
            checked[key] = parse_level([value] if isinstance(value, str) else value)
        elif key == "trace_count":
            checked[key] = parse_number(key, value, -1, INT32_MAX)
        else:
            checked[key] = parse_number(key, value, 0, UINT32_MAX)
    return checked


_FIELDS = {"trace_level": "level", "trace_rate": "rate", "trace_count": "count", "log_frequency": "log_frequency"}


def tensor_text(datatype: str, data: np.ndarray | None) -> str:
    """A tensor's elements as Triton's TENSORS trace writes them: comma-separated, floats as C++
    streams print them (6 significant digits), BOOL as 1/0, BYTES each in double quotes; FP16 and
    BF16 are left empty, as Triton leaves them."""
    if data is None or datatype in ("FP16", "BF16"):
        return ""
    values = data.ravel().tolist()
    if datatype == "BYTES":
        return ",".join('"' + (v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)) + '"'
                        for v in values)
    if datatype == "BOOL":
        return ",".join("1" if v else "0" for v in values)
    if datatype in ("FP32", "FP64"):
        return ",".join(format(v, "g") for v in values)
    return ",".join(map(str, values))


TensorRow = tuple[str, str, "np.ndarray | None"]  # name, datatype, data


class RequestTrace:
    """One traced request: its model, id and timestamps (seconds on the monotonic clock, which
    ``time.perf_counter`` and ``time.monotonic`` both read on Linux), and with TENSORS its inputs
    as they were queued and its outputs as the model gave them."""

    __slots__ = ("id", "inputs", "model", "outputs", "request_id", "setting", "stamps", "version")

    def __init__(self, trace_id: int, setting: _Setting, model: str) -> None:
        self.id, self.setting, self.model = trace_id, setting, model
        self.version: str | None = None
        self.request_id = ""
        self.stamps: list[tuple[str, float]] = []
        self.inputs: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []

    @property
    def wants_tensors(self) -> bool:
        return "TENSORS" in self.setting.values.level

    def tensors(self, inputs: Iterable[TensorRow], outputs: Iterable[TensorRow]) -> None:
        """The request's input tensors (TENSOR_QUEUE_INPUT) and its answer's (TENSOR_BACKEND_OUTPUT)."""
        self.inputs = [self._tensor("TENSOR_QUEUE_INPUT", *row) for row in inputs]
        self.outputs = [self._tensor("TENSOR_BACKEND_OUTPUT", *row) for row in outputs]

    def _tensor(self, activity: str, name: str, datatype: str, data: np.ndarray | None) -> dict[str, Any]:
        shape = ",".join(map(str, data.shape)) if data is not None else ""
        return {"id": self.id, "activity": activity,
                "tensor": {"name": name, "data": tensor_text(datatype, data), "shape": shape, "dtype": datatype}}

    def stamp(self, name: str, seconds: float) -> None:
        self.stamps.append((name, seconds))

    def handled(self, version: str, request_id: str | None, start: float, queued: float, queue: float,
                compute: float, end: float) -> None:
        """The data plane's part: it took the request at ``start``, handed it to the scheduler at
        ``queued``; the scheduler says it waited ``queue`` and ran ``compute`` seconds; the answer
        was made at ``end``."""
        self.version, self.request_id = version, request_id or ""
        computed = queued + queue
        self.stamps += [("REQUEST_START", start), ("QUEUE_START", queued), ("COMPUTE_START", computed),
                        ("COMPUTE_END", min(computed + compute, end)), ("REQUEST_END", end)]

    def finish(self) -> None:
        """The answer went out: the trace is complete."""
        self.setting.collect(self)

    def entries(self) -> list[dict[str, Any]]:
        """Triton's objects for this trace: its model, then one per timestamp in time order (with
        TIMESTAMPS), the input tensors after QUEUE_START and the outputs after COMPUTE_END (with
        TENSORS)."""
        if self.version is None:  # the request never reached a model
            return []
        version: int | str = int(self.version) if self.version.isdigit() else self.version
        head: dict[str, Any] = {"id": self.id, "model_name": self.model, "model_version": version}
        if self.request_id:
            head["request_id"] = self.request_id
        found = [head]
        stamps = sorted(self.stamps, key=lambda s: s[1]) if "TIMESTAMPS" in self.setting.values.level else []
        inputs, outputs = self.inputs, self.outputs
        for name, seconds in stamps:
            found.append({"id": self.id, "timestamps": [{"name": name, "ns": int(seconds * 1e9)}]})
            if name == "QUEUE_START":
                found += inputs
                inputs = []
            elif name == "COMPUTE_END":
                found += outputs
                outputs = []
        return [*found, *inputs, *outputs]


class _TraceFile:
    """``trace_file`` and its rolled files ``<trace_file>.<n>``; written on the tracer's thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._index = itertools.count()
        self._lock = threading.Lock()
        self._first = True
        self._closed = False  # the server stopped: a trace that ends later is dropped, never a new file

    def save(self, entries: list[bytes], rolled: bool) -> None:
        """``rolled``: the next ``<trace_file>.<n>``, a JSON array of its own; else appended to
        ``trace_file`` (its closing bracket comes with ``close``)."""
        body = b",".join(entries)
        if self._closed:
            return
        try:
            if rolled:
                Path(f"{self.path}.{next(self._index)}").write_bytes(b"[" + body + b"]")
                return
            with self._lock, open(self.path, "wb" if self._first else "ab") as out:
                out.write((b"[" if self._first else b",") + body)
                self._first = False
        except OSError as exc:
            log.error("cannot write trace file %s: %s", self.path, exc)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._first:
                try:
                    with open(self.path, "ab") as out:
                        out.write(b"]")
                except OSError as exc:
                    log.error("cannot write trace file %s: %s", self.path, exc)


class _Setting:
    """The values one scope (global, or a model with settings of its own) traces by, and its counts."""

    def __init__(self, values: TraceValues, file: _TraceFile, writer: _Writer) -> None:
        self.values, self.file, self.writer = values, file, writer
        self.count = values.count
        self.valid = not values.invalid_reason()
        self.seen = self.created = self.collected = 0
        self.kept: list[bytes] = []
        self.retired = False

    def sample(self, tracer: Tracer, model: str) -> RequestTrace | None:
        if not self.valid or self.count == 0:
            return None
        self.seen += 1
        if self.seen % self.values.rate:
            return None
        if self.count > 0:
            self.count -= 1
        self.created += 1
        return RequestTrace(next(tracer.ids), self, model)

    def collect(self, trace: RequestTrace) -> None:
        self.collected += 1
        self.kept += [orjson.dumps(entry) for entry in trace.entries()]
        frequency = self.values.log_frequency
        done = self.count == 0 and self.collected == self.created
        if self.retired or (frequency and self.collected % frequency == 0) or done:
            self.flush()

    def flush(self) -> None:
        """What is kept: to the next rolled file with a log_frequency (or once trace_count ran
        out, as Triton does), else appended to trace_file."""
        if not self.kept:
            return
        entries, self.kept = self.kept, []
        rolled = bool(self.values.log_frequency) or (self.count == 0 and not self.retired)
        self.writer.submit(self.file.save, entries, rolled)


class _Writer:
    """The one thread trace files are written on, in order."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, *call: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="inferd-trace")
        self._pool.submit(*call)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class Tracer:
    """The server's trace settings and the traces they sample. ``refusal``: why tracing cannot be
    turned on in this process (a front-end worker's: its requests are answered elsewhere)."""

    def __init__(self, defaults: TraceValues | None = None, refusal: str = "") -> None:
        self.defaults = defaults or TraceValues()
        self.refusal = refusal
        self.ids = itertools.count(1)
        self._writer = _Writer()
        self._file = _TraceFile(self.defaults.file)
        self._global_changes: dict[str, object] = {}
        self._model_changes: dict[str, dict[str, object]] = {}
        self._global = _Setting(self.defaults, self._file, self._writer)
        self._models: dict[str, _Setting] = {}
        self.active = self._global.valid  # the one thing the request path asks

    # -- settings ------------------------------------------------------------------------------
    def settings(self, model: str | None = None) -> dict[str, Any]:
        """Triton's shape; ``trace_count`` is what is left of it, as Triton's counts down."""
        setting = self._models.get(model, self._global) if model else self._global
        return {**setting.values.to_dict(), "trace_count": str(setting.count)}

    def update(self, model: str | None, changes: dict[str, object]) -> dict[str, Any]:
        """Apply a settings request (each value checked first; None clears a value: a model's
        falls back to the global one, the global one to the server's start); the settings after.
        Raises ValueError saying what is wrong."""
        checked = parse_changes(changes)
        scope = dict(self._model_changes.get(model, {}) if model else self._global_changes)
        for key, value in checked.items():
            if value is None:
                scope.pop(key, None)
            else:
                scope[key] = value
        values = self._values(scope, self._global_values() if model else self.defaults)
        if values.level and self.refusal:
            raise ValueError(self.refusal)
        reason = values.invalid_reason()
        if values.level and reason:
            raise ValueError(f"Attempting to set invalid trace setting :{reason}")
        if model:
            if scope:
                self._model_changes[model] = scope
            else:
                self._model_changes.pop(model, None)
        else:
            self._global_changes = scope
        self._rebuild()
        return self.settings(model)

    def _global_values(self) -> TraceValues:
        return self._values(self._global_changes, self.defaults)

    @staticmethod
    def _values(changes: dict[str, object], base: TraceValues) -> TraceValues:
        return replace(base, **{_FIELDS[key]: value for key, value in changes.items()})  # type: ignore[arg-type]

    def _rebuild(self) -> None:
        """Every scope whose values changed gets a new setting (counts from zero, as Triton's); the
        old one writes what it keeps, and what its traces still in flight bring."""
        self._global = self._renew(self._global, self._global_values())
        models: dict[str, _Setting] = {}
        for name, changes in self._model_changes.items():
            values = self._values(changes, self._global.values)
            current = self._models.get(name)
            models[name] = self._renew(current, values) if current is not None else self._setting(values)
        for name, setting in self._models.items():
            if name not in models:
                self._retire(setting)
        self._models = models
        self.active = self._global.valid or any(s.valid for s in models.values())

    def _renew(self, current: _Setting, values: TraceValues) -> _Setting:
        if current.values == values:
            return current
        self._retire(current)
        return self._setting(values)

    def _setting(self, values: TraceValues) -> _Setting:
        return _Setting(values, self._file, self._writer)

    @staticmethod
    def _retire(setting: _Setting) -> None:
        setting.retired = True
        setting.flush()

    # -- requests ------------------------------------------------------------------------------
    def sample(self, model: str) -> RequestTrace | None:
        """A trace for this request of ``model``, if its setting samples it."""
        return self._models.get(model, self._global).sample(self, model)

    def finish_soon(self, trace: RequestTrace, protocol: str, send_start: float) -> None:
        """The answer is handed to the transport now; its write happens before the loop's next
        turn, which stamps ``<protocol>_SEND_END`` and completes the trace."""
        trace.stamp(f"{protocol}_SEND_START", send_start)
        asyncio.get_running_loop().call_soon(self._sent, trace, protocol)

    @staticmethod
    def _sent(trace: RequestTrace, protocol: str) -> None:
        trace.stamp(f"{protocol}_SEND_END", time.perf_counter())
        trace.finish()

    def close(self) -> None:
        """At the server's stop: every setting writes what it keeps, and trace_file is closed."""
        for setting in (self._global, *self._models.values()):
            self._retire(setting)
        self._writer.close()
        self._file.close()
