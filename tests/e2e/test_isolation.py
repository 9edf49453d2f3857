"""Crash isolation: Python models run in instance processes; a model that segfaults, exits, hangs or
eats memory fails only its own request, is restarted, and nothing else notices."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import serve
from tests.models import write
from tests.ts_archives import archive

CRASHY = '''
import ctypes
import os
import pickle
import struct
import sys
import time

import numpy as np

LEAK = []


class NotFound(Exception):  # the model's own, named as one of inferd's errors
    pass


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no words for it")


class Model:
    def infer(self, inputs):
        mode = int(inputs["mode"].reshape(-1)[0])
        if mode == 1:
            ctypes.string_at(0)  # segfault
        elif mode == 2:
            os._exit(1)
        elif mode == 3:
            time.sleep(3600)
        elif mode == 4:
            hoard = []
            while True:
                hoard.append(np.ones(2**22))  # 32 MiB a step, every page touched
        elif mode == 5:
            raise ValueError("mode 5 is refused")
        elif mode == 6:  # a slow leak: 120 MiB kept per call
            LEAK.append(np.ones(15 * 2**20))
        elif mode == 7:  # a stray answer on the server's socket (its fd is the first of the worker's five)
            stray = pickle.dumps(("ok", 0, [], None))
            os.write(int(sys.orig_argv[-5]), struct.pack("!Q", len(stray)) + stray)
        elif mode == 8:  # half a message, then silence from the socket's point of view
            os.write(int(sys.orig_argv[-5]), struct.pack("!Q", 1 << 20) + b"abc")
        elif mode == 9:
            raise NotFound("the model's own NotFound")
        elif mode == 10:
            raise Unprintable()
        return {"pid": np.array([os.getpid()], dtype=np.int64), "echo": inputs["x"] * 2}
'''

CRASHY_CONFIG = """
backend = "python"
[instance_group]
count = 2
response_timeout_s = 3
memory_limit_mb = 400
[[input]]
name = "mode"
datatype = "INT32"
shape = [1]
[[input]]
name = "x"
datatype = "FP32"
shape = [-1]
[[output]]
name = "pid"
datatype = "INT64"
shape = [1]
[[output]]
name = "echo"
datatype = "FP32"
shape = [-1]
"""

STEADY = '''
import numpy as np


class Model:
    def infer(self, inputs):
        return {"y": inputs["x"] + 1}
'''

STEADY_CONFIG = """
[instance_group]
kind = "cpu"
[[input]]
name = "x"
datatype = "FP32"
shape = [-1]
[[output]]
name = "y"
datatype = "FP32"
shape = [-1]
"""

EXITER = '''
import sys


class Model:
    def infer(self, inputs):
        if inputs["x"][0] == 1:
            sys.exit("bye")
        if inputs["x"][0] == 2:
            raise KeyboardInterrupt
        return {"y": inputs["x"]}
'''

EXITING_STREAM = '''
import sys


class Model:
    def infer(self, inputs):
        yield {"y": inputs["x"]}
        sys.exit("bye")
'''


def body(mode: int, x: list[float] | None = None) -> dict:
    x = x if x is not None else [1.0, 2.0]
    return {"inputs": [{"name": "mode", "shape": [1], "datatype": "INT32", "data": [mode]},
                       {"name": "x", "shape": [len(x)], "datatype": "FP32", "data": x}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("isolation")
    write(root / "crashy" / "1" / "model.py", CRASHY)
    write(root / "crashy" / "config.toml", CRASHY_CONFIG)
    write(root / "steady" / "1" / "model.py", STEADY)
    write(root / "steady" / "config.toml", STEADY_CONFIG)
    write(root / "steady_process" / "1" / "model.py", STEADY)  # only test_empty_tensors_... asks it
    write(root / "steady_process" / "config.toml",
          'backend = "python"\n' + STEADY_CONFIG.replace('kind = "cpu"', "count = 1"))
    write(root / "exiter" / "1" / "model.py", EXITER)  # in the server's process (kind "cpu")
    write(root / "exiter" / "config.toml", STEADY_CONFIG)
    write(root / "exiting_stream" / "1" / "model.py", EXITING_STREAM)
    write(root / "exiting_stream" / "config.toml",
          STEADY_CONFIG + "[model_transaction_policy]\ndecoupled = true\n")
    with serve(root) as running:
        yield running


def infer(server, model: str, payload: dict, timeout: float = 30.0) -> requests.Response:
    return requests.post(f"{server.base}/v2/models/{model}/infer", json=payload, timeout=timeout)


def pid_of(response: requests.Response) -> int:
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    return outputs["pid"]["data"][0]


def test_empty_tensors_reach_an_instance_process_before_any_other(server) -> None:
    # the first call sends no bytes, so the process has no buffer mapped yet (it crashed reading one)
    for x in ([], [], [1.0, 2.0], []):
        response = infer(server, "steady_process", {"inputs": [{"name": "x", "shape": [len(x)], "datatype": "FP32",
                                                                 "data": x}]})
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["shape"] == [len(x)]
        assert response.json()["outputs"][0]["data"] == [v + 1 for v in x]


def steady_answers(server) -> None:
    response = infer(server, "steady", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [2.0]


def crashy_recovers(server, seconds: float = 60.0) -> set[int]:
    """Wait until both instances answer again; their pids."""
    deadline = time.monotonic() + seconds
    pids: set[int] = set()
    while len(pids) < 2:
        assert time.monotonic() < deadline, "the crashed instance did not come back"
        response = infer(server, "crashy", body(0))
        pids.add(pid_of(response))
        time.sleep(0.05)
    return pids


def test_python_models_run_in_their_own_processes(server) -> None:
    pids = crashy_recovers(server)
    assert server.process.pid not in pids
    response = infer(server, "crashy", body(0, [1.5, -2.0, 3.0]))
    echo = {o["name"]: o for o in response.json()["outputs"]}["echo"]
    assert echo["data"] == [3.0, -4.0, 6.0]


@pytest.mark.parametrize(("mode", "says"), [
    (1, "crashed while running this request (killed by SIGSEGV)"),
    (2, "exited with code 1 while running this request"),
    (3, "did not answer within 3 s while running this request (response_timeout_s); it was killed"),
    (4, "over its memory_limit_mb of 400"),
])
def test_a_dying_instance_fails_only_its_request(server, mode: int, says: str) -> None:
    before = crashy_recovers(server)
    outcomes: list[int] = []

    def others() -> None:  # the other model and the other instance keep answering meanwhile
        for _ in range(20):
            steady_answers(server)
            outcomes.append(infer(server, "crashy", body(0)).status_code)
            time.sleep(0.05)

    other = threading.Thread(target=others)
    other.start()
    response = infer(server, "crashy", body(mode))
    other.join()
    assert response.status_code == 500
    error = response.json()["error"]
    assert says in error, error
    assert "the instance is restarting" in error
    # the other instance took the rest: nothing else failed while one instance died
    assert outcomes == [200] * 20
    after = crashy_recovers(server)
    assert len(after - before) == 1, "exactly the dead instance was replaced"
    steady_answers(server)
    health = requests.get(f"{server.base}/v2/models/crashy/ready", timeout=5)
    assert health.status_code == 200
    assert restarts(server) >= mode  # one per crash so far (the modes run in order)


def restarts(server) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{server.base}/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "inferd_instance_restarts_total" and s.labels["model"] == "crashy")


@pytest.mark.parametrize(("mode", "says"), [
    (7, "broke the protocol while running this request (an answer to another request"),
    (8, "did not answer within 3 s while running this request"),
])
def test_a_stray_or_partial_message_kills_the_instance_and_no_answer_goes_astray(server, mode: int,
                                                                               says: str) -> None:
    crashy_recovers(server)
    start = time.monotonic()
    response = infer(server, "crashy", body(mode))
    assert time.monotonic() - start < 3 + 2  # bounded by response_timeout_s, never a hang
    assert response.status_code == 500
    assert says in response.json()["error"], response.json()["error"]
    crashy_recovers(server)
    for value in range(8):  # every later answer is its own request's
        response = infer(server, "crashy", body(0, [float(value)]))
        echo = {o["name"]: o for o in response.json()["outputs"]}["echo"]
        assert echo["data"] == [2.0 * value]


def test_a_slow_leak_restarts_the_instance_and_fails_at_most_the_crossing_call(server) -> None:
    before = crashy_recovers(server)
    restarted = restarts(server)
    failures = []
    for _ in range(8):  # 120 MiB kept per call against a 400 MiB limit: over it within four calls
        response = infer(server, "crashy", body(6))
        if response.status_code != 200:  # caught while the crossing call ran (else answered, then replaced)
            failures.append(response.json()["error"])
    # at most the one crossing call per instance (there are two) fails, saying why
    assert len(failures) <= 2 and all("over its memory_limit_mb of 400" in f for f in failures), failures
    assert restarts(server) > restarted
    assert crashy_recovers(server) != before, "a leaking instance was replaced by a new process"


def test_instances_with_a_memory_limit_do_not_keep_freed_memory(server) -> None:
    """--keep-freed-memory (on by default) would leave freed blocks resident in an instance, where
    they count against memory_limit_mb: such instances start with glibc's own thresholds."""
    import psutil

    for pid in crashy_recovers(server):
        environ = psutil.Process(pid).environ()
        assert not any(name.startswith("MALLOC_") for name in environ), environ


