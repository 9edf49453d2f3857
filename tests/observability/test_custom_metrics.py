"""Metrics models define themselves, as /metrics shows them: Prometheus text under the model's own
names, changes from several instances added up, and changes that contradict a family refused."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from inferd.observability.custom_metrics import CustomMetrics
from inferd.observability.metrics import Metrics

LABELS = (("model", 'a "quoted"\\name\n'),)


def _lines(metrics: CustomMetrics) -> list[str]:
    return metrics.exposition().decode().splitlines()


def test_changes_add_up_and_parse_as_prometheus_text() -> None:
    metrics = CustomMetrics()
    for op, value in (("create", 0), ("increment", 2), ("increment", 3)):  # e.g. from two instances
        metrics.apply("jobs", "jobs done\nso far", "counter", LABELS, op, value, ())
    metrics.apply("level", "the level", "gauge", (), "set", 1.5, ())
    metrics.apply("level", "the level", "gauge", (), "increment", -0.5, ())
    for value in (0.5, 2.0, 20.0):
        metrics.apply("spread", "values", "histogram", (), "observe", value, (10.0, 1.0))
    metrics.apply("nan", "not a number", "gauge", (), "set", math.nan, ())
    lines = _lines(metrics)
    assert lines[:3] == ["# HELP jobs jobs done\\nso far", "# TYPE jobs counter",
                         'jobs{model="a \\"quoted\\"\\\\name\\n"} 5']
    assert "level 1" in lines and "nan NaN" in lines
    histogram = [line for line in lines if line.startswith("spread_")]
    assert histogram == ['spread_bucket{le="1"} 1', 'spread_bucket{le="10"} 2', 'spread_bucket{le="+Inf"} 3',
                         "spread_sum 22.5", "spread_count 3"]
    parsed = {family.name: family for family in text_string_to_metric_families("\n".join(lines) + "\n")}
    assert parsed["jobs"].samples[0].labels == {"model": 'a "quoted"\\name\n'}  # escaped as Prometheus reads it


def test_a_change_contradicting_its_family_is_refused_and_the_rest_shown() -> None:
    metrics = CustomMetrics()
    metrics.apply("jobs", "jobs", "counter", (), "increment", 1, ())
    metrics.apply("jobs", "jobs", "gauge", (), "set", 100, ())  # another model says gauge
    metrics.apply("inferd_requests", "mine", "counter", (), "increment", 1, ())  # the server's own name
    metrics.apply("bad name", "x", "counter", (), "increment", 1, ())
    metrics.apply("labelled", "x", "counter", (("le", "1"),), "increment", 1, ())  # le is the histogram's
    metrics.apply("inf", "x", "counter", (), "increment", math.inf, ())
    assert _lines(metrics) == ["# HELP jobs jobs", "# TYPE jobs counter", "jobs 1"]


def test_the_servers_exposition_ends_with_the_models_metrics() -> None:
    metrics = Metrics()
    assert metrics.exposition().count(b"# TYPE jobs") == 0
    metrics.custom.apply("jobs", "jobs", "counter", (), "create", 0, ())
    text = metrics.exposition().decode()
    assert "inferd_requests_total" not in text.split("# TYPE jobs counter")[1]
    assert text.endswith("# TYPE jobs counter\njobs 0\n")


def test_a_series_goes_when_every_instance_that_created_it_is_gone() -> None:
    metrics = CustomMetrics()
    for _ in range(2):  # two instances hold the same series
        metrics.apply("jobs", "jobs", "counter", LABELS, "hold", 0, ())
    metrics.apply("jobs", "jobs", "counter", (), "hold", 0, ())
    metrics.apply("jobs", "jobs", "counter", (), "create", 0, ())  # created where no instance holds it
    metrics.apply("jobs", "jobs", "counter", LABELS, "increment", 4, ())
    metrics.apply("jobs", "jobs", "counter", LABELS, "drop", 0, ())
    assert 'jobs{model="a \\"quoted\\"\\\\name\\n"} 4' in _lines(metrics)  # one instance still holds it
    metrics.apply("jobs", "jobs", "counter", LABELS, "drop", 0, ())
    assert _lines(metrics) == ["# HELP jobs jobs", "# TYPE jobs counter", "jobs 0"]
    metrics.apply("jobs", "jobs", "counter", (), "drop", 0, ())
    assert metrics.exposition() == b""  # no series left: the family goes too
    metrics.apply("jobs", "now a gauge", "gauge", (), "hold", 0, ())  # a model loaded again may change it
    assert _lines(metrics) == ["# HELP jobs now a gauge", "# TYPE jobs gauge", "jobs 0"]
