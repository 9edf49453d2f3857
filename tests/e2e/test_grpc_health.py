"""grpc.health.v1.Health as Kubernetes' gRPC probes call it: NOT_SERVING while models load,
SERVING once ready, NOT_SERVING when draining (seen by a Watch opened before SIGTERM)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import serve
from tests.models import write

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

SLOW_MODEL = '''
import time

class Model:
    def load(self):
        time.sleep(4)

    def infer(self, inputs):
        return {"y": inputs["x"]}
'''

CONFIG = """
backend = "python"
[[input]]
name = "x"
datatype = "FP32"
shape = [-1]
[[output]]
name = "y"
datatype = "FP32"
shape = [-1]
"""


def check(stub: health_pb2_grpc.HealthStub, service: str = "") -> int:
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_health_follows_readiness_and_drain(tmp_path: Path) -> None:
    write(tmp_path / "slow/config.toml", CONFIG)
    write(tmp_path / "slow/1/model.py", SLOW_MODEL)
    with serve(tmp_path, "--drain-timeout", "10", grpc=True, wait_ready=False) as server, \
            grpc.insecure_channel(server.grpc_url) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)  # HTTP listens first
        stub = health_pb2_grpc.HealthStub(channel)
        assert check(stub) == NOT_SERVING  # the model is still loading
        assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code != 200
        deadline = time.monotonic() + 60
        while check(stub) != SERVING:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
        for service in ("inference.GRPCInferenceService", "tensorflow.serving.PredictionService"):
            assert check(stub, service) == SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            check(stub, "no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == SERVING
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        assert list(watch) == []  # then the stream ends (status OK)
        assert watch.code() == grpc.StatusCode.OK
        assert server.process.wait(20) == 0
        # an open Watch does not hold the drain for its whole timeout
        assert time.monotonic() - started < 8, server.log()
        assert "Traceback" not in server.log() and "rror" not in server.log(), server.log()
