"""Prometheus metrics, one registry per server (no global state). Names start with ``inferd_``.

    inferd_requests_total{model,version,protocol,outcome}     counter
    inferd_request_duration_seconds{model,version,protocol}   histogram: arrival to answer (successes)
    inferd_queue_duration_seconds{model,version}              histogram: waiting for an instance
    inferd_compute_duration_seconds{model,version}            histogram: the model's execution
    inferd_batch_size{model,version}                          histogram: rows per execution
    inferd_queue_depth{model,version}                         gauge: requests waiting
    inferd_instances_busy{model,version}                      gauge: executions running
    inferd_model_state{model,version,state}                   gauge: 1 for the version's state
    inferd_cache_hits_total{model,version}                    counter: requests answered from the cache
    inferd_cache_misses_total{model,version}                  counter: cacheable requests the model ran
    inferd_cache_bytes, inferd_cache_entries                  gauges: what the response cache holds
    inferd_cache_max_bytes                                    gauge: its bound (--cache-size)
    inferd_cache_evictions_total                              counter: entries pushed out to make room

then Triton's nv_inference_* families under Triton's names (triton_metrics.py), and after them the
metrics Python models define themselves, under their own names (custom_metrics.py).

The hot path only adds to plain counters held per (model, version) (a bisect and two additions per
histogram); prometheus-client formats them when /metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from inferd.observability import triton_metrics
from inferd.observability.custom_metrics import CustomMetrics
from inferd.observability.torchserve_model_metrics import TorchServeModelMetrics
from inferd.observability.triton_metrics import TritonRow

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

StateRows = Callable[[], Iterable[tuple[str, str, str]]]  # (model, version, state)


class CacheUsage(Protocol):
    """What the response cache reports of itself."""

    max_bytes: int
    bytes: int
    entries: int
    evictions: int


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += count
        self.sum += value * count

    def buckets(self) -> list[tuple[str, float]]:
        result: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            result.append((bound, running))
        return result


def _latency_histogram() -> Histogram:
    return Histogram(LATENCY_BUCKETS)


class ModelMetrics:
    """Everything measured about one model version."""

    def __init__(self, model: str, version: str) -> None:
        self.labels = (model, version)
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)  # (protocol, outcome) -> count
        self.latency: defaultdict[str, Histogram] = defaultdict(_latency_histogram)  # protocol -> histogram
        self.queue = Histogram(LATENCY_BUCKETS)
        self.compute = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.queue_depth: Callable[[], float] = lambda: 0
        self.busy: Callable[[], float] = lambda: 0
        self.restarts: Callable[[], float] = lambda: 0  # instance processes replaced after dying
        self.cache_hits = 0
        self.cache_misses = 0

    def request(self, protocol: str, outcome: str, total: float, queue: float, compute: float,
                count: int = 1) -> None:
        """``count`` requests that went through together (a front-end worker's group), each timed alike."""
        self.requests[protocol, outcome] += count
        if outcome != "success":
            return
        self.latency[protocol].observe(total, count)
        self.queue.observe(queue, count)
        self.compute.observe(compute, count)

    def request_cached(self, protocol: str, total: float) -> None:
        """A success answered from the response cache: counted and timed, no queue or compute."""
        self.requests[protocol, "success"] += 1
        self.latency[protocol].observe(total)

    def cache(self, hit: bool) -> None:
        if hit:
            self.cache_hits += 1
        else:
            self.cache_misses += 1

    def batch(self, rows: int) -> None:
        self.batch_size.observe(rows)

    def track(self, queue_depth: Callable[[], float], busy: Callable[[], float]) -> None:
        self.queue_depth, self.busy = queue_depth, busy

    def close(self) -> None:
        """The version is unloading: its gauges stop (its counters stay, as Prometheus expects)."""
        self.queue_depth = self.busy = lambda: 0


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        models = list(self._metrics.models.values())
        yield self._requests(models)
        latency = HistogramMetricFamily("inferd_request_duration_seconds",
                                        "Arrival to answer of successful requests",
                                        labels=["model", "version", "protocol"])
        for m in models:
            for protocol, histogram in m.latency.items():
                latency.add_metric([*m.labels, protocol], histogram.buckets(), histogram.sum)
        yield latency
        yield _histograms("inferd_queue_duration_seconds", "Time waiting for an instance", models,
                          lambda m: m.queue)
        yield _histograms("inferd_compute_duration_seconds", "Model execution time", models,
                          lambda m: m.compute)
        yield _histograms("inferd_batch_size", "Rows per model execution", models,
                          lambda m: m.batch_size)
        yield _gauges("inferd_queue_depth", "Requests waiting for an instance", models,
                      lambda m: m.queue_depth())
        yield _gauges("inferd_instances_busy", "Executions running now", models, lambda m: m.busy())
        restarts = CounterMetricFamily("inferd_instance_restarts",
                                       "Instance processes replaced after they crashed, exited, hung or "
                                       "outgrew their memory limit", labels=["model", "version"])
        for m in models:
            restarts.add_metric(list(m.labels), m.restarts())
        yield restarts
        states = GaugeMetricFamily("inferd_model_state", "1 for the state each model version is in",
                                   labels=["model", "version", "state"])
        for model, version, state in self._metrics.state_rows():
            states.add_metric([model, version, state], 1)
        yield states
        yield from self._cache(models)

    def _cache(self, models: list[ModelMetrics]) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        usage = self._metrics.cache_usage()
        if usage is None:
            return
        hits = CounterMetricFamily("inferd_cache_hits", "Requests answered from the response cache",
                                   labels=["model", "version"])
        misses = CounterMetricFamily("inferd_cache_misses", "Cacheable requests the model had to run",
                                     labels=["model", "version"])
        for m in models:
            if m.cache_hits or m.cache_misses:
                hits.add_metric(list(m.labels), m.cache_hits)
                misses.add_metric(list(m.labels), m.cache_misses)
        yield hits
        yield misses
        yield GaugeMetricFamily("inferd_cache_bytes", "Bytes the response cache holds", value=usage.bytes)
        yield GaugeMetricFamily("inferd_cache_entries", "Answers the response cache holds", value=usage.entries)
        yield GaugeMetricFamily("inferd_cache_max_bytes", "The response cache's bound (--cache-size)",
                                value=usage.max_bytes)
        yield CounterMetricFamily("inferd_cache_evictions", "Answers pushed out of the response cache to "
                                  "make room", value=usage.evictions)

    @staticmethod
    def _requests(models: list[ModelMetrics]) -> CounterMetricFamily:
        family = CounterMetricFamily("inferd_requests", "Inference requests by outcome",
                                     labels=["model", "version", "protocol", "outcome"])
        for m in models:
            for (protocol, outcome), count in list(m.requests.items()):
                family.add_metric([*m.labels, protocol, outcome], count)
        return family


def _histograms(name: str, doc: str, models: list[ModelMetrics],
                pick: Callable[[ModelMetrics], Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["model", "version"])
    for m in models:
        family.add_metric(list(m.labels), pick(m).buckets(), pick(m).sum)
    return family


def _gauges(name: str, doc: str, models: list[ModelMetrics],
            read: Callable[[ModelMetrics], float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["model", "version"])
    for m in models:
        family.add_metric(list(m.labels), read(m))
    return family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.models: dict[tuple[str, str], ModelMetrics] = {}
        self.state_rows: StateRows = list
        self.cache_usage: Callable[[], CacheUsage | None] = lambda: None
        self.registry.register(_Collector(self))
        self.custom = CustomMetrics()  # what models define themselves (Triton's pb_utils.MetricFamily)
        self.torchserve_models = TorchServeModelMetrics()  # TorchServe handlers' context.metrics
        self.triton_rows: Callable[[], Iterable[TritonRow]] = list

    def for_model(self, model: str, version: str) -> ModelMetrics:
        key = (model, version)
        found = self.models.get(key)
        if found is None:
            found = self.models[key] = ModelMetrics(model, version)
        return found

    def watch_states(self, rows: StateRows) -> None:
        self.state_rows = rows

    def watch_cache(self, usage: Callable[[], CacheUsage]) -> None:
        self.cache_usage = usage

    def watch_statistics(self, rows: Callable[[], Iterable[TritonRow]]) -> None:
        """The loaded versions' statistics, read at each scrape for Triton's nv_inference_* families."""
        self.triton_rows = rows

    def torchserve_exposition(self) -> bytes:
        """TorchServe handlers' model metrics, for TorchServe's metrics address (empty unless
        metrics_mode=prometheus)."""
        return self.torchserve_models.exposition()

    def exposition(self) -> bytes:
        return generate_latest(self.registry) + triton_metrics.exposition(self.triton_rows()) + self.custom.exposition()
