"""``inferd serve --workers N``: front-end processes on shared ports, one model process behind them.

Every protocol through the workers, one batch queue per model whatever worker a request came in
on, reloads seen by every worker, a worker that dies is replaced, SIGTERM drains, and workers do
not outlive the model process."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from inferd.workers.owner import FOLDER_PREFIX, remove_leftovers
from tests.conftest import RunningServer, serve
from tests.models import PYTHON_CONFIG, PYTHON_MODEL, write

BATCHING_MODEL = '''
import time
import numpy as np

class Model:
    def infer(self, inputs):
        x = inputs["x"]
        delay = float(x.reshape(-1)[-1])
        time.sleep(delay if delay < 5 else 0.01)
        return {"y": x * 3, "rows": np.full((x.shape[0], 1), x.shape[0], dtype=np.int32)}
'''

BATCHING_CONFIG = """
max_batch_size = 64
[dynamic_batching]
max_queue_delay_ms = 200
[[input]]
name = "x"
datatype = "FP32"
shape = [2]
[[output]]
name = "y"
datatype = "FP32"
shape = [2]
[[output]]
name = "rows"
datatype = "INT32"
shape = [1]
"""

ONE_ROW_MODEL = '''
import numpy as np

class Model:
    def infer(self, inputs):
        return {"y": np.zeros((1, 2), np.float32), "rows": np.ones((1, 1), np.int32)}  # one row, whatever came
'''

SLOW_LOAD_MODEL = PYTHON_MODEL.replace("    def load(self):\n",
                                       "    def load(self):\n        __import__('time').sleep(2)\n")

WORKERS = 2


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    write(root / "py_double/1/model.py", PYTHON_MODEL)
    write(root / "py_double/config.toml", PYTHON_CONFIG)
    write(root / "batched/1/model.py", BATCHING_MODEL)
    write(root / "batched/config.toml", BATCHING_CONFIG)
    write(root / "one_row/1/model.py", ONE_ROW_MODEL)
    write(root / "one_row/config.toml", BATCHING_CONFIG)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with serve(repo, "--workers", str(WORKERS), "--model-control", "explicit", "--load-model", "*",
               grpc=True) as running:
        yield running


def workers_of(server: RunningServer) -> list[psutil.Process]:
    workers = []
    for child in psutil.Process(server.process.pid).children():
        with contextlib.suppress(psutil.Error):  # one that died meanwhile (a zombie has no command line)
            if "_frontend" in child.cmdline():
                workers.append(child)
    return workers


def infer_json(base: str, model: str, data: list[float], shape: list[int], datatype: str = "FP64",
               session: requests.Session | None = None) -> requests.Response:
    body = {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}
    return (session or requests).post(f"{base}/v2/models/{model}/infer", json=body, timeout=30)


def test_every_protocol_answers_through_the_workers(server: RunningServer) -> None:
    assert len(workers_of(server)) == WORKERS
    assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
    meta = requests.get(f"{server.base}/v2/models/py_double", timeout=5).json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1]}]
    # KServe v2 JSON, many connections (so both workers), each answer computed by the model
    for n in range(12):
        with requests.Session() as session:
            response = infer_json(server.base, "py_double", [n, 1.5], [2], session=session)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [n * 2 + 10, 13.0]
    # TF Serving REST
    tf = requests.post(f"{server.base}/v1/models/py_double:predict", json={"inputs": {"x": [1.0, 2.0]}}, timeout=10)
    assert tf.status_code == 200, tf.text
    assert tf.json()["outputs"]["y"] == [12.0, 14.0]
    # TorchServe's management API (settings of the core read across the hop)
    listed = requests.get(f"{server.base}/models", timeout=10)
    assert listed.status_code == 200 and {"modelName": "py_double"} in [
        {"modelName": m["modelName"]} for m in listed.json()["models"]]
    refused = requests.post(f"{server.base}/models?url=nothing.mar", timeout=10)
    assert refused.status_code == 404 and "--model-store" in refused.json()["message"]
    # KServe v2 gRPC with the real client
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_server_ready() and client.is_model_ready("py_double")
    x = np.array([4.0, 5.0])
    tensor = grpcclient.InferInput("x", [2], "FP64")
    tensor.set_data_from_numpy(x)
    result = client.infer("py_double", [tensor])
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2 + 10)
    client.close()


def test_large_tensors_cross_the_hop_whole(server: RunningServer) -> None:
    """8 MB tensors (out of band through the channel, read into a frame of their own) over v2
    binary HTTP and gRPC, several at once beside small ones: each answer is its own request's."""
    rng = np.random.default_rng(7)
    tensors = [rng.standard_normal(1_000_000) + n for n in range(4)] + [np.array([1.0, 2.0])] * 4
    grpc = grpcclient.InferenceServerClient(server.grpc_url)

    def ask(n: int) -> np.ndarray:  # tritonclient.http (gevent) is used from the thread that made it
        http = httpclient.InferenceServerClient(server.url)
        x = tensors[n % len(tensors)]
        module: Any = grpcclient if n % 2 else httpclient
        tensor = module.InferInput("x", [x.size], "FP64")
        tensor.set_data_from_numpy(x, **({} if n % 2 else {"binary_data": True}))
        wanted = [module.InferRequestedOutput("y", **({} if n % 2 else {"binary_data": True}))]
        result = (grpc if n % 2 else http).infer("py_double", [tensor], outputs=wanted)
        http.close()
        return np.asarray(result.as_numpy("y"))

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(16)))
    for n, answer in enumerate(answers):
        np.testing.assert_array_equal(answer, tensors[n % len(tensors)] * 2 + 10)
    grpc.close()


