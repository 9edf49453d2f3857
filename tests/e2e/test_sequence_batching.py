"""Several sequences in one execution (Triton's oldest and direct strategies) against the real
server with Triton's clients, in one process and through a front-end worker: concurrent sequences
answer as each would alone, in batches of more than one; each row gets its own sequence's controls
and state; a direct sequence keeps its slot's row, and one that ends leaves only its slot."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests import sequence_models
from tests.conftest import RunningServer, serve

STEPS = 4


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sequence_models.build_batching(tmp_path_factory.mktemp("batching"))


@pytest.fixture(scope="module", params=[0, 1], ids=["one-process", "workers"])
def server(repo: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with serve(repo, "--workers", str(request.param), grpc=True) as running:
        yield running


def stats(server: RunningServer, model: str) -> dict[str, Any]:
    answer: dict[str, Any] = requests.get(f"{server.base}/v2/models/{model}/stats", timeout=10).json()
    return answer["model_stats"][0]


def batch_sizes(before: dict[str, Any], after: dict[str, Any]) -> dict[int, int]:
    """Executions per batch size between two statistics."""
    def counts(stat: dict[str, Any]) -> dict[int, int]:
        return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stat.get("batch_stats", [])}
    old, new = counts(before), counts(after)
    return {size: count - old.get(size, 0) for size, count in new.items() if count > old.get(size, 0)}


def run_sequence(server: RunningServer, model: str, key: int, inputs: list[np.ndarray], name: str,
                 start: threading.Barrier) -> list[Any]:
    """One client's sequence, step by step (even ids over HTTP, odd over gRPC); its answers."""
    module: Any = httpclient if key % 2 == 0 else grpcclient
    client = module.InferenceServerClient(server.url if key % 2 == 0 else server.grpc_url)
    answers = []
    try:
        start.wait(timeout=30)
        for index, array in enumerate(inputs):
            given = module.InferInput(name, list(array.shape), "FP32")
            given.set_data_from_numpy(array)
            answers.append(client.infer(model, [given], sequence_id=key, sequence_start=index == 0,
                                        sequence_end=index == len(inputs) - 1))
    finally:
        client.close()
    return answers


def run_concurrently(server: RunningServer, model: str, inputs: dict[int, list[np.ndarray]],
                     name: str) -> dict[int, list[Any]]:
    start = threading.Barrier(len(inputs))
    with ThreadPoolExecutor(len(inputs)) as pool:
        futures = {key: pool.submit(run_sequence, server, model, key, xs, name, start) for key, xs in inputs.items()}
        return {key: future.result(timeout=120) for key, future in futures.items()}


def rows_model_alone(xs: list[np.ndarray], key: int) -> list[np.ndarray]:
    """ROWS run in this process, the sequence alone (a batch of one per request)."""
    namespace: dict[str, Any] = {}
    exec(compile(sequence_models.ROWS, "rows", "exec"), namespace)  # the test's own model
    namespace["DELAY_S"] = 0.0
    model = namespace["Model"]()
    state, totals = np.zeros((1, 2), np.float32), []
    def control(on: bool) -> np.ndarray:
        return np.array([[int(on)]], np.int32)

    for index, x in enumerate(xs):
        out = model.infer({"X": x, "STATE_IN": state, "START": control(index == 0),
                           "END": control(index == len(xs) - 1), "READY": control(True),
                           "CORRID": np.array([[key]], np.uint64)})
        state = out["STATE_OUT"]
        totals.append(out["TOTAL"])
    return totals


@pytest.mark.parametrize("model", ["rows_oldest", "rows_direct"])
def test_concurrent_sequences_run_together_each_row_with_its_own_controls_and_state(
        server: RunningServer, model: str) -> None:
    """Six sequences at once (HTTP and gRPC) on one instance: every answer is what the model gives
    the sequence alone in process; each row saw its own CORRID, START and END; batches held more
    than one sequence, and the statistics count executions and inferences apart."""
    rng = np.random.default_rng(11)
    inputs = {key: [rng.uniform(-5, 5, (1, 2)).astype(np.float32) for _ in range(STEPS)] for key in range(101, 107)}
    before = stats(server, model)
    answers = run_concurrently(server, model, inputs, "X")
    after = stats(server, model)
    sizes: list[int] = []
    for key, got in answers.items():
        expected = rows_model_alone(inputs[key], key)
        rows = []
        for index, answer in enumerate(got):
            np.testing.assert_allclose(answer.as_numpy("TOTAL"), expected[index], rtol=1e-6,
                                       err_msg=f"sequence {key} step {index}")
            corrid, start, end, ready, size, row = answer.as_numpy("SEEN")[0].tolist()
            assert (corrid, start, end, ready) == (key, int(index == 0), int(index == STEPS - 1), 1)
            sizes.append(size)
            rows.append(row)
        if model == "rows_direct":
            assert len(set(rows)) == 1, f"sequence {key} moved between rows {rows}"  # its slot's row, always
    assert max(sizes) > 1, sizes
    executed = batch_sizes(before, after)
    assert max(executed) > 1, executed
    assert after["inference_count"] - before["inference_count"] == 6 * STEPS
    assert after["execution_count"] - before["execution_count"] < 6 * STEPS


