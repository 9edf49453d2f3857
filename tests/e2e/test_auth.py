"""Model control needs the token (beyond loopback it is mandatory); inference may be guarded too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
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


def test_auth_inference_guards_metadata_index_status_and_metrics_but_not_health(repo: Path) -> None:
    with serve(repo, "--auth-token", TOKEN, "--auth-inference", grpc=True) as server:
        good = {"Authorization": f"Bearer {TOKEN}"}
        guarded = [("GET", "/v2"), ("GET", "/v2/models/m"), ("GET", "/v2/models/m/ready"),
                   ("GET", "/v2/models/m/versions/1"), ("POST", "/v2/repository/index"),
                   ("GET", "/v1/models/m"), ("GET", "/v1/models/m/metadata"), ("GET", "/models"),
                   ("GET", "/models/m"), ("GET", "/metrics")]
        for method, path in guarded:
            refused = requests.request(method, server.base + path, timeout=10)
            assert refused.status_code == 401, (path, refused.text)
            assert TOKEN not in refused.text and str(repo) not in refused.text
            assert requests.request(method, server.base + path, headers=good, timeout=10).status_code == 200, path
        for path in ("/v2/health/live", "/v2/health/ready", "/ping"):
            assert requests.get(server.base + path, timeout=10).status_code == 200, path
        client = triton_grpc.InferenceServerClient(server.grpc_url)
        assert client.is_server_live() and client.is_server_ready()
        for call in (lambda **kw: client.get_model_metadata("m", **kw), lambda **kw: client.get_server_metadata(**kw),
                     lambda **kw: client.get_model_repository_index(**kw)):
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == "StatusCode.UNAUTHENTICATED"
            call(headers={"authorization": f"Bearer {TOKEN}"})
        with pytest.raises(InferenceServerException) as info:
            client.is_model_ready("m")
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))
        with pytest.raises(grpc.RpcError) as stream_error:  # a stream without the token ends with the status
            list(stub.ModelStreamInfer(iter([service_pb2.ModelInferRequest(model_name="m")]), timeout=10))
        assert stream_error.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_an_unguarded_inference_body_is_not_read_before_the_token_check(repo: Path) -> None:
    import socket

    with serve(repo, "--auth-token", TOKEN, "--auth-inference") as server:
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
            sock.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50000000\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            answer = sock.recv(4096)  # no body sent: the refusal cannot have waited for it
        assert answer.startswith(b"HTTP/1.1 401 "), answer


@pytest.mark.parametrize("token", [(), ("--auth-token", "")], ids=["no token", "empty token"])
def test_without_a_token_only_loopback_pages_may_change_what_is_served(repo: Path, token: tuple[str, ...]) -> None:
    with serve(repo, "--model-control", "explicit", "--load-model", "m", *token) as server:
        unload = f"{server.base}/v2/repository/models/m/unload"
        empty_bearer = requests.post(unload, timeout=10, headers={"Host": "evil.example:8000",
                                                                  "Origin": "https://evil.example",
                                                                  "Authorization": "Bearer"})
        assert empty_bearer.status_code == 403, empty_bearer.text
        cross_site = requests.post(unload, data="x", timeout=10,
                                   headers={"Origin": "https://evil.example", "Content-Type": "text/plain"})
        assert cross_site.status_code == 403 and "Origin" in cross_site.json()["error"]
        rebound = requests.post(unload, timeout=10, headers={"Host": "evil.example:8000"})
        assert rebound.status_code == 403 and "Host" in rebound.json()["error"]
        deleted = requests.delete(f"{server.base}/models/m", timeout=10, headers={"Origin": "null"})
        assert deleted.status_code == 403
        assert requests.post(f"{server.base}/v2/models/m/infer", json=BODY, timeout=10).status_code == 200
        local = requests.post(unload, timeout=10, headers={"Origin": f"http://localhost:{server.http_port}"})
        assert local.status_code == 200
        assert requests.post(f"{server.base}/v2/models/m/infer", json=BODY, timeout=10).status_code == 404
