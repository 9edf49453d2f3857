"""TorchServe's metrics API families, in the Prometheus text its Java client writes (labels end
with a comma: ``Requests2XX{Level="Host",Hostname="h",} 3.0``), as TorchServe's clients and its
own test collections read them."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

# TorchServe's ts_metrics.log (metrics_mode log): its file handler is attached by compat/torchserve_logs.py
log = logging.getLogger("inferd.torchserve.ts_metrics")
# the front end's own families (render): a handler's metric of one of these names is refused
FRONT_END_FAMILIES = frozenset({"Requests2XX", "Requests4XX", "Requests5XX", "ts_inference_requests_total",
                                "ts_inference_latency_microseconds", "ts_queue_latency_microseconds"})
# metrics_default.yaml's system gauges and their units; the GPU ones are declared without samples (no GPU is read)
SYSTEM_GAUGES = (("CPUUtilization", "Percent"), ("MemoryUsed", "Megabytes"), ("MemoryAvailable", "Megabytes"),
                 ("MemoryUtilization", "Percent"), ("DiskUsage", "Gigabytes"), ("DiskUtilization", "Percent"),
                 ("DiskAvailable", "Gigabytes"), ("GPUMemoryUtilization", "Percent"),
                 ("GPUMemoryUsed", "Megabytes"), ("GPUUtilization", "Percent"))
SystemSampler = Callable[[], list[tuple[str, str, float]]]  # (name, unit, value) of the host, read now
LEGACY_COUNTERS = (("ts_inference_requests_total", "Count"), ("ts_inference_latency_microseconds", "Microseconds"),
                   ("ts_queue_latency_microseconds", "Microseconds"))


@dataclass(slots=True)
class _ModelCounts:
    requests: int = 0
    inference_us: float = 0.0
    queue_us: float = 0.0

    def value(self, family: str) -> float:
        """This model's value of one of LEGACY_COUNTERS."""
        return {"ts_inference_requests_total": float(self.requests),
                "ts_inference_latency_microseconds": self.inference_us,
                "ts_queue_latency_microseconds": self.queue_us}[family]


class TorchServeMetrics:
    """Counters and gauges the TorchServe doors feed; ``render`` is the metrics address's answer.

    Where they go follows ``metrics_mode`` as TorchServe's front end sends them: ``prometheus``:
    all on the metrics address (the host's system gauges read when it is scraped); ``legacy``:
    only the ``ts_inference_*`` counters there, the rest logged to ts_metrics.log; ``log``: logged,
    and the request and ``ts_inference_*`` counters also answered (inferd's, as under ``off``)."""

    def __init__(self, hostname: str | None = None, mode: str = "off", system: SystemSampler | None = None) -> None:
        self.hostname = hostname or socket.gethostname()
        self.mode = mode
        self._system = system  # the host's system metrics (compat/torchserve_logs.py reads them)
        self._statuses = {"2XX": 0, "4XX": 0, "5XX": 0}
        self._models: dict[tuple[str, str], _ModelCounts] = {}
        self._host_ms = {"QueueTime": 0.0, "WorkerThreadTime": 0.0}  # gauges: the last request's
        self._worker_load_ms: dict[str, float] = {}  # WorkerLoadTime per worker name

    def response(self, status: int) -> None:
        """One answer of the inference or management API (TorchServe counts both)."""
        family = f"{status // 100}XX"
        if family in self._statuses:
            self._statuses[family] += 1
            if log.handlers:
                self._log(f"Requests{family}", "Count", 1.0, "Level:Host")

    def inference(self, model: str, version: str | None, inference_s: float, queue_s: float,
                  worker_thread_s: float = 0.0) -> None:
        """One answered prediction: ``worker_thread_s`` is the front end's own time, neither queued
        nor in the model (TorchServe's WorkerThreadTime)."""
        counts = self._models.setdefault((model, version or "default"), _ModelCounts())
        counts.requests += 1
        counts.inference_us += inference_s * 1e6
        counts.queue_us += queue_s * 1e6
        self._host_ms.update(QueueTime=queue_s * 1e3, WorkerThreadTime=max(worker_thread_s, 0.0) * 1e3)
        if not log.handlers:
            return
        for name, value_ms in self._host_ms.items():
            self._log(name, "Milliseconds", value_ms, "Level:Host")
        if self.mode != "legacy":  # legacy keeps these three on the metrics address only
            dimensions = f"model_name:{model},model_version:{version or 'default'}"
            self._log("ts_inference_requests_total", "Count", 1.0, dimensions)
            self._log("ts_inference_latency_microseconds", "Microseconds", inference_s * 1e6, dimensions)
            self._log("ts_queue_latency_microseconds", "Microseconds", queue_s * 1e6, dimensions)

    def worker_loaded(self, worker_name: str, load_s: float) -> None:
        """A worker became ready ``load_s`` after its model was asked for (TorchServe's WorkerLoadTime)."""
        self._worker_load_ms[worker_name] = load_s * 1e3
        if log.handlers:
            self._log("WorkerLoadTime", "Milliseconds", load_s * 1e3, f"WorkerName:{worker_name},Level:Host")

    def _log(self, name: str, unit: str, value: float, dimensions: str) -> None:
        """One line as TorchServe's front end logs a metric in log mode."""
        log.info("%s.%s:%s|#%s|#hostname:%s,timestamp:%d", name, unit, value, dimensions, self.hostname,
                 int(time.time()))

    def render(self) -> bytes:
        host = _escape(self.hostname)
        lines: list[str] = []
        if self.mode != "legacy":
            for family, count in self._statuses.items():
                lines += _header(f"Requests{family}", "counter", "Count")
                lines.append(f'Requests{family}{{Level="Host",Hostname="{host}",}} {float(count)}')
        for name, unit in LEGACY_COUNTERS:
            lines += _header(name, "counter", unit)
            for (model, version), counts in sorted(self._models.items()):
                lines.append(f'{name}{{model_name="{_escape(model)}",model_version="{_escape(version)}",'
                             f'hostname="{host}",}} {counts.value(name)}')
        if self.mode == "prometheus":
            lines += self._prometheus_gauges(host)
        return ("\n".join(lines) + "\n").encode()

    def _prometheus_gauges(self, host: str) -> list[str]:
        """QueueTime, WorkerThreadTime, WorkerLoadTime and the host's system gauges (prometheus mode)."""
        lines: list[str] = []
        for name, value_ms in self._host_ms.items():
            lines += _header(name, "gauge", "Milliseconds")
            lines.append(f'{name}{{Level="Host",Hostname="{host}",}} {value_ms}')
        lines += _header("WorkerLoadTime", "gauge", "Milliseconds")
        for worker, value_ms in sorted(self._worker_load_ms.items()):
            lines.append(f'WorkerLoadTime{{WorkerName="{_escape(worker)}",Level="Host",Hostname="{host}",}} '
                         f"{value_ms}")
        sampled = {name: value for name, _unit, value in self._system()} if self._system is not None else {}
        for name, unit in SYSTEM_GAUGES:
            lines += _header(name, "gauge", unit)
            if name in sampled:
                lines.append(f'{name}{{Level="Host",Hostname="{host}",}} {round(sampled[name], 1)}')
        return lines


def _header(name: str, kind: str, unit: str) -> list[str]:
    return [f"# HELP {name} Torchserve prometheus {kind} metric with unit: {unit}", f"# TYPE {name} {kind}"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
