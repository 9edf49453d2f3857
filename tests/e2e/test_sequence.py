"""Sequence batching against the real server with Triton's clients (HTTP and gRPC, unary and
streamed), in one process and through a front-end worker: stateful models get their control
inputs, a sequence's requests stay on one instance in order, Triton's refusals are 400s."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models, sequence_models
from tests.conftest import RunningServer, serve


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = sequence_models.build(tmp_path_factory.mktemp("sequence"), idle_us=500_000, accumulate_count=2,
                                 accumulate_kind="process")
    sequence_models.build_torch(root)
    (root / "accumulate_pipeline/1").mkdir(parents=True)
    models.write(root / "accumulate_pipeline/config.toml", ACCUMULATE_PIPELINE)
    return root


# an ensemble whose one step is the stateful accumulate model
ACCUMULATE_PIPELINE = """
platform = "ensemble"
[[input]]
name = "VALUE"
datatype = "FP32"
shape = [1]
[[output]]
name = "TOTAL"
datatype = "FP32"
shape = [1]
[[ensemble_scheduling.step]]
model_name = "accumulate"
input_map = { X = "VALUE" }
output_map = { SUM = "TOTAL" }
"""


@pytest.fixture(scope="module", params=[0, 1], ids=["one-process", "workers"])
def server(repo: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with serve(repo, "--workers", str(request.param), grpc=True) as running:
        yield running


def int_input(module: Any, name: str, value: int) -> Any:
    given = module.InferInput(name, [1, 1], "INT32")
    given.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return given


def test_an_onnx_sequence_model_gets_start_and_ready(server: RunningServer, repo: Path) -> None:
    values = [0, 11, 7, 5, -3]
    session = ort.InferenceSession(str(repo / "simple_sequence/1/model.onnx"))
    expected = [int(session.run(None, {"INPUT": np.array([[v]], np.int32), "START": np.array([[int(i == 0)]], np.int32),
                                       "READY": np.ones((1, 1), np.int32)})[0][0, 0]) for i, v in enumerate(values)]
    assert expected[0] == 1 and expected[1:] == values[1:]
    got: dict[str, list[int]] = {"grpc": [], "http": []}
    with grpcclient.InferenceServerClient(server.grpc_url) as g, httpclient.InferenceServerClient(server.url) as h:
        for i, value in enumerate(values):
            flags = {"sequence_start": i == 0, "sequence_end": i == len(values) - 1}
            answer = g.infer("simple_sequence", [int_input(grpcclient, "INPUT", value)], sequence_id=1000, **flags)
            got["grpc"].append(int(answer.as_numpy("OUTPUT")[0, 0]))
            answer = h.infer("simple_sequence", [int_input(httpclient, "INPUT", value)], sequence_id="seq-a", **flags)
            got["http"].append(int(answer.as_numpy("OUTPUT")[0, 0]))
    assert got == {"grpc": expected, "http": expected}


@pytest.mark.parametrize("model", ["simple_sequence_torch", "simple_sequence_torch_nobatch"])
def test_a_torchscript_sequence_model_gets_its_controls_as_its_last_arguments(server: RunningServer,
                                                                             model: str) -> None:
    """Triton's libtorch backend gives a sequence model its control inputs as forward arguments
    (INPUT__0, START__1, END__2, READY__3): START adds 1 on the first request, END 100 on the last."""
    values = [4, 11, 7]
    shape = [1] if model.endswith("nobatch") else [1, 1]
    for module, url, sequence_id in ((grpcclient, server.grpc_url, 77), (httpclient, server.url, "seq-t")):
        with module.InferenceServerClient(url) as client:
            got = []
            for i, value in enumerate(values):
                given = module.InferInput("INPUT__0", shape, "INT32")
                given.set_data_from_numpy(np.full(shape, value, dtype=np.int32))
                answer = client.infer(model, [given], sequence_id=sequence_id, sequence_start=i == 0,
                                      sequence_end=i == len(values) - 1)
                got.append(int(answer.as_numpy("OUTPUT__0").reshape(-1)[0]))
        assert got == [5, 11, 107]


def test_interleaved_sequences_keep_their_state_on_their_instance(server: RunningServer) -> None:
    """Three sequences of a Python-backend model in two process instances, their requests
    interleaved on one gRPC stream: each sum is its own (state kept per instance, requests in
    order), reset at START (request.flags()), the correlation ID added at END."""
    answers: queue.Queue[Any] = queue.Queue()
    steps = [3, 4, -2, 10]
    ids = ["11", "22", "33"]
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        for index, step in enumerate(steps):
            for offset, sequence_id in enumerate(ids):
                client.async_stream_infer("simple_string_dyna_sequence",
                                          [int_input(grpcclient, "INPUT", step * (offset + 1))],
                                          request_id=f"{sequence_id}_{index}", sequence_id=sequence_id,
                                          sequence_start=index == 0, sequence_end=index == len(steps) - 1)
        got = [answers.get(timeout=30) for _ in range(len(steps) * len(ids))]
        client.stop_stream()
    assert not [item for item in got if isinstance(item, InferenceServerException)], got
    by_id: dict[str, list[int]] = {}
    for result in got:
        sequence_id, _, index = result.get_response().id.partition("_")
        by_id.setdefault(sequence_id, [0] * len(steps))[int(index)] = int(result.as_numpy("OUTPUT")[0, 0])
    for offset, sequence_id in enumerate(ids):
        sums = list(np.cumsum([step * (offset + 1) for step in steps]))
        sums[-1] += int(sequence_id)
        assert by_id[sequence_id] == sums


def stream_in_order(url: str, sizes: list[int], starts: tuple[int, ...] = (0,)) -> list[Any]:
    """Sequence 4242 of ``ordered`` on one ModelStreamInfer stream, request i carrying ``sizes[i]``
    values of i, a START at each of ``starts`` (an END before each later one and at the last); the
    answers by request."""
    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(url) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        for index, size in enumerate(sizes):
            given = grpcclient.InferInput("X", [size], "FP32")
            given.set_data_from_numpy(np.full(size, index, dtype=np.float32))
            client.async_stream_infer("ordered", [given], request_id=str(index), sequence_id=4242,
                                      sequence_start=index in starts,
                                      sequence_end=index + 1 in starts or index == len(sizes) - 1)
        got = [answers.get(timeout=60) for _ in sizes]
        client.stop_stream()
    assert not [item for item in got if isinstance(item, InferenceServerException)], got
    return sorted((int(r.get_response().id), r.as_numpy("ORDER").tolist()) for r in got)


# a 12 MB START (decoded off the event loop) before small requests: they reached the sequence
# batcher first and were refused as sequences without START
ORDER_SIZES = [3_000_000, 1, 1, 2_000_000, 1]
ORDER_EXPECTED = [(i, list(range(i + 1))) for i in range(len(ORDER_SIZES))]


def test_a_streams_sequence_runs_in_the_order_it_came_when_a_request_is_large(server: RunningServer) -> None:
    assert stream_in_order(server.grpc_url, ORDER_SIZES) == ORDER_EXPECTED


def test_an_id_started_again_right_after_its_end_queues_behind_it(server: RunningServer) -> None:
    """Two sequences of one id back to back on a stream: the second START ran before the first
    sequence's queued requests (its own lane lock), so each saw the other's values."""
    got = stream_in_order(server.grpc_url, [1] * 6, starts=(0, 3))
    assert got == [(0, [0]), (1, [0, 1]), (2, [0, 1, 2]), (3, [3]), (4, [3, 4]), (5, [3, 4, 5])]


def test_a_streams_sequence_keeps_its_order_on_the_grpcio_server(repo: Path) -> None:
    with serve(repo, "--grpc-server", "grpcio", grpc=True) as running:
        assert stream_in_order(running.grpc_url, ORDER_SIZES) == ORDER_EXPECTED


def test_a_model_class_sees_its_control_inputs_and_its_state_ends_with_the_sequence(server: RunningServer) -> None:
    with httpclient.InferenceServerClient(server.url) as client:
        def send(sequence_id: int, value: float, **flags: bool) -> tuple[float, int]:
            given = httpclient.InferInput("X", [1], "FP32")
            given.set_data_from_numpy(np.array([value], dtype=np.float32))
            answer = client.infer("accumulate", [given], sequence_id=sequence_id, **flags)
            return float(answer.as_numpy("SUM")[0]), int(answer.as_numpy("LIVE")[0])

        assert send(7, 1.5, sequence_start=True)[0] == 1.5
        assert send(8, 10, sequence_start=True)[0] == 10
        assert send(7, 2)[0] == 3.5
        assert send(9, 100, sequence_start=True)[0] == 100
        assert send(8, 1, sequence_end=True)[0] == 11
        assert send(7, 0.5, sequence_end=True)[0] == 4
        assert send(9, 1, sequence_end=True) == (101, 0)  # every sequence ended: its instance keeps nothing


def test_tritons_refusals_are_400s(server: RunningServer) -> None:
    with httpclient.InferenceServerClient(server.url) as h, grpcclient.InferenceServerClient(server.grpc_url) as g:
        for client, module in ((h, httpclient), (g, grpcclient)):
            with pytest.raises(InferenceServerException) as caught:
                client.infer("simple_sequence", [int_input(module, "INPUT", 1)])
            assert "inference request to model 'simple_sequence' must specify a non-zero or non-empty correlation ID" \
                in caught.value.message()
            with pytest.raises(InferenceServerException) as caught:
                client.infer("simple_sequence", [int_input(module, "INPUT", 1)], sequence_id=123456)
            assert ("inference request for sequence 123456 to model 'simple_sequence' must specify the START flag "
                    "on the first request of the sequence") in caught.value.message()
            assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
            with pytest.raises(InferenceServerException) as caught:  # its CORRID is BYTES: 1 is not "1"
                client.infer("simple_string_dyna_sequence", [int_input(module, "INPUT", 1)], sequence_id=1,
                             sequence_start=True)
            assert ("sequence batching control 'CORRID' data-type is 'UINT64', but model 'simple_string_dyna_sequence' "
                    "expects 'BYTES' (control input 'CORRID'): send sequence id 1 as a string"
                    ) in caught.value.message()
            assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
            with pytest.raises(InferenceServerException) as caught:  # its CORRID is UINT64
                client.infer("simple_dyna_sequence", [int_input(module, "INPUT", 1)], sequence_id="corrid",
                             sequence_start=True)
            assert ("sequence batching control 'CORRID' data-type is 'BYTES', but model 'simple_dyna_sequence' "
                    "expects 'UINT64' (control input 'CORRID'): send sequence id 'corrid' as an integer"
                    ) in caught.value.message()
            assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    answer = requests.post(f"{server.base}/v2/models/simple_sequence/infer", timeout=10, json={
        "parameters": {"sequence_id": 5, "sequence_start": "yes"},
        "inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [1, 1], "data": [1]}]})
    assert answer.status_code == 400
    assert "parameters.sequence_start must be true or false, got 'yes'" in answer.json()["error"]


def test_a_correlation_id_beyond_the_corrid_inputs_range_is_a_400(server: RunningServer) -> None:
    """accumulate32's CORRID is INT32: a larger id is refused before the sequence starts (it was a 500
    that left the sequence live), over HTTP and gRPC; the largest INT32 id runs."""
    def x(module: Any) -> Any:
        given = module.InferInput("X", [1], "FP32")
        given.set_data_from_numpy(np.array([2.0], dtype=np.float32))
        return given

    with httpclient.InferenceServerClient(server.url) as h, grpcclient.InferenceServerClient(server.grpc_url) as g:
        for client, module in ((h, httpclient), (g, grpcclient)):
            for sequence_id in (2**31, 2**40):
                with pytest.raises(InferenceServerException) as caught:
                    client.infer("accumulate32", [x(module)], sequence_id=sequence_id, sequence_start=True)
                assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), caught.value
                assert (f"sequence id {sequence_id} does not fit model 'accumulate32''s INT32 control input 'CORRID' "
                        "(-2147483648..2147483647)") in caught.value.message()
            answer = client.infer("accumulate32", [x(module)], sequence_id=2**31 - 1, sequence_start=True,
                                  sequence_end=True)
            assert answer.as_numpy("SUM").tolist() == [2.0]


def test_an_idle_sequence_is_released(server: RunningServer) -> None:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    url = f"{server.base}/v2/models/accumulate/infer"
    started = requests.post(url, timeout=10, json={**body, "parameters": {"sequence_id": 31, "sequence_start": True}})
    assert started.status_code == 200, started.text
    time.sleep(1.0)  # max_sequence_idle_microseconds is 500000
    late = requests.post(url, timeout=10, json={**body, "parameters": {"sequence_id": 31}})
    assert late.status_code == 400 and "must specify the START flag" in late.json()["error"]


def test_metadata_and_configuration_show_what_triton_shows(server: RunningServer) -> None:
    metadata = requests.get(f"{server.base}/v2/models/simple_dyna_sequence", timeout=10).json()
    assert [t["name"] for t in metadata["inputs"]] == ["INPUT"]  # the controls are the server's to give
    config = requests.get(f"{server.base}/v2/models/simple_dyna_sequence/config", timeout=10).json()
    sequence = config["sequence_batching"]
    assert sequence["max_sequence_idle_microseconds"] == 10_000_000
    assert [(c["name"], c["control"][0]["kind"]) for c in sequence["control_input"]] == [
        ("START", "CONTROL_SEQUENCE_START"), ("END", "CONTROL_SEQUENCE_END"), ("READY", "CONTROL_SEQUENCE_READY"),
        ("CORRID", "CONTROL_SEQUENCE_CORRID")]


CRASHING_SUM = '''
import ctypes

import numpy as np


class Model:
    def __init__(self):
        self.sums = {}

    def infer(self, inputs):
        key, x = int(inputs["CORRID"][0]), int(inputs["x"][0])
        if inputs["START"][0]:
            self.sums[key] = 0
        if x == 666:
            ctypes.string_at(0)  # segfault: the instance and its sequences' state are gone
        self.sums[key] += x
        return {"total": np.array([self.sums[key]], dtype=np.int32)}
'''

CRASHING_SUM_CONFIG = """
backend = "python"
[instance_group]
count = 1
kind = "process"
[sequence_batching]
[[sequence_batching.control_input]]
name = "START"
kind = "START"
datatype = "BOOL"
[[sequence_batching.control_input]]
name = "CORRID"
kind = "CORRID"
datatype = "UINT64"
[[input]]
name = "x"
datatype = "INT32"
shape = [1]
[[output]]
name = "total"
datatype = "INT32"
shape = [1]
"""


def test_a_sequence_whose_instance_crashed_must_start_again(tmp_path: Path) -> None:
    (tmp_path / "crashing_sum/1").mkdir(parents=True)
    (tmp_path / "crashing_sum/1/model.py").write_text(CRASHING_SUM)
    (tmp_path / "crashing_sum/config.toml").write_text(CRASHING_SUM_CONFIG)
    with serve(tmp_path) as running:
        url = f"{running.base}/v2/models/crashing_sum/infer"

        def send(x: int, **flags: bool) -> requests.Response:
            return requests.post(url, timeout=60, json={
                "parameters": {"sequence_id": 7, **{f"sequence_{k}": v for k, v in flags.items()}},
                "inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [x]}]})

        assert send(5, start=True).json()["outputs"][0]["data"] == [5]
        assert send(5).json()["outputs"][0]["data"] == [10]
        assert send(666).status_code == 500
        lost = send(5)  # the fresh instance never saw sequence 7
        assert lost.status_code == 400, lost.text
        assert ("inference request for sequence 7 to model 'crashing_sum' must specify the START flag on the "
                "first request of the sequence") in lost.json()["error"]
        assert send(1, start=True).json()["outputs"][0]["data"] == [1]
        assert send(2).json()["outputs"][0]["data"] == [3]


def test_an_ensembles_sequence_reaches_its_stateful_step(server: RunningServer) -> None:
    """As Triton's ensemble scheduler: the request's correlation ID and START/END flags go to each
    step, so a stateful step keeps the sequence's state (it was refused: no correlation ID)."""
    def value(module: Any, number: float) -> Any:
        given = module.InferInput("VALUE", [1], "FP32")
        given.set_data_from_numpy(np.array([number], dtype=np.float32))
        return given

    with httpclient.InferenceServerClient(server.url) as h, grpcclient.InferenceServerClient(server.grpc_url) as g:
        for client, module, sequence_id in ((h, httpclient, 61), (g, grpcclient, 62)):
            sums = [client.infer("accumulate_pipeline", [value(module, number)], sequence_id=sequence_id,
                                 sequence_start=index == 0, sequence_end=index == 2).as_numpy("TOTAL").tolist()
                    for index, number in enumerate((1.5, 2.0, 4.0))]
            assert sums == [[1.5], [3.5], [7.5]]
            with pytest.raises(InferenceServerException) as caught:  # its END ended the step's sequence too
                client.infer("accumulate_pipeline", [value(module, 1.0)], sequence_id=sequence_id)
            assert "must specify the START flag" in caught.value.message()


