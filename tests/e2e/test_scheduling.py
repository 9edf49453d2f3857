"""Batching, backpressure, deadlines, disconnects, instance pools and /metrics on the real server."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer, serve
from tests.models import write

SLOW_MODEL = '''
import threading, time
import numpy as np

class Model:
    running = 0
    lock = threading.Lock()

    def infer(self, inputs):
        x = inputs["x"]
        if x.reshape(-1)[0] == 666:
            raise ValueError("the model refuses 666")
        with Model.lock:
            Model.running += 1
            seen = Model.running
        time.sleep(float(x.reshape(-1)[-1]) if x.reshape(-1)[-1] < 5 else 0.02)
        with Model.lock:
            Model.running -= 1
        return {"y": x * 2, "running": np.full((x.shape[0], 1), seen, dtype=np.int32)}
'''

TENSORS = """
[[input]]
name = "x"
datatype = "FP32"
shape = [2]
[[output]]
name = "y"
datatype = "FP32"
shape = [2]
[[output]]
name = "running"
datatype = "INT32"
shape = [1]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("sched")
    configs = {
        "batched": "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_ms = 5\n",
        "batched_grpc": "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_ms = 5\n",
        "tiny_queue": "max_batch_size = 1\n[dynamic_batching]\nmax_queue_size = 2\n",
        "pool": "max_batch_size = 8\n[instance_group]\ncount = 3\nkind = \"cpu\"  # one process: a shared counter\n",
        "timeout_fixed": "max_batch_size = 1\n[dynamic_batching]\ndefault_timeout_ms = 1000\n",
        "timeout_override": "max_batch_size = 1\n[dynamic_batching]\ndefault_timeout_ms = 1000\n"
                            "allow_timeout_override = true\n",
    }
    for name, config in configs.items():
        write(root / name / "1/model.py", SLOW_MODEL)
        write(root / name / "config.toml", 'backend = "python"\n' + config + TENSORS)
    with serve(root, grpc=True) as running:
        yield running


FAILURES = "nv_inference_request_failure_total"  # as the Prometheus parser names a counter's samples


def infer(server: RunningServer, model: str, x: list[float], **params: object) -> requests.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": x}]}
    if params:
        body["parameters"] = params
    return requests.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=30)


def metrics(server: RunningServer) -> dict[str, list]:
    text = requests.get(f"{server.base}/metrics", timeout=10).text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def sample(families: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for family in families.values() for s in family
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_grpc_calls_batch_like_http_requests(server: RunningServer) -> None:
    """Concurrent gRPC calls reach the batcher together, so they share executions as HTTP requests do."""
    import numpy as np
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(server.grpc_url)

    def call(i: int) -> np.ndarray:
        tensor = triton.InferInput("x", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.array([[float(i), 0.03]], dtype=np.float32))
        return client.infer("batched_grpc", [tensor]).as_numpy("y")

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(call, range(96)))
    for i, answer in enumerate(answers):
        assert answer.tolist() == [[2.0 * i, pytest.approx(0.06)]]
    families = metrics(server)
    executions = sample(families, "inferd_batch_size_count", model="batched_grpc")
    assert sample(families, "inferd_batch_size_sum", model="batched_grpc") == 96
    assert executions < 96 / 2, f"{executions} executions for 96 gRPC calls: batches did not form"


def test_concurrent_requests_each_get_their_own_rows_in_real_batches(server: RunningServer) -> None:
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda i: infer(server, "batched", [float(i), 0.03]), range(96)))
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
        assert outputs["y"] == [2.0 * i, 0.06]
        assert "queue;dur=" in response.headers["Server-Timing"]
    families = metrics(server)
    executions = sample(families, "inferd_batch_size_count", model="batched")
    rows = sample(families, "inferd_batch_size_sum", model="batched")
    assert rows == 96
    assert executions < 96 / 2, f"{executions} executions for 96 requests: batches did not form"
    assert sample(families, "inferd_requests_total", model="batched", outcome="success") == 96


def test_full_queue_answers_503_at_once(server: RunningServer) -> None:
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: infer(server, "tiny_queue", [1.0, 0.3]), range(8)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(503) >= 3, codes
    assert set(codes) <= {200, 503}
    refused = next(r for r in responses if r.status_code == 503)
    assert "queue is full" in refused.json()["error"]
    assert sample(metrics(server), "inferd_requests_total", model="tiny_queue",
                  outcome="unavailable") == codes.count(503)


def test_deadline_passes_in_the_queue_and_the_request_never_runs(server: RunningServer) -> None:
    families = metrics(server)
    before = sample(families, "inferd_batch_size_count", model="tiny_queue")
    rejected = sample(families, FAILURES, model="tiny_queue", reason="REJECTED")
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(infer, server, "tiny_queue", [1.0, 0.4])
        time.sleep(0.1)
        late = infer(server, "tiny_queue", [2.0, 0.0], timeout=50_000)
        assert slow.result().status_code == 200
    assert late.status_code == 504
    assert "deadline passed" in late.json()["error"]
    families = metrics(server)
    assert sample(families, "inferd_batch_size_count", model="tiny_queue") == before + 1
    # Triton's reason for a timeout in the scheduler
    assert sample(families, FAILURES, model="tiny_queue", reason="REJECTED") == rejected + 1


