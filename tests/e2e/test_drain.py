"""SIGTERM drains what is in flight, and nothing idle holds the drain: an open gRPC stream, an
HTTP/1.1 keep-alive connection or an HTTP/2 connection with nothing running lets the server exit
at once instead of after --drain-timeout."""

from __future__ import annotations

import queue
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import serve
from tests.models import write

SLOW = """
import time

class Model:
    def infer(self, inputs):
        time.sleep(float(inputs["x"].reshape(-1)[0]))
        return {"y": inputs["x"]}
"""
CONFIG = ('backend = "python"\n[[input]]\nname = "x"\ndatatype = "FP64"\nshape = [1]\n'
          '[[output]]\nname = "y"\ndatatype = "FP64"\nshape = [1]\n')
DRAIN = 20.0  # far more than any check below may take


def slow_repo(root: Path) -> Path:
    write(root / "slow/1/model.py", SLOW)
    write(root / "slow/config.toml", CONFIG)
    return root


def seconds_input(seconds: float) -> grpcclient.InferInput:
    given = grpcclient.InferInput("x", [1], "FP64")
    given.set_data_from_numpy(np.array([seconds]))
    return given


@pytest.mark.parametrize("args", [(), ("--grpc-server", "grpcio"), ("--workers", "1")],
                         ids=["native", "grpcio", "workers"])
def test_an_idle_stream_ends_with_unavailable_after_its_requests_are_answered(tmp_path: Path,
                                                                               args: tuple[str, ...]) -> None:
    with serve(slow_repo(tmp_path), "--drain-timeout", str(DRAIN), *args, grpc=True) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        answers: queue.Queue[object] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        try:
            client.async_stream_infer("slow", [seconds_input(0.0)])
            first = answers.get(timeout=30)
            assert not isinstance(first, InferenceServerException), first
            client.async_stream_infer("slow", [seconds_input(1.5)])  # in flight when SIGTERM comes
            time.sleep(0.5)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            answered = answers.get(timeout=DRAIN)
            assert not isinstance(answered, InferenceServerException), answered
            assert answered.as_numpy("y").tolist() == [1.5]  # type: ignore[attr-defined]
            ended = answers.get(timeout=DRAIN)
            assert isinstance(ended, InferenceServerException), ended
            assert ended.status() == "StatusCode.UNAVAILABLE", ended
            assert "shutting down" in str(ended.message()), ended
            assert time.monotonic() - started < DRAIN / 2, "the stream ended only at --drain-timeout"
            assert server.process.wait(DRAIN) == 0
            assert time.monotonic() - started < DRAIN / 2, "the idle stream held the drain"
        finally:
            client.stop_stream()
            client.close()


def test_a_worker_whose_drain_runs_to_the_limit_exits_on_its_own(tmp_path: Path) -> None:
    """The supervisor gives a front-end worker time to exit after its own --drain-timeout ran out,
    instead of killing it at the very moment it stops waiting."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [30.0]}]}  # never done in time
    with serve(slow_repo(tmp_path), "--drain-timeout", "1", "--workers", "1") as server, \
            ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, f"{server.base}/v2/models/slow/infer", json=body, timeout=30)
        time.sleep(0.5)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
        took = time.monotonic() - started
        with pytest.raises(requests.ConnectionError):
            pending.result()
    assert took < 1 + 2 + 2 + 2, f"--drain-timeout 1 took {took:.1f} s"  # drain, worker exit, unload grace
    assert "did not exit within its drain" not in server.log(), server.log()


def test_a_grpc_connection_the_client_closed_as_the_server_stops_leaves_no_error(tmp_path: Path) -> None:
    """The client's FIN makes the server send its own and wait a second for the socket to close;
    a SIGTERM in that second sends a GOAWAY to every connection, this one too: that write after
    the FIN raised "Cannot call write() after write_eof()" in the loop's callbacks."""
    with serve(slow_repo(tmp_path), "--drain-timeout", str(DRAIN), grpc=True) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.infer("slow", [seconds_input(0.0)]).as_numpy("y").tolist() == [0.0]
        client.close()
        time.sleep(0.1)  # the FIN has come
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(DRAIN) == 0
        time.sleep(0.2)  # the log pump reads the last lines
        assert "Exception in callback" not in server.log(), server.log()
