"""Triton's rate limiter on the real server: Triton Python models whose instance groups list
rate_limiter resources, called concurrently with tritonclient. Each model writes when each of its
executions started and ended (wall clock, from its own process) to one file, so the test sees what
ran at the same time, across models."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, serve
from tests.triton_models import write

# sleeps SECONDS in each execution and logs "<model> <start> <end>" to the repository's spans.log;
# a negative input kills its instance process
TIMED = """
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]
        self.log = os.path.join(args["model_repository"], "..", "spans.log")

    def execute(self, requests):
        if (pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy() < 0).any():
            os._exit(3)
        start = time.time()
        time.sleep({seconds})
        end = time.time()
        with open(self.log, "a") as log:
            log.write(f"{{self.name}} {{start}} {{end}}\\n")
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT",
                                                            pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
                for r in requests]
"""

# IN to OUT (FP32 [2]); batched: with a batch dimension and dynamic batching
CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 2 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] }} ]
{extra}
"""
BATCHED = {"slow_b"}

SHARED_R1 = 'instance_group [ { count: 2 kind: KIND_CPU rate_limiter { resources [ { name: "R1" count: 4 } ] } } ]'


def timed_model(root: Path, name: str, seconds: float, group: str) -> None:
    extra = f"{group}\ndynamic_batching {{ }}" if name in BATCHED else group
    write(root / name / "config.pbtxt", CONFIG.format(name=name, max_batch_size=4 if name in BATCHED else 0,
                                                      extra=extra))
    write(root / name / "1" / "model.py", TIMED.format(seconds=seconds))


def shared_repository(root: Path) -> Path:
    """slow_a and slow_b: two instances each, every execution holds 4 of R1; plain: no rate limiter."""
    timed_model(root, "slow_a", 0.2, SHARED_R1)
    timed_model(root, "slow_b", 0.2, SHARED_R1)  # batched: its batches hold R1
    timed_model(root, "plain", 0.01, "instance_group [ { count: 1 kind: KIND_CPU } ]")
    return root


def call(server: RunningServer, model: str, values: tuple[float, float] = (1, 2)) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.url, network_timeout=30)
    shape = [1, 2] if model in BATCHED else [2]
    tensor = httpclient.InferInput("IN", shape, "FP32")
    tensor.set_data_from_numpy(np.array(values, np.float32).reshape(shape))
    return client.infer(model, [tensor]).as_numpy("OUT").reshape(-1)


def spans(root: Path, models: tuple[str, ...]) -> list[tuple[str, float, float]]:
    log = root / "spans.log"
    found = [(name, float(start), float(end)) for name, start, end in
             (line.split() for line in log.read_text().splitlines())] if log.exists() else []
    return sorted((span for span in found if span[0] in models), key=lambda span: span[1])


def overlapping(found: list[tuple[str, float, float]]) -> list[tuple[str, str]]:
    """Pairs of executions (in start order, one after the other) that ran at the same time."""
    return [(a[0], b[0]) for a, b in itertools.pairwise(found) if b[1] < a[2]]


def load_both(server: RunningServer, root: Path, each: int = 4) -> list[tuple[str, float, float]]:
    (root / "spans.log").unlink(missing_ok=True)
    with ThreadPoolExecutor(2 * each) as pool:
        answers = list(pool.map(lambda model: call(server, model), ["slow_a", "slow_b"] * each))
    assert all(np.array_equal(answer, [1, 2]) for answer in answers)
    return spans(root, ("slow_a", "slow_b"))


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    root = shared_repository(tmp_path_factory.mktemp("rate_limited") / "models")
    with serve(root, "--rate-limit", "execution_count") as server:
        yield server, root


def test_models_sharing_a_resource_never_run_at_once(limited: tuple[RunningServer, Path]) -> None:
    server, root = limited
    found = load_both(server, root)
    assert len(found) >= 4 and {span[0] for span in found} == {"slow_a", "slow_b"}
    assert overlapping(found) == []  # R1: 4 available (the largest need), each execution holds 4


def test_a_model_without_a_rate_limiter_runs_while_the_others_wait(limited: tuple[RunningServer, Path]) -> None:
    server, _ = limited
    with ThreadPoolExecutor(9) as pool:
        busy = [pool.submit(call, server, model) for model in ["slow_a", "slow_b"] * 4]
        time.sleep(0.3)
        started = time.monotonic()
        assert np.array_equal(call(server, "plain"), [1, 2])
        waited = time.monotonic() - started
        pending = sum(not future.done() for future in busy)
        for future in busy:
            future.result()
    assert pending > 0 and waited < 1.0  # it did not queue behind the 1.6 s of R1's executions


def test_the_configuration_answers_the_rate_limiter_back(limited: tuple[RunningServer, Path]) -> None:
    server, _ = limited
    config = httpclient.InferenceServerClient(server.url).get_model_config("slow_a")
    assert config["instance_group"][0]["rate_limiter"] == {
        "resources": [{"name": "R1", "global": False, "count": 4}], "priority": 0}
    plain = httpclient.InferenceServerClient(server.url).get_model_config("plain")
    assert "rate_limiter" not in plain["instance_group"][0]


@pytest.mark.parametrize("flags", [("--rate-limit", "execution_count", "--rate-limit-resource", "R1:8"), ()],
                         ids=["more-R1", "off"])
