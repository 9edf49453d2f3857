"""One log format for the whole server, on stderr; the frameworks' own chatter only at debug."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

import orjson

# Printed by frameworks on every start or first request, and harmless: TensorFlow's C++ INFO lines
# (oneDNN, CPU features, "could not find cuda drivers"), gRPC core's, torch's warning that a request
# buffer is read-only (inferd never writes to it), onnxruntime's provider fallbacks.
_QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "NONE"}
_QUIET_WARNINGS = ("The given NumPy array is not writable", "Specified provider '")
LEVEL_VARIABLE, FORMAT_VARIABLE = "INFERD_LOG_LEVEL", "INFERD_LOG_FORMAT"  # what instance processes read


def configure_instance_process() -> None:
    """An instance process logs to the server's stderr at the server's level, in its format (a
    Triton model's pb_utils.Logger.log_info reaches the server's log, as in Triton)."""
    configure(os.environ.get(LEVEL_VARIABLE, "info"), os.environ.get(FORMAT_VARIABLE, "text"))


class JsonFormatter(logging.Formatter):
    """``--log-format json``: one object per line (time, level, logger, message, traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname,
                                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str = "info", log_format: str = "text") -> None:
    """The server's logging; its instance processes, which inherit the environment, log alike."""
    os.environ[LEVEL_VARIABLE], os.environ[FORMAT_VARIABLE] = level, log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("inferd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    SETTINGS.install()
    if level.lower() != "debug":
        quiet_frameworks()


def quiet_frameworks() -> None:
    """Set before any framework loads; variables the user set win, and instance processes inherit
    them. ``--log-level debug`` leaves everything as the frameworks have it."""
    for name, value in _QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # its Python deprecation notices
    for message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    filters = [f for f in os.environ.get("PYTHONWARNINGS", "").split(",") if f]
    filters += [f"ignore:{m}" for m in _QUIET_WARNINGS if f"ignore:{m}" not in filters]
    os.environ["PYTHONWARNINGS"] = ",".join(filters)


class LogSettings(logging.Filter):
    """Triton's logging extension (GET/POST /v2/logging, gRPC LogSettings): which levels the server
    logs, changed while it runs. A filter on the server's handler drops what is switched off;
    ``log_verbose_level`` > 0 turns debug records on. In this process only (under ``--workers`` the
    model process's log; each front-end worker keeps its own)."""

    FORMATS = ("default", "ISO8601")

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, bool | int | str] = {"log_file": "", "log_info": True, "log_warning": True,
                                                     "log_error": True, "log_verbose_level": 0,
                                                     "log_format": "default"}
        self._base_level = logging.INFO

    def install(self) -> None:
        root = logging.getLogger("inferd")
        self._base_level = root.level or logging.INFO
        self.values["log_info"] = self._base_level <= logging.INFO
        self.values["log_verbose_level"] = 1 if self._base_level <= logging.DEBUG else 0
        for handler in root.handlers:
            handler.addFilter(self)

    def update(self, changes: dict[str, object]) -> dict[str, bool | int | str]:
        """Check every change first, then apply them all; raises ValueError saying which is wrong."""
        checked: dict[str, bool | int | str] = {}
        for key, value in changes.items():
            if key == "log_file":
                raise ValueError("log file location can not be updated through network protocol (inferd logs to "
                                 "stderr)")
            if key in ("log_info", "log_warning", "log_error"):
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false, got {value!r}")
            elif key == "log_verbose_level":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ValueError(f"log_verbose_level must be an integer >= 0, got {value!r}")
            elif key == "log_format":
                if value not in self.FORMATS:
                    raise ValueError(f"log_format must be one of {', '.join(self.FORMATS)}, got {value!r}")
            else:
                raise ValueError(f"unknown log setting '{key}' (known: {', '.join(self.values)})")
            checked[key] = value
        self.values.update(checked)
        root = logging.getLogger("inferd")
        root.setLevel(logging.DEBUG if self.values["log_verbose_level"] else min(self._base_level, logging.INFO))
        iso = self.values["log_format"] == "ISO8601"
        for handler in root.handlers:
            if handler.formatter is not None and not isinstance(handler.formatter, JsonFormatter):
                handler.formatter.datefmt = "%Y-%m-%dT%H:%M:%S%z" if iso else None
        return dict(self.values)

    def filter(self, record: logging.LogRecord) -> bool:
        level = record.levelno
        if level >= logging.ERROR:
            return bool(self.values["log_error"])
        if level >= logging.WARNING:
            return bool(self.values["log_warning"])
        if level >= logging.INFO:
            return bool(self.values["log_info"])
        return bool(self.values["log_verbose_level"])


SETTINGS = LogSettings()  # the process's, as logging itself is