def test_workers_and_instance_processes_keep_freed_memory(server: RunningServer) -> None:
    """The allocator setting (--keep-freed-memory, on by default) reaches every process the server
    started: glibc reads it from the environment when each one starts."""
    if any(name.startswith("MALLOC_") or name == "GLIBC_TUNABLES" for name in os.environ):
        pytest.skip("this environment sets glibc's malloc itself (the user's settings win)")
    children = psutil.Process(server.process.pid).children(recursive=True)
    assert len(children) >= WORKERS
    for child in children:
        assert child.environ().get("MALLOC_TRIM_THRESHOLD_") == str(64 * 2**20), child.cmdline()


def test_errors_keep_their_status_and_message_across_the_hop(server: RunningServer) -> None:
    unknown = infer_json(server.base, "nope", [1.0], [1])
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    wrong = infer_json(server.base, "py_double", [1.0], [1], datatype="FP32")
    assert wrong.status_code == 400 and "FP64" in wrong.json()["error"]
    model_error = infer_json(server.base, "py_double", [666.0], [1])
    assert model_error.status_code == 500 and "666" in model_error.json()["error"]
    assert infer_json(server.base, "py_double", [1.0], [1]).status_code == 200  # still serving


def test_requests_from_every_worker_share_one_batch_queue(server: RunningServer) -> None:
    """Clients on their own connections (spread over the workers by the kernel) land in the model
    process's one queue: batches form from all of them, and one set of statistics counts them."""
    before = requests.get(f"{server.base}/v2/models/batched/stats", timeout=5).json()["model_stats"][0]

    def one(n: int) -> tuple[list[float], int]:
        with requests.Session() as session:
            response = infer_json(server.base, "batched", [n, 0.05], [1, 2], "FP32", session)
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
        return outputs["y"], outputs["rows"][0]

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(64)))
    assert [y for y, _ in answers] == [[3.0 * n, pytest.approx(0.15)] for n in range(64)]  # each its own rows
    assert max(rows for _, rows in answers) > 1
    after = requests.get(f"{server.base}/v2/models/batched/stats", timeout=5).json()["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 64 and executions < inferences / 2, f"{executions} executions for {inferences}"


def test_requests_a_worker_sends_together_are_answered_and_counted_one_by_one(server: RunningServer) -> None:
    """A worker joins the requests for a batched model that arrive in one pass into one (as the
    batcher would); each client still gets exactly its own rows, and statistics and metrics count
    every request."""
    def stats() -> tuple[int, int, float]:
        row = requests.get(f"{server.base}/v2/models/batched/stats", timeout=5).json()["model_stats"][0]
        metrics = requests.get(f"{server.base}/metrics", timeout=5).text
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("inferd_requests_total{") and 'model="batched"' in line
                      and 'outcome="success"' in line)
        return row["inference_stats"]["success"]["count"], row["inference_count"], counted

    before = stats()
    rows_of = [n % 3 + 1 for n in range(96)]

    def one(n: int) -> list[list[float]]:
        data = [[1000.0 * n + 10 + r, 1000.0 * n + 500 + r] for r in range(rows_of[n])]  # >= 5: no sleep
        with requests.Session() as session:
            response = infer_json(server.base, "batched", [v for row in data for v in row], [rows_of[n], 2], "FP32",
                                  session)
        assert response.status_code == 200, response.text
        y = next(o for o in response.json()["outputs"] if o["name"] == "y")
        assert y["shape"] == [rows_of[n], 2]
        assert y["data"] == [3 * v for row in data for v in row]
        return data

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(96)))
    after = stats()
    assert after[0] - before[0] == 96  # requests, not joined groups
    assert after[1] - before[1] == sum(rows_of)  # rows
    assert after[2] - before[2] == 96


