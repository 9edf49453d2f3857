"""Triton's dynamic-batcher queue with Triton's clients on the real server: priority levels from a
config.pbtxt and the request's ``priority``, each level's queue bound, DELAY as a timeout action,
the model configuration answering the keys back, and the pending request count on /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, holds_in_one_of, serve
from tests.models import write

# each execution's number, in the order they ran; x[1] is how long the execution sleeps
ORDERED = '''
import time
import numpy as np

class Model:
    executions = 0

    def infer(self, inputs):
        x = inputs["x"]
        Model.executions += 1
        time.sleep(float(x[0, 1]))
        return {"order": np.full((x.shape[0], 1), Model.executions, dtype=np.int32)}
'''

TENSORS = """
backend: "python"
max_batch_size: 1
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "order" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

PRIORITIES = TENSORS + """
dynamic_batching {
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { max_queue_size: 8 }
  priority_queue_policy { key: 1 value: { max_queue_size: 1 } }
}
"""

DELAYED = TENSORS + """
dynamic_batching { default_queue_policy { default_timeout_microseconds: 600000 timeout_action: DELAY } }
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root: Path = tmp_path_factory.mktemp("triton_queue")
    for name, config in (("prio", PRIORITIES), ("bounded", PRIORITIES), ("delayed", DELAYED),
                         ("plain", TENSORS + "dynamic_batching { }"), ("unbatched", TENSORS)):
        write(root / name / "1/model.py", ORDERED)
        write(root / name / "config.pbtxt", config)
    return root


@pytest.fixture(scope="module", params=[0, 1], ids=["one-process", "workers"])
def server(repo: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The priority crosses from a front-end worker to the model process with the request."""
    with serve(repo, "--workers", str(request.param), grpc=True) as running:
        yield running


def _order(server: RunningServer, wire: str, model: str, value: float, sleep_s: float = 0.0,
           priority: int = 0) -> int:
    """Which execution answered this request (tritonclient over ``wire``)."""
    module = grpcclient if wire == "grpc" else httpclient
    client = module.InferenceServerClient(server.grpc_url if wire == "grpc" else server.url)
    tensor = module.InferInput("x", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.array([[value, sleep_s]], np.float32))
    return int(client.infer(model, [tensor], priority=priority).as_numpy("order")[0, 0])


def _pending(server: RunningServer, model: str) -> int:
    text = requests.get(f"{server.base}/metrics", timeout=10).text
    assert "# TYPE nv_inference_pending_request_count gauge" in text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("nv_inference_pending"))
    return int(lines[f'nv_inference_pending_request_count{{model="{model}",version="1"}}'])


def test_a_high_priority_request_overtakes_queued_low_priority_ones(server: RunningServer) -> None:
    with ThreadPoolExecutor(6) as pool:
        running = pool.submit(_order, server, "http", "prio", 0, 1.5)
        time.sleep(0.4)  # it runs; the next ones queue behind it, in this order
        low: list[Future[int]] = []
        for value, priority in ((1, 0), (2, 2), (3, 7)):  # 0 and a level the model lacks: the default level, 2
            low.append(pool.submit(_order, server, "http", "prio", value, priority=priority))
            time.sleep(0.1)
        high = pool.submit(_order, server, "grpc", "prio", 4, priority=1)
        first, top = running.result(), high.result()
        rest = [f.result() for f in low]
    assert top == first + 1, (first, top, rest)
    assert rest == [first + 2, first + 3, first + 4]


