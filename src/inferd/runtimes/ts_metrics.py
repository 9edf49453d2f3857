"""TorchServe's custom metrics API as a handler sees it (``context.metrics``, ``ts.metrics.*``):
``add_metric``, ``add_counter``, ``add_time``, ``add_size``, ``add_percent``, ``add_error``,
``add_metric_to_cache``, ``get_metric`` and the metric's ``add_or_update``, with TorchServe's
default dimensions, checks and unit names (pytorch/serve 62c4d6a1f, ``ts/metrics``).

Where TorchServe's worker prints each value as a ``[METRICS]`` log line for its Java front end to
parse, inferd sends it to the server (``MetricUpdate`` with ``source="torchserve"``), from an
instance process too; the server keeps or logs it as the ``metrics_mode`` says
(observability/torchserve_model_metrics.py)."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
from pathlib import Path
from typing import Any

from inferd.errors import InferdError
from inferd.runtimes import model_calls
from inferd.types import MetricUpdate

log = logging.getLogger("inferd.handler")
METRICS_CONFIG_ENV = "INFERD_TS_METRICS_CONFIG"  # set by inferd torchserve: config.properties' metrics_config
# TorchServe's own ts/configs/metrics.yaml model_metrics, a worker's cache when no metrics_config is given
DEFAULT_MODEL_METRICS = {"gauge": [{"name": name, "unit": "ms", "dimensions": ["ModelName", "Level"]}
                                   for name in ("HandlerTime", "PredictionTime")]}

# TorchServe's unit abbreviations -> the names its metrics carry (ts/metrics/unit.py)
UNITS = {"ms": "Milliseconds", "s": "Seconds", "percent": "Percent", "count": "Count", "MB": "Megabytes",
         "GB": "Gigabytes", "kB": "Kilobytes", "B": "Bytes", "": "unit", None: "unit"}


class Units:
    """``ts.metrics.unit.Units``: ``Units().units`` maps the abbreviations to the names."""

    def __init__(self) -> None:
        self.units = dict(UNITS)


class MetricTypes(enum.Enum):
    """``ts.metrics.metric_type_enum.MetricTypes``."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Dimension:
    """``ts.metrics.dimension.Dimension``: one name and value of a metric's dimensions."""

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    def to_dict(self) -> dict[str, Any]:
        return {"Name": self.name, "Value": self.value}


class MetricsCacheKeyError(KeyError):
    """``ts.metrics.metric_cache_errors.MetricsCacheKeyError``: no such metric in the cache."""


class MetricsCacheTypeError(TypeError):
    """``ts.metrics.metric_cache_errors.MetricsCacheTypeError``: an argument of the wrong type."""


class MetricsCacheValueError(ValueError):
    """``ts.metrics.metric_cache_errors.MetricsCacheValueError``: a value TorchServe refuses (a unit)."""


def _kind(metric_type: Any) -> str:
    """A MetricTypes member (inferd's, or TorchServe's own where it is installed) -> its value."""
    value = getattr(metric_type, "value", None)
    if not isinstance(value, str) or value not in ("counter", "gauge", "histogram"):
        raise MetricsCacheTypeError("`metric_type` must be a MetricTypes enum")
    return value


class CachingMetric:
    """``ts.metrics.caching_metric.CachingMetric``: a metric the handler updates by its dimension
    values, in the order of its dimension names."""

    def __init__(self, metric_name: str, unit: str, dimension_names: list[str] | None = None,
                 metric_type: Any = MetricTypes.COUNTER) -> None:
        self.metric_name = metric_name
        self.unit = UNITS.get(unit, unit)
        self.dimension_names = list(dimension_names or [])
        self.metric_type = metric_type
        self._kind = _kind(metric_type)

    def add_or_update(self, value: float, dimension_values: list[Any] | None = None, request_id: str = "") -> None:
        """Counters add ``value``, gauges are set to it, histograms observe it. A wrong number of
        dimension values, a negative counter step or a value that is no number is logged and
        dropped, as TorchServe does (the handler goes on)."""
        values = [] if dimension_values is None else list(dimension_values)
        if len(values) != len(self.dimension_names):
            log.error("[METRICS]Failed to update metric with name:%s with value: %s: Dimension values: %s should "
                      "correspond to Dimension names: %s", self.metric_name, value, values, self.dimension_names)
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            log.error("[METRICS]Failed to update metric with name:%s: the value %r is not a number",
                      self.metric_name, value)
            return
        if self._kind == "counter" and value < 0:
            log.error("[METRICS]Failed to update metric with name:%s with value: %s: Counter metric update value "
                      "cannot be negative", self.metric_name, value)
            return
        labels = tuple((name, str(v)) for name, v in zip(self.dimension_names, values, strict=True))
        update = MetricUpdate(self.metric_name, self.unit, self._kind, labels, "update", float(value),
                              source="torchserve")
        with contextlib.suppress(InferdError):  # no server in this process: nobody shows it
            model_calls.current().record_metric(update)

    def update(self, value: float, request_id: str = "", dimensions: list[Dimension] | None = None) -> None:
        """TorchServe's older call: the dimensions (objects) replace the metric's names."""
        dimensions = list(dimensions or [])
        self.dimension_names = [d.name for d in dimensions]
        self.add_or_update(value, [d.value for d in dimensions], request_id)