def test_an_answer_a_group_cannot_split_is_counted_as_the_failure_each_client_sees(server: RunningServer) -> None:
    """A model that answers one row for any batch: each client of a joined group gets an error
    (as each request of such a batch does), and the statistics count exactly what clients saw."""
    def counts() -> tuple[int, int]:
        row = requests.get(f"{server.base}/v2/models/one_row/stats", timeout=5).json()["model_stats"][0]
        return row["inference_stats"]["success"]["count"], row["inference_stats"]["fail"]["count"]

    before = counts()

    def one(n: int) -> int:
        with requests.Session() as session:
            return infer_json(server.base, "one_row", [10.0 + n, 20.0], [1, 2], "FP32", session).status_code

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(one, range(96)))
    after = counts()
    assert set(statuses) <= {200, 500} and 500 in statuses
    assert (after[0] - before[0], after[1] - before[1]) == (statuses.count(200), statuses.count(500))


def test_a_loaded_model_is_seen_by_every_worker(server: RunningServer, repo: Path) -> None:
    write(repo / "late/1/model.py", PYTHON_MODEL)
    write(repo / "late/config.toml", PYTHON_CONFIG)
    loaded = requests.post(f"{server.base}/v2/repository/models/late/load", timeout=60)
    assert loaded.status_code == 200, loaded.text
    for _ in range(8):  # fresh connections: each may land on another worker
        with requests.Session() as session:
            assert infer_json(server.base, "late", [1.0], [1], session=session).json()["outputs"][0]["data"] == [12.0]
    assert requests.post(f"{server.base}/v2/repository/models/late/unload", timeout=60).status_code == 200
    with requests.Session() as session:
        assert infer_json(server.base, "late", [1.0], [1], session=session).status_code in (400, 404, 503)


def test_a_worker_that_dies_is_replaced_and_the_others_keep_serving(server: RunningServer) -> None:
    victim = workers_of(server)[0]
    victim.kill()
    victim.wait(10)
    ok = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with requests.Session() as session:
                ok += infer_json(server.base, "py_double", [1.0], [1], session=session).status_code == 200
        except requests.ConnectionError:
            pass  # a connection the kernel handed the dead worker's socket
        pids = [w.pid for w in workers_of(server)]
        if len(pids) == WORKERS and victim.pid not in pids and ok >= 5:
            break
        time.sleep(0.1)
    assert ok >= 5
    assert len(workers_of(server)) == WORKERS and victim.pid not in [w.pid for w in workers_of(server)]
    assert "front-end worker" in server.log() and "starting another" in server.log()