def test_each_priority_level_has_its_own_queue_bound_and_pending_requests_show_on_metrics(
        server: RunningServer) -> None:
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(_order, server, "http", "bounded", 0, 1.5)
        time.sleep(0.4)
        queued = [pool.submit(_order, server, "grpc", "bounded", 1, priority=1),
                  pool.submit(_order, server, "http", "bounded", 2, priority=2)]
        time.sleep(0.3)
        assert _pending(server, "bounded") == 2  # queued, not yet running: Triton's pending request count
        for wire, says in (("http", "503"), ("grpc", "StatusCode.UNAVAILABLE")):
            with pytest.raises(InferenceServerException, match="queue for priority level 1 is full") as refused:
                _order(server, wire, "bounded", 3, priority=1)
            assert refused.value.status() == says
            assert "max_queue_size = 1" in str(refused.value)
        assert running.result() < min(f.result() for f in queued)
    assert _pending(server, "bounded") == 0


@pytest.mark.parametrize("model", ["plain", "unbatched"])
def test_the_pending_request_count_is_the_requests_queued_behind_a_running_one(server: RunningServer,
                                                                               model: str) -> None:
    """Triton's nv_inference_pending_request_count: requests received and not yet executing, for a
    dynamic batcher's queue and for the default scheduler's backlog alike."""
    assert _pending(server, model) == 0
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(_order, server, "http", model, 0, 1.2)
        time.sleep(0.4)
        queued = [pool.submit(_order, server, wire, model, 1) for wire in ("http", "grpc")]
        time.sleep(0.3)
        assert _pending(server, model) == 2
        assert running.result() < min(f.result() for f in queued)
    assert _pending(server, model) == 0


def test_a_priority_that_is_not_a_level_is_a_400_or_invalid_argument_naming_the_range(
        server: RunningServer) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 0]}]}
    for value in (-1, "high", 1.5):
        answer = requests.post(f"{server.base}/v2/models/prio/infer", json={**body, "parameters": {"priority": value}},
                               timeout=10)
        assert answer.status_code == 400, answer.text
        assert "parameters.priority must be a priority level: an integer from 0 to 18446744073709551615" in \
            answer.json()["error"]
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))
    for parameter in (service_pb2.InferParameter(int64_param=-1), service_pb2.InferParameter(string_param="1")):
        message = service_pb2.ModelInferRequest(model_name="prio", raw_input_contents=[
            np.array([[1, 0]], np.float32).tobytes()])
        message.inputs.add(name="x", datatype="FP32", shape=[1, 2])
        message.parameters["priority"].CopyFrom(parameter)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(message, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "an integer from 0 to 18446744073709551615" in refused.value.details()


def test_delay_runs_a_timed_out_request_after_those_still_in_time(server: RunningServer) -> None:
    """Triton's timeout_action DELAY: the request that waited past 0.6 s is not rejected; it runs
    after the one that came later and is still in time."""
    def once() -> str | None:
        with ThreadPoolExecutor(3) as pool:
            running = pool.submit(_order, server, "http", "delayed", 0, 2.0)
            time.sleep(0.3)
            early = pool.submit(_order, server, "http", "delayed", 1)  # its 0.6 s pass while the first runs
            time.sleep(1.4)
            later = pool.submit(_order, server, "grpc", "delayed", 2)  # still in time when the first ends
            first, late_one, early_one = running.result(), later.result(), early.result()
        if (late_one, early_one) == (first + 1, first + 2):
            return None
        return f"ran in the order {first}, {late_one} (later), {early_one} (earlier)"

    holds_in_one_of(2, once)


def test_the_model_configuration_answers_the_priority_keys_back(server: RunningServer) -> None:
    batching = httpclient.InferenceServerClient(server.url).get_model_config("prio")["dynamic_batching"]
    assert (batching["priority_levels"], batching["default_priority_level"]) == (2, 2)
    assert batching["default_queue_policy"]["max_queue_size"] == 8
    assert batching["priority_queue_policy"]["1"]["max_queue_size"] == 1
    message = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("delayed").config
    policy = message.dynamic_batching.default_queue_policy
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.DELAY
    assert policy.default_timeout_microseconds == 600000
    levels = grpcclient.InferenceServerClient(server.grpc_url).get_model_config("prio").config.dynamic_batching
    assert levels.priority_levels == 2 and levels.priority_queue_policy[1].max_queue_size == 1
