"""A decoupled Triton Python model under dynamic batching, as Triton runs it (python_backend's
README, "Decoupled mode"): ``execute(requests)`` gets every request the batcher gathered, each with
its own response sender, and may answer them from other threads after it returned; each client's
gRPC stream gets its own request's responses, in order, until the final flag, an error response
being one of them (the stream goes on, as Triton's). Served by the real server, called with tritonclient.

The gathering is made certain as in test_triton_python_batching.py: a first stream holds the
model's one instance until the test has seen every other request waiting in the queue."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests import models, streaming_models
from tests.conftest import RunningServer, serve
from tests.e2e.test_streaming import sse_events
from tests.e2e.test_triton_python_batching import PBTXT as GATHERED_PBTXT
from tests.e2e.test_triton_python_batching import TOML as GATHERED_TOML

# Each request gets its "count" parameter's responses, sent from a thread of its own after execute
# returned: OUT = IN * k for k = 1..count, COUNT = len(requests) of its execution, ID = its
# request_id(); the last carries the final flag, or (parameter "flag_alone") the flag comes alone.
# "fail": its second response is an error response (no final flag: the rest follow); "raise": execute
# raises. A negative input holds the instance until the file
# "release" exists in the model's folder (it writes "held" first).
DECOUPLED = """
import json
import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.folder = args["model_repository"]

    def execute(self, requests):
        if any(json.loads(r.parameters()).get("raise") for r in requests):
            raise ValueError("execute was asked to raise")
        if any((pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() < 0).any() for r in requests):
            open(os.path.join(self.folder, "held"), "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(os.path.join(self.folder, "release")) and time.monotonic() < deadline:
                time.sleep(0.01)
        for request in requests:
            threading.Thread(target=self.answer, args=(request, len(requests))).start()
        return None

    def answer(self, request, gathered):
        sender = request.get_response_sender()
        parameters = json.loads(request.parameters())
        count = parameters.get("count", 1)
        rows = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
        for k in range(1, count + 1):
            time.sleep(0.005)
            if parameters.get("fail") and k == 2:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"request {request.request_id()} was asked to fail", pb_utils.TritonError.INVALID_ARG)))
                continue
            response = pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", rows * k), pb_utils.Tensor("COUNT", np.full((len(rows), 1), gathered, np.int32)),
                pb_utils.Tensor("ID", np.array([[request.request_id().encode()]] * len(rows), np.object_))])
            last = k == count and not parameters.get("flag_alone")
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if last else 0)
        if parameters.get("flag_alone"):
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

# the same models' configurations as tests/e2e/test_triton_python_batching.py's, made decoupled:
# in an instance process (Triton's config; the default for Python models) ...
PBTXT = GATHERED_PBTXT.replace("{name}", "decoupled_gathered").replace(
    "max_batch_size: 8\n", "max_batch_size: 8\nmodel_transaction_policy { decoupled: true }\n", 1)
# ... and in the server's own process (config.toml, kind "cpu")
TOML = GATHERED_TOML.replace("max_batch_size = 8\n",
                             "max_batch_size = 8\n\n[model_transaction_policy]\ndecoupled = true\n", 1)

MODELS = ("decoupled_gathered", "decoupled_gathered_in_process")

# a generator model streams one request's answers: it cannot take a batch as its requests
GENERATOR_BATCHED = streaming_models.COUNT_UP_CONFIG.replace(
    'backend = "python"', 'backend = "python"\nmax_batch_size = 4\n[dynamic_batching]')


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root: Path = tmp_path_factory.mktemp("pb_decoupled_batching_repo")
    for name in MODELS:
        models.write(root / name / "1/model.py", DECOUPLED)
    models.write(root / "decoupled_gathered/config.pbtxt", PBTXT)
    models.write(root / "decoupled_gathered_in_process/config.toml", TOML)
    for kind in ("process", "cpu"):
        models.write(root / f"generator_batched_{kind}/1/model.py", streaming_models.COUNT_UP)
        models.write(root / f"generator_batched_{kind}/config.toml",
                     GENERATOR_BATCHED + f'[instance_group]\nkind = "{kind}"\n')
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with serve(repository, grpc=True) as running:
        yield running


