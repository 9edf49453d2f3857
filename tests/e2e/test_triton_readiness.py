"""A Triton Python model's own ``is_ready()`` answers the model ready endpoints, as python_backend
calls it (its README, "is_ready"): False, an exception or a value that is not a bool is "not ready";
``async def`` works too; a check slower than five seconds is "not ready" while it goes on, and the
next check waits for it and takes its answer. Inference is never held by a check (Triton's QA
model_readiness)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests import models
from tests.conftest import RunningServer, serve

MODEL = """
import asyncio
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.flag = os.environ["READINESS_FLAG"]

    def execute(self, requests):
        given = [pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() for r in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x)]) for x in given]

{is_ready}
"""

IS_READY = {
    "flagged": "    def is_ready(self):\n        return os.path.exists(self.flag)\n",
    "raises": "    def is_ready(self):\n        raise RuntimeError('the database is down')\n",
    "not_bool": "    def is_ready(self):\n        return 'ready'\n",
    "coroutine": "    async def is_ready(self):\n        await asyncio.sleep(0.1)\n        return True\n",
    "slow": "    def is_ready(self):\n        time.sleep(7)\n        return True\n",
    "none": "",
}

CONFIG = """
backend: "python"
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


@pytest.fixture(scope="module")
def flag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readiness_flag") / "ready"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, flag: Path, monkeypatch_module: pytest.MonkeyPatch
           ) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("readiness_repo")
    for name, body in IS_READY.items():
        models.write(root / name / "1/model.py", MODEL.format(is_ready=body))
        models.write(root / name / "config.pbtxt", CONFIG)
    monkeypatch_module.setenv("READINESS_FLAG", str(flag))
    with serve(root, grpc=True) as running:
        yield running


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _ready(server: RunningServer, name: str) -> tuple[bool, bool]:
    """The model ready endpoint's answer over HTTP and over gRPC."""
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}") as http, \
            grpcclient.InferenceServerClient(server.grpc_url) as grpc:
        return http.is_model_ready(name), grpc.is_model_ready(name)


def _infer(server: RunningServer, name: str) -> float:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        given = grpcclient.InferInput("IN", [1], "FP32")
        given.set_data_from_numpy(np.array([3.0], np.float32))
        return float(client.infer(name, [given]).as_numpy("OUT")[0])


def test_is_ready_is_asked_at_each_check(server: RunningServer, flag: Path) -> None:
    flag.unlink(missing_ok=True)
    assert _ready(server, "flagged") == (False, False)
    assert _infer(server, "flagged") == 3.0  # a model that says it is not ready still serves, as Triton's
    flag.touch()
    assert _ready(server, "flagged") == (True, True)
    flag.unlink()
    assert _ready(server, "flagged") == (False, False)


@pytest.mark.parametrize("name", ["raises", "not_bool"])
def test_a_check_that_fails_is_not_ready(server: RunningServer, name: str) -> None:
    assert _ready(server, name) == (False, False)
    assert _infer(server, name) == 3.0
    assert _ready(server, "none") == (True, True)


def test_async_is_ready(server: RunningServer) -> None:
    assert _ready(server, "coroutine") == (True, True)


def test_a_slow_check_is_not_ready_and_the_next_takes_its_answer(server: RunningServer) -> None:
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}") as http:
        started = time.monotonic()
        assert http.is_model_ready("slow") is False  # five seconds passed; the check goes on
        assert 4.5 < time.monotonic() - started < 7.0
        assert _infer(server, "slow") == 3.0  # while is_ready() runs in the instance process
        assert http.is_model_ready("slow") is True  # waited for the check in flight: its answer
        assert time.monotonic() - started < 9.0