def test_a_sequence_ending_beside_others_frees_only_its_slot(server: RunningServer) -> None:
    """direct: A, B, C take slots 0, 1, 2; B ends in a batch with A and C; D takes slot 1 (row 1)
    and starts from a fresh state, while A and C keep their rows and their states."""
    def send(client: Any, key: int, x: float, **flags: bool) -> tuple[float, int]:
        given = httpclient.InferInput("X", [1, 2], "FP32")
        given.set_data_from_numpy(np.full((1, 2), x, np.float32))
        answer = client.infer("rows_direct", [given], sequence_id=key, **flags)
        return float(answer.as_numpy("TOTAL")[0, 0]), int(answer.as_numpy("SEEN")[0, 5])

    def together(*calls: tuple[int, float, dict[str, bool]]) -> list[tuple[float, int]]:
        with ThreadPoolExecutor(len(calls)) as pool:
            futures = []
            for key, x, flags in calls:
                client = httpclient.InferenceServerClient(server.url)
                futures.append(pool.submit(send, client, key, x, **flags))
            return [future.result(timeout=60) for future in futures]

    with httpclient.InferenceServerClient(server.url) as h:
        assert [send(h, key, key, sequence_start=True) for key in (1, 2, 3)] == [(1.0, 0), (2.0, 1), (3.0, 2)]
        assert together((1, 10, {}), (2, 10, {"sequence_end": True}), (3, 10, {})) == [(11.0, 0), (12.0, 1), (13.0, 2)]
        assert send(h, 4, 100, sequence_start=True) == (100.0, 1)
        assert together((1, 1, {"sequence_end": True}), (4, 1, {"sequence_end": True}),
                        (3, 1, {"sequence_end": True})) == [(12.0, 0), (101.0, 1), (14.0, 2)]


@pytest.mark.parametrize("model", ["acc_oldest", "acc_direct"])
def test_an_onnx_state_model_answers_each_concurrent_sequence_as_alone(
        server: RunningServer, repo: Path, model: str) -> None:
    """Eight sequences at once against the batching ONNX accumulator (its state kept by the server,
    concatenated per batch and split back): every answer is ONNX Runtime's for the sequence alone."""
    session = ort.InferenceSession(str(repo / model / "1/model.onnx"))
    rng = np.random.default_rng(5)
    inputs = {key: [rng.uniform(-5, 5, (1, 4)).astype(np.float32) for _ in range(STEPS)] for key in range(201, 209)}
    before = stats(server, model)
    answers = run_concurrently(server, model, inputs, "INPUT")
    for key, got in answers.items():
        state = np.zeros((1, 4), np.float32)
        for index, answer in enumerate(got):
            y, state = session.run(["OUTPUT", "OUTPUT_STATE"], {"INPUT": inputs[key][index], "INPUT_STATE": state})
            np.testing.assert_allclose(answer.as_numpy("OUTPUT"), y, rtol=1e-6, err_msg=f"{key} step {index}")
    assert stats(server, model)["inference_count"] - before["inference_count"] == 8 * STEPS


