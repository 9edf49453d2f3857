"""A Triton Python model (config.pbtxt) whose ``execute`` never returns: such calls have no response
timeout, as in Triton, so the client waits; a SIGTERM still ends the server within its drain timeout,
the waiting client is answered with an error, and no instance process is left behind; so too with
a decoupled model's async executions that never end, more of them than run at once."""

from __future__ import annotations

import queue
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests import models
from tests.conftest import serve

MODEL = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        while True:
            time.sleep(1)
"""

CONFIG = """
backend: "python"
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _running(pids: set[int]) -> list[int]:
    """Those of ``pids`` still running (not gone, not zombies)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.append(pid)
    return running


def _infer(url: str) -> object:
    given = httpclient.InferInput("IN", [1], "FP32")
    given.set_data_from_numpy(np.array([1.0], np.float32))
    try:
        return httpclient.InferenceServerClient(url, network_timeout=120).infer("hangs", [given])
    except Exception as exc:  # the answer when the server goes: an error, not a hang
        return exc


def test_a_sigterm_ends_a_server_whose_execute_hangs(tmp_path: Path) -> None:
    models.write(tmp_path / "hangs" / "1/model.py", MODEL)
    models.write(tmp_path / "hangs" / "config.pbtxt", CONFIG)
    with serve(tmp_path, "--drain-timeout", "3") as server, ThreadPoolExecutor(1) as pool:
        instances = _children(server.process.pid)
        assert instances, "the model's instance is a process of the server's"
        waiting = pool.submit(_infer, server.url)
        time.sleep(2.0)
        assert not waiting.done()
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
        assert time.monotonic() - started < 20
        answer = waiting.result(timeout=30)
        assert isinstance(answer, Exception), answer
    time.sleep(1.0)
    assert not _running(instances), f"instance processes left running: {_running(instances)}"


ASYNC_MODEL = """
import asyncio


class TritonPythonModel:
    async def execute(self, requests):
        await asyncio.Event().wait()  # never set
"""


def test_a_sigterm_ends_a_server_with_70_async_executions_that_never_end(tmp_path: Path) -> None:
    """A decoupled model's async executions share the instance's channel (64 at once, the rest
    waiting): a drain that times out still ends the server and answers every stream."""
    models.write(tmp_path / "hangs" / "1/model.py", ASYNC_MODEL)
    models.write(tmp_path / "hangs" / "config.pbtxt", CONFIG + "model_transaction_policy { decoupled: true }\n")
    came: queue.Queue[object] = queue.Queue()
    with serve(tmp_path, "--drain-timeout", "3", grpc=True) as server:
        instances = _children(server.process.pid)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.start_stream(callback=lambda result, error: came.put(error or result))
        given = grpcclient.InferInput("IN", [1], "FP32")
        given.set_data_from_numpy(np.array([1.0], np.float32))
        for index in range(70):
            client.async_stream_infer("hangs", [given], request_id=str(index))
        time.sleep(2.0)
        assert came.empty()
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
        assert time.monotonic() - started < 20
        answer = came.get(timeout=30)  # the stream ends with an error: nothing waits on
        assert isinstance(answer, Exception), answer
        client.close()
    time.sleep(1.0)
    assert not _running(instances), f"instance processes left running: {_running(instances)}"