class MetricsCache:
    """``context.metrics`` (TorchServe's MetricsCacheYamlImpl): the metrics a handler declared or
    used, by type and name. The metrics.yaml's model_metrics are the server's to apply: a value
    reaches /metrics under the dimension names the file gives (or, auto-detected, those it came
    with)."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.request_ids: dict[int, str] | str | None = None
        self.cache: dict[str, dict[str, CachingMetric]] = {}
        for kind, entries in declared_model_metrics().items():  # as TorchServe's cache starts
            for entry in entries:
                self.add_metric_to_cache(entry["name"], str(entry["unit"]), entry.get("dimensions") or [],
                                         MetricTypes(kind))

    def set_request_ids(self, request_ids: dict[int, str] | str | None) -> None:
        self.request_ids = request_ids

    def _request(self, idx: Any) -> str | None:
        ids = self.request_ids
        if isinstance(ids, dict):
            if idx is not None and idx in ids:
                return ids[idx]
            return ",".join(ids.values())
        return ids

    def _default_dimensions(self, request_id: str | None, dimensions: list[Dimension] | None) -> list[Dimension]:
        """TorchServe's defaults: ModelName and Level "Model" for a metric of a request (or of the
        load), Level "Error" for one outside any."""
        dimensions = list(dimensions or [])
        names = {d.name for d in dimensions}
        if request_id is None:
            if "Level" not in names:
                dimensions.append(Dimension("Level", "Error"))
            return dimensions
        if "ModelName" not in names:
            dimensions.append(Dimension("ModelName", self.model_name))
        if "Level" not in names:
            dimensions.append(Dimension("Level", "Model"))
        return dimensions

    def add_metric_to_cache(self, metric_name: str, unit: str, dimension_names: list[str] | None = None,
                            metric_type: Any = MetricTypes.COUNTER) -> CachingMetric:
        if not isinstance(metric_name, str):
            raise MetricsCacheTypeError("`metric_name` must be a str")
        if not isinstance(unit, str):
            raise MetricsCacheTypeError("`unit` must be a str")
        if dimension_names and not isinstance(dimension_names, list):
            raise MetricsCacheTypeError("`dimension_names` should be a list of dimension name strings")
        metric = CachingMetric(metric_name, unit, dimension_names, metric_type)
        self.cache.setdefault(_kind(metric_type), {})[metric_name] = metric
        return metric

    def get_metric(self, metric_name: str, metric_type: Any = MetricTypes.COUNTER) -> CachingMetric:
        if not isinstance(metric_name, str):
            raise MetricsCacheTypeError("`metric_name` must be a str")
        kind = _kind(metric_type)
        try:
            return self.cache[kind][metric_name]
        except KeyError:
            raise MetricsCacheKeyError(f"Metric of type '{metric_type}' and name '{metric_name}' doesn't exist") \
                from None

    def _emit(self, name: str, value: float, unit: str, idx: Any, dimensions: list[Dimension] | None,
              metric_type: Any, request_id: str | None = "") -> None:
        request = self._request(idx) if request_id == "" else request_id
        dimensions = self._default_dimensions(request, dimensions)
        try:
            metric = self.get_metric(name, metric_type)
        except MetricsCacheKeyError:
            metric = self.add_metric_to_cache(name, unit, [d.name for d in dimensions], metric_type)
        metric.add_or_update(value, [d.value for d in dimensions], request or "")

    def add_metric(self, name: str, value: float, unit: str, idx: Any = None,
                   dimensions: list[Dimension] | None = None, metric_type: Any = MetricTypes.COUNTER) -> None:
        self._emit(name, value, unit, idx, dimensions, metric_type)

    def add_counter(self, name: str, value: float, idx: Any = None, dimensions: list[Dimension] | None = None) -> None:
        self._emit(name, value, "count", idx, dimensions, MetricTypes.COUNTER)

    def add_time(self, name: str, value: float, idx: Any = None, unit: str = "ms",
                 dimensions: list[Dimension] | None = None, metric_type: Any = MetricTypes.GAUGE) -> None:
        if unit not in ("ms", "s"):
            raise MetricsCacheValueError("the unit for a timed metric should be one of ['ms', 's']")
        self._emit(name, value, unit, idx, dimensions, metric_type)

    def add_size(self, name: str, value: float, idx: Any = None, unit: str = "MB",
                 dimensions: list[Dimension] | None = None, metric_type: Any = MetricTypes.GAUGE) -> None:
        if unit not in ("MB", "kB", "GB", "B"):
            raise ValueError("The unit for size based metric is one of ['MB','kB', 'GB', 'B']")
        self._emit(name, value, unit, idx, dimensions, metric_type)

    def add_percent(self, name: str, value: float, idx: Any = None, dimensions: list[Dimension] | None = None,
                    metric_type: Any = MetricTypes.GAUGE) -> None:
        self._emit(name, value, "percent", idx, dimensions, metric_type)

    def add_error(self, name: str, value: float, dimensions: list[Dimension] | None = None) -> None:
        self._emit(name, value, "", None, dimensions, MetricTypes.COUNTER, request_id=None)


def declared_model_metrics() -> dict[str, list[dict[str, Any]]]:
    """The metrics.yaml ``model_metrics`` a handler's ``context.metrics`` holds from the start (so
    ``get_metric`` finds them, as in TorchServe): ``metrics_config``'s under ``inferd torchserve``
    (the server checked the file at start), else TorchServe's default HandlerTime and PredictionTime."""
    path = os.environ.get(METRICS_CONFIG_ENV)
    if not path:
        return DEFAULT_MODEL_METRICS
    import yaml

    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        log.warning("metrics_config %s is not read for the handler's metrics: %s", path, exc)
        return DEFAULT_MODEL_METRICS
    section = document.get("model_metrics") if isinstance(document, dict) else None
    if not isinstance(section, dict):
        return {}
    return {kind: [entry for entry in entries or [] if isinstance(entry, dict) and isinstance(entry.get("name"), str)
                   and "unit" in entry]
            for kind, entries in section.items() if kind in ("counter", "gauge", "histogram")}
