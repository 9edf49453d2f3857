"""TorchServe's stateful models (model-config.yaml ``sequenceBatching: true``) against real servers:
``maxNumSequence`` and ``maxSequenceJobQueueSize`` refuse as TorchServe's Model.addJobInGroup does
(REST 503 ServiceUnavailableException, gRPC INTERNAL with its "has no worker" words), the sequence
travels in the headers config.properties' ``ts_header_key_sequence_*`` name (pytorch/serve 62c4d6a1,
ConfigManager), describe answers the sequence settings, and a ``model.mar`` in an `inferd serve`
model repository is stateful too."""

from __future__ import annotations

import json
import shutil
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import requests

from inferd.protocols._proto import torchserve_pb2 as ts
from tests import ts_archives
from tests.conftest import serve
from tests.e2e.test_torchserve_cli import INFERENCE, MANAGEMENT, _grpc_call, torchserve
from tests.e2e.test_torchserve_grpc import _status, _stream2
from tests.e2e.test_torchserve_workflows import build_war

HEADERS = {"ts_header_key_sequence_id": "x-seq-id", "ts_header_key_sequence_start": "x-seq-start",
           "ts_header_key_sequence_end": "x-seq-end"}
NO_WORKER = ('Model "limited" has no worker to serve inference request. Please use scale workers API to add '
             "workers. If this is a sequence inference, please check if it is closed, or expired; or exceeds "
             "maxSequenceJobQueueSize")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ts_archives.build_sequence_store(tmp_path_factory.mktemp("tsseq"))


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`inferd torchserve` with the sequence headers renamed in config.properties (and, as TorchServe's
    handlers need, the TS_REQUEST_SEQUENCE_* variables its Context reads set to match)."""
    environ = {"TS_REQUEST_SEQUENCE_ID": "x-seq-id", "TS_REQUEST_SEQUENCE_START": "x-seq-start",
               "TS_REQUEST_SEQUENCE_END": "x-seq-end"}
    workflows = tmp_path_factory.mktemp("tsseq-workflows")
    build_war(workflows, "summing", "models:\n  sum:\n    url: sequences.mar\ndag:\n  sum: []\n")
    with torchserve(tmp_path_factory.mktemp("tsseq-server"), {
            "model_store": str(store), "load_models": "limited.mar,sequences.mar", "default_workers_per_model": "1",
            "disable_token_authorization": "true", "enable_model_api": "true", "workflow_store": str(workflows),
            **HEADERS}, environ=environ) as urls:
        yield urls


def _post(url: str, body: str, **headers: str) -> requests.Response:
    return requests.post(url, data=body, headers=headers, timeout=60)


def test_a_sequences_requests_beyond_max_sequence_job_queue_size_are_refused(server: dict[str, str]) -> None:
    """maxSequenceJobQueueSize 1: with one request of the sequence running and one waiting, the
    next is refused at once (503); once they are answered the sequence takes requests again."""
    url = f"{server['inference']}/predictions/limited"
    answers: dict[str, requests.Response] = {}

    def send(body: str) -> None:
        answers[body] = _post(url, body, **{"x-seq-id": "p"})

    running = threading.Thread(target=send, args=("sleep:5",))
    running.start()
    time.sleep(1.5)  # generous: on a busy machine the second must be waiting before the third comes
    waiting = threading.Thread(target=send, args=("second",))
    waiting.start()
    time.sleep(1.5)
    refused = _post(url, "third", **{"x-seq-id": "p"})
    assert refused.status_code == 503, refused.text
    assert running.is_alive(), "refused, but not at once: it waited for the first request's answer"
    assert refused.json()["type"] == "ServiceUnavailableException"
    assert "maxSequenceJobQueueSize" in refused.json()["message"], refused.text
    running.join()
    waiting.join()
    assert [(answers[b].status_code, answers[b].text) for b in ("sleep:5", "second")] == [
        (200, "sleep:5"), (200, "second")]
    last = _post(url, "fourth", **{"x-seq-id": "p", "x-seq-end": "true"})
    assert (last.status_code, last.text) == (200, "fourth")


def test_a_sequence_beyond_max_num_sequence_is_refused_until_one_ends(server: dict[str, str]) -> None:
    """maxNumSequence 2: a third sequence is refused over REST (503) and gRPC (INTERNAL, TorchServe's
    words), a request naming its sequence in ``ts_request_sequence_id`` (not this server's header)
    is a new sequence and refused too, and one ending (``x-seq-end``, also as a StreamPredictions2
    input) makes room."""
    url = f"{server['inference']}/predictions/limited"
    assert [_post(url, "hi", **{"x-seq-id": key}).status_code for key in ("u", "v")] == [200, 200]
    refused = _post(url, "hi", **{"x-seq-id": "w"})
    assert (refused.status_code, refused.json()["type"]) == (503, "ServiceUnavailableException"), refused.text
    assert "maxNumSequence" in refused.json()["message"], refused.text
    assert _post(url, "hi", ts_request_sequence_id="u").status_code == 503
    with pytest.raises(grpc.RpcError) as raised:
        _grpc_call(server["grpc_inference"], INFERENCE + "Predictions",
                   ts.PredictionsRequest(model_name="limited", input={"data": b"hi"}), ts.PredictionResponse)
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.INTERNAL, NO_WORKER)
    [full] = _stream2(server["grpc_inference"], [ts.PredictionsRequest(
        model_name="limited", sequence_id="w", input={"data": b"hi"})])
    assert _status(full) == (grpc.StatusCode.INTERNAL, NO_WORKER, "InternalServerException.()")
    ended, admitted = _stream2(server["grpc_inference"], [
        ts.PredictionsRequest(model_name="limited", sequence_id="u", input={"data": b"bye", "x-seq-end": b"true"}),
        ts.PredictionsRequest(model_name="limited", sequence_id="w", input={"data": b"hello"})])
    assert (ended.prediction, admitted.prediction) == (b"bye", b"hello")
    for key in ("v", "w"):
        assert _post(url, "bye", **{"x-seq-id": key, "x-seq-end": "true"}).status_code == 200


def test_the_sequence_travels_in_the_configured_headers(server: dict[str, str]) -> None:
    """``x-seq-id`` names the sequence (its requests find their sum, on one worker); a request
    without it starts one, ``ts-seq-<uuid>``, with ``x-seq-start: true``; ``x-seq-end`` ends it."""
    url = f"{server['inference']}/predictions/sequences"
    sums = [_post(url, str(value), **{"x-seq-id": "k"}).json() for value in (1, 2)]
    last = _post(url, "3", **{"x-seq-id": "k", "x-seq-end": "true"}).json()
    assert [(s["sequence_id"], s["sum"]) for s in (*sums, last)] == [("k", 1), ("k", 3), ("k", 6)]
    assert last["end"] == "true" and len({s["worker"] for s in (*sums, last)}) == 1
    alone = _post(url, "5").json()
    assert alone["sequence_id"].startswith("ts-seq-") and (alone["start"], alone["sum"]) == ("true", 5)


@pytest.fixture(scope="module")
def summing(server: dict[str, str]) -> str:
    """The ``summing`` workflow (its one node the stateful ``sequences``), registered: its URL."""
    registered = requests.post(f"{server['management']}/workflows?url=summing.war", timeout=180)
    assert registered.status_code == 200, registered.text
    return f"{server['inference']}/wfpredict/summing"


def test_a_workflows_stateful_node_reads_the_sequence_from_the_configured_headers(summing: str) -> None:
    """``/wfpredict`` hands each node the request's headers, whose ``x-seq-id`` (config.properties'
    name) is the node's sequence, as TorchServe's RequestInput.getSequenceId reads it for a workflow's
    jobs: the stateful node keeps the sequence's running sum."""
    url = summing
    answers = [_post(url, str(value), **{"x-seq-id": "wf"}) for value in (1, 2)]
    answers.append(_post(url, "3", **{"x-seq-id": "wf", "x-seq-end": "true"}))
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert [(a.json()["sequence_id"], a.json()["sum"]) for a in answers] == [("wf", 1), ("wf", 3), ("wf", 6)]


