"""Prometheus metrics, one registry per server (no global state). Names start with ``inferd_``.

    inferd_requests_total{model,version,protocol,outcome}     counter
    inferd_request_duration_seconds{model,version,protocol}   histogram: arrival to answer
    inferd_queue_duration_seconds{model,version}              histogram: waiting for an instance
    inferd_compute_duration_seconds{model,version}            histogram: the model's execution
    inferd_batch_size{model,version}                          histogram: rows per execution
    inferd_queue_depth{model,version}                         gauge: requests waiting
    inferd_instances_busy{model,version}                      gauge: executions running
    inferd_model_state{model,version,state}                   gauge: 1 for the version's state
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

StateRows = Callable[[], Iterable[tuple[str, str, str]]]  # (model, version, state)


class _StateCollector(Collector):
    def __init__(self, rows: StateRows) -> None:
        self._rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("inferd_model_state", "1 for the state each model version is in",
                                   labels=["model", "version", "state"])
        for model, version, state in self._rows():
            family.add_metric([model, version, state], 1)
        yield family


class ModelMetrics:
    """The per-(model, version) children, looked up once, so the hot path only observes."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._metrics = metrics
        self._labels = (model, version)
        self._queue = metrics.queue_seconds.labels(model, version)
        self._compute = metrics.compute_seconds.labels(model, version)
        self._batch = metrics.batch_size.labels(model, version)
        self._by_protocol: dict[str, Any] = {}
        self._by_outcome: dict[tuple[str, str], Any] = {}

    def request(self, protocol: str, outcome: str, total: float, queue: float, compute: float) -> None:
        counter = self._by_outcome.get((protocol, outcome))
        if counter is None:
            counter = self._metrics.requests.labels(*self._labels, protocol, outcome)
            self._by_outcome[(protocol, outcome)] = counter
        counter.inc()
        if outcome != "success":
            return
        latency = self._by_protocol.get(protocol)
        if latency is None:
            latency = self._metrics.request_seconds.labels(*self._labels, protocol)
            self._by_protocol[protocol] = latency
        latency.observe(total)
        self._queue.observe(queue)
        self._compute.observe(compute)

    def batch(self, rows: int) -> None:
        self._batch.observe(rows)

    def track(self, queue_depth: Callable[[], float], busy: Callable[[], float]) -> None:
        self._metrics.queue_depth.labels(*self._labels).set_function(queue_depth)
        self._metrics.instances_busy.labels(*self._labels).set_function(busy)

    def close(self) -> None:
        for gauge in (self._metrics.queue_depth, self._metrics.instances_busy):
            with contextlib.suppress(KeyError):
                gauge.remove(*self._labels)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("inferd_requests", "Inference requests by outcome",
                                ["model", "version", "protocol", "outcome"], registry=r)
        self.request_seconds = Histogram("inferd_request_duration_seconds",
                                         "Arrival to answer of successful requests",
                                         ["model", "version", "protocol"], buckets=_LATENCY_BUCKETS,
                                         registry=r)
        self.queue_seconds = Histogram("inferd_queue_duration_seconds", "Time waiting for an instance",
                                       ["model", "version"], buckets=_LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("inferd_compute_duration_seconds", "Model execution time",
                                         ["model", "version"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("inferd_batch_size", "Rows per model execution",
                                    ["model", "version"], buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("inferd_queue_depth", "Requests waiting for an instance",
                                 ["model", "version"], registry=r)
        self.instances_busy = Gauge("inferd_instances_busy", "Executions running now",
                                    ["model", "version"], registry=r)
        self._models: dict[tuple[str, str], ModelMetrics] = {}

    def for_model(self, model: str, version: str) -> ModelMetrics:
        key = (model, version)
        found = self._models.get(key)
        if found is None:
            found = self._models[key] = ModelMetrics(self, model, version)
        return found

    def watch_states(self, rows: StateRows) -> None:
        self.registry.register(_StateCollector(rows))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
