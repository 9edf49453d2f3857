"""TorchServe's management API semantics against a real `inferd serve`: registration with 0
workers, scaling to and from zero (synchronous or not), TorchServe's tolerance for bad numbers,
its status codes, nothing half-registered, model-config.yaml, and describe showing real workers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests import ts_archives
from tests.conftest import RunningServer, serve

X = [[0.5] * 6]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = ts_archives.build_store(tmp_path_factory.mktemp("ts"))
    ts_archives.build_yaml_archive(store)
    return store


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[RunningServer]:
    with serve(None, "--model-store", str(store), "--model-control", "explicit") as running:
        yield running


def post(server: RunningServer, query: str) -> requests.Response:
    return requests.post(f"{server.base}/models?{query}", timeout=120)


def put(server: RunningServer, path: str) -> requests.Response:
    return requests.put(f"{server.base}/models/{path}", timeout=120)


def describe(server: RunningServer, path: str) -> dict:
    response = requests.get(f"{server.base}/models/{path}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()[0]


def predict(server: RunningServer, model: str) -> requests.Response:
    return requests.post(f"{server.base}/predictions/{model}", json=X, timeout=30)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_register_with_zero_workers_then_scale_up_and_to_zero(server: RunningServer) -> None:
    response = post(server, "url=ts_mlp.mar&model_name=zero")
    assert response.status_code == 200
    assert response.json()["status"] == ('Model "zero" Version: 1.0 registered with 0 initial workers. '
                                         "Use scale workers API to add workers for the model.")
    described = describe(server, "zero")
    assert described["workers"] == [] and described["minWorkers"] == 0
    assert predict(server, "zero").status_code == 503

    response = put(server, "zero?min_worker=1")  # synchronous=false is the default
    assert response.status_code == 202
    assert response.json()["status"] == "Processing worker updates..."
    response = put(server, "zero?min_worker=2&synchronous=true")
    assert response.status_code == 200
    assert response.json()["status"] == "Workers scaled to 2 for model: zero"
    workers = describe(server, "zero")["workers"]
    pids = [w["pid"] for w in workers]
    assert len(workers) == 2 and len(set(pids)) == 2 and server.process.pid not in pids
    assert all(alive(pid) and w["status"] == "READY" for pid, w in zip(pids, workers, strict=True))
    assert predict(server, "zero").status_code == 200

    response = put(server, "zero/1.0?min_worker=0&synchronous=true")
    assert response.status_code == 200
    assert response.json()["status"] == "Workers scaled to 0 for model: zero, version: 1.0"
    assert describe(server, "zero")["workers"] == []
    assert predict(server, "zero").status_code == 503
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)
    assert requests.delete(f"{server.base}/models/zero", timeout=30).status_code == 200


def test_scaling_refusals_in_torchserve_codes(server: RunningServer) -> None:
    assert post(server, "url=ts_mlp.mar&model_name=scaled&initial_workers=1").status_code == 200
    refused = put(server, "scaled?min_worker=2&max_worker=1")
    assert refused.status_code == 400
    assert refused.json()["message"] == "max_worker cannot be less than min_worker."
    assert put(server, "scaled?max_worker=-1").status_code == 400  # min_worker defaults to 1
    assert put(server, "scaled/0.0?min_worker=1&synchronous=true").status_code == 404
    assert put(server, "nosuchmodel?min_worker=1").status_code == 404
    assert put(server, "scaled?min_worker=-1").status_code == 500  # TorchServe fails it inside: a 500
    for query in ("min_worker=nan&synchronous=nan", "number_gpu=10", "timeout=-1", ""):
        assert put(server, f"scaled?{query}").status_code == 202, query
    assert requests.delete(f"{server.base}/models/scaled", timeout=30).status_code == 200


def test_registration_tolerance_and_status_codes(server: RunningServer) -> None:
    for query, batch, delay, workers in (("batch_size=dd&initial_workers=1", 1, 100, 1),
                                         ("batch_size=2&initial_workers=1&max_batch_delay=junk", 2, 100, 1),
                                         ("initial_workers=-1", 1, 100, 0),
                                         ("synchronous=-1", 1, 100, 0)):
        response = post(server, f"url=ts_mlp.mar&model_name=tolerant&{query}")
        assert response.status_code == 200, (query, response.text)
        described = describe(server, "tolerant")
        assert (described["batchSize"], described["maxBatchDelay"], len(described["workers"])) == (batch, delay,
                                                                                                   workers), query
        assert requests.delete(f"{server.base}/models/tolerant", timeout=30).status_code == 200

    assert post(server, "url=ts_mlp.mar&model_name=twice").status_code == 200
    response = post(server, "url=ts_mlp.mar&model_name=twice")
    assert response.status_code == 409
    assert response.json()["message"] == "Model version 1.0 is already registered for model twice"
    assert requests.delete(f"{server.base}/models/twice", timeout=30).status_code == 200
    assert requests.delete(f"{server.base}/models/twice", timeout=30).status_code == 404


@pytest.mark.parametrize("query", ["runtime=python4", "handler=invalidHandler&initial_workers=1",
                                   "startup_timeout=0&initial_workers=1"])
def test_failed_registrations_leave_nothing_registered(server: RunningServer, query: str) -> None:
    response = post(server, f"url=doubler.mar&model_name=broken&{query}")
    assert response.status_code == (400 if "runtime" in query else 500), response.text
    assert requests.get(f"{server.base}/models/broken", timeout=10).status_code == 404
    assert "broken" not in [m["modelName"] for m in requests.get(f"{server.base}/models", timeout=10).json()["models"]]


def test_invalid_handler_fails_when_workers_start(server: RunningServer) -> None:
    """With 0 workers TorchServe registers without loading; the handler fails when workers start."""
    assert post(server, "url=doubler.mar&model_name=later&handler=invalidHandler").status_code == 200
    response = put(server, "later?min_worker=1&synchronous=true")
    assert response.status_code == 500
    assert "invalidHandler" in response.json()["message"]
    assert requests.delete(f"{server.base}/models/later", timeout=30).status_code == 200


def test_handler_override_is_honoured(server: RunningServer) -> None:
    """The image classifier archive registered with handler=base_handler takes JSON tensors instead."""
    response = post(server, "url=classifier.mar&model_name=overridden&handler=base_handler&initial_workers=1")
    assert response.status_code == 200, response.text
    answer = requests.post(f"{server.base}/predictions/overridden", json=[[[0.0] * 32] * 32] * 3, timeout=30)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()) == 10  # the raw scores, not the top-5 labels
    assert requests.delete(f"{server.base}/models/overridden", timeout=30).status_code == 200


def test_model_config_yaml_inside_the_archive(server: RunningServer) -> None:
    response = post(server, "url=yaml_model.mar")  # no initial_workers: the yaml's minWorkers start
    assert response.status_code == 200, response.text
    assert response.json()["status"] == 'Model "yaml_model" Version: 1.0 registered with 2 initial workers'
    described = describe(server, "yaml_model")
    assert (described["minWorkers"], described["maxWorkers"], described["batchSize"], described["maxBatchDelay"],
            described["responseTimeout"]) == (2, 3, 4, 7, 33)
    assert len(described["workers"]) == 2
    answer = requests.post(f"{server.base}/predictions/yaml_model", data=b"x", headers={"X-Trace": "abc"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"greeting": "hello from yaml", "header": "abc", "url_path": "", "batch": 4}
    # TorchServe hands the path's segments after the version to the handler as its url_path header
    for path in ("v1/chat/completion", "v1/completion"):
        answer = requests.post(f"{server.base}/predictions/yaml_model/1.0/{path}", data=b"x", timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["url_path"] == path
    teapot = requests.post(f"{server.base}/predictions/yaml_model", data=b"teapot", timeout=30)
    assert teapot.status_code == 418
    oom = requests.post(f"{server.base}/predictions/yaml_model", data=b"oom", timeout=60)
    assert oom.status_code == 507, oom.text  # TorchServe's answer to a handler out of memory
    assert oom.json()["type"] == "InternalServerException"
    assert requests.delete(f"{server.base}/models/yaml_model", timeout=30).status_code == 200


def test_list_pages_as_torchserve(server: RunningServer) -> None:
    for name in ("page_a", "page_b"):
        assert post(server, f"url=ts_mlp.mar&model_name={name}").status_code == 200
    first = requests.get(f"{server.base}/models?limit=1", timeout=10).json()
    assert first == {"nextPageToken": "1", "models": [{"modelName": "page_a", "modelUrl": "ts_mlp.mar"}]}
    second = requests.get(f"{server.base}/models?limit=1&next_page_token=1", timeout=10).json()
    assert [m["modelName"] for m in second["models"]] == ["page_b"]
    for query in ("limit=-1", "limit=1&next_page_token=-1", "next_page_token=12", "limit=&next_page_token="):
        assert requests.get(f"{server.base}/models?{query}", timeout=10).status_code == 200, query
    for name in ("page_a", "page_b"):
        assert requests.delete(f"{server.base}/models/{name}/", timeout=30).status_code == 200


@pytest.mark.parametrize("url", ["ts_mlp%00.mar", "ts%0Amlp.mar", "%00"])
def test_a_url_with_control_characters_is_a_400_naming_it(server: RunningServer, url: str) -> None:
    response = post(server, f"url={url}&model_name=ctl")
    assert response.status_code == 400, response.text
    assert "no control characters" in response.json()["message"]
    assert requests.get(f"{server.base}/models/ctl", timeout=10).status_code == 404