def test_more_of_the_resource_or_the_limiter_off_lets_them_run_at_once(tmp_path: Path, flags: tuple[str, ...]) -> None:
    root = shared_repository(tmp_path / "models")
    with serve(root, *flags) as server:
        found = load_both(server, root)
        config = httpclient.InferenceServerClient(server.url).get_model_config("slow_b")
    assert overlapping(found)  # 8 of R1 hold two executions at once; off: 4 instances run at once
    assert config["instance_group"][0]["rate_limiter"]["resources"] == [{"name": "R1", "global": False, "count": 4}]


def test_a_need_beyond_the_available_count_fails_the_load(tmp_path: Path) -> None:
    root = shared_repository(tmp_path / "models")
    with serve(root, "--rate-limit", "execution_count", "--rate-limit-resource", "R1:2",
               "--model-control", "explicit", "--load-model", "*") as server:
        index = {row["name"]: row for row in
                 requests.post(f"{server.base}/v2/repository/index", json={}, timeout=10).json()}
        answer = call(server, "plain")
        ready = requests.get(f"{server.base}/v2/models/slow_a/ready", timeout=5).status_code
        instances = instance_processes(server)
        with pytest.raises(InferenceServerException) as refused:
            httpclient.InferenceServerClient(server.url, network_timeout=30).load_model("slow_a")
    assert refused.value.status() == "400"
    assert 'failed to load \'slow_a\'' in str(refused.value) and 'limited to 2' in str(refused.value)
    for name in ("slow_a", "slow_b"):
        assert index[name]["state"] == "UNAVAILABLE"
        assert ('Resource count for "R1" is limited to 2 which will prevent scheduling of one or more model '
                "instances, the minimum required count is 4") in index[name]["reason"]
    assert index["plain"]["state"] == "READY" and np.array_equal(answer, [1, 2])
    assert ready == 400 or ready == 503
    assert instances == 1  # plain's; the refused models' instance processes were stopped


def instance_processes(server: RunningServer) -> int:
    """The server's instance processes still running, once those it stops had a moment to go."""
    deadline = time.monotonic() + 5
    while True:
        found = [child for child in psutil.Process(server.process.pid).children(recursive=True)
                 if "inferd.isolation.worker" in _command(child)]
        if len(found) <= 1 or time.monotonic() > deadline:
            return len(found)
        time.sleep(0.1)


def _command(process: psutil.Process) -> str:
    """Its command line; "" once it exited (a zombie not reaped yet has none to read)."""
    try:
        return " ".join(process.cmdline()) if process.status() != psutil.STATUS_ZOMBIE else ""
    except psutil.Error:
        return ""


def test_priority_gives_priority_1_twice_the_turns_of_priority_2(tmp_path: Path) -> None:
    """One of P at a time: while `gate` holds it, `low` (priority 2) then `high` (priority 1) queue
    six calls each; then they take turns by executions × priority, as in Triton."""
    root = tmp_path / "models"
    timed_model(root, "gate", 1.5, 'instance_group [ { count: 1 kind: KIND_CPU rate_limiter { '
                                   'resources [ { name: "P" count: 1 } ] } } ]')
    for name, priority in (("high", 1), ("low", 2)):
        timed_model(root, name, 0.05, 'instance_group [ { count: 1 kind: KIND_CPU rate_limiter { '
                                      f'resources [ {{ name: "P" count: 1 }} ] priority: {priority} }} }} ]')
    with serve(root, "--rate-limit", "execution_count") as server, ThreadPoolExecutor(13) as pool:
        calls = [pool.submit(call, server, "gate")]
        time.sleep(0.4)
        calls += [pool.submit(call, server, "low") for _ in range(6)]
        time.sleep(0.4)
        calls += [pool.submit(call, server, "high") for _ in range(6)]
        for future in calls:
            future.result()
    order = [span[0] for span in spans(root, ("gate", "high", "low"))]
    assert overlapping(spans(root, ("gate", "high", "low"))) == []
    assert order[0] == "gate"
    assert order[1:10] == ["low", "high", "high", "low", "high", "high", "low", "high", "high"]


def test_a_crash_an_unload_and_a_reload_leave_no_resource_held(tmp_path: Path) -> None:
    """Every execution below would wait for ever (the client gives up after 30 s) if R1 stayed taken."""
    root = shared_repository(tmp_path / "models")
    with serve(root, "--rate-limit", "execution_count", "--model-control", "explicit", "--load-model", "*") as server:
        with pytest.raises(InferenceServerException):
            call(server, "slow_a", (-1, -1))  # its instance process dies holding R1
        assert np.array_equal(call(server, "slow_b"), [1, 2])
        with ThreadPoolExecutor(8) as pool:
            busy = [pool.submit(call, server, model) for model in ["slow_a", "slow_b"] * 3]
            time.sleep(0.3)
            client = httpclient.InferenceServerClient(server.url, network_timeout=30)
            client.unload_model("slow_b")  # drains what it holds and what waits for R1, then unloads
            client.load_model("slow_b")
            outcomes = [future.exception() or future.result() for future in busy]
        assert all(isinstance(o, np.ndarray) or "slow_b" in str(o) for o in outcomes), outcomes
        found = load_both(server, root)
    assert len(found) >= 4 and overlapping(found) == []
