"""Triton's --http-restricted-api and --grpc-restricted-protocol with tritonclient and plain HTTP: a
restricted API group answers only callers carrying its header (else 403 over HTTP, UNAVAILABLE over
gRPC, in Triton's words), the other groups answer everyone, and bad flags stop the server at start."""

from __future__ import annotations

import queue
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import ROOT, RunningServer, serve

INFER = {"infer-key": "infer-value"}  # passed as copies: tritonclient adds its own headers to the dict
ADMIN = {"admin-key": "admin-value"}
GRPC_INFER = {"triton-grpc-protocol-infer-key": "infer-value"}
GRPC_ADMIN = {"triton-grpc-protocol-admin-key": "admin-value"}
RESTRICTIONS = ("--http-restricted-api", "model-repository:admin-key=admin-value",
                "--http-restricted-api", "inference,metadata:infer-key=infer-value",
                "--grpc-restricted-protocol", "model-repository:admin-key=admin-value",
                "--grpc-restricted-protocol", "inference,health:infer-key=infer-value")


@pytest.fixture(scope="module", params=["inferd", "grpcio"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("restricted")
    models.write(root / "double/1/model.py", models.PYTHON_MODEL)
    models.write(root / "double/config.toml", models.PYTHON_CONFIG)
    with serve(root, "--grpc-server", request.param, *RESTRICTIONS, grpc=True) as running:
        yield running


def _http_inputs() -> list[httpclient.InferInput]:
    x = httpclient.InferInput("x", [2], "FP64")
    x.set_data_from_numpy(np.array([1.0, 2.0]))
    return [x]


def _grpc_inputs() -> list[grpcclient.InferInput]:
    x = grpcclient.InferInput("x", [2], "FP64")
    x.set_data_from_numpy(np.array([1.0, 2.0]))
    return [x]


def test_http_restricted_groups_answer_only_their_header(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException, match="This API is restricted, expecting header 'infer-key'") as e:
        client.get_server_metadata()
    assert e.value.status() == "403"
    assert client.get_server_metadata(headers={**INFER})["name"] == "inferd"
    with pytest.raises(InferenceServerException, match="expecting header 'infer-key'"):
        client.infer("double", _http_inputs(), headers={"infer-key": "wrong-value"})
    answer = client.infer("double", _http_inputs(), headers={**INFER})
    assert answer.as_numpy("y").tolist() == [12.0, 14.0]
    # the header of another group opens nothing here; the right one lets the request reach model control
    with pytest.raises(InferenceServerException, match="expecting header 'admin-key'"):
        client.unload_model("double", headers={**INFER})
    with pytest.raises(InferenceServerException, match="explicit model load / unload is not allowed"):
        client.unload_model("double", headers={**ADMIN})
    # groups not named stay open
    assert client.is_server_live() and client.is_model_ready("double")
    assert client.get_inference_statistics("double")["model_stats"][0]["name"] == "double"


def test_http_refusal_is_triton_json_403_before_the_body(server: RunningServer) -> None:
    request = urllib.request.Request(f"{server.base}/v2/models/double/infer", data=b"not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 403
    assert raised.value.read() == b'{"error":"This API is restricted, expecting header \'infer-key\'"}'


def test_grpc_restricted_methods_answer_only_their_metadata(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    expected = "This protocol is restricted, expecting header 'triton-grpc-protocol-infer-key'"
    with pytest.raises(InferenceServerException, match=expected) as raised:
        client.is_server_live()
    assert raised.value.status() == "StatusCode.UNAVAILABLE"
    assert client.is_server_live(headers={**GRPC_INFER})
    with pytest.raises(InferenceServerException, match=expected):
        client.infer("double", _grpc_inputs(), headers={**INFER})  # the key without Triton's prefix is not it
    assert client.infer("double", _grpc_inputs(), headers={**GRPC_INFER}).as_numpy("y").tolist() == [12.0, 14.0]
    with pytest.raises(InferenceServerException, match="triton-grpc-protocol-admin-key"):
        client.unload_model("double", headers={**GRPC_INFER})
    with pytest.raises(InferenceServerException, match="explicit model load / unload is not allowed"):
        client.unload_model("double", headers={**GRPC_ADMIN})
    assert client.get_server_metadata().name == "inferd"  # metadata is not restricted over gRPC here
    assert client.get_inference_statistics("double").model_stats[0].name == "double"


def test_grpc_restricted_stream_ends_as_it_opens(server: RunningServer) -> None:
    """Triton checks a ModelStreamInfer stream's metadata when it opens: without it the stream ends
    with UNAVAILABLE before the client sends anything."""
    answers: queue.Queue[object] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(lambda result, error: answers.put(error if error is not None else result))
    error = answers.get(timeout=10)
    assert isinstance(error, InferenceServerException) and "This protocol is restricted" in str(error)
    client.stop_stream()
    client.start_stream(lambda result, error: answers.put(error if error is not None else result),
                        headers={**GRPC_INFER})
    client.async_stream_infer("double", _grpc_inputs())
    result = answers.get(timeout=10)
    assert not isinstance(result, InferenceServerException), result
    assert result.as_numpy("y").tolist() == [12.0, 14.0]  # type: ignore[attr-defined]
    client.stop_stream()


@pytest.mark.parametrize(("flags", "says"), [
    (["--http-restricted-api", "model-repository,health:k1=v1", "--http-restricted-api", "metadata,health:k2=v2"],
     "restricted api 'health' can not be specified in multiple config groups"),
    (["--grpc-restricted-protocol", "model-reposit,health:k1=v1"], "unknown restricted protocol 'model-reposit'"),
    (["--http-restricted-api", "health"], "--http-restricted-api option format is '<apis>:<key>=<value>'"),
])
def test_bad_restrictions_stop_the_server(tmp_path: Path, flags: list[str], says: str) -> None:
    done = subprocess.run([sys.executable, "-m", "inferd", "serve", str(tmp_path), "--http-port", "0",
                           "--grpc-port", "0", *flags], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert says in done.stderr