def test_a_model_exception_is_a_500_and_keeps_the_instance(server) -> None:
    before = crashy_recovers(server)
    response = infer(server, "crashy", body(5))
    assert response.status_code == 500
    assert "ValueError: mode 5 is refused" in response.json()["error"]
    assert crashy_recovers(server) == before


@pytest.mark.parametrize(("x", "says"), [(1.0, "SystemExit: bye"), (2.0, "KeyboardInterrupt")])
def test_a_model_in_the_servers_process_that_exits_fails_only_its_request(server, x: float, says: str) -> None:
    response = infer(server, "exiter", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [x]}]},
                     timeout=10)
    assert response.status_code == 500, response.text
    assert says in response.json()["error"]
    assert server.process.poll() is None
    steady_answers(server)


def test_a_streaming_model_in_the_servers_process_that_exits_ends_its_stream_with_the_error(server) -> None:
    response = requests.post(f"{server.base}/v2/models/exiting_stream/generate_stream", json={"x": [1.0]},
                             timeout=10)
    assert '"y":1.0' in response.text.replace(" ", "")
    assert "SystemExit: bye" in response.text
    assert server.process.poll() is None
    steady_answers(server)


@pytest.mark.parametrize(("mode", "says"), [(9, "NotFound: the model's own NotFound"), (10, "Unprintable")])
def test_a_models_own_exception_is_a_500_whatever_its_class_or_str(server, mode: int, says: str) -> None:
    before = crashy_recovers(server)
    response = infer(server, "crashy", body(mode))
    assert response.status_code == 500, response.text
    assert f"model 'crashy' failed: {says}" in response.json()["error"]
    assert crashy_recovers(server) == before  # the instance kept running


