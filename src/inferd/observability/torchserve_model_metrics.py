"""TorchServe's model metrics (a handler's ``context.metrics`` values, and ``PredictionTime``), kept
as TorchServe's front end keeps them (pytorch/serve 62c4d6a1f: MetricCache, WorkerLifeCycle,
format/prometheous/*):

- ``metrics_mode=prometheus``: a metric reaches the metrics address only if ``metrics_config``'s
  ``model_metrics`` names it, or ``model_metrics_auto_detect=true``; its labels are the file's
  dimension names (else those it came with) and ``Hostname``. Counters add, gauges are set,
  histograms observe (the Java client's default buckets).
- ``log`` (TorchServe's default) and ``legacy``: each value is logged as TorchServe's worker
  prints it (``[METRICS]name.Unit:value|#Dim:value,...|#type:GAUGE|#hostname:h,time``), on the
  ``inferd.torchserve.model_metrics`` logger; nothing is added to the metrics address.
- ``off``, under ``inferd serve`` (which measures every model itself): the values are dropped.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferd.observability.custom_metrics import LABEL, NAME
from inferd.observability.torchserve_metrics import FRONT_END_FAMILIES

log = logging.getLogger("inferd.torchserve.model_metrics")  # every value, as TorchServe's worker prints it
# TorchServe's model_metrics.log: only what metrics_config declares or auto-detection admits (its file
# handler is attached by compat/torchserve_logs.py under inferd torchserve)
declared_log = logging.getLogger("inferd.torchserve.model_metrics.declared")
declared_log.propagate = False
MODES = ("log", "prometheus", "legacy", "off")  # off: inferd serve's (handlers' values are dropped)
KINDS = ("counter", "gauge", "histogram")
# the Prometheus Java client's default histogram buckets (TorchServe's PrometheusHistogram keeps them)
_REFUSALS_LOGGED = 1000  # names refused and logged once each (a handler may make up a new one per request)
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@dataclass(slots=True)
class _Family:
    kind: str
    unit: str
    dimensions: tuple[str, ...]  # the label names before Hostname
    series: dict[tuple[str, ...], list[float]] = field(default_factory=dict)  # label values -> value, or
    #                                        a histogram's [sum, count, per-bucket counts...]


class TorchServeModelMetrics:
    def __init__(self, hostname: str | None = None) -> None:
        self.hostname = hostname or socket.gethostname()
        self.mode = "off"
        self.auto_detect = False
        self._families: dict[str, _Family] = default_families()
        self._refused: set[str] = set()  # names already logged as refused
        self._lock = threading.Lock()  # records come from model threads and the event loop

    def configure(self, mode: str, config: Path | None, auto_detect: bool) -> None:
        """``metrics_mode``, ``metrics_config`` (its ``model_metrics``) and
        ``model_metrics_auto_detect``; a file TorchServe could not read fails the start the same way
        (ValueError, saying why)."""
        if mode not in MODES:
            raise ValueError(f"metrics_mode={mode}: expected one of {', '.join(MODES)}")
        self.mode, self.auto_detect = mode, auto_detect
        self._families = declared_families(config) if config is not None else default_families()

    def record(self, name: str, unit: str, kind: str, labels: tuple[tuple[str, str], ...], value: float) -> None:
        if self.mode == "off":
            return
        if self.mode != "prometheus":
            line = ("[METRICS]%s.%s:%s|#%s|#type:%s|#hostname:%s,%d", name, unit, _number(value),
                    ",".join(f"{k}:{v}" for k, v in labels), kind.upper(), self.hostname, int(time.time()))
            log.info(*line)
            if declared_log.handlers and (self.auto_detect or name in self._families):
                declared_log.info(*line)
            return
        with self._lock:
            family = self._families.get(name)
            if family is None:
                if not self.auto_detect:
                    return  # as TorchServe: a metric neither declared nor auto-detected is dropped
                names = tuple(k for k, _ in labels)
                problem = family_problem(name, kind, names)
                if problem is not None:
                    if name not in self._refused and len(self._refused) < _REFUSALS_LOGGED:
                        self._refused.add(name)
                        log.warning("model metric %r is not shown on the metrics address: %s", name, problem)
                    return
                family = self._families[name] = _Family(kind, str(unit), names)
            if len(labels) != len(family.dimensions):
                log.error("model metric %s: %d dimension values for the %d names %s declares; dropped", name,
                          len(labels), len(family.dimensions), list(family.dimensions))
                return
            key = tuple(v for _, v in labels)
            if family.kind == "histogram":
                series = family.series.setdefault(key, [0.0, 0.0] + [0.0] * len(_BUCKETS))
                series[0] += value
                series[1] += 1
                for i, bound in enumerate(_BUCKETS):
                    if value <= bound:
                        series[2 + i] += 1
            elif family.kind == "counter":
                if value >= 0:
                    family.series.setdefault(key, [0.0])[0] += value
            else:
                family.series[key] = [value]

    def exposition(self) -> bytes:
        """The families in the text TorchServe's metrics address writes (a declared family shows
        its HELP and TYPE lines before its first value, as the Java client's registry does); none
        outside prometheus mode."""
        if self.mode != "prometheus":
            return b""
        host = _escape(self.hostname)
        lines: list[str] = []
        with self._lock:
            for name, family in self._families.items():
                lines += [f"# HELP {name} Torchserve prometheus {family.kind} metric with unit: "
                          f"{_escape_help(family.unit)}",
                          f"# TYPE {name} {family.kind}"]
                names = (*family.dimensions, "Hostname")
                for key, values in family.series.items():
                    labels = "".join(f'{n}="{_escape(v)}",' for n, v in zip(names, (*key, host), strict=True))
                    if family.kind != "histogram":
                        lines.append(f"{name}{{{labels}}} {_number(values[0])}")
                        continue
                    for bound, count in zip((*_BUCKETS, math.inf), (*values[2:], values[1]), strict=True):
                        le = "+Inf" if bound == math.inf else repr(bound)
                        lines.append(f'{name}_bucket{{{labels}le="{le}",}} {_number(count)}')
                    lines += [f"{name}_count{{{labels}}} {_number(values[1])}",
                              f"{name}_sum{{{labels}}} {_number(values[0])}"]
        return ("\n".join(lines) + "\n").encode() if lines else b""


def default_families() -> dict[str, _Family]:
    """What TorchServe's own ts/configs/metrics.yaml declares for models."""
    return {name: _Family("gauge", "ms", ("ModelName", "Level")) for name in ("HandlerTime", "PredictionTime")}


