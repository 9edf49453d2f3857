"""Model control needs the token (beyond loopback it is mandatory); inference may be guarded too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT, serve
from tests.models import PYTHON_CONFIG, PYTHON_MODEL, write

TOKEN = "s3cret-token"
BODY = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write(tmp_path / "m/1/model.py", PYTHON_MODEL)
    write(tmp_path / "m/config.toml", PYTHON_CONFIG)
    return tmp_path


def test_control_endpoints_need_the_token(repo: Path) -> None:
    with serve(repo, "--model-control", "explicit", "--load-model", "m", "--auth-token", TOKEN,
               grpc=True) as server:
        base = server.base
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for method, path in (("POST", "/v2/repository/models/m/unload"), ("POST", "/v2/repository/models/m/load"),
                                 ("DELETE", "/models/m"), ("PUT", "/models/m?min_worker=2"),
                                 ("POST", "/models?url=x.mar")):
                response = requests.request(method, base + path, headers=headers, timeout=10)
                assert response.status_code == 401, (method, path, headers, response.text)
        assert TOKEN not in server.log() and "wrong" not in server.log().replace("wrong bearer", "")
        assert "refused" in server.log()
        client = triton_grpc.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException) as info:
            client.unload_model("m")
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        client.unload_model("m", headers={"authorization": f"Bearer {TOKEN}"})
        assert requests.post(f"{base}/v2/models/m/infer", json=BODY, timeout=10).status_code == 404
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.post(f"{base}/v2/repository/models/m/load", headers=good, timeout=30).status_code == 200
        assert requests.post(f"{base}/v2/models/m/infer", json=BODY, timeout=10).status_code == 200  # not guarded


def test_inference_guard(repo: Path) -> None:
    with serve(repo, "--auth-token", TOKEN, "--auth-inference", grpc=True) as server:
        url = f"{server.base}/v2/models/m/infer"
        assert requests.post(url, json=BODY, timeout=10).status_code == 401
        ok = requests.post(url, json=BODY, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert ok.status_code == 200
        client = triton_grpc.InferenceServerClient(server.grpc_url)
        tensor = triton_grpc.InferInput("x", [1], "FP64")
        tensor.set_data_from_numpy(np.array([1.0]))
        with pytest.raises(InferenceServerException) as info:
            client.infer("m", [tensor])
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        assert client.infer("m", [tensor], headers={"authorization": f"Bearer {TOKEN}"}).as_numpy("y")[0] == 12


def test_model_control_beyond_loopback_needs_a_token() -> None:
    done = subprocess.run([sys.executable, "-m", "inferd", "serve", str(ROOT / "examples/models"), "--host",
                           "0.0.0.0", "--model-control", "explicit", "--http-port", "0", "--grpc-port", "0"],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "needs --auth-token" in done.stderr
