"""Triton's batch inputs reaching a TorchScript model's ``forward`` on the real server, where Triton's
libtorch backend puts them: by argument name, by ``<name>__<i>``, or after the inputs in declared order."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import RunningServer, serve
from tests.models import write


class SumsByName(torch.nn.Module):
    """Each request's element count and sum, from the batch's joined elements and its batch inputs
    (named as forward's arguments, in an order unlike the configuration's)."""

    def forward(self, COUNTS: torch.Tensor, ENDS: torch.Tensor, RAGGED: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        running = torch.cat([torch.zeros(1), torch.cumsum(RAGGED, 0)])
        ends = ENDS.long()
        return (running[ends[1:]] - running[ends[:-1]]).reshape(-1, 1), COUNTS.reshape(-1, 1)


class SumsByPosition(torch.nn.Module):
    """The same sums; the batch input is forward's first argument, the ragged input its second."""

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        running = torch.cat([torch.zeros(1), torch.cumsum(second, 0)])
        ends = first.long()
        return (running[ends[1:]] - running[ends[:-1]]).reshape(-1, 1)


class SumsInDeclaredOrder(torch.nn.Module):
    """The same sums; the ragged input first, the batch input after it."""

    def forward(self, values: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        running = torch.cat([torch.zeros(1), torch.cumsum(values, 0)])
        bounds = ends.long()
        return (running[bounds[1:]] - running[bounds[:-1]]).reshape(-1, 1)


class Doubled(torch.nn.Module):
    """The batch's joined elements doubled, flat: the server scatters them back per request."""

    def forward(self, INPUT: torch.Tensor) -> torch.Tensor:
        return INPUT * 2


SCATTERED = """
backend: "pytorch"
max_batch_size: 8
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
batch_output [ { target_name: "OUTPUT" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT" } ]
dynamic_batching { max_queue_delay_microseconds: 200000 }
"""

BY_NAME = """
backend: "pytorch"
max_batch_size: 8
input [ { name: "RAGGED" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] } ]
batch_input [
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO target_name: "ENDS" data_type: TYPE_INT32 source_input: "RAGGED" },
  { kind: BATCH_ELEMENT_COUNT target_name: "COUNTS" data_type: TYPE_INT32 source_input: "RAGGED" }
]
dynamic_batching { max_queue_delay_microseconds: 200000 }
"""

BY_POSITION = """
backend: "pytorch"
max_batch_size: 8
input [ { name: "RAGGED__1" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [ { name: "SUM__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
batch_input [ { kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO target_name: "ENDS__0" data_type: TYPE_FP32
                source_input: "RAGGED__1" } ]
dynamic_batching { max_queue_delay_microseconds: 200000 }
"""

IN_DECLARED_ORDER = """
backend: "pytorch"
max_batch_size: 8
input [ { name: "VALUES" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 1 ] } ]
batch_input [ { kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO target_name: "BOUNDS" data_type: TYPE_INT32
                source_input: "VALUES" } ]
dynamic_batching { max_queue_delay_microseconds: 200000 }
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ragged_torch")
    for name, module, config in [("by_name", SumsByName(), BY_NAME), ("by_position", SumsByPosition(), BY_POSITION),
                                 ("in_declared_order", SumsInDeclaredOrder(), IN_DECLARED_ORDER),
                                 ("scattered", Doubled(), SCATTERED),
                                 ("unplaced", SumsByName(), BY_NAME.replace('"COUNTS"', '"TOTALS"'))]:
        (root / name / "1").mkdir(parents=True)
        torch.jit.script(module).save(str(root / name / "1/model.pt"))
        write(root / name / "config.pbtxt", config)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    with serve(repository, "--batch-wait", "delay") as running:  # requests sent at once join a batch
        yield running


def concurrent_answers(server: RunningServer, model: str, input_name: str, outputs: list[str],
                       lengths: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """Each length's answer, the requests sent at once (the batcher may join them)."""
    import tritonclient.http as triton

    def call(n: int) -> dict[str, np.ndarray]:
        client = triton.InferenceServerClient(server.url)
        tensor = triton.InferInput(input_name, [1, n], "FP32")
        tensor.set_data_from_numpy(np.arange(1, n + 1, dtype=np.float32).reshape(1, n))
        result = client.infer(model, [tensor])
        return {name: result.as_numpy(name) for name in outputs}

    with ThreadPoolExecutor(len(lengths)) as pool:
        return dict(zip(lengths, pool.map(call, lengths), strict=True))


LENGTHS = [1, 3, 7, 12]


def test_batch_inputs_reach_forward_by_argument_name(server: RunningServer) -> None:
    answers = concurrent_answers(server, "by_name", "RAGGED", ["SUM", "COUNT"], LENGTHS)
    for n, answer in answers.items():
        assert answer["SUM"].tolist() == [[n * (n + 1) / 2]]
        assert answer["COUNT"].tolist() == [[n]]


def test_batch_inputs_reach_forward_by_their_index_suffix(server: RunningServer) -> None:
    answers = concurrent_answers(server, "by_position", "RAGGED__1", ["SUM__0"], LENGTHS)
    for n, answer in answers.items():
        assert answer["SUM__0"].tolist() == [[n * (n + 1) / 2]]


def test_batch_inputs_follow_the_inputs_when_names_say_nothing(server: RunningServer) -> None:
    answers = concurrent_answers(server, "in_declared_order", "VALUES", ["SUM"], LENGTHS)
    for n, answer in answers.items():
        assert answer["SUM"].tolist() == [[n * (n + 1) / 2]]


def test_a_flat_output_is_scattered_back_in_each_request_s_shape(server: RunningServer) -> None:
    answers = concurrent_answers(server, "scattered", "INPUT", ["OUTPUT"], LENGTHS)
    for n, answer in answers.items():
        assert answer["OUTPUT"].tolist() == [[2.0 * i for i in range(1, n + 1)]]


def test_a_batch_input_forward_does_not_take_is_a_load_error(server: RunningServer) -> None:
    import requests

    index = {row["name"]: row for row in requests.post(f"{server.base}/v2/repository/index", timeout=5).json()}
    assert index["unplaced"]["state"] == "UNAVAILABLE"
    assert "cannot place ['TOTALS'] among forward's arguments ['COUNTS', 'ENDS', 'RAGGED']" in \
        index["unplaced"]["reason"]
    assert index["by_name"]["state"] == "READY"
