"""Ragged batching: each batch input kind against Triton's documented values, the join and split,
and the dynamic batcher gathering requests of different lengths into one execution."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from inferd.config import BatchInput, BatchOutput, DynamicBatching, ModelConfig, TensorConfig
from inferd.errors import ModelError
from inferd.runtimes.base import Arrays
from inferd.runtimes.fake import FakeRuntime
from inferd.runtimes.ragged import RaggedBatching, batch_input_value
from inferd.scheduling.batcher import DynamicBatcher
from inferd.scheduling.instances import InstancePool
from inferd.types import CallContext, TensorSpec

# Triton's ragged_batching.md: three requests [1, 3], [1, 4], [1, 5]
DOC_SHAPES = [(1, 3), (1, 4), (1, 5)]
# model_config.proto's BATCH_ITEM_SHAPE example: a batch-2 input of shape [3, 1] and a batch-1 one of [2, 2]
ITEM_SHAPES = [(2, 3, 1), (1, 2, 2)]


@pytest.mark.parametrize(("kind", "shapes", "expected"), [
    ("BATCH_ELEMENT_COUNT", DOC_SHAPES, [3, 4, 5]),
    ("BATCH_ACCUMULATED_ELEMENT_COUNT", DOC_SHAPES, [3, 7, 12]),  # "[ 3, 7, 12 ] ... where each element ends"
    ("BATCH_ACCUMULATED_ELEMENT_COUNT", [(1, 2), (1, 2)], [2, 4]),  # the proto's "value 2 ..., value 4"
    ("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", DOC_SHAPES, [0, 3, 7, 12]),
    ("BATCH_ELEMENT_COUNT", ITEM_SHAPES, [6, 4]),  # a request's elements count its batch dim too
    ("BATCH_ITEM_SHAPE", ITEM_SHAPES, [[3, 1], [3, 1], [2, 2]]),
    ("BATCH_ITEM_SHAPE_FLATTEN", ITEM_SHAPES, [3, 1, 3, 1, 2, 2]),
])
@pytest.mark.parametrize("datatype", ["INT32", "FP32"])
def test_each_batch_input_kind_holds_tritons_documented_values(kind: str, shapes: list[tuple[int, ...]],
                                                               expected: list[object], datatype: str) -> None:
    value = batch_input_value(kind, shapes, datatype)
    assert value.dtype == (np.int32 if datatype == "INT32" else np.float32)
    assert value.shape == np.array(expected).shape
    assert value.tolist() == expected


def test_max_element_count_as_shape_says_it_in_its_shape() -> None:
    """The proto: shape [max_element_count]; the data is uninitialized in Triton (zeros here)."""
    assert batch_input_value("BATCH_MAX_ELEMENT_COUNT_AS_SHAPE", DOC_SHAPES, "INT32").shape == (5,)
    assert batch_input_value("BATCH_MAX_ELEMENT_COUNT_AS_SHAPE", ITEM_SHAPES, "FP32").shape == (6,)


CONFIG = ModelConfig(
    max_batch_size=8, dynamic_batching=DynamicBatching(max_queue_delay_ms=1000),
    inputs=(TensorConfig("x", "FP32", (-1,), ragged=True), TensorConfig("w", "FP32", (2,))),
    outputs=(TensorConfig("sum", "FP32", (1,)), TensorConfig("doubled", "FP32", (-1,))),
    batch_inputs=(BatchInput("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", ("bounds",), "INT32", ("x",)),),
    batch_outputs=(BatchOutput("BATCH_SCATTER_WITH_INPUT_SHAPE", ("doubled",), ("x",)),))


def segment_model(inputs: Arrays) -> Arrays:
    """What a ragged model computes: each request's sum from the joined elements and their bounds."""
    x, bounds = inputs["x"], inputs["bounds"]
    assert x.ndim == 1 and inputs["w"].shape == (len(bounds) - 1, 2)
    sums = [x[start:end].sum() for start, end in itertools.pairwise(bounds)]
    return {"sum": np.array(sums, np.float32).reshape(-1, 1), "doubled": x * 2}


