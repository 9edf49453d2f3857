"""Decoupled models and streams against the real server, with Triton's gRPC client: a Python
generator model and a Triton Python-backend model with a response sender answer many times per
request over ModelStreamInfer, flagged as Triton flags them; a client that goes away stops the
model; a unary call to a decoupled model is refused with the reason."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import streaming_models
from tests.conftest import RunningServer, serve


@pytest.fixture(scope="module")
def progress(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("progress") / "endless"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, progress: Path) -> Path:
    return streaming_models.build(tmp_path_factory.mktemp("streaming"), progress)


@pytest.fixture(scope="module", params=[0, 1], ids=["one-process", "workers"])
def server(repo: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """Each test twice: in one process, and through a front-end worker (--workers 1), whose
    streams cross to the model process answer by answer."""
    with serve(repo, "--workers", str(request.param), grpc=True) as running:
        yield running


def n_input(n: int) -> grpcclient.InferInput:
    given = grpcclient.InferInput("N", [1], "INT32")
    given.set_data_from_numpy(np.array([n], dtype=np.int32))
    return given


def collect(answers: queue.Queue[Any], count: int, timeout: float = 20) -> list[Any]:
    got = []
    for _ in range(count):
        got.append(answers.get(timeout=timeout))
    return got


def final_flag(result: grpcclient.InferResult) -> bool:
    return bool(result.get_response().parameters["triton_final_response"].bool_param)


@pytest.mark.parametrize("model", ["count_up", "count_up_process"])
def test_a_generator_model_streams_each_answer(server: RunningServer, model: str) -> None:
    """Also from an instance process: each answer crosses as it comes."""
    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        client.async_stream_infer(model, [n_input(4)], request_id="r1", enable_empty_final_response=True)
        got = collect(answers, 5)
        client.stop_stream()
    assert all(not isinstance(item, InferenceServerException) for item in got), got
    assert [r.as_numpy("VALUE").tolist() for r in got[:4]] == [[0], [1], [2], [3]]
    assert [r.as_numpy("TEXT").tolist() for r in got[:4]] == [[f"token {i}".encode()] for i in range(4)]
    assert [final_flag(r) for r in got] == [False, False, False, False, True]
    assert got[4].get_response().outputs == [] and got[4].get_response().id == "r1"


def test_triton_decoupled_repeat_model_streams_in_order(server: RunningServer) -> None:
    answers: queue.Queue[Any] = queue.Queue()
    values = np.arange(100, 106, dtype=np.int32)
    inputs = []
    for name, data, datatype in (("IN", values, "INT32"), ("DELAY", np.full(6, 20, dtype=np.uint32), "UINT32"),
                                 ("WAIT", np.array([10], dtype=np.uint32), "UINT32")):
        inputs.append(grpcclient.InferInput(name, list(data.shape), datatype))
        inputs[-1].set_data_from_numpy(data)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        client.async_stream_infer("repeat_int32", inputs, outputs=[grpcclient.InferRequestedOutput("OUT")])
        got = collect(answers, 6)
        client.stop_stream()
    assert [r.as_numpy("OUT").tolist() for r in got] == [[v] for v in values.tolist()]
    assert got[0].as_numpy("IDX") is None  # only the output asked for


def repeat_inputs(values: list[int]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, data, datatype in (("IN", np.array(values, np.int32), "INT32"),
                                 ("DELAY", np.zeros(len(values), np.uint32), "UINT32"),
                                 ("WAIT", np.zeros(1, np.uint32), "UINT32")):
        inputs.append(grpcclient.InferInput(name, list(data.shape), datatype))
        inputs[-1].set_data_from_numpy(data)
    return inputs


@pytest.mark.parametrize("empty_final", [False, True])
def test_an_answer_sent_with_the_final_flag_is_the_last_as_in_triton(server: RunningServer, empty_final: bool) -> None:
    """Triton flags the answer sent with the final flag triton_final_response and sends no empty
    one after it, asked for or not (only a final flag sent alone becomes an empty answer)."""
    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        client.async_stream_infer("repeat_last_final", repeat_inputs([7, 8, 9]),
                                  enable_empty_final_response=empty_final)
        got = collect(answers, 3)
        time.sleep(0.5)  # time for an answer too many to arrive
        client.stop_stream()
    assert all(not isinstance(item, InferenceServerException) for item in got), got
    assert [r.as_numpy("OUT").tolist() for r in got] == [[7], [8], [9]]
    assert [final_flag(r) for r in got] == [False, False, True]
    assert answers.empty(), answers.get()


def test_an_error_response_is_one_answer_of_the_stream_as_in_triton(server: RunningServer) -> None:
    """A response sent with an error and no final flag reaches the client as Triton's gRPC stream
    delivers it (an ``error_message``), and the request's later responses follow it up to the final
    flag (python_backend f9088ff6 sends it as one response; server's stream_infer_handler.cc writes
    it and goes on until the request's final flag)."""
    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        client.async_stream_infer("repeat_with_error", repeat_inputs([7, -1, 9]), request_id="e1")
        got = collect(answers, 3)
        time.sleep(0.5)  # time for an answer too many to arrive
        client.stop_stream()
    assert isinstance(got[1], InferenceServerException), got
    assert "value -1 at 1 refused" in str(got[1])
    assert [r.as_numpy("OUT").tolist() for r in (got[0], got[2])] == [[7], [9]]
    assert [final_flag(r) for r in (got[0], got[2])] == [False, True]
    assert got[2].get_response().id == "e1"
    assert answers.empty(), answers.get()


def test_generate_stream_sends_an_error_response_as_an_event_and_goes_on(server: RunningServer) -> None:
    """Triton's generate_stream (http_server.cc): an error response is an ``error`` event and the
    stream goes on to the final flag; as the first answer its code is the status."""
    url = f"{server.base}/v2/models/repeat_with_error/generate_stream"
    for values, status, expected in (([7, -1, 9], 200, [7, "value -1 at 1 refused", 9]),
                                     ([-2, 5], 400, ["value -2 at 0 refused", 5])):
        body = {"IN": values, "DELAY": [0] * len(values), "WAIT": [0]}
        with requests.post(url, json=body, stream=True, timeout=30) as response:
            assert response.status_code == status
            events = sse_events(response)
        assert [event.get("OUT", event.get("error")) for event in events] == expected, events


def test_a_plain_model_answers_once_on_a_stream_and_errors_do_not_end_it(server: RunningServer) -> None:
    answers: queue.Queue[Any] = queue.Queue()
    x = grpcclient.InferInput("x", [3], "FP64")
    x.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float64))
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        client.async_stream_infer("no_such_model", [x])
        error = answers.get(timeout=20)
        client.async_stream_infer("double", [x])
        result = answers.get(timeout=20)
        client.stop_stream()
    assert isinstance(error, InferenceServerException) and "no_such_model" in str(error)
    assert result.as_numpy("y").tolist() == [12.0, 14.0, 16.0]
    assert final_flag(result)


