"""TorchServe's custom metrics API: a handler's ``context.metrics`` values on the metrics address
(``metrics_mode=prometheus``) as TorchServe's front end shows them, declared in ``metrics_config``
or auto-detected, and TorchServe's ``[METRICS]`` log lines in its default log mode. The handler
below does what pytorch/serve's examples/custom_metrics handler does, through the real
``torch-model-archiver`` and ``inferd torchserve``."""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path

import pytest
import requests
import torch
from prometheus_client.parser import text_string_to_metric_families

from tests import ts_archives
from tests.e2e.test_torchserve_cli import torchserve

HANDLER = '''
import json

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler


def _payload(row):
    """The request's JSON: TorchServe parses an application/json body; other bodies come as bytes."""
    payload = row.get("data") or row.get("body")
    return json.loads(payload) if isinstance(payload, (bytes, bytearray)) else payload


class CountingHandler(BaseHandler):
    def initialize(self, context):
        super().initialize(context)
        metrics = context.metrics
        self.requests = metrics.add_metric_to_cache(metric_name="InferenceRequestCount", unit="count",
                                                    dimension_names=[], metric_type=MetricTypes.COUNTER)
        metrics.add_metric_to_cache(metric_name="PreprocessCallCount", unit="count",
                                    dimension_names=["ModelName"], metric_type=MetricTypes.COUNTER)
        metrics.add_metric(name="InitializeCallCount", value=1, unit="count", metric_type=MetricTypes.COUNTER)

    def preprocess(self, data):
        metrics = self.context.metrics
        self.requests.add_or_update(value=len(data), dimension_values=[])
        metrics.get_metric(metric_name="PreprocessCallCount", metric_type=MetricTypes.COUNTER).add_or_update(
            value=1, dimension_values=[self.context.model_name])
        self.requests.add_or_update(value=1, dimension_values=["one too many"])  # logged and dropped
        try:
            metrics.get_metric(metric_name="Undeclared", metric_type=MetricTypes.GAUGE)
        except KeyError:
            metrics.add_counter(name="MissingLookups", value=1)
        rows = [_payload(row)["values"] for row in data]
        metrics.add_size(name="SizeOfBatch", value=len(rows) * 0.5, unit="kB")
        metrics.add_time(name="HandlerMethodTime", value=2.5, unit="ms",
                         dimensions=[Dimension(name="MethodName", value="preprocess")])
        metrics.add_metric(name="Latency", value=0.3, unit="s", metric_type=MetricTypes.HISTOGRAM)
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data):
        self.context.metrics.add_percent(name="ExamplePercentMetric", value=50)
        return [{"scores": row} for row in data.tolist()]
'''

# a careless (or hostile) handler: names, dimension names and units from the request
HOSTILE_HANDLER = '''
import json

import torch
from ts.metrics.caching_metric import CachingMetric
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler


def _payload(row):
    """The request's JSON: TorchServe parses an application/json body; other bodies come as bytes."""
    payload = row.get("data") or row.get("body")
    return json.loads(payload) if isinstance(payload, (bytes, bytearray)) else payload


class HostileHandler(BaseHandler):
    def preprocess(self, data):
        rows = [_payload(row) for row in data]
        for row in rows:
            if not isinstance(row["unit"], str):  # add_metric checks the unit; a CachingMetric made directly does not
                CachingMetric(row["name"], row["unit"], [], MetricTypes.GAUGE).add_or_update(1, [])
                continue
            self.context.metrics.add_metric(name=row["name"], value=1, unit=row["unit"],
                                            dimensions=[Dimension(row["dimension"], row["value"])])
        return torch.ones((len(rows), 4))

    def postprocess(self, data):
        return [{"scores": row} for row in data.tolist()]
'''