def request(length: int) -> Arrays:
    return {"x": np.arange(length, dtype=np.float32).reshape(1, length), "w": np.ones((1, 2), np.float32)}


def test_join_flattens_ragged_inputs_and_adds_batch_inputs_and_split_scatters_back() -> None:
    ragged = RaggedBatching(CONFIG)
    requests = [request(3), request(1), request(4)]
    joined = ragged.join(requests)
    assert joined["x"].tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
    assert joined["w"].shape == (3, 2)
    assert joined["bounds"].tolist() == [0, 3, 4, 8]
    parts = ragged.split(segment_model(joined), requests, "m")
    assert [p["sum"].tolist() for p in parts] == [[[3.0]], [[0.0]], [[6.0]]]
    assert [p["doubled"].tolist() for p in parts] == [[[0, 2, 4]], [[0]], [[0, 2, 4, 6]]]
    assert ragged.key(requests[0]) == ragged.key(requests[2])  # their lengths differ; they batch together


def test_a_scattered_output_of_the_wrong_size_fails_saying_what_it_needed() -> None:
    ragged = RaggedBatching(CONFIG)
    requests = [request(3), request(2)]
    with pytest.raises(ModelError, match=r"with 4 elements; scattered .* need 5"):
        ragged.split({"doubled": np.zeros(4, np.float32)}, requests, "m")


def test_the_batcher_gathers_requests_of_different_lengths_into_one_execution() -> None:
    specs = (TensorSpec("x", "FP32", (-1, -1)), TensorSpec("w", "FP32", (-1, 2)), TensorSpec("bounds", "INT32", (-1,)))
    runtime = FakeRuntime(specs, (), segment_model, max_batch_size=8, delay_s=0.1)
    batches: list[int] = []
    batcher = DynamicBatcher(InstancePool(runtime, 1, "m"), DynamicBatching(max_queue_delay_ms=1000),
                             batches.append, RaggedBatching(CONFIG))
    assert [spec.name for spec in batcher.inputs] == ["x", "w"]  # the batch input is the server's
    assert "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO" in batcher.supplied_inputs["bounds"]
    lengths = [5, 2, 7, 1, 3]

    async def main() -> list[Arrays]:
        return await asyncio.gather(*(batcher.infer_async(request(n), CallContext()) for n in lengths))

    answers = asyncio.run(main())
    for n, answer in zip(lengths, answers, strict=True):
        alone = segment_model(RaggedBatching(CONFIG).join([request(n)]))
        assert answer["sum"].tolist() == alone["sum"].tolist() == [[sum(range(n))]]
        assert answer["doubled"].shape == (1, n)
        assert answer["doubled"].tolist() == [alone["doubled"].tolist()]
    assert len(batches) < len(lengths), f"executions of {batches} rows: the requests did not batch"


def test_clients_see_ragged_tensors_with_their_configured_dims_and_no_batch_inputs() -> None:
    """A model that says its own shapes (TensorFlow's signatures) takes a ragged input 1-D; clients
    send it with the batch dim and the configured dims, and never send a batch input."""
    ragged = RaggedBatching(CONFIG)
    model_inputs = (TensorSpec("x", "FP32", (-1,)), TensorSpec("w", "FP32", (-1, 2)),
                    TensorSpec("bounds", "INT32", (-1,)))
    model_outputs = (TensorSpec("sum", "FP32", (-1, 1)), TensorSpec("doubled", "FP32", (-1,)))
    assert ragged.client_specs(model_inputs) == (TensorSpec("x", "FP32", (-1, -1)), TensorSpec("w", "FP32", (-1, 2)))
    assert ragged.client_specs(model_outputs) == (TensorSpec("sum", "FP32", (-1, 1)),
                                                  TensorSpec("doubled", "FP32", (-1, -1)))
