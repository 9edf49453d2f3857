"""The dynamic batcher's wait, on the real server with Triton's clients: work-conserving by default
(a lone request runs at once), and Triton's (``--batch-wait delay``, a model's ``inferd.batch_wait``
parameter or ``batch_wait`` in config.toml): a batch short of a preferred size waits for its oldest
request's max_queue_delay, a preferred size goes at once, requests within the delay join one batch,
priority levels still order it, and a drain sends a held batch at once."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.conftest import RunningServer, serve
from tests.models import write

# each request learns the size of the batch it ran in and its row there
BATCHES = '''
import numpy as np

class Model:
    def infer(self, inputs):
        rows = inputs["x"].shape[0]
        return {"batch": np.full((rows, 1), rows, dtype=np.int32),
                "row": np.arange(rows, dtype=np.int32).reshape(rows, 1)}
'''

TENSORS = """
backend: "python"
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "batch" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "row" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

DELAY_S = 1.5
BATCHING = f"max_batch_size: 8\ndynamic_batching {{ preferred_batch_size: [ 4 ] " \
           f"max_queue_delay_microseconds: {int(DELAY_S * 1e6)} }}\n"
LEVELS = f"max_batch_size: 2\ndynamic_batching {{ preferred_batch_size: [ 2 ] " \
         f"max_queue_delay_microseconds: {int(DELAY_S * 1e6)} priority_levels: 2 default_priority_level: 2 }}\n"


def _wait(value: str) -> str:
    return f'parameters {{ key: "inferd.batch_wait" value: {{ string_value: "{value}" }} }}\n'


TOML = f"""backend = "python"
max_batch_size = 8
[dynamic_batching]
preferred_batch_sizes = [4]
max_queue_delay_ms = {DELAY_S * 1000}
batch_wait = "delay"
[[input]]
name = "x"
datatype = "FP32"
shape = [1]
[[output]]
name = "batch"
datatype = "INT32"
shape = [1]
[[output]]
name = "row"
datatype = "INT32"
shape = [1]
"""


def _repository(root: Path, configs: dict[str, str]) -> Path:
    for name, config in configs.items():
        write(root / name / "1/model.py", BATCHES)
        if config.startswith("backend = "):
            write(root / name / "config.toml", config)
        else:
            write(root / name / "config.pbtxt", TENSORS + config)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The default server: only the models that ask for it wait as Triton's."""
    root = _repository(tmp_path_factory.mktemp("batch_wait"), {
        "conserving": BATCHING, "held": BATCHING + _wait("delay"), "held_toml": TOML,
        "levels": LEVELS + _wait("delay")})
    with serve(root, grpc=True) as running:
        yield running


