"""The dynamic batcher's priority levels and queue policies (Triton's priority_levels,
priority_queue_policy and timeout_action), on a real instance pool."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from inferd.config import DynamicBatching, QueuePolicy
from inferd.errors import DeadlineExceeded, QueueFull
from inferd.runtimes.fake import FakeRuntime
from inferd.scheduling.batcher import DynamicBatcher
from inferd.scheduling.instances import InstancePool
from inferd.types import CallContext, TensorSpec

SPEC = (TensorSpec("x", "FP32", (-1, -1)),)


def batcher(batching: DynamicBatching, delay: float = 0.1) -> tuple[DynamicBatcher, list[list[float]]]:
    """One instance; every call's first column (each request's value) in the order they ran."""
    batches: list[list[float]] = []

    def fn(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batches.append(inputs["x"][::4, 0].tolist())
        return {"x": inputs["x"]}

    runtime = FakeRuntime(SPEC, SPEC, fn, max_batch_size=8, delay_s=delay)
    return DynamicBatcher(InstancePool(runtime, 1, "m"), batching), batches


def four_rows(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((4, 2), value, np.float32)}


TWO_LEVELS = DynamicBatching(priority_levels=2, default_priority_level=2)


async def _queued_behind_a_running_one(b: DynamicBatcher, requests: list[tuple[float, int]],
                                       late: tuple[float, float] | None = None) -> list[object]:
    """A request that runs first, then ``requests`` (value, priority) queued behind it in order,
    and ``late`` (value, seconds later) at the default priority."""
    running = asyncio.ensure_future(b.infer_async(four_rows(0), CallContext()))
    await asyncio.sleep(0.02)
    queued = [asyncio.ensure_future(b.infer_async(four_rows(value), CallContext(priority=priority)))
              for value, priority in requests]
    if late is not None:
        await asyncio.sleep(late[1])
        queued.append(asyncio.ensure_future(b.infer_async(four_rows(late[0]), CallContext())))
    return [await running, *await asyncio.gather(*queued, return_exceptions=True)]


def test_a_higher_priority_request_overtakes_queued_lower_ones_and_lower_levels_fill_the_batch() -> None:
    b, batches = batcher(TWO_LEVELS)
    results = asyncio.run(_queued_behind_a_running_one(b, [(1, 2), (2, 0), (3, 2), (4, 1)]))
    assert all(isinstance(r, dict) for r in results)
    # 4 rows each, 8 a batch: the level-1 request first, the oldest level-2 one with it; 0 is the default level
    assert batches == [[0], [4, 1], [2, 3]]


def test_without_levels_the_queue_is_first_come_first_served() -> None:
    b, batches = batcher(DynamicBatching())
    asyncio.run(_queued_behind_a_running_one(b, [(1, 2), (2, 0), (3, 2), (4, 1)]))
    assert batches == [[0], [1, 2], [3, 4]]


def test_a_priority_the_model_does_not_have_is_its_default_level() -> None:
    """As Triton's InferenceRequest::SetPriority: above priority_levels means the default level."""
    assert [TWO_LEVELS.level_of(p) for p in (0, 1, 2, 3, 2**64 - 1)] == [2, 1, 2, 2, 2]
    b, batches = batcher(DynamicBatching(priority_levels=3, default_priority_level=1))
    asyncio.run(_queued_behind_a_running_one(b, [(1, 3), (2, 9), (3, 2), (4, 1)]))
    assert batches == [[0], [2, 4], [3, 1]]


def test_each_level_has_its_own_queue_bound() -> None:
    levels = DynamicBatching(priority_levels=2, default_priority_level=2, max_queue_size=3,
                             priority_queue_policy={1: QueuePolicy(max_queue_size=1)})
    b, batches = batcher(levels)
    results = asyncio.run(_queued_behind_a_running_one(b, [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 2)]))
    assert isinstance(results[2], QueueFull) and "queue for priority level 1 is full" in str(results[2])
    assert "max_queue_size = 1" in str(results[2])
    assert isinstance(results[6], QueueFull) and "priority level 2" in str(results[6])
    assert [isinstance(r, dict) for r in results] == [True, True, False, True, True, True, False]
    assert batches == [[0], [1, 3], [4, 5]]


def test_a_levels_timeout_rejects_only_that_levels_requests() -> None:
    levels = DynamicBatching(priority_levels=2, default_priority_level=2,
                             priority_queue_policy={2: QueuePolicy(default_timeout_ms=30)})
    b, batches = batcher(levels, delay=0.15)
    results = asyncio.run(_queued_behind_a_running_one(b, [(1, 2), (2, 1)]))
    assert isinstance(results[1], DeadlineExceeded) and isinstance(results[2], dict)
    assert batches == [[0], [2]]


@pytest.mark.parametrize("levels", [0, 2], ids=["one queue", "levels"])
def test_delay_moves_a_timed_out_request_behind_those_still_in_time_and_it_still_runs(levels: int) -> None:
    """Triton's DELAY: past its queue timeout a request waits behind the requests of its level that
    are in time (newer ones too), and is never failed for it."""
    batching = DynamicBatching(priority_levels=levels, default_priority_level=levels, default_timeout_ms=200,
                               timeout_action="delay")
    b, batches = batcher(batching, delay=0.6)
    start = time.perf_counter()
    results = asyncio.run(_queued_behind_a_running_one(b, [(1, 0), (2, 0)], late=(3, 0.45)))
    assert all(isinstance(r, dict) for r in results), results
    # 1 and 2 passed their 200 ms while the first ran 600 ms; 3 came 450 ms later, still in time then
    assert batches == [[0], [3, 1], [2]]
    assert time.perf_counter() - start < 3


def test_a_requests_own_deadline_still_fails_it_where_the_level_has_no_timeout() -> None:
    levels = DynamicBatching(priority_levels=1, default_priority_level=1, timeout_action="delay")
    b, _ = batcher(levels, delay=0.2)

    async def main() -> object:
        running = asyncio.ensure_future(b.infer_async(four_rows(0), CallContext()))
        await asyncio.sleep(0.02)
        late = b.infer_async(four_rows(1), CallContext(deadline=time.perf_counter() + 0.02))
        result = await asyncio.gather(late, return_exceptions=True)
        await running
        return result[0]

    assert isinstance(asyncio.run(main()), DeadlineExceeded)


def test_a_delaying_queue_without_levels_is_bounded_as_one_queue() -> None:
    b, _ = batcher(DynamicBatching(max_queue_size=1, default_timeout_ms=10, timeout_action="delay"))
    results = asyncio.run(_queued_behind_a_running_one(b, [(1, 0), (2, 0)]))
    assert isinstance(results[1], dict) and isinstance(results[2], QueueFull)
    assert "model 'm' queue is full (1 requests waiting, max_queue_size = 1)" in str(results[2])


def test_without_levels_a_levels_own_policy_is_ignored_as_in_triton() -> None:
    """Triton instantiates only the default queue when priority_levels is 0 (scheduler_utils.cc)."""
    batching = DynamicBatching(max_queue_size=1, timeout_action="delay", default_timeout_ms=1000,
                               priority_queue_policy={0: QueuePolicy(max_queue_size=5)})
    b, _ = batcher(batching)
    results = asyncio.run(_queued_behind_a_running_one(b, [(1, 0), (2, 0)]))
    assert isinstance(results[1], dict) and isinstance(results[2], QueueFull)