def _queued_behind_a_slow_request(server: RunningServer, model: str, timeouts_us: tuple[int, ...]
                                  ) -> list[tuple[int, float]]:
    """Requests with these timeouts queue behind one that runs 2.5 s: each one's status and seconds."""
    def timed(timeout_us: int) -> tuple[int, float]:
        start = time.monotonic()
        status = infer(server, model, [2.0, 0.0], timeout=timeout_us).status_code
        return status, time.monotonic() - start

    with ThreadPoolExecutor(1 + len(timeouts_us)) as pool:
        slow = pool.submit(infer, server, model, [1.0, 2.5])
        time.sleep(0.2)
        answers = list(pool.map(timed, timeouts_us))
        assert slow.result().status_code == 200
    return answers


def test_a_requests_timeout_is_ignored_where_the_model_does_not_allow_an_override(server: RunningServer) -> None:
    """Triton's queue policy (core's scheduler_utils.cc, PolicyQueue::Enqueue): without
    allow_timeout_override the model's default_timeout applies to every queued request, whatever
    timeout the request asks; inferd let the request's replace it (0.1 s expired early, 10 s ran)."""
    (short, short_s), (long, long_s) = _queued_behind_a_slow_request(server, "timeout_fixed", (100_000, 10_000_000))
    assert (short, long) == (504, 504)
    assert short_s > 0.8 and long_s > 0.8, (short_s, long_s)  # the default's 1 s, not 0.1 s
    assert long_s < 2.0, long_s  # nor 10 s: it did not wait for the slow request to finish


def test_a_requests_timeout_may_only_shorten_the_default_where_the_model_allows_it(server: RunningServer) -> None:
    """With allow_timeout_override a request's timeout counts when it is shorter than the default
    (Triton: ``override_timeout_us < timeout_us``); a longer one does not extend the default."""
    (short, short_s), (long, long_s) = _queued_behind_a_slow_request(server, "timeout_override",
                                                                     (100_000, 10_000_000))
    assert (short, long) == (504, 504)
    assert short_s < 0.7, short_s  # its own 0.1 s
    assert 0.8 < long_s < 2.0, long_s  # the default's 1 s


def test_a_client_that_disconnects_has_its_queued_request_dropped(server: RunningServer) -> None:
    before = metrics(server)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(infer, server, "batched", [1.0, 0.5])
        time.sleep(0.1)
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                       "data": [7.0, 0.0]}]}).encode()
        with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
            sock.sendall(b"POST /v2/models/batched/infer HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: " + str(len(body)).encode() +
                         b"\r\n\r\n" + body)
            time.sleep(0.1)
        assert slow.result().status_code == 200
    time.sleep(0.2)
    after = metrics(server)
    ran = (sample(after, "inferd_batch_size_sum", model="batched")
           - sample(before, "inferd_batch_size_sum", model="batched"))
    assert ran == 1, "the abandoned request ran"
    assert sample(after, "inferd_requests_total", model="batched", outcome="cancelled") == 1
    assert sample(after, FAILURES, model="batched", reason="CANCELED") == 1


def test_failures_are_counted_under_tritons_reasons(server: RunningServer) -> None:
    """nv_inference_request_failure's reason label (Triton's metric_model_reporter.cc): BACKEND when
    the model raised, OTHER for the rest (here a request the model never saw); every reason is written."""
    before = metrics(server)
    assert infer(server, "pool", [666.0, 0.0]).status_code == 500
    wrong = requests.post(f"{server.base}/v2/models/pool/infer", json={"inputs": [
        {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, timeout=30)
    assert wrong.status_code == 400
    after = metrics(server)
    grew = {reason: sample(after, FAILURES, model="pool", reason=reason)
            - sample(before, FAILURES, model="pool", reason=reason)
            for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER")}
    assert grew == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 1, "OTHER": 1}
    reasons = {s.labels["reason"] for s in after["nv_inference_request_failure"] if s.labels["model"] == "pool"}
    assert reasons == {"REJECTED", "CANCELED", "BACKEND", "OTHER"}


def test_instance_count_runs_that_many_at_once(server: RunningServer) -> None:
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda i: infer(server, "pool", [1.0, 0.3]), range(6)))
    running = [r.json()["outputs"][1]["data"][0] for r in responses]
    assert max(running) == 3


def test_metrics_exposition(server: RunningServer) -> None:
    infer(server, "pool", [1.0, 0.0])
    families = metrics(server)
    for name in ("inferd_requests", "inferd_request_duration_seconds", "inferd_queue_duration_seconds",
                 "inferd_compute_duration_seconds", "inferd_batch_size", "inferd_queue_depth",
                 "inferd_instances_busy", "inferd_model_state"):
        assert name in families, name
    assert sample(families, "inferd_model_state", model="pool", version="1", state="READY") == 1
    assert sample(families, "inferd_request_duration_seconds_count", model="pool",
                  protocol="kserve_v2") >= 1
    assert sample(families, "inferd_queue_depth", model="pool") == 0