def _infer(server: RunningServer, model: str, value: float = 0.0, priority: int = 0) -> tuple[int, int, float]:
    """(the size of the batch the request ran in, its row there, seconds it took), over gRPC."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[value]], np.float32))
    started = time.monotonic()
    result = client.infer(model, [tensor], priority=priority)
    took = time.monotonic() - started
    return int(result.as_numpy("batch")[0, 0]), int(result.as_numpy("row")[0, 0]), took


def _executions(server: RunningServer, model: str) -> int:
    """The model's execution count, from Triton's statistics extension."""
    stats = httpclient.InferenceServerClient(server.url).get_inference_statistics(model)
    return int(stats["model_stats"][0]["execution_count"])


def test_a_lone_request_runs_at_once_by_default(server: RunningServer) -> None:
    batch, _, took = _infer(server, "conserving")
    assert batch == 1
    assert took < DELAY_S / 2, f"a lone request waited {took:.2f} s on a work-conserving batcher"


@pytest.mark.parametrize("model", ["held", "held_toml"])
def test_a_lone_request_waits_out_the_delay_where_the_model_asks(server: RunningServer, model: str) -> None:
    batch, _, took = _infer(server, model)
    assert batch == 1
    assert took >= DELAY_S * 0.95, f"a lone request answered after {took:.2f} s, before the {DELAY_S} s delay"


def test_requests_within_the_delay_join_one_execution(server: RunningServer) -> None:
    before = _executions(server, "held")
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda value: _infer(server, "held", value), [1.0, 2.0, 3.0]))
    assert [batch for batch, _, _ in answers] == [3, 3, 3], answers
    assert sorted(row for _, row, _ in answers) == [0, 1, 2]
    assert _executions(server, "held") == before + 1


def test_a_preferred_size_reached_goes_at_once(server: RunningServer) -> None:
    before = _executions(server, "held")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda value: _infer(server, "held", value), [1.0, 2.0, 3.0, 4.0]))
    assert [batch for batch, _, _ in answers] == [4, 4, 4, 4], answers
    assert max(took for _, _, took in answers) < DELAY_S * 0.8, answers  # not held for the delay
    assert _executions(server, "held") == before + 1


def test_priority_levels_order_a_held_batch(server: RunningServer) -> None:
    """A low-priority request waits alone; a high one joins it, reaches the preferred size, and
    goes first in the batch."""
    with ThreadPoolExecutor(2) as pool:
        low = pool.submit(_infer, server, "levels", 1.0, 2)
        time.sleep(0.4)
        high = pool.submit(_infer, server, "levels", 2.0, 1)
        (low_batch, low_row, low_took), (high_batch, high_row, high_took) = low.result(), high.result()
    assert (low_batch, high_batch) == (2, 2)
    assert (high_row, low_row) == (0, 1)
    assert high_took < DELAY_S * 0.8, high_took
    assert low_took < DELAY_S, low_took


def test_a_lone_request_waits_at_a_priority_level_too(server: RunningServer) -> None:
    batch, _, took = _infer(server, "levels", priority=1)
    assert batch == 1
    assert took >= DELAY_S * 0.95, took


def test_the_server_flag_holds_every_model_but_one_that_opts_out(tmp_path: Path) -> None:
    root = _repository(tmp_path, {"plain": BATCHING, "opted_out": BATCHING + _wait("work-conserving")})
    with serve(root, "--batch-wait", "delay", grpc=True) as running:
        assert _infer(running, "plain")[2] >= DELAY_S * 0.95
        assert _infer(running, "opted_out")[2] < DELAY_S / 2


def test_a_drain_sends_a_held_batch_at_once(tmp_path: Path) -> None:
    long = BATCHING.replace(str(int(DELAY_S * 1e6)), "60000000")  # 60 s
    root = _repository(tmp_path, {"held": long})
    with serve(root, "--batch-wait", "delay", grpc=True) as running, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(_infer, running, "held")
        time.sleep(1.0)
        assert not answer.done()
        running.process.send_signal(signal.SIGTERM)
        batch, _, took = answer.result(timeout=20)
        assert batch == 1
        assert took < 15, took
        assert running.process.wait(20) == 0


@pytest.mark.parametrize(("config", "expected"), [
    (BATCHING + _wait("sometimes"), "parameter 'inferd.batch_wait' must be one of work-conserving, delay, "
                                    "got 'sometimes'"),
    ("max_batch_size: 8\n" + _wait("delay"), "parameter 'inferd.batch_wait' needs dynamic_batching"),
    (TOML.replace('"delay"', '"later"'), "'batch_wait' must be one of ('work-conserving', 'delay'), got 'later'"),
])
def test_a_bad_batch_wait_fails_the_load_saying_what_it_takes(tmp_path: Path, config: str, expected: str) -> None:
    root = _repository(tmp_path, {"bad": config, "good": BATCHING})
    with serve(root) as running:
        client = httpclient.InferenceServerClient(running.url)
        assert client.is_model_ready("good")
        assert not client.is_model_ready("bad")
        assert expected in running.log()


def test_an_unknown_batch_wait_flag_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="invalid choice: 'later'"), serve(tmp_path, "--batch-wait", "later"):
        pass
