"""Many clients asking at once whether a Triton Python model whose ``is_ready()`` hangs is ready:
each is told "not ready" within the check's five seconds, and meanwhile the rest of the server goes
on, a large request to another model included (its body is decoded on a thread, as the checks wait
on threads: a flood of waiting checks must not take them all)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests import models
from tests.conftest import RunningServer, serve

MODEL = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        given = [pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() for r in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x)]) for x in given]
{is_ready}
"""

HANGS = "\n    def is_ready(self):\n        time.sleep(3600)\n        return True\n"

CONFIG = """
backend: "python"
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""

CHECKS = 24  # more than the server's default thread pool has threads (min(32, cores + 4))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("flood_repo")
    for name, is_ready in (("hangs", HANGS), ("plain", "")):
        models.write(root / name / "1/model.py", MODEL.format(is_ready=is_ready))
        models.write(root / name / "config.pbtxt", CONFIG)
    with serve(root) as running:
        yield running


def _ready_status(server: RunningServer, name: str) -> tuple[int, float]:
    started = time.monotonic()
    status = requests.get(f"{server.base}/v2/models/{name}/ready", timeout=60).status_code
    return status, time.monotonic() - started


def _large_infer(server: RunningServer) -> tuple[int, float]:
    """An inference whose body (a padding parameter) is large enough to be decoded on a thread."""
    body = {"parameters": {"padding": "x" * 400_000},
            "inputs": [{"name": "IN", "shape": [1], "datatype": "FP32", "data": [2.0]}]}
    started = time.monotonic()
    answer = requests.post(f"{server.base}/v2/models/plain/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2.0]
    return answer.status_code, time.monotonic() - started


def test_a_flood_of_checks_of_a_hanging_is_ready_holds_nothing_else(server: RunningServer) -> None:
    with ThreadPoolExecutor(CHECKS) as pool:
        checks = [pool.submit(_ready_status, server, "hangs") for _ in range(CHECKS)]
        time.sleep(1.0)  # every check asked and waiting
        _, took = _large_infer(server)
        assert took < 2.5, f"a large request took {took:.1f} s while readiness checks waited"
        assert _ready_status(server, "plain")[0] == 200
        answers = [check.result() for check in checks]
    assert {status for status, _ in answers} == {503}, answers  # not ready
    assert max(seconds for _, seconds in answers) < 9.0, answers
