"""Triton's trace extension with tritonclient against `inferd serve`: the settings read and changed
(global and per model, HTTP and gRPC), bad values refused, and the trace file a traced request
leaves (Triton's JSON: its model, its timestamps in order), with rate, count and log_frequency."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import ROOT, RunningServer, serve

HTTP_STAMPS = ["HTTP_RECV_START", "HTTP_RECV_END", "REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_END",
               "REQUEST_END", "HTTP_SEND_START", "HTTP_SEND_END"]
GRPC_STAMPS = ["GRPC_WAITREAD_START", "GRPC_WAITREAD_END", *HTTP_STAMPS[2:7], "GRPC_SEND_START", "GRPC_SEND_END"]


def _repository(root: Path, *names: str) -> Path:
    for name in names:
        models.write(root / f"repo/{name}/1/model.py", models.PYTHON_MODEL)
        models.write(root / f"repo/{name}/config.toml", models.PYTHON_CONFIG)
    return root / "repo"


def _settings(file: Path, **changed: Any) -> dict[str, Any]:
    return {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1", "log_frequency": "0",
            "trace_file": str(file), "trace_mode": "triton", **changed}


def _grpc_settings(client: grpcclient.InferenceServerClient, model: str | None = None,
                   changes: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A gRPC TraceSetting answer in the HTTP answer's shape (one value: a string)."""
    if changes is None:
        answer = client.get_trace_settings(model_name=model, headers=headers, as_json=True)
    else:
        answer = client.update_trace_settings(model_name=model, settings=changes, headers=headers, as_json=True)
    return {key: value["value"] if key == "trace_level" else value["value"][0]
            for key, value in answer["settings"].items()}


def _infer_http(client: httpclient.InferenceServerClient, model: str, request_id: str = "") -> None:
    x = httpclient.InferInput("x", [3], "FP64")
    x.set_data_from_numpy(np.arange(3.0))
    assert client.infer(model, [x], request_id=request_id).as_numpy("y").tolist() == [10.0, 12.0, 14.0]


def _infer_grpc(client: grpcclient.InferenceServerClient, model: str, request_id: str = "") -> None:
    x = grpcclient.InferInput("x", [3], "FP64")
    x.set_data_from_numpy(np.arange(3.0))
    assert client.infer(model, [x], request_id=request_id).as_numpy("y").tolist() == [10.0, 12.0, 14.0]


def _traces(path: Path) -> dict[int, dict[str, Any]]:
    """A trace file's traces by id: the head (model, version, request id) and its stamps in file order."""
    traces: dict[int, dict[str, Any]] = {}
    for entry in json.loads(path.read_text()):
        trace = traces.setdefault(entry["id"], {"stamps": []})
        if "timestamps" in entry:
            trace["stamps"] += [(stamp["name"], stamp["ns"]) for stamp in entry["timestamps"]]
        else:
            trace.update(entry)
    return traces


def _wait_for(path: Path, server: RunningServer) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was never written:\n{server.log()}"
        time.sleep(0.05)
    time.sleep(0.1)  # written on the tracer's thread: let it finish the file