def test_workflow_requests_without_a_sequence_header_share_one_sequence(summing: str) -> None:
    """TorchServe's RequestInput.getSequenceId is "" for a workflow's job whose request names no
    sequence, and Model.addJobInGroup puts every such job in the one job group "": they are served
    (not refused), in turn, as one sequence, and the handler reads no sequence id (None)."""
    answers = [_post(summing, str(value)) for value in (1, 2, 3)]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert [(a.json()["sequence_id"], a.json()["sum"]) for a in answers] == [(None, 1), (None, 3), (None, 6)]


def _sequence_settings(described: dict[str, object]) -> tuple[object, ...]:
    return tuple(described.get(key) for key in ("stateful", "sequenceMaxIdleMSec", "sequenceTimeoutMSec",
                                                  "maxNumSequence", "maxSequenceJobQueueSize"))


def test_describe_answers_the_sequence_settings(server: dict[str, str]) -> None:
    """``GET /models/{m}`` and gRPC DescribeModel answer what TorchServe's DescribeModelResponse does
    for a stateful model (pytorch/serve 62c4d6a1, ApiUtils.createModelResponse): its model-config.yaml's
    sequence settings, maxSequenceJobQueueSize 1 where the yaml gives none."""
    [limited] = requests.get(f"{server['management']}/models/limited", timeout=30).json()
    assert _sequence_settings(limited) == (True, 60000, 900000, 2, 1), limited
    [sequences] = requests.get(f"{server['management']}/models/sequences", timeout=30).json()
    assert _sequence_settings(sequences) == (True, 60000, 0, 4, 10), sequences
    answer = _grpc_call(server["grpc_management"], MANAGEMENT + "DescribeModel",
                        ts.DescribeModelRequest(model_name="limited"), ts.ManagementResponse)
    [described] = json.loads(answer.msg)
    assert _sequence_settings(described) == (True, 60000, 900000, 2, 1), answer.msg