def declared_families(path: Path) -> dict[str, _Family]:
    """metrics.yaml's ``model_metrics``: per type, a list of ``{name, unit, dimensions}``."""
    import yaml

    try:
        document: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"metrics_config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"metrics_config {path} is not YAML: {exc}") from None
    section = document.get("model_metrics") if isinstance(document, dict) else None
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ValueError(f"metrics_config {path}: model_metrics must map counter/gauge/histogram to lists")
    families: dict[str, _Family] = {}
    for kind, entries in section.items():
        if kind not in KINDS:
            raise ValueError(f"metrics_config {path}: model_metrics has '{kind}'; expected {', '.join(KINDS)}")
        for entry in entries or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or "unit" not in entry:
                raise ValueError(f"metrics_config {path}: each {kind} metric needs a name and a unit, got {entry!r}")
            dimensions = entry.get("dimensions") or []
            if not isinstance(dimensions, list) or not all(isinstance(d, str) for d in dimensions):
                raise ValueError(f"metrics_config {path}: {entry['name']}'s dimensions must be a list of names")
            problem = family_problem(entry["name"], kind, tuple(dimensions))
            if problem is not None:
                raise ValueError(f"metrics_config {path}: {kind} metric {entry['name']!r}: {problem}")
            families[entry["name"]] = _Family(kind, str(entry["unit"]), tuple(dimensions))
    return families


def family_problem(name: str, kind: str, dimensions: tuple[str, ...]) -> str | None:
    """Why a metric cannot be written as Prometheus text beside the front end's families (its name
    and dimension names go into the text as they are), or None."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        return "a metric name must match [a-zA-Z_:][a-zA-Z0-9_:]*"
    if name in FRONT_END_FAMILIES:
        return "the front end's own metric has that name"
    for dimension in dimensions:
        if not isinstance(dimension, str) or not LABEL.fullmatch(dimension) or dimension.startswith("__"):
            return f"dimension name {dimension!r} must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __"
    taken = {"Hostname", "le"} if kind == "histogram" else {"Hostname"}
    if len(set(dimensions)) != len(dimensions) or taken & set(dimensions):
        return f"dimension names {list(dimensions)} repeat one, or name {' or '.join(sorted(taken))}, which it adds"
    return None


def _number(value: float) -> str:
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
