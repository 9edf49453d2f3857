"""The tracer without a server: settings over settings, sampling, and what reaches the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inferd.observability.tracing import RequestTrace, Tracer, TraceValues, parse_changes, tensor_text


def _traced(tracer: Tracer, model: str, n: int) -> list[RequestTrace]:
    """``n`` requests of ``model`` through the tracer: the traces it took, each run to its end."""
    taken = []
    for i in range(n):
        trace = tracer.sample(model)
        if trace is not None:
            trace.handled("1", f"r{i}", 1.0, 2.0, 0.5, 0.25, 3.0)
            trace.finish()
            taken.append(trace)
    return taken


def test_a_model_value_overrides_the_global_one_until_cleared(tmp_path: Path) -> None:
    tracer = Tracer(TraceValues(file=str(tmp_path / "t.json")))
    assert not tracer.active
    tracer.update("m", {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
    assert tracer.active and tracer.settings()["trace_level"] == ["OFF"]
    assert [t.model for t in _traced(tracer, "m", 2)] == ["m", "m"]
    assert _traced(tracer, "other", 5) == []  # global: off
    tracer.update("m", {"trace_level": None, "trace_rate": None})
    assert not tracer.active and tracer.settings("m") == tracer.settings()


def test_rate_and_count_decide_which_requests(tmp_path: Path) -> None:
    file = tmp_path / "t.json"
    tracer = Tracer(TraceValues(("TIMESTAMPS",), rate=3, count=2, file=str(file)))
    assert [t.request_id for t in _traced(tracer, "m", 20)] == ["r2", "r5"]
    assert tracer.settings()["trace_count"] == "0"
    tracer.close()
    rolled = json.loads(Path(f"{file}.0").read_text())  # count ran out: Triton writes a rolled file
    assert [e["request_id"] for e in rolled if "request_id" in e] == ["r2", "r5"]
    assert not file.exists()


def test_timestamps_are_placed_from_the_data_plane_and_written_in_order(tmp_path: Path) -> None:
    file = tmp_path / "t.json"
    tracer = Tracer(TraceValues(("TIMESTAMPS",), rate=1, file=str(file)))
    trace = tracer.sample("m")
    assert trace is not None
    trace.stamp("HTTP_RECV_START", 0.5)
    trace.handled("2", "", 1.0, 1.5, 0.25, 0.5, 3.0)
    trace.finish()
    tracer.close()
    entries = json.loads(file.read_text())
    assert entries[0] == {"id": 1, "model_name": "m", "model_version": 2}  # no request id: none written
    assert [(e["timestamps"][0]["name"], e["timestamps"][0]["ns"]) for e in entries[1:]] == [
        ("HTTP_RECV_START", 500_000_000), ("REQUEST_START", 1_000_000_000), ("QUEUE_START", 1_500_000_000),
        ("COMPUTE_START", 1_750_000_000), ("COMPUTE_END", 2_250_000_000), ("REQUEST_END", 3_000_000_000)]


def test_a_trace_that_ends_after_the_stop_never_rewrites_the_file(tmp_path: Path) -> None:
    file = tmp_path / "t.json"
    tracer = Tracer(TraceValues(("TIMESTAMPS",), rate=1, file=str(file)))
    late = tracer.sample("m")
    _traced(tracer, "m", 1)
    tracer.close()
    assert late is not None
    late.handled("1", "late", 1.0, 1.0, 0.0, 0.0, 1.0)
    late.finish()
    tracer.close()
    assert [e.get("request_id") for e in json.loads(file.read_text()) if "model_name" in e] == ["r0"]


@pytest.mark.parametrize(("changes", "says"), [
    ({"trace_level": 5}, "trace_level must be a list of levels"),
    ({"trace_rate": True}, "Unable to parse 'trace_rate'"),
    ({"log_frequency": "4294967296"}, "out of range"),
])
def test_malformed_values_are_refused(changes: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_changes(changes)


def test_a_refusing_tracer_still_reads_and_never_turns_on(tmp_path: Path) -> None:
    tracer = Tracer(TraceValues(file=str(tmp_path / "t")), refusal="not here")
    with pytest.raises(ValueError, match="not here"):
        tracer.update(None, {"trace_level": ["TIMESTAMPS"]})
    assert tracer.update(None, {"trace_rate": "5"})["trace_rate"] == "5"  # what does not turn it on is kept
    assert not tracer.active


@pytest.mark.parametrize(("datatype", "data", "text"), [
    ("FP32", np.array([[0.1, 2.0], [1e-7, 123456789.0]], np.float32), "0.1,2,1e-07,1.23457e+08"),
    ("INT64", np.array([-3, 4], np.int64), "-3,4"),
    ("UINT8", np.array([200], np.uint8), "200"),
    ("BOOL", np.array([True, False]), "1,0"),
    ("BYTES", np.array([b"a b", "c"], dtype=object), '"a b","c"'),
    ("FP16", np.array([1.5], np.float16), ""),
])
def test_tensors_are_written_as_tritons_trace_writes_them(datatype: str, data: np.ndarray, text: str) -> None:
    assert tensor_text(datatype, data) == text
