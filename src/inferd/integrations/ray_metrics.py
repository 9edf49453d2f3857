"""A replica's inferd metrics in Ray's own metrics: every ``interval`` seconds the replica's
registry is read and what changed is recorded through ``ray.serve.metrics``, which tags each series
with Serve's ``application``, ``deployment`` and ``replica``. Each node's Ray metrics agent then
exposes them (``ray start --metrics-export-port``, the targets Ray writes for Prometheus) as
``ray_inferd_*``, one series per replica, beside Serve's own ``ray_serve_*``.

Counters and gauges carry over exactly. Ray's histograms only take single observations, so each
new observation of a bucket is replayed at a value inside that bucket, the values chosen so that
the replayed sum equals inferd's (bucket counts, count and sum exact; one call per observation).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from ray.serve import metrics as serve_metrics

log = logging.getLogger("inferd.ray")

Labels = tuple[tuple[str, str], ...]


def replay_values(bounds: Sequence[float], added: Sequence[int], added_sum: float) -> list[float]:
    """Values that fall ``added[i]`` times strictly inside bucket i (``(bounds[i-1], bounds[i])``,
    the last bucket above ``bounds[-1]``) and add up to ``added_sum`` where the buckets allow it."""
    lows = [0.0, *bounds]
    highs = [*bounds, 2 * bounds[-1]]  # the +Inf bucket: replayed up to twice the last bound
    floor = sum(low * n for low, n in zip(lows, added, strict=True))
    width = sum((high - low) * n for low, high, n in zip(lows, highs, added, strict=True))
    share = 0.5 if width <= 0 else min(max((added_sum - floor) / width, 1e-6), 1 - 1e-6)
    values: list[float] = []
    for low, high, n in zip(lows, highs, added, strict=True):
        values.extend([low + share * (high - low)] * n)
    if added[-1] and added_sum - sum(values) > 0:  # above the last bound: the rest goes there
        extra = (added_sum - sum(values)) / added[-1]
        values[-added[-1]:] = [v + extra for v in values[-added[-1]:]]
    return values


class RayMetricsBridge:
    """Copies one registry's counters, gauges and histograms into Ray's metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._ray: dict[str, Any] = {}  # family name -> its ray.serve.metrics object
        self._last: dict[tuple[str, Labels], float] = {}  # counters: the value already recorded
        self._last_buckets: dict[tuple[str, Labels], tuple[list[float], float]] = {}
        self._gauges: dict[str, set[Labels]] = {}  # the series each gauge family showed last time

    def push(self) -> None:
        """Records what changed since the last push."""
        for family in self._registry.collect():
            if family.type == "counter":
                self._counter(family)
            elif family.type == "gauge":
                self._gauge(family)
            elif family.type == "histogram":
                self._histogram(family)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.push()
            except Exception:  # a metric Ray refuses must not stop the others next time
                log.exception("copying inferd's metrics into Ray's failed")

    def _counter(self, family: Metric) -> None:
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            key = (family.name, tuple(sorted(sample.labels.items())))
            added = sample.value - self._last.get(key, 0.0)
            if added > 0:
                self._metric(family, sample.labels).inc(added, tags=sample.labels)
                self._last[key] = sample.value

    def _gauge(self, family: Metric) -> None:
        shown = set()
        for sample in family.samples:
            self._metric(family, sample.labels).set(sample.value, tags=sample.labels)
            shown.add(tuple(sorted(sample.labels.items())))
        for gone in self._gauges.get(family.name, set()) - shown:  # e.g. a state the version left
            self._metric(family, dict(gone)).set(0, tags=dict(gone))
        self._gauges[family.name] = shown

    def _histogram(self, family: Metric) -> None:
        series: dict[Labels, tuple[list[tuple[float, float]], float]] = {}
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            key = tuple(sorted(labels.items()))
            buckets, total = series.get(key, ([], 0.0))
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_sum"):
                total = sample.value
            series[key] = (buckets, total)
        for key, (buckets, total) in series.items():
            buckets.sort()
            bounds = [bound for bound, _ in buckets if not math.isinf(bound)]
            counts = _per_bucket(count for _, count in buckets)
            seen, seen_sum = self._last_buckets.get((family.name, key), ([0.0] * len(counts), 0.0))
            added = [max(int(now - before), 0) for now, before in zip(counts, seen, strict=True)]
            if not any(added):
                continue
            self._last_buckets[(family.name, key)] = (counts, total)
            metric = self._metric(family, dict(key), bounds)
            for value in replay_values(bounds, added, total - seen_sum):
                metric.observe(value, tags=dict(key))

    def _metric(self, family: Metric, labels: dict[str, str], bounds: Sequence[float] = ()) -> Any:
        found = self._ray.get(family.name)
        if found is None:
            # Ray annotates tag_keys as tuple[str], a one-element tuple, but takes any number of keys
            keys = cast("tuple[str]", tuple(sorted(labels)))
            if family.type == "counter":
                found = serve_metrics.Counter(family.name, family.documentation, tag_keys=keys)
            elif family.type == "gauge":
                found = serve_metrics.Gauge(family.name, family.documentation, tag_keys=keys)
            else:
                found = serve_metrics.Histogram(family.name, family.documentation, boundaries=list(bounds),
                                                tag_keys=keys)
            self._ray[family.name] = found
        return found


def _per_bucket(cumulative: Iterable[float]) -> list[float]:
    counts, before = [], 0.0
    for value in cumulative:
        counts.append(value - before)
        before = value
    return counts