METRICS_YAML = """
dimensions:
  - &model_name "ModelName"
  - &level "Level"
model_metrics:
  counter:
    - name: InferenceRequestCount
      unit: count
      dimensions: []
    - name: InitializeCallCount
      unit: count
      dimensions: [*model_name, *level]
    - name: PreprocessCallCount
      unit: count
      dimensions: [*model_name]
  gauge:
    - name: PredictionTime
      unit: ms
      dimensions: [*model_name, *level]
  histogram:
    - name: Latency
      unit: s
      dimensions: [*model_name, *level]
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tsmetrics")
    work, store = root / "work", root / "store"
    work.mkdir()
    store.mkdir()
    torch.jit.script(torch.nn.Linear(4, 2).eval()).save(str(work / "linear.pt"))
    (work / "handler.py").write_text(textwrap.dedent(HANDLER))
    ts_archives.archive(store, "counting", work / "linear.pt", str(work / "handler.py"))
    (work / "hostile.py").write_text(textwrap.dedent(HOSTILE_HANDLER))
    ts_archives.archive(store, "hostile", work / "linear.pt", str(work / "hostile.py"))
    return store


def _predict(inference: str, times: int) -> None:
    for _ in range(times):
        answer = requests.post(f"{inference}/predictions/counting", json={"values": [1, 2, 3, 4]}, timeout=30)
        assert answer.status_code == 200, answer.text


def _value(text: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert found is not None, f"{series} not in:\n{text}"
    return float(found.group(1))


def _scrape_until(metrics: str, series: str, value: float) -> str:
    """The metrics address's text once ``series`` reads ``value``: an instance process's values
    cross to the server a moment after its answer."""
    deadline = time.monotonic() + 10
    while True:
        text = requests.get(f"{metrics}/metrics", timeout=5).text
        if f"{series} {value!r}" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_declared_metrics_on_the_metrics_address(store: Path, tmp_path: Path) -> None:
    (tmp_path / "metrics.yaml").write_text(METRICS_YAML)
    with torchserve(tmp_path, {"model_store": str(store), "load_models": "counting.mar",
                               "default_workers_per_model": "1", "disable_token_authorization": "true",
                               "metrics_mode": "prometheus", "metrics_config": str(tmp_path / "metrics.yaml")}) as urls:
        _predict(urls["inference"], 3)
        host = r'Hostname="[^"]+",'
        text = _scrape_until(urls["metrics"], "InferenceRequestCount", 3.0)
        plain = re.sub(host, "", text)
        assert "# HELP InferenceRequestCount Torchserve prometheus counter metric with unit: count" in text
        assert "# TYPE InferenceRequestCount counter" in text
        assert _value(plain, "InferenceRequestCount{}") == 3.0  # the wrong-length update was dropped
        assert _value(plain, 'InitializeCallCount{ModelName="counting",Level="Model",}') == 1.0
        assert _value(plain, 'PreprocessCallCount{ModelName="counting",}') == 3.0
        assert 0 < _value(plain, 'PredictionTime{ModelName="counting",Level="Model",}') < 30_000
        assert _value(plain, 'Latency_count{ModelName="counting",Level="Model",}') == 3.0
        assert _value(plain, 'Latency_sum{ModelName="counting",Level="Model",}') == pytest.approx(0.9)
        assert _value(plain, 'Latency_bucket{ModelName="counting",Level="Model",le="0.25",}') == 0.0
        assert _value(plain, 'Latency_bucket{ModelName="counting",Level="Model",le="0.5",}') == 3.0
        assert _value(plain, 'Latency_bucket{ModelName="counting",Level="Model",le="+Inf",}') == 3.0
        assert re.search(rf'^InferenceRequestCount\{{{host}\}} 3\.0$', text, re.M), text  # Hostname added
        # neither declared nor auto-detected: dropped, as TorchServe's front end drops them
        for name in ("HandlerTime", "HandlerMethodTime", "SizeOfBatch", "MissingLookups", "ExamplePercentMetric"):
            assert f"{name}{{" not in text, name
        assert "ts_inference_requests_total" in text  # the front end's families stay


def test_auto_detected_metrics_keep_their_own_dimensions(store: Path, tmp_path: Path) -> None:
    with torchserve(tmp_path, {"model_store": str(store), "load_models": "counting.mar",
                               "default_workers_per_model": "1", "disable_token_authorization": "true",
                               "metrics_mode": "prometheus", "model_metrics_auto_detect": "true"}) as urls:
        _predict(urls["inference"], 2)
        text = _scrape_until(urls["metrics"], "MissingLookups", 2.0)
        plain = re.sub(r'Hostname="[^"]+",', "", text)
        assert _value(plain, 'MissingLookups{ModelName="counting",Level="Model",}') == 2.0
        assert _value(plain, 'HandlerMethodTime{MethodName="preprocess",ModelName="counting",Level="Model",}') == 2.5
        assert _value(plain, 'SizeOfBatch{ModelName="counting",Level="Model",}') == 0.5
        assert _value(plain, 'ExamplePercentMetric{ModelName="counting",Level="Model",}') == 50.0
        assert 0 < _value(plain, 'HandlerTime{ModelName="counting",Level="Model",}') < 30_000
        assert "# HELP SizeOfBatch Torchserve prometheus gauge metric with unit: Kilobytes" in text
        assert "# TYPE MissingLookups counter" in text


def test_metric_text_from_a_handler_cannot_break_the_metrics_address(store: Path, tmp_path: Path) -> None:
    """Auto-detected names, dimension names and units reach the Prometheus text: one that is no
    Prometheus name (a newline, a quote), names the front end's own family or repeats Hostname is
    refused; a unit and label values are escaped; the page still parses and keeps its families."""
    hostile = [("bad name\ninjected_total", "D", "v", "count"), ("Sneaky", 'x="1"} 5\ninjected{y', "v", "count"),
               ("ts_inference_requests_total", "D", "v", "count"), ("Twice", "Hostname", "v", "count"),
               ("Numbered", 5, "v", "count"), ("NumberUnit", "D", "v", 5),
               ("Escaped", "D", 'a"b\nc\\d', "count\ninjected_unit 7")]
    with torchserve(tmp_path, {"model_store": str(store), "load_models": "hostile.mar",
                               "default_workers_per_model": "1", "disable_token_authorization": "true",
                               "metrics_mode": "prometheus", "model_metrics_auto_detect": "true"}) as urls:
        for name, dimension, value, unit in hostile:
            answer = requests.post(f"{urls['inference']}/predictions/hostile", timeout=30,
                                   json={"name": name, "dimension": dimension, "value": value, "unit": unit})
            assert answer.status_code == 200, answer.text
        text = _scrape_until(urls["metrics"], "Escaped", 1.0)
        families = {family.name: family for family in text_string_to_metric_families(text)}
        assert not any("inject" in name for name in families), sorted(families)
        assert not {"Sneaky", "Twice", "Numbered"} & set(families), sorted(families)
        assert families["NumberUnit"].documentation == "Torchserve prometheus gauge metric with unit: 5"
        escaped = families["Escaped"]
        assert escaped.documentation == "Torchserve prometheus counter metric with unit: count\ninjected_unit 7"
        assert [(s.labels["D"], s.value) for s in escaped.samples] == [('a"b\nc\\d', 1.0)]
        requests_total = [sample.labels for family in families.values() for sample in family.samples
                          if sample.name == "ts_inference_requests_total"]
        assert [labels["model_name"] for labels in requests_total] == ["hostile"]  # the front end's alone


def test_log_mode_writes_torchserves_metric_lines(store: Path, tmp_path: Path) -> None:
    output: list[str] = []
    with torchserve(tmp_path, {"model_store": str(store), "load_models": "counting.mar",
                               "default_workers_per_model": "1", "disable_token_authorization": "true"},
                    output=output) as urls:
        _predict(urls["inference"], 1)
        text = requests.get(f"{urls['metrics']}/metrics", timeout=5).text
        assert "InferenceRequestCount" not in text and "PredictionTime" not in text
        assert "ts_inference_requests_total" in text
        deadline = time.monotonic() + 10
        pattern = re.compile(r"\[METRICS\]PreprocessCallCount\.Count:1\.0\|#ModelName:counting\|#type:COUNTER"
                             r"\|#hostname:[^,]+,\d+")
        while not any(pattern.search(line) for line in output) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(pattern.search(line) for line in output), "".join(output)
        assert any("[METRICS]PredictionTime.Milliseconds:" in line for line in output)


def test_a_bad_metrics_setting_stops_the_start(store: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("model_metrics:\n  counter:\n    - unit: count\n")
    (tmp_path / "badname.yaml").write_text("model_metrics:\n  gauge:\n    - {name: 'a b', unit: ms}\n")
    for properties, message in (({"metrics_mode": "statsd"}, "metrics_mode=statsd: expected one of log"),
                                ({"metrics_mode": "prometheus", "metrics_config": str(tmp_path / "broken.yaml")},
                                 "each counter metric needs a name and a unit"),
                                ({"metrics_mode": "prometheus", "metrics_config": str(tmp_path / "badname.yaml")},
                                 "gauge metric 'a b': a metric name must match")):
        with pytest.raises(RuntimeError, match=re.escape(message)), torchserve(tmp_path, {
                "model_store": str(store), "disable_token_authorization": "true", **properties}):
            pass