def test_large_tensors_cross_through_shared_memory(server) -> None:
    x = np.random.default_rng(0).standard_normal(2_000_000).astype(np.float32)
    payload = {"inputs": [{"name": "mode", "shape": [1], "datatype": "INT32", "data": [0]},
                          {"name": "x", "shape": [x.size], "datatype": "FP32", "data": x.tolist()}]}
    response = infer(server, "crashy", payload, timeout=120)
    echo = {o["name"]: o for o in response.json()["outputs"]}["echo"]
    np.testing.assert_array_equal(np.asarray(echo["data"], dtype=np.float32), x * 2)
    leftovers = [p for p in os.listdir("/dev/shm") if p.startswith(f"inferd-{server.process.pid}-")] \
        if os.path.isdir("/dev/shm") else []
    assert leftovers == [], "shared-memory files are unlinked once both sides mapped them"


def test_a_model_that_cannot_load_in_its_process_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    write(tmp_path / "broken" / "1" / "model.py", "raise RuntimeError('no weights here')\n")
    write(tmp_path / "broken" / "config.toml", STEADY_CONFIG.replace('kind = "cpu"', ""))
    write(tmp_path / "segv" / "1" / "model.py", "import ctypes\nctypes.string_at(0)\n")
    write(tmp_path / "segv" / "config.toml", STEADY_CONFIG.replace('kind = "cpu"', ""))
    write(tmp_path / "steady" / "1" / "model.py", STEADY)
    write(tmp_path / "steady" / "config.toml", STEADY_CONFIG)
    with serve(tmp_path) as running:
        ready = requests.get(f"{running.base}/v2/models/broken/ready", timeout=5)
        assert ready.status_code == 503
        index = requests.post(f"{running.base}/v2/repository/index", json={}, timeout=5).json()
        reasons = {m["name"]: m["reason"] for m in index}
        assert "RuntimeError: no weights here" in reasons["broken"], reasons
        assert "crashed while loading the model (killed by SIGSEGV)" in reasons["segv"], reasons
        steady_answers(running)


