"""A flood of requests of several sizes at a model whose batches wait as Triton's do (``inferd.batch_wait``
delay): each answer is its own request's, whole, while held batches form and go."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import RunningServer, serve
from tests.e2e.test_batch_wait import _wait
from tests.models import write

DOUBLES = '''
import numpy as np

class Model:
    def infer(self, inputs):
        return {"y": inputs["x"] * 2}
'''

CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 300000 }
"""

REQUESTS = 240


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write(tmp_path / "doubles" / "1/model.py", DOUBLES)
    write(tmp_path / "doubles" / "config.pbtxt", CONFIG + _wait("delay"))
    return tmp_path


def _double(server: RunningServer, index: int) -> tuple[int, np.ndarray, np.ndarray]:
    rows = 1 + index % 3  # 1, 2 or 3 rows: batches that cannot grow past 8 go, others wait
    given = (np.arange(rows, dtype=np.float32) + index * 10).reshape(rows, 1)
    tensor = grpcclient.InferInput("x", [rows, 1], "FP32")
    tensor.set_data_from_numpy(given)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        answer = client.infer("doubles", [tensor]).as_numpy("y")
    return index, given, answer


def test_a_flood_at_a_waiting_batcher_answers_each_request_its_own(root: Path) -> None:
    with serve(root, grpc=True) as server, ThreadPoolExecutor(48) as pool:
        started = time.monotonic()
        answers = list(pool.map(lambda index: _double(server, index), range(REQUESTS)))
        took = time.monotonic() - started
    for index, given, answer in answers:
        assert answer.shape == given.shape and (answer == given * 2).all(), (index, given, answer)
    assert took < 60, took

