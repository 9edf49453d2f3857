"""TorchServe's log files under ``inferd torchserve`` (what its log4j2.xml writes, pytorch/serve
62c4d6a1f): in ``LOG_LOCATION`` (default ``./logs``) ``ts_log.log`` (the server's log),
``access_log.log`` (one line per HTTP request) and ``model_log.log`` (what handlers log); in
``METRICS_LOCATION`` (default ``./logs``) ``ts_metrics.log`` (the front end's metrics, in
``metrics_mode`` log) and ``model_metrics.log`` (handlers' metrics, in log mode). A folder that
cannot be written gets no files (a warning says why), as log4j's appenders fail quietly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("inferd.torchserve")

MODEL_LOG_ENV = "INFERD_TS_MODEL_LOG"  # model_log.log's path, read by runtimes/handler.py in instance processes
FORMAT = "%(asctime)s [%(levelname)s] %(name)s - %(message)s"


def install(environ: dict[str, str], cwd: Path, metrics_mode: str) -> None:
    """Open the five files and attach them to the loggers that write them (the front end's
    metrics only in ``metrics_mode`` log, as TorchServe's)."""
    logs = Path(environ.get("LOG_LOCATION") or cwd / "logs")
    metrics = Path(environ.get("METRICS_LOCATION") or cwd / "logs")
    logging.getLogger("inferd.access").propagate = False  # its lines go to access_log.log only
    _attach(logs / "ts_log.log", "inferd", propagate=True)
    _attach(logs / "access_log.log", "inferd.access", propagate=False)
    _attach(metrics / "ts_metrics.log", "inferd.torchserve.ts_metrics" if metrics_mode == "log" else "", False)
    _attach(metrics / "model_metrics.log", "inferd.torchserve.model_metrics", propagate=True)
    model_log = logs / "model_log.log"
    if _opened(model_log):
        os.environ[MODEL_LOG_ENV] = str(model_log)  # the instance processes inherit it


def _opened(path: Path) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as exc:
        log.warning("TorchServe's log file %s is not written: %s", path, exc.strerror or exc)
        return False
    return True


def _attach(path: Path, logger_name: str, propagate: bool) -> None:
    """``path`` written by ``logger_name`` (none: the file is only made, as TorchServe makes it)."""
    if not _opened(path) or not logger_name:
        return
    logger = logging.getLogger(logger_name)
    logger.propagate = propagate
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)
