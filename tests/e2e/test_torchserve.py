"""The TorchServe drop-in: archives from the real torch-model-archiver, served over /predictions,
and TorchServe's management API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from tests import ts_archives
from tests.conftest import RunningServer, serve


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ts_archives.build_store(tmp_path_factory.mktemp("ts"))


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    ts_archives.copy_into_repository(store, repo)
    with serve(repo, "--model-store", str(store), "--models", "ts_mlp.mar", "doubler.mar",
               "cls=classifier.mar", "--model-control", "explicit", "--load-model", "*") as running:
        yield running


def predict(server: RunningServer, model: str, **kwargs) -> requests.Response:
    return requests.post(f"{server.base}/predictions/{model}", timeout=30, **kwargs)


def test_ping(server: RunningServer) -> None:
    response = requests.get(f"{server.base}/ping", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "Healthy"}


def test_torchscript_archive_with_the_builtin_handler(server: RunningServer) -> None:
    x = np.random.default_rng(1).standard_normal((1, 6)).astype(np.float32)
    with torch.inference_mode():
        expected = ts_archives.Mlp().eval()(torch.from_numpy(x)).tolist()
    for model in ("ts_mlp", "repo_mlp"):  # from the model store, and as <model>/1/model.mar
        response = predict(server, model, json=x.tolist())
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json(), expected, rtol=1e-5, atol=1e-6)


def test_eager_archive_with_a_custom_handler_importing_ts(server: RunningServer, store: Path) -> None:
    response = predict(server, "doubler", json={"values": [1.0, 2.0, 3.0, 4.0]})
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = ts_archives.doubler_in_process(store.parent / "work", [[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_allclose(answer["scores"], expected[0], rtol=1e-5)
    assert answer["n"] == 1


@pytest.mark.parametrize(("kind", "size"), [("JPEG", (320, 240)), ("PNG", (200, 300))])
def test_image_classification_raw_and_multipart(server: RunningServer, kind: str, size: tuple) -> None:
    image = ts_archives.image_bytes(kind, size, seed=len(kind))
    expected = ts_archives.classify_in_process(image)
    raw = predict(server, "cls", data=image, headers={"Content-Type": f"image/{kind.lower()}"})
    form = predict(server, "cls", files={"data": (f"x.{kind.lower()}", image)})
    for response in (raw, form):
        assert response.status_code == 200, response.text
        answer = response.json()
        assert list(answer) == list(expected)  # the same top-5 labels, in order
        np.testing.assert_allclose(list(answer.values()), list(expected.values()), rtol=1e-4, atol=1e-6)


def test_not_an_image_is_a_clear_400(server: RunningServer) -> None:
    response = predict(server, "cls", data=b"definitely not a jpeg")
    assert response.status_code == 400
    assert response.json()["type"] == "BadRequestException"
    assert "not an image" in response.json()["message"]


def test_unknown_model_in_torchserve_error_shape(server: RunningServer) -> None:
    response = predict(server, "nope", data=b"x")
    assert response.status_code == 404
    assert response.json()["code"] == 404
    assert response.json()["type"] == "ModelNotFoundException"


def test_handler_models_are_reachable_over_v2_too(server: RunningServer) -> None:
    body = {"inputs": [{"name": "body", "shape": [1], "datatype": "BYTES", "data": ["[[1,2,3,4,5,6]]"]},
                       {"name": "content_type", "shape": [1], "datatype": "BYTES", "data": ["application/json"]}]}
    response = requests.post(f"{server.base}/v2/models/ts_mlp/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    output = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert len(json.loads(output["output"][0])[0]) == 2


def test_list_and_describe(server: RunningServer) -> None:
    models = requests.get(f"{server.base}/models", timeout=5).json()["models"]
    assert {"ts_mlp", "doubler", "cls", "repo_mlp"} <= {m["modelName"] for m in models}
    described = requests.get(f"{server.base}/models/doubler", timeout=5).json()
    assert described[0]["modelName"] == "doubler"
    assert described[0]["modelVersion"] == "1.0"
    assert described[0]["minWorkers"] == 1
    assert described[0]["workers"][0]["status"] == "READY"


def test_register_versions_default_and_unregister(server: RunningServer) -> None:
    base = server.base
    response = requests.post(f"{base}/models?url=ts_mlp_v2.mar&model_name=ts_mlp&initial_workers=2"
                             "&batch_size=4&max_batch_delay=20", timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == 'Model "ts_mlp" Version: 2.0 registered with 2 initial workers'
    versions = {d["modelVersion"]: d for d in requests.get(f"{base}/models/ts_mlp/all", timeout=5).json()}
    assert set(versions) == {"1.0", "2.0"}
    assert versions["2.0"]["batchSize"] == 4 and versions["2.0"]["minWorkers"] == 2
    assert versions["2.0"]["maxBatchDelay"] == 20
    assert versions["1.0"]["isDefault"] and not versions["2.0"]["isDefault"]  # the first registered, as TorchServe
    assert [d["modelVersion"] for d in requests.get(f"{base}/models/ts_mlp", timeout=5).json()] == ["1.0"]
    x = [[0.5] * 6]
    assert predict(server, "ts_mlp/2.0", json=x).status_code == 200
    response = requests.put(f"{base}/models/ts_mlp/2.0/set-default", timeout=5)
    assert response.json()["status"] == 'Default version successfully updated for model "ts_mlp" to "2.0"'
    assert requests.get(f"{base}/models/ts_mlp/2.0", timeout=5).json()[0]["isDefault"]
    assert requests.put(f"{base}/models/ts_mlp/1.0/set-default", timeout=5).status_code == 200
    # TorchServe's ModelManager: no version means the default one, which cannot go while 2.0 remains
    for path in ("ts_mlp", "ts_mlp/1.0"):
        response = requests.delete(f"{base}/models/{path}", timeout=10)
        assert response.status_code == 403, response.text
        assert response.json() == {"code": 403, "type": "InvalidModelVersionException",
                                   "message": "Cannot remove default version for model ts_mlp"}
    response = requests.delete(f"{base}/models/ts_mlp/9.9", timeout=10)
    assert response.status_code == 404
    assert response.json()["type"] == "ModelVersionNotFoundException"
    assert response.json()["message"] == "Model version: 9.9 does not exist for model: ts_mlp"
    assert {d["modelVersion"] for d in requests.get(f"{base}/models/ts_mlp/all", timeout=5).json()} == {"1.0", "2.0"}
    response = requests.delete(f"{base}/models/ts_mlp/2.0", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": 'Model "ts_mlp" unregistered'}
    assert predict(server, "ts_mlp/2.0", json=x).status_code == 404
    assert predict(server, "ts_mlp", json=x).status_code == 200


def test_refusals(server: RunningServer) -> None:
    """inferd serve downloads nothing (no allowed_urls); the rest as TorchServe answers."""
    base = server.base
    for url, status, message in (("https://example.com/evil.mar", 404, "does not match any allowed URL"),
                                 ("../ts/store/ts_mlp.mar", 404, "leaves the model store"),
                                 ("/etc/passwd", 404, "leaves the model store"),
                                 ("missing.mar", 404, "not in the model store"),
                                 ("", 404, "empty url")):
        response = requests.post(f"{base}/models?url={url}", timeout=10)
        assert response.status_code == status, (url, response.text)
        assert message in response.json()["message"]
    response = requests.post(f"{base}/models", timeout=10)
    assert response.status_code == 400
    assert response.json()["message"] == "Parameter url is required."
    response = requests.put(f"{base}/models/doubler?min_worker=2&max_worker=1", timeout=5)
    assert response.status_code == 400


def test_scaling_workers_under_load_fails_no_request(server: RunningServer) -> None:
    base = server.base
    body = json.dumps({"values": [1.0, 2.0, 3.0, 4.0]})
    stop = False

    def client() -> list[int]:
        codes = []
        with requests.Session() as session:
            while not stop:
                codes.append(session.post(f"{base}/predictions/doubler", data=body, timeout=30).status_code)
        return codes

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client) for _ in range(8)]
        for workers in (3, 1, 4, 2, 1):
            response = requests.put(f"{base}/models/doubler?min_worker={workers}&synchronous=true", timeout=30)
            assert response.json()["status"] == f"Workers scaled to {workers} for model: doubler"
            described = requests.get(f"{base}/models/doubler", timeout=5).json()[0]
            assert described["minWorkers"] == workers
            time.sleep(0.5)  # instance processes start and retire while the load goes on
        stop = True
        codes = [code for future in futures for code in future.result()]
    assert len(codes) > 50
    assert set(codes) == {200}


def test_batching_applies_to_handler_models(server: RunningServer) -> None:
    """repo_mlp has max_batch_size 4 with dynamic batching: concurrent requests share executions."""
    x = [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: predict(server, "repo_mlp", json=x).status_code, range(64)))
    assert set(codes) == {200}
    metrics = requests.get(f"{server.base}/metrics", timeout=5).text
    count = sum(float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith("inferd_batch_size_count") and 'model="repo_mlp"' in line)
    assert count < 64


def test_management_is_refused_without_model_control(store: Path) -> None:
    with serve(None, "--model-store", str(store), "--models", "all") as running:
        assert requests.get(f"{running.base}/models", timeout=5).status_code == 200
        response = requests.post(f"{running.base}/models?url=ts_mlp.mar", timeout=10)
        assert response.status_code == 403
        assert "--model-control explicit" in response.json()["message"]
        assert requests.delete(f"{running.base}/models/ts_mlp", timeout=10).status_code == 403
        assert predict(running, "ts_mlp", json=[[1.0] * 6]).status_code == 200


def test_a_handler_that_raises_answers_503_as_torchserve(server: RunningServer) -> None:
    """TorchServe's worker answers a raising handler with 503 (clients retry on it); inferd keeps
    its message, which names the model and what it raised. The v2 API keeps its 500."""
    response = predict(server, "doubler", data=b"not json")
    assert response.status_code == 503, response.text
    answer = response.json()
    assert answer["code"] == 503 and answer["type"] == "InternalServerException"
    assert answer["message"].startswith("model 'doubler' failed: JSONDecodeError: ")
    body = {"inputs": [{"name": "body", "shape": [1], "datatype": "BYTES", "data": ["not json"]},
                       {"name": "content_type", "shape": [1], "datatype": "BYTES", "data": ["application/json"]}]}
    assert requests.post(f"{server.base}/v2/models/doubler/infer", json=body, timeout=30).status_code == 500


def test_unknown_paths_and_methods_in_torchserve_words(server: RunningServer) -> None:
    base = server.base
    not_found = {"code": 404, "type": "ResourceNotFoundException",
                 "message": "Requested resource is not found, please refer to API document."}
    # (/predictions/{m}/{v}/more is a prediction: TorchServe hands "more" to the handler as url_path)
    for path in ("/predictions", "/models/doubler/1.0/x/y", "/ping/x"):
        response = requests.post(f"{base}{path}", timeout=5)
        assert (response.status_code, response.json()) == (404, not_found), path
    response = requests.post(f"{base}/models/doubler/1.0/set-default", timeout=5)
    assert response.status_code == 405
    assert response.json() == {"code": 405, "type": "MethodNotAllowedException",
                               "message": "Requested method is not allowed, please refer to API document."}
    # TorchServe checks no method on /ping and /predictions
    assert requests.post(f"{base}/ping", timeout=5).json() == {"status": "Healthy"}
    body = json.dumps({"values": [1.0, 2.0, 3.0, 4.0]})
    for method, path in (("GET", "doubler"), ("PUT", "doubler/1.0"), ("DELETE", "doubler")):
        response = requests.request(method, f"{base}/predictions/{path}", data=body, timeout=30)
        assert response.status_code == 200, (method, response.text)
    # the v2 (KServe) addresses on the same port keep inferd's shape
    assert set(requests.get(f"{base}/nope", timeout=5).json()) == {"error"}
    response = requests.get(f"{base}/v2/models/doubler/infer", timeout=5)
    assert response.status_code == 405 and set(response.json()) == {"error"}


def test_torchserve_exception_types(server: RunningServer) -> None:
    base = server.base
    response = predict(server, "ts_mlp/9.0", json=[[0.5] * 6])
    assert response.status_code == 404
    assert response.json() == {"code": 404, "type": "ModelVersionNotFoundException",
                               "message": "Model version: 9.0 does not exist for model: ts_mlp"}
    response = predict(server, "nope/1.0", data=b"x")
    assert response.json() == {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: nope"}
    assert predict(server, "nope", data=b"x").json()["message"] == "Model not found: nope"
    response = requests.put(f"{base}/models/ts_mlp/9.0/set-default", timeout=5)
    assert response.status_code == 404
    assert response.json() == {"code": 404, "type": "ModelVersionNotFoundException",
                               "message": "Model version 9.0 does not exist for model ts_mlp"}
    response = requests.put(f"{base}/models/nope/1.0/set-default", timeout=5)
    assert response.json() == {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: nope"}
    response = requests.post(f"{base}/models?url=doubler.mar", timeout=60)
    assert response.status_code == 409, response.text
    assert response.json()["type"] == "ConflictStatusException"


def test_ping_while_not_healthy_is_a_500(tmp_path: Path) -> None:
    (tmp_path / "broken/1").mkdir(parents=True)
    (tmp_path / "broken/1/model.onnx").write_bytes(b"not onnx")
    with serve(tmp_path, "--strict-readiness") as running:
        response = requests.get(f"{running.base}/ping", timeout=10)
        assert response.status_code == 500  # TorchServe's InferenceRequestHandler
        assert response.json() == {"status": "Unhealthy"}
