"""TorchServe's metrics API families, in the Prometheus text its Java client writes (labels end
with a comma: ``Requests2XX{Level="Host",Hostname="h",} 3.0``), as TorchServe's clients and its
own test collections read them."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

# TorchServe's ts_metrics.log (metrics_mode log): its file handler is attached by compat/torchserve_logs.py
log = logging.getLogger("inferd.torchserve.ts_metrics")
# the front end's own families (render): a handler's metric of one of these names is refused
FRONT_END_FAMILIES = frozenset({"Requests2XX", "Requests4XX", "Requests5XX", "ts_inference_requests_total",
                                "ts_inference_latency_microseconds", "ts_queue_latency_microseconds"})


@dataclass(slots=True)
class _ModelCounts:
    requests: int = 0
    inference_us: float = 0.0
    queue_us: float = 0.0


class TorchServeMetrics:
    """Counters the TorchServe doors feed; ``render`` is the metrics address's answer."""

    def __init__(self, hostname: str | None = None) -> None:
        self.hostname = hostname or socket.gethostname()
        self._statuses = {"2XX": 0, "4XX": 0, "5XX": 0}
        self._models: dict[tuple[str, str], _ModelCounts] = {}

    def response(self, status: int) -> None:
        """One answer of the inference or management API (TorchServe counts both)."""
        family = f"{status // 100}XX"
        if family in self._statuses:
            self._statuses[family] += 1
            if log.handlers:
                self._log(f"Requests{family}", "Count", 1.0, "Level:Host")

    def inference(self, model: str, version: str | None, inference_s: float, queue_s: float) -> None:
        counts = self._models.setdefault((model, version or "default"), _ModelCounts())
        counts.requests += 1
        counts.inference_us += inference_s * 1e6
        counts.queue_us += queue_s * 1e6
        if log.handlers:
            dimensions = f"model_name:{model},model_version:{version or 'default'}"
            self._log("ts_inference_requests_total", "Count", 1.0, dimensions)
            self._log("ts_inference_latency_microseconds", "Microseconds", inference_s * 1e6, dimensions)
            self._log("ts_queue_latency_microseconds", "Microseconds", queue_s * 1e6, dimensions)

    def _log(self, name: str, unit: str, value: float, dimensions: str) -> None:
        """One line as TorchServe's front end logs a metric in log mode."""
        log.info("%s.%s:%s|#%s|#hostname:%s,timestamp:%d", name, unit, value, dimensions, self.hostname,
                 int(time.time()))

    def render(self) -> bytes:
        host = _escape(self.hostname)
        lines: list[str] = []
        for family, count in self._statuses.items():
            lines += [f"# HELP Requests{family} Torchserve prometheus counter metric with unit: Count",
                      f"# TYPE Requests{family} counter",
                      f'Requests{family}{{Level="Host",Hostname="{host}",}} {float(count)}']
        for name, unit, value in (("ts_inference_requests_total", "Count", lambda c: float(c.requests)),
                                  ("ts_inference_latency_microseconds", "Microseconds", lambda c: c.inference_us),
                                  ("ts_queue_latency_microseconds", "Microseconds", lambda c: c.queue_us)):
            lines += [f"# HELP {name} Torchserve prometheus counter metric with unit: {unit}",
                      f"# TYPE {name} counter"]
            for (model, version), counts in sorted(self._models.items()):
                lines.append(f'{name}{{model_name="{_escape(model)}",model_version="{_escape(version)}",'
                             f'hostname="{host}",}} {value(counts)}')
        return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
