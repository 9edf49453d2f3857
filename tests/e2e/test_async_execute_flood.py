"""More ``async def execute`` calls of a decoupled Triton Python model than one instance runs at
once (64): the rest wait their turn and every stream is answered; an instance that dies with all of
them in flight or waiting answers each one (an error or, run again on its replacement, a result),
none is left hanging, and the replacement serves."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from tests import models
from tests.conftest import RunningServer, serve
from tests.e2e.test_triton_async_execute import CONFIG, SLEEPS, _wait

CALLS = 100


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("async_flood_repo")
    models.write(root / "sleeps" / "1/model.py", SLEEPS)
    models.write(root / "sleeps" / "config.pbtxt", CONFIG.format(extra="model_transaction_policy { decoupled: true }"))
    with serve(root, grpc=True) as running:
        yield running


def _send(server: RunningServer, waits: list[float], within: float) -> list[object]:
    """Every request on one stream; what came for each (a result or an error), within ``within`` s."""
    came: queue.Queue[object] = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: came.put(error or result))
        for index, seconds in enumerate(waits):
            client.async_stream_infer("sleeps", _wait(seconds), request_id=f"flood-{index}")
            if seconds < 0:
                time.sleep(0.5)
        deadline = time.monotonic() + within
        answers = [came.get(timeout=max(deadline - time.monotonic(), 0.1)) for _ in waits]
        client.stop_stream()
    return answers


def test_past_64_at_once_the_rest_wait_and_every_stream_is_answered(server: RunningServer) -> None:
    started = time.monotonic()
    answers = _send(server, [1.0] * CALLS, within=30)
    took = time.monotonic() - started
    assert not [answer for answer in answers if isinstance(answer, Exception)]
    assert 2.0 <= took < 10.0, took  # two rounds of about a second: 64, then 36


def test_an_instance_dying_with_more_than_64_calls_answers_each_and_comes_back(server: RunningServer) -> None:
    answers = _send(server, [3.0] * (CALLS - 1) + [-1.0], within=60)
    errors = [answer for answer in answers if isinstance(answer, Exception)]
    assert errors and all("instance" in str(error) for error in errors), errors[:3]
    deadline = time.monotonic() + 60
    while True:  # the replacement serves
        answer = _send(server, [0.1], within=10)[0]
        if not isinstance(answer, Exception):
            break
        assert time.monotonic() < deadline, answer
        time.sleep(0.5)
    started = time.monotonic()  # with its 64 at once: none of the dead one's calls is still counted
    assert not [answer for answer in _send(server, [1.0] * 64, within=30) if isinstance(answer, Exception)]
    assert time.monotonic() - started < 5.0


LATE = """
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        sender = requests[0].get_response_sender()
        await asyncio.sleep(float(pb_utils.get_input_tensor_by_name(requests[0], "WAIT").as_numpy()[0]))
        for _ in range(3):  # the client went long ago; cancel is never looked at
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.zeros(2, np.float32))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def test_answers_sent_after_the_client_cancelled_are_dropped_and_the_instance_serves_on(
        tmp_path: Path) -> None:
    models.write(tmp_path / "late" / "1/model.py", LATE)
    decoupled = "model_transaction_policy { decoupled: true }"
    models.write(tmp_path / "late" / "config.pbtxt", CONFIG.format(extra=decoupled))
    with serve(tmp_path, grpc=True) as server:
        for _ in range(2):  # more than 64 cancelled calls answering late, twice
            with grpcclient.InferenceServerClient(server.grpc_url) as client:
                client.start_stream(callback=lambda result, error: None)
                for index in range(80):
                    client.async_stream_infer("late", _wait(1.0), request_id=f"late-{index}")
                time.sleep(0.3)
                client.stop_stream(cancel_requests=True)
        time.sleep(2.5)  # every late answer sent
        came: queue.Queue[object] = queue.Queue()
        started = time.monotonic()
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            client.start_stream(callback=lambda result, error: came.put(error or result))
            client.async_stream_infer("late", _wait(0.1), request_id="after")
            answers = [came.get(timeout=20) for _ in range(3)]
            client.stop_stream()
        assert not [answer for answer in answers if isinstance(answer, Exception)], answers
        assert time.monotonic() - started < 5
        assert server.process.poll() is None
        assert "Traceback" not in server.log(), server.log()[-3000:]
