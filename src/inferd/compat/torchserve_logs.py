"""TorchServe's log files under ``inferd torchserve`` (what its log4j2.xml writes, pytorch/serve
62c4d6a1f): in ``LOG_LOCATION`` (default ``./logs``) ``ts_log.log`` (the server's log),
``access_log.log`` (one line per HTTP request) and ``model_log.log`` (what handlers log); in
``METRICS_LOCATION`` (default ``./logs``) ``ts_metrics.log`` (the front end's metrics, in
``metrics_mode`` log) and ``model_metrics.log`` (handlers' metrics in log mode that metrics_config
declares or auto-detection admits, as TorchServe's front end keeps them). A folder that
cannot be written gets no files (a warning says why), as log4j's appenders fail quietly.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

from inferd.observability.torchserve_metrics import cpu_times, system_metrics

log = logging.getLogger("inferd.torchserve")

MODEL_LOG_ENV = "INFERD_TS_MODEL_LOG"  # model_log.log's path, read by runtimes/handler.py in instance processes
FORMAT = "%(asctime)s [%(levelname)s] %(name)s - %(message)s"


def install(environ: dict[str, str], cwd: Path, metrics_mode: str, system_metrics: bool = True) -> None:
    """Open the five files and attach them to the loggers that write them (the front end's
    metrics only in ``metrics_mode`` log and legacy, as TorchServe's, with the host's system metrics unless
    ``disable_system_metrics``)."""
    logs = Path(environ.get("LOG_LOCATION") or cwd / "logs")
    metrics = Path(environ.get("METRICS_LOCATION") or cwd / "logs")
    logging.getLogger("inferd.access").propagate = False  # its lines go to access_log.log only
    _attach(logs / "ts_log.log", "inferd", propagate=True)
    _attach(logs / "access_log.log", "inferd.access", propagate=False)
    logged = metrics_mode in ("log", "legacy")  # legacy: the front end's metrics but ts_inference_*'s
    _attach(metrics / "ts_metrics.log", "inferd.torchserve.ts_metrics" if logged else "", False)
    if logged and system_metrics and logging.getLogger("inferd.torchserve.ts_metrics").handlers:
        threading.Thread(target=_log_system_metrics, name="ts-system-metrics", daemon=True).start()
    _attach(metrics / "model_metrics.log", "inferd.torchserve.model_metrics.declared", propagate=False)
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


SYSTEM_METRICS_INTERVAL_S = 60.0  # TorchServe's metric_time_interval


def _log_system_metrics() -> None:
    """What TorchServe's metrics collector logs at start and every minute (ts/metrics/system_metrics.py:
    the host's CPU, memory and root disk), read from /proc and statvfs."""
    metrics = logging.getLogger("inferd.torchserve.ts_metrics")
    host = socket.gethostname()
    cpu = cpu_times()
    while True:
        busy_idle, cpu = cpu, cpu_times()
        for name, unit, value in system_metrics(busy_idle, cpu):
            metrics.info("%s.%s:%s|#Level:Host|#hostname:%s,timestamp:%d", name, unit, round(value, 1), host,
                         int(time.time()))
        time.sleep(SYSTEM_METRICS_INTERVAL_S)
