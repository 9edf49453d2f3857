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


def call_all_on_one_channel(url: str, count: int, size: int = 8) -> list[str]:
    """``count`` calls at once over one client's channel: one connection, so one worker's."""
    client = triton_grpc.InferenceServerClient(url)
    tensor = triton_grpc.InferInput("in", [size], "UINT8")
    tensor.set_data_from_numpy(np.full(size, 7, dtype=np.uint8))

    def call(_: int) -> str:
        try:
            client.infer("slow", [tensor])
        except InferenceServerException as exc:
            return f"{exc.status()} {exc.message()}"
        return "ok"

    with ThreadPoolExecutor(count) as pool:
        outcomes = list(pool.map(call, range(count)))
    client.close()
    return outcomes


def test_workers_count_calls_together_so_one_connection_gets_the_servers_limit(repo: Path) -> None:
    """The kernel spreads connections over --workers, not calls: a connection's calls are one
    worker's. The limit is the server's (8), not a worker's share of it (2 of 4 workers)."""
    with serve(repo, "--workers", "4", "--max-connections", "8", grpc=True) as server:
        assert call_all_on_one_channel(server.grpc_url, 6) == ["ok"] * 6
        outcomes = call_all_on_one_channel(server.grpc_url, 11)
        assert outcomes.count("ok") == 8, outcomes
        assert all(o.startswith("StatusCode.RESOURCE_EXHAUSTED") for o in outcomes if o != "ok"), outcomes
        assert call_all_on_one_channel(server.grpc_url, 8) == ["ok"] * 8  # every worker's calls released


def test_workers_hold_request_bytes_together_against_the_servers_budget(repo: Path) -> None:
    """A worker's share of --max-inflight-size was 20 MiB here (one 12 MiB call at a time on a
    connection); the budget is the server's 40 MiB, held by all workers together."""
    with serve(repo, "--workers", "4", "--max-body-size", "20MiB", "--max-inflight-size", "40MiB",
               grpc=True) as server:
        assert call_all_on_one_channel(server.grpc_url, 3, 12 * MIB) == ["ok"] * 3
        outcomes = call_all_on_one_channel(server.grpc_url, 4, 12 * MIB)
        assert outcomes.count("ok") == 3, outcomes
        assert all(o.startswith("StatusCode.RESOURCE_EXHAUSTED") and "--max-inflight-size" in o
                   for o in outcomes if o != "ok"), outcomes
