"""Triton's per-model metric families on /metrics, under Triton's names (``nv_inference_*``), so the
dashboards and alerts written for Triton read inferd unchanged. Counters are cumulative, as Triton's,
and written by hand as custom metrics are (prometheus-client would add ``_total`` to the names).

Each row is one loaded model version's statistics (the data plane's, the same the statistics
extension answers): model, version, successful and failed requests, inferences and executions (both
without the cached requests, as Triton counts them), and the successful requests' time from arrival
to answer, in the queue, and in compute input, infer and output, in nanoseconds; the failures by Triton's
reason (a deadline that passed in the queue: REJECTED; a client gone: CANCELED; the model raising:
BACKEND; the rest and an ensemble's own: OTHER); the requests waiting
for an instance now (Triton's pending request count, a gauge); and, for a model the response cache
answers, its hits and misses and the time they took (Triton writes the nv_cache_*_per_model families
only for such models)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from inferd.observability.custom_metrics import label_set


class TritonRow(NamedTuple):
    model: str
    version: str
    success: int
    failure: int
    inferences: int
    executions: int
    request_ns: int
    queue_ns: int
    input_ns: int
    infer_ns: int
    output_ns: int
    pending: int = 0
    cached: bool = False
    cache_hits: int = 0
    cache_misses: int = 0
    cache_hit_ns: int = 0
    cache_miss_ns: int = 0
    failures: tuple[tuple[str, int], ...] = ()  # failed requests by Triton's reason; the rest are 0


FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")  # Triton's, each written for every version


# Triton's family, its HELP text, and the row field it counts (microseconds for the *_us ones)
_FAMILIES = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes", "success"),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes", "failure"),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)", "inferences"),
    ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)",
     "executions"),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds "
                                         "(includes cached requests)", "request_ns"),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds "
                                       "(includes cached requests)", "queue_ns"),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds "
                                               "(does not include cached requests)", "input_ns"),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds "
                                               "(does not include cached requests)", "infer_ns"),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds "
                                                "(does not include cached requests)", "output_ns"),
)
_PENDING = ("nv_inference_pending_request_count", "Instantaneous number of pending requests awaiting execution "
                                                  "per-model.", "pending")
_CACHE_FAMILIES = (
    ("nv_cache_num_hits_per_model", "Number of cache hits per model", "cache_hits"),
    ("nv_cache_hit_duration_per_model", "Total cache hit duration per model, in microseconds", "cache_hit_ns"),
    ("nv_cache_num_misses_per_model", "Number of cache misses per model", "cache_misses"),
    ("nv_cache_miss_duration_per_model", "Total cache miss (insert+lookup) duration per model, in microseconds",
     "cache_miss_ns"),
)


def exposition(rows: Iterable[TritonRow]) -> bytes:
    rows = list(rows)
    if not rows:
        return b""
    lines: list[str] = []
    for family in _FAMILIES:
        _family(lines, family, "counter", rows)
    _family(lines, _PENDING, "gauge", rows)
    cached = [row for row in rows if row.cached]
    if cached:
        for family in _CACHE_FAMILIES:
            _family(lines, family, "counter", cached)
    return ("\n".join(lines) + "\n").encode()


def _family(lines: list[str], family: tuple[str, str, str], kind: str, rows: list[TritonRow]) -> None:
    name, description, field = family
    lines.append(f"# HELP {name} {description}")
    lines.append(f"# TYPE {name} {kind}")
    for row in rows:
        labels: tuple[tuple[str, str], ...] = (("model", row.model), ("version", row.version))
        if field == "failure":  # labels in name order, as prometheus-cpp writes Triton's (a std::map)
            counted = dict(row.failures)
            lines.extend(f"{name}{label_set((labels[0], ('reason', reason), labels[1]))} {counted.get(reason, 0)}"
                         for reason in FAILURE_REASONS)
            continue
        value = getattr(row, field)
        if field.endswith("_ns"):
            value //= 1000
        lines.append(f"{name}{label_set(labels)} {value}")