SEGFAULT_HANDLER = '''
import ctypes

from ts.torch_handler.base_handler import BaseHandler


class Handler(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        answers = []
        for row in data:
            raw = row.get("body") or row.get("data")
            if raw == b"crash":
                ctypes.string_at(0)
            answers.append(raw.decode().upper())
        return answers
'''


def test_a_torchserve_handler_that_segfaults_is_isolated(tmp_path: Path) -> None:
    handler = tmp_path / "work" / "crash_handler.py"
    write(handler, SEGFAULT_HANDLER)
    store = tmp_path / "store"
    store.mkdir()
    weights = tmp_path / "work" / "weights.bin"
    weights.write_bytes(b"unused")
    archive(store, "shouty", weights, str(handler))
    with serve(None, "--model-store", str(store), "--models", "all") as running:
        url = f"{running.base}/predictions/shouty"
        assert requests.post(url, data=b"hello", timeout=30).text == "HELLO"
        crashed = requests.post(url, data=b"crash", timeout=30)
        assert crashed.status_code == 500
        assert "SIGSEGV" in crashed.json()["message"]
        deadline = time.monotonic() + 60
        while True:  # the one instance restarts; then the model answers again
            answer = requests.post(url, data=b"again", timeout=30)
            if answer.status_code == 200:
                break
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.1)
        assert answer.text == "AGAIN"
        assert requests.get(f"{running.base}/ping", timeout=5).json() == {"status": "Healthy"}
    # each instance unpacked the archive into its own scratch folder; none outlives its process,
    # not even the one killed by the segfault
    import glob
    import tempfile

    deadline = time.monotonic() + 10
    while glob.glob(os.path.join(tempfile.gettempdir(), "inferd-shouty-*")):
        assert time.monotonic() < deadline, glob.glob(os.path.join(tempfile.gettempdir(), "inferd-shouty-*"))
        time.sleep(0.1)


def test_any_model_may_run_in_processes_with_batching(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from tests.models import mlp, run_mlp

    (tmp_path / "mlp/1").mkdir(parents=True)
    torch.onnx.export(mlp(), (torch.randn(2, 8),), str(tmp_path / "mlp/1/model.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    write(tmp_path / "mlp/config.toml", "max_batch_size = 16\n[dynamic_batching]\nmax_queue_delay_ms = 2\n"
          '[instance_group]\nkind = "process"\ncount = 2\n')
    rows = np.random.default_rng(3).standard_normal((48, 8)).astype(np.float32)

    def one(i: int) -> list[float]:
        payload = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": rows[i].tolist()}]}
        response = infer(running, "mlp", payload)
        assert response.status_code == 200, response.text
        return response.json()["outputs"][0]["data"]

    with serve(tmp_path) as running, ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, range(len(rows))))
        described = requests.get(f"{running.base}/v2/models/mlp", timeout=5).json()
        log = running.log()
    np.testing.assert_allclose(np.asarray(answers), run_mlp(rows), rtol=1e-5, atol=1e-5)
    assert described["platform"] == "onnxruntime_onnx"
    assert "in 2 process(es)" in log
