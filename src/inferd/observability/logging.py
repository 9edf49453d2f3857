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


class JsonFormatter(logging.Formatter):
    """``--log-format json``: one object per line (time, level, logger, message, traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname,
                                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str = "info", log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("inferd")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
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