@pytest.mark.parametrize("model", ["endless", "endless_process"])
def test_a_client_that_goes_away_stops_the_model(server: RunningServer, progress: Path, model: str) -> None:
    if model == "endless_process":
        progress = Path(f"{progress}-process")
    Path(str(progress) + ".closed").unlink(missing_ok=True)
    answers: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    client.async_stream_infer(model, [n_input(0)])
    collect(answers, 5)
    client.stop_stream(cancel_requests=True)
    client.close()
    closed = Path(str(progress) + ".closed")
    deadline = time.monotonic() + 10
    while not closed.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert closed.exists(), "the generator was not closed when the client went away"
    stopped_at = int(progress.read_text())
    time.sleep(0.3)
    assert int(progress.read_text()) == stopped_at  # and it produces nothing more
    for _ in range(3):  # its instances serve on (of two process instances, one is the cancelled one)
        again: queue.Queue[Any] = queue.Queue()
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            client.start_stream(callback=lambda result, error, into=again: into.put(error or result))
            client.async_stream_infer(model, [n_input(0)])
            assert [r.as_numpy("VALUE").tolist() for r in collect(again, 2)] == [[1], [2]]
            client.stop_stream(cancel_requests=True)


def _tree_rss_mb(root: int) -> float:
    """The resident memory of a process and all its descendants."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError):
            continue  # it ended meanwhile
    tree, grown = {root}, True
    while grown:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grown = bool(more)
    total = 0
    for pid in tree:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total / 2**20


@pytest.mark.parametrize("model", ["careless", "careless_process"])
def test_responses_sent_after_the_client_left_are_not_kept(tmp_path: Path, model: str) -> None:
    """A decoupled model that never asks is_cancelled() sends 200,000 error responses (1 KB each)
    after its client left: the server drops them instead of queueing them for nobody (it grew by
    the lot), and a well-behaved client is served meanwhile."""
    progress = tmp_path / "progress"
    with serve(streaming_models.build_careless(tmp_path / "repo", progress), "--workers", "0", grpc=True) as server:
        answers: queue.Queue[Any] = queue.Queue()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        given = grpcclient.InferInput("IN", [1], "INT32")
        given.set_data_from_numpy(np.array([1], np.int32))
        client.async_stream_infer(model, [given])
        first = collect(answers, 3)
        assert all(result is None and "refused refused" in str(error) for result, error in first), first
        client.stop_stream(cancel_requests=True)
        client.close()
        before = peak = _tree_rss_mb(server.process.pid)
        done = Path(f"{progress}-{model}.done")
        deadline = time.monotonic() + 60
        with grpcclient.InferenceServerClient(server.grpc_url) as other:
            while not done.exists() and time.monotonic() < deadline:
                assert other.is_server_live()
                peak = max(peak, _tree_rss_mb(server.process.pid))
                time.sleep(0.1)
        assert done.exists(), "the careless model did not get through its sends"
    assert peak - before < 50, f"the server grew by {peak - before:.0f} MB while the model sent to nobody"


def test_a_unary_call_to_a_decoupled_model_is_refused(server: RunningServer) -> None:
    given = httpclient.InferInput("N", [1], "INT32")
    given.set_data_from_numpy(np.array([2], dtype=np.int32))
    with pytest.raises(InferenceServerException) as caught:
        httpclient.InferenceServerClient(server.url).infer("count_up", [given])
    assert "decoupled" in str(caught.value) and "ModelStreamInfer" in str(caught.value)
    config = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("repeat_int32").config
    assert config.model_transaction_policy.decoupled


def sse_events(response: requests.Response) -> list[dict[str, Any]]:
    events = []
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            events.append(json.loads(line[len(b"data: "):]))
    return events


def test_generate_stream_sends_each_answer_as_a_server_sent_event(server: RunningServer) -> None:
    with requests.post(f"{server.base}/v2/models/count_up/generate_stream", json={"N": 3, "id": "g1"},
                       stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"  # as Triton sends it
        events = sse_events(response)
    assert events == [{"model_name": "count_up", "model_version": "1", "id": "g1", "VALUE": i, "TEXT": f"token {i}"}
                      for i in range(3)]
    # the connection serves on: a plain model over generate (one answer), on a new request
    response = requests.post(f"{server.base}/v2/models/double/generate", json={"x": [1.0, 2.0]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"model_name": "double", "model_version": "1", "y": [12.0, 14.0], "n": 2}


def test_generate_errors_name_what_was_wrong(server: RunningServer) -> None:
    base = f"{server.base}/v2/models"
    unknown = requests.post(f"{base}/count_up/generate_stream", json={"N": 1, "M": [2]}, timeout=30)
    assert unknown.status_code == 400  # a key that is no input is a parameter, and a list is none
    assert "parameter 'M' has invalid type. It should be either 'int', 'bool', or 'string'." in unknown.json()["error"]
    missing = requests.post(f"{base}/count_up/generate_stream", json={}, timeout=30)
    assert missing.status_code == 400 and "missing required input(s) ['N']" in missing.json()["error"]
    many = requests.post(f"{base}/count_up/generate", json={"N": 2}, timeout=30)
    assert many.status_code == 400 and "generate_stream" in many.json()["error"]
    assert requests.post(f"{base}/nope/generate", json={}, timeout=30).status_code == 404


def test_an_http_client_that_goes_away_stops_the_model(server: RunningServer, progress: Path) -> None:
    closed = Path(str(progress) + ".closed")
    closed.unlink(missing_ok=True)
    with requests.post(f"{server.base}/v2/models/endless/generate_stream", json={"N": 0}, stream=True,
                       timeout=30) as response:
        lines = response.iter_lines()
        seen = [line for _, line in zip(range(6), lines, strict=False)]
        assert any(line.startswith(b"data: ") for line in seen)
    deadline = time.monotonic() + 10
    while not closed.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert closed.exists(), "the generator was not closed when the HTTP client went away"


def _generate_counts(server: RunningServer, model: str) -> tuple[dict[str, float], dict[str, int]]:
    """/metrics' kserve_v2_generate outcomes and the stats' success/fail counts of ``model``."""
    outcomes = {}
    for line in requests.get(f"{server.base}/metrics", timeout=10).text.splitlines():
        if line.startswith("inferd_requests_total{") and f'model="{model}"' in line \
                and 'protocol="kserve_v2_generate"' in line:
            outcomes[line.split('outcome="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    stats = requests.get(f"{server.base}/v2/models/{model}/stats", timeout=10).json()["model_stats"][0]
    return outcomes, {k: int(stats["inference_stats"][k]["count"]) for k in ("success", "fail")}


def test_a_generate_stream_the_client_leaves_counts_as_cancelled(server: RunningServer, progress: Path) -> None:
    closed = Path(str(progress) + ".closed")
    closed.unlink(missing_ok=True)
    outcomes, counts = _generate_counts(server, "endless")
    with requests.post(f"{server.base}/v2/models/endless/generate_stream", json={"N": 0}, stream=True,
                       timeout=30) as response:
        assert any(line.startswith(b"data: ") for _, line in zip(range(6), response.iter_lines(), strict=False))
    deadline = time.monotonic() + 10
    while not closed.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert closed.exists(), "the generator was not closed when the HTTP client went away"

    def counted() -> tuple[dict[str, float], dict[str, int]]:
        return _generate_counts(server, "endless")

    deadline = time.monotonic() + 10
    while ((now := counted())[0].get("cancelled", 0) == outcomes.get("cancelled", 0)
           or now[1]["fail"] == counts["fail"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    after_outcomes, after_counts = now
    assert after_outcomes.get("cancelled", 0) == outcomes.get("cancelled", 0) + 1, after_outcomes
    assert after_outcomes.get("success", 0) == outcomes.get("success", 0), after_outcomes  # the client saw no end
    assert after_counts == {"success": counts["success"], "fail": counts["fail"] + 1}, after_counts


BREAKS = '''
import numpy as np


class Model:
    def infer(self, inputs):
        for i in range(3):
            yield {"VALUE": np.array([i], dtype=np.int32), "TEXT": np.array([b"t"], dtype=object)}
        raise RuntimeError("broke after three answers")
'''


def test_a_model_failing_mid_stream_is_an_error_event_and_a_logged_traceback(tmp_path: Path) -> None:
    from tests.models import write

    write(tmp_path / "breaks/1/model.py", BREAKS)
    write(tmp_path / "breaks/config.toml", streaming_models.COUNT_UP_CONFIG + streaming_models.THREADS)
    with serve(tmp_path, grpc=True) as server:
        response = requests.post(f"{server.base}/v2/models/breaks/generate_stream", json={"N": 1}, timeout=30)
        assert response.status_code == 200  # the status went out with the first answer
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
        assert [event.get("VALUE") for event in events[:3]] == [0, 1, 2]
        assert "broke after three answers" in events[3]["error"] and len(events) == 4, events

        client = grpcclient.InferenceServerClient(server.grpc_url)
        answers: queue.Queue[Any] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        client.async_stream_infer("breaks", [n_input(1)])
        got = collect(answers, 4)
        client.stop_stream()
        assert [item.as_numpy("VALUE").tolist() for item in got[:3]] == [[0], [1], [2]]
        assert isinstance(got[3], InferenceServerException) and "broke after three answers" in got[3].message()
        deadline = time.monotonic() + 5
        while server.log().count("RuntimeError: broke after three answers") < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        log = server.log()
    # each failure logged with what raised it (the message line and the traceback's last line)
    assert "generate_stream: model 'breaks:1' failed" in log and "ModelStreamInfer: model 'breaks:1' failed" in log, log
    assert log.count("Traceback") >= 2, log
