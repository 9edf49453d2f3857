"""Operability flags against a real `inferd serve`: 500s logged with their traceback, --access-log,
--log-format json, a line per model load with its time, --strict-readiness, --exit-on-error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, free_port, serve

FAILING = '''
import numpy as np

class Model:
    def load(self):
        pass

    def infer(self, inputs):
        if float(inputs["x"][0]) == 666:
            raise ValueError("the model refuses 666")
        return {"y": np.asarray(inputs["x"], dtype=np.float32)}
'''

CONFIG = '''backend = "python"
[instance_group]
kind = "cpu"
[[input]]
name = "x"
datatype = "FP32"
shape = [-1]
[[output]]
name = "y"
datatype = "FP32"
shape = [-1]
'''


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    (tmp_path / "repo/good/1").mkdir(parents=True)
    (tmp_path / "repo/good/1/model.py").write_text(FAILING)
    (tmp_path / "repo/good/config.toml").write_text(CONFIG)
    return tmp_path / "repo"


def body(value: float) -> dict:
    return {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [value]}]}


def test_json_logs_access_log_500_tracebacks_and_load_times(repo: Path) -> None:
    with serve(repo, "--access-log", "--log-format", "json") as server:
        infer = f"{server.base}/v2/models/good/infer"
        assert requests.post(infer, json=body(1), timeout=30).status_code == 200
        response = requests.post(infer, json=body(666), timeout=30)
        assert response.status_code == 500 and "refuses 666" in response.json()["error"]
        assert requests.get(f"{server.base}/v2/models/nope", timeout=10).status_code == 404
        server.process.terminate()
        server.process.wait(20)
    entries = [json.loads(line) for line in server.lines if line.startswith("{")]
    assert entries and all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    loads = [e for e in entries if e["logger"] == "inferd.repository" and "ready in" in e["message"]]
    assert loads and "model good version 1 ready in " in loads[0]["message"]
    failures = [e for e in entries if "answered 500" in e["message"]]
    assert len(failures) == 1 and "ValueError: the model refuses 666" in failures[0]["traceback"]
    access = [e["message"] for e in entries if e["logger"] == "inferd.access"]
    assert any(line.startswith("POST /v2/models/good/infer 200 ") for line in access)
    assert any(line.startswith("POST /v2/models/good/infer 500 ") for line in access)
    assert any(line.startswith("GET /v2/models/nope 404 ") for line in access)


def test_strict_readiness_and_exit_on_error(repo: Path) -> None:
    (repo / "broken/1").mkdir(parents=True)
    (repo / "broken/1/model.onnx").write_bytes(b"not onnx")
    with serve(repo) as lenient:  # Triton's default: ready once every model was tried
        assert requests.get(f"{lenient.base}/v2/health/ready", timeout=10).status_code == 200
        assert "access" not in lenient.log()
    with serve(repo, "--strict-readiness") as strict:
        assert requests.get(f"{strict.base}/v2/health/ready", timeout=10).status_code != 200
        assert requests.get(f"{strict.base}/v2/health/live", timeout=10).status_code == 200
    with serve(repo, "--strict-readiness=false", "--exit-on-error", "false") as spelled:  # Triton's spelling
        assert requests.get(f"{spelled.base}/v2/health/ready", timeout=10).status_code == 200
    done = subprocess.run([sys.executable, "-m", "inferd", "serve", str(repo), "--http-port", str(free_port()),
                           "--grpc-port", "0", "--exit-on-error"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 1, done.stderr
    assert "--exit-on-error: model broken version 1 is UNAVAILABLE" in done.stderr
    assert "inferd ready" not in done.stdout
