"""`inferd serve s3://bucket/prefix` against a real S3-compatible server (moto's server mode,
started here): models served from the bucket, new and removed versions found by polling, the
cache reused across restarts, and clear errors for what a user gets wrong."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

pytest.importorskip("s3fs", reason="s3:// repositories need the s3 extra (s3fs)")
pytest.importorskip("moto.server", reason="the S3 tests run against moto's server (moto[server])")

import onnxruntime

from tests import s3
from tests.conftest import ROOT, serve

MLP = ROOT / "examples/models/mlp_onnx"
X = np.arange(16, dtype=np.float32).reshape(1, 16) / 16


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3.moto_server() as url:
        yield url


@pytest.fixture()
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    for key, value in s3.environment(endpoint).items():
        monkeypatch.setenv(key, value)
    name = f"e2e-{request.node.name.replace('_', '-')}"[:63]
    s3.client(endpoint).create_bucket(Bucket=name)
    return name


def expected() -> list[float]:
    session = onnxruntime.InferenceSession(str(MLP / "1/model.onnx"), providers=["CPUExecutionProvider"])
    return [float(v) for v in session.run(None, {"x": X})[0].ravel()]


def infer(base: str, model: str, version: str) -> requests.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X.ravel().tolist()}]}
    return requests.post(f"{base}/v2/models/{model}/versions/{version}/infer", json=body, timeout=10)


def versions(base: str) -> list[tuple[str, str, str]]:
    rows = requests.post(f"{base}/v2/repository/index", timeout=10).json()
    return sorted((r["name"], r["version"], r["state"]) for r in rows)


def wait_for(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the poll did not pick the change up"
        time.sleep(0.2)


def test_serves_a_bucket_and_polls_it(endpoint: str, bucket: str, tmp_path: Path) -> None:
    client = s3.client(endpoint)
    s3.upload(client, bucket, "repo/mlp", MLP)
    cache = tmp_path / "cache"
    args = ("--repository-cache", str(cache), "--model-control", "poll", "--poll-interval", "0.3")
    with serve(None, f"s3://{bucket}/repo", *args) as server:
        assert versions(server.base) == [("mlp", "1", "READY")]
        response = infer(server.base, "mlp", "1")
        assert response.status_code == 200, response.text
        assert np.allclose(response.json()["outputs"][0]["data"], expected(), atol=1e-5)

        client.put_object(Bucket=bucket, Key="repo/mlp/2/model.onnx", Body=(MLP / "1/model.onnx").read_bytes())
        wait_for(lambda: ("mlp", "2", "READY") in versions(server.base))
        assert infer(server.base, "mlp", "2").status_code == 200

        s3.upload(client, bucket, "repo/second", MLP)  # a new model
        wait_for(lambda: ("second", "1", "READY") in versions(server.base))

        s3.delete_prefix(client, bucket, "repo/second/")
        wait_for(lambda: all(name != "second" for name, _, _ in versions(server.base)))
        assert infer(server.base, "second", "1").status_code == 404
    assert (cache / "s3" / bucket / "repo/mlp/2/model.onnx").is_file()

    with serve(None, f"s3://{bucket}/repo", *args) as again:  # a restart reads the cache
        assert infer(again.base, "mlp", "2").status_code == 200
    assert "(0 files downloaded, 3 unchanged)" in again.log(), again.log()


def test_single_model_prefix_with_model_name(endpoint: str, bucket: str, tmp_path: Path) -> None:
    s3.upload(s3.client(endpoint), bucket, "models/resnet", MLP)  # KServe's storageUri names one model
    with serve(None, f"s3://{bucket}/models/resnet", "--model-name", "classifier",
               "--repository-cache", str(tmp_path)) as server:
        assert versions(server.base) == [("classifier", "1", "READY")]
        assert infer(server.base, "classifier", "1").status_code == 200


def start(url: str, cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    environ = {**os.environ, **env}
    for key in [k for k, v in env.items() if v == ""]:
        del environ[key]
    return subprocess.run([sys.executable, "-m", "inferd", "serve", url, "--repository-cache", str(cache),
                           "--http-port", "0", "--grpc-port", "0"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=environ)


def test_a_missing_bucket_is_a_clear_error(bucket: str, tmp_path: Path) -> None:
    done = start("s3://no-such-bucket-anywhere/repo", tmp_path)
    assert done.returncode == 2, done.stderr
    assert "s3://no-such-bucket-anywhere/repo: no such bucket" in done.stderr


def test_missing_credentials_are_a_clear_error(bucket: str, tmp_path: Path) -> None:
    done = start(f"s3://{bucket}/repo", tmp_path, AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
    assert done.returncode == 2, done.stderr
    assert "no credentials found" in done.stderr and "AWS_ACCESS_KEY_ID" in done.stderr


def test_an_unreachable_endpoint_is_a_clear_error(bucket: str, tmp_path: Path) -> None:
    from tests.conftest import free_port

    done = start(f"s3://{bucket}/repo", tmp_path, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 2, done.stderr
    assert "the storage endpoint cannot be reached" in done.stderr and "AWS_ENDPOINT_URL" in done.stderr


def test_other_schemes_name_their_extra(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    done = start("gs://some-bucket/repo", tmp_path)
    assert done.returncode == 2
    assert "gs:// repositories need the gcs (gcsfs) extra" in done.stderr
