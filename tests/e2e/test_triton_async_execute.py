"""A decoupled Triton Python model's ``async def execute`` runs several at once on one instance, as
python_backend's stub runs it in the background (pb_stub.cc, RunCoroutine(in_background); Triton's
QA async_execute); a model that is not decoupled is still awaited one execution at a time. Each
stream keeps its own cancel, and an instance that dies fails every stream it ran, then restarts."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests import models
from tests.conftest import RunningServer, serve

SLEEPS = """
import asyncio
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        request = requests[0]
        seconds = float(pb_utils.get_input_tensor_by_name(request, "WAIT").as_numpy()[0])
        if seconds < 0:
            os._exit(3)
        sender = request.get_response_sender()
        waited = 0.0
        while waited < seconds and not sender.is_cancelled():
            await asyncio.sleep(0.1)
            waited += 0.1
        told = "cancelled" if sender.is_cancelled() else "not cancelled"
        pb_utils.Logger.log_info(f"[sleeps] {request.request_id()} {told}")
        if not sender.is_cancelled():
            out = pb_utils.Tensor("OUT", np.array([seconds, os.getpid()], np.float32))
            sender.send(pb_utils.InferenceResponse([out]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

PLAIN = """
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        seconds = float(pb_utils.get_input_tensor_by_name(requests[0], "WAIT").as_numpy()[0])
        await asyncio.sleep(seconds)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([seconds, 0], np.float32))])]
"""

CONFIG = """
backend: "python"
input [ {{ name: "WAIT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{extra}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("async_execute_repo")
    models.write(root / "sleeps" / "1/model.py", SLEEPS)
    models.write(root / "sleeps" / "config.pbtxt", CONFIG.format(extra="model_transaction_policy { decoupled: true }"))
    models.write(root / "plain" / "1/model.py", PLAIN)
    models.write(root / "plain" / "config.pbtxt", CONFIG.format(extra=""))
    with serve(root, grpc=True) as running:
        yield running


def _wait(seconds: float) -> list[grpcclient.InferInput]:
    wait = grpcclient.InferInput("WAIT", [1], "FP32")
    wait.set_data_from_numpy(np.array([seconds], np.float32))
    return [wait]


def _stream(server: RunningServer, waits: list[float], gap: float = 0.0, within: float = 30.0
            ) -> list[tuple[float, float, float]]:
    """Each request on one stream; per answer in the order they came: (its WAIT, the pid that ran
    it, when it came after the first was sent)."""
    came: queue.Queue[object] = queue.Queue()
    answers = []
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: came.put(error or result))
        started = time.monotonic()
        for index, seconds in enumerate(waits):
            client.async_stream_infer("sleeps", _wait(seconds), request_id=f"stream-{index}")
            time.sleep(gap)
        for _ in waits:
            answer = came.get(timeout=within)
            assert not isinstance(answer, Exception), answer
            seconds, pid = answer.as_numpy("OUT")  # type: ignore[attr-defined]
            answers.append((float(seconds), float(pid), time.monotonic() - started))
        client.stop_stream()
    return answers


def test_one_instance_runs_several_async_executions_at_once(server: RunningServer) -> None:
    answers = _stream(server, [2.0] * 4)
    assert len({pid for _, pid, _ in answers}) == 1  # one instance process
    assert max(after for _, _, after in answers) < 4.5  # one after another: 8 s


def test_a_shorter_execution_answers_first(server: RunningServer) -> None:
    answers = _stream(server, [3.0, 0.5], gap=0.3)
    assert [seconds for seconds, _, _ in answers] == [0.5, 3.0]


def test_a_model_that_is_not_decoupled_is_awaited_one_execution_at_a_time(server: RunningServer) -> None:
    done: queue.Queue[object] = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        started = time.monotonic()
        for _ in range(2):
            client.async_infer("plain", _wait(1.0), lambda result, error: done.put(error or result))
        for _ in range(2):
            assert not isinstance(done.get(timeout=30), Exception)
        assert time.monotonic() - started >= 1.9  # as python_backend: RunCoroutine(in_background=false)


def test_each_stream_keeps_its_own_cancel(server: RunningServer) -> None:
    kept: queue.Queue[object] = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as leaving, \
            grpcclient.InferenceServerClient(server.grpc_url) as staying:
        staying.start_stream(callback=lambda result, error: kept.put(error or result))
        staying.async_stream_infer("sleeps", _wait(2.0), request_id="cancel-kept")
        leaving.start_stream(callback=lambda result, error: None)
        leaving.async_stream_infer("sleeps", _wait(30.0), request_id="cancel-gone")
        time.sleep(1.0)
        leaving.stop_stream(cancel_requests=True)
        answer = kept.get(timeout=30)
        staying.stop_stream()
    assert not isinstance(answer, Exception), answer
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("[sleeps] cancel-gone" in line for line in server.lines):
        time.sleep(0.1)
    log = server.log()
    assert "[sleeps] cancel-gone cancelled" in log, log[-3000:]
    assert "[sleeps] cancel-kept not cancelled" in log


def test_an_instance_that_dies_fails_each_stream_it_ran_and_restarts(server: RunningServer) -> None:
    came: queue.Queue[object] = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: came.put(error or result))
        client.async_stream_infer("sleeps", _wait(5.0), request_id="dies-running")
        time.sleep(0.5)
        client.async_stream_infer("sleeps", _wait(-1.0), request_id="dies-exit")
        errors = [came.get(timeout=30) for _ in range(2)]
        client.stop_stream()
    assert all(isinstance(error, Exception) and "instance" in str(error) for error in errors), errors
    deadline = time.monotonic() + 60
    while True:  # the replacement serves
        try:
            assert len(_stream(server, [0.1], within=10)) == 1
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
