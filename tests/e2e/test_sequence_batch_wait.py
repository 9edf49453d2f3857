"""Triton's wait in the sequence batcher, on the real server with Triton's clients: with
``--batch-wait delay`` (or a sequence model's own ``batch_wait`` / ``inferd.batch_wait`` parameter)
a free instance holds a batch of its sequences' ready requests as Triton's strategies do (``oldest``:
until a preferred size or the oldest's max_queue_delay; ``direct``: until minimum_slot_utilization
of the slots or the delay); without it nothing is held; a drain sends a held batch at once."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests import sequence_models
from tests.conftest import RunningServer, serve

DELAY_S = sequence_models.WAIT_DELAY_S


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sequence_models.build_waiting(tmp_path_factory.mktemp("waiting"))


@pytest.fixture(scope="module")
def held(repo: Path) -> Iterator[RunningServer]:
    with serve(repo, "--batch-wait", "delay", grpc=True) as running:
        yield running


@pytest.fixture(scope="module")
def plain(repo: Path) -> Iterator[RunningServer]:
    with serve(repo, grpc=True) as running:
        yield running


def _one_step_sequence(server: RunningServer, model: str, key: int, after_s: float = 0.0,
                       barrier: threading.Barrier | None = None) -> tuple[int, float]:
    """A sequence of one request (START and END) over gRPC, sent ``after_s`` late (or once ``barrier``
    lets it): (the size of the batch it ran in, as the model saw it; seconds it took)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        name, shape, datatype = ("INPUT", [1, 1], "INT32") if model == "wait_pbtxt" else ("X", [1, 2], "FP32")
        tensor = grpcclient.InferInput(name, shape, datatype)
        tensor.set_data_from_numpy(np.ones(shape, np.int32 if datatype == "INT32" else np.float32))
        if barrier is not None:
            barrier.wait(timeout=30)
        time.sleep(after_s)
        started = time.monotonic()
        answer = client.infer(model, [tensor], sequence_id=key, sequence_start=True, sequence_end=True)
        took = time.monotonic() - started
    finally:
        client.close()
    seen = answer.as_numpy("SEEN")[0].tolist()
    return int(seen[2] if model == "wait_pbtxt" else seen[4]), took


def _together(server: RunningServer, model: str, keys: list[int], gap_s: float = 0.0) -> list[tuple[int, float]]:
    """One-request sequences at once (each ``gap_s`` after the one before)."""
    barrier = threading.Barrier(len(keys))
    with ThreadPoolExecutor(len(keys)) as pool:
        futures = [pool.submit(_one_step_sequence, server, model, key, index * gap_s, barrier)
                   for index, key in enumerate(keys)]
        return [future.result(timeout=60) for future in futures]


def _executions(server: RunningServer, model: str) -> int:
    stats = httpclient.InferenceServerClient(server.url).get_inference_statistics(model)
    return int(stats["model_stats"][0]["execution_count"])


@pytest.mark.parametrize("model", ["wait_oldest", "wait_direct"])
def test_a_lone_request_is_held_for_the_delay(held: RunningServer, model: str) -> None:
    size, took = _one_step_sequence(held, model, 11)
    assert size == 1
    assert took >= DELAY_S * 0.95, f"a lone request answered after {took:.2f} s, before the {DELAY_S} s delay"


def test_requests_of_sequences_arriving_within_the_delay_run_as_one_batch(held: RunningServer) -> None:
    """oldest, preferred size 3: two sequences 0.3 s apart wait for the first's delay, together."""
    before = _executions(held, "wait_oldest")
    (first, first_took), (second, second_took) = _together(held, "wait_oldest", [21, 22], gap_s=0.3)
    assert (first, second) == (2, 2)
    assert first_took >= DELAY_S * 0.95, first_took
    assert second_took < DELAY_S * 0.95, second_took  # it left with the first one's delay
    assert _executions(held, "wait_oldest") == before + 1


@pytest.mark.parametrize(("model", "keys"), [("wait_oldest", [31, 32, 33]), ("wait_direct", [34, 35])])
def test_a_full_batch_goes_at_once(held: RunningServer, model: str, keys: list[int]) -> None:
    """oldest: its preferred size (3); direct: minimum_slot_utilization of its slots (2 of 8)."""
    before = _executions(held, model)
    answers = _together(held, model, keys)
    assert [size for size, _ in answers] == [len(keys)] * len(keys), answers
    assert max(took for _, took in answers) < DELAY_S * 0.6, answers
    assert _executions(held, model) == before + 1


def test_direct_sends_once_enough_slots_are_ready(held: RunningServer) -> None:
    """The first sequence waits only until the second comes and fills the share of slots."""
    (first, first_took), (second, _) = _together(held, "wait_direct", [41, 42], gap_s=0.4)
    assert (first, second) == (2, 2)
    assert first_took < DELAY_S * 0.8, first_took


@pytest.mark.parametrize("model", ["wait_oldest", "wait_direct"])
def test_without_the_switch_nothing_is_held(plain: RunningServer, model: str) -> None:
    size, took = _one_step_sequence(plain, model, 51)
    assert size == 1
    assert took < DELAY_S / 2, f"a lone request waited {took:.2f} s on a work-conserving sequence batcher"


@pytest.mark.parametrize("model", ["wait_own", "wait_pbtxt"])
def test_a_model_that_asks_is_held_without_the_server_flag(plain: RunningServer, model: str) -> None:
    """config.toml's batch_wait in [sequence_batching]; config.pbtxt's inferd.batch_wait parameter."""
    size, took = _one_step_sequence(plain, model, 61)
    assert size == 1
    assert took >= DELAY_S * 0.95, took
    sizes = [size for size, _ in _together(plain, model, [62, 63], gap_s=0.2)]
    assert sizes == [2, 2]


def test_a_drain_sends_a_held_batch_at_once(repo: Path, tmp_path: Path) -> None:
    config = (repo / "wait_oldest/config.toml").read_text().replace(str(int(DELAY_S * 1e6)), "60000000")  # 60 s
    (tmp_path / "wait_oldest/1").mkdir(parents=True)
    (tmp_path / "wait_oldest/1/model.py").write_text(sequence_models.ROWS)
    (tmp_path / "wait_oldest/config.toml").write_text(config)
    with serve(tmp_path, "--batch-wait", "delay", grpc=True) as running, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(_one_step_sequence, running, "wait_oldest", 71)
        time.sleep(1.0)
        assert not answer.done()
        running.process.send_signal(signal.SIGTERM)
        size, took = answer.result(timeout=20)
        assert size == 1
        assert took < 15, took
        assert running.process.wait(20) == 0