def test_a_triton_python_model_gets_several_sequences_requests_in_one_execute(server: RunningServer) -> None:
    """Six sequences at once against a Triton Python model (max_batch_size 8, direct): execute()
    gets several sequences' requests, each with its own correlation_id(), flags() and controls, and
    each is answered its own."""
    inputs = {key: [np.array([[key * 10 + step]], np.int32) for step in range(STEPS)] for key in range(301, 307)}
    before = stats(server, "dyna_counting")
    start = threading.Barrier(len(inputs))

    def run(key: int) -> list[Any]:
        module: Any = httpclient if key % 2 == 0 else grpcclient
        client = module.InferenceServerClient(server.url if key % 2 == 0 else server.grpc_url)
        answers = []
        try:
            start.wait(timeout=30)
            for index, array in enumerate(inputs[key]):
                given = module.InferInput("INPUT", [1, 1], "INT32")
                given.set_data_from_numpy(array)
                answers.append(client.infer("dyna_counting", [given], sequence_id=key, sequence_start=index == 0,
                                            sequence_end=index == STEPS - 1))
        finally:
            client.close()
        return answers

    with ThreadPoolExecutor(len(inputs)) as pool:
        answers = dict(zip(inputs, pool.map(run, inputs), strict=True))
    counts = []
    for key, got in answers.items():
        for index, answer in enumerate(got):
            first, last = index == 0, index == STEPS - 1
            assert int(answer.as_numpy("OUTPUT")[0, 0]) == int(inputs[key][index][0, 0]) + first + last * key
            corrid, flags, count = answer.as_numpy("SEEN")[0].tolist()
            assert (corrid, flags) == (key, first * 1 + last * 2)  # TRITONSERVER_REQUEST_FLAG_SEQUENCE_START, _END
            counts.append(count)
    assert max(counts) > 1, counts
    after = stats(server, "dyna_counting")
    assert after["inference_count"] - before["inference_count"] == 6 * STEPS
    assert after["execution_count"] - before["execution_count"] < 6 * STEPS


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_long_backlog_of_starts_costs_the_server_little_while_it_waits(repo: Path) -> None:
    """acc_direct's 16 slots held, 900 more STARTs wait in the backlog (under --max-connections): waiting costs each a
    glance, not a scan of every sequence (the server's CPU stays low, a health check stays quick);
    once they give up and the holders end, a new sequence takes a slot at once."""
    def body(key: int, start: bool, end: bool) -> dict[str, Any]:
        return {"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}],
                "parameters": {"sequence_id": key, "sequence_start": start, "sequence_end": end}}

    async def flood(server: RunningServer) -> tuple[float, float, list[int]]:
        url = f"{server.base}/v2/models/acc_direct/infer"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def post(key: int, start: bool, end: bool, timeout: float = 30) -> int:
                async with session.post(url, json=body(key, start, end),
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as answer:
                    return answer.status

            assert await asyncio.gather(*(post(key, True, False) for key in range(1, 17))) == [200] * 16
            waiting = [asyncio.ensure_future(post(1000 + key, True, False, timeout=3.5)) for key in range(900)]
            await asyncio.sleep(1.0)
            used = _cpu_seconds(server.process.pid)
            await asyncio.sleep(1.5)
            used = (_cpu_seconds(server.process.pid) - used) / 1.5
            started = time.perf_counter()
            async with session.get(f"{server.base}/v2/health/live") as answer:
                assert answer.status == 200
            health_s = time.perf_counter() - started
            outcomes = await asyncio.gather(*waiting, return_exceptions=True)
            assert all(isinstance(outcome, TimeoutError) for outcome in outcomes), {repr(o) for o in outcomes}
            ended = await asyncio.gather(*(post(key, False, True) for key in range(1, 17)))
            return used, health_s, [*ended, await post(5000, True, True, timeout=5)]

    with serve(repo) as server:
        used, health_s, statuses = asyncio.run(flood(server))
    assert used < 0.4, f"the server used {used:.2f} CPU seconds a second while 900 STARTs waited"
    assert health_s < 0.5, health_s
    assert statuses == [200] * 17


@pytest.mark.parametrize(("model", "in_order"), [("sleepy_in_order", True), ("sleepy", False)])
def test_preserve_ordering_answers_in_the_order_the_requests_came(server: RunningServer, model: str,
                                                                  in_order: bool) -> None:
    """oldest's preserve_ordering: on one gRPC stream, a slow sequence's request (600 ms, one instance)
    sent before a quick one's (the other instance) is answered first; without it the quick one is."""
    answers: queue.Queue[Any] = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        for sequence_id, sleep_ms in ((71, 600), (72, 0), (73, 0)):
            given = grpcclient.InferInput("INPUT", [1, 1], "INT32")
            given.set_data_from_numpy(np.array([[sleep_ms]], np.int32))
            client.async_stream_infer(model, [given], request_id=str(sequence_id), sequence_id=sequence_id,
                                      sequence_start=True, sequence_end=True)
            time.sleep(0.05)
        got = [answers.get(timeout=30) for _ in range(3)]
        client.stop_stream()
    assert all(isinstance(result, grpcclient.InferResult) for result in got), got
    order = [result.get_response().id for result in got]
    assert (order == ["71", "72", "73"]) is in_order, order
    config = requests.get(f"{server.base}/v2/models/{model}/config", timeout=10).json()
    assert config["sequence_batching"]["oldest"].get("preserve_ordering", False) is in_order