def serving_again(server: RunningServer, timeout: float = 30) -> None:
    """Every worker back and answering (after workers were killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.ConnectionError):
            if len(workers_of(server)) == WORKERS and requests.get(f"{server.base}/v2/health/ready", timeout=5).ok:
                return
        time.sleep(0.1)
    raise AssertionError("the workers did not come back")


def state_of(server: RunningServer, model: str) -> str:
    with requests.Session() as session:
        index = session.post(f"{server.base}/v2/repository/index", timeout=10).json()
    return next((row["state"] for row in index if row["name"] == model), "")


def test_a_load_outlives_the_worker_that_asked_for_it(server: RunningServer, repo: Path) -> None:
    """Model control that a worker forwarded runs to its end when the worker dies (as in one process
    when its client goes away): cut short, the model stayed LOADING for good and its instance
    process ran unserved."""
    write(repo / "slow_load/1/model.py", SLOW_LOAD_MODEL)
    write(repo / "slow_load/config.toml", PYTHON_CONFIG)

    def load() -> None:
        with contextlib.suppress(requests.ConnectionError):  # its worker is killed
            requests.post(f"{server.base}/v2/repository/models/slow_load/load", timeout=60)

    asking = threading.Thread(target=load)
    asking.start()
    deadline = time.monotonic() + 10
    while state_of(server, "slow_load") != "LOADING" and time.monotonic() < deadline:
        time.sleep(0.05)
    for worker in workers_of(server):  # the one that forwarded the load among them
        worker.kill()
    asking.join(30)
    serving_again(server)
    deadline = time.monotonic() + 30
    while state_of(server, "slow_load") != "READY" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state_of(server, "slow_load") == "READY"
    assert infer_json(server.base, "slow_load", [1.0], [1]).json()["outputs"][0]["data"] == [12.0]
    assert requests.post(f"{server.base}/v2/repository/models/slow_load/unload", timeout=60).status_code == 200


def test_a_stuck_worker_is_replaced(server: RunningServer) -> None:
    """A worker whose loop stops (here SIGSTOP) keeps its listening socket, so the kernel still
    hands it its share of new connections, which hang: it sends no beat, and is killed and replaced."""
    from inferd.workers.owner import HUNG_S

    victim = workers_of(server)[0]
    victim.suspend()
    try:
        victim.wait(HUNG_S + 10)
    except psutil.TimeoutExpired:
        victim.resume()
        raise AssertionError("the stopped worker was left holding its connections") from None
    serving_again(server)
    assert victim.pid not in [w.pid for w in workers_of(server)]
    for _ in range(12):  # fresh connections: none lands on a stuck worker
        with requests.Session() as session:
            assert infer_json(server.base, "py_double", [1.0], [1], session=session).status_code == 200
    assert "sent no beat" in server.log()


def test_sigterm_drains_requests_in_flight_through_a_worker(repo: Path) -> None:
    with serve(repo, "--workers", "1", "--model-control", "explicit", "--load-model", "batched") as server:
        workers = workers_of(server)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(infer_json, server.base, "batched", [1.0, 1.0], [1, 2], "FP32")
            time.sleep(0.5)  # in the model (it sleeps 1 s)
            server.process.send_signal(signal.SIGTERM)
            response = pending.result()
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [3.0, 3.0]
        assert server.process.wait(30) == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_workers_stop_when_the_model_process_is_killed(repo: Path) -> None:
    with serve(repo, "--workers", "2", "--model-control", "explicit", "--load-model", "py_double") as server:
        workers = workers_of(server)
        assert len(workers) == 2
        server.process.kill()
        server.process.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"workers outlived the model process: {[w.pid for w in alive]}"
        left = list(Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}{server.process.pid}-*"))
        assert len(left) == 1 and (left[0] / "settings.pickle").exists()  # no cleanup ran ...
        remove_leftovers()  # ... the next server's start removes it
        assert not left[0].exists()


def test_workers_refuse_what_one_process_must_serve() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "inferd", "serve", "--workers", "-1"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--workers must be 0..256" in done.stderr


def test_slow_client_on_one_worker_does_not_hold_the_others(server: RunningServer) -> None:
    """A request held in the model (1 s) does not stop other clients, whichever worker they reach."""
    held = threading.Thread(target=infer_json, args=(server.base, "batched", [1.0, 1.0], [1, 2], "FP32"))
    held.start()
    time.sleep(0.1)
    started = time.monotonic()
    for _ in range(6):
        with requests.Session() as session:
            assert infer_json(server.base, "py_double", [2.0], [1], session=session).status_code == 200
    assert time.monotonic() - started < 5
    held.join(10)


def test_a_taken_port_fails_the_start_in_one_line(repo: Path) -> None:
    import socket
    import subprocess
    import sys

    from tests.conftest import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "inferd", "serve", str(repo), "--workers", "2", "--http-port",
                               str(port), "--grpc-port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"cannot listen for HTTP on 127.0.0.1:{port}: the port is in use; choose another port with --http-port" \
        in done.stderr
