"""Metrics a model defines itself (Triton's ``pb_utils.MetricFamily``), shown on /metrics as Triton
shows them: under the model's own family name (no ``inferd_`` prefix, no ``_total`` added), with
its labels. Each instance sends its changes (``MetricUpdate``); the server adds them up, as Triton's
instances share one series per family and labels."""
# (a change is types.MetricUpdate; observability sits beside types, so it takes the fields)

from __future__ import annotations

import logging
import math
import re
import threading
from bisect import bisect_left
from dataclasses import dataclass, field

log = logging.getLogger("inferd.metrics")

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OWN_PREFIX = "inferd_"


@dataclass(frozen=True, slots=True)
class _Change:
    family: str
    description: str
    kind: str
    labels: tuple[tuple[str, str], ...]
    op: str
    value: float
    buckets: tuple[float, ...]


@dataclass(slots=True)
class _Series:
    value: float = 0.0  # a counter's or gauge's value; a histogram's sum
    buckets: tuple[float, ...] = ()
    counts: list[int] = field(default_factory=list)  # per bucket, the last +Inf
    holders: int = 0  # the instances that created it and still run


@dataclass(slots=True)
class _Family:
    description: str
    kind: str
    series: dict[tuple[tuple[str, str], ...], _Series] = field(default_factory=dict)


class CustomMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}
        self._refused: set[str] = set()

    def apply(self, family_name: str, description: str, kind: str, labels: tuple[tuple[str, str], ...], op: str,
              value: float, buckets: tuple[float, ...]) -> None:
        """Add one change (``op``: create, hold, increment, set, observe, drop); a change that contradicts the
        family as first declared is dropped (logged once). A series leaves /metrics when every
        instance that created it dropped it (unloaded), as Triton counts a series' Metric objects;
        a family left without series goes too (a model loaded again starts from 0)."""
        update = _Change(family_name, description, kind, labels, op, value, buckets)
        problem = _check(update)
        with self._lock:
            family = self._families.get(update.family)
            if update.op == "drop":
                if problem is None and family is not None and family.kind == update.kind:
                    self._drop(update.family, family, update.labels)
                return
            if problem is None and family is not None and family.kind != update.kind:
                problem = f"it was declared a {family.kind} first, now a {update.kind}"
            if problem is not None:
                if update.family not in self._refused:
                    self._refused.add(update.family)
                    log.warning("custom metric '%s' is not shown on /metrics: %s", update.family, problem)
                return
            if family is None:
                family = self._families[update.family] = _Family(update.description, update.kind)
            series = family.series.get(update.labels)
            if series is None:
                bounds = tuple(sorted(update.buckets))
                series = family.series[update.labels] = _Series(buckets=bounds, counts=[0] * (len(bounds) + 1))
            if update.op == "hold":
                series.holders += 1
            elif update.op == "set":
                series.value = update.value
            elif update.op == "increment":
                series.value += update.value
            elif update.op == "observe":
                series.value += update.value
                series.counts[bisect_left(series.buckets, update.value)] += 1

    def _drop(self, name: str, family: _Family, labels: tuple[tuple[str, str], ...]) -> None:
        series = family.series.get(labels)
        if series is None:
            return
        series.holders -= 1
        if series.holders <= 0:
            del family.series[labels]
            if not family.series:
                del self._families[name]

    def exposition(self) -> bytes:
        lines: list[str] = []
        with self._lock:
            for name, family in self._families.items():
                lines.append(f"# HELP {name} {_escape_help(family.description)}")
                lines.append(f"# TYPE {name} {family.kind}")
                for labels, series in family.series.items():
                    if family.kind != "histogram":
                        lines.append(f"{name}{label_set(labels)} {number(series.value)}")
                        continue
                    running = 0
                    for bound, count in zip((*map(number, series.buckets), "+Inf"), series.counts, strict=True):
                        running += count
                        lines.append(f"{name}_bucket{label_set((*labels, ('le', bound)))} {running}")
                    lines.append(f"{name}_sum{label_set(labels)} {number(series.value)}")
                    lines.append(f"{name}_count{label_set(labels)} {running}")
        return ("\n".join(lines) + "\n").encode() if lines else b""


def _check(update: _Change) -> str | None:
    if not NAME.fullmatch(update.family):
        return "its name is not a Prometheus metric name"
    if update.family.startswith(_OWN_PREFIX):
        return f"names starting '{_OWN_PREFIX}' are the server's own"
    if update.kind not in ("counter", "gauge", "histogram"):
        return f"unknown kind {update.kind!r}"
    bad = next((name for name, _ in update.labels if not LABEL.fullmatch(name) or name == "le"), None)
    if bad is not None:
        return f"label {bad!r} is not a Prometheus label name"
    if not math.isfinite(update.value) and update.op != "set":
        return f"a change of {update.value}"
    return None


def label_set(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape_value(value)}"' for name, value in labels) + "}"


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)