class Stream:
    """One client with its own gRPC stream (ModelStreamInfer), and what came on it."""

    def __init__(self, server: RunningServer, model: str) -> None:
        self.model = model
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.got: queue.Queue[Any] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.got.put(error or result))

    def ask(self, rows: np.ndarray, request_id: str, parameters: dict[str, Any]) -> None:
        tensor = grpcclient.InferInput("IN", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        self.client.async_stream_infer(self.model, [tensor], request_id=request_id, parameters=parameters,
                                       enable_empty_final_response=True)

    def until_final(self, timeout: float = 30, errors_end: bool = True) -> list[Any]:
        """Every answer up to the one flagged final, or up to an error (which ends a request, unless
        ``errors_end`` is false: a request whose error responses the client awaits the rest of)."""
        answers = []
        while True:
            answer = self.got.get(timeout=timeout)
            answers.append(answer)
            if (errors_end and isinstance(answer, InferenceServerException)) or (
                    not isinstance(answer, InferenceServerException) and _final(answer)):
                return answers

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def _final(result: grpcclient.InferResult) -> bool:
    return bool(result.get_response().parameters["triton_final_response"].bool_param)


def _queued(server: RunningServer, model: str) -> float:
    text = requests.get(f"{server.base}/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "inferd_queue_depth" and s.labels.get("model") == model)


def _gathered(server: RunningServer, folder: Path, model: str, members: list[tuple[np.ndarray, str, dict[str, Any]]]
              ) -> tuple[list[Any], list[list[Any]]]:
    """The holder's answers and each member's (rows, id, parameters), each on a stream of its own,
    all members having waited in the queue together while the holder held the instance."""
    held, release = folder / model / "held", folder / model / "release"
    held.unlink(missing_ok=True)
    release.unlink(missing_ok=True)
    holder = Stream(server, model)
    streams = [Stream(server, model) for _ in members]
    try:
        holder.ask(np.full((1, 2), -1, np.float32), "holder", {"count": 1})
        deadline = time.monotonic() + 30
        while not held.exists():
            assert time.monotonic() < deadline, "the holding request never ran"
            time.sleep(0.01)
        for stream, (rows, request_id, parameters) in zip(streams, members, strict=True):
            stream.ask(rows, request_id, parameters)
        while _queued(server, model) < len(members):
            assert time.monotonic() < deadline, f"only {_queued(server, model)} requests queued"
            time.sleep(0.02)
        release.touch()
        return holder.until_final(), [stream.until_final(errors_end=not parameters.get("fail"))
                                      for stream, (_, _, parameters) in zip(streams, members, strict=True)]
    finally:
        for stream in (holder, *streams):
            stream.close()


@pytest.mark.parametrize("model", MODELS)
def test_gathered_streams_each_get_their_own_responses_in_order(server: RunningServer, repository: Path,
                                                                model: str) -> None:
    """One execute for the gathered requests (COUNT), and on each stream exactly its own responses,
    in the order sent, the last one flagged final (an empty final one when the flag came alone)."""
    members = [(np.full((n, 2), i + 1, np.float32), f"r{i}", {"count": count, "flag_alone": i == 1})
               for i, (n, count) in enumerate([(1, 3), (2, 2), (1, 1), (3, 4)])]
    holder, answers = _gathered(server, repository, model, members)
    assert [a.as_numpy("COUNT").tolist() for a in holder] == [[[1]]]
    for (rows, request_id, parameters), got in zip(members, answers, strict=True):
        assert not any(isinstance(a, Exception) for a in got), got
        sent = got[:-1] if parameters["flag_alone"] else got
        assert len(sent) == parameters["count"], request_id
        for k, answer in enumerate(sent, start=1):
            np.testing.assert_array_equal(answer.as_numpy("OUT"), rows * k)
            assert answer.as_numpy("ID").tolist() == [[request_id.encode()]] * len(rows)
            assert answer.as_numpy("COUNT").tolist() == [[len(members)]] * len(rows)
            assert answer.get_response().id == request_id
        assert [_final(a) for a in got] == [False] * (len(got) - 1) + [True]
        if parameters["flag_alone"]:  # the flag sent alone: an empty final response
            assert got[-1].as_numpy("OUT") is None and got[-1].get_response().id == request_id


@pytest.mark.parametrize("model", MODELS)
def test_an_error_response_is_one_answer_of_its_own_stream(server: RunningServer, repository: Path,
                                                          model: str) -> None:
    """The request whose second response is an error response (sent without the final flag) gets
    its first response, the error (Triton's ``error_message`` on the stream), then its third,
    flagged final: as in Triton, the stream ends at the final flag, not at the error. The others of
    its execution stream to their final flag."""
    members = [(np.full((1, 2), i + 1, np.float32), f"e{i}", {"count": 3, "fail": i == 1}) for i in range(3)]
    _, answers = _gathered(server, repository, model, members)
    first, error, third = answers[1]
    assert first.as_numpy("OUT").tolist() == [[2.0, 2.0]] and not _final(first)
    assert isinstance(error, InferenceServerException)
    assert "request e1 was asked to fail" in str(error)
    assert third.as_numpy("OUT").tolist() == [[6.0, 6.0]] and _final(third)
    for i in (0, 2):
        assert [a.as_numpy("OUT").tolist() for a in answers[i]] == [[[(i + 1.0) * k] * 2] for k in (1, 2, 3)]
        assert [a.as_numpy("COUNT").tolist() for a in answers[i]] == [[[3]]] * 3
        assert _final(answers[i][-1])


@pytest.mark.parametrize("model", MODELS)
def test_statistics_count_one_execution_for_the_gathered_streams(server: RunningServer, repository: Path,
                                                                  model: str) -> None:
    """Triton's statistics: the gathered requests are one execution of their rows together."""
    def stats() -> dict[str, Any]:
        got: dict[str, Any] = requests.get(f"{server.base}/v2/models/{model}/stats", timeout=10).json()
        return dict(got["model_stats"][0])

    before = stats()
    members = [(np.ones((2, 2), np.float32), f"s{i}", {"count": 2}) for i in range(3)]
    _gathered(server, repository, model, members)
    deadline = time.monotonic() + 10  # counted once the instance is free, just after the final answers left
    while (after := stats())["execution_count"] - before["execution_count"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert after["execution_count"] - before["execution_count"] == 2  # the holder's, then the batch's
    assert after["inference_count"] - before["inference_count"] == 1 + 6
    sizes = {entry["batch_size"]: entry["compute_infer"]["count"] for entry in after["batch_stats"]}
    assert sizes.get(6, 0) >= 1


@pytest.mark.parametrize("kind", ["process", "cpu"])
def test_a_generator_model_with_dynamic_batching_is_refused_with_the_reason(server: RunningServer, kind: str) -> None:
    """Only a model that takes the batch as its requests (execute(requests)) can stream each."""
    index = {row["name"]: row for row in requests.post(f"{server.base}/v2/repository/index", timeout=5).json()}
    row = index[f"generator_batched_{kind}"]
    assert row["state"] == "UNAVAILABLE"
    assert "a decoupled model with dynamic_batching must take a batch as its requests" in row["reason"]


@pytest.mark.parametrize("model", MODELS)
def test_a_client_that_leaves_ends_its_own_stream_only(server: RunningServer, repository: Path, model: str) -> None:
    """A stream cancelled mid-way (its sender sees is_cancelled, its reader is gone) leaves the
    other requests of its execution streaming to their final flag, and the instance free after."""
    held, release = repository / model / "held", repository / model / "release"
    held.unlink(missing_ok=True)
    release.unlink(missing_ok=True)
    holder, leaving, staying = Stream(server, model), Stream(server, model), Stream(server, model)
    try:
        holder.ask(np.full((1, 2), -1, np.float32), "holder", {"count": 1})
        deadline = time.monotonic() + 30
        while not held.exists():
            assert time.monotonic() < deadline, "the holding request never ran"
            time.sleep(0.01)
        leaving.ask(np.ones((1, 2), np.float32), "leaving", {"count": 200})
        staying.ask(np.full((1, 2), 2, np.float32), "staying", {"count": 20})
        while _queued(server, model) < 2:
            assert time.monotonic() < deadline, f"only {_queued(server, model)} requests queued"
            time.sleep(0.02)
        release.touch()
        assert len(holder.until_final()) == 1
        first = leaving.got.get(timeout=30)
        assert first.as_numpy("COUNT").tolist() == [[2]]
        leaving.client.stop_stream(cancel_requests=True)
        got = staying.until_final()
        assert [a.as_numpy("OUT").tolist() for a in got] == [[[2.0 * k] * 2] for k in range(1, 21)]
        assert [a.as_numpy("COUNT").tolist() for a in got] == [[[2]]] * 20
    finally:
        for stream in (holder, leaving, staying):
            stream.close()
    again = Stream(server, model)  # the instance was given back: a new request runs
    try:
        again.ask(np.ones((1, 2), np.float32), "again", {"count": 2})
        assert [a.as_numpy("OUT").tolist() for a in again.until_final()] == [[[1.0, 1.0]], [[2.0, 2.0]]]
    finally:
        again.close()


@pytest.mark.parametrize("model", MODELS)
def test_execute_failing_ends_every_stream_of_its_batch_with_the_reason(server: RunningServer, repository: Path,
                                                                      model: str) -> None:
    """Triton: an exception out of execute fails the requests of that execution; each stream of
    the batch gets the error, and the model serves on."""
    members = [(np.ones((1, 2), np.float32), f"x{i}", {"count": 2, "raise": i == 2}) for i in range(3)]
    _, answers = _gathered(server, repository, model, members)
    for got in answers:
        assert len(got) == 1 and isinstance(got[0], InferenceServerException), got
        assert "execute was asked to raise" in str(got[0])
    _, answers = _gathered(server, repository, model, [(np.ones((1, 2), np.float32), "after", {"count": 1})])
    assert answers[0][0].as_numpy("OUT").tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize("model", MODELS)
def test_generate_stream_reaches_the_batched_model(server: RunningServer, model: str) -> None:
    """Over HTTP's generate_stream too: one event per response of the request."""
    with requests.post(f"{server.base}/v2/models/{model}/generate_stream",
                       json={"IN": [1.0, 2.0], "id": "g", "parameters": {"count": 3}}, stream=True,
                       timeout=30) as response:
        assert response.status_code == 200, response.text
        events = sse_events(response)
    assert [event["OUT"] for event in events] == [[1.0 * k, 2.0 * k] for k in (1, 2, 3)]
    assert [event["ID"] for event in events] == ["g"] * 3


@pytest.mark.parametrize("model", MODELS)
def test_two_requests_of_one_stream_gathered_each_get_their_own_responses(server: RunningServer,
                                                                        repository: Path, model: str) -> None:
    """Requests of one gRPC stream run at once, so they may be gathered into one execute; the
    stream carries each one's responses, told apart by id, each in order to its final flag."""
    held, release = repository / model / "held", repository / model / "release"
    held.unlink(missing_ok=True)
    release.unlink(missing_ok=True)
    holder, both = Stream(server, model), Stream(server, model)
    try:
        holder.ask(np.full((1, 2), -1, np.float32), "holder", {"count": 1})
        deadline = time.monotonic() + 30
        while not held.exists():
            assert time.monotonic() < deadline, "the holding request never ran"
            time.sleep(0.01)
        both.ask(np.ones((1, 2), np.float32), "one", {"count": 3})
        both.ask(np.full((1, 2), 5, np.float32), "two", {"count": 2})
        while _queued(server, model) < 2:
            assert time.monotonic() < deadline, f"only {_queued(server, model)} requests queued"
            time.sleep(0.02)
        release.touch()
        holder.until_final()
        got: dict[str, list[Any]] = {"one": [], "two": []}
        for _ in range(5):
            answer = both.got.get(timeout=30)
            got[answer.get_response().id].append(answer)
    finally:
        holder.close()
        both.close()
    assert [a.as_numpy("OUT").tolist() for a in got["one"]] == [[[1.0 * k] * 2] for k in (1, 2, 3)]
    assert [a.as_numpy("OUT").tolist() for a in got["two"]] == [[[5.0 * k] * 2] for k in (1, 2)]
    assert all(a.as_numpy("COUNT").tolist() == [[2]] for a in got["one"] + got["two"])
    assert [_final(a) for a in got["one"]] == [False, False, True] and [_final(a) for a in got["two"]] == [False, True]


def test_through_a_front_end_worker_each_stream_gets_its_own_responses(repository: Path) -> None:
    """Through a front-end worker (--workers 1), whose streams cross to the model process answer
    by answer, the gathered requests still stream each its own responses."""
    with serve(repository, "--workers", "1", grpc=True) as running:
        members = [(np.full((1, 2), i + 1, np.float32), f"w{i}", {"count": 2}) for i in range(3)]
        _, answers = _gathered(running, repository, "decoupled_gathered", members)
    for i, got in enumerate(answers):
        assert [a.as_numpy("OUT").tolist() for a in got] == [[[(i + 1.0) * k] * 2] for k in (1, 2)]
        assert [a.as_numpy("ID").tolist() for a in got] == [[[f"w{i}".encode()]]] * 2
        assert [a.as_numpy("COUNT").tolist() for a in got] == [[[3]]] * 2
