"""`inferd bench` against a running server produces its table, JSON and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, RunningServer, serve


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """The examples repository with only mlp_onnx loaded, for both tests: bench only sends inference
    requests and reads /metrics before and after its load (the server keeps no state it changes)."""
    with serve(ROOT / "examples/models", "--model-control", "explicit", "--load-model", "mlp_onnx",
               grpc=True) as running:
        yield running


def test_bench_json_and_binary(server: RunningServer, tmp_path: Path) -> None:
    for binary in (False, True):
        out = tmp_path / f"bench-{binary}.json"
        command = [sys.executable, "-m", "inferd", "bench", "-m", "mlp_onnx", "--url", server.base,
                   "--concurrency", "1,4", "--duration", "1", "--warmup", "0.2", "--json", str(out)]
        if binary:
            command += ["--binary", "--processes", "2", "--plot", str(tmp_path / "plot.png")]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "| concurrency | req/s |" in done.stdout
        report = json.loads(out.read_text())
        assert [row["concurrency"] for row in report["rows"]] == [1, 4]
        for row in report["rows"]:
            assert row["requests"] > 10 and row["errors"] == 0
            assert 0 < row["p50_ms"] <= row["p99_ms"]
            assert row["server_compute_ms"] is not None and row["server_compute_ms"] > 0
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_bench_over_grpc_typed_and_raw(server: RunningServer, tmp_path: Path) -> None:
    for raw in (False, True):
        out = tmp_path / f"grpc-{raw}.json"
        command = [sys.executable, "-m", "inferd", "bench", "-m", "mlp_onnx", "--url", server.base,
                   "--grpc", server.grpc_url, "--concurrency", "2", "--duration", "1", "--warmup", "0.2",
                   "--json", str(out)] + (["--binary"] if raw else [])
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert ("raw gRPC" if raw else "typed gRPC") in done.stdout
        row = json.loads(out.read_text())["rows"][0]
        assert row["requests"] > 10 and row["errors"] == 0
