"""gRPC holds the same ground as HTTP: calls at once and request bytes held are bounded, and
the calls over either bound get RESOURCE_EXHAUSTED at once instead of growing the server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import serve
from tests.models import write

SLOW_MODEL = '''
import time

class Model:
    def infer(self, inputs):
        time.sleep(0.6)
        return {"out": inputs["in"][:4]}
'''

SLOW_CONFIG = """
backend = "python"
[instance_group]
kind = "cpu"
count = 8
[[input]]
name = "in"
datatype = "UINT8"
shape = [-1]
[[output]]
name = "out"
datatype = "UINT8"
shape = [-1]
"""
MIB = 1024 * 1024


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write(tmp_path / "slow/1/model.py", SLOW_MODEL)
    write(tmp_path / "slow/config.toml", SLOW_CONFIG)
    return tmp_path


def call_all(url: str, sizes: list[int]) -> list[str]:
    """Each call at once: 'ok' or its status code."""
    def call(size: int) -> str:
        client = triton_grpc.InferenceServerClient(url)
        tensor = triton_grpc.InferInput("in", [size], "UINT8")
        tensor.set_data_from_numpy(np.full(size, 7, dtype=np.uint8))
        try:
            result = client.infer("slow", [tensor])
        except InferenceServerException as exc:
            return f"{exc.status()} {exc.message()}"
        assert result.as_numpy("out").tolist() == [7] * min(size, 4)
        return "ok"

    with ThreadPoolExecutor(len(sizes)) as pool:
        return list(pool.map(call, sizes))


def test_request_bytes_over_the_shared_budget_get_resource_exhausted(repo: Path) -> None:
    with serve(repo, "--max-body-size", "20MiB", "--max-inflight-size", "30MiB", grpc=True) as server:
        outcomes = call_all(server.grpc_url, [12 * MIB] * 4)
        assert outcomes.count("ok") == 2, outcomes
        refused = [o for o in outcomes if o != "ok"]
        assert all(o.startswith("StatusCode.RESOURCE_EXHAUSTED") and "--max-inflight-size" in o
                   for o in refused), refused
        assert call_all(server.grpc_url, [12 * MIB] * 2) == ["ok", "ok"]  # released


def test_calls_over_the_limit_get_resource_exhausted(repo: Path) -> None:
    with serve(repo, "--max-connections", "3", grpc=True) as server:
        outcomes = call_all(server.grpc_url, [8] * 6)
        assert outcomes.count("ok") == 3, outcomes
        assert all(o.startswith("StatusCode.RESOURCE_EXHAUSTED") for o in outcomes if o != "ok"), outcomes