def test_trace_settings_global_and_per_model(tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    with serve(_repository(tmp_path, "double"), "--trace-config", f"triton,file={file}", grpc=True) as server:
        http = httpclient.InferenceServerClient(server.url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        assert "trace" in http.get_server_metadata()["extensions"]
        assert http.get_trace_settings() == _settings(file)
        assert _grpc_settings(grpc, "double") == _settings(file)  # no settings of its own: the global ones

        # a model's own value overrides the global one; the others still follow the global settings
        assert http.update_trace_settings("double", {"trace_rate": "2"}) == _settings(file, trace_rate="2")
        assert _grpc_settings(grpc, None, {"trace_level": ["TIMESTAMPS"], "trace_count": "5"}) == _settings(
            file, trace_level=["TIMESTAMPS"], trace_count="5")
        assert http.get_trace_settings("double") == _settings(file, trace_level=["TIMESTAMPS"], trace_count="5",
                                                              trace_rate="2")
        # cleared (null over HTTP, an empty list over gRPC): the global value again
        assert _grpc_settings(grpc, "double", {"trace_rate": None}) == _settings(
            file, trace_level=["TIMESTAMPS"], trace_count="5")
        assert http.update_trace_settings(None, {"trace_level": None, "trace_count": None}) == _settings(file)
        assert http.get_trace_settings("double") == _settings(file)


@pytest.mark.parametrize(("bad", "says"), [
    ({"trace_rate": "often"}, "Unable to parse 'trace_rate', got: often"),
    ({"trace_rate": "-1"}, r"Unable to parse 'trace_rate', value is out of range \[ 0, 4294967295 \], got: -1"),
    ({"trace_count": "-2"}, "Unable to parse 'trace_count'. Expecting value >= -1, got: -2"),
    ({"log_frequency": "1.5"}, "Unable to parse 'log_frequency', got: 1.5"),
    ({"trace_level": ["OFF", "TIMESTAMPS"]}, "Expect only one trace level 'OFF' is specified"),
    ({"trace_level": ["LOUD"]}, "trace_level must be OFF, TIMESTAMPS or TENSORS, got 'LOUD'"),
    ({"trace_file": "/tmp/elsewhere.json"}, "trace file location can not be updated through network protocol"),
    ({"trace_colour": "red"}, "unknown trace setting 'trace_colour'"),
    ({"trace_level": ["TIMESTAMPS"], "trace_rate": "0"},
     "Attempting to set invalid trace setting :sample rate must be non-zero"),
])
def test_bad_trace_settings_are_refused(tmp_path: Path, bad: dict[str, Any], says: str) -> None:
    file = tmp_path / "trace.json"
    with serve(_repository(tmp_path, "double"), "--trace-config", f"triton,file={file}", grpc=True) as server:
        http = httpclient.InferenceServerClient(server.url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException, match=says) as raised:
            http.update_trace_settings("double", bad)
        assert raised.value.status() == "400"
        with pytest.raises(InferenceServerException, match=says) as raised:
            grpc.update_trace_settings(settings=bad)
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert http.get_trace_settings("double") == http.get_trace_settings() == _settings(file)  # nothing changed
        with pytest.raises(InferenceServerException, match="Request for unknown model : nope"):
            http.get_trace_settings("nope")
        with pytest.raises(InferenceServerException, match="Request for unknown model : nope"):
            grpc.update_trace_settings("nope", {"trace_rate": "1"})


def test_traced_requests_in_the_trace_file(tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    with serve(_repository(tmp_path, "double", "other"), "--trace-config", f"triton,file={file}",
               "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1", grpc=True) as server:
        http = httpclient.InferenceServerClient(server.url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        _infer_http(http, "double", "over-http")
        _infer_grpc(grpc, "double", "over-grpc")
        time.sleep(0.2)
        assert not file.exists()  # log_frequency 0: kept until the setting changes or the server stops
        # tracing off globally but on for one model: only that model's requests are traced
        http.update_trace_settings(None, {"trace_level": ["OFF"]})
        _wait_for(file, server)  # the setting that traced them wrote what it kept (as Triton's does)
        http.update_trace_settings("other", {"trace_level": ["TIMESTAMPS"]})
        _infer_http(http, "double", "not-traced")
        _infer_http(http, "other", "other-traced")
    traces = list(_traces(file).values())  # the file is whole once the server stopped: a JSON array
    assert [(t["model_name"], t["model_version"], t["request_id"]) for t in traces] == [
        ("double", 1, "over-http"), ("double", 1, "over-grpc"), ("other", 1, "other-traced")]
    for trace, expected in zip(traces, (HTTP_STAMPS, GRPC_STAMPS, HTTP_STAMPS), strict=True):
        names = [name for name, _ in trace["stamps"]]
        assert names == expected  # every point of the path, in the order the request passed them
        times = [ns for _, ns in trace["stamps"]]
        assert times == sorted(times) and times[-1] - times[0] < 10e9


def test_tensors_level_writes_the_tensors_as_triton_does(tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    with serve(_repository(tmp_path, "double"), "--trace-config", f"triton,file={file}", "--trace-config",
               "level=TIMESTAMPS", "--trace-config", "level=TENSORS", "--trace-config", "rate=1", grpc=True) as server:
        http = httpclient.InferenceServerClient(server.url)
        assert http.get_trace_settings()["trace_level"] == ["TIMESTAMPS", "TENSORS"]
        _infer_http(http, "double", "with-tensors")
        http.update_trace_settings(None, {"trace_level": ["TENSORS"]})  # tensors without timestamps
        _infer_grpc(grpcclient.InferenceServerClient(server.grpc_url), "double", "tensors-only")
    entries = json.loads(file.read_text())
    first = [e for e in entries if e["id"] == 1]
    kinds = [e.get("activity") or (e["timestamps"][0]["name"] if "timestamps" in e else "head") for e in first]
    assert kinds == ["head", *HTTP_STAMPS[:4], "TENSOR_QUEUE_INPUT", *HTTP_STAMPS[4:6], "TENSOR_BACKEND_OUTPUT",
                     "TENSOR_BACKEND_OUTPUT", *HTTP_STAMPS[6:]]
    tensors = [e["tensor"] for e in first if "tensor" in e]
    assert tensors == [{"name": "x", "data": "0,1,2", "shape": "3", "dtype": "FP64"},
                       {"name": "y", "data": "10,12,14", "shape": "3", "dtype": "FP64"},
                       {"name": "n", "data": "3", "shape": "1", "dtype": "INT32"}]
    second = [e for e in entries if e["id"] == 2]
    assert [e.get("activity", "head") for e in second] == ["head", "TENSOR_QUEUE_INPUT", "TENSOR_BACKEND_OUTPUT",
                                                           "TENSOR_BACKEND_OUTPUT"]
    assert second[0]["request_id"] == "tensors-only"


def test_rate_count_and_rolled_files(tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    # Triton's older flags too: --trace-file, --trace-level, --trace-rate, --trace-count
    with serve(_repository(tmp_path, "double"), "--trace-file", str(file), "--trace-level", "TIMESTAMPS",
               "--trace-rate", "2", "--trace-count", "3", "--trace-config", "triton,log-frequency=2") as server:
        http = httpclient.InferenceServerClient(server.url)
        for n in range(1, 11):
            _infer_http(http, "double", f"request-{n}")
        _wait_for(Path(f"{file}.1"), server)
        # every 2nd request traced, 3 of them: two in the first rolled file, the last once the count ran out
        first, second = _traces(Path(f"{file}.0")), _traces(Path(f"{file}.1"))
        assert [t["request_id"] for t in first.values()] == ["request-2", "request-4"]
        assert [t["request_id"] for t in second.values()] == ["request-6"]
        assert http.get_trace_settings()["trace_count"] == "0"  # what is left of it
        # a new count starts tracing again; the rolled files go on from .2
        http.update_trace_settings(None, {"trace_count": "2", "trace_rate": "1"})
        _infer_http(http, "double", "request-11")
        _infer_http(http, "double", "request-12")
        _wait_for(Path(f"{file}.2"), server)
        assert [t["request_id"] for t in _traces(Path(f"{file}.2")).values()] == ["request-11", "request-12"]
    assert not file.exists()  # everything went to rolled files


def test_tracing_with_workers_is_refused(tmp_path: Path) -> None:
    repository = _repository(tmp_path, "double")
    started = subprocess.run([sys.executable, "-m", "inferd", "serve", str(repository), "--workers", "2",
                              "--trace-config", "level=TIMESTAMPS", "--trace-config", f"triton,file={tmp_path}/t"],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert started.returncode == 2
    assert "--trace-config level=TIMESTAMPS is not supported with --workers" in started.stderr
    with serve(repository, "--workers", "1", "--trace-config", f"triton,file={tmp_path}/t") as server:
        http = httpclient.InferenceServerClient(server.url)
        assert http.get_trace_settings()["trace_level"] == ["OFF"]
        with pytest.raises(InferenceServerException, match="tracing is not supported with --workers") as raised:
            http.update_trace_settings(None, {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
        assert raised.value.status() == "400"


@pytest.mark.parametrize(("flags", "says"), [
    (["--trace-config", "level=TIMESTAMPS"], "needs a file to write the traces to"),
    (["--trace-config", "opentelemetry,url=localhost:4318"], "OpenTelemetry export is not supported"),
    (["--trace-config", "triton,colour=red"], "expected [triton,]SETTING=VALUE"),
    (["--trace-config", "rate=often"], "rate must be an integer, got 'often'"),
    (["--trace-level", "LOUD", "--trace-file", "/tmp/t"], "trace_level must be OFF, TIMESTAMPS or TENSORS"),
])
def test_bad_trace_flags_stop_the_start(tmp_path: Path, flags: list[str], says: str) -> None:
    started = subprocess.run([sys.executable, "-m", "inferd", "serve", str(tmp_path), *flags],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert started.returncode == 2
    assert says in started.stderr


def test_trace_settings_are_behind_the_inference_token(tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    with serve(_repository(tmp_path, "double"), "--auth-token", "s3cret", "--auth-inference",
               "--trace-config", f"triton,file={file}", grpc=True) as server:
        http = httpclient.InferenceServerClient(server.url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException) as raised:
            http.update_trace_settings(None, {"trace_rate": "1"})
        assert raised.value.status() == "401"
        with pytest.raises(InferenceServerException) as raised:
            grpc.get_trace_settings()
        assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
        token = {"authorization": "Bearer s3cret"}
        assert http.update_trace_settings(None, {"trace_rate": "1"}, headers=token)["trace_rate"] == "1"
        assert _grpc_settings(grpc, headers=token)["trace_rate"] == "1"