def test_an_unload_answers_every_request_its_sequences_had_queued(tmp_path: Path) -> None:
    """Requests of a sequence queued behind each other on one stream when the model unloads: the
    drain waits for all of them (each was an internal error once its lane had shut)."""
    models.write(tmp_path / "slow/1/model.py", sequence_models.ORDERED.replace("0.02", "0.15"))
    models.write(tmp_path / "slow/config.toml", sequence_models.ORDERED_CONFIG)
    answers: queue.Queue[Any] = queue.Queue()
    with serve(tmp_path, "--model-control", "explicit", "--load-model", "*", grpc=True) as running, \
            grpcclient.InferenceServerClient(running.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        for index in range(8):
            given = grpcclient.InferInput("X", [1], "FP32")
            given.set_data_from_numpy(np.array([index], dtype=np.float32))
            client.async_stream_infer("slow", [given], sequence_id=5, sequence_start=index == 0)
        first = answers.get(timeout=30)
        unloaded = requests.post(f"{running.base}/v2/repository/models/slow/unload", timeout=60)
        got = [first] + [answers.get(timeout=30) for _ in range(7)]
        client.stop_stream()
        assert unloaded.status_code == 200, unloaded.text
    assert not [item for item in got if isinstance(item, InferenceServerException)], got
    assert [item.as_numpy("ORDER").tolist() for item in got] == [list(range(n + 1)) for n in range(8)]
