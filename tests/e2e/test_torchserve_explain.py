"""TorchServe's explanations (``/explanations``, KServe's ``:explain`` and ``/explain`` on the
inference address) and customized describe (``GET /models/{m}?customized=true``), with archives from
the real torch-model-archiver, served by ``inferd serve`` and ``inferd torchserve``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from inferd.protocols._proto import torchserve_pb2 as ts
from tests import ts_archives
from tests.conftest import RunningServer, serve
from tests.e2e.test_torchserve_cli import torchserve

MANAGEMENT = "/org.pytorch.serve.grpc.management.ManagementAPIsService/"
VALUES = [1.0, -2.0, 0.5, 3.0]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ts_archives.build_explain_store(tmp_path_factory.mktemp("ts"))


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[RunningServer]:
    with serve(None, "--model-store", str(store), "--models", "explainer.mar", "doubler.mar", "cls=classifier.mar",
               "stateful_describer.mar",
               "--model-control", "explicit", grpc=True) as running:
        yield running


def explain_urls(base: str, model: str) -> list[str]:
    return [f"{base}/explanations/{model}", f"{base}/explanations/{model}/1.0", f"{base}/v1/models/{model}:explain",
            f"{base}/v2/models/{model}/explain"]


def test_every_explain_route_answers_the_handlers_explain_handle(server: RunningServer, store: Path) -> None:
    work = store.parent / "work"
    for target in (0, 2):
        body = {"values": VALUES, "target": target}
        expected = ts_archives.doubler_attributions(work, VALUES, target)
        for url in explain_urls(server.base, "explainer"):
            response = requests.post(url, json=body, timeout=30)
            assert response.status_code == 200, (url, response.text)
            answer = response.json()
            assert answer["explain"] == "True" and answer["target"] == target, url
            np.testing.assert_allclose(answer["attributions"], expected, rtol=1e-5, atol=1e-6)
    # the same request to /predictions predicts, and the handler sees TorchServe's explain: False
    response = requests.post(f"{server.base}/predictions/explainer", json={"values": VALUES, "target": 2}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["explain"] == "False"
    np.testing.assert_allclose(response.json()["scores"], ts_archives.doubler_in_process(work, [VALUES])[0], rtol=1e-5)


def test_a_clients_explain_header_does_not_make_a_prediction_explain(server: RunningServer) -> None:
    response = requests.post(f"{server.base}/predictions/explainer", json={"values": VALUES},
                             headers={"Explain": "True"}, timeout=30)
    assert response.status_code == 200, response.text
    assert "scores" in response.json() and response.json()["explain"] == "False"


def test_explanations_and_predictions_batched_together_are_each_answered_as_asked(server: RunningServer,
                                                                                  store: Path) -> None:
    """The archive batches up to 4 requests: explanations and predictions that queue behind a slow
    request share the batcher's batches, and each still gets its own kind's answer."""
    work = store.parent / "work"
    expected_scores = ts_archives.doubler_in_process(work, [VALUES])[0]
    expected_attributions = ts_archives.doubler_attributions(work, VALUES, 1)

    def call(i: int) -> tuple[int, dict]:
        path = "explanations" if i % 2 else "predictions"
        response = requests.post(f"{server.base}/{path}/explainer", json={"values": VALUES, "target": 1}, timeout=30)
        assert response.status_code == 200, response.text
        return i, response.json()

    with ThreadPoolExecutor(9) as pool:
        slow = pool.submit(requests.post, f"{server.base}/predictions/explainer",
                           json={"values": VALUES, "sleep": 1.0}, timeout=30)
        time.sleep(0.3)  # the slow request holds the one worker: the next ones queue, and batch
        answers = list(pool.map(call, range(8)))
        assert slow.result().status_code == 200
    for i, answer in answers:
        if i % 2:
            assert answer["explain"] == "True"
            np.testing.assert_allclose(answer["attributions"], expected_attributions, rtol=1e-5, atol=1e-6)
        else:
            assert answer["explain"] == "False"
            np.testing.assert_allclose(answer["scores"], expected_scores, rtol=1e-5)
    assert max(answer["n"] for _, answer in answers) > 1  # the batcher did batch them


def test_a_handler_without_explain_handle_fails_as_torchserves_worker_does(server: RunningServer) -> None:
    """BaseHandler's explain_handle calls get_insights, which a plain BaseHandler subclass lacks:
    TorchServe's worker answers 503 (its handler raised); inferd's message says what is missing."""
    response = requests.post(f"{server.base}/explanations/doubler", json={"values": VALUES}, timeout=30)
    assert response.status_code == 503, response.text
    assert response.json()["type"] == "InternalServerException"
    assert "neither explain_handle nor get_insights" in response.json()["message"]
    assert requests.post(f"{server.base}/predictions/doubler", json={"values": VALUES}, timeout=30).status_code == 200


def test_the_image_classifier_explains_with_captum_or_says_it_needs_it(server: RunningServer) -> None:
    """With captum (the suite installs it): one attribution per input value of the preprocessed
    image; without it, a 503 that names the package."""
    pytest.importorskip("PIL")
    image = ts_archives.image_bytes("JPEG", (64, 64), seed=1)
    response = requests.post(f"{server.base}/explanations/cls", data=image, timeout=60)
    try:
        import captum  # noqa: F401
    except ImportError:
        assert response.status_code == 503, response.text
        assert "need captum" in response.json()["message"]
        return
    assert response.status_code == 200, response.text
    attributions = np.asarray(response.json())
    assert attributions.shape == (3, 224, 224) and np.isfinite(attributions).all() and attributions.any()


def test_bad_explanations_are_refused_clearly(server: RunningServer) -> None:
    base = server.base
    response = requests.post(f"{base}/explanations/explainer", data=b"not json", timeout=30)
    assert response.status_code == 503 and "JSONDecodeError" in response.json()["message"], response.text
    response = requests.post(f"{base}/explanations/nope", json={"values": VALUES}, timeout=30)
    assert (response.status_code, response.json()["type"]) == (404, "ModelNotFoundException")
    response = requests.post(f"{base}/v2/models/nope/explain", json={"values": VALUES}, timeout=30)
    assert response.json()["message"] == "Model not found: nope"
    response = requests.post(f"{base}/explanations/explainer/9.0", json={"values": VALUES}, timeout=30)
    assert (response.status_code, response.json()["type"]) == (404, "ModelVersionNotFoundException")
    response = requests.post(f"{base}/explanations", json={"values": VALUES}, timeout=30)
    assert (response.status_code, response.json()["type"]) == (404, "ResourceNotFoundException")


def test_customized_describe_answers_describe_handle(server: RunningServer) -> None:
    base = server.base
    plain = requests.get(f"{base}/models/explainer", timeout=30).json()
    assert "customizedMetadata" not in plain[0]
    response = requests.get(f"{base}/models/explainer?customized=true", timeout=30)
    assert response.status_code == 200, response.text
    described = response.json()
    assert described[0]["customizedMetadata"] == {"handler": "ExplainingHandler", "inputs": 4,
                                                  "explains": "input x gradient"}
    assert {k: v for k, v in described[0].items() if k not in ("customizedMetadata", "workers")} == \
        {k: v for k, v in plain[0].items() if k != "workers"}
    versioned = requests.get(f"{base}/models/explainer/1.0?customized=TRUE", timeout=30).json()
    assert versioned[0]["customizedMetadata"] == described[0]["customizedMetadata"]
    for url in (f"{base}/models/explainer/all?customized=true", f"{base}/models/explainer?customized=yes",
                f"{base}/models/doubler?customized=true"):  # all, not Java's true, describe_handle answering None
        response = requests.get(url, timeout=30)
        assert response.status_code == 200 and "customizedMetadata" not in response.json()[0], url


def test_customized_describe_of_a_stateful_model(server: RunningServer) -> None:
    """A stateful model's describe is a sequence of its own (no sequence id is needed for it)."""
    base = server.base
    headers = {"ts_request_sequence_id": "s1", "ts_request_sequence_start": "true"}
    first = requests.post(f"{base}/predictions/stateful_describer", data=b"one", headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    described = requests.get(f"{base}/models/stateful_describer?customized=true", timeout=30)
    assert described.status_code == 200, described.text
    assert described.json()[0]["customizedMetadata"] == {"stateful": True}
    following = requests.post(f"{base}/predictions/stateful_describer", data=b"two",
                              headers={"ts_request_sequence_id": "s1"}, timeout=30)
    assert following.json() == {"echo": "two", "sequence": "s1"}


def test_customized_describe_over_grpc(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary(MANAGEMENT + "DescribeModel", request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=ts.ManagementResponse.FromString)
        customized = json.loads(call(ts.DescribeModelRequest(model_name="explainer", customized=True), timeout=30).msg)
        plain = json.loads(call(ts.DescribeModelRequest(model_name="explainer"), timeout=30).msg)
    assert customized[0]["customizedMetadata"]["handler"] == "ExplainingHandler"
    assert "customizedMetadata" not in plain[0]


def test_customized_describe_of_a_model_without_workers_is_torchserves_503(server: RunningServer) -> None:
    base = server.base
    response = requests.put(f"{base}/models/doubler?min_worker=0&synchronous=true", timeout=60)
    assert response.status_code == 200, response.text
    try:
        response = requests.get(f"{base}/models/doubler?customized=true", timeout=30)
        assert response.status_code == 503, response.text
        assert response.json() == {"code": 503, "type": "ServiceUnavailableException", "message":
                                   'Model "doubler" has no worker to serve describe request. Please use scale '
                                   "workers API to add workers."}
        assert requests.get(f"{base}/models/doubler", timeout=30).status_code == 200
        with grpc.insecure_channel(server.grpc_url) as channel:
            call = channel.unary_unary(MANAGEMENT + "DescribeModel", request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=ts.ManagementResponse.FromString)
            with pytest.raises(grpc.RpcError) as raised:
                call(ts.DescribeModelRequest(model_name="doubler", customized=True), timeout=30)
        assert raised.value.code() == grpc.StatusCode.INTERNAL
        assert "has no worker to serve describe request" in (raised.value.details() or "")
    finally:
        requests.put(f"{base}/models/doubler?min_worker=1&synchronous=true", timeout=60)


def test_inferd_torchserve_serves_explanations_and_customized_describe(store: Path, tmp_path: Path) -> None:
    """``inferd torchserve``: the explain routes on the inference address, customized describe on
    the management address, and KServe's explain only where TorchServe has it."""
    with torchserve(tmp_path, {"model_store": str(store), "load_models": "explainer.mar",
                               "default_workers_per_model": "1", "disable_token_authorization": "true"}) as urls:
        inference, management = urls["inference"], urls["management"]
        expected = ts_archives.doubler_attributions(store.parent / "work", VALUES, 0)
        for url in explain_urls(inference, "explainer"):
            response = requests.post(url, json={"values": VALUES}, timeout=30)
            assert response.status_code == 200, (url, response.text)
            np.testing.assert_allclose(response.json()["attributions"], expected, rtol=1e-5, atol=1e-6)
        assert requests.post(f"{management}/explanations/explainer", json={"values": VALUES},
                             timeout=30).status_code == 404
        described = requests.get(f"{management}/models/explainer?customized=true", timeout=30).json()
        assert described[0]["customizedMetadata"]["handler"] == "ExplainingHandler"