def test_a_stateful_archive_in_a_model_repository(store: Path, tmp_path: Path) -> None:
    """`inferd serve` with ``<model>/1/model.mar`` archives whose model-config.yaml asks for
    sequenceBatching: their requests run by sequence, with its limits, as under `inferd torchserve`."""
    for name in ("sequences", "limited"):
        (tmp_path / "repo" / name / "1").mkdir(parents=True)
        shutil.copy(store / f"{name}.mar", tmp_path / "repo" / name / "1" / "model.mar")
    with serve(tmp_path / "repo") as server:
        url = f"http://{server.url}/predictions/sequences"
        alone = requests.post(url, data="5", timeout=60).json()
        assert alone["sequence_id"].startswith("ts-seq-") and alone["start"] == "true", alone
        sums = [requests.post(url, data=str(value), headers={"ts_request_sequence_id": "r"}, timeout=60).json()
                for value in (1, 2)]
        assert [s["sum"] for s in sums] == [1, 3] and len({s["worker"] for s in sums}) == 1
        limited = f"http://{server.url}/predictions/limited"
        codes = [requests.post(limited, data="hi", headers={"ts_request_sequence_id": key}, timeout=60).status_code
                 for key in ("u", "v", "w")]
        assert codes == [200, 200, 503]
        [described] = requests.get(f"http://{server.url}/models/limited", timeout=30).json()
        assert _sequence_settings(described)[:2] == (True, 60000), described


def test_a_stateful_archive_batches_its_sequences_requests_together(store: Path, tmp_path: Path) -> None:
    """batchSize 4, one worker: the handler (the running sum, 50 ms a call) gets several sequences'
    requests in one ``handle``, as TorchServe's job groups give one request each, each row with its
    own sequence id and sum."""
    handler = tmp_path / "slow_sum.py"
    handler.write_text(textwrap.dedent(ts_archives.STATEFUL_HANDLER).replace(
        "    def handle(self, data, context):\n", "    def handle(self, data, context):\n        time.sleep(0.05)\n")
        .replace("import os\n", "import os\nimport time\n"))
    (tmp_path / "slow.yaml").write_text(ts_archives.SEQUENCE_YAML.replace("Workers: 2", "Workers: 1"))
    (tmp_path / "store").mkdir()
    ts_archives.archive(tmp_path / "store", "slow", store.parent / "grpc-work" / "mlp.pt", str(handler),
                        config_file=tmp_path / "slow.yaml")
    (tmp_path / "server").mkdir()
    with torchserve(tmp_path / "server", {"model_store": str(tmp_path / "store"), "load_models": "slow.mar",
                                          "disable_token_authorization": "true"}) as urls:
        url = f"{urls['inference']}/predictions/slow"

        def run(key: str) -> list[dict[str, object]]:
            answers = []
            for value in (1, 2, 3, 4):
                end = {"ts_request_sequence_end": "true"} if value == 4 else {}
                answer = requests.post(url, data=str(value), headers={"ts_request_sequence_id": key, **end}, timeout=60)
                assert answer.status_code == 200, answer.text
                answers.append(answer.json())
            return answers

        keys = [f"s{i}" for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            results = dict(zip(keys, pool.map(run, keys), strict=True))
    for key, answers in results.items():
        assert [(a["sequence_id"], a["sum"]) for a in answers] == [(key, 1), (key, 3), (key, 6), (key, 10)]
    batches = [int(str(a["batch"])) for answers in results.values() for a in answers]
    assert max(batches) > 1, batches
