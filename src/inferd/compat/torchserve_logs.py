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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inferd.config import TorchServeSettings

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
    cpu = _cpu_times()
    while True:
        busy_idle, cpu = cpu, _cpu_times()
        for name, unit, value in _system_metrics(busy_idle, cpu):
            metrics.info("%s.%s:%s|#Level:Host|#hostname:%s,timestamp:%d", name, unit, round(value, 1), host,
                         int(time.time()))
        time.sleep(SYSTEM_METRICS_INTERVAL_S)


def system_sampler(settings: TorchServeSettings) -> Callable[[], list[tuple[str, str, float]]] | None:
    """The host's system metrics each time it is called (CPU use since the previous call), as
    TorchServe's metrics collector reads them: the metrics address's gauges in prometheus mode.
    None with ``disable_system_metrics=true``: TorchServe then never starts its collector, so the
    gauges are declared without samples."""
    if not settings.system_metrics:
        return None
    cpu = _cpu_times()

    def sample() -> list[tuple[str, str, float]]:
        nonlocal cpu
        before, cpu = cpu, _cpu_times()
        return _system_metrics(before, cpu)

    return sample


def _cpu_times() -> tuple[int, int]:
    """(busy, idle) jiffies of all CPUs so far (/proc/stat's first line; zeros where there is none)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, idle


def _system_metrics(before: tuple[int, int], now: tuple[int, int]) -> list[tuple[str, str, float]]:
    busy, idle = now[0] - before[0], now[1] - before[1]
    rows = [("CPUUtilization", "Percent", 100.0 * busy / (busy + idle) if busy + idle > 0 else 0.0)]
    try:
        meminfo = {line.split(":")[0]: int(line.split()[1]) for line in
                   Path("/proc/meminfo").read_text().splitlines() if line.endswith("kB")}
        total, available = meminfo["MemTotal"] / 1024, meminfo["MemAvailable"] / 1024  # MB
        rows += [("MemoryUsed", "Megabytes", total - available), ("MemoryAvailable", "Megabytes", available),
                 ("MemoryUtilization", "Percent", 100.0 * (total - available) / total)]
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        pass
    disk = os.statvfs("/")
    gib = 1024.0**3
    used, free = (disk.f_blocks - disk.f_bfree) * disk.f_frsize / gib, disk.f_bavail * disk.f_frsize / gib
    rows += [("DiskUsage", "Gigabytes", used), ("DiskUtilization", "Percent", 100.0 * used / (used + free or 1.0)),
             ("DiskAvailable", "Gigabytes", free)]
    return rows
